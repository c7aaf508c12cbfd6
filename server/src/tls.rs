//! TLS on TCP (schema `tlsServerName`): a self-signed certificate of the node's
//! ed25519 key, TLS 1.3 only, and each handshake bounded in time and in number before
//! the connection is counted and served.

use std::rc::Rc;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use engram_client::engram_schema::{engram_capnp::TLS_SERVER_NAME, tls::private_key_pkcs8};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::ServerError;
use crate::{Config, Connections};
use engram_capabilities::Peer;

/// The acceptor of the node whose key is `node_key`: its certificate is made at each
/// start (nothing of it is stored but the key).
pub(crate) fn acceptor(node_key: &SigningKey) -> Result<TlsAcceptor, ServerError> {
    let failed = |reason: String| ServerError::Tls { reason };
    let pkcs8 = private_key_pkcs8(&node_key.to_bytes());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_ED25519,
    )
    .map_err(|error| failed(error.to_string()))?;
    let certificate = rcgen::CertificateParams::new(vec![TLS_SERVER_NAME.to_owned()])
        .and_then(|params| params.self_signed(&key_pair))
        .map_err(|error| failed(error.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| failed(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
        )
        .map_err(|error| failed(error.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the handshake of `stream` in a task of its own, within the handshake timeout,
/// and hands the connection's halves to `serve`. The handshake counts as a connection
/// of `peer` from accept, within `--connections-max` and
/// `--connections-per-address-max` like any other, so no peer holding handshakes open
/// takes the room of others; past them the connection is closed at once (a refusal
/// cannot be answered before TLS).
pub(crate) fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    connections: &Rc<Connections>,
    config: &Config,
    peer: Peer,
    serve: impl FnOnce(ReadHalf<TlsStream<TcpStream>>, WriteHalf<TlsStream<TcpStream>>) + 'static,
) {
    let counted = match connections.admit(config, peer, None) {
        Ok(counted) => counted,
        Err(reason) => {
            connections.log_refusal(&peer, &reason);
            return;
        }
    };
    let connections = connections.clone();
    let accepting = acceptor.accept(stream);
    let timeout = config.handshake_timeout;
    tokio::task::spawn_local(async move {
        // A handshake has not logged in: a newer connection may close it for its place.
        let accepted = tokio::select! {
            accepted = tokio::time::timeout(timeout, accepting) => Some(accepted),
            () = counted.closed_by_newer() => None,
        };
        // `serve` counts the connection again as it serves it (or answers its refusal).
        connections.close(&counted);
        let Some(accepted) = accepted else {
            tracing::debug!("TLS handshake closed: a newer connection took its place");
            return;
        };
        match accepted {
            Ok(Ok(stream)) => {
                let (reader, writer) = tokio::io::split(stream);
                serve(reader, writer);
            }
            Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    });
}
