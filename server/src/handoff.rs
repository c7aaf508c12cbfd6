//! Handoffs (schema `handoffMagic`): a local parent hands the node one end of a spawned
//! child's socket pair, with a token, over the Unix socket; the node restores the token
//! and serves the capability on that end itself, so the child's calls take no hop
//! through its parent. The handoff connection stays open as the parent's hold on the
//! child's connection.
//!
//! Everything in a handoff is the peer's to choose, so everything is checked: the first
//! bytes are only peeked until they are known to be a handoff, exactly one descriptor is
//! taken (any others are closed at once), it must be a connected Unix stream socket, the
//! token is bounded, and it all must arrive within the handshake timeout.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use engram_capabilities::Terminal;
use engram_capabilities::error::CapabilityError;
use engram_schema::engram_capnp::HANDOFF_MAGIC;
use engram_schema::handoff::{REFUSAL_BYTES_MAX, REFUSED, SERVED, TOKEN_BYTES_MAX};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockType, SockaddrLike, SockaddrStorage,
    getpeername, getsockname, getsockopt, recvmsg, sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Descriptors one handoff may carry before the rest are cut off by the kernel (only
/// one is kept; room for more lets the node see, and close, extras).
const DESCRIPTORS_SEEN_MAX: usize = 4;

/// Whether a new Unix connection is a handoff (`Some(true)`), Cap'n Proto
/// (`Some(false)`), or sent nothing that tells within `timeout` (`None`). Reads nothing.
pub async fn sniff(stream: &UnixStream, timeout: Duration) -> Option<bool> {
    let peeked = async {
        let mut first = [0u8; HANDOFF_MAGIC.len()];
        loop {
            stream.readable().await.ok()?;
            let peeked = stream.try_io(Interest::READABLE, || {
                let length =
                    nix::sys::socket::recv(stream.as_raw_fd(), &mut first, MsgFlags::MSG_PEEK)?;
                if length > 0
                    && length < HANDOFF_MAGIC.len()
                    && first[..length] == HANDOFF_MAGIC[..length]
                {
                    // A prefix of the magic so far: wait for more bytes (this clears the
                    // readiness, so the wait is not a spin).
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                Ok(length)
            });
            match peeked {
                Ok(0) => return None,
                Ok(length) => return Some(first[..length] == HANDOFF_MAGIC[..]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(timeout, peeked).await.ok().flatten()
}

/// A handoff the node accepted.
pub struct Received {
    /// The node's end of the child's socket pair.
    pub child: UnixStream,
    /// The handoff connection: the child's connection lasts while it is open.
    pub parent: UnixStream,
    /// The capability to serve the child.
    pub capability: capnp::capability::Client,
}

/// Reads a handoff (after [`sniff`] said it is one), restores its token with
/// `terminal`, and answers it. On a refusal the peer is told why (when it still
/// listens) and both sockets are closed.
pub async fn receive(
    mut parent: UnixStream,
    terminal: &Terminal,
    timeout: Duration,
) -> Result<Received, CapabilityError> {
    let read = tokio::time::timeout(timeout, read(&mut parent))
        .await
        .unwrap_or_else(|_| {
            Err(CapabilityError::InvalidArgument(
                "the handoff did not arrive within the handshake timeout".into(),
            ))
        });
    let accepted = match read {
        Ok((descriptor, token)) => terminal
            .restore_token(&token, true)
            .await
            .map(|restored| (descriptor, restored.client)),
        Err(error) => Err(error),
    };
    match accepted {
        Ok((descriptor, capability)) => {
            let child = std::os::unix::net::UnixStream::from(descriptor);
            let child = child
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(child))
                .map_err(|error| {
                    CapabilityError::Internal(format!("serving a handed-off socket: {error}"))
                })?;
            let _ = tokio::time::timeout(timeout, parent.write_all(&[SERVED])).await;
            Ok(Received {
                child,
                parent,
                capability,
            })
        }
        Err(error) => {
            let text = format!("{}: {error}", error.code());
            let text = truncated(&text, REFUSAL_BYTES_MAX);
            let mut refusal = Vec::with_capacity(1 + 4 + text.len());
            refusal.push(REFUSED);
            refusal.extend_from_slice(&(text.len() as u32).to_le_bytes());
            refusal.extend_from_slice(text.as_bytes());
            let _ = tokio::time::timeout(timeout, parent.write_all(&refusal)).await;
            Err(error)
        }
    }
}

/// Resolves when the parent closes its handoff connection, or sends anything more.
pub async fn until_closed(mut parent: UnixStream) {
    let mut byte = [0u8; 1];
    let _ = parent.read(&mut byte).await;
}

/// The handoff's descriptor and token.
async fn read(parent: &mut UnixStream) -> Result<(OwnedFd, Vec<u8>), CapabilityError> {
    let descriptor = receive_magic(parent).await?;
    check_socket(&descriptor)?;
    let mut length = [0u8; 4];
    parent
        .read_exact(&mut length)
        .await
        .map_err(truncated_handoff)?;
    let length = u32::from_le_bytes(length) as usize;
    if length > TOKEN_BYTES_MAX {
        return Err(CapabilityError::Unauthenticated(format!(
            "token refused: the handoff announces {length} bytes; a token is at most \
             {TOKEN_BYTES_MAX}"
        )));
    }
    let mut token = vec![0u8; length];
    parent
        .read_exact(&mut token)
        .await
        .map_err(truncated_handoff)?;
    Ok((descriptor, token))
}

fn truncated_handoff(error: std::io::Error) -> CapabilityError {
    CapabilityError::InvalidArgument(format!("the handoff ended early: {error}"))
}

/// Reads the magic bytes and the descriptors that came with them: exactly one is kept.
async fn receive_magic(parent: &UnixStream) -> Result<OwnedFd, CapabilityError> {
    let mut magic = [0u8; HANDOFF_MAGIC.len()];
    let mut received = 0;
    let mut descriptors: Vec<OwnedFd> = Vec::new();
    let mut truncated = false;
    while received < magic.len() {
        parent.readable().await.map_err(truncated_handoff)?;
        let got = parent.try_io(Interest::READABLE, || {
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; DESCRIPTORS_SEEN_MAX]);
            let mut buffer = [IoSliceMut::new(&mut magic[received..])];
            let message = recvmsg::<()>(
                parent.as_raw_fd(),
                &mut buffer,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            truncated |= message.flags.contains(MsgFlags::MSG_CTRUNC);
            for control in message.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = control {
                    // SAFETY: the kernel just installed these descriptors in this
                    // process for this message; nothing else owns them.
                    descriptors.extend(
                        fds.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            Ok(message.bytes)
        });
        match got {
            Ok(0) => return Err(truncated_handoff(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(bytes) => received += bytes,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(truncated_handoff(error)),
        }
    }
    // Extras are closed as `descriptors` drops.
    if truncated || descriptors.len() != 1 {
        return Err(CapabilityError::InvalidArgument(format!(
            "a handoff carries exactly one descriptor; this one carried {}",
            if truncated {
                format!("more than {DESCRIPTORS_SEEN_MAX}")
            } else {
                descriptors.len().to_string()
            }
        )));
    }
    Ok(descriptors.pop().expect("one descriptor"))
}

/// Refuses a descriptor that is not a connected Unix stream socket.
fn check_socket(descriptor: &OwnedFd) -> Result<(), CapabilityError> {
    let refused = |what: &str| {
        CapabilityError::InvalidArgument(format!(
            "the handed-off descriptor must be a connected Unix stream socket; it is {what}"
        ))
    };
    let kind = getsockopt(descriptor, sockopt::SockType).map_err(|_| refused("no socket"))?;
    if kind != SockType::Stream {
        return Err(refused("not a stream socket"));
    }
    let family = getsockname::<SockaddrStorage>(descriptor.as_raw_fd())
        .ok()
        .and_then(|address| address.family());
    if family != Some(AddressFamily::Unix) {
        return Err(refused("not a Unix socket"));
    }
    if getsockopt(descriptor, sockopt::AcceptConn).unwrap_or(true) {
        return Err(refused("a listening socket"));
    }
    getpeername::<SockaddrStorage>(descriptor.as_raw_fd()).map_err(|_| refused("not connected"))?;
    Ok(())
}

/// `text` cut at a character boundary to at most `bytes` bytes.
fn truncated(text: &str, bytes: usize) -> &str {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
