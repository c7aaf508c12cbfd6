//! Atoms: what a writer supplies (`AtomContent`), what the store keeps (`Atom`), the rules
//! content must follow, and the canonical entry encoding that is stored and hashed
//! (byte by byte in store/FORMAT.md).

use crate::error::StoreError;
use crate::limits::{
    ATOM_LABELS_MAX, ATOM_LINKS_MAX, ATOM_PAYLOAD_BYTES_MAX, ATOM_TEXT_BYTES_MAX,
    ATOM_VECTOR_DIMENSIONS_MAX, LABEL_BYTES_MAX,
};

/// A BLAKE3 hash: an atom id, a chain entry hash.
pub type Hash = [u8; 32];
/// An ed25519 public key: a principal, a writer.
pub type PublicKey = [u8; 32];
/// The `prev` of the first entry of every chain.
pub const ZERO_HASH: Hash = [0; 32];

/// Version byte that starts every entry written now. Version 2 adds the atom's initial
/// lifecycle state; version 1 entries (written before lifecycles) decode as asserted,
/// and their `supersedes` links change no state (store/FORMAT.md).
pub const ENTRY_FORMAT_VERSION: u8 = 2;
/// The first entry version, still read.
pub const ENTRY_FORMAT_VERSION_1: u8 = 1;

/// The BLAKE3 key-derivation context of chain entry hashes: the domain tag that keeps
/// an entry hash from ever equalling any other BLAKE3 hash engram or anyone computes.
pub const CHAIN_ENTRY_CONTEXT: &str = "engram 2026-11 chain entry v1";

macro_rules! code_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable number stored on disk and sent on the wire.
            pub fn code(self) -> u16 {
                match self { $($name::$variant => $code,)* }
            }

            /// The value with this stable number, if any.
            pub fn from_code(code: u16) -> Option<Self> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }

            /// The name used by the schema and the CLI (`derivedFrom`, `fact`).
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// The value with this name, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.name())
            }
        }
    };
}

code_enum!(
    /// What an atom records. The codes are the schema's `AtomKind` ordinals.
    AtomKind {
        Observation = 0, "observation";
        Fact = 1, "fact";
        Decision = 2, "decision";
        Plan = 3, "plan";
        Constraint = 4, "constraint";
        Correction = 5, "correction";
        Message = 6, "message";
        Question = 7, "question";
        Preference = 8, "preference";
        Transition = 9, "transition";
    }
);

code_enum!(
    /// How an atom relates to an earlier one. The codes are the schema's `LinkKind` ordinals.
    LinkKind {
        Supersedes = 0, "supersedes";
        Contradicts = 1, "contradicts";
        Confirms = 2, "confirms";
        Corrects = 3, "corrects";
        DerivedFrom = 4, "derivedFrom";
        Approves = 5, "approves";
        Rejects = 6, "rejects";
        Deprecates = 7, "deprecates";
        Retracts = 8, "retracts";
    }
);

code_enum!(
    /// Where an atom stands in its lifecycle (ARCHITECTURE.md, Lifecycle). The codes are
    /// the schema's `LifecycleState` ordinals.
    LifecycleState {
        Asserted = 0, "asserted";
        Proposed = 1, "proposed";
        Approved = 2, "approved";
        Rejected = 3, "rejected";
        Deprecated = 4, "deprecated";
        Superseded = 5, "superseded";
        Retracted = 6, "retracted";
    }
);

impl LinkKind {
    /// The transition a link of this kind makes on its target, if it makes one. Only
    /// transition atoms carry the transition kinds; `supersedes` is carried by the atom
    /// that replaces its target (in entries of version 2 and later).
    pub fn transition(self) -> Option<Transition> {
        match self {
            LinkKind::Approves => Some(Transition::Approve),
            LinkKind::Rejects => Some(Transition::Reject),
            LinkKind::Deprecates => Some(Transition::Deprecate),
            LinkKind::Retracts => Some(Transition::Retract),
            LinkKind::Supersedes => Some(Transition::Supersede),
            LinkKind::Contradicts
            | LinkKind::Confirms
            | LinkKind::Corrects
            | LinkKind::DerivedFrom => None,
        }
    }
}

/// A change of an atom's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Approve,
    Reject,
    Deprecate,
    Supersede,
    Retract,
}

impl Transition {
    /// The link a transition atom carries to its target (supersession is a link of
    /// the replacing atom instead).
    pub fn link_kind(self) -> LinkKind {
        match self {
            Transition::Approve => LinkKind::Approves,
            Transition::Reject => LinkKind::Rejects,
            Transition::Deprecate => LinkKind::Deprecates,
            Transition::Retract => LinkKind::Retracts,
            Transition::Supersede => LinkKind::Supersedes,
        }
    }

    /// The state this transition leads to from `from`, or `None` when it is illegal
    /// there (the table in ARCHITECTURE.md, Lifecycle).
    pub fn from(self, from: LifecycleState) -> Option<LifecycleState> {
        use LifecycleState::*;
        match (self, from) {
            (_, Rejected | Superseded | Retracted) => None,
            (Transition::Approve, Proposed | Asserted) => Some(Approved),
            (Transition::Reject, Proposed) => Some(Rejected),
            (Transition::Deprecate, Asserted | Approved) => Some(Deprecated),
            (Transition::Supersede, _) => Some(Superseded),
            (Transition::Retract, _) => Some(Retracted),
            (Transition::Approve | Transition::Reject | Transition::Deprecate, _) => None,
        }
    }

    /// Whether it takes the approve right: approving, rejecting and deprecating always
    /// do; superseding does when the target is another writer's.
    pub fn needs_approve_right(self, own_target: bool) -> bool {
        match self {
            Transition::Approve | Transition::Reject | Transition::Deprecate => true,
            Transition::Supersede => !own_target,
            Transition::Retract => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transition::Approve => "approve",
            Transition::Reject => "reject",
            Transition::Deprecate => "deprecate",
            Transition::Supersede => "supersede",
            Transition::Retract => "retract",
        }
    }
}

impl std::fmt::Display for Transition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A typed reference to another atom.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub kind: LinkKind,
    pub target: Hash,
}

/// A claimed interval of validity in the world; `until_unix_ms == 0` is open-ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeInterval {
    pub from_unix_ms: i64,
    pub until_unix_ms: i64,
}

impl TimeInterval {
    /// Whether the interval holds at `instant` (unix ms): from its start, until its end
    /// (excluded), or for ever when open-ended.
    pub fn holds_at(&self, instant: i64) -> bool {
        self.from_unix_ms <= instant && (self.until_unix_ms == 0 || instant < self.until_unix_ms)
    }
}

/// What a writer supplies for one atom.
#[derive(Clone, Debug, PartialEq)]
pub struct AtomContent {
    pub kind: AtomKind,
    pub text: String,
    pub payload: Vec<u8>,
    pub labels: Vec<String>,
    pub links: Vec<Link>,
    pub importance: f32,
    pub confidence: f32,
    pub vector: Vec<f32>,
    pub valid_time: Option<TimeInterval>,
    /// Remembered as a proposal (initial state `proposed`) rather than asserted.
    pub proposed: bool,
    /// What a constraint forbids: words or phrases that a plan must not contain
    /// (`WorldReader.check`). Only constraints carry them.
    pub forbids: Vec<String>,
}

impl AtomContent {
    /// Content with defaults for everything but kind and text.
    pub fn new(kind: AtomKind, text: impl Into<String>) -> Self {
        AtomContent {
            kind,
            text: text.into(),
            payload: Vec::new(),
            labels: Vec::new(),
            links: Vec::new(),
            importance: 0.5,
            confidence: 1.0,
            vector: Vec::new(),
            valid_time: None,
            proposed: false,
            forbids: Vec::new(),
        }
    }

    /// The state the atom starts in.
    pub fn initial_state(&self) -> LifecycleState {
        if self.proposed {
            LifecycleState::Proposed
        } else {
            LifecycleState::Asserted
        }
    }

    /// The transitions this content makes on other atoms (by an entry of the current
    /// version): its transition link, or its `supersedes` links.
    pub fn transitions(&self) -> impl Iterator<Item = (Transition, &Hash)> {
        self.links
            .iter()
            .filter_map(|link| Some((link.kind.transition()?, &link.target)))
    }

    /// Checks every rule content must follow; the message says which rule and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if self.text.is_empty() {
            return Err("text is empty; every atom needs text".into());
        }
        if self.text.len() > ATOM_TEXT_BYTES_MAX {
            return Err(format!(
                "text is {} bytes; the limit is {ATOM_TEXT_BYTES_MAX}",
                self.text.len()
            ));
        }
        if self.payload.len() > ATOM_PAYLOAD_BYTES_MAX {
            return Err(format!(
                "payload is {} bytes; the limit is {ATOM_PAYLOAD_BYTES_MAX}",
                self.payload.len()
            ));
        }
        check_unit_interval("importance", self.importance)?;
        check_unit_interval("confidence", self.confidence)?;
        if self.labels.len() > ATOM_LABELS_MAX {
            return Err(format!(
                "{} labels; the limit is {ATOM_LABELS_MAX}",
                self.labels.len()
            ));
        }
        for (position, label) in self.labels.iter().enumerate() {
            validate_label(label)?;
            if self.labels[..position].contains(label) {
                return Err(format!("label {label:?} is given twice"));
            }
        }
        if self.links.len() > ATOM_LINKS_MAX {
            return Err(format!(
                "{} links; the limit is {ATOM_LINKS_MAX}",
                self.links.len()
            ));
        }
        if self.vector.len() > ATOM_VECTOR_DIMENSIONS_MAX {
            return Err(format!(
                "vector has {} dimensions; the limit is {ATOM_VECTOR_DIMENSIONS_MAX}",
                self.vector.len()
            ));
        }
        if let Some(position) = self.vector.iter().position(|value| !value.is_finite()) {
            return Err(format!(
                "vector component {position} is {}; components must be finite",
                self.vector[position]
            ));
        }
        if !self.vector.is_empty() && self.vector.iter().all(|value| *value == 0.0) {
            return Err("the vector is all zeros; it has no direction to compare".into());
        }
        if let Some(interval) = self.valid_time
            && interval.until_unix_ms != 0
            && interval.until_unix_ms <= interval.from_unix_ms
        {
            return Err(format!(
                "valid time ends ({}) before it starts ({}); use 0 for an open end",
                interval.until_unix_ms, interval.from_unix_ms
            ));
        }
        self.validate_lifecycle()?;
        crate::constraint::validate_forbids(self.kind, &self.forbids)
    }

    /// The rules of transition atoms and links (ARCHITECTURE.md, Lifecycle).
    fn validate_lifecycle(&self) -> Result<(), String> {
        let transition_links = self
            .links
            .iter()
            .filter(|link| {
                link.kind
                    .transition()
                    .is_some_and(|transition| transition != Transition::Supersede)
            })
            .count();
        if self.kind == AtomKind::Transition {
            if transition_links != 1 || self.links.len() != 1 {
                return Err("a transition atom carries exactly one link, and it is an \
                            approves, rejects, deprecates or retracts link"
                    .into());
            }
            if self.proposed {
                return Err(
                    "a transition takes effect when it is written; it cannot be \
                            proposed"
                        .into(),
                );
            }
        } else if transition_links > 0 {
            return Err(format!(
                "approves, rejects, deprecates and retracts links belong to transition \
                 atoms; make the transition instead of remembering a {} with one",
                self.kind
            ));
        }
        if self.proposed
            && self
                .links
                .iter()
                .any(|link| link.kind == LinkKind::Supersedes)
        {
            return Err(
                "a proposal cannot supersede: remember it as a proposal, and \
                        supersede once it is approved"
                    .into(),
            );
        }
        for (position, link) in self.links.iter().enumerate() {
            if link.kind == LinkKind::Supersedes
                && self.links[..position]
                    .iter()
                    .any(|other| other.kind == LinkKind::Supersedes && other.target == link.target)
            {
                return Err(format!(
                    "atom {} is superseded twice by one atom",
                    hex::encode(link.target)
                ));
            }
        }
        Ok(())
    }
}

fn check_unit_interval(name: &str, value: f32) -> Result<(), String> {
    if value.is_nan() {
        return Err(format!("{name} is NaN; it must be in [0, 1]"));
    }
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{name} is {value}; it must be in [0, 1]"));
    }
    Ok(())
}

/// Checks one label: non-empty, at most `LABEL_BYTES_MAX` bytes, no control characters.
pub fn validate_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("a label is empty".into());
    }
    if label.len() > LABEL_BYTES_MAX {
        return Err(format!(
            "label {:?}… is {} bytes; the limit is {LABEL_BYTES_MAX}",
            label.chars().take(16).collect::<String>(),
            label.len()
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(format!("label {label:?} contains a control character"));
    }
    Ok(())
}

/// A committed atom as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Atom {
    /// The chain entry hash of `encode_entry` of the fields below.
    pub id: Hash,
    pub world: String,
    pub writer: PublicKey,
    pub seq: u64,
    pub prev: Hash,
    pub commit: u64,
    pub recorded_at_unix_ms: i64,
    pub content: AtomContent,
    /// Where the atom stands as of the read that returned it: its initial state as
    /// decoded, then settled by the read from the state index.
    pub state: LifecycleState,
    /// Whether its links count: its `supersedes` links made transitions, and its links
    /// are in the link and trust indexes. True from entry version 2 on; links of
    /// entries written before lifecycles keep the meaning they had (none).
    pub links_count: bool,
}

impl Atom {
    /// About how many bytes the atom takes in an answer: what the budgets of one call's
    /// answer count.
    pub fn answer_bytes(&self) -> usize {
        let content = &self.content;
        // Ids, keys, numbers and the message's own structure.
        const FIXED: usize = 256;
        FIXED
            + content.text.len()
            + content.payload.len()
            + content.vector.len() * 4
            + content
                .labels
                .iter()
                .map(|label| label.len() + 8)
                .sum::<usize>()
            + content.links.len() * 48
    }
}

/// The fields of an entry before it is hashed.
pub struct EntryHeader<'a> {
    pub world: &'a str,
    pub writer: &'a PublicKey,
    pub seq: u64,
    pub prev: &'a Hash,
    pub commit: u64,
    pub recorded_at_unix_ms: i64,
}

/// Appends the canonical entry encoding (store/FORMAT.md) of one atom to `out`.
pub fn encode_entry(header: &EntryHeader<'_>, content: &AtomContent, out: &mut Vec<u8>) {
    out.push(ENTRY_FORMAT_VERSION);
    // World names are at most WORLD_NAME_BYTES_MAX (128) bytes: the u16 cannot overflow.
    put_u16(out, header.world.len() as u16);
    out.extend_from_slice(header.world.as_bytes());
    out.extend_from_slice(header.writer);
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(header.prev);
    out.extend_from_slice(&header.commit.to_be_bytes());
    out.extend_from_slice(&header.recorded_at_unix_ms.to_be_bytes());
    put_u16(out, content.kind.code());
    out.extend_from_slice(&canonical_float(content.importance).to_be_bytes());
    out.extend_from_slice(&canonical_float(content.confidence).to_be_bytes());
    match content.valid_time {
        None => out.push(0),
        Some(interval) => {
            out.push(1);
            out.extend_from_slice(&interval.from_unix_ms.to_be_bytes());
            out.extend_from_slice(&interval.until_unix_ms.to_be_bytes());
        }
    }
    out.push(content.initial_state().code() as u8);
    put_bytes32(out, content.text.as_bytes());
    put_bytes32(out, &content.payload);
    put_u16(out, content.labels.len() as u16);
    for label in &content.labels {
        put_u16(out, label.len() as u16);
        out.extend_from_slice(label.as_bytes());
    }
    put_u16(out, content.links.len() as u16);
    for link in &content.links {
        put_u16(out, link.kind.code());
        out.extend_from_slice(&link.target);
    }
    put_u32(out, content.vector.len() as u32);
    for component in &content.vector {
        out.extend_from_slice(&canonical_float(*component).to_be_bytes());
    }
    // Validated content has at most `ATOM_FORBIDS_MAX` terms of at most
    // `FORBIDDEN_TERM_BYTES_MAX` bytes: the u16s cannot overflow.
    put_u16(out, content.forbids.len() as u16);
    for term in &content.forbids {
        put_u16(out, term.len() as u16);
        out.extend_from_slice(term.as_bytes());
    }
}

/// How many bytes [`encode_entry`] appends for `content` in `world`, without encoding
/// it.
pub fn encoded_entry_len(world: &str, content: &AtomContent) -> usize {
    // Version, world, writer, seq, prev, commit, recorded at, kind, importance,
    // confidence, valid time, initial state.
    let header = 1 + 2 + world.len() + 32 + 8 + 32 + 8 + 8 + 2 + 4 + 4 + 1;
    let valid_time = if content.valid_time.is_some() { 16 } else { 0 };
    header
        + valid_time
        + 1
        + 4
        + content.text.len()
        + 4
        + content.payload.len()
        + 2
        + content
            .labels
            .iter()
            .map(|label| 2 + label.len())
            .sum::<usize>()
        + 2
        + content.links.len() * (2 + 32)
        + 4
        + content.vector.len() * 4
        + 2
        + content
            .forbids
            .iter()
            .map(|term| 2 + term.len())
            .sum::<usize>()
}

/// The chain entry hash of an encoded entry.
pub fn entry_hash(encoded_entry: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new_derive_key(CHAIN_ENTRY_CONTEXT);
    hasher.update(encoded_entry);
    *hasher.finalize().as_bytes()
}

/// Negative zero is stored as zero so equal content always encodes to equal bytes.
fn canonical_float(value: f32) -> u32 {
    if value == 0.0 { 0 } else { value.to_bits() }
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// The writer an entry's header names, if the header is whole (to name the chain of an
/// entry that does not decode).
pub(crate) fn writer_at(bytes: &[u8]) -> Option<PublicKey> {
    let world_length = u16::from_be_bytes(bytes.get(1..3)?.try_into().ok()?) as usize;
    let start = 3 + world_length;
    bytes.get(start..start + 32)?.try_into().ok()
}

/// What filters and restrictions look at: an atom's kind, labels, writer, importance
/// and commit, whether read from a whole [`Atom`], the facts kept beside an index
/// ([`crate::AtomFacts`]), or an entry's bytes without copying them ([`EntryFacts`]).
pub trait Facts {
    fn kind(&self) -> AtomKind;
    fn writer(&self) -> &PublicKey;
    fn importance(&self) -> f32;
    fn commit(&self) -> u64;
    /// The interval the atom claims to hold in the world, if it claims one.
    fn valid_time(&self) -> Option<TimeInterval>;
    /// Whether any of the atom's labels passes `test`.
    fn any_label(&self, test: &mut dyn FnMut(&str) -> bool) -> bool;
}

impl Facts for Atom {
    fn kind(&self) -> AtomKind {
        self.content.kind
    }
    fn writer(&self) -> &PublicKey {
        &self.writer
    }
    fn importance(&self) -> f32 {
        self.content.importance
    }
    fn commit(&self) -> u64 {
        self.commit
    }
    fn valid_time(&self) -> Option<TimeInterval> {
        self.content.valid_time
    }
    fn any_label(&self, test: &mut dyn FnMut(&str) -> bool) -> bool {
        self.content.labels.iter().any(|label| test(label))
    }
}

/// Whether a reader sees an atom: a restriction's test, as reads take it.
pub type Visible<'a> = &'a dyn Fn(&dyn Facts) -> bool;

/// The [`Facts`] of a stored entry, read in place: a read checks its filters and the
/// reader's restriction on these, and copies an entry (its text, payload and vector)
/// only when it passes them.
pub struct EntryFacts<'a> {
    kind: AtomKind,
    writer: PublicKey,
    seq: u64,
    importance: f32,
    commit: u64,
    recorded_at_unix_ms: i64,
    valid_time: Option<TimeInterval>,
    label_count: u16,
    /// The encoded labels: each a u16 length, then its bytes.
    labels: &'a [u8],
}

impl<'a> EntryFacts<'a> {
    /// The facts of the encoded entry `bytes`, or `None` when they do not decode (the
    /// caller's full decode then says what is wrong).
    pub fn read(bytes: &'a [u8]) -> Option<EntryFacts<'a>> {
        let mut reader = EntryReader { bytes, position: 0 };
        let version = reader.u8()?;
        let head = EntryHead::read(version, &mut reader)?;
        let label_count = reader.u16()?;
        Some(EntryFacts {
            kind: head.kind,
            writer: head.writer,
            seq: head.seq,
            importance: head.importance,
            commit: head.commit,
            recorded_at_unix_ms: head.recorded_at_unix_ms,
            valid_time: head.valid_time,
            label_count,
            labels: &bytes[reader.position..],
        })
    }
}

/// An entry's fields up to its labels, as they lie in its bytes: the one walk of the
/// format that a full decode and [`EntryFacts`] both start with.
struct EntryHead<'a> {
    world: &'a [u8],
    writer: PublicKey,
    seq: u64,
    prev: Hash,
    commit: u64,
    recorded_at_unix_ms: i64,
    kind: AtomKind,
    importance: f32,
    confidence: f32,
    valid_time: Option<TimeInterval>,
    initial_state: LifecycleState,
    text: &'a [u8],
    payload: &'a [u8],
}

impl<'a> EntryHead<'a> {
    /// Reads an entry of `version` from just after the version byte; `reader` is left
    /// at the label count. `None` for an unknown version.
    fn read(version: u8, reader: &mut EntryReader<'a>) -> Option<EntryHead<'a>> {
        if version != ENTRY_FORMAT_VERSION && version != ENTRY_FORMAT_VERSION_1 {
            return None;
        }
        let world_length = reader.u16()? as usize;
        let world = reader.take(world_length)?;
        let writer = reader.array32()?;
        let seq = reader.u64()?;
        let prev = reader.array32()?;
        let commit = reader.u64()?;
        let recorded_at_unix_ms = reader.u64()? as i64;
        let kind = AtomKind::from_code(reader.u16()?)?;
        let importance = f32::from_bits(reader.u32()?);
        let confidence = f32::from_bits(reader.u32()?);
        let valid_time = match reader.u8()? {
            0 => None,
            1 => Some(TimeInterval {
                from_unix_ms: reader.u64()? as i64,
                until_unix_ms: reader.u64()? as i64,
            }),
            _ => return None,
        };
        let initial_state = if version == ENTRY_FORMAT_VERSION_1 {
            LifecycleState::Asserted
        } else {
            match LifecycleState::from_code(u16::from(reader.u8()?))? {
                state @ (LifecycleState::Asserted | LifecycleState::Proposed) => state,
                _ => return None,
            }
        };
        let text_length = reader.u32()? as usize;
        let text = reader.take(text_length)?;
        let payload_length = reader.u32()? as usize;
        let payload = reader.take(payload_length)?;
        Some(EntryHead {
            world,
            writer,
            seq,
            prev,
            commit,
            recorded_at_unix_ms,
            kind,
            importance,
            confidence,
            valid_time,
            initial_state,
            text,
            payload,
        })
    }
}

impl EntryFacts<'_> {
    /// The entry's place in its writer's chain.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the node recorded it (its clock, Unix ms).
    pub fn recorded_at_unix_ms(&self) -> i64 {
        self.recorded_at_unix_ms
    }
}

impl Facts for EntryFacts<'_> {
    fn kind(&self) -> AtomKind {
        self.kind
    }
    fn writer(&self) -> &PublicKey {
        &self.writer
    }
    fn importance(&self) -> f32 {
        self.importance
    }
    fn commit(&self) -> u64 {
        self.commit
    }
    fn valid_time(&self) -> Option<TimeInterval> {
        self.valid_time
    }
    fn any_label(&self, test: &mut dyn FnMut(&str) -> bool) -> bool {
        let mut reader = EntryReader {
            bytes: self.labels,
            position: 0,
        };
        for _ in 0..self.label_count {
            let Some(label) = reader
                .u16()
                .and_then(|length| reader.take(length as usize))
                .and_then(|label| std::str::from_utf8(label).ok())
            else {
                return false;
            };
            if test(label) {
                return true;
            }
        }
        false
    }
}

/// Decodes a stored entry. `id` is the id recorded beside it; it is not re-hashed here
/// (`verify` does that).
pub fn decode_entry(id: Hash, bytes: &[u8]) -> Result<Atom, StoreError> {
    let mut reader = EntryReader { bytes, position: 0 };
    let corrupt = |what: &str| StoreError::Corrupt {
        what: format!("atom {}: {what}", hex::encode(id)),
    };
    let version = reader.u8().ok_or_else(|| corrupt("empty entry"))?;
    if version != ENTRY_FORMAT_VERSION && version != ENTRY_FORMAT_VERSION_1 {
        return Err(corrupt(&format!("unknown entry version {version}")));
    }
    let decoded = (|| {
        let head = EntryHead::read(version, &mut reader)?;
        let owned = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).ok();
        let (world, text) = (owned(head.world)?, owned(head.text)?);
        let label_count = reader.u16()? as usize;
        let mut labels = Vec::with_capacity(label_count.min(ATOM_LABELS_MAX));
        for _ in 0..label_count {
            let length = reader.u16()? as usize;
            labels.push(reader.string(length)?);
        }
        let link_count = reader.u16()? as usize;
        let mut links = Vec::with_capacity(link_count.min(ATOM_LINKS_MAX));
        for _ in 0..link_count {
            let kind = LinkKind::from_code(reader.u16()?)?;
            links.push(Link {
                kind,
                target: reader.array32()?,
            });
        }
        let dimensions = reader.u32()? as usize;
        let mut vector = Vec::with_capacity(dimensions.min(ATOM_VECTOR_DIMENSIONS_MAX));
        for _ in 0..dimensions {
            vector.push(f32::from_bits(reader.u32()?));
        }
        let mut forbids = Vec::new();
        if version != ENTRY_FORMAT_VERSION_1 {
            let count = reader.u16()? as usize;
            forbids.reserve(count.min(crate::limits::ATOM_FORBIDS_MAX));
            for _ in 0..count {
                let length = reader.u16()? as usize;
                forbids.push(reader.string(length)?);
            }
        }
        if reader.position != reader.bytes.len() {
            return None;
        }
        Some(Atom {
            id,
            world,
            writer: head.writer,
            seq: head.seq,
            prev: head.prev,
            commit: head.commit,
            recorded_at_unix_ms: head.recorded_at_unix_ms,
            content: AtomContent {
                kind: head.kind,
                text,
                payload: head.payload.to_vec(),
                labels,
                links,
                importance: head.importance,
                confidence: head.confidence,
                vector,
                valid_time: head.valid_time,
                proposed: head.initial_state == LifecycleState::Proposed,
                forbids,
            },
            state: head.initial_state,
            links_count: version != ENTRY_FORMAT_VERSION_1,
        })
    })();
    decoded.ok_or_else(|| corrupt("truncated or malformed entry"))
}

/// Reads big-endian fields from the front of a byte slice; `None` past its end.
pub(crate) struct EntryReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> EntryReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> EntryReader<'a> {
        EntryReader { bytes, position: 0 }
    }

    /// Whether every byte was read.
    pub(crate) fn at_end(&self) -> bool {
        self.position == self.bytes.len()
    }

    pub(crate) fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(length)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn array32(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    pub(crate) fn string(&mut self, length: usize) -> Option<String> {
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of the sample entries.
    fn sample_header() -> EntryHeader<'static> {
        EntryHeader {
            world: "team/auth",
            writer: &[1; 32],
            seq: 3,
            prev: &[2; 32],
            commit: 9,
            recorded_at_unix_ms: 1234,
        }
    }

    #[test]
    fn entry_round_trips_and_hash_binds_every_field() {
        let mut content = AtomContent::new(AtomKind::Decision, "use redb");
        content.labels = vec!["storage".into(), "db".into()];
        content.links = vec![Link {
            kind: LinkKind::Supersedes,
            target: [7; 32],
        }];
        content.vector = vec![0.25, -1.0];
        content.payload = b"{\"a\":1}".to_vec();
        content.valid_time = Some(TimeInterval {
            from_unix_ms: 5,
            until_unix_ms: 0,
        });
        content.proposed = true;
        let header = sample_header();
        let mut bytes = Vec::new();
        encode_entry(&header, &content, &mut bytes);
        let id = entry_hash(&bytes);
        let atom = decode_entry(id, &bytes).unwrap();
        assert_eq!(atom.content, content);
        assert_eq!(
            (atom.world.as_str(), atom.seq, atom.commit, atom.prev),
            ("team/auth", 3, 9, [2; 32])
        );
        // The facts read in place are the decoded atom's.
        let facts = EntryFacts::read(&bytes).unwrap();
        let labels = |facts: &dyn Facts| {
            let mut seen = Vec::new();
            facts.any_label(&mut |label| {
                seen.push(label.to_owned());
                false
            });
            seen
        };
        assert_eq!(
            (
                facts.kind(),
                *facts.writer(),
                facts.importance(),
                facts.commit()
            ),
            (atom.kind(), atom.writer, atom.importance(), atom.commit)
        );
        assert_eq!(labels(&facts), content.labels);
        assert_eq!(facts.seq(), atom.seq);
        assert!(EntryFacts::read(&bytes[..40]).is_none());
        // Flipping any single byte changes the hash or fails to decode.
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x01;
            assert_ne!(entry_hash(&damaged), id, "byte {position}");
        }
        assert!(decode_entry(id, &bytes[..bytes.len() - 1]).is_err());
        assert_eq!(atom.state, LifecycleState::Proposed);

        // The same entry in version 1, which had no state byte: asserted, and its
        // supersedes links make no transition.
        let state_at = 1 + 2 + "team/auth".len() + 32 + 8 + 32 + 8 + 8 + 2 + 4 + 4 + 1 + 16;
        assert_eq!(bytes[state_at], LifecycleState::Proposed.code() as u8);
        let mut version_1 = bytes.clone();
        version_1.remove(state_at);
        // Nor the forbidden terms' count (none) at its end.
        version_1.truncate(version_1.len() - 2);
        version_1[0] = ENTRY_FORMAT_VERSION_1;
        let old = decode_entry(entry_hash(&version_1), &version_1).unwrap();
        assert_eq!(
            (old.state, old.content.proposed, old.links_count),
            (LifecycleState::Asserted, false, false)
        );
        assert_eq!(old.content.links, content.links);
        assert_eq!(EntryFacts::read(&version_1).unwrap().seq(), 3);
        // A state byte that is not an initial state does not decode.
        let mut approved = bytes.clone();
        approved[state_at] = LifecycleState::Approved.code() as u8;
        assert!(decode_entry(id, &approved).is_err());
    }

    #[test]
    fn validation_rejects_each_bad_field() {
        type Mutation = Box<dyn Fn(&mut AtomContent)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("text is empty", Box::new(|c| c.text.clear())),
            (
                "limit is 65536",
                Box::new(|c| c.text = "x".repeat(ATOM_TEXT_BYTES_MAX + 1)),
            ),
            ("importance is NaN", Box::new(|c| c.importance = f32::NAN)),
            ("importance is 1.5", Box::new(|c| c.importance = 1.5)),
            ("confidence is -0.1", Box::new(|c| c.confidence = -0.1)),
            (
                "a label is empty",
                Box::new(|c| c.labels = vec![String::new()]),
            ),
            (
                "given twice",
                Box::new(|c| c.labels = vec!["a".into(), "a".into()]),
            ),
            (
                "must be finite",
                Box::new(|c| c.vector = vec![f32::INFINITY]),
            ),
            (
                "belong to transition atoms",
                Box::new(|c| {
                    c.links = vec![Link {
                        kind: LinkKind::Approves,
                        target: [1; 32],
                    }]
                }),
            ),
            (
                "exactly one link",
                Box::new(|c| c.kind = AtomKind::Transition),
            ),
            (
                "a proposal cannot supersede",
                Box::new(|c| {
                    c.proposed = true;
                    c.links = vec![Link {
                        kind: LinkKind::Supersedes,
                        target: [1; 32],
                    }]
                }),
            ),
        ];
        for (expected, mutate) in cases {
            let mut content = AtomContent::new(AtomKind::Fact, "ok");
            mutate(&mut content);
            let error = content.validate().unwrap_err();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
        assert!(AtomContent::new(AtomKind::Fact, "ok").validate().is_ok());
    }

    mod decoding_anything {
        //! The entry decoders on any bytes: stored rows are read back only through
        //! them, so whatever a damaged or hostile file holds must come back as an error
        //! (or as an atom), never a panic. Random bytes, and valid entries damaged in a
        //! few bytes, cut short or run on; `PROPTEST_CASES` sets how many (a long run
        //! passes millions).
        use proptest::prelude::*;

        use super::*;
        use crate::fuzzing::cases;

        fn valid_entry() -> Vec<u8> {
            let mut content = AtomContent::new(AtomKind::Constraint, "do not use requests");
            content.labels = vec!["http".into(), "auth".into()];
            content.links = vec![Link {
                kind: LinkKind::Supersedes,
                target: [7; 32],
            }];
            content.vector = vec![0.5, -0.25, 1.0];
            content.payload = b"payload".to_vec();
            content.valid_time = Some(TimeInterval {
                from_unix_ms: 5,
                until_unix_ms: 10,
            });
            content.forbids = vec!["requests".into()];
            let header = sample_header();
            let mut bytes = Vec::new();
            encode_entry(&header, &content, &mut bytes);
            bytes
        }

        /// Every way the store reads an entry, on `bytes`.
        fn read_every_way(bytes: &[u8]) {
            let _ = decode_entry(entry_hash(bytes), bytes);
            let _ = decode_entry([0; 32], bytes);
            if let Some(facts) = EntryFacts::read(bytes) {
                let _ = (
                    facts.kind(),
                    facts.writer(),
                    facts.importance(),
                    facts.commit(),
                );
                let _ = (facts.valid_time(), facts.seq(), facts.recorded_at_unix_ms());
                facts.any_label(&mut |label| label.is_empty());
            }
        }

        fn damaged() -> impl Strategy<Value = Vec<u8>> {
            crate::fuzzing::damaged(valid_entry())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases()))]

            #[test]
            fn any_bytes_decode_to_an_atom_or_an_error(bytes in damaged()) {
                read_every_way(&bytes);
            }

            #[test]
            fn any_journal_record_body_parses_to_items_or_nothing(
                body in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                for item in crate::journal::items_of(&body).unwrap_or_default() {
                    match item {
                        crate::journal::Item::Entry(entry) => read_every_way(entry),
                        crate::journal::Item::Key(record) => {
                            let _ = crate::idempotency::KeyRecord::decode(record);
                        }
                    }
                }
            }
        }

        #[test]
        fn the_valid_entry_decodes() {
            let bytes = valid_entry();
            let atom = decode_entry(entry_hash(&bytes), &bytes).unwrap();
            assert_eq!(atom.content.forbids, ["requests"]);
        }
    }
}
