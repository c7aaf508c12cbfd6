//! Limits the capabilities enforce, in one place.

/// Outstanding login nonces per connection; issuing more forgets the oldest.
pub const LOGIN_NONCES_PER_CONNECTION_MAX: usize = 8;
/// Bytes of a `Signer.sign` domain.
pub const SIGN_DOMAIN_BYTES_MAX: usize = 128;
/// Bytes of a `Signer.sign` message.
pub const SIGN_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Domains a signer may be attenuated to.
pub const SIGN_DOMAINS_MAX: usize = 64;

/// Default of `engramd --subscriptions-per-principal-max`.
pub const SUBSCRIPTIONS_PER_PRINCIPAL_MAX_DEFAULT: usize = 256;
/// Default of `engramd --calls-in-flight-max`: writes and verifications one connection may
/// have waiting at once, so one client cannot fill the writer's queue for everyone.
pub const CALLS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 1024;
/// Default of `engramd --login-attempts-per-minute`: login attempts one peer (an IP
/// address, or a local user on the Unix socket) may make a minute, in a burst or spread.
pub const LOGIN_ATTEMPTS_PER_MINUTE_DEFAULT: u32 = 600;
/// Default of `engramd --reads-in-flight-max`: reads off the RPC thread one connection
/// may have waiting at once. Each may answer up to 8 MiB, so this bounds what one
/// connection's pipelined reads can make the node hold.
pub const READS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 4;
/// Default of `engramd --read-workers`: one read off the RPC thread per core, so heavy
/// reads cannot crowd the RPC and writer threads out of the machine.
pub fn read_workers_default() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get())
}
/// Atoms in one `AtomSink.push`. Together with Cap'n Proto's flow-control window this
/// bounds what the node holds for a slow subscriber.
pub const SUBSCRIPTION_PUSH_ATOMS_MAX: u32 = 64;

/// The longest a connection rests after a call past a rate or a refused login (until the
/// rate allows another, but no longer than this).
pub const REST_MAX_MS: u64 = 1_000;

/// How long a subscription's end notice waits for the sink to take it; a sink that never
/// answers does not keep the subscription counted.
pub const SUBSCRIPTION_END_WAIT_MS: u64 = 5_000;

const _: () = assert!(LOGIN_NONCES_PER_CONNECTION_MAX >= 1);
const _: () = assert!(
    SUBSCRIPTION_PUSH_ATOMS_MAX >= 1
        && SUBSCRIPTION_PUSH_ATOMS_MAX <= engram_store::limits::REPLAY_LIMIT_MAX
);

/// Tokens of one principal it may revoke itself in one epoch (an admin may revoke
/// more, up to the node's revocation list's limit): one principal cannot fill the list.
pub const REVOKED_TOKENS_PER_PRINCIPAL_MAX: usize = 1_000;

/// Calls that take longer than this many milliseconds are logged as slow.
pub const SLOW_CALL_MS_DEFAULT: u64 = 1000;
