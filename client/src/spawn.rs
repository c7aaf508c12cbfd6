//! Sandboxed children: a parent that holds a capability starts a child process whose
//! only authority is that capability, served to it as the bootstrap capability of a
//! Cap'n Proto connection over a socket pair (the child's end is its file descriptor
//! `CHILD_FD`, named by `ENGRAM_FD`). The child holds no key, needs no network and
//! reaches nothing else; the capability's own checks (epoch, grants, restriction, rates)
//! apply to its every call on the node. The parent saves the capability as a token it
//! never shows the child, and then:
//!
//! - with the node on its Unix socket, hands the other end of the socket pair to the node
//!   with the token (schema `handoffMagic`): the node serves the child itself, as one
//!   more connection under its limits, while the parent holds the handoff connection;
//! - over TCP, restores the token on a node connection of the child's own (so the node's
//!   limits per connection bound each child apart) and forwards the child's calls on it,
//!   bounding what it holds for the child as the node bounds its peers (an outbox each
//!   way): it stops reading the child's calls while the child leaves answers unread or
//!   the node has not taken the calls already forwarded, stops reading the node's
//!   answers while the child has not read earlier ones, and cuts off a child that reads
//!   nothing for its stall timeout.

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use engram_schema::engram_capnp::{observer, signer, world_reader, world_writer};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::Endpoint;
use crate::error::ClientError;
use crate::outbox::{CountingWriter, Guarded, Outbox, PausingReader};

/// The child's file descriptor of its end of the socket pair.
pub const CHILD_FD: i32 = 3;
/// The largest message a child may send its parent.
pub const CHILD_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Names the child's descriptor.
pub const FD_VARIABLE: &str = "ENGRAM_FD";
/// Which capability the child was given: `reader`, `writer`, `observer` or `signer`.
pub const CAPABILITY_VARIABLE: &str = "ENGRAM_CAPABILITY";
/// The world the capability is of (empty for a signer).
pub const WORLD_VARIABLE: &str = "ENGRAM_WORLD";
/// The default of [`ChildLimits::unread_bytes_max`] (the node's own default per
/// connection).
pub const CHILD_UNREAD_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// The default of [`ChildLimits::stall_timeout`] (the node's own default).
pub const CHILD_STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// What a parent holds for one child, and how long it waits on one.
#[derive(Clone, Debug)]
pub struct ChildLimits {
    /// Bytes of answers the child may leave unread (and of its calls the node may not
    /// have taken yet); past it, the parent reads no more of its calls until it reads.
    pub unread_bytes_max: usize,
    /// How long the child may read none of its waiting answers before it is cut off.
    pub stall_timeout: Duration,
}

impl Default for ChildLimits {
    fn default() -> ChildLimits {
        ChildLimits {
            unread_bytes_max: CHILD_UNREAD_BYTES_MAX_DEFAULT,
            stall_timeout: CHILD_STALL_TIMEOUT_DEFAULT,
        }
    }
}

/// One capability: what a child is handed, a token saves and restores.
#[derive(Clone)]
pub enum Held {
    Reader(world_reader::Client),
    Writer(world_writer::Client),
    Observer(observer::Client),
    Signer(signer::Client),
}

impl Held {
    /// The reader, if this is one.
    pub fn reader(&self) -> Option<world_reader::Client> {
        match self {
            Held::Reader(reader) => Some(reader.clone()),
            _ => None,
        }
    }

    /// The writer, if this is one.
    pub fn writer(&self) -> Option<world_writer::Client> {
        match self {
            Held::Writer(writer) => Some(writer.clone()),
            _ => None,
        }
    }

    /// The observer, if this is one.
    pub fn observer(&self) -> Option<observer::Client> {
        match self {
            Held::Observer(observer) => Some(observer.clone()),
            _ => None,
        }
    }

    /// The signer, if this is one.
    pub fn signer(&self) -> Option<signer::Client> {
        match self {
            Held::Signer(signer) => Some(signer.clone()),
            _ => None,
        }
    }

    /// `reader`, `writer`, `observer` or `signer`.
    pub fn kind(&self) -> &'static str {
        match self {
            Held::Reader(_) => "reader",
            Held::Writer(_) => "writer",
            Held::Observer(_) => "observer",
            Held::Signer(_) => "signer",
        }
    }

    fn client(&self) -> capnp::capability::Client {
        match self {
            Held::Reader(reader) => reader.client.clone(),
            Held::Writer(writer) => writer.client.clone(),
            Held::Observer(observer) => observer.client.clone(),
            Held::Signer(signer) => signer.client.clone(),
        }
    }
}

/// Starts `command` as a child whose only authority is `held` (of `world`, empty for a
/// signer), served to it as the bootstrap capability of a connection on its descriptor
/// `CHILD_FD`, until the child closes its end, its connection to the node ends, or this
/// process exits. Must run inside a `tokio::task::LocalSet`. The child's descriptors 0 to
/// 2 are whatever `command` says; descriptor 3 is the connection, and nothing else of the
/// parent's is open in it; nor is any `ENGRAM_` variable of this process's environment
/// (its key, token, node) set in it, unless `command` sets it.
///
/// With the node on a Unix socket (`endpoint` is `unix:PATH`), the parent hands the
/// child's connection to the node (schema `handoffMagic`), which serves the capability on
/// it itself: the child's calls take no hop through the parent, and the connection ends
/// when this process lets go of it. Over TCP the parent serves the child and forwards
/// its calls, on a node connection of the child's own, within `limits`.
pub async fn spawn(
    endpoint: &Endpoint,
    held: &Held,
    world: &str,
    command: &mut Command,
    limits: &ChildLimits,
) -> Result<Child, ClientError> {
    // The token stays in this process: the child gets the capability, not the token.
    let token = crate::token::save(held).await?;
    let program = command.get_program().to_string_lossy().into_owned();
    let io = |source: std::io::Error| ClientError::Spawn {
        program: program.clone(),
        source,
    };
    let (parent_end, child_end) = std::os::unix::net::UnixStream::pair().map_err(io)?;
    match endpoint {
        Endpoint::Unix(path) => {
            let hold = hand_off(path, &token, parent_end).await?;
            let child = start(command, held.kind(), world, child_end).map_err(io)?;
            // Held until the node lets go (the child's connection ended), or this
            // process exits.
            tokio::task::spawn_local(async move {
                let mut hold = hold;
                let mut byte = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut hold, &mut byte).await;
            });
            Ok(child)
        }
        Endpoint::Tcp(_) | Endpoint::Tls { .. } => {
            let forwarded = restore_for_child(endpoint, &token, limits).await?;
            let child = match start(command, held.kind(), world, child_end) {
                Ok(child) => child,
                Err(error) => {
                    forwarded.node_system.abort();
                    return Err(io(error));
                }
            };
            parent_end.set_nonblocking(true).map_err(io)?;
            let parent_end = tokio::net::UnixStream::from_std(parent_end).map_err(io)?;
            serve_child(parent_end, forwarded, limits);
            Ok(child)
        }
    }
}

/// Hands `child_end` to the node at `path` with `token` (schema `handoffMagic`); the
/// connection returned holds the child's connection open.
async fn hand_off(
    path: &std::path::Path,
    token: &[u8],
    child_end: std::os::unix::net::UnixStream,
) -> Result<tokio::net::UnixStream, ClientError> {
    use engram_schema::engram_capnp::HANDOFF_MAGIC;
    use engram_schema::handoff::{REFUSAL_BYTES_MAX, SERVED};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let connect_error = |source| ClientError::Connect {
        endpoint: format!("unix:{}", path.display()),
        source,
    };
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(connect_error)?;
    let descriptors = [child_end.as_raw_fd()];
    let rights = [nix::sys::socket::ControlMessage::ScmRights(&descriptors)];
    let mut sent = 0;
    while sent < HANDOFF_MAGIC.len() {
        stream.writable().await.map_err(connect_error)?;
        let written = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let rest = [std::io::IoSlice::new(&HANDOFF_MAGIC[sent..])];
            // The descriptor goes with the first byte only.
            let rights: &[_] = if sent == 0 { &rights } else { &[] };
            nix::sys::socket::sendmsg::<()>(
                stream.as_raw_fd(),
                &rest,
                rights,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match written {
            Ok(bytes) => sent += bytes,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(connect_error(error)),
        }
    }
    drop(child_end);
    let mut request = Vec::with_capacity(4 + token.len());
    request.extend_from_slice(&(token.len() as u32).to_le_bytes());
    request.extend_from_slice(token);
    stream.write_all(&request).await.map_err(connect_error)?;
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(connect_error)?;
    if answer[0] == SERVED {
        return Ok(stream);
    }
    let mut length = [0u8; 4];
    stream
        .read_exact(&mut length)
        .await
        .map_err(connect_error)?;
    let length = (u32::from_le_bytes(length) as usize).min(REFUSAL_BYTES_MAX);
    let mut text = vec![0u8; length];
    stream.read_exact(&mut text).await.map_err(connect_error)?;
    let text = String::from_utf8_lossy(&text);
    Err(match engram_schema::ErrorCode::parse_description(&text) {
        Some((code, message)) => ClientError::Node {
            code,
            message: message.to_owned(),
        },
        None => ClientError::InvalidInput(format!("the node refused the handoff: {text}")),
    })
}

/// What a parent forwards a child's calls to.
struct Forwarded {
    /// The capability, restored on the child's own node connection.
    restored: Held,
    /// That connection's RPC system, running.
    node_system: tokio::task::JoinHandle<Result<(), capnp::Error>>,
    /// What the node has not taken of the calls forwarded to it.
    node_outbox: std::rc::Rc<Outbox>,
    /// What the child has not read of its answers.
    child_outbox: std::rc::Rc<Outbox>,
}

/// The capability restored from `token` on a new connection to the node at `endpoint`,
/// for one child.
async fn restore_for_child(
    endpoint: &Endpoint,
    token: &[u8],
    limits: &ChildLimits,
) -> Result<Forwarded, ClientError> {
    let ((node_reader, node_writer), _) = crate::open(endpoint).await?;
    let child_outbox = Outbox::new(limits.unread_bytes_max);
    let node_outbox = Outbox::new(limits.unread_bytes_max);
    // The node's answers are read only while the child reads what it was sent. Calls to
    // the node wait on no timeout here: the node closes a connection it cannot serve.
    let node_reader =
        PausingReader::new(node_reader, node_outbox.clone(), vec![child_outbox.clone()]);
    let node_writer = CountingWriter::new(node_writer, node_outbox.clone(), None);
    let network = crate::network(node_reader.compat(), node_writer.compat_write());
    let (connection, node_system) =
        crate::connection(Box::new(Guarded::new(network, node_outbox.clone())));
    let node_system = tokio::task::spawn_local(node_system);
    // The child's authority ends with this connection: it cannot save what it holds.
    match connection.restore_with(token, true).await {
        Ok((_, restored)) => Ok(Forwarded {
            restored,
            node_system,
            node_outbox,
            child_outbox,
        }),
        Err(error) => {
            node_system.abort();
            Err(error)
        }
    }
}

/// Serves the restored capability to the child on `parent_end`, forwarding its calls on
/// the child's node connection; the two connections end together.
fn serve_child(parent_end: tokio::net::UnixStream, forwarded: Forwarded, limits: &ChildLimits) {
    let Forwarded {
        restored,
        node_system,
        node_outbox,
        child_outbox,
    } = forwarded;
    let (reader, writer) = parent_end.into_split();
    // The child's calls are read only while it reads its answers and the node takes the
    // calls already forwarded.
    let reader = PausingReader::new(
        reader,
        child_outbox.clone(),
        vec![child_outbox.clone(), node_outbox],
    );
    let writer = CountingWriter::new(writer, child_outbox.clone(), Some(limits.stall_timeout));
    // A child's message is bounded like a node's (engramd --message-bytes-max's default):
    // a larger one, or bytes that are no message, cut that child off and no other.
    let options = capnp::message::ReaderOptions {
        traversal_limit_in_words: Some(CHILD_MESSAGE_BYTES_MAX / 8),
        nesting_limit: 64,
    };
    let network = twoparty::VatNetwork::new(
        reader.compat(),
        writer.compat_write(),
        rpc_twoparty_capnp::Side::Server,
        options,
    );
    let network = Guarded::new(Box::new(network), child_outbox);
    let child_system = RpcSystem::new(Box::new(network), Some(restored.client()));
    tokio::task::spawn_local(async move {
        let mut node_system = node_system;
        tokio::select! {
            _ = child_system => node_system.abort(),
            _ = &mut node_system => {}
        }
    });
}

/// Starts `command` with `child_end` as its descriptor `CHILD_FD`, and the variables
/// that name it.
fn start(
    command: &mut Command,
    kind: &str,
    world: &str,
    child_end: std::os::unix::net::UnixStream,
) -> std::io::Result<Child> {
    let child_fd = child_end.as_raw_fd();
    // No credential of the parent's reaches the child: every `ENGRAM_` variable this
    // process inherited (its key, token, node) is taken out, unless the caller set it
    // for the child itself.
    let chosen: Vec<std::ffi::OsString> = command
        .get_envs()
        .map(|(name, _)| name.to_owned())
        .collect();
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"ENGRAM_") && !chosen.contains(&name) {
            command.env_remove(&name);
        }
    }
    command
        .env(FD_VARIABLE, CHILD_FD.to_string())
        .env(CAPABILITY_VARIABLE, kind)
        .env(WORLD_VARIABLE, world);
    // SAFETY: between fork and exec the closure only calls dup2, fcntl, close_range and
    // close, which are async-signal-safe, on descriptors this process owns.
    unsafe {
        command.pre_exec(move || {
            if child_fd == CHILD_FD {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(CHILD_FD, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, CHILD_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing but standard input, output, error and its capability: any other
            // descriptor this process inherited without close-on-exec is closed too.
            let first = (CHILD_FD + 1) as libc::c_uint;
            if libc::close_range(first, libc::c_uint::MAX, 0) == -1 {
                // A kernel before 5.9: close them one by one, up to the process's limit.
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                let last = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur.min(1 << 20) as libc::c_int
                } else {
                    1024
                };
                for descriptor in first as libc::c_int..last {
                    libc::close(descriptor);
                }
            }
            Ok(())
        });
    }
    // The child's end closes here, after the child has its copy.
    command.spawn()
}

/// What a child was given by its parent.
pub struct Inherited {
    /// The world the capability is of.
    pub world: String,
    pub held: Held,
}

/// In a child started by [`spawn`]: the capability served on `ENGRAM_FD` (by the node,
/// handed off, or by the parent, forwarding).
/// Must run inside a `tokio::task::LocalSet`.
pub fn inherited() -> Result<Inherited, ClientError> {
    let variable = |name: &str| {
        std::env::var(name).map_err(|_| {
            ClientError::InvalidInput(format!(
                "{name} is not set: this process was not started by `engram spawn`"
            ))
        })
    };
    let fd: i32 = variable(FD_VARIABLE)?.parse().map_err(|_| {
        ClientError::InvalidInput(format!("{FD_VARIABLE} is not a file descriptor number"))
    })?;
    let kind = variable(CAPABILITY_VARIABLE)?;
    let world = variable(WORLD_VARIABLE)?;
    // SAFETY: the parent left this descriptor open for this process alone, and nothing
    // else in it uses the descriptor.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    let io = |source| ClientError::Connect {
        endpoint: format!("{FD_VARIABLE}={fd}"),
        source,
    };
    stream.set_nonblocking(true).map_err(io)?;
    let stream = tokio::net::UnixStream::from_std(stream).map_err(io)?;
    let (reader, writer) = stream.into_split();
    let mut system = RpcSystem::new(crate::network(reader.compat(), writer.compat_write()), None);
    let bootstrap: capnp::capability::Client = system.bootstrap(rpc_twoparty_capnp::Side::Server);
    tokio::task::spawn_local(system);
    let held = match kind.as_str() {
        "reader" => Held::Reader(capnp::capability::FromClientHook::new(bootstrap.hook)),
        "writer" => Held::Writer(capnp::capability::FromClientHook::new(bootstrap.hook)),
        "observer" => Held::Observer(capnp::capability::FromClientHook::new(bootstrap.hook)),
        "signer" => Held::Signer(capnp::capability::FromClientHook::new(bootstrap.hook)),
        other => {
            return Err(ClientError::InvalidInput(format!(
                "{CAPABILITY_VARIABLE} is {other:?}; expected reader, writer, observer or signer"
            )));
        }
    };
    Ok(Inherited { world, held })
}
