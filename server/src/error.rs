//! engramd's start-up errors: what failed, on which path, and how to fix it.

use std::path::PathBuf;

use engram_store::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] engram_client::keyfile::KeyFileError),
    #[error("store {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("listening on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}
