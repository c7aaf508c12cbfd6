//! Reaching a node over TLS (schema `tlsServerName`) and authenticating it by its
//! ed25519 key: pinned (`NodeTrust::Key`), or recorded in a known-nodes file the first
//! time (`NodeTrust::KnownNodes`, trust on first use) and required every time after.
//!
//! The known-nodes file holds one line per node, `ADDRESS HEX-KEY` (`#` starts a
//! comment); a node that presents another key than its line is refused, naming both.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use engram_schema::engram_capnp::TLS_SERVER_NAME;
use engram_schema::tls::node_key_of;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::ClientError;

/// How a client knows the node it reaches over TLS is the one it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeTrust {
    /// Only the node with this key.
    Key([u8; 32]),
    /// The key this known-nodes file records for the address; recorded the first time.
    KnownNodes(PathBuf),
}

impl NodeTrust {
    /// `ENGRAM_KNOWN_NODES`, else `$XDG_CONFIG_HOME/engram/known_nodes`, else
    /// `~/.config/engram/known_nodes`.
    pub fn default_known_nodes() -> NodeTrust {
        let path = std::env::var_os("ENGRAM_KNOWN_NODES")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CONFIG_HOME")
                    .map(|config| PathBuf::from(config).join("engram/known_nodes"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".config/engram/known_nodes"))
            })
            .unwrap_or_else(|| PathBuf::from("engram_known_nodes"));
        NodeTrust::KnownNodes(path)
    }

    /// Parses a node key given as 64 hex digits.
    pub fn parse_key(hex_key: &str) -> Result<NodeTrust, ClientError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key.trim(), &mut key).map_err(|_| {
            ClientError::InvalidInput(format!(
                "a node key is 64 hex digits (the node's ready line prints it as node_key=); got {hex_key:?}"
            ))
        })?;
        Ok(NodeTrust::Key(key))
    }
}

/// The key `path` records for `address`, with its line number.
fn known_key(path: &Path, address: &str) -> Result<Option<([u8; 32], usize)>, ClientError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(ClientError::InvalidInput(format!(
                "cannot read the known-nodes file {}: {error}",
                path.display()
            )));
        }
    };
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let mut fields = line.split_whitespace();
        let (Some(known), Some(hex_key)) = (fields.next(), fields.next()) else {
            continue;
        };
        if known == address {
            let mut key = [0u8; 32];
            hex::decode_to_slice(hex_key, &mut key).map_err(|_| {
                ClientError::InvalidInput(format!(
                    "{}:{}: not a node key: {hex_key:?}",
                    path.display(),
                    index + 1
                ))
            })?;
            return Ok(Some((key, index + 1)));
        }
    }
    Ok(None)
}

/// Records `key` for `address` at the end of `path` (made, with its directory, if
/// missing), durably.
fn record_key(path: &Path, address: &str, key: &[u8; 32]) -> Result<(), ClientError> {
    let failed = |error: std::io::Error| {
        ClientError::InvalidInput(format!(
            "cannot record the node's key in {}: {error}",
            path.display()
        ))
    };
    if let Some(directory) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(directory).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(failed)?;
    writeln!(file, "{address} {}", hex::encode(key)).map_err(failed)?;
    file.sync_all().map_err(failed)
}

/// What the verifier saw, for the error a refused handshake becomes.
#[derive(Debug, Default)]
struct Seen {
    presented: Option<[u8; 32]>,
}

/// Accepts exactly the certificate of the expected node key (no certificate authority,
/// no names), and a handshake signed by it.
#[derive(Debug)]
struct NodeKeyVerifier {
    expected: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Mutex<Seen>,
}

impl ServerCertVerifier for NodeKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|error| rustls::Error::General(format!("the node's certificate: {error}")))?;
        let presented = node_key_of(&certificate.subject_public_key_info()).ok_or_else(|| {
            rustls::Error::General("the node's certificate does not carry an ed25519 key".into())
        })?;
        self.seen.lock().expect("never poisoned").presented = Some(presented);
        match self.expected {
            Some(expected) if expected != presented => Err(rustls::Error::General(
                "the node presented another key than the one pinned".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("engram speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The halves of a TLS connection to the node at `address`, and its key, once it has
/// proven it is the node `trust` names.
pub(crate) async fn open(
    address: &str,
    trust: &NodeTrust,
) -> Result<(crate::Halves, [u8; 32]), ClientError> {
    let connect_error = |source| ClientError::Connect {
        endpoint: format!("tls://{address}"),
        source,
    };
    let (expected, known_at) = match trust {
        NodeTrust::Key(key) => (Some(*key), None),
        NodeTrust::KnownNodes(path) => match known_key(path, address)? {
            Some((key, line)) => (Some(key), Some((path, line))),
            None => (None, None),
        },
    };
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(NodeKeyVerifier {
        expected,
        algorithms: provider.signature_verification_algorithms,
        seen: Mutex::default(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| ClientError::InvalidInput(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(connect_error)?;
    stream.set_nodelay(true).map_err(connect_error)?;
    let server_name = ServerName::try_from(TLS_SERVER_NAME).expect("a valid DNS name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = match connector.connect(server_name, stream).await {
        Ok(stream) => stream,
        Err(error) => {
            let presented = verifier.seen.lock().expect("never poisoned").presented;
            return Err(match (expected, presented) {
                (Some(expected), Some(presented)) if expected != presented => {
                    ClientError::NodeKeyMismatch {
                        address: address.to_owned(),
                        presented: hex::encode(presented),
                        expected: hex::encode(expected),
                        pinned_by: match known_at {
                            Some((path, line)) => format!("{}:{line}", path.display()),
                            None => "--node-key".into(),
                        },
                    }
                }
                _ => connect_error(error),
            });
        }
    };
    let presented = verifier
        .seen
        .lock()
        .expect("never poisoned")
        .presented
        .expect("a verified handshake saw the node's key");
    if let (NodeTrust::KnownNodes(path), None) = (trust, expected) {
        record_key(path, address, &presented)?;
    }
    let (reader, writer) = tokio::io::split(stream);
    Ok(((Box::new(reader), Box::new(writer)), presented))
}
