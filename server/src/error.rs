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
    #[error(
        "refusing to listen on {address} without TLS: off loopback, a relay could pass a client's login on as its own; start with --tls (clients then connect to tls://ADDRESS and pin the node key), or with --insecure on a network you trust"
    )]
    Insecure { address: String },
    #[error("the node's TLS certificate: {reason}")]
    Tls { reason: String },
    #[error("joining fleet {name:?}: {reason}")]
    Fleet { name: String, reason: String },
    #[error("restore refused: {reason}")]
    Restore { reason: String },
}
