//! Chain verification: recomputes every entry hash of a world's chains and checks that
//! each entry sits where its chain says, linked to the one before.

use redb::ReadOnlyTable;

use crate::atom::{Hash, PublicKey, ZERO_HASH, decode_entry, entry_hash};
use crate::error::StoreError;

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

pub(crate) struct ChainTables<'a> {
    pub atoms: &'a ReadOnlyTable<Hash, &'static [u8]>,
    pub chains: &'a ReadOnlyTable<(&'static str, PublicKey, u64), Hash>,
    pub heads: &'a ReadOnlyTable<(&'static str, PublicKey), (u64, Hash)>,
}

/// Verifies every chain of `world`, writers in key order, entries in seq order, and
/// stops at the first bad entry.
pub(crate) fn verify_world(
    tables: &ChainTables<'_>,
    world: &str,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport {
        chains: 0,
        entries: 0,
        first_bad: None,
    };
    let heads: Vec<ChainHead> = heads_of(tables.heads, world)?;
    for head in heads {
        report.chains += 1;
        let bad = |seq, reason: String| BadEntry {
            world: world.to_owned(),
            writer: head.writer,
            seq,
            reason,
        };
        let mut expected_seq = 1;
        let mut prev = ZERO_HASH;
        let mut last_commit = 0;
        for entry in tables
            .chains
            .range((world, head.writer, 0)..=(world, head.writer, u64::MAX))?
        {
            let (key, id) = entry?;
            let (_, _, seq) = key.value();
            let id = id.value();
            report.entries += 1;
            if seq != expected_seq {
                report.first_bad = Some(bad(
                    expected_seq,
                    format!("entry {expected_seq} is missing; the chain jumps to {seq}"),
                ));
                return Ok(report);
            }
            let Some(bytes) = tables.atoms.get(id)? else {
                report.first_bad = Some(bad(seq, format!("atom {} is missing", hex::encode(id))));
                return Ok(report);
            };
            let bytes = bytes.value();
            if entry_hash(bytes) != id {
                report.first_bad = Some(bad(
                    seq,
                    "the stored entry does not hash to its id: its bytes were changed".into(),
                ));
                return Ok(report);
            }
            let atom = match decode_entry(id, bytes) {
                Ok(atom) => atom,
                Err(error) => {
                    report.first_bad = Some(bad(seq, error.to_string()));
                    return Ok(report);
                }
            };
            let misplaced = if atom.world != world || atom.writer != head.writer || atom.seq != seq
            {
                Some("the entry belongs to another chain or position".to_string())
            } else if atom.prev != prev {
                Some("the entry's prev is not the previous entry's hash".to_string())
            } else if atom.commit <= last_commit {
                Some(format!(
                    "commit {} does not follow commit {last_commit}",
                    atom.commit
                ))
            } else {
                None
            };
            if let Some(reason) = misplaced {
                report.first_bad = Some(bad(seq, reason));
                return Ok(report);
            }
            prev = id;
            last_commit = atom.commit;
            expected_seq += 1;
        }
        if expected_seq - 1 != head.seq || prev != head.id {
            report.first_bad = Some(bad(
                head.seq,
                format!(
                    "the chain ends at entry {} but its head says {}",
                    expected_seq - 1,
                    head.seq
                ),
            ));
            return Ok(report);
        }
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
