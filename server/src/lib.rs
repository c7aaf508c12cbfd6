//! engramd: opens the data directory (redb file, node key, admin key on first start),
//! starts the writer thread, and serves the `Terminal` on TCP and a Unix socket from one
//! RPC thread until SIGINT or SIGTERM.

pub mod error;
mod handoff;
pub mod limits;
pub mod metrics;
pub mod restore;
pub mod settings;
mod tls;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use engram_capabilities::error::CapabilityError;
use engram_capabilities::{Node, NodeLimits, Peer, Terminal};
use engram_client::keyfile;
use engram_client::outbox::{CountingWriter, Guarded, Outbox, PausingReader};
use engram_store::audit::AuditLog;
use engram_store::writer::Writer;
use engram_store::{Authority, Principal, Store, TextIndex, VectorIndex, WriteOp, WriteRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

pub use error::ServerError;

/// The redb file inside the data directory.
pub const STORE_FILE: &str = "engram.redb";
/// The audit trail (its own redb file) inside the data directory.
pub const AUDIT_FILE: &str = "audit.redb";
/// The node's ed25519 key inside the data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// The first admin's key, written on first start.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// The text index (derived state, kept up to date on disk) inside the data directory.
pub const TEXT_INDEX_DIRECTORY: &str = "text-index";
/// The persisted vector index (derived state) inside the data directory.
pub const VECTOR_INDEX_DIRECTORY: &str = "vector-index";
/// Where backups (`Admin.backup`) are made until their holders release them.
pub const BACKUP_DIRECTORY: &str = "backups";
/// The Unix socket inside the data directory, unless configured elsewhere.
pub const SOCKET_FILE: &str = "engramd.sock";

/// How to run a node.
#[derive(Clone, Debug)]
pub struct Config {
    pub data: PathBuf,
    /// TCP address; `None` disables TCP.
    pub listen: Option<String>,
    /// Speak TLS 1.3 on TCP, with a certificate of the node key (schema `tlsServerName`).
    pub tls: bool,
    /// Listen on a TCP address off loopback without TLS.
    pub insecure: bool,
    /// Unix socket path; `None` disables it.
    pub socket: Option<PathBuf>,
    pub connections_max: usize,
    /// Connections one peer (IP address, or local user on the Unix socket) may hold.
    pub connections_per_address_max: usize,
    /// Connections not logged in yet, of every peer together (at least 1).
    pub pre_auth_connections_max: usize,
    /// How long a connection may take to log in before it is closed.
    pub handshake_timeout: std::time::Duration,
    /// Bytes of answers a connection may leave unread before its calls stop being read.
    pub connection_unread_bytes_max: usize,
    /// How long a connection's peer may take none of its answers before it is closed.
    pub write_stall_timeout: std::time::Duration,
    /// How long a logged-in connection may send nothing while it waits on nothing
    /// before it is closed; zero for never.
    pub idle_timeout: std::time::Duration,
    pub message_bytes_max: usize,
    pub node_limits: NodeLimits,
    /// Bytes of the store's page cache.
    pub cache_bytes: usize,
    /// The fleet whose policy the node follows (`--nats`); `None` runs it alone.
    pub fleet: Option<engram_fleet::Config>,
    /// Where to serve metrics, `/healthz` and `/readyz` over HTTP (`--metrics`).
    pub metrics: Option<String>,
    /// The soonest a fresh snapshot of the similarity index is written after new vectors
    /// went in (`--vector-snapshot-ms`).
    pub vector_snapshot_after: std::time::Duration,
    /// How long the audit trail keeps a record (`--audit-retention-ms`); `None` keeps
    /// every record.
    pub audit_retention: Option<std::time::Duration>,
}

/// Runs the node until SIGINT or SIGTERM. Every acknowledged write is durable when it
/// returns.
pub fn run(config: Config) -> Result<(), ServerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data)
        .map_err(|source| ServerError::DataDirectory {
            path: config.data.clone(),
            source,
        })?;
    let store_path = config.data.join(STORE_FILE);
    let store = Store::open_with_cache(&store_path, config.cache_bytes).map_err(|source| {
        ServerError::Store {
            path: store_path.clone(),
            source,
        }
    })?;
    let node_key = load_or_create_key(&config.data.join(NODE_KEY_FILE))?;
    let identity = Identity {
        public_key: node_key.verifying_key().to_bytes(),
        tls: config.tls.then(|| tls::acceptor(&node_key)).transpose()?,
    };
    bootstrap_admin(&store, &config.data, &store_path)?;
    let store_error = |source| ServerError::Store {
        path: store_path.clone(),
        source,
    };
    let last_commit = store
        .read()
        .map(|view| view.last_commit())
        .map_err(store_error)?;
    let (doorbell, committed) = tokio::sync::watch::channel(last_commit);
    let vector_directory = config.data.join(VECTOR_INDEX_DIRECTORY);
    let vectors = Arc::new(VectorIndex::new());
    let texts = Arc::new(
        TextIndex::open(&config.data.join(TEXT_INDEX_DIRECTORY), &store).map_err(store_error)?,
    );
    let indexer = start_indexer(
        store.clone(),
        vectors.clone(),
        texts.clone(),
        committed.clone(),
        vector_directory.clone(),
        config.vector_snapshot_after,
    );
    let stop_indexer = vectors.clone();
    // In a fleet, when the node last confirmed the fleet's policy (for `/readyz`).
    let confirmation = Arc::new(engram_capabilities::fleet::FleetHealth::default());
    let metrics = match &config.metrics {
        Some(address) => Some(metrics::Metrics::start(
            address,
            metrics::Observed {
                store: store.clone(),
                vectors: vectors.clone(),
                texts: texts.clone(),
                data: config.data.clone(),
                fleet: confirmation.clone(),
                start_commit: last_commit,
            },
        )?),
        None => None,
    };
    let metrics_address = metrics.as_ref().map(|metrics| metrics.address);
    let audit_path = config.data.join(AUDIT_FILE);
    let (audit, audit_thread) =
        AuditLog::open(&audit_path, config.audit_retention).map_err(|source| {
            ServerError::Store {
                path: audit_path.clone(),
                source,
            }
        })?;
    let (writer, writer_thread) = Writer::start(store.clone(), move |commit| {
        doorbell.send_replace(commit);
    });
    let node = Node::new(
        store,
        writer,
        node_key,
        committed,
        vectors,
        texts,
        audit,
        config.node_limits,
    )
    .map_err(store_error)?;
    node.set_backup_directory(config.data.join(BACKUP_DIRECTORY));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ServerError::Listen {
            address: "the async runtime".into(),
            source,
        })?;
    let local = tokio::task::LocalSet::new();
    let served = local.block_on(
        &runtime,
        serve(
            Rc::new(node),
            &config,
            identity,
            metrics_address,
            confirmation,
        ),
    );
    // Dropping the tasks closes every connection and drops every capability. Inside the
    // runtime: what a task holds may spawn as it is dropped (async-nats' subscriptions
    // send their unsubscribe so). A connection dropped with a call in flight may keep
    // its capabilities (and the node's handles) alive in a cycle; nothing runs them
    // once the runtime is gone, and the threads below are stopped, not waited for.
    {
        let _inside = runtime.enter();
        drop(local);
    }
    drop(runtime);
    stop_indexer.stop();
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    // The writer finishes what is queued and exits; so does the audit thread.
    writer_thread.join();
    audit_thread.join();
    // The writer's doorbell is gone with it: the indexer sees that and stops.
    if indexer.join().is_err() {
        tracing::error!("the indexer thread panicked");
    }
    match stop_indexer.persist(&vector_directory) {
        Ok(true) => tracing::info!(worlds = stop_indexer.worlds(), "vector index persisted"),
        Ok(false) => tracing::info!(
            "vector index not persisted (it was still catching up); the next start rebuilds it"
        ),
        Err(error) => {
            tracing::warn!(%error, "vector index not persisted; the next start rebuilds it")
        }
    }
    if let Some(socket) = &config.socket {
        let _ = remove_socket(socket);
    }
    tracing::info!("stopped");
    served
}

/// Removes the socket at `path`, if there is one; anything else there is someone's
/// file, which the node refuses to touch.
fn remove_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it exists and is no socket; the node replaces only a socket a node that died \
             left (choose another --socket path)",
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// The default of `--vector-snapshot-ms`: the soonest the indexer writes a fresh
/// snapshot of the similarity index after new vectors went in. While what is new is
/// under a tenth of the index it waits ten times as long, so writing snapshots costs
/// little next to indexing; a crash then costs at start-up the vectors of at most that
/// long.
pub const VECTOR_SNAPSHOT_MS_DEFAULT: u64 = 30_000;

/// How long until the similarity index is due a fresh snapshot, `after` being the
/// soonest: `inserted` vectors went in since the last, `since` ago, and it holds
/// `atoms`. `None` while nothing is new.
fn vector_snapshot_in(
    inserted: usize,
    atoms: usize,
    since: std::time::Duration,
    after: std::time::Duration,
) -> Option<std::time::Duration> {
    if inserted == 0 {
        return None;
    }
    let wait = if inserted * 10 >= atoms {
        after
    } else {
        after * 10
    };
    Some(wait.saturating_sub(since))
}

/// The indexer thread: loads the persisted similarity index, catches both indexes up
/// with the store, and again after every commit the doorbell announces (and when text
/// documents waiting to be published are due), off the RPC thread; writes a fresh
/// snapshot of the similarity index now and then while the node runs (so a crash does
/// not cost a rebuild). It stops when the doorbell's sender (the writer) is gone.
fn start_indexer(
    store: Store,
    vectors: Arc<VectorIndex>,
    texts: Arc<TextIndex>,
    mut committed: tokio::sync::watch::Receiver<u64>,
    persisted: PathBuf,
    snapshot_after: std::time::Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("engram-indexer".into())
        .spawn(move || {
            let loading = std::time::Instant::now();
            vectors.load_persisted(&persisted, &store);
            tracing::info!(
                worlds = vectors.worlds(),
                atoms = vectors.atoms(),
                elapsed_ms = loading.elapsed().as_millis() as u64,
                "vector index loaded; the indexer catches up the rest"
            );
            // A runtime of its own, for the text index's publishing deadline.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("the indexer's runtime");
            runtime.block_on(async {
                let (mut unsaved, mut saved_at) = (0, std::time::Instant::now());
                loop {
                    committed.borrow_and_update();
                    let started = std::time::Instant::now();
                    match vectors.catch_up(&store) {
                        Ok(0) => {}
                        Ok(inserted) => {
                            unsaved += inserted;
                            tracing::debug!(
                                inserted,
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "vector index caught up"
                            )
                        }
                        // Searches stay correct meanwhile: what is not indexed is
                        // compared exactly. The next commit retries.
                        Err(error) => tracing::error!(%error, "vector index catch-up failed"),
                    }
                    // After a failure the writer starts again from its last commit; try
                    // again soon, not only at the next write.
                    let publish_in = texts.catch_up(&store).unwrap_or_else(|error| {
                        tracing::error!(%error, "text index catch-up failed; retrying in 1 s");
                        Some(std::time::Duration::from_secs(1))
                    });
                    let due = |unsaved, saved_at: std::time::Instant| {
                        let since = saved_at.elapsed();
                        vector_snapshot_in(unsaved, vectors.atoms(), since, snapshot_after)
                    };
                    if due(unsaved, saved_at).is_some_and(|wait| wait.is_zero()) {
                        let saving = std::time::Instant::now();
                        match vectors.persist(&persisted) {
                            Ok(saved) => {
                                if saved {
                                    unsaved = 0;
                                }
                                saved_at = std::time::Instant::now();
                                tracing::info!(
                                    saved,
                                    atoms = vectors.atoms(),
                                    elapsed_ms = saving.elapsed().as_millis() as u64,
                                    "vector index snapshot written"
                                );
                            }
                            Err(error) => {
                                saved_at = std::time::Instant::now();
                                tracing::warn!(%error, "vector index snapshot failed; the next start may rebuild it");
                            }
                        }
                    }
                    // Woken by the next commit, or when waiting text is due to publish
                    // or unsaved vectors are due a snapshot.
                    let snapshot_in = due(unsaved, saved_at);
                    let wake_in = match (publish_in, snapshot_in) {
                        (Some(left), Some(right)) => Some(left.min(right)),
                        (either, other) => either.or(other),
                    };
                    let next = match wake_in {
                        None => committed.changed().await,
                        Some(wait) => tokio::time::timeout(wait, committed.changed())
                            .await
                            .unwrap_or(Ok(())),
                    };
                    if next.is_err() {
                        return;
                    }
                }
            })
        })
        .expect("spawning the indexer thread")
}

fn load_or_create_key(path: &Path) -> Result<ed25519_dalek::SigningKey, ServerError> {
    if path.exists() {
        return Ok(keyfile::read(path)?);
    }
    let key = keyfile::generate()?;
    keyfile::write_new(path, &key)?;
    tracing::info!(path = %path.display(), "created key file");
    Ok(key)
}

/// On first start (no principal yet) creates the `admin` principal and its key file.
fn bootstrap_admin(store: &Store, data: &Path, store_path: &Path) -> Result<(), ServerError> {
    let store_error = |source| ServerError::Store {
        path: store_path.to_owned(),
        source,
    };
    let principals = store
        .read()
        .and_then(|view| view.principals())
        .map_err(store_error)?;
    if !principals.is_empty() {
        return Ok(());
    }
    let path = data.join(ADMIN_KEY_FILE);
    let key = load_or_create_key(&path)?;
    store
        .apply_one(WriteRequest {
            authority: Authority::Node,
            op: WriteOp::AddPrincipal(Principal {
                name: "admin".into(),
                public_key: key.verifying_key().to_bytes(),
                admin: true,
                grants: Vec::new(),
            }),
        })
        .map_err(store_error)?;
    tracing::info!(key_file = %path.display(), "first start: created principal \"admin\"");
    Ok(())
}

/// Who the node is on the network: its public key, and its TLS acceptor when TCP speaks
/// TLS.
struct Identity {
    public_key: [u8; 32],
    tls: Option<tokio_rustls::TlsAcceptor>,
}

async fn serve(
    node: Rc<Node>,
    config: &Config,
    identity: Identity,
    metrics: Option<std::net::SocketAddr>,
    confirmation: Arc<engram_capabilities::fleet::FleetHealth>,
) -> Result<(), ServerError> {
    let tcp = match &config.listen {
        Some(address) => {
            let listener =
                TcpListener::bind(address)
                    .await
                    .map_err(|source| ServerError::Listen {
                        address: address.clone(),
                        source,
                    })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServerError::Listen {
                    address: address.clone(),
                    source,
                })?;
            if !bound.ip().is_loopback() && !config.tls && !config.insecure {
                return Err(ServerError::Insecure {
                    address: address.clone(),
                });
            }
            Some(listener)
        }
        None => None,
    };
    let tls = identity.tls;
    let unix = match &config.socket {
        Some(path) => {
            // The redb file is locked by this process, so a socket file left here can only
            // be a stale one from a node that died.
            remove_socket(path).map_err(|source| ServerError::Listen {
                address: path.display().to_string(),
                source,
            })?;
            Some(
                UnixListener::bind(path).map_err(|source| ServerError::Listen {
                    address: path.display().to_string(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let tcp_address = tcp
        .as_ref()
        .and_then(|listener| listener.local_addr().ok())
        .map(|address| address.to_string());
    let socket = config
        .socket
        .as_ref()
        .map(|path| path.display().to_string());
    if let Some(fleet) = &config.fleet {
        let address =
            advertised(fleet, tcp.as_ref(), config.tls).map_err(|reason| ServerError::Fleet {
                name: fleet.name.clone(),
                reason,
            })?;
        engram_fleet::join(node.clone(), fleet, &address, confirmation.clone())
            .await
            .map_err(|reason| ServerError::Fleet {
                name: fleet.name.clone(),
                reason,
            })?;
        // A node that joined an existing fleet took its principals: the admin key its
        // first start wrote may no longer log in anywhere.
        let admin_key = config.data.join(ADMIN_KEY_FILE);
        if let Ok(key) = engram_client::keyfile::read(&admin_key) {
            let public_key = key.verifying_key().to_bytes();
            let known = (node.store().read()).and_then(|view| view.principal(&public_key));
            if matches!(known, Ok(None)) {
                tracing::warn!(
                    key_file = %admin_key.display(),
                    "this key is not a principal of the fleet this node joined; log in with \
                     a key of the fleet's (its first node's admin.key, or one an admin added)"
                );
            }
        }
    }
    // The signals are taken before the ready line: a SIGTERM sent as soon as the node
    // said it was ready stops it cleanly, never with the signal's default action.
    let signal = |kind: tokio::signal::unix::SignalKind, name: &str| {
        tokio::signal::unix::signal(kind).map_err(|source| ServerError::Listen {
            address: name.into(),
            source,
        })
    };
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt(), "SIGINT")?;
    tracing::info!(tcp = ?tcp_address, unix = ?socket, epoch = node.epoch(), "listening");
    // The ready line is a contract for scripts and tests: it names the bound addresses.
    println!(
        "engramd ready tcp={} unix={} tls={} node_key={} metrics={}",
        tcp_address.as_deref().unwrap_or("-"),
        socket.as_deref().unwrap_or("-"),
        if tls.is_some() { "on" } else { "off" },
        hex_key(&identity.public_key),
        metrics.map_or("-".to_owned(), |address| address.to_string()),
    );
    let _ = std::io::stdout().flush();

    let connections = Rc::new(Connections::default());
    let config = Rc::new(config.clone());
    loop {
        tokio::select! {
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let peer = stream
                        .peer_addr()
                        .map_or(Peer::Unknown, |address| Peer::Address(address.ip()));
                    match &tls {
                        Some(acceptor) => tls::handshake(
                            acceptor,
                            stream,
                            &connections,
                            &config,
                            peer,
                            {
                                let (node, connections, config) =
                                    (node.clone(), connections.clone(), config.clone());
                                move |reader, writer| {
                                    connect(&node, &connections, &config, peer, reader, writer);
                                }
                            },
                        ),
                        None => {
                            let (reader, writer) = stream.into_split();
                            connect(&node, &connections, &config, peer, reader, writer);
                        }
                    }
                }
                Err(error) => accept_failed(&error, "TCP").await,
            },
            accepted = accept_unix(unix.as_ref()) => match accepted {
                Ok(stream) => {
                    let credentials = stream.peer_cred().ok();
                    let peer = credentials
                        .map_or(Peer::Unknown, |credentials| Peer::LocalUser(credentials.uid()));
                    let process = credentials.and_then(|credentials| credentials.pid());
                    connect_local(&node, &connections, &config, (peer, process), stream);
                }
                Err(error) => accept_failed(&error, "Unix socket").await,
            },
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
        }
    }
    drain_subscriptions(&node).await;
    Ok(())
}

/// Tells every subscriber that the node is going (`unavailable`), and gives their
/// sinks a bounded time to receive it.
async fn drain_subscriptions(node: &Node) {
    node.begin_shutdown();
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(limits::SHUTDOWN_DRAIN_MS);
    while node.subscriptions_live() > 0 {
        if tokio::time::timeout_at(deadline, node.subscriptions_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                live = node.subscriptions_live(),
                "subscribers did not take their end notice in time"
            );
            break;
        }
    }
}

/// Where the fleet tells clients to reach this node: `--fleet-address`, else its TCP
/// listener's (`tls://` with TLS). Refused: an address that names every interface, none
/// at all (no TCP listener), or one that is not `[tls://]HOST:PORT` with a plain host
/// name or IP address (it is shown to every principal, and clients connect to it).
fn advertised(
    fleet: &engram_fleet::Config,
    tcp: Option<&TcpListener>,
    tls: bool,
) -> Result<String, String> {
    let address = match (
        &fleet.address,
        tcp.and_then(|listener| listener.local_addr().ok()),
    ) {
        (Some(address), _) => address.clone(),
        (None, Some(bound)) if tls => format!("tls://{bound}"),
        (None, Some(bound)) => bound.to_string(),
        (None, None) => {
            return Err(
                "it has no TCP listener, so no address clients elsewhere can reach \
                 it at: give --fleet-address HOST:PORT"
                    .into(),
            );
        }
    };
    let shown = address.escape_debug();
    let (scheme_tls, host_port) = match address.strip_prefix("tls://") {
        Some(rest) => (true, rest),
        None => (false, address.as_str()),
    };
    if tls != scheme_tls {
        return Err(match tls {
            true => format!("--fleet-address \"{shown}\" is not tls://: this node speaks TLS"),
            false => format!(
                "--fleet-address \"{shown}\" is tls://, but this node does not speak TLS \
                 (start it with --tls)"
            ),
        });
    }
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err(not_an_address(&shown));
    };
    // The port as a number writes it, the host an IP address or a DNS name.
    if port
        .parse::<u16>()
        .map_or(true, |number| number == 0 || number.to_string() != port)
    {
        return Err(not_an_address(&shown));
    }
    let ip = match host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
    {
        Some(inner) => match inner.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Some(
                ip.to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(ip), Into::into),
            ),
            Err(_) => return Err(not_an_address(&shown)),
        },
        None => match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Some(ip.into()),
            Err(_) if dns_name(host) => None,
            Err(_) => return Err(not_an_address(&shown)),
        },
    };
    if ip.is_some_and(|ip| ip.is_unspecified()) {
        return Err(match fleet.address {
            Some(_) => format!(
                "--fleet-address \"{shown}\" names every interface, no address a client \
                 elsewhere can reach this node at"
            ),
            None => format!(
                "it listens on {host_port}, every interface, which is no address a client \
                 elsewhere can reach it at: give --fleet-address HOST:PORT"
            ),
        });
    }
    Ok(address)
}

fn not_an_address(shown: &impl std::fmt::Display) -> String {
    format!(
        "--fleet-address \"{shown}\" is not HOST:PORT or tls://HOST:PORT (a DNS name or IP \
         address, a port from 1 to 65535)"
    )
}

/// A DNS host name: dot-separated labels of letters, digits and inner hyphens, 1 to 63
/// characters each, the last not all digits (that would be a malformed IP address).
fn dns_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|last| !last.bytes().all(|byte| byte.is_ascii_digit()))
}

async fn accept_tcp(listener: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

async fn accept_unix(listener: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Resolves once the connection has sent nothing for `timeout` while it waited on
/// nothing (no call in flight, no live subscription); never with a zero timeout.
async fn until_idle(
    outbox: &Outbox,
    activity: &engram_capabilities::terminal::Activity,
    timeout: std::time::Duration,
) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let quiet_since = outbox.last_heard();
        tokio::time::sleep_until(quiet_since + timeout).await;
        if outbox.last_heard() == quiet_since && !activity.busy() {
            return;
        }
        if activity.busy() {
            // Busy now: look again a full timeout later.
            tokio::time::sleep(timeout).await;
        }
    }
}

/// An accept that failed (out of descriptors, most likely): logged, then a pause before
/// the next, so a failing accept neither spins the RPC thread nor floods the log.
async fn accept_failed(error: &std::io::Error, listener: &str) {
    tracing::warn!(%error, listener, "accept failed; pausing 10 ms");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// A connection counted in [`Connections`], until it ends.
#[derive(Clone)]
pub(crate) struct Counted {
    id: u64,
    peer: Peer,
    /// The peer's process, where the operating system says (the Unix socket).
    process: Option<i32>,
    closed: Rc<ClosedByNewer>,
}

/// A new connection's peer and process (where the operating system says).
type Newcomer = (Peer, Option<i32>);

/// Which newer connection closed this one before it logged in, if one did, and the
/// notice of it.
#[derive(Default)]
struct ClosedByNewer {
    by: Cell<Option<Newcomer>>,
    notify: tokio::sync::Notify,
}

impl Counted {
    /// Resolves once a newer connection closed this one, before it logged in, to take
    /// its place (at once if that happened already).
    pub(crate) async fn closed_by_newer(&self) {
        self.closed.notify.notified().await
    }
}

/// The connections being served, in all and per peer, those not logged in yet, and
/// those being refused.
#[derive(Default)]
struct Connections {
    active: Cell<usize>,
    per_peer: RefCell<HashMap<Peer, usize>>,
    /// The counted connections that have not logged in (nor restored a token), oldest
    /// first: the ones a new connection may close to take a place.
    pre_auth: RefCell<std::collections::VecDeque<Counted>>,
    /// Connections closed for newer ones whose tasks have not ended yet: they hold
    /// descriptors still, so at most `limits::CLOSING_CONNECTIONS_MAX` closed for one
    /// newcomer's peer and process, and `limits::CLOSING_CONNECTIONS_TOTAL_MAX` in all,
    /// at once; past them a new connection is refused instead (a refusal past its own
    /// bound frees its descriptor at once). Counted by who closed them, so a process
    /// flooding the socket spends its own allowance, not its neighbours'.
    closing: Cell<usize>,
    closing_by: RefCell<HashMap<Newcomer, usize>>,
    next_id: Cell<u64>,
    refused: Cell<usize>,
    /// Refusals not logged yet, and when the last was: a flood logs a line a second.
    unlogged_refusals: Cell<u64>,
    last_refusal_logged: Cell<Option<std::time::Instant>>,
}

impl Connections {
    /// Logs a refusal, or counts it into the next line when one was logged less than a
    /// second ago.
    fn log_refusal(&self, peer: &Peer, reason: &str) {
        let now = std::time::Instant::now();
        let recent = self
            .last_refusal_logged
            .get()
            .is_some_and(|last| now.duration_since(last) < std::time::Duration::from_secs(1));
        if recent {
            self.unlogged_refusals.set(self.unlogged_refusals.get() + 1);
            return;
        }
        let also = self.unlogged_refusals.replace(0);
        self.last_refusal_logged.set(Some(now));
        tracing::warn!(%peer, reason, refused_since_last_line = also, "connection refused");
    }

    /// Counts a new connection of `peer`, not logged in, or says why it may not be
    /// served. Where a limit is met, the oldest connection that has not logged in (of
    /// `peer`, for the limit per peer) is closed to make room: never-authenticated
    /// connections, however many one peer opens, cannot keep others from logging in,
    /// even where every peer shares one address (loopback). Connections that logged in
    /// are never closed for it, so a limit they fill alone refuses the new one. The
    /// connection closed is the oldest of whoever (peer, and process on the Unix
    /// socket) holds the most of them: a process flooding the socket closes its own,
    /// never those of its user's other processes.
    fn admit(&self, config: &Config, peer: Peer, process: Option<i32>) -> Result<Counted, String> {
        let newcomer = (peer, process);
        let own = |other: &Counted| other.peer == peer && other.process == process;
        // Its own first (a scan, as cheap as an accept must be under a flood); the
        // biggest holder's only when it has none.
        let close_for_room = |matches: &dyn Fn(&Counted) -> bool| {
            self.close_oldest_pre_auth(newcomer, &own, false)
                || self.close_oldest_pre_auth(newcomer, matches, true)
        };
        while self.held_by(&peer) >= config.connections_per_address_max {
            if !close_for_room(&|other: &Counted| other.peer == peer) {
                return Err(format!(
                    "engramd serves at most {} connections from one address \
                     (--connections-per-address-max), and {peer} holds them; close one \
                     first",
                    config.connections_per_address_max
                ));
            }
        }
        while self.pre_auth.borrow().len() >= config.pre_auth_connections_max
            && close_for_room(&|_| true)
        {}
        while self.active.get() >= config.connections_max {
            if !close_for_room(&|_| true) {
                return Err(format!(
                    "engramd serves at most {} connections at once; try again later",
                    config.connections_max
                ));
            }
        }
        self.active.set(self.active.get() + 1);
        ::metrics::gauge!("engram_connections").set(self.active.get() as f64);
        *self.per_peer.borrow_mut().entry(peer).or_insert(0) += 1;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let counted = Counted {
            id,
            peer,
            process,
            closed: Rc::default(),
        };
        self.pre_auth.borrow_mut().push_back(counted.clone());
        Ok(counted)
    }

    fn held_by(&self, peer: &Peer) -> usize {
        self.per_peer.borrow().get(peer).copied().unwrap_or(0)
    }

    /// Closes, for `newcomer`, a connection not logged in that `matches`: the oldest,
    /// or with `of_biggest_holder` the oldest of whoever holds the most of them.
    /// Uncounts it at once; whether there was one (and the closing bounds allowed).
    fn close_oldest_pre_auth(
        &self,
        newcomer: Newcomer,
        matches: &dyn Fn(&Counted) -> bool,
        of_biggest_holder: bool,
    ) -> bool {
        let by_newcomer = self
            .closing_by
            .borrow()
            .get(&newcomer)
            .copied()
            .unwrap_or(0);
        if self.closing.get() >= limits::CLOSING_CONNECTIONS_TOTAL_MAX
            || by_newcomer >= limits::CLOSING_CONNECTIONS_MAX
        {
            return false;
        }
        let oldest = {
            let mut pre_auth = self.pre_auth.borrow_mut();
            let mut held: HashMap<Newcomer, usize> = HashMap::new();
            if of_biggest_holder {
                for counted in pre_auth.iter().filter(|counted| matches(counted)) {
                    *held.entry((counted.peer, counted.process)).or_insert(0) += 1;
                }
            }
            let most = held.values().copied().max();
            let Some(position) = pre_auth.iter().position(|counted| {
                matches(counted)
                    && most.is_none_or(|most| held[&(counted.peer, counted.process)] == most)
            }) else {
                return false;
            };
            pre_auth.remove(position).expect("a position found")
        };
        self.uncount(&oldest.peer);
        self.closing.set(self.closing.get() + 1);
        *self.closing_by.borrow_mut().entry(newcomer).or_insert(0) += 1;
        ::metrics::counter!("engram_connections_closed_pre_auth_total").increment(1);
        tracing::debug!(peer = %oldest.peer, "connection closed: a newer one took its place before it logged in");
        oldest.closed.by.set(Some(newcomer));
        oldest.closed.notify.notify_one();
        true
    }

    /// `counted` logged in (or restored a token): no newer connection closes it now.
    fn logged_in(&self, counted: &Counted) {
        self.pre_auth
            .borrow_mut()
            .retain(|pending| pending.id != counted.id);
    }

    /// `counted` ended: uncounts it, unless a newer connection closed it (and so
    /// uncounted it already).
    fn close(&self, counted: &Counted) {
        let mut pre_auth = self.pre_auth.borrow_mut();
        let pending = pre_auth.iter().position(|pending| pending.id == counted.id);
        if let Some(position) = pending {
            pre_auth.remove(position);
        } else if let Some(newcomer) = counted.closed.by.get() {
            self.closing.set(self.closing.get() - 1);
            let mut closing_by = self.closing_by.borrow_mut();
            if let Some(closing) = closing_by.get_mut(&newcomer) {
                *closing -= 1;
                if *closing == 0 {
                    closing_by.remove(&newcomer);
                }
            }
            return;
        }
        drop(pre_auth);
        self.uncount(&counted.peer);
    }

    fn uncount(&self, peer: &Peer) {
        self.active.set(self.active.get() - 1);
        ::metrics::gauge!("engram_connections").set(self.active.get() as f64);
        let mut per_peer = self.per_peer.borrow_mut();
        if let Some(held) = per_peer.get_mut(peer) {
            *held -= 1;
            if *held == 0 {
                per_peer.remove(peer);
            }
        }
    }
}

/// Serves one connection: its own `Terminal`, its own RPC system, on the RPC thread.
/// A connection that has not logged in within the handshake timeout is closed. Past
/// `--connections-max` or `--connections-per-address-max`, the connection's bootstrap
/// capability is broken, so that the client's first call fails with
/// `resourceExhausted` instead of a bare disconnect; it is closed after
/// `REFUSED_GRACE_MS`, and past `REFUSED_CONNECTIONS_MAX` of those at once, a
/// connection is closed at once. A peer past its login rate is refused the same way,
/// but answered only once its rate allows an attempt again (at most `REFUSED_GRACE_MS`
/// later), so a peer that reconnects as soon as it is refused waits for each refusal.
fn hex_key(key: &[u8; 32]) -> String {
    key.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn connect(
    node: &Rc<Node>,
    connections: &Rc<Connections>,
    config: &Rc<Config>,
    peer: Peer,
    reader: impl AsyncRead + Unpin + 'static,
    writer: impl AsyncWrite + Unpin + 'static,
) {
    match admission(node, connections, config, peer, None) {
        Ok(counted) => serve_terminal(node, connections, config, counted, reader, writer),
        Err(refused) => refuse(connections, config, peer, refused, reader, writer),
    }
}

/// Serves a new `Terminal` on a connection already `counted`.
fn serve_terminal(
    node: &Rc<Node>,
    connections: &Rc<Connections>,
    config: &Config,
    counted: Counted,
    reader: impl AsyncRead + Unpin + 'static,
    writer: impl AsyncWrite + Unpin + 'static,
) {
    let terminal = Terminal::new(node.clone(), counted.peer.of_process(counted.process));
    let watched = Watched::of(&terminal);
    let bootstrap = terminal.into_client().client;
    serve_connection(
        connections,
        config,
        counted,
        (reader, writer),
        watched,
        bootstrap,
        None,
    );
}

/// A connection on the Unix socket: a Cap'n Proto connection like any, or a handoff
/// (schema `handoffMagic`), told apart by its first bytes. Counted as a connection of
/// `peer` while it is told apart, like any.
fn connect_local(
    node: &Rc<Node>,
    connections: &Rc<Connections>,
    config: &Rc<Config>,
    (peer, process): (Peer, Option<i32>),
    stream: tokio::net::UnixStream,
) {
    let counted = match admission(node, connections, config, peer, process) {
        Ok(counted) => counted,
        Err(refused) => {
            let (reader, writer) = stream.into_split();
            refuse(connections, config, peer, refused, reader, writer);
            return;
        }
    };
    let (node, connections, config) = (node.clone(), connections.clone(), config.clone());
    tokio::task::spawn_local(async move {
        // A newer connection may close this one while it is told apart, like any that
        // has not logged in: dropping the stream closes it.
        let told = tokio::select! {
            told = handoff::sniff(&stream, config.handshake_timeout) => told,
            () = counted.closed_by_newer() => None,
        };
        match told {
            Some(false) => {
                let (reader, writer) = stream.into_split();
                serve_terminal(&node, &connections, &config, counted, reader, writer);
            }
            Some(true) => {
                let terminal = Terminal::new(node.clone(), peer);
                let received = tokio::select! {
                    received = handoff::receive(stream, &terminal, config.handshake_timeout) => {
                        received
                    }
                    () = counted.closed_by_newer() => Err(CapabilityError::ResourceExhausted(
                        "a newer connection took this handoff's place".into(),
                    )),
                };
                match received {
                    Ok(handoff::Received {
                        child,
                        parent,
                        capability,
                    }) => {
                        serve_connection(
                            &connections,
                            &config,
                            counted,
                            child.into_split(),
                            Watched::of(&terminal),
                            capability,
                            Some(Box::pin(handoff::until_closed(parent))),
                        );
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "handoff refused");
                        connections.close(&counted);
                    }
                }
            }
            // Nothing in time, or closed: nothing to serve.
            None => connections.close(&counted),
        }
    });
}

/// A new connection of `peer`, counted (see [`Connections::admit`]); or why `peer` may
/// not have another connection now (see [`connect`]), and when to say so.
fn admission(
    node: &Node,
    connections: &Connections,
    config: &Config,
    peer: Peer,
    process: Option<i32>,
) -> Result<Counted, (String, std::time::Duration)> {
    // A peer past its login rate is refused, before a login is spent on it.
    let grace = std::time::Duration::from_millis(limits::REFUSED_GRACE_MS);
    if let Some((reason, left)) = node.login_refusal(&peer.of_process(process)) {
        return Err((reason, left.min(grace)));
    }
    connections
        .admit(config, peer, process)
        .map_err(|reason| (reason, std::time::Duration::ZERO))
}

/// Refuses a connection: its bootstrap capability is broken with the reason, answered
/// after `answer_after` (see [`connect`]).
fn refuse(
    connections: &Rc<Connections>,
    config: &Config,
    peer: Peer,
    (reason, answer_after): (String, std::time::Duration),
    reader: impl AsyncRead + Unpin + 'static,
    writer: impl AsyncWrite + Unpin + 'static,
) {
    connections.log_refusal(&peer, &reason);
    if connections.refused.get() >= limits::REFUSED_CONNECTIONS_MAX {
        return;
    }
    let outbox = Outbox::new(config.connection_unread_bytes_max);
    let network = network(config, reader, writer, &outbox, None);
    let bootstrap = capnp_rpc::new_broken_cap(CapabilityError::ResourceExhausted(reason).into());
    let rpc_system = RpcSystem::new(Box::new(network), Some(bootstrap));
    connections.refused.set(connections.refused.get() + 1);
    let connections = connections.clone();
    let grace = std::time::Duration::from_millis(limits::REFUSED_GRACE_MS);
    tokio::task::spawn_local(async move {
        // Nothing of the connection is read until then.
        tokio::time::sleep(answer_after).await;
        let _ = tokio::time::timeout(grace, rpc_system).await;
        connections.refused.set(connections.refused.get() - 1);
    });
}

/// A connection's vat network: what it sends counted in `outbox`, its calls read only
/// while its unread answers are within bounds and (with `activity`) it does not rest.
fn network(
    config: &Config,
    reader: impl AsyncRead + Unpin + 'static,
    writer: impl AsyncWrite + Unpin + 'static,
    outbox: &Rc<Outbox>,
    activity: Option<engram_capabilities::terminal::Activity>,
) -> Guarded {
    let options = capnp::message::ReaderOptions {
        traversal_limit_in_words: Some(config.message_bytes_max / 8),
        nesting_limit: limits::MESSAGE_NESTING_MAX,
    };
    let writer = CountingWriter::new(writer, outbox.clone(), Some(config.write_stall_timeout));
    let mut reader = PausingReader::new(reader, outbox.clone(), vec![outbox.clone()]);
    if let Some(activity) = activity {
        reader = reader.resting(Box::new(move || activity.resting_until()));
    }
    let network = twoparty::VatNetwork::new(
        reader.compat(),
        writer.compat_write(),
        rpc_twoparty_capnp::Side::Server,
        options,
    );
    Guarded::new(Box::new(network), outbox.clone())
}

/// What a connection's task watches of its terminal: the first login (or restore), and
/// what the connection waits on.
struct Watched {
    logged_in: Rc<tokio::sync::Notify>,
    activity: engram_capabilities::terminal::Activity,
}

impl Watched {
    fn of(terminal: &Terminal) -> Watched {
        Watched {
            logged_in: terminal.logged_in(),
            activity: terminal.activity(),
        }
    }
}

/// Serves `bootstrap` on a connection already `counted` until it ends, stalls, is idle
/// for too long (unless `ended` is given: a handed-off child), has not logged in within
/// the handshake timeout, a newer connection closes it before it logged in, or `ended`
/// resolves; then uncounts it.
fn serve_connection(
    connections: &Rc<Connections>,
    config: &Config,
    counted: Counted,
    (reader, writer): (
        impl AsyncRead + Unpin + 'static,
        impl AsyncWrite + Unpin + 'static,
    ),
    watched: Watched,
    bootstrap: capnp::capability::Client,
    ended: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>,
) {
    let outbox = Outbox::new(config.connection_unread_bytes_max);
    let Watched {
        logged_in,
        activity,
    } = watched;
    let network = network(config, reader, writer, &outbox, Some(activity.clone()));
    // A handed-off child is not idle while its parent holds the handoff: it may think
    // for longer than the timeout, and cannot connect again.
    let idle_timeout = match ended {
        Some(_) => std::time::Duration::ZERO,
        None => config.idle_timeout,
    };
    let rpc_system = RpcSystem::new(Box::new(network), Some(bootstrap));
    let handshake_timeout = config.handshake_timeout;
    let connections = connections.clone();
    let peer = counted.peer;
    tokio::task::spawn_local(async move {
        // Without a login in time, closed by a newer connection before it, or idle for
        // too long, dropping the RPC system closes the socket.
        let expired = async {
            let handshake = tokio::time::timeout(handshake_timeout, async {
                tokio::select! {
                    () = logged_in.notified() => true,
                    () = counted.closed_by_newer() => false,
                }
            });
            match handshake.await {
                Ok(true) => connections.logged_in(&counted),
                Ok(false) => return,
                Err(_) => {
                    // Logged at debug: a flood of sockets must not flood the log.
                    tracing::debug!(%peer, "connection closed: no login within the handshake timeout");
                    return;
                }
            }
            until_idle(&outbox, &activity, idle_timeout).await;
            tracing::info!(%peer, "connection closed: idle");
        };
        let ended = async {
            match ended {
                Some(ended) => {
                    ended.await;
                    tracing::debug!(%peer, "connection closed: its handoff connection closed");
                }
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            ended = rpc_system => ended,
            () = expired => Ok(()),
            () = ended => Ok(()),
        };
        if outbox.stalled() {
            tracing::warn!(%peer, "connection closed: its peer read none of its answers in time");
        } else if let Err(error) = ended {
            tracing::debug!(%error, "connection ended");
        }
        connections.close(&counted);
    });
}
