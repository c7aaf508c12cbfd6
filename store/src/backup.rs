//! Online backup: a consistent copy of the store made from one read snapshot while the
//! writer goes on, table by table into a fresh redb file (never a copy of the live
//! file's bytes, which a commit may be changing), with a manifest of where it stood —
//! the last commit, the epoch, every world and each of its chains' heads — and the
//! BLAKE3 of every file the backup holds. Restoring checks the files against the
//! manifest, then the restored store against it, then every chain.

use std::path::Path;

use redb::{
    Database, ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::tables::*;
use crate::{ReadView, Store, StoreError};

/// The manifest's format; a restore refuses another.
pub const MANIFEST_FORMAT: u32 = 1;
/// The manifest's file in a backup.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: u32,
    pub created_at_unix_ms: i64,
    /// The store's last commit in the snapshot the backup copied.
    pub last_commit: u64,
    pub epoch: u64,
    pub worlds: Vec<WorldManifest>,
    /// Every file of the backup but the manifest.
    pub files: Vec<FileManifest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldManifest {
    pub name: String,
    pub state: String,
    pub atoms: u64,
    /// Each writer's newest entry in the world.
    pub heads: Vec<HeadManifest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadManifest {
    #[serde(with = "hex::serde")]
    pub writer: [u8; 32],
    pub seq: u64,
    #[serde(with = "hex::serde")]
    pub id: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileManifest {
    pub name: String,
    pub bytes: u64,
    #[serde(with = "hex::serde")]
    pub blake3: [u8; 32],
}

impl FileManifest {
    /// The size and BLAKE3 of the file `name` in `directory`.
    pub fn of(directory: &Path, name: &str) -> Result<FileManifest, std::io::Error> {
        let file = std::fs::File::open(directory.join(name))?;
        let bytes = file.metadata()?.len();
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(file)?;
        Ok(FileManifest {
            name: name.to_owned(),
            bytes,
            blake3: *hasher.finalize().as_bytes(),
        })
    }
}

/// What the store holds at `view`: its last commit, epoch and worlds with their heads
/// (no files yet).
pub fn describe(view: &ReadView) -> Result<Manifest, StoreError> {
    let mut worlds = Vec::new();
    for world in view.worlds()? {
        let heads = view
            .heads(&world.name)?
            .into_iter()
            .map(|head| HeadManifest {
                writer: head.writer,
                seq: head.seq,
                id: head.id,
            })
            .collect();
        worlds.push(WorldManifest {
            state: world.state.as_str().to_owned(),
            atoms: world.atoms,
            name: world.name,
            heads,
        });
    }
    Ok(Manifest {
        format: MANIFEST_FORMAT,
        created_at_unix_ms: crate::now_unix_ms(),
        last_commit: view.last_commit(),
        epoch: view.epoch()?.number,
        worlds,
        files: Vec::new(),
    })
}

/// Copies every row of `table` from `from` to `to`; a table `from` lacks is skipped.
pub(crate) fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let source = match from.open_table(table) {
        Ok(source) => source,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    let mut target = to.open_table(table)?;
    for row in source.iter()? {
        let (key, value) = row?;
        target.insert(key.value(), value.value())?;
    }
    Ok(())
}

/// A fresh redb file at `path` filled by `fill` in one durable transaction.
pub(crate) fn fresh(
    path: &Path,
    fill: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let database = Database::create(path)?;
    let transaction = database.begin_write()?;
    fill(&transaction)?;
    transaction.commit()?;
    Ok(())
}

impl Store {
    /// Copies the store as it stands now into a new redb file `file` in `directory`,
    /// from one read snapshot, while writes go on; returns what the copy holds.
    pub fn backup_to(&self, directory: &Path, file: &str) -> Result<Manifest, StoreError> {
        let view = self.read()?;
        let manifest = describe(&view)?;
        let from = &view.snapshot.transaction;
        fresh(&directory.join(file), |to| {
            copy(from, to, ENTRIES)?;
            copy(from, to, IDS)?;
            copy(from, to, POSTINGS)?;
            copy(from, to, HEADS)?;
            copy(from, to, STATES)?;
            copy(from, to, IN_STATE)?;
            copy(from, to, LINKS)?;
            copy(from, to, TRUST)?;
            copy(from, to, FORBIDS)?;
            copy(from, to, WORLDS)?;
            copy(from, to, PRINCIPALS)?;
            copy(from, to, PRINCIPAL_NAMES)?;
            copy(from, to, EPOCHS)?;
            copy(from, to, REVOKED_TOKENS)?;
            copy(from, to, IDEMPOTENCY_KEYS)?;
            copy(from, to, IDEMPOTENCY_EXPIRY)?;
            copy(from, to, STREAM_POSITIONS)?;
            copy(from, to, STREAM_REFUSALS)?;
            copy(from, to, META)
        })?;
        Ok(manifest)
    }
}
