//! What a connection has been sent and has not read: whoever serves a hostile peer (the
//! node its clients, a parent its spawned children) stops reading the peer's calls while
//! their answers pile up unread, and closes a connection whose peer reads nothing for
//! too long. Without it, a peer that pipelines calls and never reads its socket would
//! grow capnp-rpc's outgoing queue, and the server's memory, without bound.
//!
//! Messages are counted as they enter capnp-rpc's queue (a wrapper of its vat network)
//! and as their bytes leave for the socket (a wrapper of the socket's write half). The
//! queue side counts each message's words, the socket side its bytes with their frame,
//! so the count never overstates what is queued and never goes below zero.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use capnp::capability::Promise;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{Connection, FlowController, IncomingMessage, OutgoingMessage, VatNetwork};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's traffic: its answers in flight to its peer, and when it last heard
/// from it.
pub struct Outbox {
    /// Bytes queued for the peer and not yet taken by its socket.
    unread: Cell<usize>,
    /// Past this, the peer's next call is not read until it reads its answers.
    unread_max: usize,
    /// The read sides waiting on this outbox (its own connection's, and any other whose
    /// reading it bounds): woken when `unread` falls back to `unread_max`, and when the
    /// connection stalls.
    readers: RefCell<Vec<Waker>>,
    /// Set once the node closed the connection because its peer stopped reading.
    stalled: Cell<bool>,
    /// When the peer last sent anything.
    last_heard: Cell<tokio::time::Instant>,
}

/// The bytes queued for peers and not yet taken, of every outbox of the process (a
/// no-op unless the process installed a metrics recorder, as `engramd --metrics` does).
const UNREAD_GAUGE: &str = "engram_unread_answer_bytes";

impl Drop for Outbox {
    fn drop(&mut self) {
        metrics::gauge!(UNREAD_GAUGE).decrement(self.unread.get() as f64);
    }
}

impl Outbox {
    pub fn new(unread_max: usize) -> Rc<Outbox> {
        Rc::new(Outbox {
            unread: Cell::new(0),
            unread_max,
            readers: RefCell::new(Vec::new()),
            stalled: Cell::new(false),
            last_heard: Cell::new(tokio::time::Instant::now()),
        })
    }

    /// When the peer last sent anything.
    pub fn last_heard(&self) -> tokio::time::Instant {
        self.last_heard.get()
    }

    /// Whether the node closed the connection because its peer read nothing in time.
    pub fn stalled(&self) -> bool {
        self.stalled.get()
    }

    /// Whether more is unread than the bound allows.
    fn over(&self) -> bool {
        self.unread.get() > self.unread_max
    }

    fn wait(&self, waker: &Waker) {
        let mut readers = self.readers.borrow_mut();
        if !readers.iter().any(|reader| reader.will_wake(waker)) {
            readers.push(waker.clone());
        }
    }

    fn wake_readers(&self) {
        for reader in self.readers.take() {
            reader.wake();
        }
    }

    fn queued(&self, bytes: usize) {
        self.unread.set(self.unread.get().saturating_add(bytes));
        metrics::gauge!(UNREAD_GAUGE).increment(bytes as f64);
    }

    fn written(&self, bytes: usize) {
        let before = self.unread.get();
        self.unread.set(before.saturating_sub(bytes));
        metrics::gauge!(UNREAD_GAUGE).decrement((before - self.unread.get()) as f64);
        // A read side waits on the bound only when it was past it.
        if before > self.unread_max && !self.over() {
            self.wake_readers();
        }
    }

    /// The peer took none of its answers in time: the read side fails too, which ends
    /// the connection.
    fn stall(&self) {
        self.stalled.set(true);
        self.wake_readers();
    }
}

/// A vat network whose connection counts what it queues in an [`Outbox`].
pub struct Guarded {
    inner: Box<dyn VatNetwork<Side>>,
    outbox: Rc<Outbox>,
}

impl Guarded {
    pub fn new(inner: Box<dyn VatNetwork<Side>>, outbox: Rc<Outbox>) -> Guarded {
        Guarded { inner, outbox }
    }
}

impl VatNetwork<Side> for Guarded {
    fn connect(&mut self, host_id: Side) -> Option<Box<dyn Connection<Side>>> {
        let outbox = self.outbox.clone();
        self.inner
            .connect(host_id)
            .map(|inner| Box::new(GuardedConnection { inner, outbox }) as Box<dyn Connection<Side>>)
    }

    fn accept(&mut self) -> Promise<Box<dyn Connection<Side>>, capnp::Error> {
        let accepted = self.inner.accept();
        let outbox = self.outbox.clone();
        Promise::from_future(async move {
            let inner = accepted.await?;
            Ok(Box::new(GuardedConnection { inner, outbox }) as Box<dyn Connection<Side>>)
        })
    }

    fn drive_until_shutdown(&mut self) -> Promise<(), capnp::Error> {
        self.inner.drive_until_shutdown()
    }
}

struct GuardedConnection {
    inner: Box<dyn Connection<Side>>,
    outbox: Rc<Outbox>,
}

impl Connection<Side> for GuardedConnection {
    fn get_peer_vat_id(&self) -> Side {
        self.inner.get_peer_vat_id()
    }

    fn new_outgoing_message(&mut self, first_segment_word_size: u32) -> Box<dyn OutgoingMessage> {
        Box::new(CountedMessage {
            inner: self.inner.new_outgoing_message(first_segment_word_size),
            outbox: self.outbox.clone(),
        })
    }

    fn receive_incoming_message(
        &mut self,
    ) -> Promise<Option<Box<dyn IncomingMessage>>, capnp::Error> {
        self.inner.receive_incoming_message()
    }

    fn new_stream(&mut self) -> (Box<dyn FlowController>, Promise<(), capnp::Error>) {
        self.inner.new_stream()
    }

    fn shutdown(&mut self, result: capnp::Result<()>) -> Promise<(), capnp::Error> {
        self.inner.shutdown(result)
    }
}

struct CountedMessage {
    inner: Box<dyn OutgoingMessage>,
    outbox: Rc<Outbox>,
}

impl OutgoingMessage for CountedMessage {
    fn get_body(&mut self) -> capnp::Result<capnp::any_pointer::Builder<'_>> {
        self.inner.get_body()
    }

    fn get_body_as_reader(&self) -> capnp::Result<capnp::any_pointer::Reader<'_>> {
        self.inner.get_body_as_reader()
    }

    fn send(
        self: Box<Self>,
    ) -> (
        Promise<(), capnp::Error>,
        Rc<capnp::message::Builder<capnp::message::HeapAllocator>>,
    ) {
        self.outbox.queued(self.inner.size_in_words() * 8);
        self.inner.send()
    }

    fn take(self: Box<Self>) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        self.inner.take()
    }

    fn size_in_words(&self) -> usize {
        self.inner.size_in_words()
    }
}

/// When a connection rests (its next calls are not read), if it does.
pub type Resting = Box<dyn Fn() -> Option<tokio::time::Instant>>;

/// The socket's read half: reads only while every outbox it is bounded by is within its
/// bound and the connection does not rest (a call of it went past a rate), and fails
/// once its own connection stalled.
pub struct PausingReader<R> {
    inner: R,
    /// The connection's own outbox: when its peer was last heard from, and whether it
    /// stalled.
    own: Rc<Outbox>,
    /// The outboxes whose bound this side's reading waits on.
    bounds: Vec<Rc<Outbox>>,
    /// When the connection rests.
    resting_until: Option<Resting>,
    /// Running while the connection rests.
    rest: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R> PausingReader<R> {
    /// Reads while each of `bounds` is within its bound (usually `[own]`: a server stops
    /// reading calls whose answers pile up unread); fails once `own` stalls.
    pub fn new(inner: R, own: Rc<Outbox>, bounds: Vec<Rc<Outbox>>) -> PausingReader<R> {
        PausingReader {
            inner,
            own,
            bounds,
            resting_until: None,
            rest: None,
        }
    }

    /// Also reads nothing while `resting_until` says the connection rests.
    pub fn resting(mut self, resting_until: Resting) -> PausingReader<R> {
        self.resting_until = Some(resting_until);
        self
    }

    /// Whether the connection rests now; if so, its timer wakes `context` when the rest
    /// ends.
    fn rests(&mut self, context: &mut Context<'_>) -> bool {
        let Some(until) = self.resting_until.as_ref().and_then(|until| until()) else {
            return false;
        };
        if until <= tokio::time::Instant::now() {
            self.rest = None;
            return false;
        }
        let rest = self
            .rest
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if rest.deadline() != until {
            rest.as_mut().reset(until);
        }
        rest.as_mut().poll(context).is_pending()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for PausingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.own.stalled.get() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer read none of its answers in time",
            )));
        }
        // Woken by answers read (or a stall), or when a rest ends.
        if let Some(over) = this.bounds.iter().find(|outbox| outbox.over()) {
            over.wait(context.waker());
            this.own.wait(context.waker());
            return Poll::Pending;
        }
        if this.rests(context) {
            this.own.wait(context.waker());
            return Poll::Pending;
        }
        let before = buffer.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(context, buffer);
        if buffer.filled().len() > before {
            this.own.last_heard.set(tokio::time::Instant::now());
        }
        if polled.is_pending() {
            // Woken by the socket, or by a stall.
            this.own.wait(context.waker());
        }
        polled
    }
}

/// The socket's write half: counts what the peer's socket takes, and fails the
/// connection once the peer has taken nothing for `stall_timeout` (if any) while answers
/// wait.
pub struct CountingWriter<W> {
    inner: W,
    outbox: Rc<Outbox>,
    stall_timeout: Option<Duration>,
    /// Running while a write waits for the peer to read.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<W> CountingWriter<W> {
    pub fn new(inner: W, outbox: Rc<Outbox>, stall_timeout: Option<Duration>) -> CountingWriter<W> {
        CountingWriter {
            inner,
            outbox,
            stall_timeout,
            stall: None,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(context, buffer) {
            Poll::Ready(Ok(written)) => {
                this.stall = None;
                this.outbox.written(written);
                Poll::Ready(Ok(written))
            }
            Poll::Pending => {
                let Some(timeout) = this.stall_timeout else {
                    return Poll::Pending;
                };
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(context).is_ready() {
                    this.outbox.stall();
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer read none of its answers in time",
                    )));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}
