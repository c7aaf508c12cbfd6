//! Structured queries (`ask`) answered from the kind, label and writer postings, and
//! replay in commit order from the world's entries.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use redb::ReadOnlyTable;

use crate::atom::{AtomKind, Facts, LifecycleState, PublicKey, validate_label};
use crate::error::StoreError;
use crate::limits::{ASK_LIMIT_MAX, QUERY_FILTER_VALUES_MAX, REPLAY_LIMIT_MAX};

/// Filters of `ask`. Empty lists filter nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The atom's kind is one of these.
    pub kinds: Vec<AtomKind>,
    /// The atom carries every one of these labels.
    pub labels: Vec<String>,
    /// The atom's writer is one of these.
    pub writers: Vec<PublicKey>,
    pub min_importance: f32,
    pub max_importance: f32,
    /// 1 to `ASK_LIMIT_MAX`.
    pub limit: u32,
    /// Only atoms with a commit below this.
    pub before_commit: Option<u64>,
    /// Only atoms whose claimed validity holds at this instant (unix ms).
    pub valid_at: Option<i64>,
    /// Only atoms in one of these lifecycle states; empty: current knowledge (asserted
    /// or approved, and no transition atoms unless `kinds` names them).
    pub states: Vec<LifecycleState>,
    /// The commit whose states the answer reports and filters on; `None`: now. (The
    /// commits it counts are bounded by `before_commit`.)
    pub as_of: Option<u64>,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            kinds: Vec::new(),
            labels: Vec::new(),
            writers: Vec::new(),
            min_importance: 0.0,
            max_importance: 1.0,
            limit: 20,
            before_commit: None,
            valid_at: None,
            states: Vec::new(),
            as_of: None,
        }
    }
}

impl Query {
    /// Checks ranges and sizes; the message says what to change.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: String| Err(StoreError::InvalidQuery { reason });
        if self.limit == 0 || self.limit > ASK_LIMIT_MAX {
            return invalid(format!(
                "limit is {}; it must be 1 to {ASK_LIMIT_MAX}",
                self.limit
            ));
        }
        for (name, value) in [
            ("minImportance", self.min_importance),
            ("maxImportance", self.max_importance),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(format!("{name} is {value}; it must be in [0, 1]"));
            }
        }
        if self.min_importance > self.max_importance {
            return invalid("minImportance is above maxImportance".into());
        }
        for (name, count) in [
            ("kinds", self.kinds.len()),
            ("labels", self.labels.len()),
            ("writers", self.writers.len()),
        ] {
            if count > QUERY_FILTER_VALUES_MAX {
                return invalid(format!(
                    "{count} {name}; the limit is {QUERY_FILTER_VALUES_MAX}"
                ));
            }
        }
        for label in &self.labels {
            validate_label(label).map_err(|reason| StoreError::InvalidQuery { reason })?;
        }
        if self.states.len() > LifecycleState::ALL.len() {
            return invalid(format!(
                "{} states; there are {}",
                self.states.len(),
                LifecycleState::ALL.len()
            ));
        }
        Ok(())
    }

    /// Whether an atom of `kind` in lifecycle `state` passes the states filter.
    pub fn admits_state(&self, kind: AtomKind, state: LifecycleState) -> bool {
        if self.states.is_empty() {
            matches!(state, LifecycleState::Asserted | LifecycleState::Approved)
                && (kind != AtomKind::Transition || self.kinds.contains(&AtomKind::Transition))
        } else {
            self.states.contains(&state)
        }
    }

    /// The states whose index can list this query's candidates: its states when none
    /// of them is `asserted` (the state of most atoms, which the index does not list)
    /// and it asks about now (the index holds the current states only).
    pub(crate) fn indexed_states(&self) -> Option<&[LifecycleState]> {
        (!self.states.is_empty()
            && !self.states.contains(&LifecycleState::Asserted)
            && self.as_of.is_none())
        .then_some(self.states.as_slice())
    }

    /// The commit the answer's states are read at.
    pub fn states_as_of(&self) -> u64 {
        self.as_of.unwrap_or(u64::MAX)
    }

    /// Whether an atom with these facts passes every filter.
    pub fn matches(&self, facts: &(impl Facts + ?Sized)) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&facts.kind()))
            && self
                .labels
                .iter()
                .all(|wanted| facts.any_label(&mut |label| label == wanted))
            && (self.writers.is_empty() || self.writers.contains(facts.writer()))
            && facts.importance() >= self.min_importance
            && facts.importance() <= self.max_importance
            && self
                .before_commit
                .is_none_or(|before| facts.commit() < before)
            && self.valid_at.is_none_or(|instant| {
                facts
                    .valid_time()
                    .is_some_and(|valid| valid.holds_at(instant))
            })
    }
}

/// Commits in descending order.
pub(crate) type Candidates = Box<dyn Iterator<Item = Result<u64, StoreError>>>;

/// One table range walked newest first, as commits.
pub(crate) fn descending<'a, K, V>(
    table: &ReadOnlyTable<K, V>,
    low: K::SelfType<'a>,
    high: K::SelfType<'a>,
    commit_of: fn(K::SelfType<'_>) -> u64,
) -> Result<Candidates, StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let range = table.range(low..high)?;
    Ok(Box::new(range.rev().map(move |entry| {
        let (key, _) = entry?;
        Ok(commit_of(key.value()))
    })))
}

/// Merges several descending candidate streams into one, newest first.
pub(crate) fn merge_descending(mut sources: Vec<Candidates>) -> Candidates {
    if sources.len() == 1 {
        return sources.pop().expect("one source");
    }
    let mut heap = BinaryHeap::with_capacity(sources.len());
    let mut failed = None;
    for (index, source) in sources.iter_mut().enumerate() {
        match source.next() {
            Some(Ok(commit)) => heap.push((commit, Reverse(index))),
            Some(Err(error)) => failed = Some(error),
            None => {}
        }
    }
    let mut failed = failed;
    Box::new(std::iter::from_fn(move || {
        if let Some(error) = failed.take() {
            return Some(Err(error));
        }
        let (commit, Reverse(index)) = heap.pop()?;
        match sources[index].next() {
            Some(Ok(next)) => heap.push((next, Reverse(index))),
            Some(Err(error)) => failed = Some(error),
            None => {}
        }
        Some(Ok(commit))
    }))
}

/// Checks a replay limit.
pub(crate) fn validate_replay_limit(limit: u32) -> Result<(), StoreError> {
    if limit == 0 || limit > REPLAY_LIMIT_MAX {
        return Err(StoreError::InvalidQuery {
            reason: format!("replay limit is {limit}; it must be 1 to {REPLAY_LIMIT_MAX}"),
        });
    }
    Ok(())
}
