//! Chain verification: recomputes every entry hash of a world's chains and checks that
//! each entry sits where its chain says, linked to the one before, reading the world's
//! entries once in storage order.

use std::collections::HashMap;

use redb::ReadOnlyTable;

use crate::atom::{Hash, PublicKey, ZERO_HASH, decode_entry, entry_hash, writer_at};
use crate::error::StoreError;
use crate::tables::split_row;

/// The last entry of one (world, writer) chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub writer: PublicKey,
    pub seq: u64,
    pub id: Hash,
}

/// The first entry that failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry {
    pub world: String,
    pub writer: PublicKey,
    pub seq: u64,
    pub reason: String,
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub chains: u64,
    pub entries: u64,
    /// `None` when every chain verified.
    pub first_bad: Option<BadEntry>,
}

const CHANGED: &str = "the stored entry does not hash to its id: its bytes were changed";

/// Where one chain's walk has got to.
struct ChainState {
    seq: u64,
    prev: Hash,
}

/// What a reader that may not see a bad entry is told of it.
const HIDDEN_BAD: &str = "an entry this capability may not see failed verification";

/// Verifies every chain of `world` in one walk of its entries in storage (commit)
/// order, then checks each chain ends where its head says; stops at the first bad entry.
/// With `visible` (a restricted reader), the report counts only the entries it lets
/// through and the chains that hold one, and names only a changed entry it lets
/// through: any other failure is reported with no writer and seq 0.
pub(crate) fn verify_world(
    entries: &ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    heads: &ReadOnlyTable<(&'static str, PublicKey), (u64, Hash)>,
    world: &str,
    visible: Option<crate::atom::Visible<'_>>,
) -> Result<VerifyReport, StoreError> {
    let visible_all = visible.is_none();
    let mut report = VerifyReport {
        chains: 0,
        entries: 0,
        first_bad: None,
    };
    let mut shown: std::collections::HashSet<PublicKey> = std::collections::HashSet::new();
    let bad = |writer, seq, reason: String| BadEntry {
        world: world.to_owned(),
        writer,
        seq,
        reason,
    };
    let hidden = || BadEntry {
        world: world.to_owned(),
        writer: [0; 32],
        seq: 0,
        reason: HIDDEN_BAD.into(),
    };
    let mut chains: HashMap<PublicKey, ChainState> = HashMap::new();
    for row in entries.range((world, 0)..=(world, u64::MAX))? {
        let (key, row) = row?;
        let (_, commit) = key.value();
        let (id, bytes) = split_row(world, commit, row.value())?;
        let atom = match decode_entry(id, bytes) {
            Ok(atom) => atom,
            Err(error) => {
                // Undecodable bytes name no position of their own: report the position
                // the chain expected next, in the writer the entry's fixed offset holds.
                let writer = writer_at(bytes).unwrap_or([0; 32]);
                let seq = chains.get(&writer).map_or(1, |chain| chain.seq + 1);
                let reason = if entry_hash(bytes) != id {
                    CHANGED.to_string()
                } else {
                    error.to_string()
                };
                report.first_bad = Some(if visible_all {
                    bad(writer, seq, reason)
                } else {
                    hidden()
                });
                return Ok(report);
            }
        };
        let shows = visible.is_none_or(|visible| visible(&atom));
        if shows {
            report.entries += 1;
            shown.insert(atom.writer);
        }
        let chain = chains.entry(atom.writer).or_insert(ChainState {
            seq: 0,
            prev: ZERO_HASH,
        });
        let expected_seq = chain.seq + 1;
        let reason = if entry_hash(bytes) != id {
            Some(CHANGED.to_string())
        } else if atom.world != world || atom.commit != commit {
            Some("the entry belongs to another world or commit".to_string())
        } else if atom.seq > expected_seq {
            // A missing entry is named only to a reader that sees the whole chain.
            report.first_bad = Some(if visible_all {
                bad(
                    atom.writer,
                    expected_seq,
                    format!(
                        "entry {expected_seq} is missing; the chain jumps to {}",
                        atom.seq
                    ),
                )
            } else {
                hidden()
            });
            return Ok(report);
        } else if atom.seq < expected_seq {
            Some(format!(
                "entry {} appears again after entry {}",
                atom.seq, chain.seq
            ))
        } else if atom.prev != chain.prev {
            Some("the entry's prev is not the previous entry's hash".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            report.first_bad = Some(if shows {
                bad(atom.writer, atom.seq, reason)
            } else {
                hidden()
            });
            return Ok(report);
        }
        chain.seq = atom.seq;
        chain.prev = id;
    }
    let heads = heads_of(heads, world)?;
    report.chains = heads
        .iter()
        .filter(|head| visible_all || shown.contains(&head.writer))
        .count() as u64;
    for head in &heads {
        let (seq, prev) = chains
            .remove(&head.writer)
            .map_or((0, ZERO_HASH), |chain| (chain.seq, chain.prev));
        if seq != head.seq || prev != head.id {
            report.first_bad = Some(if visible_all {
                bad(
                    head.writer,
                    head.seq,
                    format!(
                        "the chain ends at entry {seq} but its head says {}",
                        head.seq
                    ),
                )
            } else {
                hidden()
            });
            return Ok(report);
        }
    }
    if let Some((writer, chain)) = chains.into_iter().min_by_key(|(writer, _)| *writer) {
        report.first_bad = Some(if visible_all {
            bad(
                writer,
                chain.seq,
                "the chain has entries but no head".into(),
            )
        } else {
            hidden()
        });
    }
    Ok(report)
}

pub(crate) fn heads_of(
    heads: &ReadOnlyTable<(&'static str, PublicKey), (u64, Hash)>,
    world: &str,
) -> Result<Vec<ChainHead>, StoreError> {
    let mut found = Vec::new();
    for entry in heads.range((world, [0u8; 32])..=(world, [0xff; 32]))? {
        let (key, value) = entry?;
        let (_, writer) = key.value();
        let (seq, id) = value.value();
        found.push(ChainHead { writer, seq, id });
    }
    Ok(found)
}
