//! engram's storage engine: atoms kept in per-(world, writer) BLAKE3 hash chains in one
//! redb file, stored in commit order per world, with a node-wide commit counter,
//! indexes, worlds, principals and epochs. Synchronous and RPC-free; see store/FORMAT.md for the bytes.
//!
//! Writes go through [`writer::Writer`], a thread that folds concurrent requests into one
//! durable transaction (group commit). Reads open a [`ReadView`] (a redb read
//! transaction: a consistent snapshot, shared by every read until the next commit) on
//! any thread.

pub mod atom;
pub mod audit;
pub mod backup;
pub mod chain;
pub mod constraint;
pub mod epoch;
pub mod error;
#[cfg(test)]
mod fuzzing;
pub mod idempotency;
pub mod journal;
pub mod limits;
pub mod policy;
pub mod principal;
mod progress;
pub mod query;
pub mod rank;
pub mod replica;
mod tables;
pub mod text;
pub mod vector;
pub mod world;
mod write;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};

pub use atom::{
    Atom, AtomContent, AtomKind, Facts, Hash, LifecycleState, Link, LinkKind, PublicKey,
    TimeInterval, Transition, Visible,
};
pub use chain::{BadEntry, ChainHead, VerifyReport};
pub use constraint::{CheckReport, Plan, Violation};
pub use epoch::Epoch;
pub use error::StoreError;
pub use policy::PolicyChange;
pub use principal::{Grant, Principal, Rate, Right};
pub use query::Query;

pub use rank::{Ranked, Trust};
pub use text::TextIndex;
pub use vector::{AtomFacts, VectorIndex};
pub use world::{WorldInfo, WorldState};
pub use write::{
    Authority, COMMIT_SLOTS, CommitSpace, Receipt, WriteOp, WriteOutcome, WriteRequest, now_unix_ms,
};

use crate::atom::{EntryFacts, decode_entry};
use crate::journal::Journal;
use crate::query::{Candidates, descending, merge_descending, validate_replay_limit};
use crate::tables::*;

/// The on-disk format this build reads and writes (store/FORMAT.md).
pub const FORMAT_VERSION: u64 = 6;
/// The formats this build upgrades in place at open: version 3 only adds tables and an
/// entry version, so a version 2 file is a version 3 file without lifecycles; version 4
/// adds the idempotency tables and the journal's key items; version 5 the fleet's
/// stream positions and commit slot.
const FORMAT_VERSIONS_UPGRADED: [u64; 4] = [2, 3, 4, 5];

/// An open store. Cheap to clone; every clone shares the database.
#[derive(Clone)]
pub struct Store {
    database: Arc<Database>,
    durability: Arc<Mutex<Durability>>,
    /// The snapshot of the last commit, shared by every read until the next commit
    /// clears it.
    snapshot: Arc<Mutex<Option<Arc<Snapshot>>>>,
    /// In a fleet, where each world's new entries go before they commit.
    replicator: Arc<Mutex<Option<Arc<dyn replica::Replicator>>>>,
    /// Why writing failed for good, if it did: `Durability::failed`, readable without
    /// waiting for a group the writer is applying (see [`Store::write_failure`]).
    write_failure: Arc<Mutex<Option<String>>>,
    id: u64,
}

/// The writer's side: the journal, and whether writing has failed for good.
struct Durability {
    journal: Journal,
    /// Set when a group's outcome on disk is uncertain; every later write fails.
    failed: Option<String>,
}

impl Store {
    /// Opens the store at `path`, creating it (with epoch 1) if it does not exist, with
    /// the default page cache (`limits::CACHE_BYTES_DEFAULT`).
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with_cache(path, limits::CACHE_BYTES_DEFAULT)
    }

    /// Opens the store with a page cache of at most `cache_bytes`: the bound on the
    /// memory the store itself holds, whatever the size of the file.
    pub fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: usize,
    ) -> Result<Store, StoreError> {
        let database = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path.as_ref())?;
        let journal_path = path.as_ref().with_extension("journal");
        let (journal, records) = Journal::open(&journal_path)?;
        Store::start(database, journal, records)
    }

    /// Opens the store on storage of the caller's: redb's `backend` for the database and
    /// `journal` for the write-ahead journal. What fault-injection tests open it on: a
    /// disk that loses what was not synced, or fails.
    pub fn open_on(
        backend: impl redb::StorageBackend,
        journal: Arc<dyn journal::JournalStorage>,
        cache_bytes: usize,
    ) -> Result<Store, StoreError> {
        let database = Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(backend)?;
        let (journal, records, _) = Journal::open_on(journal, Path::new("engram.journal"))?;
        Store::start(database, journal, records)
    }

    /// Creates or checks the tables, applies the journal's `records` and starts.
    fn start(
        database: Database,
        mut journal: Journal,
        records: Vec<Vec<u8>>,
    ) -> Result<Store, StoreError> {
        let transaction = database.begin_write()?;
        {
            let mut meta = transaction.open_table(META)?;
            let version = meta.get(META_FORMAT_VERSION)?.map(|value| value.value());
            match version {
                None => {
                    meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
                    meta.insert(META_LAST_COMMIT, 0)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(found) if FORMAT_VERSIONS_UPGRADED.contains(&found) => {
                    meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
                }
                Some(found) => {
                    return Err(StoreError::FormatVersion {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            if meta.get(META_STORE_ID)?.is_none() {
                let mut id = [0u8; 8];
                getrandom::fill(&mut id).map_err(|error| StoreError::TransactionFailed {
                    reason: format!("no randomness for the store's id: {error}"),
                })?;
                meta.insert(META_STORE_ID, u64::from_le_bytes(id))?;
            }
            transaction.open_table(ENTRIES)?;
            transaction.open_table(IDS)?;
            transaction.open_table(POSTINGS)?;
            transaction.open_table(HEADS)?;
            transaction.open_table(STATES)?;
            transaction.open_table(IN_STATE)?;
            transaction.open_table(LINKS)?;
            transaction.open_table(TRUST)?;
            transaction.open_table(FORBIDS)?;
            transaction.open_table(WORLDS)?;
            transaction.open_table(PRINCIPALS)?;
            transaction.open_table(PRINCIPAL_NAMES)?;
            transaction.open_table(REVOKED_TOKENS)?;
            transaction.open_table(IDEMPOTENCY_KEYS)?;
            transaction.open_table(IDEMPOTENCY_EXPIRY)?;
            transaction.open_table(STREAM_POSITIONS)?;
            transaction.open_table(STREAM_REFUSALS)?;
            let mut epochs = transaction.open_table(EPOCHS)?;
            if epochs.first()?.is_none() {
                epochs.insert(1, ([0u8; 32], write::now_unix_ms()))?;
            }
        }
        let id = transaction
            .open_table(META)?
            .get(META_STORE_ID)?
            .map_or(0, |value| value.value());
        transaction.commit()?;
        if !records.is_empty() {
            let transaction = database.begin_write()?;
            let applied = write::replay_journal(&transaction, &records)?;
            transaction.commit()?;
            if applied > 0 {
                tracing::info!(applied, "recovered atoms from the journal");
            }
        }
        journal.checkpointed();
        Ok(Store {
            database: Arc::new(database),
            durability: Arc::new(Mutex::new(Durability {
                journal,
                failed: None,
            })),
            snapshot: Arc::new(Mutex::new(None)),
            replicator: Arc::new(Mutex::new(None)),
            write_failure: Arc::new(Mutex::new(None)),
            id,
        })
    }

    /// Why writing failed for good (every write fails until the node restarts), if it
    /// did. Never waits for the writer.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure.lock().expect("never poisoned").clone()
    }

    fn failed_for_good(&self, failed: &Option<String>) {
        (*self.write_failure.lock().expect("never poisoned")).clone_from(failed);
    }

    /// The store's id: random, given at creation, the same in a backup's copy.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Applies `requests` in order in one transaction, durable when this returns, and
    /// returns one verdict per request. A rejected request changed nothing; the outer
    /// error means nothing of the group was acknowledged.
    ///
    /// A group that only remembered atoms is made durable by the journal (one sequential
    /// write and sync) and committed to redb without a sync; any other change commits
    /// durably in redb, which also covers everything journaled before it.
    pub fn apply(
        &self,
        requests: &[WriteRequest],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        let mut durability = self.durability.lock().expect("never poisoned");
        let Durability { journal, failed } = &mut *durability;
        if let Some(reason) = failed {
            return Err(StoreError::TransactionFailed {
                reason: format!("an earlier write failed ({reason}); restart the node"),
            });
        }
        let transaction = self.database.begin_write()?;
        journal.begin();
        let mut tables = write::Tables::open(&transaction)?;
        let replicator = self.replicator.lock().expect("never poisoned").clone();
        let message_bytes_max = replicator.as_ref().map(|to| to.message_bytes_max());
        let outcome = write::prepare_group(&mut tables, requests, journal, message_bytes_max)?;
        // Whether a fleet stream took any of the group: then every node stores it from
        // there, whatever becomes of this transaction.
        let mut published = false;
        // In a fleet, the worlds' streams take the group's entries before it commits.
        if let Some(replicator) = replicator
            && let Some(bytes_max) = message_bytes_max
        {
            let world_of = |request: usize| match &requests[request].op {
                WriteOp::Remember { world, .. } => world.as_str(),
                _ => unreachable!("only remember requests write the journal"),
            };
            let messages =
                replica::messages(journal.entries(), &outcome.spans, world_of, bytes_max);
            // A stream that took an earlier message of the group gives its entries to
            // every node, whatever the group's answer.
            let unsure = |published: bool, error: StoreError| match error {
                StoreError::MayHaveBeenWritten { .. } => error,
                error if published => StoreError::MayHaveBeenWritten {
                    reason: format!("{error}, after a fleet stream took part of the group"),
                },
                error => error,
            };
            for (world, message) in messages {
                let after = tables.position(world).map_err(|e| unsure(published, e))?;
                let position = (replicator.publish(world, after, &message))
                    .map_err(|e| unsure(published, e))?;
                published = true;
                tables
                    .set_position(world, position)
                    .map_err(|e| unsure(true, e))?;
            }
        }
        // Journaled unless the group changed more than atoms, or is too large for what is
        // left of the journal.
        let journaled = !outcome.needs_durable_commit
            && journal.has_entries()
            && match journal.write() {
                Ok(written) => written,
                Err(error) => {
                    // Nothing was committed, but what the journal holds is uncertain.
                    *failed = Some(error.to_string());
                    self.failed_for_good(failed);
                    return Err(StoreError::MayHaveBeenWritten {
                        reason: format!("the journal's write failed: {error}"),
                    });
                }
            };
        // While the journal syncs, the entries go into the tables and redb commits.
        let stored = write::store_group(&mut tables, requests, journal.entries(), &outcome.entries);
        drop(tables);
        let committed = stored.and_then(|()| self.commit(transaction, journaled));
        let synced = if journaled { journal.synced() } else { Ok(()) };
        match (committed, synced) {
            (Ok(()), Ok(())) => {}
            (Err(error), _) => {
                if journaled {
                    // The journal may hold the group though redb does not: stop writing,
                    // so that a restart applies exactly what the journal holds.
                    *failed = Some(error.to_string());
                    self.failed_for_good(failed);
                }
                return Err(if journaled || published {
                    StoreError::MayHaveBeenWritten {
                        reason: error.to_string(),
                    }
                } else {
                    error
                });
            }
            (Ok(()), Err(error)) => {
                // redb holds the group, and would make it durable when it closes, though
                // the journal may not. A leaked handle keeps it from closing, as a crash
                // would, so that a restart applies exactly what the journal holds; reads
                // keep the snapshot of before the group.
                std::mem::forget(Arc::clone(&self.database));
                *failed = Some(error.to_string());
                self.failed_for_good(failed);
                return Err(StoreError::MayHaveBeenWritten {
                    reason: format!("the journal's sync failed: {error}"),
                });
            }
        }
        // Reads from now on must see this commit. The lock is released before the old
        // snapshot is dropped, which may end its read transaction.
        let stale = self.snapshot.lock().expect("never poisoned").take();
        drop(stale);
        if !journaled {
            journal.checkpointed();
        } else if journal.checkpoint_due()
            && let Err(error) = checkpoint(&self.database, journal)
        {
            // Nothing is lost: the journal still holds every record; the next group tries
            // again.
            tracing::warn!(%error, "checkpoint failed");
        }
        Ok(outcome.verdicts)
    }

    /// Commits a group's transaction: durably in redb, or, when the journal holds the
    /// group, without a sync and with reads kept on the snapshot of before the group
    /// (begun now if no read holds one) until `apply` clears it once the sync returned.
    fn commit(&self, mut transaction: WriteTransaction, journaled: bool) -> Result<(), StoreError> {
        if journaled {
            transaction
                .set_durability(redb::Durability::None)
                .map_err(durability_refused)?;
            self.current_snapshot()?;
        }
        Ok(transaction.commit()?)
    }

    /// Makes everything journaled durable in the redb file (at shutdown, so the next
    /// start has nothing to recover).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let mut durability = self.durability.lock().expect("never poisoned");
        if durability.failed.is_some() || !durability.journal.holds_records() {
            return Ok(());
        }
        checkpoint(&self.database, &mut durability.journal)
    }

    /// From now on, hands each group's entries to `replicator` before committing it
    /// (`replica.rs`).
    pub fn replicate_to(&self, replicator: Arc<dyn replica::Replicator>) {
        *self.replicator.lock().expect("never poisoned") = Some(replicator);
    }

    /// Applies one request on its own (tests, bootstrap).
    pub fn apply_one(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        self.apply(std::slice::from_ref(&request))?
            .pop()
            .expect("one verdict per request")
    }

    /// A consistent snapshot for reading: the state after the last commit, shared with
    /// every other read until the next commit. A read begun after a write returned sees
    /// that write.
    pub fn read(&self) -> Result<ReadView, StoreError> {
        Ok(ReadView {
            snapshot: self.current_snapshot()?,
        })
    }

    /// The snapshot in the slot, begun now if the slot is empty.
    fn current_snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        // The snapshot begins under the lock, so that one begun before a commit can never
        // be stored after that commit cleared the slot.
        let mut current = self.snapshot.lock().expect("never poisoned");
        Ok(match &*current {
            Some(snapshot) => snapshot.clone(),
            None => current
                .insert(Arc::new(Snapshot::begin(&self.database)?))
                .clone(),
        })
    }
}

type EntriesTable = ReadOnlyTable<(&'static str, u64), &'static [u8]>;
type PostingsTable = ReadOnlyTable<(&'static str, &'static [u8], u64), ()>;

/// One candidate of a ranked ask: its facts and where the rankings placed it.
struct Hit {
    relevance: f64,
    similarity: f32,
    importance: f32,
    /// Rank (from 1) and BM25 score in the text ranking.
    text: Option<(usize, f32)>,
    /// Rank (from 1) in the similarity ranking, when fused with text.
    vector_rank: Option<usize>,
}

impl Hit {
    fn new(importance: f32) -> Hit {
        Hit {
            relevance: 0.0,
            similarity: 0.0,
            importance,
            text: None,
            vector_rank: None,
        }
    }

    /// Where the relevance came from, for `explain`; built only for the atoms returned.
    /// A text hit's BM25 score only `with_scores` (it weighs what the world holds).
    fn why(&self, fused: bool, with_scores: bool) -> String {
        if !fused {
            return format!("similarity {:.4}", self.similarity);
        }
        let text = self.text.map(|(rank, score)| {
            if with_scores {
                format!("text rank {rank} (score {score:.3})")
            } else {
                format!("text rank {rank}")
            }
        });
        let vector = self
            .vector_rank
            .map(|rank| format!("vector rank {rank} (similarity {:.4})", self.similarity));
        text.into_iter()
            .chain(vector)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Decodes the stored row of commit `commit` of `world`.
fn decode_row(world: &str, commit: u64, row: &[u8]) -> Result<Atom, StoreError> {
    let (id, entry) = split_row(world, commit, row)?;
    decode_entry(id, entry)
}

fn durability_refused(error: redb::SetDurabilityError) -> StoreError {
    StoreError::TransactionFailed {
        reason: format!("redb refused the durability level: {error}"),
    }
}

/// One durable redb commit: everything committed before it is in the file.
fn checkpoint(database: &Database, journal: &mut Journal) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut transaction = database.begin_write()?;
    transaction
        .set_durability(redb::Durability::Immediate)
        .map_err(durability_refused)?;
    transaction.commit()?;
    journal.checkpointed();
    metrics::histogram!("engram_checkpoint_seconds").record(started.elapsed());
    Ok(())
}

/// A redb read transaction with the tables of the hot read paths already open: opening
/// a table looks it up in redb's table tree, which costs as much as the read itself.
struct Snapshot {
    transaction: ReadTransaction,
    ids: ReadOnlyTable<&'static Hash, u64>,
    entries: EntriesTable,
    postings: PostingsTable,
    states: ReadOnlyTable<(&'static str, u64, u64), u8>,
    in_state: ReadOnlyTable<(&'static str, u8, u64), ()>,
    links: ReadOnlyTable<(&'static str, u64, u16, u64), ()>,
    trust: ReadOnlyTable<(&'static str, PublicKey, &'static str), (u64, u64)>,
    forbids: ReadOnlyTable<(&'static str, &'static str, u64), ()>,
    /// The last commit when the snapshot was taken.
    last_commit: u64,
}

impl Snapshot {
    fn begin(database: &Database) -> Result<Snapshot, StoreError> {
        let transaction = database.begin_read()?;
        Ok(Snapshot {
            ids: transaction.open_table(IDS)?,
            entries: transaction.open_table(ENTRIES)?,
            postings: transaction.open_table(POSTINGS)?,
            states: transaction.open_table(STATES)?,
            in_state: transaction.open_table(IN_STATE)?,
            links: transaction.open_table(LINKS)?,
            trust: transaction.open_table(TRUST)?,
            forbids: transaction.open_table(FORBIDS)?,
            last_commit: write::last_commit(&transaction.open_table(META)?)?,
            transaction,
        })
    }
}

/// A consistent snapshot of the store.
pub struct ReadView {
    snapshot: Arc<Snapshot>,
}

impl ReadView {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: redb::TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>, StoreError> {
        Ok(self.snapshot.transaction.open_table(definition)?)
    }

    fn entries(&self) -> &EntriesTable {
        &self.snapshot.entries
    }

    /// What the policy write `request` would change, checked against this snapshot as
    /// the writer would check it (the actor's authority, then the op's rules): how a node
    /// in a fleet validates a change before it publishes it. `Ok(None)` for a request
    /// that is not a policy change.
    pub fn plan_policy(&self, request: &WriteRequest) -> Result<Option<PolicyChange>, StoreError> {
        let (worlds, principals) = (self.table(WORLDS)?, self.table(PRINCIPALS)?);
        let (names, epochs) = (self.table(PRINCIPAL_NAMES)?, self.table(EPOCHS)?);
        let policy = policy::PolicyTables {
            worlds: &worlds,
            principals: &principals,
            names: &names,
            epochs: &epochs,
        };
        let epoch = policy.epoch()?;
        policy.actor(epoch.number, request)??;
        policy.plan(&epoch, &request.op, now_unix_ms())?
    }

    /// The current epoch.
    pub fn epoch(&self) -> Result<Epoch, StoreError> {
        write::current_epoch(&self.table(EPOCHS)?)
    }

    /// The last commit number given out (0 before the first atom).
    /// The commit every answer read from this view stands at; read once, when the
    /// snapshot was taken.
    pub fn last_commit(&self) -> u64 {
        self.snapshot.last_commit
    }

    /// One world, if it exists.
    pub fn world(&self, name: &str) -> Result<Option<WorldInfo>, StoreError> {
        match self.table(WORLDS)?.get(name)? {
            None => Ok(None),
            Some(value) => WorldInfo::from_record(name, value.value()).map(Some),
        }
    }

    /// Every world, by name.
    pub fn worlds(&self) -> Result<Vec<WorldInfo>, StoreError> {
        let mut worlds = Vec::new();
        for entry in self.table(WORLDS)?.iter()? {
            let (name, value) = entry?;
            worlds.push(WorldInfo::from_record(name.value(), value.value())?);
        }
        Ok(worlds)
    }

    /// The principal with this key, if any.
    pub fn principal(&self, key: &PublicKey) -> Result<Option<Principal>, StoreError> {
        match self.table(PRINCIPALS)?.get(key)? {
            None => Ok(None),
            Some(bytes) => Principal::decode(bytes.value()).map(Some),
        }
    }

    /// Every principal, by key.
    pub fn principals(&self) -> Result<Vec<Principal>, StoreError> {
        let mut principals = Vec::new();
        for entry in self.table(PRINCIPALS)?.iter()? {
            let (_, bytes) = entry?;
            principals.push(Principal::decode(bytes.value())?);
        }
        principals.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(principals)
    }

    /// The revocation ids of the tokens revoked in `epoch` (the current one: an advance
    /// forgets older epochs' revocations), each with its token's principal.
    pub fn revoked_tokens(&self, epoch: u64) -> Result<Vec<(Vec<u8>, PublicKey)>, StoreError> {
        let mut ids = Vec::new();
        let start: (u64, &[u8]) = (epoch, &[]);
        for entry in self.table(REVOKED_TOKENS)?.range(start..)? {
            let (key, value) = entry?;
            let (revoked_in, id) = key.value();
            if revoked_in != epoch {
                break;
            }
            ids.push((id.to_vec(), value.value().0));
        }
        Ok(ids)
    }

    pub(crate) fn require_world(&self, world: &str) -> Result<(), StoreError> {
        match self.table(WORLDS)?.get(world)? {
            Some(_) => Ok(()),
            None => Err(StoreError::WorldNotFound {
                world: world.to_owned(),
            }),
        }
    }

    /// The atom at `commit` of `world`, which an index named.
    fn load(&self, world: &str, commit: u64) -> Result<Atom, StoreError> {
        decode_row(world, commit, self.row(world, commit)?.value())
    }

    /// The stored row of `commit` in `world`, which an index names.
    pub(crate) fn row(
        &self,
        world: &str,
        commit: u64,
    ) -> Result<redb::AccessGuard<'static, &'static [u8]>, StoreError> {
        self.entries()
            .get((world, commit))?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("an index names commit {commit} which {world:?} lacks"),
            })
    }

    /// The facts of the entry of `commit` in `world`, read in place.
    pub(crate) fn facts<'a>(
        &self,
        world: &str,
        commit: u64,
        entry: &'a [u8],
    ) -> Result<EntryFacts<'a>, StoreError> {
        EntryFacts::read(entry).ok_or_else(|| StoreError::Corrupt {
            what: format!("the entry of commit {commit} in {world:?} does not decode"),
        })
    }

    /// The atoms of `world` with `after < commit <= up_to`, in commit order, read in
    /// storage order: the one walk the replay, the subscriptions and the search indexes
    /// share.
    pub(crate) fn atoms_in_log(
        &self,
        world: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<Atom, StoreError>>>, StoreError> {
        if after >= up_to {
            return Ok(Box::new(std::iter::empty()));
        }
        let range = self.entries().range((world, after + 1)..=(world, up_to))?;
        let world = world.to_owned();
        Ok(Box::new(range.map(move |row| {
            let (key, row) = row?;
            decode_row(&world, key.value().1, row.value())
        })))
    }

    /// The lifecycle state of the atom of `commit` in `world` as of commit `as_of`
    /// (`u64::MAX`: now). One lookup in the state index.
    pub fn state(
        &self,
        world: &str,
        commit: u64,
        as_of: u64,
    ) -> Result<LifecycleState, StoreError> {
        write::state_at(&self.snapshot.states, world, commit, as_of)
    }

    /// What other principals said of `writer`'s atoms in `world` that carry `label`
    /// ("": every atom of the writer's).
    pub fn trust(&self, world: &str, writer: &PublicKey, label: &str) -> Result<Trust, StoreError> {
        Ok(self
            .snapshot
            .trust
            .get((world, *writer, label))?
            .map_or(Trust::default(), |counts| {
                let (confirms, corrects) = counts.value();
                Trust { confirms, corrects }
            }))
    }

    /// The trust an atom with these facts earns from its writer's: the mean of the
    /// writer's trust on each of its first `TRUST_LABELS_MAX` labels, or across every
    /// label when it has none.
    pub fn atom_trust(&self, world: &str, facts: &dyn Facts) -> Result<f64, StoreError> {
        let (mut sum, mut labels) = (0.0, 0);
        let mut failed = None;
        facts.any_label(&mut |label| {
            if labels == limits::TRUST_LABELS_MAX {
                return true;
            }
            match self.trust(world, facts.writer(), label) {
                Ok(trust) => {
                    sum += trust.score();
                    labels += 1;
                }
                Err(error) => failed = Some(error),
            }
            failed.is_some()
        });
        if let Some(error) = failed {
            return Err(error);
        }
        if labels == 0 {
            return Ok(self.trust(world, facts.writer(), "")?.score());
        }
        Ok(sum / labels as f64)
    }

    /// The live atoms (asserted, proposed or approved as of `as_of`) of `world` that
    /// `visible` lets through and that contradict `atom` or that it contradicts, by
    /// id: at most `CONTRADICTIONS_LISTED_MAX`, looked for among at most
    /// `CONTRADICTIONS_EXAMINED_MAX` links, the atom's own first, then the newest made
    /// to it. Each link examined takes one from `budget`; `BudgetSpent` when it runs
    /// out first.
    pub fn contradictions(
        &self,
        atom: &Atom,
        as_of: u64,
        visible: Visible<'_>,
        budget: &mut usize,
    ) -> Result<Vec<Hash>, StoreError> {
        let world = atom.world.as_str();
        let mut found = Vec::new();
        if !atom.links_count {
            return Ok(found);
        }
        let live = |commit: u64| -> Result<bool, StoreError> {
            Ok(matches!(
                self.state(world, commit, as_of)?,
                LifecycleState::Asserted | LifecycleState::Proposed | LifecycleState::Approved
            ))
        };
        let consider = |commit: u64, found: &mut Vec<Hash>| -> Result<(), StoreError> {
            if commit > as_of {
                return Ok(());
            }
            let Some(row) = self.entries().get((world, commit))? else {
                return Ok(());
            };
            let (id, entry) = split_row(world, commit, row.value())?;
            if !found.contains(&id) && visible(&self.facts(world, commit, entry)?) && live(commit)?
            {
                found.push(id);
            }
            Ok(())
        };
        let mut examined = 0;
        let spend = |examined: &mut usize, budget: &mut usize| {
            *examined += 1;
            match budget.checked_sub(1) {
                Some(left) => {
                    *budget = left;
                    Ok(())
                }
                None => Err(StoreError::BudgetSpent {
                    what: "finding the contradictions of every hit".into(),
                    examined: *examined - 1,
                }),
            }
        };
        for link in &atom.content.links {
            if link.kind != LinkKind::Contradicts {
                continue;
            }
            spend(&mut examined, budget)?;
            if let Some(commit) = self.snapshot.ids.get(&link.target)? {
                consider(commit.value(), &mut found)?;
            }
        }
        let code = LinkKind::Contradicts.code();
        let made_to = self
            .snapshot
            .links
            .range((world, atom.commit, code, 0)..=(world, atom.commit, code, as_of))?;
        for link in made_to.rev() {
            if examined >= limits::CONTRADICTIONS_EXAMINED_MAX
                || found.len() >= limits::CONTRADICTIONS_LISTED_MAX
            {
                break;
            }
            spend(&mut examined, budget)?;
            let (_, _, _, source) = link?.0.value();
            consider(source, &mut found)?;
        }
        found.truncate(limits::CONTRADICTIONS_LISTED_MAX);
        Ok(found)
    }

    /// Sets `atom.state` to where it stands as of commit `as_of` (`u64::MAX`: now).
    fn settle(&self, atom: &mut Atom, as_of: u64) -> Result<(), StoreError> {
        atom.state = self.state(&atom.world, atom.commit, as_of)?;
        Ok(())
    }

    /// `read` of the facts of the atom `id`, read in place (its text and payload stay
    /// unread); `None` when `world` holds no such atom.
    pub fn with_facts<R>(
        &self,
        world: &str,
        id: &Hash,
        read: impl FnOnce(&EntryFacts<'_>) -> R,
    ) -> Result<Option<R>, StoreError> {
        let Some(commit) = self.snapshot.ids.get(id)?.map(|commit| commit.value()) else {
            return Ok(None);
        };
        let Some(row) = self.entries().get((world, commit))? else {
            return Ok(None);
        };
        let (_, entry) = split_row(world, commit, row.value())?;
        Ok(Some(read(&self.facts(world, commit, entry)?)))
    }

    /// The atom `id` of `world`, in its state now.
    pub fn atom(&self, world: &str, id: &Hash) -> Result<Atom, StoreError> {
        self.atom_as_of(world, id, u64::MAX)
    }

    /// The atom `id` of `world`, in its state as of commit `as_of` (`u64::MAX`: now).
    /// It is not found if it was committed after `as_of`.
    pub fn atom_as_of(&self, world: &str, id: &Hash, as_of: u64) -> Result<Atom, StoreError> {
        // The world is looked up only to say which of the two is missing.
        let not_found = || {
            self.require_world(world)?;
            Err(StoreError::AtomNotFound {
                world: world.to_owned(),
                id: hex::encode(id),
            })
        };
        let Some(commit) = self.snapshot.ids.get(id)?.map(|commit| commit.value()) else {
            return not_found();
        };
        let Some(row) = self.entries().get((world, commit))? else {
            return not_found();
        };
        if commit > as_of {
            return not_found();
        }
        let mut atom = decode_row(world, commit, row.value())?;
        if atom.id != *id {
            return Err(StoreError::Corrupt {
                what: format!(
                    "the id index names commit {commit} for atom {}, which holds another",
                    hex::encode(id)
                ),
            });
        }
        self.settle(&mut atom, as_of)?;
        Ok(atom)
    }

    /// The last commit of `world` the node recorded at or before `unix_ms` (0 if none):
    /// the commit a time names for time travel. Bisection over the world's commits,
    /// one lookup per step: the recording times follow the commits unless the node's
    /// clock stepped back, when the answer is one commit recorded at or before it.
    pub fn commit_at(&self, world: &str, unix_ms: i64) -> Result<u64, StoreError> {
        self.require_world(world)?;
        // The first entry of `world` with a commit in `from..until`, as (commit, time).
        let entry_in = |from: u64, until: u64| -> Result<Option<(u64, i64)>, StoreError> {
            let Some(row) = self.entries().range((world, from)..(world, until))?.next() else {
                return Ok(None);
            };
            let (key, row) = row?;
            let commit = key.value().1;
            let (_, entry) = split_row(world, commit, row.value())?;
            Ok(Some((
                commit,
                self.facts(world, commit, entry)?.recorded_at_unix_ms(),
            )))
        };
        // `low` is a commit recorded at or before the time; the answer is in low..high.
        let (mut low, mut high) = match entry_in(0, u64::MAX)? {
            Some((commit, recorded)) if recorded <= unix_ms => (commit, u64::MAX),
            _ => return Ok(0),
        };
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            match entry_in(middle, high)? {
                Some((commit, recorded)) if recorded <= unix_ms => low = commit,
                Some((commit, _)) => high = commit,
                None => high = middle,
            }
        }
        Ok(low)
    }

    /// Where `world` stands: the node's last commit, the commit of the world's newest
    /// atom (0 while it has none) and its atoms. One record and one index lookup.
    pub fn generation(&self, world: &str) -> Result<Generation, StoreError> {
        let info = self
            .world(world)?
            .ok_or_else(|| StoreError::WorldNotFound {
                world: world.to_owned(),
            })?;
        Ok(Generation {
            node_commit: self.last_commit(),
            last_commit: self.world_last_commit(world)?,
            atoms: info.atoms,
        })
    }

    /// The last commit a cursor at the end of `world` may stand at: no atom of the world
    /// stored later has a commit at or below it. A node alone gives out commits above
    /// all it holds, so the node's last commit, which tells nothing of the world. In a
    /// fleet a world's atoms arrive with their owner's commits, which may be below this
    /// node's last: only the world's own last commit is safe (a reader whose
    /// restriction hides atoms learns that commit, not what it holds).
    fn horizon(&self, world: &str) -> Result<u64, StoreError> {
        if write::CommitSpace::read(&self.table(META)?)?.in_fleet() {
            self.world_last_commit(world)
        } else {
            Ok(self.last_commit())
        }
    }

    /// The position in `world`'s fleet stream up to which this node holds its entries.
    pub fn stream_position(&self, world: &str) -> Result<u64, StoreError> {
        Ok(self
            .table(STREAM_POSITIONS)?
            .get(world)?
            .map_or(0, |position| position.value()))
    }

    /// The commit of `world`'s newest atom (0 while it has none): one index lookup.
    pub fn world_last_commit(&self, world: &str) -> Result<u64, StoreError> {
        let newest = self
            .entries()
            .range((world, 0)..=(world, u64::MAX))?
            .next_back();
        Ok(match newest {
            Some(row) => row?.0.value().1,
            None => 0,
        })
    }

    /// The head of every chain of `world`, by writer key.
    pub fn heads(&self, world: &str) -> Result<Vec<ChainHead>, StoreError> {
        self.require_world(world)?;
        chain::heads_of(&self.table(HEADS)?, world)
    }

    /// For a reader that sees only the atoms `visible` lets through, as the world stood
    /// at commit `as_of` (`u64::MAX`: now): each writer's newest visible atom as its head
    /// (seq and id), and no head for a writer none of whose atoms is visible then.
    /// `BudgetSpent` past `budget` entries examined.
    pub fn visible_heads(
        &self,
        world: &str,
        as_of: u64,
        budget: ReadBudget,
        visible: Visible<'_>,
    ) -> Result<Vec<ChainHead>, StoreError> {
        let mut found = Vec::new();
        let mut examined = 0;
        let mut term = Term::new();
        for head in self.heads(world)? {
            let key = term.writer(&head.writer);
            let written = descending(
                &self.snapshot.postings,
                (world, key, 0),
                (world, key, as_of.saturating_add(1)),
                |(_, _, commit)| commit,
            )?;
            for commit in written {
                examined += 1;
                if examined > budget.examined {
                    return Err(StoreError::BudgetSpent {
                        what: "finding the newest visible atom of every chain".into(),
                        examined: budget.examined,
                    });
                }
                let commit = commit?;
                let row = self.row(world, commit)?;
                let (id, entry) = split_row(world, commit, row.value())?;
                // The head's seq is among the facts: its text and payload stay unread.
                let facts = self.facts(world, commit, entry)?;
                if visible(&facts) {
                    found.push(ChainHead {
                        writer: head.writer,
                        seq: facts.seq(),
                        id,
                    });
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Atoms of `world` with commit > `from_commit` in commit order for which `visible`
    /// holds, at most `limit`, within `budget`. The page's cursor is the last commit
    /// handled, which may be past the last atom returned.
    pub fn replay(
        &self,
        world: &str,
        from_commit: u64,
        limit: u32,
        budget: ReadBudget,
        visible: Visible<'_>,
    ) -> Result<ReplayPage, StoreError> {
        self.replay_until(world, from_commit, u64::MAX, limit, budget, visible)
    }

    /// [`ReadView::replay`] of the atoms committed up to `up_to` only: once they are all
    /// read, the cursor is `up_to` (or, with `u64::MAX`, the node's last commit).
    pub fn replay_until(
        &self,
        world: &str,
        from_commit: u64,
        up_to: u64,
        limit: u32,
        budget: ReadBudget,
        visible: Visible<'_>,
    ) -> Result<ReplayPage, StoreError> {
        self.require_world(world)?;
        validate_replay_limit(limit)?;
        let mut page = ReplayPage {
            atoms: Vec::new(),
            next_commit: from_commit,
            examined_budget_spent: false,
        };
        let mut bytes = 0;
        let mut stopped = false;
        if from_commit >= up_to {
            return Ok(page);
        }
        let rows = self
            .entries()
            .range((world, from_commit.saturating_add(1))..=(world, up_to))?;
        for (examined, row) in rows.enumerate() {
            if examined == budget.examined {
                page.examined_budget_spent = true;
                stopped = true;
                break;
            }
            let (key, row) = row?;
            let (_, commit) = key.value();
            let (id, entry) = split_row(world, commit, row.value())?;
            if visible(&self.facts(world, commit, entry)?) {
                let mut atom = decode_entry(id, entry)?;
                self.settle(&mut atom, up_to)?;
                bytes += atom.answer_bytes();
                if bytes > budget.bytes && !page.atoms.is_empty() {
                    stopped = true;
                    break;
                }
                page.next_commit = atom.commit;
                page.atoms.push(atom);
                if page.atoms.len() == limit as usize {
                    stopped = true;
                    break;
                }
            } else {
                page.next_commit = commit;
            }
        }
        if !stopped {
            // The world's log is read to its end (or to `up_to`): the cursor moves there,
            // so it does not tell where the world's last (perhaps hidden) atom is.
            let end = if up_to == u64::MAX {
                self.horizon(world)?
            } else {
                up_to
            };
            page.next_commit = page.next_commit.max(end);
        }
        Ok(page)
    }

    /// The newest atoms of `world` that match `query` and `visible`, newest first,
    /// within `budget`: past it the page says where to continue.
    ///
    /// Candidates come from one index: the state index when the query asks for states
    /// it lists ([`Query::indexed_states`]), else the first label's postings, else the
    /// kinds', else the writers', else the world's entries; every other filter, the
    /// lifecycle state included, is checked on each candidate.
    pub fn ask(
        &self,
        world: &str,
        query: &Query,
        budget: ReadBudget,
        visible: Visible<'_>,
    ) -> Result<AskPage, StoreError> {
        self.require_world(world)?;
        query.validate()?;
        let upper = query.before_commit.unwrap_or(u64::MAX);
        let postings = &self.snapshot.postings;
        let mut term = Term::new();
        let by_term = |term: &[u8]| {
            descending(
                postings,
                (world, term, 0),
                (world, term, upper),
                |(_, _, commit)| commit,
            )
        };
        let candidates: Candidates = if let Some(states) = query.indexed_states() {
            let mut sources = Vec::with_capacity(states.len());
            for state in states {
                let code = state.code() as u8;
                sources.push(descending(
                    &self.snapshot.in_state,
                    (world, code, 0),
                    (world, code, upper),
                    |(_, _, commit)| commit,
                )?);
            }
            merge_descending(sources)
        } else if let Some(label) = query.labels.first() {
            by_term(term.label(label))?
        } else if !query.kinds.is_empty() {
            let mut sources = Vec::with_capacity(query.kinds.len());
            for kind in &query.kinds {
                sources.push(by_term(term.kind(kind.code()))?);
            }
            merge_descending(sources)
        } else if !query.writers.is_empty() {
            let mut sources = Vec::with_capacity(query.writers.len());
            for writer in &query.writers {
                sources.push(by_term(term.writer(writer))?);
            }
            merge_descending(sources)
        } else {
            descending(self.entries(), (world, 0), (world, upper), |(_, commit)| {
                commit
            })?
        };
        let mut page = AskPage {
            atoms: Vec::with_capacity(query.limit as usize),
            resume_before_commit: None,
            examined_budget_spent: false,
        };
        let mut bytes = 0;
        // The oldest commit handled so far: where the next page would start.
        let mut handled_down_to = upper;
        for (examined, commit) in candidates.enumerate() {
            let commit = commit?;
            if examined == budget.examined {
                page.examined_budget_spent = true;
                page.resume_before_commit = Some(handled_down_to);
                break;
            }
            let row = self.row(world, commit)?;
            let (id, entry) = split_row(world, commit, row.value())?;
            let facts = self.facts(world, commit, entry)?;
            let state = if query.matches(&facts) && visible(&facts) {
                Some(self.state(world, commit, query.states_as_of())?)
            } else {
                None
            };
            if let Some(state) = state.filter(|state| query.admits_state(facts.kind(), *state)) {
                let mut atom = decode_entry(id, entry)?;
                atom.state = state;
                bytes += atom.answer_bytes();
                if bytes > budget.bytes && !page.atoms.is_empty() {
                    page.resume_before_commit = Some(handled_down_to);
                    break;
                }
                page.atoms.push(atom);
                if page.atoms.len() == query.limit as usize {
                    break;
                }
            }
            handled_down_to = commit;
        }
        Ok(page)
    }

    /// Recomputes every chain of `world`; see [`VerifyReport`]. Every entry is checked;
    /// for a restricted reader (`visible`), the report speaks only of what it lets
    /// through: it counts visible entries and the chains that hold one, and names a bad
    /// entry only when it is a visible one whose bytes changed (else it says that an
    /// entry the reader may not see failed, naming no writer).
    pub fn verify(
        &self,
        world: &str,
        visible: Option<Visible<'_>>,
    ) -> Result<VerifyReport, StoreError> {
        self.require_world(world)?;
        let mut report = chain::verify_world(self.entries(), &self.table(HEADS)?, world, visible)?;
        if report.first_bad.is_none()
            && let Some(row) = (self.table(STREAM_REFUSALS)?)
                .range((world, 0)..=(world, u64::MAX))?
                .next()
        {
            let (key, value) = row?;
            let (position, (writer, seq, reason)) = (key.value().1, value.value());
            let fork = format!(
                "this node refused the message at position {position} of the world's fleet \
                 stream, signed by a node of the fleet: its copy of the world differs from \
                 the stream's (a fork, or a node that published what no node can store)"
            );
            // Through a restriction that hides atoms, nothing of the entry refused.
            report.first_bad = Some(match visible {
                None => chain::BadEntry {
                    world: world.to_owned(),
                    writer,
                    seq,
                    reason: format!("{fork}: {reason}"),
                },
                Some(_) => chain::BadEntry {
                    world: world.to_owned(),
                    writer: [0; 32],
                    seq: 0,
                    reason: fork,
                },
            });
        }
        Ok(report)
    }
}

/// Where one world stands ([`ReadView::generation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The node's last commit.
    pub node_commit: u64,
    /// The commit of the world's newest atom; 0 while it has none.
    pub last_commit: u64,
    /// Atoms in the world.
    pub atoms: u64,
}

/// What one read may examine and return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    /// Entries examined (candidates loaded, whether they pass or not).
    pub examined: usize,
    /// Bytes of atoms returned, by [`Atom::answer_bytes`]; the first atom always fits.
    pub bytes: usize,
}

impl ReadBudget {
    /// What a read may do on the RPC thread before it moves to the blocking pool.
    pub const INLINE: ReadBudget = ReadBudget {
        examined: limits::READ_INLINE_EXAMINED_MAX,
        bytes: limits::ANSWER_BYTES_MAX,
    };
    /// What one call may do in all.
    pub const CALL: ReadBudget = ReadBudget {
        examined: limits::READ_EXAMINED_MAX,
        bytes: limits::ANSWER_BYTES_MAX,
    };
}

/// One page of a replay.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayPage {
    /// In commit order.
    pub atoms: Vec<Atom>,
    /// The cursor to continue from: the last commit handled.
    pub next_commit: u64,
    /// The page stopped at its budget of entries examined.
    pub examined_budget_spent: bool,
}

/// One page of a structured ask.
#[derive(Clone, Debug, PartialEq)]
pub struct AskPage {
    /// Newest first.
    pub atoms: Vec<Atom>,
    /// Set when the page stopped at its budget before `limit` atoms and before the
    /// world's oldest atom: ask again with this `beforeCommit` to continue.
    pub resume_before_commit: Option<u64>,
    /// The page stopped at its budget of entries examined (not of bytes).
    pub examined_budget_spent: bool,
}

/// How much of a world a ranked ask searched, beyond what the indexes answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Visible atoms the indexes did not hold yet, compared exactly instead.
    pub compared_exactly: usize,
    /// More atoms than a search's budget were newer than an index: the newest of them
    /// were not searched.
    pub tail_cut: bool,
    /// The text search stopped at its budget of matching documents.
    pub text_budget_spent: bool,
}

impl Coverage {
    /// What a reader should be told, or `None` when the indexes answered everything.
    pub fn warning(&self) -> Option<String> {
        let mut notes = Vec::new();
        if self.compared_exactly > 0 {
            notes.push(format!(
                "the search indexes are catching up: {} atoms they do not hold yet were \
                 compared exactly",
                self.compared_exactly
            ));
        }
        if self.tail_cut {
            notes.push(format!(
                "more than {} atoms are newer than the search indexes: the newest were not \
                 searched; ask again once they have caught up",
                limits::SEARCH_EXAMINED_MAX
            ));
        }
        if self.text_budget_spent {
            notes.push(format!(
                "the text search examined its budget of {} matching atoms before finding \
                 enough that pass the filters: narrow the words or the filters",
                limits::SEARCH_EXAMINED_MAX
            ));
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

impl Store {
    /// Ranked ask: by similarity to `vector`, by words of `text`, or both fused by
    /// reciprocal rank; the best `query.limit` atoms of `world` by [`rank::score`] among
    /// those `query` and `allowed` let through. What the indexes do not cover yet is
    /// compared exactly, within a budget; returns the ranked atoms and how much was
    /// searched outside the indexes. Without `whole_world` (a reader whose restriction
    /// hides atoms), what counts atoms it may not see is left out: every writer's trust
    /// is taken as neutral, text is scored with uniform word statistics (the world's
    /// count hidden atoms), and an explanation names each text hit's rank, not its BM25
    /// score.
    #[allow(clippy::too_many_arguments)]
    pub fn ask_ranked(
        &self,
        vectors: &VectorIndex,
        texts: &TextIndex,
        world: &str,
        query: &Query,
        vector: &[f32],
        text: &str,
        allowed: &(dyn Fn(&dyn Facts) -> bool + Sync),
        whole_world: bool,
    ) -> Result<(Vec<Ranked>, Coverage), StoreError> {
        query.validate()?;
        let as_of = query.states_as_of();
        // States are filtered on during the search, on a snapshot of when it began, and
        // again on the atoms returned (an atom newer than that snapshot may be in a
        // state it does not know). An atom whose state does not read is left out.
        let states = self.read()?;
        let filter = |facts: &dyn Facts| {
            query.matches(facts)
                && allowed(facts)
                && states
                    .state(world, facts.commit(), as_of)
                    .is_ok_and(|state| query.admits_state(facts.kind(), state))
        };
        // Rank more candidates than asked for, so the other factors can reorder them.
        let candidates = query.limit as usize * 4;
        let mut coverage = Coverage::default();
        let mut by_vector = Vec::new();
        if !vector.is_empty() {
            let answer = vectors.search(self, world, vector, candidates, &filter)?;
            coverage.compared_exactly += answer.compared_exactly;
            coverage.tail_cut |= answer.tail_cut;
            by_vector = answer.matches;
        }
        let mut by_text = Vec::new();
        if !text.is_empty() {
            let answer = texts.search(self, world, text, candidates, &filter, whole_world)?;
            coverage.compared_exactly += answer.compared_exactly;
            coverage.tail_cut |= answer.tail_cut;
            coverage.text_budget_spent = answer.budget_spent;
            by_text = answer.matches;
        }
        // One entry per atom: its facts and where the rankings placed it.
        let fused = !text.is_empty();
        let mut found: HashMap<u64, Hit> = HashMap::new();
        if !fused {
            for similar in &by_vector {
                let hit = found
                    .entry(similar.commit)
                    .or_insert(Hit::new(similar.importance));
                hit.relevance = f64::from(similar.similarity);
                hit.similarity = similar.similarity;
            }
        } else {
            let lists = if vector.is_empty() { 1.0 } else { 2.0 };
            let best = lists / (rank::RRF_K + 1.0);
            let reciprocal = |position: usize| 1.0 / (rank::RRF_K + position as f64 + 1.0) / best;
            for (position, matched) in by_text.iter().enumerate() {
                let hit = found
                    .entry(matched.commit)
                    .or_insert(Hit::new(matched.importance));
                hit.relevance += reciprocal(position);
                hit.text = Some((position + 1, matched.score));
            }
            for (position, similar) in by_vector.iter().enumerate() {
                let hit = found
                    .entry(similar.commit)
                    .or_insert(Hit::new(similar.importance));
                hit.relevance += reciprocal(position);
                hit.similarity = similar.similarity;
                hit.vector_rank = Some(position + 1);
            }
        }
        // Rank on the candidates' facts read in place; only the atoms returned are
        // copied. The states are read again on this later snapshot, which holds every
        // candidate, and a candidate whose state the filter did not know is dropped.
        let view = self.read()?;
        let last_commit = view.last_commit();
        let mut scored = Vec::with_capacity(found.len());
        for (commit, hit) in found {
            let row = view.row(world, commit)?;
            let (_, entry) = split_row(world, commit, row.value())?;
            let facts = view.facts(world, commit, entry)?;
            let state = view.state(world, commit, as_of)?;
            if !query.admits_state(facts.kind(), state) {
                continue;
            }
            let factors = rank::Factors {
                relevance: hit.relevance,
                importance: hit.importance,
                commit,
                last_commit,
                trust: if whole_world {
                    view.atom_trust(world, &facts)?
                } else {
                    Trust::default().score()
                },
                state,
            };
            scored.push((rank::score(&factors), factors, hit));
        }
        scored.sort_by(|left, right| right.0.total_cmp(&left.0));
        scored.truncate(query.limit as usize);
        let mut ranked = Vec::with_capacity(scored.len());
        for (score, factors, hit) in scored {
            let mut atom = view.load(world, factors.commit)?;
            atom.state = factors.state;
            ranked.push(Ranked {
                atom,
                similarity: hit.similarity,
                score,
                explanation: rank::explain(&hit.why(fused, whole_world), &factors),
            });
        }
        Ok((ranked, coverage))
    }
}
