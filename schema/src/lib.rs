//! engram's Cap'n Proto contract (`schema/engram.capnp`) as generated Rust code.
//!
//! The generated module is kept in the repository so that building engram never needs
//! the `capnp` compiler; `cargo run -p engram-schema-codegen -- --check` proves it matches
//! the schema. The schema file is the documentation of every interface and method.

#[allow(clippy::all, clippy::pedantic, unused, missing_docs)]
#[rustfmt::skip]
#[path = "generated/engram_capnp.rs"]
pub mod engram_capnp;

#[rustfmt::skip]
#[path = "generated/methods.rs"]
mod methods;

/// The names of the interface `interface_id` and of its method `method_id`, as the
/// schema spells them (`("WorldReader", "ask")`), or `None` for no method of the schema.
pub fn method_name(interface_id: u64, method_id: u16) -> Option<(&'static str, &'static str)> {
    let index = methods::INTERFACES
        .binary_search_by_key(&interface_id, |(id, _, _)| *id)
        .ok()?;
    let (_, interface, methods) = methods::INTERFACES[index];
    Some((interface, methods.get(usize::from(method_id))?))
}

/// The schema text, for clients that load it at run time (e.g. pycapnp).
pub const SCHEMA_TEXT: &str = include_str!("../engram.capnp");

/// The bytes a client signs to log in (schema `loginDomain`):
/// `loginDomain || 0x00 || nonce || node key || epoch (u64, big-endian)`.
pub fn login_message(nonce: &[u8; 32], node_key: &[u8; 32], epoch: u64) -> Vec<u8> {
    let mut message = Vec::with_capacity(engram_capnp::LOGIN_DOMAIN.len() + 1 + 32 + 32 + 8);
    message.extend_from_slice(engram_capnp::LOGIN_DOMAIN.as_bytes());
    message.push(0);
    message.extend_from_slice(nonce);
    message.extend_from_slice(node_key);
    message.extend_from_slice(&epoch.to_be_bytes());
    message
}

/// The bytes `Signer.sign` signs (schema `signDomain`):
/// `signDomain || 0x00 || len(domain) (u32, big-endian) || domain || message`.
pub fn signed_message(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut signed =
        Vec::with_capacity(engram_capnp::SIGN_DOMAIN.len() + 5 + domain.len() + message.len());
    signed.extend_from_slice(engram_capnp::SIGN_DOMAIN.as_bytes());
    signed.push(0);
    signed.extend_from_slice(&(domain.len() as u32).to_be_bytes());
    signed.extend_from_slice(domain.as_bytes());
    signed.extend_from_slice(message);
    signed
}

pub mod token;

/// The node's TLS identity (schema `tlsServerName`): its certificate's key is its
/// ed25519 node key, in the fixed DER encodings of RFC 8410.
pub mod tls {
    /// PKCS #8 v1 of an ed25519 private key: this prefix, then the 32-byte seed.
    const PKCS8_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    /// SubjectPublicKeyInfo of an ed25519 public key: this prefix, then the 32-byte key.
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];

    /// The PKCS #8 DER of the node key whose seed is `seed`, for its certificate.
    pub fn private_key_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
        [PKCS8_PREFIX.as_slice(), seed].concat()
    }

    /// The ed25519 key a certificate's SubjectPublicKeyInfo (DER) holds, if it holds
    /// one.
    pub fn node_key_of(subject_public_key_info: &[u8]) -> Option<[u8; 32]> {
        subject_public_key_info
            .strip_prefix(SPKI_PREFIX.as_slice())?
            .try_into()
            .ok()
    }
}

pub use engram_capnp::ErrorCode;

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

    /// The code as spelled in the schema; an exception description starts with it.
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

    /// Splits an exception description `code: message` into its code and message.
    pub fn parse_description(description: &str) -> Option<(ErrorCode, &str)> {
        let (code, message) = description.split_once(": ")?;
        let code = ErrorCode::ALL
            .into_iter()
            .find(|known| known.as_str() == code)?;
        Some((code, message))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_round_trips_through_a_description() {
        for code in ErrorCode::ALL {
            let description = format!("{code}: what went wrong: and how to fix it");
            assert_eq!(
                ErrorCode::parse_description(&description),
                Some((code, "what went wrong: and how to fix it"))
            );
        }
        assert_eq!(ErrorCode::parse_description("remote exception: x"), None);
    }

    #[test]
    fn methods_are_named_as_the_schema_spells_them() {
        use crate::engram_capnp::{terminal, world_reader};
        use capnp::traits::HasTypeId;
        let reader = <world_reader::Client as HasTypeId>::TYPE_ID;
        assert_eq!(super::method_name(reader, 2), Some(("WorldReader", "ask")));
        let terminal = <terminal::Client as HasTypeId>::TYPE_ID;
        assert_eq!(super::method_name(terminal, 1), Some(("Terminal", "login")));
        assert_eq!(super::method_name(terminal, 99), None);
        assert_eq!(super::method_name(1, 0), None);
    }
}

/// The handoff exchange (schema `handoffMagic`): the node's one-byte answers and the
/// bounds on what travels in it.
pub mod handoff {
    /// The node serves the capability on the descriptor.
    pub const SERVED: u8 = 0;
    /// The node refused; a length-prefixed text follows.
    pub const REFUSED: u8 = 1;
    /// The longest token a handoff carries.
    pub const TOKEN_BYTES_MAX: usize = 64 * 1024;
    /// The longest refusal text.
    pub const REFUSAL_BYTES_MAX: usize = 4 * 1024;
}
