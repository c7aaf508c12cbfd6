//! The writer thread: one thread owns every write transaction and folds the requests
//! that arrive while it is committing into the next transaction (group commit), so many
//! acknowledgements share one fsync. A request is answered only after its transaction
//! is durable.

use std::thread::JoinHandle;

use futures::channel::oneshot;
use tokio::sync::mpsc;

use crate::Store;
use crate::error::StoreError;
use crate::limits::{GROUP_COMMIT_ATOMS_MAX, GROUP_COMMIT_REQUESTS_MAX, WRITE_QUEUE_REQUESTS_MAX};
use crate::write::{WriteOp, WriteOutcome, WriteRequest};

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// What the writer's queue carries.
enum Message {
    Write(WriteRequest, Reply),
    /// Finish what was queued before, then exit.
    Stop,
}

/// A handle to submit writes. Cheap to clone; usable from any async runtime. The queue
/// holds at most `WRITE_QUEUE_REQUESTS_MAX` requests however many handles submit:
/// submitters past it wait.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Message>,
}

/// The running writer thread.
pub struct WriterThread {
    handle: JoinHandle<()>,
    queue: mpsc::Sender<Message>,
}

impl WriterThread {
    /// Makes the thread finish the requests already queued and exit, and waits for it.
    /// A [`Writer`] handle still held (by a task dropped while its call was in flight,
    /// say) then answers `WriterStopped`. Not to be called from an async context.
    pub fn join(self) {
        // Sent after everything queued, so it is the last message taken; it fails only
        // if the thread is gone already.
        let _ = self.queue.blocking_send(Message::Stop);
        if self.handle.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

impl Writer {
    /// Starts the writer thread for `store`. After every durable group that committed
    /// atoms it calls `on_commit` with the last commit number (the doorbell that wakes
    /// subscribers); it is called on the writer thread and must not block.
    pub fn start(store: Store, on_commit: impl Fn(u64) + Send + 'static) -> (Writer, WriterThread) {
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE_REQUESTS_MAX);
        let handle = std::thread::Builder::new()
            .name("engram-writer".into())
            .spawn(move || run(store, receiver, on_commit))
            .expect("spawning the writer thread");
        let thread = WriterThread {
            handle,
            queue: sender.clone(),
        };
        (Writer { queue: sender }, thread)
    }

    /// Submits a request and waits until it is durable (or rejected).
    pub async fn submit(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Message::Write(request, reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

fn atoms_of(request: &WriteRequest) -> usize {
    match &request.op {
        WriteOp::Remember { atoms, .. } => atoms.len(),
        _ => 1,
    }
}

fn last_commit_of(verdicts: &[Result<WriteOutcome, StoreError>]) -> Option<u64> {
    verdicts
        .iter()
        .filter_map(|verdict| match verdict {
            Ok(WriteOutcome::Remembered {
                receipts,
                replayed: false,
            }) => receipts.last().map(|receipt| receipt.commit),
            // Atoms of another node's world: they wake subscribers and the indexer too.
            Ok(WriteOutcome::Replicated {
                last_commit: Some(commit),
                ..
            }) => Some(*commit),
            _ => None,
        })
        .max()
}

fn run(store: Store, mut receiver: mpsc::Receiver<Message>, on_commit: impl Fn(u64)) {
    let mut requests = Vec::with_capacity(GROUP_COMMIT_REQUESTS_MAX);
    let mut replies = Vec::with_capacity(GROUP_COMMIT_REQUESTS_MAX);
    let mut stopping = false;
    // Block for the first request of a group, then take whatever else is already queued.
    while !stopping && let Some(Message::Write(request, reply)) = receiver.blocking_recv() {
        let mut atoms = atoms_of(&request);
        requests.push(request);
        replies.push(reply);
        while requests.len() < GROUP_COMMIT_REQUESTS_MAX && atoms < GROUP_COMMIT_ATOMS_MAX {
            match receiver.try_recv() {
                Ok(Message::Write(request, reply)) => {
                    atoms += atoms_of(&request);
                    requests.push(request);
                    replies.push(reply);
                }
                Ok(Message::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        tracing::trace!(requests = requests.len(), atoms, "group commit");
        metrics::histogram!("engram_write_group_requests").record(requests.len() as f64);
        metrics::histogram!("engram_write_group_atoms").record(atoms as f64);
        let started = std::time::Instant::now();
        let applied = store.apply(&requests);
        metrics::histogram!("engram_write_group_seconds").record(started.elapsed());
        match applied {
            Ok(verdicts) => {
                assert_eq!(verdicts.len(), replies.len(), "one verdict per request");
                if let Some(commit) = last_commit_of(&verdicts) {
                    on_commit(commit);
                }
                for (reply, verdict) in replies.drain(..).zip(verdicts) {
                    // A submitter that went away (connection closed) no longer waits.
                    let _ = reply.send(verdict);
                }
            }
            Err(error) => {
                tracing::error!(%error, requests = requests.len(), "group commit failed; no request of it was acknowledged");
                // Said as it is: a group whose entries may still reach the store is never
                // answered "nothing was written".
                let uncertain = matches!(error, StoreError::MayHaveBeenWritten { .. });
                let reason = match error {
                    StoreError::MayHaveBeenWritten { reason } => reason,
                    other => other.to_string(),
                };
                for reply in replies.drain(..) {
                    let reason = reason.clone();
                    let _ = reply.send(Err(if uncertain {
                        StoreError::MayHaveBeenWritten { reason }
                    } else {
                        StoreError::TransactionFailed { reason }
                    }));
                }
            }
        }
        requests.clear();
    }
    // Stopped: leave nothing for the next start to recover.
    if let Err(error) = store.checkpoint() {
        tracing::warn!(%error, "the last checkpoint failed; the next start recovers from the journal");
    }
}
