//! Ranking: one function with named factors, so every kind of ask weighs the same things
//! the same way and `explain` can show each of them.

use crate::atom::{Atom, LifecycleState};

/// Weight of relevance: the cosine similarity to the query vector, or the fused
/// relevance of the text and vector rankings.
pub const RELEVANCE_WEIGHT: f64 = 0.7;
/// Weight of the atom's importance.
pub const IMPORTANCE_WEIGHT: f64 = 0.1;
/// Weight of recency: the atom's commit over the world's last commit.
pub const RECENCY_WEIGHT: f64 = 0.1;
/// Weight of its writer's trust on its labels ([`Trust::score`]).
pub const TRUST_WEIGHT: f64 = 0.1;

const _: () =
    assert!(RELEVANCE_WEIGHT + IMPORTANCE_WEIGHT + RECENCY_WEIGHT + TRUST_WEIGHT <= 1.0 + 1e-9);

/// What an atom's lifecycle state multiplies its score by: decisions first, then what
/// is asserted, then proposals, and what is no longer knowledge last (found only by
/// asks for those states).
pub fn lifecycle_factor(state: LifecycleState) -> f64 {
    match state {
        LifecycleState::Approved => 1.0,
        LifecycleState::Asserted => 0.9,
        LifecycleState::Proposed => 0.6,
        LifecycleState::Deprecated => 0.4,
        LifecycleState::Rejected | LifecycleState::Superseded | LifecycleState::Retracted => 0.2,
    }
}

/// Everything a ranked atom's score weighs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Factors {
    /// In [0, 1]: the cosine similarity for a vector ask, the fused reciprocal-rank
    /// relevance when text takes part.
    pub relevance: f64,
    pub importance: f32,
    pub commit: u64,
    pub last_commit: u64,
    /// In (0, 1); 0.5 for a reader whose restriction hides atoms (trust counts them).
    pub trust: f64,
    pub state: LifecycleState,
}

/// `lifecycle × (0.7 relevance + 0.1 importance + 0.1 recency + 0.1 trust)`.
pub fn score(factors: &Factors) -> f64 {
    lifecycle_factor(factors.state)
        * (RELEVANCE_WEIGHT * factors.relevance
            + IMPORTANCE_WEIGHT * f64::from(factors.importance)
            + RECENCY_WEIGHT * recency(factors.commit, factors.last_commit)
            + TRUST_WEIGHT * factors.trust)
}

/// Each factor and weight of [`score`]; `why` says where the relevance came from.
pub fn explain(why: &str, factors: &Factors) -> String {
    let Factors {
        relevance,
        importance,
        commit,
        last_commit,
        trust,
        state,
    } = *factors;
    format!(
        "{why}: {state} {lifecycle} × (relevance {relevance:.4} × {RELEVANCE_WEIGHT} + \
         importance {importance:.3} × {IMPORTANCE_WEIGHT} + recency {recency:.4} × \
         {RECENCY_WEIGHT} + trust {trust:.4} × {TRUST_WEIGHT}) = {total:.4}",
        lifecycle = lifecycle_factor(state),
        recency = recency(commit, last_commit),
        total = score(factors),
    )
}

/// The atom's commit over the world's last commit.
fn recency(commit: u64, last_commit: u64) -> f64 {
    commit as f64 / last_commit.max(1) as f64
}

/// What other principals' atoms said of one writer's atoms (on one label, or on all):
/// how many `confirms` and `corrects` links they made to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    pub confirms: u64,
    pub corrects: u64,
}

impl Trust {
    /// The writer's trust in (0, 1): the share of confirmations among every word said
    /// of its atoms, counting one of each before any is said (Laplace's rule of
    /// succession), so 0.5 with no evidence and nearer 0 or 1 the more there is.
    pub fn score(&self) -> f64 {
        (1.0 + self.confirms as f64) / (2.0 + self.confirms as f64 + self.corrects as f64)
    }
}

/// An atom with its score.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub atom: Atom,
    pub similarity: f32,
    pub score: f64,
    /// Each factor and weight of the score.
    pub explanation: String,
}

/// The constant of reciprocal rank fusion: a hit at rank r (from 1) of one ranking
/// contributes 1 / (RRF_K + r).
pub const RRF_K: f64 = 60.0;
