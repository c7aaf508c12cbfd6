//! The Rust client of engram: connect over TCP or a Unix socket, log in with a key file,
//! graft, and call the capabilities through typed helpers. Depends on the schema only.
//!
//! Cap'n Proto RPC is single-threaded: call [`connect`] inside a `tokio::task::LocalSet`.
//!
//! ```no_run
//! # async fn example() -> Result<(), engram_client::ClientError> {
//! use engram_client::{Endpoint, NewAtom, connect, keyfile};
//! let connection = connect(&Endpoint::parse("127.0.0.1:7420")).await?;
//! let key = keyfile::read("engram-data/admin.key".as_ref())?;
//! let session = connection.login(&key).await?.graft().await?;
//! let writer = session.writer("team/auth")?;
//! let receipts = engram_client::remember(&writer, &[NewAtom::fact("tokens expire after 1h")]).await?;
//! println!("remembered {} at commit {}", receipts[0].id_hex(), receipts[0].commit);
//! # Ok(()) }
//! ```

pub mod backup;
pub mod batch;
pub mod calls;
pub mod error;
pub mod export;
pub mod keyfile;
pub mod mcp;
pub mod outbox;
pub mod spawn;
pub mod tls;
pub mod token;
pub mod types;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use ed25519_dalek::{Signer as _, SigningKey};
use engram_schema::engram_capnp::{
    admin, membrane, observer, signer, terminal, world_reader, world_writer,
};
use engram_schema::login_message;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

pub use calls::*;
pub use engram_schema;
pub use error::{ClientError, ErrorCode};
pub use tls::NodeTrust;
pub use types::*;
pub use watch::{Watch, WatchEvent, subscribe};

/// Where a node listens: `HOST:PORT` for TCP, `tls://HOST:PORT` for TCP with TLS (the
/// node authenticated by its key, see [`NodeTrust`]), `unix:PATH` for a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(String),
    Tls { address: String, trust: NodeTrust },
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `unix:PATH`, `tls://HOST:PORT` (trusting the default known-nodes file,
    /// [`NodeTrust::default_known_nodes`]) or a TCP `HOST:PORT`.
    pub fn parse(text: &str) -> Endpoint {
        if let Some(path) = text.strip_prefix("unix:") {
            return Endpoint::Unix(PathBuf::from(path));
        }
        match text.strip_prefix("tls://") {
            Some(address) => Endpoint::Tls {
                address: address.to_owned(),
                trust: NodeTrust::default_known_nodes(),
            },
            None => Endpoint::Tcp(text.to_owned()),
        }
    }

    /// The same endpoint, over TLS trusting the node as `trust` says (a TCP endpoint
    /// becomes a TLS one; a Unix socket is left as it is).
    pub fn trusting(self, trust: NodeTrust) -> Endpoint {
        match self {
            Endpoint::Tcp(address) | Endpoint::Tls { address, .. } => {
                Endpoint::Tls { address, trust }
            }
            unix => unix,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(address) => formatter.write_str(address),
            Endpoint::Tls { address, .. } => write!(formatter, "tls://{address}"),
            Endpoint::Unix(path) => write!(formatter, "unix:{}", path.display()),
        }
    }
}

/// Runs `body` to completion on a single-threaded tokio runtime inside a `LocalSet`, as
/// Cap'n Proto RPC needs; fails only if the runtime cannot start.
pub fn run_local<F: std::future::Future>(body: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(tokio::task::LocalSet::new().block_on(&runtime, body))
}

/// A program's `main`: runs `body` with [`run_local`] and turns its outcome into the
/// exit code, printing `program: error` on failure.
pub fn run_program<E: std::fmt::Display>(
    program: &str,
    body: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    match run_local(body) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("{program}: {error}");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("{program}: cannot start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Largest message the client accepts from the node.
const MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// An open connection and its bootstrap `Terminal`.
pub struct Connection {
    terminal: terminal::Client,
    disconnector: capnp_rpc::Disconnector<rpc_twoparty_capnp::Side>,
    /// The node's key, when the transport authenticated it (TLS): a login signs a
    /// challenge only if it names this key.
    node_key: Option<[u8; 32]>,
}

/// Connects to a node. Must run inside a `tokio::task::LocalSet`.
pub async fn connect(endpoint: &Endpoint) -> Result<Connection, ClientError> {
    let ((reader, writer), node_key) = open(endpoint).await?;
    let mut connection = connect_over(reader, writer);
    connection.node_key = node_key;
    Ok(connection)
}

/// The two halves of a byte stream to a node.
type Halves = (
    Box<dyn tokio::io::AsyncRead + Unpin>,
    Box<dyn tokio::io::AsyncWrite + Unpin>,
);

/// Opens a byte stream to the node at `endpoint`; over TLS, with the node's key.
pub(crate) async fn open(endpoint: &Endpoint) -> Result<(Halves, Option<[u8; 32]>), ClientError> {
    let connect_error = |source| ClientError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Tcp(address) => {
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .map_err(connect_error)?;
            stream.set_nodelay(true).map_err(connect_error)?;
            let (reader, writer) = stream.into_split();
            Ok(((Box::new(reader), Box::new(writer)), None))
        }
        Endpoint::Tls { address, trust } => {
            let (halves, node_key) = tls::open(address, trust).await?;
            Ok((halves, Some(node_key)))
        }
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_error)?;
            let (reader, writer) = stream.into_split();
            Ok(((Box::new(reader), Box::new(writer)), None))
        }
    }
}

/// Speaks engram's protocol over a byte stream already open to a node (the two halves of
/// any transport `connect` does not know). Must run inside a `tokio::task::LocalSet`.
pub fn connect_over(
    reader: impl tokio::io::AsyncRead + Unpin + 'static,
    writer: impl tokio::io::AsyncWrite + Unpin + 'static,
) -> Connection {
    let (connection, rpc_system) = connection(network(reader.compat(), writer.compat_write()));
    tokio::task::spawn_local(rpc_system);
    connection
}

/// A connection over `network`, and the RPC system that must be driven for it to work.
pub(crate) fn connection(
    network: Box<dyn capnp_rpc::VatNetwork<rpc_twoparty_capnp::Side>>,
) -> (Connection, RpcSystem<rpc_twoparty_capnp::Side>) {
    let mut rpc_system = RpcSystem::new(network, None);
    let terminal: terminal::Client = rpc_system.bootstrap(rpc_twoparty_capnp::Side::Server);
    let disconnector = rpc_system.get_disconnector();
    (
        Connection {
            terminal,
            disconnector,
            node_key: None,
        },
        rpc_system,
    )
}

pub(crate) fn network(
    reader: impl futures::AsyncRead + Unpin + 'static,
    writer: impl futures::AsyncWrite + Unpin + 'static,
) -> Box<dyn capnp_rpc::VatNetwork<rpc_twoparty_capnp::Side>> {
    let options = capnp::message::ReaderOptions {
        traversal_limit_in_words: Some(MESSAGE_BYTES_MAX / 8),
        nesting_limit: 64,
    };
    Box::new(twoparty::VatNetwork::new(
        reader,
        writer,
        rpc_twoparty_capnp::Side::Client,
        options,
    ))
}

impl Connection {
    /// The bootstrap capability, for calls the helpers do not cover.
    pub fn terminal(&self) -> &terminal::Client {
        &self.terminal
    }

    /// Logs in: asks for a challenge, signs it with `key`, and returns the membrane.
    /// A login refused because the epoch advanced between the challenge and the login
    /// (its nonce is then of the older epoch) is made once more with a fresh challenge.
    pub async fn login(&self, key: &SigningKey) -> Result<Membrane, ClientError> {
        let challenge = self.challenge().await?;
        let signed_epoch = challenge.2;
        match self.login_with(key, challenge).await {
            Err(error) if error.code() == Some(ErrorCode::Unauthenticated) => {
                let again = self.challenge().await?;
                if again.2 == signed_epoch {
                    return Err(error);
                }
                self.login_with(key, again).await
            }
            done => done,
        }
    }

    /// A fresh challenge: the nonce, the node's key and the epoch to sign.
    async fn challenge(&self) -> Result<([u8; 32], [u8; 32], u64), ClientError> {
        let challenge = self.terminal.challenge_request().send().promise.await?;
        let challenge = challenge.get()?;
        let nonce: [u8; 32] = challenge.get_nonce()?.try_into().map_err(|_| {
            ClientError::InvalidInput("the node sent a nonce that is not 32 bytes".into())
        })?;
        let node_key: [u8; 32] = challenge.get_node_key()?.try_into().map_err(|_| {
            ClientError::InvalidInput("the node sent a key that is not 32 bytes".into())
        })?;
        Ok((nonce, node_key, challenge.get_epoch()))
    }

    async fn login_with(
        &self,
        key: &SigningKey,
        (nonce, node_key, epoch): ([u8; 32], [u8; 32], u64),
    ) -> Result<Membrane, ClientError> {
        if let Some(authenticated) = self.node_key
            && authenticated != node_key
        {
            // Signing would let whoever sent this challenge log in as us elsewhere.
            return Err(ClientError::NodeKeyMismatch {
                address: "this connection".into(),
                presented: hex::encode(node_key),
                expected: hex::encode(authenticated),
                pinned_by: "the node's TLS certificate".into(),
            });
        }
        let signature = key.sign(&login_message(&nonce, &node_key, epoch));
        let mut request = self.terminal.login_request();
        {
            let mut params = request.get();
            params.set_public_key(key.verifying_key().as_bytes());
            params.set_nonce(&nonce);
            params.set_signature(&signature.to_bytes());
        }
        let response = request.send().promise.await?;
        Ok(Membrane {
            client: response.get()?.get_membrane()?,
        })
    }

    /// Closes the connection after outgoing messages are sent.
    pub async fn close(self) -> Result<(), ClientError> {
        Ok(self.disconnector.await?)
    }
}

/// A logged-in principal's membrane.
#[derive(Clone)]
pub struct Membrane {
    pub client: membrane::Client,
}

/// What one principal holds in one world; `None` where the right is not granted.
#[derive(Clone)]
pub struct WorldCapabilities {
    pub reader: Option<world_reader::Client>,
    pub writer: Option<world_writer::Client>,
    pub observer: Option<observer::Client>,
}

/// The capabilities of one graft.
#[derive(Clone)]
pub struct Session {
    pub epoch: Epoch,
    pub principal: String,
    pub admin_principal: bool,
    pub worlds: BTreeMap<String, WorldCapabilities>,
    pub signer: signer::Client,
    pub admin: Option<admin::Client>,
}

impl Membrane {
    /// Grafts: the current epoch and fresh capabilities.
    pub async fn graft(&self) -> Result<Session, ClientError> {
        let response = self.client.graft_request().send().promise.await?;
        let results = response.get()?;
        let principal = results.get_principal()?;
        let mut worlds = BTreeMap::new();
        for entry in results.get_worlds()?.iter() {
            let optional = |present: bool| present;
            worlds.insert(
                entry.get_world()?.to_string().map_err(capnp::Error::from)?,
                WorldCapabilities {
                    reader: optional(entry.has_reader())
                        .then(|| entry.get_reader())
                        .transpose()?,
                    writer: optional(entry.has_writer())
                        .then(|| entry.get_writer())
                        .transpose()?,
                    observer: optional(entry.has_observer())
                        .then(|| entry.get_observer())
                        .transpose()?,
                },
            );
        }
        Ok(Session {
            epoch: Epoch::read(results.get_epoch()?)?,
            principal: principal
                .get_name()?
                .to_string()
                .map_err(capnp::Error::from)?,
            admin_principal: principal.get_admin(),
            worlds,
            signer: results.get_signer()?,
            admin: results
                .has_admin()
                .then(|| results.get_admin())
                .transpose()?,
        })
    }
}

impl Membrane {
    /// The fleet this node is in, as it knows it (`Membrane.fleet`).
    pub async fn fleet(&self) -> Result<FleetStatus, ClientError> {
        let response = self.client.fleet_request().send().promise.await?;
        FleetStatus::read(response.get()?.get_status()?)
    }

    /// Where `world`'s writes go when another node of this node's fleet owns it: that
    /// node's address as the fleet tells it, over TLS pinned to the owner's key when
    /// the address is `tls://`. `None` alone, when this node owns it, or when no node
    /// does (then this node takes it on the next write).
    pub async fn owner_elsewhere(&self, world: &str) -> Result<Option<Endpoint>, ClientError> {
        Ok(self.fleet().await?.owner_elsewhere(world))
    }
}

impl FleetStatus {
    /// Where `world`'s writes go when another node owns it (see
    /// [`Membrane::owner_elsewhere`]).
    pub fn owner_elsewhere(&self, world: &str) -> Option<Endpoint> {
        let owner = (self.worlds.iter())
            .find(|held| held.world == world)
            .and_then(|held| held.owner.as_ref())
            .filter(|(key, _)| *key != self.node_key);
        owner.map(|(key, address)| match Endpoint::parse(address) {
            tls @ Endpoint::Tls { .. } => tls.trusting(NodeTrust::Key(*key)),
            other => other,
        })
    }
}

/// Logs in at `endpoint` with `key` and, in a fleet, follows `world`'s owner: if another
/// node writes `world` now, logs in there instead, so that a write goes where it can be
/// written rather than being refused (README, Fleets). When the owner cannot be reached
/// (it died, say), stays at `endpoint` and waits, a lease and a half at most, for the
/// owner's lease to lapse, after which this node takes the world on the next write.
/// Never follows from TLS to an address without it.
pub async fn login_for_writing(
    endpoint: &Endpoint,
    key: &SigningKey,
    world: &str,
) -> Result<Membrane, ClientError> {
    let here = connect(endpoint).await?.login(key).await?;
    let status = here.fleet().await?;
    let owner = match status.owner_elsewhere(world) {
        Some(Endpoint::Tcp(_)) if matches!(endpoint, Endpoint::Tls { .. }) => None,
        owner => owner,
    };
    let Some(owner) = owner else {
        return Ok(here);
    };
    // As the node says, within the range engramd takes (`--fleet-lease-ms`): a node's
    // answer never makes this wait long, or overflow.
    let lease = std::time::Duration::from_millis(status.lease_ms.clamp(100, 600_000));
    let Ok(Ok(connection)) = tokio::time::timeout(lease, connect(&owner)).await else {
        let deadline = tokio::time::Instant::now() + lease * 3 / 2;
        while tokio::time::Instant::now() < deadline && here.owner_elsewhere(world).await?.is_some()
        {
            tokio::time::sleep(lease / 10).await;
        }
        return Ok(here);
    };
    // Refused there (the principal has not reached that node yet, say): the write is
    // answered here, naming the owner.
    Ok(connection.login(key).await.unwrap_or(here))
}

impl Session {
    fn world(&self, world: &str) -> Result<&WorldCapabilities, ClientError> {
        self.worlds.get(world).ok_or_else(|| {
            ClientError::NotGranted(format!(
                "principal {:?} holds no capability in world {world:?} (does it exist, and is it granted?)",
                self.principal
            ))
        })
    }

    /// The reader of `world`.
    pub fn reader(&self, world: &str) -> Result<world_reader::Client, ClientError> {
        self.world(world)?.reader.clone().ok_or_else(|| {
            ClientError::NotGranted(format!(
                "principal {:?} may not read world {world:?}",
                self.principal
            ))
        })
    }

    /// The writer of `world`.
    pub fn writer(&self, world: &str) -> Result<world_writer::Client, ClientError> {
        self.world(world)?.writer.clone().ok_or_else(|| {
            ClientError::NotGranted(format!(
                "principal {:?} may not write world {world:?}",
                self.principal
            ))
        })
    }

    /// The observer of `world`.
    pub fn observer(&self, world: &str) -> Result<observer::Client, ClientError> {
        self.world(world)?.observer.clone().ok_or_else(|| {
            ClientError::NotGranted(format!(
                "principal {:?} may not observe world {world:?}",
                self.principal
            ))
        })
    }

    /// The admin capability.
    pub fn admin(&self) -> Result<admin::Client, ClientError> {
        self.admin.clone().ok_or_else(|| {
            ClientError::NotGranted(format!("principal {:?} is not an admin", self.principal))
        })
    }
}
