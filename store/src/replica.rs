//! A node in a fleet (engram-fleet): each world's entries travel in a stream of its own,
//! in messages that hold whole requests of a group's journal record in that world (their
//! entries and idempotency key records, framed as in the journal: store/FORMAT.md,
//! Fleets), as many as the stream's message size needs.
//!
//! The world's owner hands each group's messages to its [`Replicator`] *before* the
//! group commits: the replicator publishes each as the stream's next message after the
//! position this node holds, and only once the stream took them does the group commit,
//! with the new position, so an entry is never here that the stream does not carry. A
//! stream that moved past that position (another node wrote the world) refuses the
//! message and the group fails. Every node stores every other node's messages with
//! `WriteOp::Replicate`, which checks each entry as `verify` would before storing any.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::StoreError;

/// Where the writer sends each world's new entries before it commits them.
pub trait Replicator: Send + Sync {
    /// Publishes `message` as `world`'s next message if its stream's last is `after`;
    /// the position the stream gave it. Blocks the writer until the stream answers.
    fn publish(&self, world: &str, after: u64, message: &[u8]) -> Result<u64, StoreError>;

    /// The most bytes one message may hold. A request whose entries would not fit is
    /// refused; a group's requests in one world are published in as many messages as
    /// they need, each holding whole requests.
    fn message_bytes_max(&self) -> usize;
}

/// The part of a group's journal record one request wrote: its entries and key record,
/// framed as in the journal, all in its one world.
pub(crate) struct Span {
    pub request: usize,
    pub bytes: Range<usize>,
}

/// The messages that carry a group's entries to the worlds' streams: for each world in
/// the order it was first written, its requests' spans of `record`, in order, gathered
/// into messages of at most `bytes_max` bytes that never split a request. `world_of`
/// names a request's world.
pub(crate) fn messages<'a>(
    record: &[u8],
    spans: &[Span],
    world_of: impl Fn(usize) -> &'a str,
    bytes_max: usize,
) -> Vec<(&'a str, Vec<u8>)> {
    // Each span with its world's place in the order worlds were first written.
    let mut places: HashMap<&str, usize> = HashMap::new();
    let mut ordered: Vec<(usize, &str, &Span)> = spans
        .iter()
        .map(|span| {
            let world = world_of(span.request);
            let next = places.len();
            (*places.entry(world).or_insert(next), world, span)
        })
        .collect();
    ordered.sort_by_key(|(place, ..)| *place);
    let mut messages: Vec<(&str, Vec<u8>)> = Vec::new();
    for (_, world, span) in ordered {
        let bytes = &record[span.bytes.clone()];
        match messages.last_mut() {
            Some((last, message)) if *last == world && message.len() + bytes.len() <= bytes_max => {
                message.extend_from_slice(bytes)
            }
            _ => messages.push((world, bytes.to_vec())),
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_each_world_in_order_and_never_split_a_request() {
        // Requests 0, 2 and 4 in world a, 1 in world b; request 3 wrote nothing.
        let record = b"aaaabbbbbbcccdd";
        let spans = [
            Span {
                request: 0,
                bytes: 0..4,
            },
            Span {
                request: 1,
                bytes: 4..10,
            },
            Span {
                request: 2,
                bytes: 10..13,
            },
            Span {
                request: 4,
                bytes: 13..15,
            },
        ];
        let world_of = |request: usize| if request.is_multiple_of(2) { "a" } else { "b" };
        let messages = |bytes_max| messages(record, &spans, world_of, bytes_max);
        let expected = |list: &[(&'static str, &str)]| -> Vec<(&'static str, Vec<u8>)> {
            let owned = list
                .iter()
                .map(|(world, bytes)| (*world, bytes.as_bytes().to_vec()));
            owned.collect()
        };
        assert_eq!(
            messages(100),
            expected(&[("a", "aaaacccdd"), ("b", "bbbbbb")])
        );
        assert_eq!(
            messages(7),
            expected(&[("a", "aaaaccc"), ("a", "dd"), ("b", "bbbbbb")])
        );
        // A request larger than a message goes alone (the writer refuses such requests).
        assert_eq!(
            messages(3),
            expected(&[("a", "aaaa"), ("a", "ccc"), ("a", "dd"), ("b", "bbbbbb")])
        );
    }
}
