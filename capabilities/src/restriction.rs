//! Restrictions and attenuation: what a capability may still do. Every dimension is
//! `None` (unrestricted) or a set; narrowing intersects, so nothing ever widens.

use std::collections::BTreeSet;

use engram_store::{AtomContent, AtomKind, Facts, Query, Rate};

/// The narrowing a capability carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Restriction {
    pub worlds: Option<BTreeSet<String>>,
    pub kinds: Option<BTreeSet<AtomKind>>,
    pub labels: Option<BTreeSet<String>>,
    pub max_importance: f32,
    /// 0 = never.
    pub expires_at_unix_ms: i64,
    /// The rate asked for by this narrowing (enforced by the buckets of the grip).
    pub rate: Rate,
    /// Whether the approve right survives this narrowing (`Restriction.withoutApprove`
    /// takes it away).
    pub approve: bool,
    /// Whether the capability may be saved as a token (`Restriction.withoutSave` takes
    /// it away; a capability handed to a spawned child has it taken away).
    pub save: bool,
}

impl Restriction {
    /// No narrowing at all.
    pub const NONE: Restriction = Restriction {
        worlds: None,
        kinds: None,
        labels: None,
        max_importance: 1.0,
        expires_at_unix_ms: 0,
        rate: Rate::UNLIMITED,
        approve: true,
        save: true,
    };

    /// The intersection of `self` and `other`: never wider than either.
    pub fn narrow(&self, other: &Restriction) -> Restriction {
        fn intersect<T: Ord + Clone>(
            left: &Option<BTreeSet<T>>,
            right: &Option<BTreeSet<T>>,
        ) -> Option<BTreeSet<T>> {
            match (left, right) {
                (None, None) => None,
                (Some(set), None) | (None, Some(set)) => Some(set.clone()),
                (Some(left), Some(right)) => Some(left.intersection(right).cloned().collect()),
            }
        }
        let expires_at_unix_ms = match (self.expires_at_unix_ms, other.expires_at_unix_ms) {
            (0, other) => other,
            (mine, 0) => mine,
            (mine, other) => mine.min(other),
        };
        Restriction {
            worlds: intersect(&self.worlds, &other.worlds),
            kinds: intersect(&self.kinds, &other.kinds),
            labels: intersect(&self.labels, &other.labels),
            max_importance: self.max_importance.min(other.max_importance),
            expires_at_unix_ms,
            rate: self.rate.narrow(&other.rate),
            approve: self.approve && other.approve,
            save: self.save && other.save,
        }
    }

    /// This restriction as JSON, naming only what it narrows (`{}` for none): what the
    /// audit trail records.
    pub(crate) fn describe(&self) -> String {
        let mut fields = serde_json::Map::new();
        if let Some(worlds) = &self.worlds {
            fields.insert("worlds".into(), serde_json::json!(worlds));
        }
        if let Some(kinds) = &self.kinds {
            let names: Vec<&str> = kinds.iter().map(|kind| kind.name()).collect();
            fields.insert("kinds".into(), serde_json::json!(names));
        }
        if let Some(labels) = &self.labels {
            fields.insert("labels".into(), serde_json::json!(labels));
        }
        if self.max_importance < 1.0 {
            fields.insert(
                "maxImportance".into(),
                serde_json::json!(self.max_importance),
            );
        }
        if self.expires_at_unix_ms != 0 {
            fields.insert(
                "expiresAtUnixMs".into(),
                serde_json::json!(self.expires_at_unix_ms),
            );
        }
        if !self.rate.is_unlimited() {
            fields.insert(
                "rate".into(),
                serde_json::json!({
                    "callsPerSecond": self.rate.calls_per_second,
                    "atomsPerSecond": self.rate.atoms_per_second,
                }),
            );
        }
        if !self.approve {
            fields.insert("withoutApprove".into(), serde_json::json!(true));
        }
        if !self.save {
            fields.insert("withoutSave".into(), serde_json::json!(true));
        }
        serde_json::Value::Object(fields).to_string()
    }

    pub(crate) fn allows_world(&self, world: &str) -> bool {
        self.worlds
            .as_ref()
            .is_none_or(|worlds| worlds.contains(world))
    }

    pub(crate) fn expired(&self, now_unix_ms: i64) -> bool {
        self.expires_at_unix_ms != 0 && now_unix_ms >= self.expires_at_unix_ms
    }

    /// Whether this restriction hides any atom (by kind, label or importance), as
    /// opposed to narrowing only worlds and time.
    pub(crate) fn hides_atoms(&self) -> bool {
        self.kinds.is_some() || self.labels.is_some() || self.max_importance < 1.0
    }

    /// Whether a reader under this restriction sees an atom with these facts.
    pub(crate) fn shows(&self, facts: &(impl Facts + ?Sized)) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&facts.kind()))
            && self
                .labels
                .as_ref()
                .is_none_or(|allowed| facts.any_label(&mut |label| allowed.contains(label)))
            && facts.importance() <= self.max_importance
    }

    /// Why a writer under this restriction may not write `content`, if it may not.
    pub(crate) fn forbids_writing(&self, content: &AtomContent) -> Option<String> {
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&content.kind)
        {
            return Some(format!(
                "this writer may write only kinds {}; not {}",
                list(kinds.iter()),
                content.kind
            ));
        }
        if let Some(labels) = &self.labels {
            if content.labels.is_empty() {
                return Some(format!(
                    "this writer must label every atom with one of {}",
                    list(labels.iter())
                ));
            }
            if let Some(outside) = content.labels.iter().find(|label| !labels.contains(*label)) {
                return Some(format!(
                    "this writer may use only labels {}; not {outside:?}",
                    list(labels.iter())
                ));
            }
        }
        if content.importance > self.max_importance {
            return Some(format!(
                "this writer may write importance up to {}; not {}",
                self.max_importance, content.importance
            ));
        }
        None
    }

    /// Folds this restriction's kinds and importance into `query`, so the store's
    /// indexes answer a restricted reader too. Returns false if nothing can match.
    pub(crate) fn fold_into(&self, query: &mut Query) -> bool {
        if let Some(kinds) = &self.kinds {
            if query.kinds.is_empty() {
                query.kinds = kinds.iter().copied().collect();
            } else {
                query.kinds.retain(|kind| kinds.contains(kind));
            }
            if query.kinds.is_empty() {
                return false;
            }
        }
        query.max_importance = query.max_importance.min(self.max_importance);
        query.min_importance <= query.max_importance
    }
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let names: Vec<String> = items.map(|item| item.to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(values: &[AtomKind]) -> Option<BTreeSet<AtomKind>> {
        Some(values.iter().copied().collect())
    }

    #[test]
    fn narrowing_never_widens() {
        let holder = Restriction {
            kinds: kinds(&[AtomKind::Fact, AtomKind::Plan]),
            max_importance: 0.5,
            expires_at_unix_ms: 100,
            ..Restriction::NONE
        };
        let wider = Restriction {
            kinds: kinds(&[AtomKind::Fact, AtomKind::Decision]),
            max_importance: 0.9,
            expires_at_unix_ms: 0,
            ..Restriction::NONE
        };
        let narrowed = holder.narrow(&wider);
        assert_eq!(narrowed.kinds, kinds(&[AtomKind::Fact]));
        assert_eq!(narrowed.max_importance, 0.5);
        assert_eq!(narrowed.expires_at_unix_ms, 100);
        assert_eq!(narrowed.narrow(&Restriction::NONE), narrowed);
        let disjoint = narrowed.narrow(&Restriction {
            kinds: kinds(&[AtomKind::Plan]),
            ..Restriction::NONE
        });
        assert_eq!(disjoint.kinds, kinds(&[]));
        assert!(
            disjoint
                .forbids_writing(&AtomContent::new(AtomKind::Plan, "x"))
                .is_some()
        );
    }

    mod chains {
        //! Random chains of attenuation never widen any dimension: whatever the chain
        //! allows (a world, a write, a read, a time, the approve right, a rate), every
        //! link of it allows.
        use proptest::prelude::*;

        use super::*;
        use crate::restriction::arbitrary::{WORLDS, content, no_wider, restriction};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn a_chain_of_attenuations_never_widens(
                chain in proptest::collection::vec(restriction(), 1..6),
                world in proptest::sample::select(&WORLDS[..]),
                written in content(),
                now in 0i64..12_000,
            ) {
                let narrowed = chain
                    .iter()
                    .fold(Restriction::NONE, |narrowed, link| narrowed.narrow(link));
                for link in &chain {
                    if narrowed.allows_world(world) {
                        prop_assert!(link.allows_world(world));
                    }
                    no_wider(&narrowed, link, &written, now)?;
                }
                // The order of the links does not matter.
                let reversed = chain
                    .iter()
                    .rev()
                    .fold(Restriction::NONE, |narrowed, link| narrowed.narrow(link));
                prop_assert_eq!(reversed, narrowed);
            }
        }
    }
}

/// Random restrictions and atoms, and what "no wider" means, for property tests.
#[cfg(test)]
pub(crate) mod arbitrary {
    use proptest::prelude::*;
    use proptest::sample::subsequence;

    use super::*;
    use engram_store::{Atom, LifecycleState};

    pub(crate) const WORLDS: [&str; 3] = ["team/a", "team/b", "team/c"];
    const LABELS: [&str; 4] = ["public", "auth", "secret", "ops"];

    fn names(pool: &'static [&'static str]) -> impl Strategy<Value = Option<BTreeSet<String>>> {
        proptest::option::of(
            subsequence(pool, 0..=pool.len())
                .prop_map(|names| names.into_iter().map(str::to_owned).collect()),
        )
    }

    fn kinds() -> impl Strategy<Value = Option<BTreeSet<AtomKind>>> {
        proptest::option::of(
            subsequence(AtomKind::ALL, 0..=AtomKind::ALL.len())
                .prop_map(|kinds| kinds.into_iter().collect()),
        )
    }

    /// 0 (no limit) or a rate.
    fn per_second() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), 1u32..1000]
    }

    pub(crate) fn restriction() -> impl Strategy<Value = Restriction> {
        (
            names(&WORLDS),
            kinds(),
            names(&LABELS),
            0.0f32..=1.0,
            prop_oneof![Just(0i64), 1i64..10_000],
            (per_second(), per_second()),
            (any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |(
                    worlds,
                    kinds,
                    labels,
                    max_importance,
                    expires,
                    (calls, atoms),
                    (approve, save),
                )| {
                    Restriction {
                        worlds,
                        kinds,
                        labels,
                        max_importance,
                        expires_at_unix_ms: expires,
                        rate: Rate {
                            calls_per_second: calls,
                            atoms_per_second: atoms,
                        },
                        approve,
                        save,
                    }
                },
            )
    }

    pub(crate) fn content() -> impl Strategy<Value = AtomContent> {
        (
            proptest::sample::select(AtomKind::ALL),
            subsequence(&LABELS, 0..=2),
            0.0f32..=1.0,
        )
            .prop_map(|(kind, labels, importance)| {
                let mut content = AtomContent::new(kind, "a random atom");
                content.labels = labels.into_iter().map(str::to_owned).collect();
                content.importance = importance;
                content
            })
    }

    fn stored(content: AtomContent) -> Atom {
        Atom {
            id: [1; 32],
            world: WORLDS[0].to_owned(),
            writer: [2; 32],
            seq: 1,
            prev: [0; 32],
            commit: 1,
            recorded_at_unix_ms: 0,
            content,
            state: LifecycleState::Asserted,
            links_count: true,
        }
    }

    /// Whether `narrowed` is no faster than `link` (0 is no limit).
    fn slower(narrowed: u32, link: u32) -> bool {
        link == 0 || (narrowed != 0 && narrowed <= link)
    }

    /// Fails unless `narrowed` allows no more than `link` in every dimension but worlds:
    /// writing `written`, reading it, at `now`, approving, importance and rates.
    pub(crate) fn no_wider(
        narrowed: &Restriction,
        link: &Restriction,
        written: &AtomContent,
        now: i64,
    ) -> Result<(), TestCaseError> {
        if narrowed.forbids_writing(written).is_none() {
            prop_assert!(link.forbids_writing(written).is_none(), "{link:?}");
        }
        let read = stored(written.clone());
        if narrowed.shows(&read) {
            prop_assert!(link.shows(&read), "{link:?}");
        }
        if link.expired(now) {
            prop_assert!(narrowed.expired(now));
        }
        prop_assert!(!narrowed.approve || link.approve);
        prop_assert!(!narrowed.save || link.save);
        prop_assert!(narrowed.max_importance <= link.max_importance);
        prop_assert!(slower(
            narrowed.rate.calls_per_second,
            link.rate.calls_per_second
        ));
        prop_assert!(slower(
            narrowed.rate.atoms_per_second,
            link.rate.atoms_per_second
        ));
        Ok(())
    }
}
