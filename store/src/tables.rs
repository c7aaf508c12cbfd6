//! The redb tables (store/FORMAT.md describes each key and value).

use redb::TableDefinition;

use crate::atom::{Hash, PublicKey};

/// id → canonical entry bytes. The only copy of atom content.
pub(crate) const ATOMS: TableDefinition<Hash, &[u8]> = TableDefinition::new("atoms");
/// (world, writer, seq) → id: every chain, in seq order.
pub(crate) const CHAINS: TableDefinition<(&str, PublicKey, u64), Hash> =
    TableDefinition::new("chains");
/// (world, writer) → (seq, id) of the chain's last entry.
pub(crate) const HEADS: TableDefinition<(&str, PublicKey), (u64, Hash)> =
    TableDefinition::new("heads");
/// (world, commit) → id: each world's log in commit order.
pub(crate) const WORLD_LOG: TableDefinition<(&str, u64), Hash> = TableDefinition::new("world_log");
/// (world, kind code, commit) → id.
pub(crate) const KIND_INDEX: TableDefinition<(&str, u16, u64), Hash> =
    TableDefinition::new("kind_index");
/// (world, label, commit) → id.
pub(crate) const LABEL_INDEX: TableDefinition<(&str, &str, u64), Hash> =
    TableDefinition::new("label_index");
/// (world, writer, commit) → id.
pub(crate) const WRITER_INDEX: TableDefinition<(&str, PublicKey, u64), Hash> =
    TableDefinition::new("writer_index");
/// world name → (state code, atom count, vector dimension or 0).
pub(crate) const WORLDS: TableDefinition<&str, (u8, u64, u32)> = TableDefinition::new("worlds");
/// public key → principal record (JSON).
pub(crate) const PRINCIPALS: TableDefinition<PublicKey, &[u8]> = TableDefinition::new("principals");
/// principal name → public key.
pub(crate) const PRINCIPAL_NAMES: TableDefinition<&str, PublicKey> =
    TableDefinition::new("principal_names");
/// epoch number → (head, advanced at, Unix ms).
pub(crate) const EPOCHS: TableDefinition<u64, (Hash, i64)> = TableDefinition::new("epochs");
/// Named counters: `format_version`, `last_commit`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_LAST_COMMIT: &str = "last_commit";
