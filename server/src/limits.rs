//! engramd's defaults for the limits an operator can change on the command line.

/// Client connections served at once (`--connections-max`).
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Connections one peer may hold at once (`--connections-per-address-max`): a TCP peer
/// by its IP address, a Unix socket peer by its user id.
pub const CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = 256;
/// Connections that have not logged in (or restored a token) yet, of every peer
/// together (`--pre-auth-connections-max`).
pub const PRE_AUTH_CONNECTIONS_MAX_DEFAULT: usize = 256;
/// How long a new connection may take to log in before it is closed
/// (`--handshake-timeout-ms`).
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Bytes of answers a connection may leave unread before the node stops reading its
/// calls (`--connection-unread-bytes-max`).
pub const CONNECTION_UNREAD_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// How long a connection's peer may read none of its answers before the node closes it
/// (`--write-stall-timeout-ms`).
pub const WRITE_STALL_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// How long a logged-in connection may send nothing, with no call in flight and no live
/// subscription, before the node closes it (`--idle-timeout-ms`; 0 for never).
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 600_000;
/// Connections past `--connections-max` answered with `resourceExhausted` at once;
/// beyond them, a connection is closed without an answer.
pub const REFUSED_CONNECTIONS_MAX: usize = 64;
/// Connections closed to make room for newer ones that may still hold their descriptor
/// (their task has not ended) at once: for the newcomers of one peer and process, and
/// in all; past them, new connections are refused.
pub const CLOSING_CONNECTIONS_MAX: usize = 64;
pub const CLOSING_CONNECTIONS_TOTAL_MAX: usize = 1024;
/// How long a refused connection stays open for its client to read why.
pub const REFUSED_GRACE_MS: u64 = 1_000;
/// Bytes of one incoming Cap'n Proto message (`--message-bytes-max`).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Nesting depth of one incoming message.
pub const MESSAGE_NESTING_MAX: i32 = 64;

/// How long shutdown waits for subscribers to receive their end notice.
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;

const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT.is_multiple_of(8));
