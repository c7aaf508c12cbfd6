//! Limits the capabilities enforce, in one place.

/// Outstanding login nonces per connection; issuing more forgets the oldest.
pub const LOGIN_NONCES_PER_CONNECTION_MAX: usize = 8;
/// Bytes of a `Signer.sign` domain.
pub const SIGN_DOMAIN_BYTES_MAX: usize = 128;
/// Bytes of a `Signer.sign` message.
pub const SIGN_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Domains a signer may be attenuated to.
pub const SIGN_DOMAINS_MAX: usize = 64;

const _: () = assert!(LOGIN_NONCES_PER_CONNECTION_MAX >= 1);
