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

/// Scores an atom: `relevance` in [0, 1] (the cosine similarity for a vector ask, the
/// fused reciprocal-rank relevance when text takes part), `why` says where it came from.
pub fn rank(atom: Atom, relevance: f64, similarity: f32, why: &str, last_commit: u64) -> Ranked {
    let importance = f64::from(atom.content.importance);
    let recency = atom.commit as f64 / last_commit.max(1) as f64;
    let score =
        SIMILARITY_WEIGHT * relevance + IMPORTANCE_WEIGHT * importance + RECENCY_WEIGHT * recency;
    let explanation = format!(
        "{why}: relevance {relevance:.4} × {SIMILARITY_WEIGHT} + importance {importance:.3} × \
         {IMPORTANCE_WEIGHT} + recency {recency:.4} × {RECENCY_WEIGHT} = {score:.4}"
    );
    Ranked {
        atom,
        similarity,
        score,
        explanation,
    }
}
