//! Idempotency keys: a `remember` retried with the key of a request that was already
//! done answers that request's receipts again and writes nothing.
//!
//! A key belongs to one writer in one world and is kept for
//! [`IDEMPOTENCY_WINDOW_MS`] after its write. Its record names the request (a hash of
//! its atoms, so that the same key with other atoms is refused rather than answered
//! with receipts for something else) and the commits its atoms took; the receipts are
//! read back from those entries. The record is written in the same transaction as the
//! atoms and journaled right after their entries, so a group the journal brings back
//! at open brings its keys back with it.

use redb::{ReadableTable, Table};

use crate::atom::{
    AtomContent, EntryHeader, Hash, PublicKey, ZERO_HASH, decode_entry, encode_entry,
};
use crate::error::StoreError;
use crate::limits::{IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_WINDOW_MS};
use crate::tables::split_row;
use crate::write::Receipt;

/// The BLAKE3 key-derivation context of request hashes.
const REQUEST_CONTEXT: &str = "engram 2026-11 idempotent request v1";
/// Expired keys a keyed write removes, at most, besides its own: more than it adds, so
/// the tables shrink back to the keys of the window.
const PRUNE_PER_WRITE: usize = 4;

/// The idempotency record of one keyed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord<'a> {
    pub world: &'a str,
    pub writer: PublicKey,
    pub key: &'a [u8],
    /// [`request_hash`] of the request's atoms.
    pub request: Hash,
    pub recorded_at_unix_ms: i64,
    /// The commit of the request's first atom; the others follow it.
    pub first_commit: u64,
    pub count: u32,
}

/// The stored value of a key: (request hash, recorded at, first commit, count).
pub(crate) type KeyValue = (Hash, i64, u64, u32);

impl<'a> KeyRecord<'a> {
    /// How many bytes [`KeyRecord::encode`] appends for a record of `key` in `world`.
    pub(crate) fn encoded_len(world: &str, key: &[u8]) -> usize {
        2 + world.len() + 32 + 1 + key.len() + 32 + 8 + 8 + 4
    }

    /// Appends the journal item: world (u16 length, UTF-8), writer (32), key (u8 length,
    /// bytes), request hash (32), recorded at (i64), first commit (u64), count (u32),
    /// all big-endian.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.world.len() as u16).to_be_bytes());
        out.extend_from_slice(self.world.as_bytes());
        out.extend_from_slice(&self.writer);
        out.push(self.key.len() as u8);
        out.extend_from_slice(self.key);
        out.extend_from_slice(&self.request);
        out.extend_from_slice(&self.recorded_at_unix_ms.to_be_bytes());
        out.extend_from_slice(&self.first_commit.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
    }

    /// The record a journal item holds, or `None` if it does not decode.
    pub fn decode(mut bytes: &'a [u8]) -> Option<KeyRecord<'a>> {
        let mut take = |length: usize| -> Option<&'a [u8]> {
            let (taken, rest) = bytes.split_at_checked(length)?;
            bytes = rest;
            Some(taken)
        };
        let world_length = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let world = std::str::from_utf8(take(world_length)?).ok()?;
        let writer = take(32)?.try_into().ok()?;
        let key_length = take(1)?[0] as usize;
        let key = take(key_length)?;
        let request = take(32)?.try_into().ok()?;
        let recorded_at_unix_ms = i64::from_be_bytes(take(8)?.try_into().ok()?);
        let first_commit = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
        (bytes.is_empty() && validate_key(key).is_ok()).then_some(KeyRecord {
            world,
            writer,
            key,
            request,
            recorded_at_unix_ms,
            first_commit,
            count,
        })
    }

    fn value(&self) -> KeyValue {
        (
            self.request,
            self.recorded_at_unix_ms,
            self.first_commit,
            self.count,
        )
    }

    /// Stores the record (replacing an expired one of the same key).
    pub(crate) fn insert(&self, tables: &mut KeyTables<'_, '_>) -> Result<(), StoreError> {
        let old = tables
            .keys
            .insert((self.world, self.writer, self.key), self.value())?
            .map(|old| old.value().1);
        if let Some(old_recorded_at) = old {
            tables
                .expiry
                .remove((old_recorded_at, self.world, self.writer, self.key))?;
        }
        tables.expiry.insert(
            (self.recorded_at_unix_ms, self.world, self.writer, self.key),
            (),
        )?;
        Ok(())
    }
}

/// The two tables of keys, open in a write transaction.
pub(crate) struct KeyTables<'t, 'txn> {
    pub keys: &'t mut Table<'txn, (&'static str, PublicKey, &'static [u8]), KeyValue>,
    pub expiry: &'t mut Table<'txn, (i64, &'static str, PublicKey, &'static [u8]), ()>,
}

/// Checks a client's key: 1 to 64 bytes.
pub fn validate_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(StoreError::InvalidIdempotencyKey {
            reason: format!(
                "an idempotency key is 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes; this one is {}",
                key.len()
            ),
        });
    }
    Ok(())
}

/// What names a request for its key: a hash of its atoms' canonical encodings, each
/// with an empty header (world, writer and place in the chain are the key's or the
/// node's).
pub(crate) fn request_hash(atoms: &[AtomContent], scratch: &mut Vec<u8>) -> Hash {
    let header = EntryHeader {
        world: "",
        writer: &ZERO_HASH,
        seq: 0,
        prev: &ZERO_HASH,
        commit: 0,
        recorded_at_unix_ms: 0,
    };
    let mut hasher = blake3::Hasher::new_derive_key(REQUEST_CONTEXT);
    for atom in atoms {
        scratch.clear();
        encode_entry(&header, atom, scratch);
        hasher.update(&(scratch.len() as u64).to_be_bytes());
        hasher.update(scratch);
    }
    *hasher.finalize().as_bytes()
}

/// The live record of `key` (one recorded within the window before `now_unix_ms`).
pub(crate) fn find(
    keys: &impl ReadableTable<(&'static str, PublicKey, &'static [u8]), KeyValue>,
    world: &str,
    writer: &PublicKey,
    key: &[u8],
    now_unix_ms: i64,
) -> Result<Option<KeyValue>, StoreError> {
    Ok(keys
        .get((world, *writer, key))?
        .map(|value| value.value())
        .filter(|(_, recorded_at, _, _)| {
            now_unix_ms.saturating_sub(*recorded_at) < IDEMPOTENCY_WINDOW_MS
        }))
}

/// The receipts of the request a key names, read back from its entries.
pub(crate) fn receipts(
    entries: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    world: &str,
    (_, _, first_commit, count): KeyValue,
) -> Result<Vec<Receipt>, StoreError> {
    let mut receipts: Vec<Receipt> = Vec::with_capacity(count as usize);
    for commit in first_commit..first_commit + u64::from(count) {
        let row = entries
            .get((world, commit))?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!(
                    "an idempotency key names commit {commit} of {world:?}, which is missing"
                ),
            })?;
        let (id, entry) = split_row(world, commit, row.value())?;
        let receipt = match receipts.last() {
            // A request's atoms follow each other in their writer's chain.
            Some(last) => Receipt {
                id,
                seq: last.seq + 1,
                commit,
                prev: last.id,
            },
            None => {
                let atom = decode_entry(id, entry)?;
                Receipt {
                    id,
                    seq: atom.seq,
                    commit,
                    prev: atom.prev,
                }
            }
        };
        receipts.push(receipt);
    }
    Ok(receipts)
}

/// Removes up to [`PRUNE_PER_WRITE`] keys that left the window before `now_unix_ms`.
pub(crate) fn prune(tables: &mut KeyTables<'_, '_>, now_unix_ms: i64) -> Result<(), StoreError> {
    let cutoff = now_unix_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS);
    let mut expired = Vec::new();
    for row in tables.expiry.iter()?.take(PRUNE_PER_WRITE) {
        let (key, _) = row?;
        let (recorded_at, world, writer, key) = key.value();
        if recorded_at > cutoff {
            break;
        }
        expired.push((recorded_at, world.to_owned(), writer, key.to_vec()));
    }
    for (recorded_at, world, writer, key) in &expired {
        let key = (world.as_str(), *writer, key.as_slice());
        tables.expiry.remove((*recorded_at, key.0, key.1, key.2))?;
        let current = tables.keys.get(key)?.map(|value| value.value().1);
        if current == Some(*recorded_at) {
            tables.keys.remove(key)?;
        }
    }
    Ok(())
}
