//! Applying write requests inside one redb write transaction (one group commit).
//!
//! Each request is validated completely before it touches a table, so a rejected request
//! changes nothing while the others of its group commit. A storage failure in the middle
//! of a request aborts the whole transaction: every request of the group then fails and
//! none is acknowledged.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use crate::atom::{
    AtomContent, AtomKind, EntryFacts, EntryHeader, Facts, Hash, LifecycleState, LinkKind,
    PublicKey, Transition, ZERO_HASH, decode_entry, encode_entry, encoded_entry_len, entry_hash,
};
use crate::epoch::Epoch;
use crate::error::StoreError;
use crate::idempotency::{self, KeyRecord, KeyTables, KeyValue};
use crate::journal::{self, Item, Journal};
use crate::limits::{
    BATCH_ATOMS_MAX, REVOKED_TOKENS_PER_EPOCH_MAX, TRANSITIONS_PER_REQUEST_MAX, TRUST_LABELS_MAX,
};
use crate::policy::{PolicyChange, PolicyTables};
use crate::principal::{Grant, Principal, Right};
use crate::replica::Span;
use crate::tables::*;
use crate::world::{WorldInfo, WorldState};

/// Who asks for a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// The node itself (first-start bootstrap). Never reachable over RPC.
    Node,
    /// A principal, through a capability issued in `epoch`. Its rights are checked again
    /// inside the transaction, so a revocation that commits first always wins.
    Principal { key: PublicKey, epoch: u64 },
}

/// One write.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Appends atoms to the authority's chain in `world`, all or nothing. With `key`, a
    /// request the writer already made with that key (within the window) answers its
    /// receipts again and writes nothing (`idempotency.rs`).
    Remember {
        world: String,
        atoms: Vec<AtomContent>,
        key: Option<Vec<u8>>,
    },
    CreateWorld {
        name: String,
        /// 0 leaves it to the world's first vector.
        dimension: u32,
    },
    SetWorldState {
        name: String,
        state: WorldState,
    },
    AddPrincipal(Principal),
    SetGrants {
        name: String,
        grants: Vec<Grant>,
    },
    RemovePrincipal {
        name: String,
    },
    AdvanceEpoch {
        head: Hash,
    },
    /// Makes this node give out only the commits of `slot` in its fleet
    /// ([`CommitSpace`]); only the node itself may.
    SetCommitSlot(u64),
    /// Stores entries another node wrote, as the world's fleet stream carries them at
    /// `position` (`replica.rs`); only the node itself may.
    Replicate {
        world: String,
        position: u64,
        message: Vec<u8>,
    },
    /// Sets policy records as a fleet's nodes agreed them (`policy.rs`), checking
    /// nothing but that the node asks; only the node itself may.
    ApplyPolicy(Vec<PolicyChange>),
    /// Adds a token's revocation id to the current epoch's revocation list. An admin
    /// may revoke any token; a principal, the tokens that name it (`owner`).
    RevokeToken {
        owner: PublicKey,
        id: Vec<u8>,
    },
}

/// A write and who asks for it.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    pub authority: Authority,
    pub op: WriteOp,
}

/// The acknowledgement of one remembered atom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub id: Hash,
    pub seq: u64,
    pub commit: u64,
    pub prev: Hash,
}

/// What a successful write produced.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOutcome {
    /// The atoms' receipts; `replayed` when an idempotency key named a request already
    /// done, whose receipts these are, and nothing was written.
    Remembered {
        receipts: Vec<Receipt>,
        replayed: bool,
    },
    World(WorldInfo),
    Principal(Principal),
    /// The principal that was removed.
    PrincipalRemoved(Principal),
    Epoch(Epoch),
    /// A token of `owner` revoked in the current epoch, by its revocation id.
    TokenRevoked {
        owner: PublicKey,
        id: Vec<u8>,
    },
    /// What applying policy changes changed, in order; empty when every record was
    /// already as the changes say.
    Applied(Vec<WriteOutcome>),
    /// How many replicated entries were stored (0: the position was already held) and
    /// the last one's commit, or why the message was refused (nothing stored; its
    /// position is passed).
    Replicated {
        stored: usize,
        last_commit: Option<u64>,
        refused: Option<String>,
    },
    /// The commit slot is set.
    CommitSlot,
}

impl WriteOutcome {
    /// The outcome of making `change`.
    pub fn of(change: PolicyChange) -> WriteOutcome {
        match change {
            PolicyChange::Epoch(epoch) => WriteOutcome::Epoch(epoch),
            PolicyChange::Principal(principal) => WriteOutcome::Principal(principal),
            PolicyChange::PrincipalRemoved(principal) => WriteOutcome::PrincipalRemoved(principal),
            PolicyChange::World(world) => WriteOutcome::World(world),
        }
    }
}

/// Per-request verdict; the outer error aborts the group.
pub(crate) type Verdict = Result<WriteOutcome, StoreError>;

/// The tables a group writes, open in its transaction.
pub(crate) struct Tables<'txn> {
    entries: Table<'txn, (&'static str, u64), &'static [u8]>,
    ids: Table<'txn, &'static Hash, u64>,
    postings: Table<'txn, (&'static str, &'static [u8], u64), ()>,
    heads: Table<'txn, (&'static str, PublicKey), (u64, Hash)>,
    states: Table<'txn, (&'static str, u64, u64), u8>,
    in_state: Table<'txn, (&'static str, u8, u64), ()>,
    links: Table<'txn, (&'static str, u64, u16, u64), ()>,
    trust: Table<'txn, (&'static str, PublicKey, &'static str), (u64, u64)>,
    forbids: Table<'txn, (&'static str, &'static str, u64), ()>,
    worlds: Table<'txn, &'static str, (u8, u64, u32)>,
    principals: Table<'txn, PublicKey, &'static [u8]>,
    principal_names: Table<'txn, &'static str, PublicKey>,
    epochs: Table<'txn, u64, (Hash, i64)>,
    revoked_tokens: Table<'txn, (u64, &'static [u8]), (PublicKey, i64)>,
    idempotency_keys: Table<'txn, (&'static str, PublicKey, &'static [u8]), KeyValue>,
    idempotency_expiry: Table<'txn, (i64, &'static str, PublicKey, &'static [u8]), ()>,
    positions: Table<'txn, &'static str, u64>,
    refusals: Table<'txn, (&'static str, u64), (PublicKey, u64, &'static str)>,
    meta: Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    /// The policy tables, to plan a change against.
    #[allow(clippy::type_complexity)]
    pub(crate) fn policy(
        &self,
    ) -> PolicyTables<
        '_,
        Table<'txn, &'static str, (u8, u64, u32)>,
        Table<'txn, PublicKey, &'static [u8]>,
        Table<'txn, &'static str, PublicKey>,
        Table<'txn, u64, (Hash, i64)>,
    > {
        PolicyTables {
            worlds: &self.worlds,
            principals: &self.principals,
            names: &self.principal_names,
            epochs: &self.epochs,
        }
    }

    pub(crate) fn open(transaction: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            entries: transaction.open_table(ENTRIES)?,
            ids: transaction.open_table(IDS)?,
            postings: transaction.open_table(POSTINGS)?,
            heads: transaction.open_table(HEADS)?,
            states: transaction.open_table(STATES)?,
            in_state: transaction.open_table(IN_STATE)?,
            links: transaction.open_table(LINKS)?,
            trust: transaction.open_table(TRUST)?,
            forbids: transaction.open_table(FORBIDS)?,
            worlds: transaction.open_table(WORLDS)?,
            principals: transaction.open_table(PRINCIPALS)?,
            principal_names: transaction.open_table(PRINCIPAL_NAMES)?,
            epochs: transaction.open_table(EPOCHS)?,
            revoked_tokens: transaction.open_table(REVOKED_TOKENS)?,
            idempotency_keys: transaction.open_table(IDEMPOTENCY_KEYS)?,
            idempotency_expiry: transaction.open_table(IDEMPOTENCY_EXPIRY)?,
            positions: transaction.open_table(STREAM_POSITIONS)?,
            refusals: transaction.open_table(STREAM_REFUSALS)?,
            meta: transaction.open_table(META)?,
        })
    }

    fn key_tables(&mut self) -> KeyTables<'_, 'txn> {
        KeyTables {
            keys: &mut self.idempotency_keys,
            expiry: &mut self.idempotency_expiry,
        }
    }

    /// Stores one encoded entry and posts it to the indexes (not its chain's head),
    /// with the lifecycle states it sets (its own if it starts as a proposal) and, when
    /// its links count (`links_count`, every entry since version 2), what its links
    /// change: their targets' states, the link index and the trust counts. Everything
    /// here is derived from the entry and the tables, so applying the journal again
    /// stores the same. The transitions were checked when the entry was prepared; one
    /// that is not legal here means the indexes are damaged.
    #[allow(clippy::too_many_arguments)]
    fn store_entry(
        &mut self,
        scratch: &mut Scratch,
        world: &str,
        commit: u64,
        id: &Hash,
        entry: &[u8],
        content: &AtomContent,
        writer: &PublicKey,
        links_count: bool,
    ) -> Result<(), StoreError> {
        entry_row(id, entry, &mut scratch.row);
        self.entries
            .insert((world, commit), scratch.row.as_slice())?;
        let replaced = self.ids.insert(id, commit)?;
        assert!(
            replaced.is_none(),
            "entry hashes bind writer, seq and prev: an id never repeats"
        );
        drop(replaced);
        let term = &mut scratch.term;
        self.postings
            .insert((world, term.kind(content.kind.code()), commit), ())?;
        for label in &content.labels {
            self.postings
                .insert((world, term.label(label), commit), ())?;
        }
        self.postings
            .insert((world, term.writer(writer), commit), ())?;
        let initial = content.initial_state();
        if initial != LifecycleState::Asserted {
            self.enter_state(world, commit, commit, LifecycleState::Asserted, initial)?;
        }
        if !links_count {
            return Ok(());
        }
        for word in crate::constraint::key_words(&content.forbids) {
            self.forbids.insert((world, word.as_str(), commit), ())?;
        }
        // Trust counts one word per atom on each target: a second link of the same kind
        // to the same target moves nothing.
        let mut trusted_targets: Vec<(LinkKind, u64)> = Vec::new();
        for link in &content.links {
            let corrupt = |what: &str| StoreError::Corrupt {
                what: format!(
                    "atom {} of commit {commit} makes a transition on {}, which {what}",
                    hex::encode(id),
                    hex::encode(link.target)
                ),
            };
            // A link counts within its world; a target elsewhere, or nowhere (links
            // need not resolve), is in no index.
            let target_commit = match self.ids.get(&link.target)? {
                Some(target_commit) => target_commit.value(),
                None if link.kind.transition().is_some() => {
                    return Err(corrupt("does not exist"));
                }
                None => continue,
            };
            let trusted = match self.entries.get((world, target_commit))? {
                None if link.kind.transition().is_some() => {
                    return Err(corrupt("is in another world"));
                }
                None => continue,
                Some(row)
                    if matches!(link.kind, LinkKind::Confirms | LinkKind::Corrects)
                        && !trusted_targets.contains(&(link.kind, target_commit)) =>
                {
                    trusted_targets.push((link.kind, target_commit));
                    let (_, target_entry) = split_row(world, target_commit, row.value())?;
                    let facts =
                        EntryFacts::read(target_entry).ok_or_else(|| corrupt("does not decode"))?;
                    // Only another principal's word moves a writer's trust: across all
                    // its atoms (""), and on the target's first labels, those ranking
                    // weighs.
                    (facts.writer() != writer).then(|| {
                        let mut labels = vec![String::new()];
                        facts.any_label(&mut |label| {
                            labels.push(label.to_owned());
                            labels.len() > TRUST_LABELS_MAX
                        });
                        (*facts.writer(), labels)
                    })
                }
                Some(_) => None,
            };
            self.links
                .insert((world, target_commit, link.kind.code(), commit), ())?;
            if let Some((target_writer, labels)) = trusted {
                for label in &labels {
                    let (mut confirms, mut corrects) = self
                        .trust
                        .get((world, target_writer, label.as_str()))?
                        .map_or((0, 0), |counts| counts.value());
                    if link.kind == LinkKind::Confirms {
                        confirms += 1;
                    } else {
                        corrects += 1;
                    }
                    self.trust
                        .insert((world, target_writer, label.as_str()), (confirms, corrects))?;
                }
            }
            if let Some(transition) = link.kind.transition() {
                let from = state_at(&self.states, world, target_commit, u64::MAX)?;
                let to = transition
                    .from(from)
                    .ok_or_else(|| corrupt(&format!("is {from}")))?;
                self.enter_state(world, target_commit, commit, from, to)?;
            }
        }
        Ok(())
    }

    /// The position in `world`'s fleet stream this node holds.
    pub(crate) fn position(&self, world: &str) -> Result<u64, StoreError> {
        Ok(self.positions.get(world)?.map_or(0, |held| held.value()))
    }

    pub(crate) fn set_position(&mut self, world: &str, position: u64) -> Result<(), StoreError> {
        self.positions.insert(world, position)?;
        Ok(())
    }

    /// Stores an entry read back whole (from the journal, or a fleet stream): the entry,
    /// its indexes and its chain's head; counts it in `world`, whose record the caller
    /// writes.
    fn append(
        &mut self,
        scratch: &mut Scratch,
        atom: &crate::atom::Atom,
        entry: &[u8],
        world: &mut WorldInfo,
    ) -> Result<(), StoreError> {
        self.store_entry(
            scratch,
            &atom.world,
            atom.commit,
            &atom.id,
            entry,
            &atom.content,
            &atom.writer,
            atom.links_count,
        )?;
        self.heads
            .insert((atom.world.as_str(), atom.writer), (atom.seq, atom.id))?;
        world.atoms += 1;
        if world.dimension == 0 {
            world.dimension = atom.content.vector.len() as u32;
        }
        Ok(())
    }

    /// Moves the atom of `atom_commit` from `from` to `to` at `change_commit`.
    fn enter_state(
        &mut self,
        world: &str,
        atom_commit: u64,
        change_commit: u64,
        from: LifecycleState,
        to: LifecycleState,
    ) -> Result<(), StoreError> {
        let code = |state: LifecycleState| state.code() as u8;
        self.states
            .insert((world, atom_commit, change_commit), code(to))?;
        if from != LifecycleState::Asserted {
            self.in_state.remove((world, code(from), atom_commit))?;
        }
        self.in_state.insert((world, code(to), atom_commit), ())?;
        Ok(())
    }
}

/// The lifecycle state of the atom of `commit` in `world` as of commit `as_of`.
pub(crate) fn state_at(
    states: &impl ReadableTable<(&'static str, u64, u64), u8>,
    world: &str,
    commit: u64,
    as_of: u64,
) -> Result<LifecycleState, StoreError> {
    let Some(row) = states
        .range((world, commit, 0)..=(world, commit, as_of))?
        .next_back()
    else {
        return Ok(LifecycleState::Asserted);
    };
    let code = row?.1.value();
    LifecycleState::from_code(u16::from(code)).ok_or_else(|| StoreError::Corrupt {
        what: format!("lifecycle state code {code} of commit {commit} in {world:?}"),
    })
}

/// Buffers `store_entry` reuses for every entry of a transaction.
struct Scratch {
    row: Vec<u8>,
    term: Term,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            row: Vec::with_capacity(1024),
            term: Term::new(),
        }
    }
}

/// What a group did, besides its verdicts.
pub(crate) struct GroupOutcome {
    pub verdicts: Vec<Verdict>,
    /// A request other than `remember` changed something: the group must be committed
    /// durably in redb, not through the journal.
    pub needs_durable_commit: bool,
    /// The entries encoded into the journal's record, to store with [`store_group`].
    pub entries: Vec<PendingEntry>,
    /// Each request's part of the journal's record, for a fleet's streams.
    pub spans: Vec<Span>,
}

/// An entry of the group, encoded but not yet stored in the tables.
pub(crate) struct PendingEntry {
    /// Which request, and which atom of its batch.
    request: usize,
    atom: usize,
    commit: u64,
    id: Hash,
    /// Where its bytes are in the journal's record.
    bytes: Range<usize>,
}

/// Applies `requests` in order inside the transaction of `tables`: checks each, answers
/// it, and makes every change but one: the entries of remembered atoms are encoded into
/// the journal's open record and returned, and [`store_group`] stores them. The caller
/// writes the record, stores the entries while it syncs, and commits.
///
/// `message_bytes_max` is set in a fleet: a request whose part of the record would not
/// fit in one of its world's messages is refused.
pub(crate) fn prepare_group(
    tables: &mut Tables<'_>,
    requests: &[WriteRequest],
    journal: &mut Journal,
    message_bytes_max: Option<usize>,
) -> Result<GroupOutcome, StoreError> {
    let first_commit = last_commit(&tables.meta)?;
    let mut group = Group {
        last_commit: first_commit,
        commits: CommitSpace::read(&tables.meta)?,
        epoch: current_epoch(&tables.epochs)?,
        recorded_at_unix_ms: now_unix_ms(),
        request: 0,
        entries: Vec::with_capacity(requests.len()),
        journal,
        needs_durable_commit: false,
        states: HashMap::new(),
        keyed: HashMap::new(),
        scratch: Vec::new(),
        message_bytes_max,
        alone_with_fleet_worlds: message_bytes_max.is_none() && tables.positions.first()?.is_some(),
    };
    let mut verdicts = Vec::with_capacity(requests.len());
    let mut spans = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        group.request = index;
        let start = group.journal.entries().len();
        let verdict = apply_one(tables, &mut group, request)?;
        let end = group.journal.entries().len();
        if end > start {
            spans.push(Span {
                request: index,
                bytes: start..end,
            });
        }
        if verdict.is_ok() && !matches!(request.op, WriteOp::Remember { .. }) {
            group.needs_durable_commit = true;
        }
        verdicts.push(verdict);
    }
    assert!(group.last_commit >= first_commit, "commits never go back");
    if group.last_commit != first_commit {
        tables.meta.insert(META_LAST_COMMIT, group.last_commit)?;
    }
    Ok(GroupOutcome {
        verdicts,
        needs_durable_commit: group.needs_durable_commit,
        entries: group.entries,
        spans,
    })
}

/// Stores the entries [`prepare_group`] encoded; `record` is the journal's record body.
pub(crate) fn store_group(
    tables: &mut Tables<'_>,
    requests: &[WriteRequest],
    record: &[u8],
    entries: &[PendingEntry],
) -> Result<(), StoreError> {
    let mut scratch = Scratch::new();
    for entry in entries {
        let request = &requests[entry.request];
        let (WriteOp::Remember { world, atoms, .. }, Authority::Principal { key: writer, .. }) =
            (&request.op, &request.authority)
        else {
            unreachable!("only principals' remember requests encode entries");
        };
        tables.store_entry(
            &mut scratch,
            world,
            entry.commit,
            &entry.id,
            &record[entry.bytes.clone()],
            &atoms[entry.atom],
            writer,
            true,
        )?;
    }
    Ok(())
}

/// Applies again the journal records (`bodies`, in order) that the redb file does not
/// hold yet: the entries continuing its last commit. Returns how many it applied.
pub(crate) fn replay_journal(
    transaction: &WriteTransaction,
    bodies: &[Vec<u8>],
) -> Result<u64, StoreError> {
    let mut tables = Tables::open(transaction)?;
    let durable = last_commit(&tables.meta)?;
    let commits = CommitSpace::read(&tables.meta)?;
    let mut expected = commits.next(durable);
    let mut applied = 0;
    let mut scratch = Scratch::new();
    'records: for body in bodies {
        let Some(items) = journal::items_of(body) else {
            break;
        };
        for item in items {
            let entry = match item {
                Item::Entry(entry) => entry,
                Item::Key(record) => {
                    let record = KeyRecord::decode(record).ok_or_else(|| StoreError::Corrupt {
                        what: "an idempotency key record of the journal does not decode".into(),
                    })?;
                    // Its atoms come before it in the record: keep it if they were
                    // applied now (a key of atoms already in the file is there too).
                    if record.first_commit > durable {
                        record.insert(&mut tables.key_tables())?;
                    }
                    continue;
                }
            };
            let id = entry_hash(entry);
            let atom = decode_entry(id, entry)?;
            if atom.commit < expected && expected == commits.next(durable) {
                // Already in the redb file (written before its last checkpoint).
                continue;
            }
            if atom.commit != expected {
                // A gap or an older round's record: the journal ends here.
                break 'records;
            }
            let Some(mut info) = tables.policy().world(&atom.world)? else {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "the journal holds an atom of unknown world {:?}",
                        atom.world
                    ),
                });
            };
            tables.append(&mut scratch, &atom, entry, &mut info)?;
            tables.worlds.insert(atom.world.as_str(), info.record())?;
            tables.meta.insert(META_LAST_COMMIT, atom.commit)?;
            expected = commits.next(atom.commit);
            applied += 1;
        }
    }
    Ok(applied)
}

struct Group<'a> {
    last_commit: u64,
    commits: CommitSpace,
    epoch: Epoch,
    recorded_at_unix_ms: i64,
    /// The index of the request being applied.
    request: usize,
    /// Every entry encoded so far.
    entries: Vec<PendingEntry>,
    journal: &'a mut Journal,
    needs_durable_commit: bool,
    /// The lifecycle states this group's transitions set so far, by atom commit: the
    /// tables hold them only once the group's entries are stored.
    states: HashMap<u64, LifecycleState>,
    /// The receipts of the keyed requests of this group, by (world, writer, key): the
    /// tables hold their entries only once the group's entries are stored.
    keyed: HashMap<(String, PublicKey, Vec<u8>), Vec<Receipt>>,
    /// A buffer for request hashes.
    scratch: Vec<u8>,
    /// In a fleet, the most bytes of one message of a world's stream.
    message_bytes_max: Option<usize>,
    /// Alone, whether any world holds a fleet's stream position (a node that was in a
    /// fleet): only then is a world's position read before writing it.
    alone_with_fleet_worlds: bool,
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Which commit numbers a node gives out: every number when alone; in a fleet, those of
/// its slot, so that no two nodes ever give out the same commit (a commit names one atom
/// in the whole fleet), while a world's commits still increase as its owner changes: a
/// node gives out only commits above every commit it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitSpace {
    slot: Option<u64>,
}

/// Nodes a fleet may have: commits of a node in a fleet are `≡ slot (mod COMMIT_SLOTS)`.
pub const COMMIT_SLOTS: u64 = 1024;

impl CommitSpace {
    pub(crate) fn read(meta: &impl ReadableTable<&'static str, u64>) -> Result<Self, StoreError> {
        Ok(CommitSpace {
            slot: meta.get(META_COMMIT_SLOT)?.map(|slot| slot.value()),
        })
    }

    /// Whether the node is in a fleet (it has a slot).
    pub fn in_fleet(self) -> bool {
        self.slot.is_some()
    }

    /// The first commit this node gives out after `last`.
    pub fn next(self, last: u64) -> u64 {
        match self.slot {
            None => last + 1,
            Some(slot) => {
                let base = last - last % COMMIT_SLOTS + slot;
                if base > last {
                    base
                } else {
                    base + COMMIT_SLOTS
                }
            }
        }
    }
}

/// The last commit number given out (0 before the first atom).
pub(crate) fn last_commit(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, StoreError> {
    Ok(meta
        .get(META_LAST_COMMIT)?
        .map(|value| value.value())
        .unwrap_or(0))
}

pub(crate) fn current_epoch(
    epochs: &impl ReadableTable<u64, (Hash, i64)>,
) -> Result<Epoch, StoreError> {
    let (number, value) = epochs.last()?.ok_or_else(|| StoreError::Corrupt {
        what: "the epochs table is empty".into(),
    })?;
    let (head, advanced_at_unix_ms) = value.value();
    Ok(Epoch {
        number: number.value(),
        head,
        advanced_at_unix_ms,
    })
}

fn apply_one(
    tables: &mut Tables<'_>,
    group: &mut Group<'_>,
    request: &WriteRequest,
) -> Result<Verdict, StoreError> {
    // Authority first: a stale epoch or a revoked principal changes nothing.
    let policy = tables.policy();
    let actor = match policy.actor(group.epoch.number, request)? {
        Ok(actor) => actor,
        Err(error) => return Ok(Err(error)),
    };
    match &request.op {
        WriteOp::Remember { world, atoms, key } => {
            let Some(actor) = actor else {
                return Ok(Err(StoreError::PermissionDenied {
                    reason: "only principals remember atoms".into(),
                }));
            };
            remember(tables, group, &actor, world, atoms, key.as_deref())
        }
        WriteOp::RevokeToken { owner, id } => {
            if tables.revoked_tokens.len()? >= REVOKED_TOKENS_PER_EPOCH_MAX {
                return Ok(Err(StoreError::LimitReached {
                    reason: format!(
                        "the node holds {REVOKED_TOKENS_PER_EPOCH_MAX} revoked tokens in \
                         this epoch, its limit; advance the epoch to revoke every token"
                    ),
                }));
            }
            tables.revoked_tokens.insert(
                (group.epoch.number, id.as_slice()),
                (*owner, group.recorded_at_unix_ms),
            )?;
            Ok(Ok(WriteOutcome::TokenRevoked {
                owner: *owner,
                id: id.clone(),
            }))
        }
        WriteOp::SetCommitSlot(slot) => {
            if actor.is_some() || *slot >= COMMIT_SLOTS {
                return Ok(Err(StoreError::PermissionDenied {
                    reason: "only the node sets its commit slot".into(),
                }));
            }
            tables.meta.insert(META_COMMIT_SLOT, *slot)?;
            group.commits = CommitSpace::read(&tables.meta)?;
            Ok(Ok(WriteOutcome::CommitSlot))
        }
        WriteOp::Replicate {
            world,
            position,
            message,
        } => {
            if actor.is_some() {
                return Ok(Err(StoreError::PermissionDenied {
                    reason: "only the node stores its fleet's entries".into(),
                }));
            }
            replicate(tables, group, world, *position, message)
        }
        WriteOp::ApplyPolicy(changes) => {
            if actor.is_some() {
                return Ok(Err(StoreError::PermissionDenied {
                    reason: "only the node applies its fleet's policy changes".into(),
                }));
            }
            let mut applied = Vec::new();
            for change in changes {
                applied.extend(apply_change(tables, group, change)?);
            }
            Ok(Ok(WriteOutcome::Applied(applied)))
        }
        op => {
            let change = match policy.plan(&group.epoch, op, group.recorded_at_unix_ms)? {
                Ok(change) => change.expect("every other op is a policy op"),
                Err(error) => return Ok(Err(error)),
            };
            // A change planned here is answered as planned even when it leaves the
            // record as it was (archiving an archived world), as a node alone always has.
            apply_change(tables, group, &change)?;
            Ok(Ok(WriteOutcome::of(change)))
        }
    }
}

/// The entry named by a refusal of a whole message.
const WHOLE: (PublicKey, u64) = ([0; 32], 0);

/// Stores the entries of `message` (a fleet stream's message at `position` for `world`:
/// journal items, `replica.rs`) if every one continues its chain and the world's
/// commits; refuses the whole message otherwise. A position already held stores nothing.
fn replicate(
    tables: &mut Tables<'_>,
    group: &mut Group<'_>,
    world: &str,
    position: u64,
    message: &[u8],
) -> Result<Verdict, StoreError> {
    let held = tables.positions.get(world)?.map_or(0, |held| held.value());
    if position <= held {
        return Ok(Ok(WriteOutcome::Replicated {
            stored: 0,
            last_commit: None,
            refused: None,
        }));
    }
    // A world's stream numbers its messages 1, 2, 3...: one after a gap is never passed
    // (its follower reads again from the first it lacks).
    if position != held + 1 {
        return Ok(Err(StoreError::Replication {
            world: world.to_owned(),
            reason: format!(
                "message {position} of the stream came after {held}: message {} is missing",
                held + 1
            ),
        }));
    }
    let Some(mut info) = tables.policy().world(world)? else {
        return Ok(Err(StoreError::WorldNotFound {
            world: world.to_owned(),
        }));
    };
    // A refused message stores nothing, but its position is passed: the stream goes on.
    // One a node of the fleet signed (an empty message is one the follower found
    // unsigned) is recorded: the world here then differs from its stream, and `verify`
    // says so. `entry` names the entry refused, zero when the message was refused whole.
    let refused = |tables: &mut Tables<'_>, entry: (PublicKey, u64), reason: String| {
        tables.positions.insert(world, position)?;
        if !message.is_empty() {
            tables
                .refusals
                .insert((world, position), (entry.0, entry.1, reason.as_str()))?;
        }
        Ok(Ok(WriteOutcome::Replicated {
            stored: 0,
            last_commit: None,
            refused: Some(reason),
        }))
    };
    let Some(items) = journal::items_of(message) else {
        return refused(tables, WHOLE, "the message does not parse".into());
    };
    // Every entry is checked before the first is stored.
    let mut last = {
        let newest = tables
            .entries
            .range((world, 0)..=(world, u64::MAX))?
            .next_back();
        match newest {
            Some(row) => row?.0.value().1,
            None => 0,
        }
    };
    // A message this node stored before a crash took its position with it: it is held.
    let ids: Vec<Hash> = (items.iter())
        .filter_map(|item| match item {
            Item::Entry(bytes) => Some(entry_hash(bytes)),
            Item::Key(_) => None,
        })
        .collect();
    let mut stored = !ids.is_empty();
    for id in &ids {
        if tables.ids.get(id)?.is_none() {
            stored = false;
            break;
        }
    }
    if stored {
        tables.positions.insert(world, position)?;
        return Ok(Ok(WriteOutcome::Replicated {
            stored: 0,
            last_commit: None,
            refused: None,
        }));
    }
    let mut heads: HashMap<PublicKey, (u64, Hash)> = HashMap::new();
    let mut atoms = Vec::new();
    let mut keys = Vec::new();
    for item in items {
        let bytes = match item {
            Item::Key(bytes) => {
                match KeyRecord::decode(bytes).filter(|record| record.world == world) {
                    Some(record) => keys.push(record),
                    None => {
                        return refused(
                            tables,
                            WHOLE,
                            "a key record does not decode, or is another world's".into(),
                        );
                    }
                }
                continue;
            }
            Item::Entry(bytes) => bytes,
        };
        let id = entry_hash(bytes);
        let atom = match decode_entry(id, bytes) {
            Ok(atom) => atom,
            Err(error) => {
                return refused(tables, WHOLE, format!("an entry does not decode: {error}"));
            }
        };
        let at = format!("writer {} seq {}", hex::encode(atom.writer), atom.seq);
        let entry = (atom.writer, atom.seq);
        if atom.world != world {
            return refused(
                tables,
                entry,
                format!("{at} is an entry of world {:?}", atom.world),
            );
        }
        if let Err(error) = atom.content.validate() {
            return refused(tables, entry, format!("{at}: {error}"));
        }
        let (seq, prev) = match heads.get(&atom.writer) {
            Some(head) => *head,
            None => tables
                .heads
                .get((world, atom.writer))?
                .map_or((0, ZERO_HASH), |head| head.value()),
        };
        if atom.seq != seq + 1 || atom.prev != prev {
            return refused(
                tables,
                entry,
                format!(
                    "{at} does not continue its chain, whose head is seq {seq} ({})",
                    hex::encode(prev)
                ),
            );
        }
        if atom.commit <= last {
            return refused(
                tables,
                entry,
                format!(
                    "{at} has commit {}, not above the world's last, {last}",
                    atom.commit
                ),
            );
        }
        if tables.ids.get(&id)?.is_some() {
            return refused(
                tables,
                entry,
                format!("{at} ({}) is already stored", hex::encode(id)),
            );
        }
        heads.insert(atom.writer, (atom.seq, id));
        last = atom.commit;
        atoms.push((atom, bytes));
    }
    let mut scratch = Scratch::new();
    for (atom, bytes) in &atoms {
        tables.append(&mut scratch, atom, bytes, &mut info)?;
    }
    tables.worlds.insert(world, info.record())?;
    for record in &keys {
        record.insert(&mut tables.key_tables())?;
    }
    tables.positions.insert(world, position)?;
    group.last_commit = group.last_commit.max(last);
    Ok(Ok(WriteOutcome::Replicated {
        stored: atoms.len(),
        last_commit: atoms.last().map(|(atom, _)| atom.commit),
        refused: None,
    }))
}

/// Sets the record `change` describes; what it changed, none when it was already so.
fn apply_change(
    tables: &mut Tables<'_>,
    group: &mut Group<'_>,
    change: &PolicyChange,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut outcomes = Vec::new();
    match change {
        PolicyChange::Epoch(epoch) => {
            if epoch.number <= group.epoch.number {
                return Ok(outcomes);
            }
            tables
                .epochs
                .insert(epoch.number, (epoch.head, epoch.advanced_at_unix_ms))?;
            group.epoch = *epoch;
            // Every token of an older epoch is stale: its revocations need not be kept.
            tables.revoked_tokens.retain(|_, _| false)?;
        }
        PolicyChange::World(world) => {
            let existing = tables.policy().world(&world.name)?;
            let record = match existing {
                Some(existing) if existing.state == world.state => return Ok(outcomes),
                Some(existing) => WorldInfo {
                    state: world.state,
                    ..existing
                },
                None => WorldInfo {
                    atoms: 0,
                    ..world.clone()
                },
            };
            tables
                .worlds
                .insert(record.name.as_str(), record.record())?;
            outcomes.push(WriteOutcome::World(record));
            return Ok(outcomes);
        }
        PolicyChange::Principal(principal) => {
            let existing = tables.policy().principal_by_name(&principal.name)?;
            if existing.as_ref() == Some(principal) {
                return Ok(outcomes);
            }
            if let Some(existing) = existing
                && existing.public_key != principal.public_key
            {
                tables.principals.remove(existing.public_key)?;
                outcomes.push(WriteOutcome::PrincipalRemoved(existing));
            }
            // A key belongs to one name: another name holding it loses it.
            let other = tables.principals.get(principal.public_key)?;
            if let Some(other) = other
                .map(|bytes| Principal::decode(bytes.value()))
                .transpose()?
                && other.name != principal.name
            {
                tables.principal_names.remove(other.name.as_str())?;
                outcomes.push(WriteOutcome::PrincipalRemoved(other));
            }
            tables
                .principals
                .insert(principal.public_key, principal.encode().as_slice())?;
            tables
                .principal_names
                .insert(principal.name.as_str(), principal.public_key)?;
        }
        PolicyChange::PrincipalRemoved(principal) => {
            let Some(existing) = tables.policy().principal_by_name(&principal.name)? else {
                return Ok(outcomes);
            };
            tables.principals.remove(existing.public_key)?;
            tables.principal_names.remove(existing.name.as_str())?;
            outcomes.push(WriteOutcome::PrincipalRemoved(existing));
            return Ok(outcomes);
        }
    }
    outcomes.push(WriteOutcome::of(change.clone()));
    Ok(outcomes)
}

fn remember(
    tables: &mut Tables<'_>,
    group: &mut Group<'_>,
    writer: &Principal,
    world: &str,
    atoms: &[AtomContent],
    key: Option<&[u8]>,
) -> Result<Verdict, StoreError> {
    // Validate everything before the first insert.
    let mut info = match tables.worlds.get(world)? {
        Some(value) => WorldInfo::from_record(world, value.value())?,
        None => {
            return Ok(Err(StoreError::WorldNotFound {
                world: world.to_owned(),
            }));
        }
    };
    if !writer.holds(world, Right::Write) {
        return Ok(Err(StoreError::PermissionDenied {
            reason: format!(
                "principal {:?} holds no write grant in world {world:?}",
                writer.name
            ),
        }));
    }
    // A request already done answers as it did, whatever happened to the world since.
    let keyed = match key {
        Some(key) => match done_before(tables, group, writer, world, atoms, key)? {
            Ok(KeyedRequest::Done(receipts)) => {
                return Ok(Ok(WriteOutcome::Remembered {
                    receipts,
                    replayed: true,
                }));
            }
            Ok(KeyedRequest::New(request)) => Some((key, request)),
            Err(error) => return Ok(Err(error)),
        },
        None => None,
    };
    if info.state == WorldState::Archived {
        return Ok(Err(StoreError::WorldArchived {
            world: world.to_owned(),
        }));
    }
    if atoms.is_empty() || atoms.len() > BATCH_ATOMS_MAX {
        return Ok(Err(StoreError::InvalidBatch {
            reason: format!(
                "a batch holds 1 to {BATCH_ATOMS_MAX} atoms; this one holds {}",
                atoms.len()
            ),
        }));
    }
    for (index, atom) in atoms.iter().enumerate() {
        if let Err(reason) = atom.validate() {
            return Ok(Err(StoreError::InvalidAtom { index, reason }));
        }
        // The world's first vector fixes its dimension; every later one must match.
        if !atom.vector.is_empty() {
            let dimension = atom.vector.len() as u32;
            if info.dimension == 0 {
                info.dimension = dimension;
            } else if info.dimension != dimension {
                return Ok(Err(StoreError::InvalidAtom {
                    index,
                    reason: format!(
                        "its vector has {dimension} dimensions; world {world:?} holds vectors of {}",
                        info.dimension
                    ),
                }));
            }
        }
    }

    // Alone, a world a fleet's stream holds is not written: its entries are the
    // stream's, and chains extended here would fork from the fleet's.
    if group.alone_with_fleet_worlds && tables.position(world)? > 0 {
        return Ok(Err(StoreError::Replication {
            world: world.to_owned(),
            reason: "this node runs alone, and the world is a fleet's (its entries come \
                     from the fleet's stream, which holds them): start the node with --nats \
                     to write it"
                .into(),
        }));
    }
    // In a fleet, the request must fit in one message of its world's stream.
    if let Some(bytes_max) = group.message_bytes_max {
        let bytes = atoms
            .iter()
            .map(|atom| journal::ITEM_PREFIX_BYTES + encoded_entry_len(world, atom))
            .sum::<usize>()
            + key.map_or(0, |key| {
                journal::ITEM_PREFIX_BYTES + KeyRecord::encoded_len(world, key)
            });
        if bytes > bytes_max {
            return Ok(Err(StoreError::InvalidBatch {
                reason: format!(
                    "its entries take {bytes} bytes; this fleet carries at most {bytes_max} \
                     bytes of a request in one message: split the batch"
                ),
            }));
        }
    }

    // Every transition must be legal where its target stands, after the transitions
    // before it in the group and in the batch.
    let count: usize = atoms.iter().map(|atom| atom.transitions().count()).sum();
    if count > TRANSITIONS_PER_REQUEST_MAX {
        return Ok(Err(StoreError::InvalidBatch {
            reason: format!(
                "the request makes {count} lifecycle transitions; the limit is \
                 {TRANSITIONS_PER_REQUEST_MAX}"
            ),
        }));
    }
    let mut transitions = HashMap::new();
    for (index, atom) in atoms.iter().enumerate() {
        for (transition, target) in atom.transitions() {
            let checked = check_transition(
                tables,
                group,
                &transitions,
                writer,
                world,
                transition,
                target,
            )?;
            match checked {
                Ok((commit, state)) => {
                    transitions.insert(commit, state);
                }
                Err(error) => {
                    return Ok(Err(match error {
                        StoreError::IllegalTransition { reason } if atoms.len() > 1 => {
                            StoreError::IllegalTransition {
                                reason: format!("atom {index} of the batch: {reason}"),
                            }
                        }
                        other => other,
                    }));
                }
            }
        }
    }
    group.states.extend(transitions);

    let key = writer.public_key;
    let (mut seq, mut prev) = match tables.heads.get((world, key))? {
        Some(head) => head.value(),
        None => (0, ZERO_HASH),
    };
    let mut receipts = Vec::with_capacity(atoms.len());
    for (index, content) in atoms.iter().enumerate() {
        let entry_seq = seq + 1;
        let commit = group.commits.next(group.last_commit);
        let header = EntryHeader {
            world,
            writer: &key,
            seq: entry_seq,
            prev: &prev,
            commit,
            recorded_at_unix_ms: group.recorded_at_unix_ms,
        };
        let bytes = group
            .journal
            .push_entry(|out| encode_entry(&header, content, out));
        debug_assert_eq!(bytes.len(), encoded_entry_len(world, content));
        let id = entry_hash(&group.journal.entries()[bytes.clone()]);
        group.entries.push(PendingEntry {
            request: group.request,
            atom: index,
            commit,
            id,
            bytes,
        });
        receipts.push(Receipt {
            id,
            seq: entry_seq,
            commit,
            prev,
        });
        seq = entry_seq;
        prev = id;
        group.last_commit = commit;
    }
    tables.heads.insert((world, key), (seq, prev))?;
    info.atoms += atoms.len() as u64;
    tables.worlds.insert(world, info.record())?;
    if let Some((idempotency_key, request)) = keyed {
        let record = KeyRecord {
            world,
            writer: key,
            key: idempotency_key,
            request,
            recorded_at_unix_ms: group.recorded_at_unix_ms,
            first_commit: receipts[0].commit,
            count: receipts.len() as u32,
        };
        let mut key_tables = tables.key_tables();
        record.insert(&mut key_tables)?;
        idempotency::prune(&mut key_tables, group.recorded_at_unix_ms)?;
        group.journal.push_key(|out| record.encode(out));
        group.keyed.insert(
            (world.to_owned(), key, idempotency_key.to_vec()),
            receipts.clone(),
        );
    }
    Ok(Ok(WriteOutcome::Remembered {
        receipts,
        replayed: false,
    }))
}

/// What an idempotency key says of a request.
enum KeyedRequest {
    /// It was done: these are its receipts.
    Done(Vec<Receipt>),
    /// It is new; its hash goes into the key's record.
    New(Hash),
}

/// Whether `writer` already made this request with `key` in `world`, within the
/// window: in this group, or in the tables. The same key with other atoms is a
/// conflict.
fn done_before(
    tables: &Tables<'_>,
    group: &mut Group<'_>,
    writer: &Principal,
    world: &str,
    atoms: &[AtomContent],
    key: &[u8],
) -> Result<Result<KeyedRequest, StoreError>, StoreError> {
    if let Err(error) = idempotency::validate_key(key) {
        return Ok(Err(error));
    }
    let request = idempotency::request_hash(atoms, &mut group.scratch);
    let Some(found) = idempotency::find(
        &tables.idempotency_keys,
        world,
        &writer.public_key,
        key,
        group.recorded_at_unix_ms,
    )?
    else {
        return Ok(Ok(KeyedRequest::New(request)));
    };
    let (done, _, first_commit, _) = found;
    if done != request {
        return Ok(Err(StoreError::IdempotencyConflict {
            key: hex::encode(key),
            commit: first_commit,
        }));
    }
    let pending = group
        .keyed
        .get(&(world.to_owned(), writer.public_key, key.to_vec()));
    Ok(Ok(KeyedRequest::Done(match pending {
        Some(receipts) => receipts.clone(),
        None => idempotency::receipts(&tables.entries, world, found)?,
    })))
}

/// Checks one transition `writer` makes on `target` in `world`: the target exists in
/// this world and is not itself a transition, the writer holds the right, and the
/// transition is legal from the target's state (as the request's `earlier` changes and
/// the group's leave it). Returns the target's commit and its new state.
fn check_transition(
    tables: &Tables<'_>,
    group: &Group<'_>,
    earlier: &HashMap<u64, LifecycleState>,
    writer: &Principal,
    world: &str,
    transition: Transition,
    target: &Hash,
) -> Result<Result<(u64, LifecycleState), StoreError>, StoreError> {
    let named = hex::encode(target);
    let illegal = |reason: String| Ok(Err(StoreError::IllegalTransition { reason }));
    // An atom of another world is not found either: whether an id exists in a world
    // the writer may hold no grant for is not its to learn.
    let not_found = || {
        Ok(Err(StoreError::AtomNotFound {
            world: world.to_owned(),
            id: named.clone(),
        }))
    };
    let Some(commit) = tables.ids.get(target)?.map(|commit| commit.value()) else {
        return not_found();
    };
    let Some(row) = tables.entries.get((world, commit))? else {
        return not_found();
    };
    let (_, entry) = split_row(world, commit, row.value())?;
    let facts = EntryFacts::read(entry).ok_or_else(|| StoreError::Corrupt {
        what: format!("the entry of commit {commit} in {world:?} does not decode"),
    })?;
    if facts.kind() == AtomKind::Transition {
        return illegal(format!(
            "atom {named} is a transition; a transition stands as written"
        ));
    }
    let own = *facts.writer() == writer.public_key;
    if transition == Transition::Retract && !own {
        return Ok(Err(StoreError::PermissionDenied {
            reason: format!("only its writer may retract atom {named}"),
        }));
    }
    if transition.needs_approve_right(own) && !writer.holds(world, Right::Approve) {
        return Ok(Err(StoreError::PermissionDenied {
            reason: format!(
                "principal {:?} holds no approve right in world {world:?}: it may not \
                 {transition} {}",
                writer.name,
                if own {
                    "atoms"
                } else {
                    "another writer's atoms"
                }
            ),
        }));
    }
    let from = match earlier
        .get(&commit)
        .or_else(|| group.states.get(&commit))
        .copied()
    {
        Some(state) => state,
        None => state_at(&tables.states, world, commit, u64::MAX)?,
    };
    match transition.from(from) {
        Some(to) => Ok(Ok((commit, to))),
        None => illegal(format!("cannot {transition} atom {named}: it is {from}")),
    }
}
