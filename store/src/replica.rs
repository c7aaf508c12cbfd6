//! A node in a fleet (engram-fleet): each world's entries travel in a stream of its own,
//! in messages that are the world's part of a group's journal record (its entries and
//! idempotency key records, framed as in the journal: store/FORMAT.md, Fleets).
//!
//! The world's owner hands each group's message to its [`Replicator`] *before* the group
//! commits: the replicator publishes it as the stream's next message after the position
//! this node holds, and only once the stream took it does the group commit, with the new
//! position, so an entry is never here that the stream does not carry. A stream that
//! moved past that position (another node wrote the world) refuses the message and the
//! group fails. Every node stores every other node's messages with
//! `WriteOp::Replicate`, which checks each entry as `verify` would before storing any.

use crate::atom::Hash;
use crate::error::StoreError;
use crate::journal::{self, Item};

/// Where the writer sends each world's new entries before it commits them.
pub trait Replicator: Send + Sync {
    /// Publishes `message` as `world`'s next message if its stream's last is `after`;
    /// the position the stream gave it. Blocks the writer until the stream answers.
    fn publish(&self, world: &str, after: u64, message: &[u8]) -> Result<u64, StoreError>;
}

/// The worlds whose entries a journal record `body` holds, in their first order.
pub(crate) fn worlds_of(body: &[u8]) -> Vec<String> {
    let mut worlds: Vec<String> = Vec::new();
    for item in journal::items_of(body).unwrap_or_default() {
        if let Item::Entry(bytes) = item
            && let Some(world) = entry_world(bytes)
            && !worlds.iter().any(|known| known == world)
        {
            worlds.push(world.to_owned());
        }
    }
    worlds
}

/// `world`'s part of a journal record `body`: its entries and key records, in order.
pub(crate) fn world_message(body: &[u8], world: &str) -> Vec<u8> {
    let mut message = Vec::new();
    for item in journal::items_of(body).unwrap_or_default() {
        let ours = match &item {
            Item::Entry(bytes) => entry_world(bytes) == Some(world),
            Item::Key(bytes) => {
                crate::idempotency::KeyRecord::decode(bytes).is_some_and(|key| key.world == world)
            }
        };
        if ours {
            journal::encode_item(&item, &mut message);
        }
    }
    message
}

/// The world an encoded entry names (store/FORMAT.md: after the version byte, a u16
/// length and the name).
fn entry_world(entry: &[u8]) -> Option<&str> {
    let length = u16::from_be_bytes(entry.get(1..3)?.try_into().ok()?) as usize;
    std::str::from_utf8(entry.get(3..3 + length)?).ok()
}

/// The ids of a message's entries, in order (what a follower reports on refusal).
pub fn message_ids(message: &[u8]) -> Vec<Hash> {
    journal::items_of(message)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| match item {
            Item::Entry(bytes) => Some(crate::atom::entry_hash(bytes)),
            Item::Key(_) => None,
        })
        .collect()
}
