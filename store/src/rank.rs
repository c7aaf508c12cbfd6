//! Ranking: one function with named factors, so every kind of ask weighs the same things
//! the same way and `explain` can show each of them.

use crate::atom::Atom;

/// Weight of relevance: the cosine similarity to the query vector, or the fused
/// relevance of the text and vector rankings.
pub const SIMILARITY_WEIGHT: f64 = 0.8;
/// Weight of the atom's importance.
pub const IMPORTANCE_WEIGHT: f64 = 0.1;
/// Weight of recency: the atom's commit over the world's last commit.
pub const RECENCY_WEIGHT: f64 = 0.1;

const _: () = assert!(SIMILARITY_WEIGHT + IMPORTANCE_WEIGHT + RECENCY_WEIGHT <= 1.0 + 1e-9);

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

/// Scores an atom from its facts: `relevance` in [0, 1] (the cosine similarity for a
/// vector ask, the fused reciprocal-rank relevance when text takes part).
pub fn score(relevance: f64, importance: f32, commit: u64, last_commit: u64) -> f64 {
    SIMILARITY_WEIGHT * relevance
        + IMPORTANCE_WEIGHT * f64::from(importance)
        + RECENCY_WEIGHT * recency(commit, last_commit)
}

/// Each factor and weight of [`score`]; `why` says where the relevance came from.
pub fn explain(
    why: &str,
    relevance: f64,
    importance: f32,
    commit: u64,
    last_commit: u64,
) -> String {
    let total = score(relevance, importance, commit, last_commit);
    let recency = recency(commit, last_commit);
    format!(
        "{why}: relevance {relevance:.4} × {SIMILARITY_WEIGHT} + importance {importance:.3} × \
         {IMPORTANCE_WEIGHT} + recency {recency:.4} × {RECENCY_WEIGHT} = {total:.4}"
    )
}

/// The atom's commit over the world's last commit.
fn recency(commit: u64, last_commit: u64) -> f64 {
    commit as f64 / last_commit.max(1) as f64
}
