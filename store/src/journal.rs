//! The write-ahead journal: how a group of remembered atoms becomes durable with one
//! sequential write and one `fdatasync`, instead of a durable redb commit that writes
//! every B-tree page the group touched.
//!
//! A group's entries are appended to the journal, whose sync then runs on the journal's
//! own thread while the writer inserts the same entries into the redb transaction and
//! commits it without syncing. Readers see the commit, and the writer answers, only
//! once the sync has returned.
//! Every few MiB or every second the writer checkpoints: one durable redb commit makes
//! everything before it durable in the redb file, and the journal starts over from its
//! beginning. At open, records past the redb file's last commit are applied again.
//!
//! The file is written once with zeros to its full size when created, so an append
//! never changes the file's size and `fdatasync` flushes data only. A record is
//! `magic (4) | body length (u32) | BLAKE3 of the body, first 8 bytes | body`; the body
//! is a sequence of items, `length (u32) | bytes`: an entry, or, when the length's top
//! bit is set, the idempotency key of the request whose entries it follows
//! (`crate::idempotency`). Reading stops at the first record
//! whose magic, length or checksum is wrong: a torn write was never acknowledged.
//! Stale records of an earlier round are told apart by their commit numbers.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The journal's size; a group that does not fit commits durably in redb instead.
pub const JOURNAL_BYTES: u64 = 16 * 1024 * 1024;
/// Journal bytes after which the writer checkpoints.
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// Age of the oldest journaled group after which the writer checkpoints.
pub const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

const MAGIC: [u8; 4] = *b"EJR1";
/// The top bit of an item's length: the item is an idempotency key, not an entry.
const KEY_ITEM: u32 = 1 << 31;
/// The bytes before each item of a record body: its length, and whether it is a key.
pub(crate) const ITEM_PREFIX_BYTES: usize = 4;
const HEADER_BYTES: usize = 4 + 4 + 8;
/// The BLAKE3 key-derivation context of record checksums.
const CHECKSUM_CONTEXT: &str = "engram 2026-11 journal record v1";

/// Where the journal's bytes live: its file, or a disk a test simulates (to lose what
/// was not synced, or fail).
pub trait JournalStorage: Send + Sync + 'static {
    /// The storage's length.
    fn length(&self) -> io::Result<u64>;
    /// Fills `out` from `offset`.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
}

impl JournalStorage for File {
    fn length(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(out, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_all_at(data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// An open journal. Only the writer thread (or `Store::open`) uses it.
pub(crate) struct Journal {
    path: PathBuf,
    file: Arc<dyn JournalStorage>,
    /// Where the next record goes.
    position: u64,
    /// When the oldest record since the last checkpoint was written.
    since: Option<Instant>,
    /// The bytes of the record being written: header, then body.
    record: Vec<u8>,
    /// The file held records when it was opened.
    unread_at_open: bool,
    /// The thread that syncs the file while the writer goes on.
    syncer: Syncer,
    /// The length of the record written whose sync has not been waited for.
    syncing: Option<(u64, Instant)>,
}

/// A thread that calls `fdatasync` on the journal when asked, so that the writer can
/// insert a group's entries into redb while the group is made durable.
struct Syncer {
    /// `None` only while dropping.
    requests: Option<mpsc::Sender<()>>,
    results: mpsc::Receiver<io::Result<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(file: Arc<dyn JournalStorage>) -> io::Result<Syncer> {
        let (requests, waiting) = mpsc::channel::<()>();
        let (answers, results) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("engram-journal".into())
            .spawn(move || {
                while waiting.recv().is_ok() {
                    if answers.send(file.sync()).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Syncer {
            requests: Some(requests),
            results,
            handle: Some(handle),
        })
    }

    fn request(&self) -> io::Result<()> {
        self.requests
            .as_ref()
            .and_then(|requests| requests.send(()).ok())
            .ok_or_else(Syncer::stopped)
    }

    fn result(&self) -> io::Result<()> {
        self.results
            .recv()
            .unwrap_or_else(|_| Err(Syncer::stopped()))
    }

    fn stopped() -> io::Error {
        io::Error::other("the journal's sync thread stopped")
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!("the journal's sync thread panicked");
        }
    }
}

/// Why the journal failed. The writer stops writing after any of these.
#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn checksum(body: &[u8]) -> [u8; 8] {
    let mut hasher = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    hasher.update(body);
    let mut first = [0; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    first
}

impl Journal {
    /// Opens the journal at `path`, creating it full of zeros if it is missing or
    /// short, and returns it with the bodies of the records it holds, in order.
    pub(crate) fn open(path: &Path) -> Result<(Journal, Vec<Vec<u8>>), JournalError> {
        let failed = |source| JournalError {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(failed)?;
        let (journal, bodies, created) = Journal::open_on(Arc::new(file), path)?;
        if created && let Some(directory) = path.parent() {
            File::open(directory)
                .and_then(|directory| directory.sync_all())
                .map_err(failed)?;
        }
        Ok((journal, bodies))
    }

    /// Opens the journal on `file` (`path` names it in errors), filling it with zeros
    /// first if it is short; returns it with the bodies of the records it holds, and
    /// whether it was filled.
    pub(crate) fn open_on(
        file: Arc<dyn JournalStorage>,
        path: &Path,
    ) -> Result<(Journal, Vec<Vec<u8>>, bool), JournalError> {
        let failed = |source| JournalError {
            path: path.to_owned(),
            source,
        };
        let length = file.length().map_err(failed)?;
        let mut bodies = Vec::new();
        let created = length < JOURNAL_BYTES;
        if created {
            // New (or cut short by hand): whatever it held is not trusted to be whole.
            let zeros = vec![0u8; 1024 * 1024];
            let mut offset = 0;
            while offset < JOURNAL_BYTES {
                file.write_at(offset, &zeros).map_err(failed)?;
                offset += zeros.len() as u64;
            }
            file.sync().map_err(failed)?;
        } else {
            bodies = read_records(&*file).map_err(failed)?;
        }
        let syncer = Syncer::start(Arc::clone(&file)).map_err(failed)?;
        let journal = Journal {
            path: path.to_owned(),
            file,
            position: 0,
            since: None,
            record: Vec::with_capacity(64 * 1024),
            unread_at_open: !bodies.is_empty(),
            syncer,
            syncing: None,
        };
        Ok((journal, bodies, created))
    }

    /// Starts a record; the caller appends the entries with [`Journal::push_entry`].
    pub(crate) fn begin(&mut self) {
        self.record.clear();
        self.record.resize(HEADER_BYTES, 0);
    }

    /// Adds one entry, which `encode` appends to the buffer it is given, to the record
    /// being written, and returns where its bytes are in [`Journal::entries`].
    pub(crate) fn push_entry(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        self.push(0, encode)
    }

    /// Adds the idempotency key record `encode` appends, after its request's entries.
    pub(crate) fn push_key(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.push(KEY_ITEM, encode);
    }

    fn push(&mut self, tag: u32, encode: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        let prefix = self.record.len();
        self.record.extend_from_slice(&[0; ITEM_PREFIX_BYTES]);
        encode(&mut self.record);
        let start = prefix + ITEM_PREFIX_BYTES;
        let length = (self.record.len() - start) as u32;
        assert!(length < KEY_ITEM, "items are far smaller than 2 GiB");
        self.record[prefix..start].copy_from_slice(&(length | tag).to_be_bytes());
        start - HEADER_BYTES..self.record.len() - HEADER_BYTES
    }

    /// The body of the record being written, where [`Journal::push_entry`]'s ranges
    /// point.
    pub(crate) fn entries(&self) -> &[u8] {
        &self.record[HEADER_BYTES..]
    }

    /// Whether the record being written holds any entry.
    pub(crate) fn has_entries(&self) -> bool {
        self.record.len() > HEADER_BYTES
    }

    /// Writes the record being written and starts its sync; [`Journal::synced`] waits
    /// for it. Returns `false`, writing nothing, when the record does not fit in what is
    /// left of the journal.
    pub(crate) fn write(&mut self) -> Result<bool, JournalError> {
        assert!(self.syncing.is_none(), "one record is synced at a time");
        let length = self.record.len() as u64;
        if self.position + length > JOURNAL_BYTES {
            return Ok(false);
        }
        let body_length = (self.record.len() - HEADER_BYTES) as u32;
        let sum = checksum(&self.record[HEADER_BYTES..]);
        self.record[..4].copy_from_slice(&MAGIC);
        self.record[4..8].copy_from_slice(&body_length.to_be_bytes());
        self.record[8..16].copy_from_slice(&sum);
        self.file
            .write_at(self.position, &self.record)
            .and_then(|()| self.syncer.request())
            .map_err(|source| self.failed(source))?;
        // Let the sync thread start: woken onto this core, it would otherwise wait for
        // the writer to block, and the sync would not overlap the writer's inserts.
        std::thread::yield_now();
        self.syncing = Some((length, Instant::now()));
        Ok(true)
    }

    /// Waits until the record written by [`Journal::write`] is durable.
    pub(crate) fn synced(&mut self) -> Result<(), JournalError> {
        let (length, started) = self.syncing.take().expect("a record was written");
        self.syncer.result().map_err(|source| self.failed(source))?;
        metrics::histogram!("engram_journal_sync_seconds").record(started.elapsed());
        self.position += length;
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn failed(&self, source: io::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether enough has been journaled, or for long enough, to checkpoint.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.position >= CHECKPOINT_BYTES
            || self
                .since
                .is_some_and(|since| since.elapsed() >= CHECKPOINT_AFTER)
    }

    /// Whether records wait for a checkpoint.
    pub(crate) fn holds_records(&self) -> bool {
        self.position > 0
    }

    /// After a durable redb commit: everything journaled is in the redb file, and the
    /// next record goes to the start again. The first record's header is cleared, so
    /// the next open has nothing to read; if that fails, the old records stay and are
    /// skipped at open as already applied.
    pub(crate) fn checkpointed(&mut self) {
        if self.position > 0 || self.unread_at_open {
            let cleared = self
                .file
                .write_at(0, &[0; HEADER_BYTES])
                .and_then(|()| self.file.sync());
            if let Err(error) = cleared {
                tracing::warn!(%error, journal = %self.path.display(), "clearing the journal failed");
            }
            self.unread_at_open = false;
        }
        self.position = 0;
        self.since = None;
    }
}

/// The bodies of the records from the start of the file, up to the first that is not
/// whole.
fn read_records(file: &dyn JournalStorage) -> io::Result<Vec<Vec<u8>>> {
    let mut bodies = Vec::new();
    let mut position = 0u64;
    let mut header = [0u8; HEADER_BYTES];
    while position + HEADER_BYTES as u64 <= JOURNAL_BYTES {
        file.read_at(position, &mut header)?;
        if header[..4] != MAGIC {
            break;
        }
        let body_length = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as u64;
        let end = position + HEADER_BYTES as u64 + body_length;
        if end > JOURNAL_BYTES {
            break;
        }
        let mut body = vec![0u8; body_length as usize];
        file.read_at(position + HEADER_BYTES as u64, &mut body)?;
        if checksum(&body) != header[8..16] {
            break;
        }
        bodies.push(body);
        position = end;
    }
    Ok(bodies)
}

/// One item of a record body.
#[derive(Debug)]
pub(crate) enum Item<'a> {
    /// An entry's bytes.
    Entry(&'a [u8]),
    /// An idempotency key record (`crate::idempotency::KeyRecord`).
    Key(&'a [u8]),
}

/// The items of a record body, or `None` if it does not parse (then it is not used).
pub(crate) fn items_of(body: &[u8]) -> Option<Vec<Item<'_>>> {
    let mut items = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (length, tail) = rest.split_first_chunk::<4>()?;
        let length = u32::from_be_bytes(*length);
        let (tag, length) = (length & KEY_ITEM, (length & !KEY_ITEM) as usize);
        if tail.len() < length {
            return None;
        }
        let (bytes, tail) = tail.split_at(length);
        items.push(if tag == KEY_ITEM {
            Item::Key(bytes)
        } else {
            Item::Entry(bytes)
        });
        rest = tail;
    }
    Some(items)
}
