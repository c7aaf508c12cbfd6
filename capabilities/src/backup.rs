//! `Backup`: an online backup (`Admin.backup`), held on the node's disk in a directory
//! of its own under the data directory's `backups/`, read by its holder file by file,
//! and deleted when the holder lets go of it. One at a time on a node.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;

use engram_schema::engram_capnp::backup;
use engram_store::backup::{FileManifest, Manifest};

use crate::convert::Param;
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;
use crate::node::Node;

/// The store's copy in a backup.
pub const STORE_COPY: &str = "engram.redb";
/// The audit trail's copy in a backup.
pub const AUDIT_COPY: &str = "audit.redb";
/// The most one `Backup.read` answers.
pub const BACKUP_READ_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// The node's one place for a backup, taken while a `Backup` lives.
pub(crate) struct BackupSlot {
    node: Rc<Node>,
}

impl BackupSlot {
    pub(crate) fn take(node: &Rc<Node>) -> Result<BackupSlot, CapabilityError> {
        if node.backup_held.replace(true) {
            return Err(CapabilityError::ResourceExhausted(
                "another backup of this node is being read; try again once it is released".into(),
            ));
        }
        Ok(BackupSlot { node: node.clone() })
    }
}

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.node.backup_held.set(false);
    }
}

pub struct Backup {
    grip: Grip,
    manifest: Manifest,
    /// The manifest as JSON, as `manifest` answers it.
    text: String,
    directory: PathBuf,
    _slot: BackupSlot,
}

impl crate::metered::Gripped for Backup {
    fn grip(&self) -> &Grip {
        &self.grip
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.directory) {
            tracing::warn!(%error, directory = %self.directory.display(), "a released backup could not be deleted");
        }
    }
}

impl Backup {
    /// Makes a backup of the node in a new directory under `backups`, off the RPC
    /// thread; the caller holds the slot.
    pub(crate) async fn make(
        grip: Grip,
        slot: BackupSlot,
        backups: PathBuf,
    ) -> Result<Backup, CapabilityError> {
        let mut name = [0u8; 16];
        getrandom::fill(&mut name)
            .map_err(|error| CapabilityError::Internal(format!("no randomness: {error}")))?;
        let directory = backups.join(hex::encode(name));
        let audit = grip.node.audit.clone();
        let making = directory.clone();
        let made = grip
            .off_thread(move |store| {
                let io = |error: std::io::Error| engram_store::StoreError::Io {
                    what: format!("writing the backup in {}", making.display()),
                    source: error,
                };
                std::fs::create_dir_all(&making).map_err(io)?;
                let mut manifest = store.backup_to(&making, STORE_COPY)?;
                audit.backup_to(&making.join(AUDIT_COPY))?;
                for file in [STORE_COPY, AUDIT_COPY] {
                    manifest
                        .files
                        .push(FileManifest::of(&making, file).map_err(io)?);
                }
                Ok(manifest)
            })
            .await;
        let manifest = match made {
            Ok(manifest) => manifest,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&directory);
                return Err(error);
            }
        };
        let text = serde_json::to_string(&manifest).expect("a manifest serializes");
        tracing::info!(
            principal = %grip.name,
            last_commit = manifest.last_commit,
            directory = %directory.display(),
            "backup made"
        );
        Ok(Backup {
            grip,
            manifest,
            text,
            directory,
            _slot: slot,
        })
    }
}

impl backup::Server for Backup {
    async fn manifest(
        self: Rc<Self>,
        _: backup::ManifestParams,
        mut results: backup::ManifestResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(None, 0).wire()?;
        results.get().set_manifest(self.text.as_str());
        Ok(())
    }

    async fn read(
        self: Rc<Self>,
        params: backup::ReadParams,
        mut results: backup::ReadResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(None, 0).wire()?;
        let params = params.get().param()?;
        let name = params
            .get_file()
            .param()?
            .to_str()
            .map_err(CapabilityError::from)
            .wire()?;
        let (offset, length) = (params.get_offset(), params.get_length());
        if !(1..=BACKUP_READ_BYTES_MAX).contains(&length) {
            return Err(CapabilityError::invalid(format!(
                "length must be 1 to {BACKUP_READ_BYTES_MAX} bytes"
            ))
            .into());
        }
        let Some(file) = self.manifest.files.iter().find(|file| file.name == name) else {
            return Err(
                CapabilityError::NotFound(format!("the backup holds no file {name:?}")).into(),
            );
        };
        let path = self.directory.join(&file.name);
        let length = u64::from(length).min(file.bytes.saturating_sub(offset)) as usize;
        let data = self
            .grip
            .off_thread(move |_| {
                let mut data = vec![0; length];
                let opened = std::fs::File::open(&path).and_then(|opened| {
                    opened.read_exact_at(&mut data, offset)?;
                    Ok(())
                });
                opened.map_err(|source| engram_store::StoreError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })?;
                Ok(data)
            })
            .await
            .wire()?;
        results.get().set_data(&data);
        Ok(())
    }
}
