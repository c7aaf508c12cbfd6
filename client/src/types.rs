//! Owned, typed views of the schema's data, with JSON renderings for the CLI.

use engram_schema::engram_capnp as wire;
use serde_json::{Value, json};

use crate::error::ClientError;

/// Atom kinds by schema name.
pub const KINDS: [(&str, wire::AtomKind); 10] = [
    ("observation", wire::AtomKind::Observation),
    ("fact", wire::AtomKind::Fact),
    ("decision", wire::AtomKind::Decision),
    ("plan", wire::AtomKind::Plan),
    ("constraint", wire::AtomKind::Constraint),
    ("correction", wire::AtomKind::Correction),
    ("message", wire::AtomKind::Message),
    ("question", wire::AtomKind::Question),
    ("preference", wire::AtomKind::Preference),
    ("transition", wire::AtomKind::Transition),
];

/// Lifecycle states by schema name.
pub const STATES: [(&str, wire::LifecycleState); 7] = [
    ("asserted", wire::LifecycleState::Asserted),
    ("proposed", wire::LifecycleState::Proposed),
    ("approved", wire::LifecycleState::Approved),
    ("rejected", wire::LifecycleState::Rejected),
    ("deprecated", wire::LifecycleState::Deprecated),
    ("superseded", wire::LifecycleState::Superseded),
    ("retracted", wire::LifecycleState::Retracted),
];

/// Link kinds by schema name.
pub const LINK_KINDS: [(&str, wire::LinkKind); 9] = [
    ("supersedes", wire::LinkKind::Supersedes),
    ("contradicts", wire::LinkKind::Contradicts),
    ("confirms", wire::LinkKind::Confirms),
    ("corrects", wire::LinkKind::Corrects),
    ("derivedFrom", wire::LinkKind::DerivedFrom),
    ("approves", wire::LinkKind::Approves),
    ("rejects", wire::LinkKind::Rejects),
    ("deprecates", wire::LinkKind::Deprecates),
    ("retracts", wire::LinkKind::Retracts),
];

/// The value named `name` in a table of schema names; `what` names the table in the
/// error.
fn by_name<T: Copy>(table: &[(&str, T)], name: &str, what: &str) -> Result<T, ClientError> {
    table
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(known, _)| *known).collect();
            ClientError::InvalidInput(format!(
                "unknown {what} {name:?}; {what}s are {}",
                names.join(", ")
            ))
        })
}

/// The schema name of a value of a table of schema names.
fn name_of<T: Copy + PartialEq>(table: &[(&'static str, T)], value: T) -> &'static str {
    table
        .iter()
        .find(|(_, known)| *known == value)
        .map(|(name, _)| *name)
        .expect("the table lists every value of the schema")
}

/// The lifecycle state with this schema name.
pub fn state_from_name(name: &str) -> Result<wire::LifecycleState, ClientError> {
    by_name(&STATES, name, "state")
}

/// The schema name of a lifecycle state.
pub fn state_name(state: wire::LifecycleState) -> &'static str {
    name_of(&STATES, state)
}

/// The link kind with this schema name.
pub fn link_kind_from_name(name: &str) -> Result<wire::LinkKind, ClientError> {
    by_name(&LINK_KINDS, name, "link kind")
}

/// The schema name of a link kind.
pub fn link_kind_name(kind: wire::LinkKind) -> &'static str {
    name_of(&LINK_KINDS, kind)
}

/// The kind with this schema name.
pub fn kind_from_name(name: &str) -> Result<wire::AtomKind, ClientError> {
    by_name(&KINDS, name, "kind")
}

/// The schema name of a kind.
pub fn kind_name(kind: wire::AtomKind) -> &'static str {
    name_of(&KINDS, kind)
}

fn text(reader: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, ClientError> {
    Ok(reader?.to_string().map_err(capnp::Error::from)?)
}

fn hash(reader: capnp::Result<capnp::data::Reader<'_>>) -> Result<[u8; 32], ClientError> {
    reader?.try_into().map_err(|_| {
        ClientError::InvalidInput("the node sent a hash or key that is not 32 bytes".into())
    })
}

/// Content for a new atom.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAtom {
    pub kind: wire::AtomKind,
    pub text: String,
    pub labels: Vec<String>,
    pub importance: f32,
    pub confidence: f32,
    pub payload: Vec<u8>,
    /// An embedding; the world's first vector fixes its dimension.
    pub vector: Vec<f32>,
    /// When the atom holds in the world, if it claims to.
    pub valid_time: Option<ValidTime>,
    /// Typed references to earlier atoms (a `supersedes` link replaces its target).
    pub links: Vec<Link>,
    /// Written as a proposal rather than asserted.
    pub proposed: bool,
    /// What a constraint forbids: words or phrases a plan must not contain.
    pub forbids: Vec<String>,
}

/// A typed reference from one atom to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub kind: wire::LinkKind,
    pub target: [u8; 32],
}

impl Link {
    fn to_json(self) -> Value {
        json!({"kind": link_kind_name(self.kind), "target": hex::encode(self.target)})
    }
}

/// An interval of validity in the world (unix ms); `until_unix_ms` 0 is open-ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidTime {
    pub from_unix_ms: i64,
    pub until_unix_ms: i64,
}

impl ValidTime {
    fn to_json(self) -> Value {
        json!({"fromUnixMs": self.from_unix_ms, "untilUnixMs": self.until_unix_ms})
    }
}

impl NewAtom {
    /// An atom of `kind` with default importance (0.5) and confidence (1).
    pub fn new(kind: wire::AtomKind, text: impl Into<String>) -> NewAtom {
        NewAtom {
            kind,
            text: text.into(),
            labels: Vec::new(),
            importance: 0.5,
            confidence: 1.0,
            payload: Vec::new(),
            vector: Vec::new(),
            valid_time: None,
            links: Vec::new(),
            proposed: false,
            forbids: Vec::new(),
        }
    }

    /// A constraint forbidding `terms` (words or phrases), `text` saying why and what
    /// to do instead.
    pub fn constraint(text: impl Into<String>, terms: &[&str]) -> NewAtom {
        let mut atom = NewAtom::new(wire::AtomKind::Constraint, text);
        atom.forbids = terms.iter().map(|term| term.to_string()).collect();
        atom
    }

    /// The same atom as a proposal: not current knowledge until approved.
    pub fn proposed(mut self) -> NewAtom {
        self.proposed = true;
        self
    }

    /// The same atom, replacing the atom `target` (which becomes superseded).
    pub fn supersedes(self, target: [u8; 32]) -> NewAtom {
        self.link(wire::LinkKind::Supersedes, target)
    }

    /// The same atom with one more link.
    pub fn link(mut self, kind: wire::LinkKind, target: [u8; 32]) -> NewAtom {
        self.links.push(Link { kind, target });
        self
    }

    /// The same atom, claimed to hold in the world from `from_unix_ms` until
    /// `until_unix_ms` (0: open-ended).
    pub fn valid(mut self, from_unix_ms: i64, until_unix_ms: i64) -> NewAtom {
        self.valid_time = Some(ValidTime {
            from_unix_ms,
            until_unix_ms,
        });
        self
    }

    /// The same atom with this vector.
    pub fn vector(mut self, vector: Vec<f32>) -> NewAtom {
        self.vector = vector;
        self
    }

    /// A fact.
    pub fn fact(text: impl Into<String>) -> NewAtom {
        NewAtom::new(wire::AtomKind::Fact, text)
    }

    /// The same atom with these labels.
    pub fn labels(mut self, labels: &[&str]) -> NewAtom {
        self.labels = labels.iter().map(|label| label.to_string()).collect();
        self
    }

    /// The same atom with this importance.
    pub fn importance(mut self, importance: f32) -> NewAtom {
        self.importance = importance;
        self
    }

    /// Fills a schema `AtomContent`.
    pub fn fill(&self, mut builder: wire::atom_content::Builder<'_>) {
        builder.set_kind(self.kind);
        builder.set_text(self.text.as_str());
        builder.set_importance(self.importance);
        builder.set_confidence(self.confidence);
        builder.set_proposed(self.proposed);
        if !self.forbids.is_empty() {
            let mut forbids = builder.reborrow().init_forbids(self.forbids.len() as u32);
            for (index, term) in self.forbids.iter().enumerate() {
                forbids.set(index as u32, term.as_str());
            }
        }
        if !self.links.is_empty() {
            let mut links = builder.reborrow().init_links(self.links.len() as u32);
            for (index, link) in self.links.iter().enumerate() {
                let mut wire_link = links.reborrow().get(index as u32);
                wire_link.set_kind(link.kind);
                wire_link.set_target(&link.target);
            }
        }
        if !self.payload.is_empty() {
            builder.set_payload(&self.payload);
        }
        let mut labels = builder.reborrow().init_labels(self.labels.len() as u32);
        for (index, label) in self.labels.iter().enumerate() {
            labels.set(index as u32, label.as_str());
        }
        if let Some(valid) = self.valid_time {
            let mut interval = builder.reborrow().get_valid_time().init_interval();
            interval.set_from_unix_ms(valid.from_unix_ms);
            interval.set_until_unix_ms(valid.until_unix_ms);
        }
        if !self.vector.is_empty() {
            let mut vector = builder.init_vector(self.vector.len() as u32);
            for (index, component) in self.vector.iter().enumerate() {
                vector.set(index as u32, *component);
            }
        }
    }
}

/// A committed atom.
#[derive(Clone, Debug, PartialEq)]
pub struct AtomView {
    pub id: [u8; 32],
    pub world: String,
    pub writer: [u8; 32],
    pub seq: u64,
    pub prev: [u8; 32],
    pub commit: u64,
    pub recorded_at_unix_ms: i64,
    pub kind: wire::AtomKind,
    pub text: String,
    pub labels: Vec<String>,
    pub importance: f32,
    pub confidence: f32,
    pub payload: Vec<u8>,
    /// Its embedding (empty: none).
    pub vector: Vec<f32>,
    /// When the atom claims to hold in the world, if it does.
    pub valid_time: Option<ValidTime>,
    pub links: Vec<Link>,
    /// Where it stands as of the answer (now, or the call's `asOf`).
    pub state: wire::LifecycleState,
    /// What it forbids, if it is a constraint.
    pub forbids: Vec<String>,
}

impl AtomView {
    pub fn read(reader: wire::atom::Reader<'_>) -> Result<AtomView, ClientError> {
        let content = reader.get_content()?;
        let mut labels = Vec::new();
        for label in content.get_labels()?.iter() {
            labels.push(text(label)?);
        }
        let mut forbids = Vec::new();
        for term in content.get_forbids()?.iter() {
            forbids.push(text(term)?);
        }
        let mut links = Vec::new();
        for link in content.get_links()?.iter() {
            links.push(Link {
                kind: link.get_kind().map_err(capnp::Error::from)?,
                target: hash(link.get_target())?,
            });
        }
        let valid_time = match content
            .get_valid_time()
            .which()
            .map_err(capnp::Error::from)?
        {
            wire::atom_content::valid_time::Unknown(()) => None,
            wire::atom_content::valid_time::Interval(interval) => {
                let interval = interval?;
                Some(ValidTime {
                    from_unix_ms: interval.get_from_unix_ms(),
                    until_unix_ms: interval.get_until_unix_ms(),
                })
            }
        };
        Ok(AtomView {
            id: hash(reader.get_id())?,
            world: text(reader.get_world())?,
            writer: hash(reader.get_writer())?,
            seq: reader.get_seq(),
            prev: hash(reader.get_prev())?,
            commit: reader.get_commit(),
            recorded_at_unix_ms: reader.get_recorded_at_unix_ms(),
            kind: content.get_kind().map_err(capnp::Error::from)?,
            text: text(content.get_text())?,
            labels,
            importance: content.get_importance(),
            confidence: content.get_confidence(),
            payload: content.get_payload()?.to_vec(),
            vector: content.get_vector()?.iter().collect(),
            valid_time,
            links,
            state: reader.get_state().map_err(capnp::Error::from)?,
            forbids,
        })
    }

    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": hex::encode(self.id),
            "world": self.world,
            "writer": hex::encode(self.writer),
            "seq": self.seq,
            "prev": hex::encode(self.prev),
            "commit": self.commit,
            "recordedAtUnixMs": self.recorded_at_unix_ms,
            "kind": kind_name(self.kind),
            "text": self.text,
            "labels": self.labels,
            "importance": self.importance,
            "confidence": self.confidence,
            "payload": String::from_utf8(self.payload.clone()).map(Value::String).unwrap_or_else(|_| Value::String(hex::encode(&self.payload))),
            "validTime": self.valid_time.map(ValidTime::to_json),
            "links": self.links.iter().map(|link| link.to_json()).collect::<Vec<_>>(),
            "state": state_name(self.state),
            "forbids": self.forbids,
        })
    }
}

/// One answer of `ask`, with its score.
#[derive(Clone, Debug, PartialEq)]
pub struct HitView {
    pub atom: AtomView,
    pub score: f64,
    /// Cosine similarity to the query vector (0 for structured asks).
    pub similarity: f32,
    /// Each factor of the score, when the ask asked to explain.
    pub explanation: String,
    /// Ids of the live atoms that contradict this one or that it contradicts.
    pub contradictions: Vec<[u8; 32]>,
}

/// One constraint a plan violates (`WorldReader.check`).
#[derive(Clone, Debug, PartialEq)]
pub struct ViolationView {
    /// Who stated it (`writer`), when (`commit`, `recorded_at_unix_ms`), why (`text`).
    pub constraint: AtomView,
    /// Its forbidden terms the plan contains.
    pub matched: Vec<String>,
}

impl ViolationView {
    pub fn to_json(&self) -> Value {
        json!({"constraint": self.constraint.to_json(), "matched": self.matched})
    }
}

/// One read in the audit trail (`Admin.audit`).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditView {
    pub principal: [u8; 32],
    pub world: String,
    /// ask, check, get, replay, diff, or subscribe (one push of a subscription).
    pub method: String,
    /// The capability's restriction (JSON; `{}` for none).
    pub restriction: String,
    /// The method's parameters (JSON).
    pub query: String,
    /// The ids answered, in order.
    pub ids: Vec<[u8; 32]>,
    /// The node's last commit when the read's snapshot was taken.
    pub commit: u64,
    pub sequence: u64,
    pub at_unix_ms: i64,
}

impl AuditView {
    pub fn read(reader: wire::audit_record::Reader<'_>) -> Result<AuditView, ClientError> {
        let mut ids = Vec::new();
        for id in reader.get_ids()?.iter() {
            ids.push(hash(id)?);
        }
        Ok(AuditView {
            principal: hash(reader.get_principal())?,
            world: text(reader.get_world())?,
            method: text(reader.get_method())?,
            restriction: text(reader.get_restriction())?,
            query: text(reader.get_query())?,
            ids,
            commit: reader.get_commit(),
            sequence: reader.get_sequence(),
            at_unix_ms: reader.get_at_unix_ms(),
        })
    }

    pub fn to_json(&self) -> Value {
        let parsed = |text: &str| serde_json::from_str(text).unwrap_or(Value::String(text.into()));
        json!({
            "principal": hex::encode(self.principal),
            "world": self.world,
            "method": self.method,
            "restriction": parsed(&self.restriction),
            "query": parsed(&self.query),
            "ids": self.ids.iter().map(hex::encode).collect::<Vec<_>>(),
            "commit": self.commit,
            "sequence": self.sequence,
            "atUnixMs": self.at_unix_ms,
        })
    }
}

/// What `check` answered.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckAnswer {
    /// Oldest constraint first; empty when the plan violates nothing.
    pub violations: Vec<ViolationView>,
    /// Empty unless the check stopped at its budget before examining every candidate.
    pub warning: String,
}

/// A writer's trust on a label (`WorldReader.trust`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrustView {
    /// (1 + confirms) / (2 + confirms + corrects).
    pub score: f64,
    pub confirms: u64,
    pub corrects: u64,
}

impl TrustView {
    pub fn to_json(&self) -> Value {
        json!({"score": self.score, "confirms": self.confirms, "corrects": self.corrects})
    }
}

/// What `ask` answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub hits: Vec<HitView>,
    /// Empty unless the answer is incomplete or was not served entirely by the indexes.
    pub warning: String,
    /// Set when a newest-first answer stopped at the node's budget for one call, or at
    /// what the capability's rate pays for: ask again with `Filter::before_commit` set
    /// to it for the next page.
    pub resume_before_commit: Option<u64>,
}

/// The acknowledgement of one durable write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub id: [u8; 32],
    pub seq: u64,
    pub commit: u64,
    pub prev: [u8; 32],
}

impl Receipt {
    pub fn read(reader: wire::receipt::Reader<'_>) -> Result<Receipt, ClientError> {
        Ok(Receipt {
            id: hash(reader.get_id())?,
            seq: reader.get_seq(),
            commit: reader.get_commit(),
            prev: hash(reader.get_prev())?,
        })
    }

    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    pub fn to_json(&self) -> Value {
        json!({"id": hex::encode(self.id), "seq": self.seq, "commit": self.commit, "prev": hex::encode(self.prev)})
    }
}

/// What a keyed `remember` answered: the receipts, and whether they are a request's
/// done before (the node wrote nothing this time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    pub receipts: Vec<Receipt>,
    pub replayed: bool,
}

/// A client-chosen key that makes a `remember` safe to retry (1 to 64 bytes): one per
/// request, reused only to retry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(Vec<u8>);

impl IdempotencyKey {
    /// The most bytes a key holds.
    pub const BYTES_MAX: usize = 64;

    /// A new key: 16 random bytes, as 32 hex digits, so that it can be shown to a user
    /// and given back (`engram remember --idempotency-key`) to retry the request.
    pub fn random() -> Result<IdempotencyKey, ClientError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|error| {
            ClientError::InvalidInput(format!("no randomness for an idempotency key: {error}"))
        })?;
        Ok(IdempotencyKey(hex::encode(bytes).into_bytes()))
    }

    /// A key of the caller's choosing, e.g. a job's name, so that running the job again
    /// does not write again.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<IdempotencyKey, ClientError> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > Self::BYTES_MAX {
            return Err(ClientError::InvalidInput(format!(
                "an idempotency key is 1 to {} bytes; this one is {}",
                Self::BYTES_MAX,
                bytes.len()
            )));
        }
        Ok(IdempotencyKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// An epoch of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub number: u64,
    pub head: [u8; 32],
    pub advanced_at_unix_ms: i64,
}

impl Epoch {
    pub fn read(reader: wire::epoch::Reader<'_>) -> Result<Epoch, ClientError> {
        Ok(Epoch {
            number: reader.get_number(),
            head: hash(reader.get_head())?,
            advanced_at_unix_ms: reader.get_advanced_at_unix_ms(),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({"number": self.number, "head": hex::encode(self.head), "advancedAtUnixMs": self.advanced_at_unix_ms})
    }
}

/// The head of one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub writer: [u8; 32],
    pub seq: u64,
    pub id: [u8; 32],
}

impl Head {
    pub fn to_json(&self) -> Value {
        json!({"writer": hex::encode(self.writer), "seq": self.seq, "id": hex::encode(self.id)})
    }
}

/// Where one world stands, as one reader may know it (`WorldReader.generation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The node's last commit when it answered.
    pub node_commit: u64,
    /// The commit of the world's newest atom the reader may know of: unchanged since
    /// the previous call means nothing new for this reader.
    pub last_commit: u64,
    /// Atoms in the world, when `counted` (not through a restriction that hides atoms).
    pub atoms: u64,
    pub counted: bool,
}

impl Generation {
    pub fn to_json(&self) -> Value {
        json!({
            "node_commit": self.node_commit,
            "last_commit": self.last_commit,
            "atoms": self.counted.then_some(self.atoms),
        })
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub chains: u64,
    pub entries: u64,
    /// `(writer, seq, reason)` of the first bad entry.
    pub first_bad: Option<([u8; 32], u64, String)>,
}

impl Verification {
    pub fn to_json(&self) -> Value {
        let bad = self.first_bad.as_ref().map(|(writer, seq, reason)| {
            json!({"writer": hex::encode(writer), "seq": seq, "reason": reason})
        });
        json!({"ok": bad.is_none(), "chains": self.chains, "entries": self.entries, "firstBad": bad})
    }
}

/// Filters of `ask`.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub kinds: Vec<wire::AtomKind>,
    pub labels: Vec<String>,
    pub writers: Vec<[u8; 32]>,
    pub min_importance: f32,
    pub max_importance: f32,
    pub limit: u32,
    pub before_commit: u64,
    /// Similarity search by this vector; empty for none.
    pub vector: Vec<f32>,
    /// Lexical search by these words (fused with `vector` when both are given).
    pub text: String,
    /// Ask the node to explain each score.
    pub explain: bool,
    /// Only atoms claimed to hold in the world at this instant (unix ms).
    pub valid_at: Option<i64>,
    /// As the world stood at this commit: only atoms committed at or before it, in
    /// the states they had then (0: now).
    pub as_of: u64,
    /// Only atoms in these lifecycle states; empty: current knowledge (asserted or
    /// approved).
    pub states: Vec<wire::LifecycleState>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            kinds: Vec::new(),
            labels: Vec::new(),
            writers: Vec::new(),
            min_importance: 0.0,
            max_importance: 1.0,
            limit: 20,
            before_commit: 0,
            vector: Vec::new(),
            text: String::new(),
            explain: false,
            valid_at: None,
            as_of: 0,
            states: Vec::new(),
        }
    }
}

impl Filter {
    pub fn fill(&self, mut builder: wire::query::Builder<'_>) {
        let mut kinds = builder.reborrow().init_kinds(self.kinds.len() as u32);
        for (index, kind) in self.kinds.iter().enumerate() {
            kinds.set(index as u32, *kind);
        }
        let mut labels = builder.reborrow().init_labels(self.labels.len() as u32);
        for (index, label) in self.labels.iter().enumerate() {
            labels.set(index as u32, label.as_str());
        }
        let mut writers = builder.reborrow().init_writers(self.writers.len() as u32);
        for (index, writer) in self.writers.iter().enumerate() {
            writers.set(index as u32, writer);
        }
        if !self.states.is_empty() {
            let mut states = builder.reborrow().init_states(self.states.len() as u32);
            for (index, state) in self.states.iter().enumerate() {
                states.set(index as u32, *state);
            }
        }
        builder.set_min_importance(self.min_importance);
        builder.set_max_importance(self.max_importance);
        builder.set_limit(self.limit);
        builder.set_before_commit(self.before_commit);
        builder.set_as_of(self.as_of);
        builder.set_explain(self.explain);
        builder.set_text(self.text.as_str());
        if let Some(instant) = self.valid_at {
            builder.reborrow().get_valid_at().set_instant(instant);
        }
        if !self.vector.is_empty() {
            let mut vector = builder.init_vector(self.vector.len() as u32);
            for (index, component) in self.vector.iter().enumerate() {
                vector.set(index as u32, *component);
            }
        }
    }
}

/// A narrowing for `attenuate`; empty lists narrow nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Restriction {
    pub worlds: Vec<String>,
    pub kinds: Vec<wire::AtomKind>,
    pub labels: Vec<String>,
    pub max_importance: f32,
    pub expires_at_unix_ms: i64,
    /// How fast the narrowed capability may be used, on top of its holder's rates.
    pub rate: Rate,
    /// Take away the approve right: a writer that may only propose, assert and retract
    /// its own atoms.
    pub without_approve: bool,
    /// Take away `save`: a capability whose authority cannot outlive the connection it
    /// is handed on (what a spawned child is given).
    pub without_save: bool,
}

impl Default for Restriction {
    fn default() -> Self {
        Restriction {
            worlds: Vec::new(),
            kinds: Vec::new(),
            labels: Vec::new(),
            max_importance: 1.0,
            expires_at_unix_ms: 0,
            rate: Rate::default(),
            without_approve: false,
            without_save: false,
        }
    }
}

/// A token-bucket rate of calls and of atoms written; 0 sets no limit (the schema's
/// `Rate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub calls_per_second: u32,
    pub atoms_per_second: u32,
}

impl Rate {
    /// Parses `CALLS[/ATOMS]` per second (0: no limit on that one), e.g. `10/500`.
    pub fn parse(text: &str) -> Result<Rate, ClientError> {
        let (calls, atoms) = text.split_once('/').unwrap_or((text, "0"));
        let number = |value: &str| {
            value.parse::<u32>().map_err(|_| {
                ClientError::InvalidInput(format!(
                    "the rate {text:?} is CALLS[/ATOMS] per second, whole numbers (0 for no \
                     limit)"
                ))
            })
        };
        Ok(Rate {
            calls_per_second: number(calls)?,
            atoms_per_second: number(atoms)?,
        })
    }

    pub fn fill(&self, mut builder: wire::rate::Builder<'_>) {
        builder.set_calls_per_second(self.calls_per_second);
        builder.set_atoms_per_second(self.atoms_per_second);
    }

    pub fn read(reader: wire::rate::Reader<'_>) -> Rate {
        Rate {
            calls_per_second: reader.get_calls_per_second(),
            atoms_per_second: reader.get_atoms_per_second(),
        }
    }
}

impl Restriction {
    pub fn fill(&self, mut builder: wire::restriction::Builder<'_>) {
        let mut worlds = builder.reborrow().init_worlds(self.worlds.len() as u32);
        for (index, world) in self.worlds.iter().enumerate() {
            worlds.set(index as u32, world.as_str());
        }
        let mut kinds = builder.reborrow().init_kinds(self.kinds.len() as u32);
        for (index, kind) in self.kinds.iter().enumerate() {
            kinds.set(index as u32, *kind);
        }
        let mut labels = builder.reborrow().init_labels(self.labels.len() as u32);
        for (index, label) in self.labels.iter().enumerate() {
            labels.set(index as u32, label.as_str());
        }
        builder.set_max_importance(self.max_importance);
        builder.set_expires_at_unix_ms(self.expires_at_unix_ms);
        builder.set_without_approve(self.without_approve);
        builder.set_without_save(self.without_save);
        self.rate.fill(builder.init_rate());
    }
}

/// A principal's rights in one world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub world: String,
    pub read: bool,
    pub write: bool,
    pub observe: bool,
    /// May approve, reject and deprecate atoms and supersede other writers' atoms.
    pub approve: bool,
    /// How fast the principal may use the world (default: no limit).
    pub rate: Rate,
}

impl Grant {
    /// Parses `WORLD=RIGHTS[@CALLS[/ATOMS]]` where RIGHTS is a combination of r, w, o, a
    /// (approve) and the optional rate is calls and atoms per second (e.g. `team/auth=rw`,
    /// `team/auth=rw@10/500`).
    pub fn parse(text: &str) -> Result<Grant, ClientError> {
        let (world, rights) = text.rsplit_once('=').ok_or_else(|| {
            ClientError::InvalidInput(format!(
                "grant {text:?} must look like WORLD=RIGHTS, e.g. team/auth=rwo"
            ))
        })?;
        let (rights, rate) = match rights.split_once('@') {
            None => (rights, Rate::default()),
            Some((rights, rate)) => (
                rights,
                Rate::parse(rate).map_err(|error| {
                    ClientError::InvalidInput(format!(
                        "grant {text:?}: {error}, e.g. team/auth=rw@10/500"
                    ))
                })?,
            ),
        };
        if rights.is_empty() || !rights.chars().all(|right| "rwoa".contains(right)) {
            return Err(ClientError::InvalidInput(format!(
                "grant {text:?}: rights are letters r (read), w (write), o (observe), \
                 a (approve)"
            )));
        }
        Ok(Grant {
            world: world.to_owned(),
            read: rights.contains('r'),
            write: rights.contains('w'),
            observe: rights.contains('o'),
            approve: rights.contains('a'),
            rate,
        })
    }

    /// The rights as letters, with the rate when it has one (`rw@10/500`), as `parse`
    /// reads them.
    pub fn rights(&self) -> String {
        let letters: String = [
            (self.read, 'r'),
            (self.write, 'w'),
            (self.observe, 'o'),
            (self.approve, 'a'),
        ]
        .iter()
        .filter(|(held, _)| *held)
        .map(|(_, letter)| *letter)
        .collect();
        if self.rate == Rate::default() {
            return letters;
        }
        format!(
            "{letters}@{}/{}",
            self.rate.calls_per_second, self.rate.atoms_per_second
        )
    }
}

/// A principal as the node describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalView {
    pub name: String,
    pub public_key: [u8; 32],
    pub admin: bool,
    pub grants: Vec<Grant>,
}

impl PrincipalView {
    pub fn read(reader: wire::principal_info::Reader<'_>) -> Result<PrincipalView, ClientError> {
        let mut grants = Vec::new();
        for grant in reader.get_grants()?.iter() {
            grants.push(Grant {
                world: text(grant.get_world())?,
                read: grant.get_read(),
                write: grant.get_write(),
                observe: grant.get_observe(),
                approve: grant.get_approve(),
                rate: Rate::read(grant.get_rate()?),
            });
        }
        Ok(PrincipalView {
            name: text(reader.get_name())?,
            public_key: hash(reader.get_public_key())?,
            admin: reader.get_admin(),
            grants,
        })
    }

    pub fn to_json(&self) -> Value {
        let grants: Vec<Value> = self
            .grants
            .iter()
            .map(|grant| json!({"world": grant.world, "rights": grant.rights()}))
            .collect();
        json!({"name": self.name, "publicKey": hex::encode(self.public_key), "admin": self.admin, "grants": grants})
    }
}

/// A world as the node describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldView {
    pub name: String,
    pub archived: bool,
    pub atoms: u64,
    /// Components of every vector in the world; 0 until set.
    pub vector_dimension: u32,
}

impl WorldView {
    pub fn read(reader: wire::world_info::Reader<'_>) -> Result<WorldView, ClientError> {
        Ok(WorldView {
            name: text(reader.get_name())?,
            archived: reader.get_state().map_err(capnp::Error::from)? == wire::WorldState::Archived,
            atoms: reader.get_atoms(),
            vector_dimension: reader.get_vector_dimension(),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "state": if self.archived { "archived" } else { "active" },
            "atoms": self.atoms,
            "vector_dimension": self.vector_dimension,
        })
    }
}

/// What a node knows of its fleet (`Membrane.fleet`). Alone: `name` empty, no nodes, no
/// worlds. Durations are `None` where the schema says the largest UInt64 (never, or
/// not known).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetStatus {
    pub name: String,
    pub node_key: [u8; 32],
    pub address: String,
    pub lease_ms: u64,
    pub confirmed_ago_ms: Option<u64>,
    pub nodes: Vec<FleetNode>,
    pub worlds: Vec<FleetWorld>,
}

/// A node of the fleet (see [`FleetStatus`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetNode {
    pub key: [u8; 32],
    pub address: String,
    pub slot: u32,
    /// Since it last said it runs; `None`: not within the lease.
    pub seen_ago_ms: Option<u64>,
    pub confirmed_ago_ms: Option<u64>,
}

/// A world of the fleet (see [`FleetStatus`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetWorld {
    pub world: String,
    /// The owner's key and address; `None`: no node owns it now.
    pub owner: Option<([u8; 32], String)>,
    pub stream_position: u64,
    pub held_position: u64,
}

fn ago(millis: u64) -> Option<u64> {
    (millis != u64::MAX).then_some(millis)
}

impl FleetStatus {
    pub(crate) fn read(status: wire::fleet_status::Reader<'_>) -> Result<FleetStatus, ClientError> {
        let mut nodes = Vec::new();
        for node in status.get_nodes()?.iter() {
            nodes.push(FleetNode {
                key: hash(node.get_key())?,
                address: text(node.get_address())?,
                slot: node.get_slot(),
                seen_ago_ms: ago(node.get_seen_ago_ms()),
                confirmed_ago_ms: ago(node.get_confirmed_ago_ms()),
            });
        }
        let mut worlds = Vec::new();
        for world in status.get_worlds()?.iter() {
            let owner = match world.get_owner_key()?.is_empty() {
                true => None,
                false => Some((
                    hash(world.get_owner_key())?,
                    text(world.get_owner_address())?,
                )),
            };
            worlds.push(FleetWorld {
                world: text(world.get_world())?,
                owner,
                stream_position: world.get_stream_position(),
                held_position: world.get_held_position(),
            });
        }
        Ok(FleetStatus {
            name: text(status.get_name())?,
            node_key: hash(status.get_node_key())?,
            address: text(status.get_address())?,
            lease_ms: status.get_lease_ms(),
            confirmed_ago_ms: ago(status.get_confirmed_ago_ms()),
            nodes,
            worlds,
        })
    }

    /// The status as JSON (keys in hex; durations `null` where not known).
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "nodeKey": hex::encode(self.node_key),
            "address": self.address,
            "leaseMs": self.lease_ms,
            "confirmedAgoMs": self.confirmed_ago_ms,
            "nodes": self.nodes.iter().map(|node| json!({
                "key": hex::encode(node.key),
                "address": node.address,
                "slot": node.slot,
                "seenAgoMs": node.seen_ago_ms,
                "confirmedAgoMs": node.confirmed_ago_ms,
            })).collect::<Vec<_>>(),
            "worlds": self.worlds.iter().map(|world| json!({
                "world": world.world,
                "ownerKey": world.owner.as_ref().map(|(key, _)| hex::encode(key)),
                "ownerAddress": world.owner.as_ref().map(|(_, address)| address),
                "streamPosition": world.stream_position,
                "heldPosition": world.held_position,
            })).collect::<Vec<_>>(),
        })
    }
}
