//! The client's errors, and the stable error codes the node sends (schema `ErrorCode`).

use std::fmt;

use thiserror::Error;

use crate::keyfile::KeyFileError;

/// The stable codes that start every error the node sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    StaleEpoch,
    Unauthenticated,
    PermissionDenied,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Conflict,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, in schema order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::StaleEpoch,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::ResourceExhausted,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as spelled on the wire and in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::StaleEpoch => "staleEpoch",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permissionDenied",
            ErrorCode::InvalidArgument => "invalidArgument",
            ErrorCode::NotFound => "notFound",
            ErrorCode::ResourceExhausted => "resourceExhausted",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code that starts an exception description, if it starts with one.
    pub fn parse_description(description: &str) -> Option<(ErrorCode, &str)> {
        let (code, message) = description.split_once(": ")?;
        let code = ErrorCode::ALL
            .into_iter()
            .find(|known| known.as_str() == code)?;
        Some((code, message))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

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
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The principal holds no such capability (e.g. no write grant in that world).
    #[error("{0}")]
    NotGranted(String),
    /// A value given to the client library was malformed.
    #[error("{0}")]
    InvalidInput(String),
}

impl ClientError {
    /// The node's error code, if the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Node { code, .. } => Some(*code),
            _ => None,
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
