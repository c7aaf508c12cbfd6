//! Conversions between the wire (generated schema code) and the store's types. Every
//! client-supplied value is checked here or by the store; nothing is trusted.

use std::collections::BTreeSet;

use engram_schema::engram_capnp as wire;
use engram_store::limits::{
    ATOM_FORBIDS_MAX, ATOM_LABELS_MAX, ATOM_LINKS_MAX, QUERY_FILTER_VALUES_MAX,
};
use engram_store::{
    Atom, AtomContent, AtomKind, Epoch, Grant, Hash, LifecycleState, Link, LinkKind, Principal,
    Query, Rate, Receipt, TimeInterval, WorldInfo, WorldState,
};

use crate::error::CapabilityError;
use crate::restriction::Restriction;

/// Reads a 32-byte key or hash; `what` names the field in the error.
pub(crate) fn bytes32(data: &[u8], what: &str) -> Result<[u8; 32], CapabilityError> {
    data.try_into().map_err(|_| {
        CapabilityError::invalid(format!("{what} must be 32 bytes; got {}", data.len()))
    })
}

fn atom_kind(kind: wire::AtomKind) -> AtomKind {
    AtomKind::from_code(kind as u16).expect("store and schema list the same atom kinds")
}

fn wire_atom_kind(kind: AtomKind) -> wire::AtomKind {
    wire::AtomKind::try_from(kind.code()).expect("store and schema list the same atom kinds")
}

fn check_count(count: u32, limit: usize, what: &str) -> Result<(), CapabilityError> {
    if count as usize > limit {
        return Err(CapabilityError::invalid(format!(
            "{count} {what}; the limit is {limit}"
        )));
    }
    Ok(())
}

/// The texts of a list; one that does not read as text, or is not UTF-8, is
/// `invalidArgument`.
pub(crate) fn text_list(
    list: capnp::text_list::Reader<'_>,
) -> Result<Vec<String>, CapabilityError> {
    let mut texts = Vec::with_capacity(list.len() as usize);
    for text in list.iter() {
        texts.push(text.map_err(malformed)?.to_string()?);
    }
    Ok(texts)
}

/// A message that does not decode as the schema says.
pub(crate) fn malformed(error: capnp::Error) -> CapabilityError {
    CapabilityError::invalid(format!("malformed request: {error}"))
}

/// Reading a request's parameters in a handler: a struct or field that does not read
/// as its type (whatever a crafted message put there) is `invalidArgument`.
pub(crate) trait Param<T> {
    fn param(self) -> Result<T, capnp::Error>;
}

impl<T> Param<T> for capnp::Result<T> {
    fn param(self) -> Result<T, capnp::Error> {
        self.map_err(|error| malformed(error).into())
    }
}

/// Reads atom content. Range rules are the store's (`AtomContent::validate`).
pub(crate) fn read_content(
    reader: wire::atom_content::Reader<'_>,
) -> Result<AtomContent, CapabilityError> {
    let labels = reader.get_labels().map_err(malformed)?;
    check_count(labels.len(), ATOM_LABELS_MAX, "labels")?;
    let links_reader = reader.get_links().map_err(malformed)?;
    check_count(links_reader.len(), ATOM_LINKS_MAX, "links")?;
    let forbids = reader.get_forbids().map_err(malformed)?;
    check_count(forbids.len(), ATOM_FORBIDS_MAX, "forbidden terms")?;
    let mut links = Vec::with_capacity(links_reader.len() as usize);
    for link in links_reader.iter() {
        let kind = link.get_kind()?;
        links.push(Link {
            kind: LinkKind::from_code(kind as u16).expect("store and schema list the same links"),
            target: bytes32(link.get_target().map_err(malformed)?, "a link target")?,
        });
    }
    let valid_time = match reader.get_valid_time().which()? {
        wire::atom_content::valid_time::Unknown(()) => None,
        wire::atom_content::valid_time::Interval(interval) => {
            let interval = interval.map_err(malformed)?;
            Some(TimeInterval {
                from_unix_ms: interval.get_from_unix_ms(),
                until_unix_ms: interval.get_until_unix_ms(),
            })
        }
    };
    Ok(AtomContent {
        kind: atom_kind(reader.get_kind()?),
        text: reader.get_text().map_err(malformed)?.to_string()?,
        payload: reader.get_payload().map_err(malformed)?.to_vec(),
        labels: text_list(labels)?,
        links,
        importance: reader.get_importance(),
        confidence: reader.get_confidence(),
        vector: reader.get_vector().map_err(malformed)?.iter().collect(),
        valid_time,
        proposed: reader.get_proposed(),
        forbids: text_list(forbids)?,
    })
}

pub(crate) fn write_content(mut builder: wire::atom_content::Builder<'_>, content: &AtomContent) {
    builder.set_kind(wire_atom_kind(content.kind));
    builder.set_text(content.text.as_str());
    if !content.payload.is_empty() {
        builder.set_payload(&content.payload);
    }
    builder.set_importance(content.importance);
    builder.set_confidence(content.confidence);
    builder.set_proposed(content.proposed);
    match content.valid_time {
        None => builder.reborrow().init_valid_time().set_unknown(()),
        Some(interval) => {
            let mut wire_interval = builder.reborrow().init_valid_time().init_interval();
            wire_interval.set_from_unix_ms(interval.from_unix_ms);
            wire_interval.set_until_unix_ms(interval.until_unix_ms);
        }
    }
    if !content.labels.is_empty() {
        let mut labels = builder.reborrow().init_labels(content.labels.len() as u32);
        for (index, label) in content.labels.iter().enumerate() {
            labels.set(index as u32, label.as_str());
        }
    }
    if !content.links.is_empty() {
        let mut links = builder.reborrow().init_links(content.links.len() as u32);
        for (index, link) in content.links.iter().enumerate() {
            let mut wire_link = links.reborrow().get(index as u32);
            wire_link
                .set_kind(wire::LinkKind::try_from(link.kind.code()).expect("same link kinds"));
            wire_link.set_target(&link.target);
        }
    }
    if !content.forbids.is_empty() {
        let mut forbids = builder
            .reborrow()
            .init_forbids(content.forbids.len() as u32);
        for (index, term) in content.forbids.iter().enumerate() {
            forbids.set(index as u32, term.as_str());
        }
    }
    if !content.vector.is_empty() {
        let mut vector = builder.init_vector(content.vector.len() as u32);
        for (index, component) in content.vector.iter().enumerate() {
            vector.set(index as u32, *component);
        }
    }
}

pub(crate) fn write_atom(mut builder: wire::atom::Builder<'_>, atom: &Atom) {
    builder.set_id(&atom.id);
    builder.set_world(atom.world.as_str());
    builder.set_writer(&atom.writer);
    builder.set_seq(atom.seq);
    builder.set_prev(&atom.prev);
    builder.set_commit(atom.commit);
    builder.set_recorded_at_unix_ms(atom.recorded_at_unix_ms);
    builder.set_state(
        wire::LifecycleState::try_from(atom.state.code()).expect("same lifecycle states"),
    );
    write_content(builder.init_content(), &atom.content);
}

pub(crate) fn write_atoms(
    mut builder: capnp::struct_list::Builder<'_, wire::atom::Owned>,
    atoms: &[Atom],
) {
    for (index, atom) in atoms.iter().enumerate() {
        write_atom(builder.reborrow().get(index as u32), atom);
    }
}

/// A `remember` call's idempotency key: `None` when empty, checked (1 to 64 bytes)
/// before anything is written.
pub(crate) fn read_idempotency_key(
    key: capnp::Result<capnp::data::Reader<'_>>,
) -> Result<Option<Vec<u8>>, CapabilityError> {
    let key = key.map_err(malformed)?;
    if key.is_empty() {
        return Ok(None);
    }
    engram_store::idempotency::validate_key(key)?;
    Ok(Some(key.to_vec()))
}

pub(crate) fn write_receipt(mut builder: wire::receipt::Builder<'_>, receipt: &Receipt) {
    builder.set_id(&receipt.id);
    builder.set_seq(receipt.seq);
    builder.set_commit(receipt.commit);
    builder.set_prev(&receipt.prev);
}

/// What `ask` was asked: filters, an optional similarity vector, and whether to explain.
pub(crate) struct AskRequest {
    pub query: Query,
    pub vector: Vec<f32>,
    pub text: String,
    pub explain: bool,
}

pub(crate) fn read_ask(reader: wire::query::Reader<'_>) -> Result<AskRequest, CapabilityError> {
    let vector: Vec<f32> = reader.get_vector().map_err(malformed)?.iter().collect();
    if vector.len() > engram_store::limits::ATOM_VECTOR_DIMENSIONS_MAX {
        return Err(CapabilityError::invalid(format!(
            "the query vector has {} dimensions; the limit is {}",
            vector.len(),
            engram_store::limits::ATOM_VECTOR_DIMENSIONS_MAX
        )));
    }
    if let Some(position) = vector.iter().position(|value| !value.is_finite()) {
        return Err(CapabilityError::invalid(format!(
            "query vector component {position} is not finite"
        )));
    }
    let text = reader.get_text().map_err(malformed)?.to_string()?;
    if text.len() > engram_store::limits::ATOM_TEXT_BYTES_MAX {
        return Err(CapabilityError::invalid(format!(
            "the query text is {} bytes; the limit is {}",
            text.len(),
            engram_store::limits::ATOM_TEXT_BYTES_MAX
        )));
    }
    Ok(AskRequest {
        query: read_query(reader)?,
        vector,
        text,
        explain: reader.get_explain(),
    })
}

pub(crate) fn read_query(reader: wire::query::Reader<'_>) -> Result<Query, CapabilityError> {
    let kinds_reader = reader.get_kinds().map_err(malformed)?;
    check_count(kinds_reader.len(), QUERY_FILTER_VALUES_MAX, "kinds")?;
    let mut kinds = Vec::with_capacity(kinds_reader.len() as usize);
    for kind in kinds_reader.iter() {
        kinds.push(atom_kind(kind?));
    }
    let labels = reader.get_labels().map_err(malformed)?;
    check_count(labels.len(), QUERY_FILTER_VALUES_MAX, "labels")?;
    let writers_reader = reader.get_writers().map_err(malformed)?;
    check_count(writers_reader.len(), QUERY_FILTER_VALUES_MAX, "writers")?;
    let mut writers = Vec::with_capacity(writers_reader.len() as usize);
    for writer in writers_reader.iter() {
        writers.push(bytes32(writer.map_err(malformed)?, "a writer key")?);
    }
    let min_importance = reader.get_min_importance();
    let max_importance = reader.get_max_importance();
    for (name, value) in [
        ("minImportance", min_importance),
        ("maxImportance", max_importance),
    ] {
        if value.is_nan() {
            return Err(CapabilityError::invalid(format!(
                "{name} is NaN; it must be in [0, 1]"
            )));
        }
    }
    // Time travel and paging both bound the commits: the answer counts atoms committed
    // at or before `asOf` and before `beforeCommit`.
    let before = match (reader.get_before_commit(), reader.get_as_of()) {
        (before, 0) => before,
        (0, as_of) => as_of.saturating_add(1),
        (before, as_of) => before.min(as_of.saturating_add(1)),
    };
    let valid_at = match reader.get_valid_at().which() {
        Ok(wire::query::valid_at::AnyTime(())) => None,
        Ok(wire::query::valid_at::Instant(instant)) => Some(instant),
        Err(capnp::NotInSchema(which)) => {
            return Err(CapabilityError::invalid(format!(
                "validAt has an unknown variant {which}"
            )));
        }
    };
    let states_reader = reader.get_states().map_err(malformed)?;
    check_count(states_reader.len(), LifecycleState::ALL.len(), "states")?;
    let mut states = Vec::with_capacity(states_reader.len() as usize);
    for state in states_reader.iter() {
        states.push(LifecycleState::from_code(state? as u16).expect("same lifecycle states"));
    }
    let as_of = reader.get_as_of();
    Ok(Query {
        kinds,
        labels: text_list(labels)?,
        writers,
        min_importance,
        max_importance,
        limit: reader.get_limit(),
        before_commit: (before != 0).then_some(before),
        valid_at,
        states,
        as_of: (as_of != 0).then_some(as_of),
    })
}

pub(crate) fn read_restriction(
    reader: wire::restriction::Reader<'_>,
) -> Result<Restriction, CapabilityError> {
    let worlds = reader.get_worlds().map_err(malformed)?;
    check_count(worlds.len(), QUERY_FILTER_VALUES_MAX, "restriction worlds")?;
    let worlds = text_list(worlds)?;
    let labels = reader.get_labels().map_err(malformed)?;
    check_count(labels.len(), QUERY_FILTER_VALUES_MAX, "restriction labels")?;
    let labels = text_list(labels)?;
    // A label no atom can carry narrows to nothing; it is refused as the mistake (or
    // the probe) it is. Labels travel in tokens as typed terms, so no character is
    // special there.
    for label in &labels {
        engram_store::atom::validate_label(label)
            .map_err(|reason| CapabilityError::invalid(format!("restriction labels: {reason}")))?;
    }
    let mut kinds = BTreeSet::new();
    for kind in reader.get_kinds().map_err(malformed)?.iter() {
        kinds.insert(atom_kind(kind?));
    }
    let max_importance = reader.get_max_importance();
    if !(0.0..=1.0).contains(&max_importance) {
        return Err(CapabilityError::invalid(format!(
            "restriction maxImportance is {max_importance}; it must be in [0, 1]"
        )));
    }
    let expires_at_unix_ms = reader.get_expires_at_unix_ms();
    if expires_at_unix_ms < 0 {
        return Err(CapabilityError::invalid(
            "restriction expiresAtUnixMs is negative; use 0 for no expiry",
        ));
    }
    let set = |values: Vec<String>| (!values.is_empty()).then(|| values.into_iter().collect());
    Ok(Restriction {
        worlds: set(worlds),
        kinds: (!kinds.is_empty()).then_some(kinds),
        labels: set(labels),
        max_importance,
        expires_at_unix_ms,
        rate: read_rate(reader.get_rate().map_err(malformed)?),
        approve: !reader.get_without_approve(),
        save: !reader.get_without_save(),
    })
}

pub(crate) fn write_epoch(mut builder: wire::epoch::Builder<'_>, epoch: &Epoch) {
    builder.set_number(epoch.number);
    builder.set_head(&epoch.head);
    builder.set_advanced_at_unix_ms(epoch.advanced_at_unix_ms);
}

pub(crate) fn read_grants(
    list: capnp::struct_list::Reader<'_, wire::grant::Owned>,
) -> Result<Vec<Grant>, CapabilityError> {
    let mut grants = Vec::with_capacity(list.len() as usize);
    for grant in list.iter() {
        grants.push(Grant {
            world: grant.get_world().map_err(malformed)?.to_string()?,
            read: grant.get_read(),
            write: grant.get_write(),
            observe: grant.get_observe(),
            approve: grant.get_approve(),
            rate: read_rate(grant.get_rate().map_err(malformed)?),
        });
    }
    Ok(grants)
}

pub(crate) fn write_principal(
    mut builder: wire::principal_info::Builder<'_>,
    principal: &Principal,
) {
    builder.set_name(principal.name.as_str());
    builder.set_public_key(&principal.public_key);
    builder.set_admin(principal.admin);
    let mut grants = builder.init_grants(principal.grants.len() as u32);
    for (index, grant) in principal.grants.iter().enumerate() {
        let mut wire_grant = grants.reborrow().get(index as u32);
        wire_grant.set_world(grant.world.as_str());
        wire_grant.set_read(grant.read);
        wire_grant.set_write(grant.write);
        wire_grant.set_observe(grant.observe);
        wire_grant.set_approve(grant.approve);
        let mut rate = wire_grant.init_rate();
        rate.set_calls_per_second(grant.rate.calls_per_second);
        rate.set_atoms_per_second(grant.rate.atoms_per_second);
    }
}

fn read_rate(reader: wire::rate::Reader<'_>) -> Rate {
    Rate {
        calls_per_second: reader.get_calls_per_second(),
        atoms_per_second: reader.get_atoms_per_second(),
    }
}

pub(crate) fn write_world(mut builder: wire::world_info::Builder<'_>, world: &WorldInfo) {
    builder.set_name(world.name.as_str());
    builder.set_state(match world.state {
        WorldState::Active => wire::WorldState::Active,
        WorldState::Archived => wire::WorldState::Archived,
    });
    builder.set_atoms(world.atoms);
    builder.set_vector_dimension(world.dimension);
}

/// An epoch head given by a client: exactly 32 bytes, or empty for all zeros.
pub(crate) fn read_epoch_head(data: &[u8]) -> Result<Hash, CapabilityError> {
    if data.is_empty() {
        return Ok([0; 32]);
    }
    bytes32(data, "the epoch head")
}
