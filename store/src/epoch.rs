//! Epochs: a monotonic number plus a 32-byte head. Advancing revokes every capability
//! issued under an older epoch.

use crate::atom::Hash;

/// One epoch of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    /// Starts at 1; only ever increases by one.
    pub number: u64,
    pub head: Hash,
    /// Display only.
    pub advanced_at_unix_ms: i64,
}
