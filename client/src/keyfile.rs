//! Key files: one line holding a 32-byte ed25519 secret seed in hex, mode 0600. The node
//! writes its own and the first admin's in this format; `engram keygen` writes new ones.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use thiserror::Error;

/// Why a key file could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is readable by group or others; run `chmod 600 {path}`")]
    Permissions { path: PathBuf },
    #[error("key file {path} must hold one line of 64 hex digits (a 32-byte ed25519 seed)")]
    Format { path: PathBuf },
    #[error("no randomness from the operating system: {0}")]
    Randomness(String),
}

/// A fresh random key.
pub fn generate() -> Result<SigningKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| KeyFileError::Randomness(error.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to a new file at `path` with mode 0600, durably (the file, then its
/// directory, so that a crash cannot leave the directory without the file's entry);
/// never overwrites.
pub fn write_new(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    let with_path = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(with_path)?;
    writeln!(file, "{}", hex::encode(key.as_bytes())).map_err(with_path)?;
    file.sync_all().map_err(with_path)?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| KeyFileError::Io {
            path: directory.to_owned(),
            source,
        })
}

/// Reads a key file, refusing one that group or others can read.
pub fn read(path: &Path) -> Result<SigningKey, KeyFileError> {
    let with_path = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(with_path)?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(with_path)?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| KeyFileError::Format {
            path: path.to_owned(),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}
