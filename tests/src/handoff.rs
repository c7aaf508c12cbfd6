//! Handoffs (schema `handoffMagic`) made byte by byte, as a spawning parent makes them,
//! so that tests can make hostile ones too; the test process plays the child.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use engram_client::Endpoint;
use engram_client::engram_schema::engram_capnp::HANDOFF_MAGIC;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::TestNode;

/// The node's Unix socket.
pub fn socket_path(node: &TestNode) -> PathBuf {
    match node.unix() {
        Endpoint::Unix(path) => path,
        _ => unreachable!("unix() is a Unix endpoint"),
    }
}

/// Sends a handoff: the magic carrying `descriptors`, then `length` and `token`.
pub fn send(node: &TestNode, descriptors: &[RawFd], length: u32, token: &[u8]) -> UnixStream {
    let mut stream = UnixStream::connect(socket_path(node)).unwrap();
    let rights = [ControlMessage::ScmRights(descriptors)];
    let rights: &[ControlMessage] = if descriptors.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(HANDOFF_MAGIC)],
        rights,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(sent, HANDOFF_MAGIC.len());
    // The node may refuse at the magic (no descriptor, or not a socket) and be gone
    // before the rest; a peer that announced more than it sends may find it gone too.
    // Either way its answer is read by `answer`.
    let _ = stream.write_all(&length.to_le_bytes());
    let _ = stream.write_all(token);
    stream
}

/// The node's answer to a handoff: `Ok(())` if served, else its refusal's text. Reads
/// to the end for a refusal, so the node has closed its side when it returns.
pub fn answer(stream: &mut UnixStream) -> Result<(), String> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).unwrap();
    if first[0] == 0 {
        return Ok(());
    }
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).unwrap();
    let mut text = vec![0u8; u32::from_le_bytes(length) as usize];
    stream.read_exact(&mut text).unwrap();
    assert_eq!(read_to_close(stream), 0, "bytes after a refusal");
    Err(String::from_utf8(text).unwrap())
}

/// Reads until the node closes the connection; how many bytes came. (A node that closes
/// before reading all a peer sent resets the connection: that is a close too.)
pub fn read_to_close(stream: &mut UnixStream) -> usize {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("reading to the close: {error}"),
    }
    rest.len()
}

/// A child the node serves after a genuine handoff.
pub struct Child {
    /// The handoff connection: the child's connection lives while it is held.
    pub hold: UnixStream,
    /// The capability the node serves the child (its bootstrap capability).
    pub capability: capnp::capability::Client,
    /// Runs the child's connection.
    pub connection: tokio::task::JoinHandle<Result<(), capnp::Error>>,
}

/// Hands `token` to `node` on its Unix socket as a parent would; this process plays the
/// child. The node's refusal text if it refuses. Runs inside a `LocalSet`.
pub fn child(node: &TestNode, token: &[u8]) -> Result<Child, String> {
    let (node_end, child_end) = UnixStream::pair().unwrap();
    let mut hold = send(node, &[node_end.as_raw_fd()], token.len() as u32, token);
    drop(node_end);
    answer(&mut hold)?;
    child_end.set_nonblocking(true).unwrap();
    let (reader, writer) = tokio::net::UnixStream::from_std(child_end)
        .unwrap()
        .into_split();
    let network = twoparty::VatNetwork::new(
        reader.compat(),
        writer.compat_write(),
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut system = RpcSystem::new(Box::new(network), None);
    let capability: capnp::capability::Client = system.bootstrap(rpc_twoparty_capnp::Side::Server);
    Ok(Child {
        hold,
        capability,
        connection: tokio::task::spawn_local(system),
    })
}
