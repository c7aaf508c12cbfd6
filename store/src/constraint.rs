//! Negative constraints and the pre-flight check: a constraint atom names what it
//! forbids as words or phrases (`AtomContent::forbids`), and `ReadView::check` finds
//! every live constraint a plan's text violates. Matching is deterministic and
//! explainable: a term matches when its words appear in the plan's words, in order and
//! next to each other, case-insensitively; words are runs of letters and digits.

use std::collections::{BTreeSet, HashMap};

use crate::atom::{Atom, AtomKind, LifecycleState, validate_label};
use crate::error::StoreError;
use crate::limits::{
    ATOM_FORBIDS_MAX, CHECK_LABELS_MAX, FORBIDDEN_TERM_BYTES_MAX, FORBIDDEN_TERM_WORDS_MAX,
};
use crate::tables::split_row;
use crate::{ReadBudget, ReadView, Visible};

/// The words of `text`, lowercased: runs of letters and digits.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|character: char| !character.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// Checks a constraint's forbidden terms: only constraints carry them; each has 1 to
/// `FORBIDDEN_TERM_WORDS_MAX` words and at most `FORBIDDEN_TERM_BYTES_MAX` bytes; no
/// term is given twice.
pub(crate) fn validate_forbids(kind: AtomKind, forbids: &[String]) -> Result<(), String> {
    if forbids.is_empty() {
        return Ok(());
    }
    if kind != AtomKind::Constraint {
        return Err(format!(
            "only constraints forbid terms; this atom is a {kind}"
        ));
    }
    if forbids.len() > ATOM_FORBIDS_MAX {
        return Err(format!(
            "{} forbidden terms; the limit is {ATOM_FORBIDS_MAX}",
            forbids.len()
        ));
    }
    for (position, term) in forbids.iter().enumerate() {
        if term.len() > FORBIDDEN_TERM_BYTES_MAX {
            return Err(format!(
                "forbidden term {:?}… is {} bytes; the limit is {FORBIDDEN_TERM_BYTES_MAX}",
                term.chars().take(16).collect::<String>(),
                term.len()
            ));
        }
        let count = words(term).count();
        if count == 0 || count > FORBIDDEN_TERM_WORDS_MAX {
            return Err(format!(
                "forbidden term {term:?} has {count} words; a term has 1 to \
                 {FORBIDDEN_TERM_WORDS_MAX} words (letters and digits)"
            ));
        }
        if forbids[..position].contains(term) {
            return Err(format!("forbidden term {term:?} is given twice"));
        }
    }
    Ok(())
}

/// The word of each forbidden term the `forbids` index posts it under, once each: its
/// longest (the first of the longest), which a plan is least likely to contain by
/// chance, so a check examines few constraints a plan does not violate. Any of a
/// term's words would do: a plan contains the term only if it contains all of them.
pub(crate) fn key_words(forbids: &[String]) -> BTreeSet<String> {
    forbids
        .iter()
        .filter_map(|term| {
            words(term).reduce(|longest, word| {
                if word.chars().count() > longest.chars().count() {
                    word
                } else {
                    longest
                }
            })
        })
        .collect()
}

/// A plan to check: its words, where each occurs, and the labels it is checked under.
pub struct Plan {
    words: Vec<String>,
    /// Each distinct word's positions in `words`, so matching a term costs the
    /// occurrences of its first word, not the plan's length.
    positions: HashMap<String, Vec<usize>>,
    labels: Vec<String>,
}

impl Plan {
    /// Checks the labels' count and form; the text may be anything up to the caller's
    /// size limit.
    pub fn new(text: &str, labels: Vec<String>) -> Result<Plan, StoreError> {
        let invalid = |reason: String| StoreError::InvalidQuery { reason };
        if labels.len() > CHECK_LABELS_MAX {
            return Err(invalid(format!(
                "{} labels; the limit is {CHECK_LABELS_MAX}",
                labels.len()
            )));
        }
        for label in &labels {
            validate_label(label).map_err(invalid)?;
        }
        let words: Vec<String> = words(text).collect();
        let mut positions: HashMap<String, Vec<usize>> = HashMap::new();
        for (position, word) in words.iter().enumerate() {
            positions.entry(word.clone()).or_default().push(position);
        }
        Ok(Plan {
            words,
            positions,
            labels,
        })
    }

    /// Whether a constraint with these labels applies: it has none, the plan has none
    /// (nothing narrows the check), or they share one.
    fn in_scope(&self, constraint_labels: &[String]) -> bool {
        constraint_labels.is_empty()
            || self.labels.is_empty()
            || constraint_labels
                .iter()
                .any(|label| self.labels.contains(label))
    }

    /// Whether the words of `term` appear in the plan in order and next to each other.
    fn contains(&self, term: &str) -> bool {
        let term: Vec<String> = words(term).collect();
        let Some(starts) = term.first().and_then(|first| self.positions.get(first)) else {
            return false;
        };
        starts.iter().any(|start| {
            self.words
                .get(*start..start + term.len())
                .is_some_and(|window| window == term.as_slice())
        })
    }
}

/// One constraint a plan violates.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// The constraint: who stated it (writer), when (commit, recorded at), its text.
    pub constraint: Atom,
    /// Its forbidden terms that the plan contains.
    pub matched: Vec<String>,
}

/// What `check` found within its budget.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    /// Oldest constraint first.
    pub violations: Vec<Violation>,
    /// Work done against the budget: the plan's distinct words looked up, and the
    /// postings read (each names a constraint to examine).
    pub examined: usize,
    /// The budget (of work, or of the answer's bytes) ran out before every candidate
    /// was examined.
    pub examined_budget_spent: bool,
}

impl ReadView {
    /// Every live constraint (asserted or approved) of `world` that `visible` lets
    /// through, is in the plan's scope, and forbids a term the plan contains. Candidates
    /// come from the `forbids` index, one lookup per distinct word of the plan; each
    /// word looked up and posting read (a candidate to examine) counts against `budget`;
    /// past it, the candidates found so far are examined.
    pub fn check(
        &self,
        world: &str,
        plan: &Plan,
        budget: ReadBudget,
        visible: Visible<'_>,
    ) -> Result<CheckReport, StoreError> {
        self.require_world(world)?;
        let mut report = CheckReport {
            violations: Vec::new(),
            examined: 0,
            examined_budget_spent: false,
        };
        let spend = |report: &mut CheckReport| {
            if report.examined == budget.examined {
                report.examined_budget_spent = true;
                return false;
            }
            report.examined += 1;
            true
        };
        let mut candidates = BTreeSet::new();
        'words: for word in plan.positions.keys() {
            if !spend(&mut report) {
                break;
            }
            for posting in self
                .snapshot
                .forbids
                .range((world, word.as_str(), 0)..=(world, word.as_str(), u64::MAX))?
            {
                if !spend(&mut report) {
                    break 'words;
                }
                candidates.insert(posting?.0.value().2);
            }
        }
        // Each candidate was paid for when its posting was read.
        let mut bytes = 0;
        for commit in candidates {
            let row = self.row(world, commit)?;
            let (id, entry) = split_row(world, commit, row.value())?;
            if !visible(&self.facts(world, commit, entry)?) {
                continue;
            }
            let state = self.state(world, commit, u64::MAX)?;
            if !matches!(state, LifecycleState::Asserted | LifecycleState::Approved) {
                continue;
            }
            let mut constraint = crate::atom::decode_entry(id, entry)?;
            if !plan.in_scope(&constraint.content.labels) {
                continue;
            }
            let matched: Vec<String> = constraint
                .content
                .forbids
                .iter()
                .filter(|term| plan.contains(term))
                .cloned()
                .collect();
            if !matched.is_empty() {
                // The answer's bytes are bounded too (the first violation always fits).
                bytes += constraint.answer_bytes();
                if bytes > budget.bytes && !report.violations.is_empty() {
                    report.examined_budget_spent = true;
                    break;
                }
                constraint.state = state;
                report.violations.push(Violation {
                    constraint,
                    matched,
                });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_match_whole_words_in_order() {
        let plan = Plan::new(
            "Fetch the page with Python's `requests.get`, then left-pad it",
            vec![],
        )
        .unwrap();
        assert!(plan.contains("requests"));
        assert!(plan.contains("REQUESTS"));
        assert!(plan.contains("left-pad"));
        assert!(plan.contains("left pad"));
        assert!(!plan.contains("request"));
        assert!(!plan.contains("pad left"));
        assert!(!plan.contains("httpx"));
        assert!(validate_forbids(AtomKind::Fact, &["x".into()]).is_err());
        assert!(validate_forbids(AtomKind::Constraint, &["--".into()]).is_err());
        assert!(validate_forbids(AtomKind::Constraint, &["requests".into()]).is_ok());
    }
}
