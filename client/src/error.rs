//! The client's errors. The stable error codes the node sends are the schema's
//! `ErrorCode`, re-exported here.

pub use engram_schema::ErrorCode;
use thiserror::Error;

use crate::keyfile::KeyFileError;

/// Why a client call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node answered with a coded error.
    #[error("{code}: {message}")]
    Node { code: ErrorCode, message: String },
    /// The connection or the protocol failed (no code: not an answer of the node).
    #[error("{0}")]
    Rpc(capnp::Error),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The node at `address` presented another key than the one pinned: it is not the
    /// node meant, or its key changed.
    #[error(
        "the node at {address} presented key {presented}, but {pinned_by} pins {expected}: refusing it (if the node's key really changed, update the pin)"
    )]
    NodeKeyMismatch {
        address: String,
        presented: String,
        expected: String,
        pinned_by: String,
    },
    /// The principal holds no such capability (e.g. no write grant in that world).
    #[error("{0}")]
    NotGranted(String),
    /// A value given to the client library was malformed.
    #[error("{0}")]
    InvalidInput(String),
    /// A local file could not be written or read (e.g. a backup's destination).
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl ClientError {
    /// The node's error code, if the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Node { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether a call that failed so may have been lost rather than refused, and may
    /// be sent again (a write only with an idempotency key): the node failed
    /// (`internal`), could not serve it now (`unavailable`), or the connection broke.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Node { code, .. } => {
                matches!(code, ErrorCode::Internal | ErrorCode::Unavailable)
            }
            ClientError::Rpc(error) => matches!(
                error.kind,
                capnp::ErrorKind::Disconnected | capnp::ErrorKind::Overloaded
            ),
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }
}

impl From<capnp::Error> for ClientError {
    fn from(error: capnp::Error) -> Self {
        // Each proxying hop (a capability handed on through another connection) adds
        // one "remote exception: " prefix.
        let mut description = error.extra.as_str();
        while let Some(rest) = description.strip_prefix("remote exception: ") {
            description = rest;
        }
        match ErrorCode::parse_description(description) {
            Some((code, message)) => ClientError::Node {
                code,
                message: message.to_owned(),
            },
            None => ClientError::Rpc(error),
        }
    }
}
