//! The audit trail: a record of every read that answers with atoms (`ask`, `check`,
//! `get`, `replay`, `diff`): who read, through which restriction, what was asked, the
//! ids answered and the commit the answer stood at.
//!
//! Records go into their own redb file (`audit.redb` beside the store) on a thread of
//! their own, so recording costs a read one queue push. A read is answered only once
//! its record is queued; when the queue is full the read waits (never drops it), and
//! once the trail cannot be written the read fails instead of going unrecorded. The
//! thread commits what is queued every `AUDIT_COMMIT_INTERVAL`, durably: a crash loses
//! at most the records of answers given in that interval before it, and those queued.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::atom::{Hash, PublicKey};
use crate::error::StoreError;
use crate::query::Query;

/// (principal, commit answered at, sequence) → the record (JSON).
const RECORDS: TableDefinition<(PublicKey, u64, u64), &[u8]> = TableDefinition::new("records");
/// `next_sequence`: the sequence number the next record gets.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQUENCE: &str = "next_sequence";

/// Records queued for the thread at most; a read past it waits for room.
pub const AUDIT_QUEUE_MAX: usize = 16_384;
/// How often the thread commits what is queued (durably): the most a crash can lose.
pub const AUDIT_COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// redb's page cache for the audit file.
const AUDIT_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Records one `Admin.audit` call returns at most.
pub const AUDIT_LIMIT_MAX: u32 = 1000;

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
}

impl AuditedQuery {
    fn method(&self) -> &'static str {
        match self {
            AuditedQuery::Get { .. } => "get",
            AuditedQuery::Ask { .. } => "ask",
            AuditedQuery::Check { .. } => "check",
            AuditedQuery::Replay { .. } => "replay",
            AuditedQuery::Diff { .. } => "diff",
        }
    }

    fn to_json(&self) -> Value {
        match self {
            AuditedQuery::Get { id, as_of } => json!({"id": hex::encode(id), "asOf": as_of}),
            AuditedQuery::Ask {
                query,
                text,
                vector_dimensions,
            } => json!({
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
                "text": text,
                "vectorDimensions": vector_dimensions,
            }),
            AuditedQuery::Check { plan, labels } => json!({"plan": plan, "labels": labels}),
            AuditedQuery::Replay { from_commit, limit } => {
                json!({"fromCommit": from_commit, "limit": limit})
            }
            AuditedQuery::Diff {
                from_commit,
                to_commit,
                limit,
            } => json!({"fromCommit": from_commit, "toCommit": to_commit, "limit": limit}),
        }
    }
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
    queue: mpsc::Sender<AuditRecord>,
    database: Arc<Database>,
}

/// The running audit thread.
pub struct AuditThread {
    handle: JoinHandle<()>,
}

impl AuditThread {
    /// Waits for the thread to commit what is queued and exit; it exits once every
    /// [`AuditLog`] handle is dropped.
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("the audit thread panicked");
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the trail at `path` and starts its thread.
    pub fn open(path: &Path) -> Result<(AuditLog, AuditThread), StoreError> {
        let database = Database::builder()
            .set_cache_size(AUDIT_CACHE_BYTES)
            .create(path)?;
        let transaction = database.begin_write()?;
        let next_sequence = {
            transaction.open_table(RECORDS)?;
            let meta = transaction.open_table(META)?;
            meta.get(NEXT_SEQUENCE)?.map_or(1, |value| value.value())
        };
        transaction.commit()?;
        let database = Arc::new(database);
        let (queue, receiver) = mpsc::channel(AUDIT_QUEUE_MAX);
        let writing = database.clone();
        let handle = std::thread::Builder::new()
            .name("engram-audit".into())
            .spawn(move || run(&writing, receiver, next_sequence))
            .expect("spawning the audit thread");
        Ok((AuditLog { queue, database }, AuditThread { handle }))
    }

    /// Queues a record; waits while the queue is full. `Unavailable` once the trail
    /// cannot be written: the read must then not be answered.
    pub async fn record(&self, record: AuditRecord) -> Result<(), StoreError> {
        self.queue
            .send(record)
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
        let start = (*principal, from_commit, after_sequence.saturating_add(1));
        let mut entries = Vec::new();
        for row in records.range(start..=(*principal, to_commit, u64::MAX))? {
            let (key, value) = row?;
            let (principal, commit, sequence) = key.value();
            entries.push(decode(principal, commit, sequence, value.value())?);
            if entries.len() == limit as usize {
                break;
            }
        }
        Ok(entries)
    }
}

fn decode(
    principal: PublicKey,
    commit: u64,
    sequence: u64,
    bytes: &[u8],
) -> Result<AuditEntry, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt {
        what: format!("audit record {sequence}: {what}"),
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|error| corrupt(&error.to_string()))?;
    let text = |field: &str| -> Result<String, StoreError> {
        match &value[field] {
            Value::String(text) => Ok(text.clone()),
            Value::Null => Err(corrupt(&format!("no {field}"))),
            other => Ok(other.to_string()),
        }
    };
    let mut ids = Vec::new();
    for id in value["ids"].as_array().ok_or_else(|| corrupt("no ids"))? {
        let id = id
            .as_str()
            .and_then(|id| hex::decode(id).ok())
            .and_then(|id| Hash::try_from(id).ok())
            .ok_or_else(|| corrupt("an id is not 64 hex digits"))?;
        ids.push(id);
    }
    Ok(AuditEntry {
        principal,
        commit,
        sequence,
        world: text("world")?,
        method: text("method")?,
        restriction: text("restriction")?,
        query: text("query")?,
        ids,
        at_unix_ms: value["atUnixMs"]
            .as_i64()
            .ok_or_else(|| corrupt("no time"))?,
    })
}

/// The thread: waits for a record, lets more gather for the commit interval, then
/// commits every queued record in one durable transaction.
fn run(database: &Database, mut receiver: mpsc::Receiver<AuditRecord>, mut next_sequence: u64) {
    let mut batch = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        std::thread::sleep(AUDIT_COMMIT_INTERVAL);
        while let Ok(record) = receiver.try_recv() {
            batch.push(record);
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
    }
}

fn commit(database: &Database, batch: &[AuditRecord], first: u64) -> Result<(), StoreError> {
    let transaction = database.begin_write()?;
    {
        let mut records = transaction.open_table(RECORDS)?;
        let mut bytes = Vec::new();
        for (offset, record) in batch.iter().enumerate() {
            let value = json!({
                "world": record.world,
                "method": record.query.method(),
                "restriction": &*record.restriction,
                "query": record.query.to_json().to_string(),
                "ids": record.ids.iter().map(hex::encode).collect::<Vec<_>>(),
                "atUnixMs": record.at_unix_ms,
            });
            bytes.clear();
            serde_json::to_writer(&mut bytes, &value).expect("a record serialises");
            records.insert(
                (record.principal, record.commit, first + offset as u64),
                bytes.as_slice(),
            )?;
        }
        let mut meta = transaction.open_table(META)?;
        meta.insert(NEXT_SEQUENCE, first + batch.len() as u64)?;
    }
    transaction.commit()?;
    Ok(())
}
