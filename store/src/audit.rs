//! The audit trail: a record of every read that answers with atoms (`ask`, `check`,
//! `get`, `replay`, `diff`, and each push of a subscription): who read, through which restriction, what was asked, the
//! ids answered and the commit the answer stood at.
//!
//! Records go into their own redb file (`audit.redb` beside the store) on a thread of
//! their own, so recording costs a read one queue push. A read is answered only once
//! its record is queued; when the queue is full the read waits (never drops it), and
//! once the trail cannot be written the read fails instead of going unrecorded. The
//! thread commits what is queued every `AUDIT_COMMIT_INTERVAL`, durably: a crash loses
//! at most the records of answers given in that interval before it, and those queued.
//!
//! With a retention, the thread deletes the rows of every commit of the trail older
//! than it, oldest first, at start and as it writes (each commit of the trail lists its
//! rows in `commits`, so nothing is scanned).

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::atom::{AtomKind, EntryReader, Hash, LifecycleState, PublicKey};
use crate::error::StoreError;
use crate::query::Query;

/// The version byte that starts every stored record.
const RECORD_VERSION: u8 = 1;

/// (principal, commit answered at, first sequence) → the records of that principal
/// answered at that commit in one commit of the trail, in sequence order: each its
/// sequence (u64), its length (u32) and its bytes (`encode`: compact, rendered as JSON
/// only when read). One row for many reads keeps the thread's work per read small.
const RECORDS: TableDefinition<(PublicKey, u64, u64), &[u8]> = TableDefinition::new("records");
/// `next_sequence`: the sequence number the next record gets.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQUENCE: &str = "next_sequence";
/// The first sequence of a commit of the trail → when it was committed (i64, Unix ms)
/// and the keys of the rows it wrote (48 bytes each): what retention deletes, in order.
const COMMITS: TableDefinition<u64, &[u8]> = TableDefinition::new("commits");
/// The bytes of a row's key in a `commits` value: principal, commit, first sequence.
const ROW_KEY_BYTES: usize = 32 + 8 + 8;

/// Records queued for the thread at most; a read past it waits for room.
pub const AUDIT_QUEUE_MAX: usize = 16_384;
/// How often the thread commits what is queued (durably): the most a crash can lose.
pub const AUDIT_COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// redb's page cache for the audit file.
const AUDIT_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Records one `Admin.audit` call returns at most.
pub const AUDIT_LIMIT_MAX: u32 = 1000;
/// Commits of the trail one pruning transaction deletes at most, so that pruning a
/// long backlog never holds the thread from recording for long.
const PRUNE_COMMITS_MAX: usize = 1024;
/// How often the thread prunes at most, however often it writes.
const PRUNE_INTERVAL_MAX: Duration = Duration::from_secs(60);

/// What a read was asked, as the trail keeps it.
#[derive(Clone, Debug)]
pub enum AuditedQuery {
    Get {
        id: Hash,
        as_of: u64,
    },
    Ask {
        query: Query,
        text: String,
        /// Dimensions of the query vector (the vector itself is not kept).
        vector_dimensions: usize,
    },
    Check {
        plan: String,
        labels: Vec<String>,
    },
    Replay {
        from_commit: u64,
        limit: u32,
    },
    Diff {
        from_commit: u64,
        to_commit: u64,
        limit: u32,
    },
    /// One push of a subscription: its filter, and the commit the push read after.
    Push {
        filter: Query,
        from_commit: u64,
    },
}

impl AuditedQuery {
    fn method(&self) -> &'static str {
        match self {
            AuditedQuery::Get { .. } => "get",
            AuditedQuery::Ask { .. } => "ask",
            AuditedQuery::Check { .. } => "check",
            AuditedQuery::Replay { .. } => "replay",
            AuditedQuery::Diff { .. } => "diff",
            AuditedQuery::Push { .. } => "subscribe",
        }
    }

    /// Appends the method's code and its parameters (the layout in store/FORMAT.md).
    fn encode(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, text: &str) {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        fn texts(out: &mut Vec<u8>, texts: &[String]) {
            out.extend_from_slice(&(texts.len() as u16).to_be_bytes());
            for item in texts {
                text(out, item);
            }
        }
        match self {
            AuditedQuery::Get { id, as_of } => {
                out.push(0);
                out.extend_from_slice(id);
                out.extend_from_slice(&as_of.to_be_bytes());
            }
            AuditedQuery::Ask {
                query,
                text: words,
                vector_dimensions,
            } => {
                out.push(1);
                encode_query(query, out);
                text(out, words);
                out.extend_from_slice(&(*vector_dimensions as u32).to_be_bytes());
            }
            AuditedQuery::Check { plan, labels } => {
                out.push(2);
                text(out, plan);
                texts(out, labels);
            }
            AuditedQuery::Replay { from_commit, limit } => {
                out.push(3);
                out.extend_from_slice(&from_commit.to_be_bytes());
                out.extend_from_slice(&limit.to_be_bytes());
            }
            AuditedQuery::Diff {
                from_commit,
                to_commit,
                limit,
            } => {
                out.push(4);
                out.extend_from_slice(&from_commit.to_be_bytes());
                out.extend_from_slice(&to_commit.to_be_bytes());
                out.extend_from_slice(&limit.to_be_bytes());
            }
            AuditedQuery::Push {
                filter,
                from_commit,
            } => {
                out.push(5);
                encode_query(filter, out);
                out.extend_from_slice(&from_commit.to_be_bytes());
            }
        }
    }

    /// Reads what [`AuditedQuery::encode`] wrote.
    fn decode(reader: &mut EntryReader<'_>) -> Option<AuditedQuery> {
        fn text(reader: &mut EntryReader<'_>) -> Option<String> {
            let length = reader.u32()? as usize;
            reader.string(length)
        }
        fn texts(reader: &mut EntryReader<'_>) -> Option<Vec<String>> {
            let count = reader.u16()? as usize;
            (0..count).map(|_| text(reader)).collect()
        }
        Some(match reader.u8()? {
            0 => AuditedQuery::Get {
                id: reader.array32()?,
                as_of: reader.u64()?,
            },
            1 => AuditedQuery::Ask {
                query: decode_query(reader)?,
                text: text(reader)?,
                vector_dimensions: reader.u32()? as usize,
            },
            2 => AuditedQuery::Check {
                plan: text(reader)?,
                labels: texts(reader)?,
            },
            3 => AuditedQuery::Replay {
                from_commit: reader.u64()?,
                limit: reader.u32()?,
            },
            4 => AuditedQuery::Diff {
                from_commit: reader.u64()?,
                to_commit: reader.u64()?,
                limit: reader.u32()?,
            },
            5 => AuditedQuery::Push {
                filter: decode_query(reader)?,
                from_commit: reader.u64()?,
            },
            _ => return None,
        })
    }

    fn to_json(&self) -> Value {
        match self {
            AuditedQuery::Get { id, as_of } => json!({"id": hex::encode(id), "asOf": as_of}),
            AuditedQuery::Ask {
                query,
                text,
                vector_dimensions,
            } => {
                let mut value = query_json(query);
                value["text"] = json!(text);
                value["vectorDimensions"] = json!(vector_dimensions);
                value
            }
            AuditedQuery::Check { plan, labels } => json!({"plan": plan, "labels": labels}),
            AuditedQuery::Replay { from_commit, limit } => {
                json!({"fromCommit": from_commit, "limit": limit})
            }
            AuditedQuery::Diff {
                from_commit,
                to_commit,
                limit,
            } => json!({"fromCommit": from_commit, "toCommit": to_commit, "limit": limit}),
            AuditedQuery::Push {
                filter,
                from_commit,
            } => {
                let mut value = query_json(filter);
                value["fromCommit"] = json!(from_commit);
                value
            }
        }
    }
}

/// Appends a query's filter fields (store/FORMAT.md, The audit trail: ask's parameters
/// up to asOf).
fn encode_query(query: &Query, out: &mut Vec<u8>) {
    out.extend_from_slice(&(query.kinds.len() as u16).to_be_bytes());
    for kind in &query.kinds {
        out.extend_from_slice(&kind.code().to_be_bytes());
    }
    out.extend_from_slice(&(query.labels.len() as u16).to_be_bytes());
    for label in &query.labels {
        out.extend_from_slice(&(label.len() as u32).to_be_bytes());
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&(query.writers.len() as u16).to_be_bytes());
    for writer in &query.writers {
        out.extend_from_slice(writer);
    }
    out.extend_from_slice(&query.min_importance.to_bits().to_be_bytes());
    out.extend_from_slice(&query.max_importance.to_bits().to_be_bytes());
    out.extend_from_slice(&query.limit.to_be_bytes());
    out.extend_from_slice(&query.before_commit.unwrap_or(0).to_be_bytes());
    match query.valid_at {
        None => out.push(0),
        Some(instant) => {
            out.push(1);
            out.extend_from_slice(&instant.to_be_bytes());
        }
    }
    out.push(query.states.len() as u8);
    for state in &query.states {
        out.push(state.code() as u8);
    }
    out.extend_from_slice(&query.as_of.unwrap_or(0).to_be_bytes());
}

/// Reads what [`encode_query`] wrote.
fn decode_query(reader: &mut EntryReader<'_>) -> Option<Query> {
    let nonzero = |value: u64| (value != 0).then_some(value);
    let kinds = (0..reader.u16()?)
        .map(|_| AtomKind::from_code(reader.u16()?))
        .collect::<Option<_>>()?;
    let labels = (0..reader.u16()?)
        .map(|_| {
            let length = reader.u32()? as usize;
            reader.string(length)
        })
        .collect::<Option<_>>()?;
    let writers = (0..reader.u16()?)
        .map(|_| reader.array32())
        .collect::<Option<_>>()?;
    let min_importance = f32::from_bits(reader.u32()?);
    let max_importance = f32::from_bits(reader.u32()?);
    let limit = reader.u32()?;
    let before_commit = nonzero(reader.u64()?);
    let valid_at = match reader.u8()? {
        0 => None,
        _ => Some(reader.u64()? as i64),
    };
    let states = (0..reader.u8()?)
        .map(|_| LifecycleState::from_code(u16::from(reader.u8()?)))
        .collect::<Option<_>>()?;
    let as_of = nonzero(reader.u64()?);
    Some(Query {
        kinds,
        labels,
        writers,
        min_importance,
        max_importance,
        limit,
        before_commit,
        valid_at,
        states,
        as_of,
    })
}

/// A query's filter fields as `Admin.audit` renders them.
fn query_json(query: &Query) -> Value {
    json!({
        "kinds": query.kinds.iter().map(|kind| kind.name()).collect::<Vec<_>>(),
        "labels": query.labels,
        "writers": query.writers.iter().map(hex::encode).collect::<Vec<_>>(),
        "minImportance": query.min_importance,
        "maxImportance": query.max_importance,
        "limit": query.limit,
        "beforeCommit": query.before_commit,
        "validAt": query.valid_at,
        "states": query.states.iter().map(|state| state.name()).collect::<Vec<_>>(),
        "asOf": query.as_of,
    })
}

/// One read, as it is recorded.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub principal: PublicKey,
    pub world: String,
    /// The capability's restriction, described (JSON; `{}` for none).
    pub restriction: Arc<str>,
    pub query: AuditedQuery,
    /// The ids answered, in the answer's order.
    pub ids: Vec<Hash>,
    /// The node's last commit when the read's snapshot was taken.
    pub commit: u64,
    pub at_unix_ms: i64,
}

/// One record as the trail returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub principal: PublicKey,
    pub commit: u64,
    /// Orders records of one commit; unique across the trail.
    pub sequence: u64,
    pub world: String,
    pub method: String,
    /// JSON.
    pub restriction: String,
    /// JSON: the method's parameters.
    pub query: String,
    pub ids: Vec<Hash>,
    pub at_unix_ms: i64,
}

/// The handle reads record through. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    /// Records, and `None`: stop once what was queued before is committed.
    queue: mpsc::Sender<Option<AuditRecord>>,
    database: Arc<Database>,
}

/// The running audit thread.
pub struct AuditThread {
    handle: JoinHandle<()>,
    queue: mpsc::Sender<Option<AuditRecord>>,
}

impl AuditThread {
    /// Makes the thread commit what is queued and exit, and waits for it. An
    /// [`AuditLog`] handle still held then answers `AuditStopped`. Not to be called from
    /// an async context.
    pub fn join(self) {
        let _ = self.queue.blocking_send(None);
        if self.handle.join().is_err() {
            tracing::error!("the audit thread panicked");
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the trail at `path` and starts its thread. With `retention`,
    /// records older than it are deleted, at start and as the trail is written.
    pub fn open(
        path: &Path,
        retention: Option<Duration>,
    ) -> Result<(AuditLog, AuditThread), StoreError> {
        let database = Database::builder()
            .set_cache_size(AUDIT_CACHE_BYTES)
            .create(path)?;
        let transaction = database.begin_write()?;
        let next_sequence = {
            let records = transaction.open_table(RECORDS)?;
            let mut commits = transaction.open_table(COMMITS)?;
            if commits.is_empty()? && !records.is_empty()? {
                index_rows(&records, &mut commits)?;
            }
            let meta = transaction.open_table(META)?;
            meta.get(NEXT_SEQUENCE)?.map_or(1, |value| value.value())
        };
        transaction.commit()?;
        let mut pruner = retention.map(Pruner::new);
        if let Some(pruner) = &mut pruner {
            pruner.prune(&database)?;
        }
        let database = Arc::new(database);
        let (queue, receiver) = mpsc::channel(AUDIT_QUEUE_MAX);
        let writing = database.clone();
        let handle = std::thread::Builder::new()
            .name("engram-audit".into())
            .spawn(move || run(&writing, receiver, next_sequence, pruner))
            .expect("spawning the audit thread");
        let thread = AuditThread {
            handle,
            queue: queue.clone(),
        };
        Ok((AuditLog { queue, database }, thread))
    }

    /// Copies the trail as it stands now into a new redb file at `path` (an online
    /// backup, from one read snapshot).
    pub fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        let from = self.database.begin_read()?;
        crate::backup::fresh(path, |to| {
            crate::backup::copy(&from, to, RECORDS)?;
            crate::backup::copy(&from, to, COMMITS)?;
            crate::backup::copy(&from, to, META)
        })
    }

    /// Queues a record; waits while the queue is full. `Unavailable` once the trail
    /// cannot be written: the read must then not be answered.
    pub async fn record(&self, record: AuditRecord) -> Result<(), StoreError> {
        self.queue
            .send(Some(record))
            .await
            .map_err(|_| StoreError::AuditStopped)
    }

    /// The records of `principal` answered at commits `from_commit..=to_commit`, in
    /// commit order, skipping those of `from_commit` with a sequence up to
    /// `after_sequence`; at most `limit`. Records reach the trail within
    /// `AUDIT_COMMIT_INTERVAL` of their read.
    pub fn read(
        &self,
        principal: &PublicKey,
        from_commit: u64,
        to_commit: u64,
        after_sequence: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        if limit == 0 || limit > AUDIT_LIMIT_MAX {
            return Err(StoreError::InvalidQuery {
                reason: format!("limit is {limit}; it must be 1 to {AUDIT_LIMIT_MAX}"),
            });
        }
        if from_commit > to_commit {
            return Ok(Vec::new());
        }
        let transaction = self.database.begin_read()?;
        let records = transaction.open_table(RECORDS)?;
        let mut entries = Vec::new();
        let rows =
            records.range((*principal, from_commit, 0)..=(*principal, to_commit, u64::MAX))?;
        for row in rows {
            let (key, value) = row?;
            let (principal, commit, first) = key.value();
            let mut reader = EntryReader::new(value.value());
            while !reader.at_end() {
                let corrupt = || StoreError::Corrupt {
                    what: format!("the audit row of commit {commit} from sequence {first}"),
                };
                let sequence = reader.u64().ok_or_else(corrupt)?;
                let length = reader.u32().ok_or_else(corrupt)? as usize;
                let bytes = reader.take(length).ok_or_else(corrupt)?;
                if commit == from_commit && sequence <= after_sequence {
                    continue;
                }
                entries.push(decode(principal, commit, sequence, bytes)?);
                if entries.len() == limit as usize {
                    return Ok(entries);
                }
            }
        }
        Ok(entries)
    }
}

/// Appends a record's stored bytes (store/FORMAT.md, The audit trail).
fn encode(record: &AuditRecord, out: &mut Vec<u8>) {
    out.push(RECORD_VERSION);
    out.extend_from_slice(&record.at_unix_ms.to_be_bytes());
    out.extend_from_slice(&(record.world.len() as u16).to_be_bytes());
    out.extend_from_slice(record.world.as_bytes());
    out.extend_from_slice(&(record.restriction.len() as u32).to_be_bytes());
    out.extend_from_slice(record.restriction.as_bytes());
    record.query.encode(out);
    out.extend_from_slice(&(record.ids.len() as u32).to_be_bytes());
    for id in &record.ids {
        out.extend_from_slice(id);
    }
}

fn decode(
    principal: PublicKey,
    commit: u64,
    sequence: u64,
    bytes: &[u8],
) -> Result<AuditEntry, StoreError> {
    let mut reader = EntryReader::new(bytes);
    let decoded = (|| {
        if reader.u8()? != RECORD_VERSION {
            return None;
        }
        let at_unix_ms = reader.u64()? as i64;
        let world_length = reader.u16()? as usize;
        let world = reader.string(world_length)?;
        let restriction_length = reader.u32()? as usize;
        let restriction = reader.string(restriction_length)?;
        let query = AuditedQuery::decode(&mut reader)?;
        let ids = (0..reader.u32()?)
            .map(|_| reader.array32())
            .collect::<Option<Vec<Hash>>>()?;
        reader.at_end().then(|| AuditEntry {
            principal,
            commit,
            sequence,
            world,
            method: query.method().to_owned(),
            restriction,
            query: query.to_json().to_string(),
            ids,
            at_unix_ms,
        })
    })();
    decoded.ok_or_else(|| StoreError::Corrupt {
        what: format!("audit record {sequence} does not decode"),
    })
}

/// The thread: waits for a record, lets more gather for the commit interval, then
/// commits every queued record in one durable transaction.
fn run(
    database: &Database,
    mut receiver: mpsc::Receiver<Option<AuditRecord>>,
    mut next_sequence: u64,
    mut pruner: Option<Pruner>,
) {
    let mut batch = Vec::new();
    let mut stopping = false;
    while !stopping && let Some(Some(first)) = receiver.blocking_recv() {
        batch.push(first);
        std::thread::sleep(AUDIT_COMMIT_INTERVAL);
        while let Ok(record) = receiver.try_recv() {
            match record {
                Some(record) => batch.push(record),
                None => {
                    stopping = true;
                    break;
                }
            }
        }
        match commit(database, &batch, next_sequence) {
            Ok(()) => next_sequence += batch.len() as u64,
            Err(error) => {
                // Every later read fails rather than going unrecorded (`record` sees
                // the queue closed); what was in this batch is lost with the failure.
                tracing::error!(%error, lost = batch.len(), "the audit trail cannot be written; reads will fail until the node restarts");
                return;
            }
        }
        batch.clear();
        if let Some(pruner) = &mut pruner
            && pruner.due()
            && let Err(error) = pruner.prune(database)
        {
            // Nothing is lost: the records stay until a later pruning deletes them.
            tracing::warn!(%error, "pruning the audit trail failed");
        }
    }
}

/// Deletes the trail's records older than the retention.
struct Pruner {
    retention: Duration,
    /// How often it prunes: a tenth of the retention, at most a minute.
    interval: Duration,
    last: std::time::Instant,
}

impl Pruner {
    fn new(retention: Duration) -> Pruner {
        Pruner {
            retention,
            interval: (retention / 10).min(PRUNE_INTERVAL_MAX),
            last: std::time::Instant::now(),
        }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// Deletes every commit of the trail made before the retention, oldest first, a
    /// bounded number a transaction.
    fn prune(&mut self, database: &Database) -> Result<(), StoreError> {
        self.last = std::time::Instant::now();
        let before = crate::write::now_unix_ms() - self.retention.as_millis() as i64;
        loop {
            let transaction = database.begin_write()?;
            let pruned = {
                let mut commits = transaction.open_table(COMMITS)?;
                let mut records = transaction.open_table(RECORDS)?;
                let mut old = Vec::new();
                for row in commits.iter()?.take(PRUNE_COMMITS_MAX) {
                    let (first, value) = row?;
                    let value = value.value();
                    let at = value
                        .first_chunk::<8>()
                        .map(|at| i64::from_be_bytes(*at))
                        .ok_or_else(|| corrupt_commit(first.value()))?;
                    if at >= before {
                        break;
                    }
                    for key in value[8..].chunks(ROW_KEY_BYTES) {
                        records
                            .remove(row_key(key).ok_or_else(|| corrupt_commit(first.value()))?)?;
                    }
                    old.push(first.value());
                }
                for first in &old {
                    commits.remove(first)?;
                }
                old.len()
            };
            transaction.commit()?;
            if pruned > 0 {
                metrics::counter!("engram_audit_commits_pruned_total").increment(pruned as u64);
            }
            if pruned < PRUNE_COMMITS_MAX {
                return Ok(());
            }
        }
    }
}

fn corrupt_commit(first: u64) -> StoreError {
    StoreError::Corrupt {
        what: format!("the audit trail's commit from sequence {first}"),
    }
}

/// A row's key from its bytes in a `commits` value.
fn row_key(bytes: &[u8]) -> Option<(PublicKey, u64, u64)> {
    let (principal, rest) = bytes.split_first_chunk::<32>()?;
    let (commit, rest) = rest.split_first_chunk::<8>()?;
    let first = rest.first_chunk::<8>()?;
    Some((
        *principal,
        u64::from_be_bytes(*commit),
        u64::from_be_bytes(*first),
    ))
}

fn put_row_key(key: &(PublicKey, u64, u64), out: &mut Vec<u8>) {
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&key.1.to_be_bytes());
    out.extend_from_slice(&key.2.to_be_bytes());
}

/// Lists in `commits` the rows of a trail written before it had that table: each row as
/// a commit of its own, at the time of its first record.
fn index_rows(
    records: &redb::Table<(PublicKey, u64, u64), &[u8]>,
    commits: &mut redb::Table<u64, &[u8]>,
) -> Result<(), StoreError> {
    let mut value = Vec::with_capacity(8 + ROW_KEY_BYTES);
    for row in records.iter()? {
        let (key, bytes) = row?;
        let key = key.value();
        let mut reader = EntryReader::new(bytes.value());
        // The row's first record: its sequence, length, version, then its time.
        let at = (|| {
            reader.u64()?;
            reader.u32()?;
            reader.u8()?;
            Some(reader.u64()? as i64)
        })()
        .ok_or_else(|| corrupt_commit(key.2))?;
        value.clear();
        value.extend_from_slice(&at.to_be_bytes());
        put_row_key(&key, &mut value);
        commits.insert(key.2, value.as_slice())?;
    }
    Ok(())
}

fn commit(database: &Database, batch: &[AuditRecord], first: u64) -> Result<(), StoreError> {
    let transaction = database.begin_write()?;
    {
        let mut records = transaction.open_table(RECORDS)?;
        // One row per (principal, commit) of the batch, its records in sequence order.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|index| (batch[*index].principal, batch[*index].commit, *index));
        let mut row = Vec::with_capacity(4096);
        let mut record = Vec::with_capacity(256);
        // When, then the key of every row this commit writes.
        let mut rows = Vec::with_capacity(8 + ROW_KEY_BYTES);
        rows.extend_from_slice(&crate::write::now_unix_ms().to_be_bytes());
        for (position, index) in order.iter().enumerate() {
            let this = &batch[*index];
            record.clear();
            encode(this, &mut record);
            row.extend_from_slice(&(first + *index as u64).to_be_bytes());
            row.extend_from_slice(&(record.len() as u32).to_be_bytes());
            row.extend_from_slice(&record);
            let last_of_row = order.get(position + 1).is_none_or(|next| {
                (batch[*next].principal, batch[*next].commit) != (this.principal, this.commit)
            });
            if last_of_row {
                let row_first = order[..=position]
                    .iter()
                    .rev()
                    .take_while(|other| {
                        (batch[**other].principal, batch[**other].commit)
                            == (this.principal, this.commit)
                    })
                    .last()
                    .expect("the row holds this record");
                let key = (this.principal, this.commit, first + *row_first as u64);
                records.insert(key, row.as_slice())?;
                put_row_key(&key, &mut rows);
                row.clear();
            }
        }
        transaction
            .open_table(COMMITS)?
            .insert(first, rows.as_slice())?;
        let mut meta = transaction.open_table(META)?;
        meta.insert(NEXT_SEQUENCE, first + batch.len() as u64)?;
    }
    transaction.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(principal: u8, commit: u64, at_unix_ms: i64) -> AuditRecord {
        AuditRecord {
            principal: [principal; 32],
            world: "w".into(),
            restriction: "{}".into(),
            query: AuditedQuery::Get {
                id: [7; 32],
                as_of: 0,
            },
            ids: vec![[7; 32]],
            commit,
            at_unix_ms,
        }
    }

    #[test]
    fn a_trail_written_before_its_commits_table_is_indexed_and_pruned_at_open() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("audit.redb");
        let now = crate::write::now_unix_ms();
        {
            let database = Database::create(&path).unwrap();
            let long_ago = now - 7_200_000;
            commit(
                &database,
                &[record(1, 5, long_ago), record(2, 5, long_ago)],
                1,
            )
            .unwrap();
            commit(&database, &[record(1, 6, now)], 3).unwrap();
            let transaction = database.begin_write().unwrap();
            assert!(transaction.delete_table(COMMITS).unwrap());
            transaction.commit().unwrap();
        }
        let (log, thread) = AuditLog::open(&path, Some(Duration::from_secs(3600))).unwrap();
        let trail = |principal| log.read(&[principal; 32], 0, u64::MAX, 0, 1000).unwrap();
        assert_eq!(trail(2), []);
        let kept = trail(1);
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].commit, kept[0].sequence), (6, 3));
        drop(log);
        thread.join();
        // Every row left is listed, once: opening without a retention keeps them.
        let (log, thread) = AuditLog::open(&path, None).unwrap();
        assert_eq!(log.read(&[1; 32], 0, u64::MAX, 0, 1000).unwrap().len(), 1);
        let transaction = log.database.begin_read().unwrap();
        assert_eq!(transaction.open_table(COMMITS).unwrap().len().unwrap(), 1);
        drop((transaction, log));
        thread.join();
    }

    #[test]
    fn records_round_trip_through_their_bytes() {
        let queries = [
            AuditedQuery::Get {
                id: [7; 32],
                as_of: 9,
            },
            AuditedQuery::Ask {
                query: Query {
                    kinds: vec![AtomKind::Decision],
                    labels: vec!["jwt".into()],
                    writers: vec![[3; 32]],
                    before_commit: Some(40),
                    valid_at: Some(-5),
                    states: vec![LifecycleState::Proposed],
                    as_of: Some(30),
                    ..Query::default()
                },
                text: "rotate keys".into(),
                vector_dimensions: 384,
            },
            AuditedQuery::Check {
                plan: "use requests".into(),
                labels: vec!["http".into()],
            },
            AuditedQuery::Replay {
                from_commit: 4,
                limit: 10,
            },
            AuditedQuery::Diff {
                from_commit: 1,
                to_commit: 2,
                limit: 3,
            },
            AuditedQuery::Push {
                filter: Query {
                    labels: vec!["auth".into()],
                    states: vec![LifecycleState::Approved],
                    ..Query::default()
                },
                from_commit: 17,
            },
        ];
        for query in queries {
            let record = AuditRecord {
                principal: [1; 32],
                world: "team/auth".into(),
                restriction: r#"{"labels":["jwt"]}"#.into(),
                query: query.clone(),
                ids: vec![[2; 32], [4; 32]],
                commit: 12,
                at_unix_ms: 1_700_000_000_000,
            };
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            let entry = decode([1; 32], 12, 5, &bytes).unwrap();
            assert_eq!(entry.query, query.to_json().to_string());
            assert_eq!(entry.method, query.method());
            assert_eq!(
                (
                    entry.world.as_str(),
                    entry.restriction.as_str(),
                    entry.ids.len()
                ),
                ("team/auth", r#"{"labels":["jwt"]}"#, 2)
            );
            assert_eq!(entry.at_unix_ms, record.at_unix_ms);
            assert!(decode([1; 32], 12, 5, &bytes[..bytes.len() - 1]).is_err());
        }
    }
}
