//! The store's one error type. Variants name what went wrong; `capabilities` alone maps
//! them to wire codes.

use thiserror::Error;

/// Why a store operation failed. A failed write changed nothing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A write or read named a world that does not exist.
    #[error("world {world:?} does not exist; create it with `engram world create {world}`")]
    WorldNotFound { world: String },
    /// `create world` named a world that already exists.
    #[error("world {world:?} already exists")]
    WorldExists { world: String },
    /// A write went to an archived world.
    #[error("world {world:?} is archived; resume it before writing")]
    WorldArchived { world: String },
    /// A world name broke the naming rules.
    #[error(
        "a world's vector dimension is 1 to {max} (0 leaves it to the first vector); got {dimension}",
        max = crate::limits::ATOM_VECTOR_DIMENSIONS_MAX
    )]
    InvalidWorldDimension { dimension: u32 },

    #[error("invalid world name {name:?}: {reason}")]
    InvalidWorldName { name: String, reason: &'static str },
    /// An atom of a batch broke a rule; `index` is its position in the batch.
    #[error("atom {index} of the batch is invalid: {reason}")]
    InvalidAtom { index: usize, reason: String },
    /// A batch was empty or too large.
    #[error("invalid batch: {reason}")]
    InvalidBatch { reason: String },
    /// A query was malformed.
    #[error("invalid query: {reason}")]
    InvalidQuery { reason: String },
    /// An atom id was requested that is not in the world.
    #[error("no atom {id} in world {world:?}")]
    AtomNotFound { world: String, id: String },
    /// An idempotency key was malformed.
    #[error("invalid idempotency key: {reason}")]
    InvalidIdempotencyKey { reason: String },
    /// An idempotency key was used again, within its window, for other atoms.
    #[error(
        "idempotency key {key} was used for other atoms at commit {commit}; a retry must send the same atoms, a new request a new key"
    )]
    IdempotencyConflict { key: String, commit: u64 },
    /// A lifecycle transition is not legal where its target stands (or across worlds).
    #[error("{reason}")]
    IllegalTransition { reason: String },
    /// A principal was named that does not exist.
    #[error("principal {name:?} does not exist")]
    PrincipalNotFound { name: String },
    /// A principal's name or key is already registered.
    #[error("a principal with this {what} already exists ({value})")]
    PrincipalExists { what: &'static str, value: String },
    /// Removing this principal would leave the node without an admin.
    #[error("principal {name:?} is the last admin; add another admin before removing it")]
    LastAdmin { name: String },
    /// A principal record broke a rule (name, grants).
    #[error("invalid principal: {reason}")]
    InvalidPrincipal { reason: String },
    /// A world's group could not be written to its fleet stream (nothing was written).
    #[error("world {world:?} could not be written to its fleet stream: {reason}")]
    Replication { world: String, reason: String },
    /// The group's outcome is unknown: its entries may reach the store (a fleet stream
    /// or the journal may hold them) though it was not acknowledged.
    #[error(
        "the write may have been written ({reason}); retry with the same idempotency key, \
         which writes it at most once (a retry without one may write it twice)"
    )]
    MayHaveBeenWritten { reason: String },
    /// The request was made under an epoch the node has left.
    #[error(
        "this capability was issued in epoch {issued}; the node is at epoch {current}: graft again"
    )]
    StaleEpoch { issued: u64, current: u64 },
    /// The acting principal no longer holds the right it needs.
    #[error("{reason}")]
    PermissionDenied { reason: String },
    /// The epoch head was not 32 bytes.
    #[error("invalid epoch head: {reason}")]
    InvalidEpochHead { reason: String },
    /// The group's write transaction failed; nothing of the group was written.
    #[error("the write transaction failed, nothing was written: {reason}")]
    TransactionFailed { reason: String },
    /// A limit of the store was reached (e.g. the revocation list's).
    #[error("{reason}")]
    LimitReached { reason: String },
    /// A read needs more than one call's budget.
    #[error("{what} needs more than one call's budget ({examined} entries examined)")]
    BudgetSpent { what: String, examined: usize },
    /// The writer thread has stopped (the node is shutting down).
    #[error("the writer has stopped; the node is shutting down")]
    WriterStopped,
    /// The audit trail cannot be written: reads are refused rather than unrecorded.
    #[error(
        "the audit trail cannot be written (see the node's log); reads are refused until the node restarts"
    )]
    AuditStopped,
    /// Stored bytes do not decode: the file is damaged or was written by a newer engram.
    #[error("stored data is corrupt: {what}")]
    Corrupt { what: String },
    /// The data file was written by another format version.
    #[error("the data file has format version {found}; this engram reads version {expected}")]
    FormatVersion { found: u64, expected: u64 },
    /// The write-ahead journal failed.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// A file of the node's own (a backup's) could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// redb failed.
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($source:ty),*) => {$(
        impl From<$source> for StoreError {
            fn from(error: $source) -> Self {
                StoreError::Storage(error.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
