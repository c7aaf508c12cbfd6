//! The redb tables (store/FORMAT.md describes each key and value).
//!
//! Atom content lives in one table keyed by (world, commit), so a durable write appends
//! at the right edge of each world's range and a world reads back in storage order.
//! Everything else about atoms is an index over it.

use redb::TableDefinition;

use crate::atom::{Hash, PublicKey};
use crate::error::StoreError;
use crate::idempotency::KeyValue;

/// (world, commit) → stored row: the entry's id (32 bytes), then its canonical bytes.
/// The only copy of atom content.
pub(crate) const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
/// id → commit: `get` by id.
pub(crate) const IDS: TableDefinition<&Hash, u64> = TableDefinition::new("ids");
/// (world, term, commit) → (): one posting per kind, label and writer of each atom.
pub(crate) const POSTINGS: TableDefinition<(&str, &[u8], u64), ()> =
    TableDefinition::new("postings");
/// (world, writer) → (seq, id) of the chain's last entry.
pub(crate) const HEADS: TableDefinition<(&str, PublicKey), (u64, Hash)> =
    TableDefinition::new("heads");
/// (world, atom commit, change commit) → lifecycle state code: every state an atom
/// entered other than `asserted`, at the commit it entered it (a proposal's own commit,
/// then each transition's). The atom's state as of commit N is the last row at or
/// before N; with none it is asserted.
pub(crate) const STATES: TableDefinition<(&str, u64, u64), u8> = TableDefinition::new("states");
/// (world, state code, atom commit) → (): the atoms in each state other than
/// `asserted` now, for asks by state.
pub(crate) const IN_STATE: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("in_state");
/// (world, target commit, link kind code, source commit) → (): each link between two
/// atoms of one world, found from its target (who contradicts, confirms, corrects it).
pub(crate) const LINKS: TableDefinition<(&str, u64, u16, u64), ()> = TableDefinition::new("links");
/// (world, writer, label) → (confirms, corrects): the links other writers' atoms made to
/// the writer's atoms carrying the label; label "" counts them across every label.
pub(crate) const TRUST: TableDefinition<(&str, PublicKey, &str), (u64, u64)> =
    TableDefinition::new("trust");
/// (world, word, constraint commit) → (): the key word (the longest) of each term a
/// constraint forbids, for `check`.
pub(crate) const FORBIDS: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("forbids");
/// world name → (state code, atom count, vector dimension or 0).
pub(crate) const WORLDS: TableDefinition<&str, (u8, u64, u32)> = TableDefinition::new("worlds");
/// public key → principal record (JSON).
pub(crate) const PRINCIPALS: TableDefinition<PublicKey, &[u8]> = TableDefinition::new("principals");
/// principal name → public key.
pub(crate) const PRINCIPAL_NAMES: TableDefinition<&str, PublicKey> =
    TableDefinition::new("principal_names");
/// epoch number → (head, advanced at, Unix ms).
pub(crate) const EPOCHS: TableDefinition<u64, (Hash, i64)> = TableDefinition::new("epochs");
/// (epoch, revocation id) → (the token's principal, revoked at, Unix ms): the tokens
/// revoked in the current epoch, by the revocation id of a token's last block (64
/// bytes). An epoch advance empties it, since it leaves every older token stale anyway.
pub(crate) const REVOKED_TOKENS: TableDefinition<(u64, &[u8]), (PublicKey, i64)> =
    TableDefinition::new("revoked_tokens");
/// (world, writer, idempotency key) → (request hash, recorded at Unix ms, first commit,
/// atom count): the keyed `remember` requests of the window (`idempotency.rs`).
pub(crate) const IDEMPOTENCY_KEYS: TableDefinition<(&str, PublicKey, &[u8]), KeyValue> =
    TableDefinition::new("idempotency_keys");
/// (recorded at Unix ms, world, writer, idempotency key) → (): the keys by age, so the
/// ones past the window are pruned from the oldest, never by a scan.
pub(crate) const IDEMPOTENCY_EXPIRY: TableDefinition<(i64, &str, PublicKey, &[u8]), ()> =
    TableDefinition::new("idempotency_expiry");
/// World → the position in its fleet stream up to which this node holds the world's
/// entries (a node in a fleet; `replica.rs`).
pub(crate) const STREAM_POSITIONS: TableDefinition<&str, u64> =
    TableDefinition::new("stream_positions");
/// (world, position) → (writer, seq, reason): a message of the world's fleet stream,
/// signed by a node of the fleet, that this node refused (nothing of it stored): its copy
/// of the world then differs from the stream's, and `verify` says so. Writer and seq
/// name the entry refused, zero when the message was refused whole.
pub(crate) const STREAM_REFUSALS: TableDefinition<(&str, u64), (PublicKey, u64, &str)> =
    TableDefinition::new("stream_refusals");
/// Named counters: `format_version`, `last_commit`, and in a fleet `commit_slot`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_LAST_COMMIT: &str = "last_commit";
/// A random number given the store when it is created (or first opened by a version
/// that knows it): what derived files on disk (the text index) are checked against.
pub(crate) const META_STORE_ID: &str = "store_id";
/// A node in a fleet gives out only the commits `≡ slot (mod COMMIT_SLOTS)`.
pub(crate) const META_COMMIT_SLOT: &str = "commit_slot";

/// The posting terms: a tag byte, then the value.
const TERM_KIND: u8 = b'k';
const TERM_LABEL: u8 = b'l';
const TERM_WRITER: u8 = b'w';

/// A posting term, built in a reusable buffer.
pub(crate) struct Term(Vec<u8>);

impl Term {
    pub(crate) fn new() -> Term {
        Term(Vec::with_capacity(1 + 128))
    }

    pub(crate) fn kind(&mut self, code: u16) -> &[u8] {
        self.tagged(TERM_KIND, &code.to_be_bytes())
    }

    pub(crate) fn label(&mut self, label: &str) -> &[u8] {
        self.tagged(TERM_LABEL, label.as_bytes())
    }

    pub(crate) fn writer(&mut self, writer: &PublicKey) -> &[u8] {
        self.tagged(TERM_WRITER, writer)
    }

    fn tagged(&mut self, tag: u8, value: &[u8]) -> &[u8] {
        self.0.clear();
        self.0.push(tag);
        self.0.extend_from_slice(value);
        &self.0
    }
}

/// Builds the stored row of an entry: its id, then its bytes.
pub(crate) fn entry_row(id: &Hash, entry: &[u8], row: &mut Vec<u8>) {
    row.clear();
    row.extend_from_slice(id);
    row.extend_from_slice(entry);
}

/// Splits a stored row into the entry's recorded id and its bytes.
pub(crate) fn split_row<'row>(
    world: &str,
    commit: u64,
    row: &'row [u8],
) -> Result<(Hash, &'row [u8]), StoreError> {
    match row.split_first_chunk::<32>() {
        Some((id, entry)) => Ok((*id, entry)),
        None => Err(StoreError::Corrupt {
            what: format!(
                "the row of commit {commit} in {world:?} is {} bytes long",
                row.len()
            ),
        }),
    }
}
