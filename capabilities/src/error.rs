//! Capability errors and the only place engram turns errors into wire exceptions:
//! `code: message`, with the codes of the schema's `ErrorCode`.

pub use engram_schema::ErrorCode;
use engram_store::StoreError;
use thiserror::Error;

/// Why a capability call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CapabilityError {
    #[error(
        "this capability was issued in epoch {issued}; the node is at epoch {current}: graft again"
    )]
    StaleEpoch { issued: u64, current: u64 },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CapabilityError {
    /// The stable code this error travels under.
    pub fn code(&self) -> ErrorCode {
        match self {
            CapabilityError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            CapabilityError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            CapabilityError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            CapabilityError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            CapabilityError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            CapabilityError::NotFound(_) => ErrorCode::NotFound,
            CapabilityError::Conflict(_) => ErrorCode::Conflict,
            CapabilityError::Unavailable(_) => ErrorCode::Unavailable,
            CapabilityError::Internal(_) => ErrorCode::Internal,
            CapabilityError::Store(error) => match error {
                StoreError::WorldNotFound { .. }
                | StoreError::AtomNotFound { .. }
                | StoreError::PrincipalNotFound { .. } => ErrorCode::NotFound,
                StoreError::WorldExists { .. }
                | StoreError::WorldArchived { .. }
                | StoreError::PrincipalExists { .. }
                | StoreError::LastAdmin { .. }
                | StoreError::IllegalTransition { .. }
                | StoreError::IdempotencyConflict { .. } => ErrorCode::Conflict,
                StoreError::InvalidWorldName { .. }
                | StoreError::InvalidWorldDimension { .. }
                | StoreError::InvalidAtom { .. }
                | StoreError::InvalidBatch { .. }
                | StoreError::InvalidQuery { .. }
                | StoreError::InvalidPrincipal { .. }
                | StoreError::InvalidEpochHead { .. }
                | StoreError::InvalidIdempotencyKey { .. } => ErrorCode::InvalidArgument,
                StoreError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
                StoreError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
                StoreError::WriterStopped
                | StoreError::AuditStopped
                | StoreError::Replication { .. }
                | StoreError::MayHaveBeenWritten { .. } => ErrorCode::Unavailable,
                StoreError::BudgetSpent { .. } | StoreError::LimitReached { .. } => {
                    ErrorCode::ResourceExhausted
                }
                _ => ErrorCode::Internal,
            },
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        CapabilityError::InvalidArgument(message.into())
    }

    pub(crate) fn denied(message: impl Into<String>) -> Self {
        CapabilityError::PermissionDenied(message.into())
    }
}

impl From<CapabilityError> for capnp::Error {
    fn from(error: CapabilityError) -> Self {
        if error.code() == ErrorCode::Internal {
            tracing::error!(%error, "internal error answered to a client");
        }
        capnp::Error::failed(format!("{}: {error}", error.code().as_str()))
    }
}

impl From<std::str::Utf8Error> for CapabilityError {
    fn from(error: std::str::Utf8Error) -> Self {
        CapabilityError::invalid(format!("text is not valid UTF-8: {error}"))
    }
}

impl From<capnp::NotInSchema> for CapabilityError {
    fn from(error: capnp::NotInSchema) -> Self {
        CapabilityError::invalid(format!(
            "an enum value is unknown to this node ({error}); upgrade the node or use a known value"
        ))
    }
}

/// `?` support for handlers that return `capnp::Error`.
pub(crate) trait Wire<T> {
    fn wire(self) -> Result<T, capnp::Error>;
}

impl<T, E: Into<CapabilityError>> Wire<T> for Result<T, E> {
    fn wire(self) -> Result<T, capnp::Error> {
        self.map_err(|error| error.into().into())
    }
}
