//! `Admin.backup` from the client's side: the node makes a consistent copy of its state
//! while it goes on serving; the client reads it file by file into a directory of its
//! own, checks every file against the manifest's size and BLAKE3, and writes the
//! manifest (`manifest.json`) last, so a directory without it is no backup.
//! `engramd restore --from DIR --data DIR` restores it.

use std::io::Write;
use std::path::Path;

use serde::Deserialize;

use crate::error::ClientError;
use engram_schema::engram_capnp::admin;

/// The manifest's file in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Bytes read a call.
const CHUNK_BYTES: u32 = 4 * 1024 * 1024;

/// What a backup holds, as its manifest says (the parts a client needs).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSummary {
    pub last_commit: u64,
    pub epoch: u64,
    pub worlds: Vec<serde_json::Value>,
    pub files: Vec<BackupFile>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct BackupFile {
    pub name: String,
    pub bytes: u64,
    #[serde(with = "hex::serde")]
    pub blake3: [u8; 32],
}

impl BackupSummary {
    /// Bytes of every file.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|file| file.bytes).sum()
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

/// Backs the node up into `destination`, a directory that must not exist or be empty;
/// `progress` is told the bytes written so far. Returns what the backup holds.
pub async fn backup(
    admin: &admin::Client,
    destination: &Path,
    mut progress: impl FnMut(u64),
) -> Result<BackupSummary, ClientError> {
    let occupied = std::fs::read_dir(destination).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(ClientError::InvalidInput(format!(
            "{} is not empty; back up into a new directory",
            destination.display()
        )));
    }
    std::fs::create_dir_all(destination)
        .map_err(io(format!("creating {}", destination.display())))?;
    let backup = admin
        .backup_request()
        .send()
        .promise
        .await?
        .get()?
        .get_backup()?;
    let response = backup.manifest_request().send().promise.await?;
    let text = response
        .get()?
        .get_manifest()?
        .to_string()
        .map_err(|error| {
            ClientError::InvalidInput(format!(
                "the node sent a manifest that is not UTF-8: {error}"
            ))
        })?;
    let summary: BackupSummary = serde_json::from_str(&text).map_err(|error| {
        ClientError::InvalidInput(format!(
            "the node sent a manifest that does not read: {error}"
        ))
    })?;
    let mut written = 0;
    for file in &summary.files {
        // The names are the node's: a plain file name, or nothing is written.
        let plain = !file.name.is_empty()
            && file.name != MANIFEST_FILE
            && !file.name.starts_with('.')
            && !file.name.contains(['/', '\\']);
        if !plain {
            return Err(ClientError::InvalidInput(format!(
                "the node's manifest names a file {:?}, which is no plain file name",
                file.name
            )));
        }
        let path = destination.join(&file.name);
        let mut output = std::io::BufWriter::new(
            std::fs::File::create(&path).map_err(io(format!("creating {}", path.display())))?,
        );
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0;
        while offset < file.bytes {
            let mut request = backup.read_request();
            request.get().set_file(file.name.as_str());
            request.get().set_offset(offset);
            request.get().set_length(CHUNK_BYTES);
            let response = request.send().promise.await?;
            let data = response.get()?.get_data()?;
            if data.is_empty() {
                break;
            }
            hasher.update(data);
            output
                .write_all(data)
                .map_err(io(format!("writing {}", path.display())))?;
            offset += data.len() as u64;
            written += data.len() as u64;
            progress(written);
        }
        output
            .into_inner()
            .map_err(|error| io(format!("writing {}", path.display()))(error.into_error()))?
            .sync_all()
            .map_err(io(format!("writing {}", path.display())))?;
        if offset != file.bytes || *hasher.finalize().as_bytes() != file.blake3 {
            return Err(ClientError::InvalidInput(format!(
                "{} does not match the backup's manifest (its size or BLAKE3 differs)",
                file.name
            )));
        }
    }
    let manifest = destination.join(MANIFEST_FILE);
    std::fs::write(&manifest, &text)
        .and_then(|()| std::fs::File::open(&manifest)?.sync_all())
        .map_err(io(format!("writing {}", manifest.display())))?;
    Ok(summary)
}
