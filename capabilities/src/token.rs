//! Tokens: capabilities saved as biscuit v3 tokens (the schema's `tokenFormat`).
//!
//! The node signs a token's authority block with its node key; whoever holds the token
//! may append blocks that narrow it, with any biscuit library, offline. Every fact in
//! every block is a narrowing the node enforces on each call of the restored
//! capability (a `Restriction`), so no rule, check or unknown fact is accepted: the node
//! would not enforce what it does not understand, and a narrowing it ignored would
//! widen what the block's writer meant to allow.

use biscuit_auth::builder::{self, Term};
use biscuit_auth::{Biscuit, KeyPair};
use engram_schema::token::Narrowing;
use engram_store::{AtomKind, PublicKey, Rate};
use std::collections::BTreeSet;

use crate::error::CapabilityError;
use crate::rate::Lineage;
use crate::restriction::Restriction;

/// The token format the authority block's `engram` fact names.
pub(crate) const TOKEN_FORMAT: i64 = 1;
/// The largest token `restore` reads.
pub(crate) const TOKEN_BYTES_MAX: usize = 64 * 1024;
/// The most blocks a token may have (its authority block and attenuations).
pub(crate) const TOKEN_BLOCKS_MAX: usize = 32;
/// The most tokens a capability may descend from (`revoked_with` facts and its own
/// token's blocks).
pub(crate) const TOKEN_ANCESTRY_MAX: usize = 64;

/// Which capability a token restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Reader,
    Writer,
    Observer,
    Signer,
}

impl Held {
    const ALL: [Held; 4] = [Held::Reader, Held::Writer, Held::Observer, Held::Signer];

    fn name(self) -> &'static str {
        match self {
            Held::Reader => "reader",
            Held::Writer => "writer",
            Held::Observer => "observer",
            Held::Signer => "signer",
        }
    }
}

/// What a token says: who, what, where, when, narrowed how.
#[derive(Clone, Debug)]
pub(crate) struct Claims {
    pub principal: PublicKey,
    pub held: Held,
    /// `None` for a signer.
    pub world: Option<String>,
    pub epoch: u64,
    pub restriction: Restriction,
    /// A signer's domains; `None`: every domain.
    pub domains: Option<BTreeSet<String>>,
    /// The revocation ids the capability dies with: the tokens it was restored from
    /// (`revoked_with`), then, once opened, each block of this token.
    pub revoked_with: Vec<Vec<u8>>,
    /// Where its rates come from, shared with every copy (`lineage`, `lineage_rate`);
    /// once opened, narrowed by each rate a later block sets.
    pub lineage: Lineage,
}

/// The biscuit key pair of the node key (the same ed25519 key).
pub(crate) fn key_pair(node_key: &ed25519_dalek::SigningKey) -> KeyPair {
    let private =
        biscuit_auth::PrivateKey::from_bytes(node_key.as_bytes(), biscuit_auth::Algorithm::Ed25519)
            .expect("an ed25519 secret key is 32 bytes");
    KeyPair::from(&private)
}

/// A token for `claims`, signed with `key`.
pub(crate) fn mint(key: &KeyPair, claims: &Claims) -> Result<Vec<u8>, CapabilityError> {
    if claims.revoked_with.len() > TOKEN_ANCESTRY_MAX {
        return Err(CapabilityError::ResourceExhausted(format!(
            "this capability descends from {} tokens, more than a token may name \
             ({TOKEN_ANCESTRY_MAX}); save one grafted afresh instead",
            claims.revoked_with.len()
        )));
    }
    let mut facts = vec![
        builder::fact("engram", &[builder::int(TOKEN_FORMAT)]),
        builder::fact("principal", &[builder::bytes(&claims.principal)]),
        builder::fact("right", &[builder::string(claims.held.name())]),
        builder::fact("epoch", &[builder::int(claims.epoch as i64)]),
    ];
    if let Some(world) = &claims.world {
        facts.push(builder::fact("world", &[builder::string(world)]));
    }
    for id in &claims.revoked_with {
        facts.push(builder::fact("revoked_with", &[builder::bytes(id)]));
    }
    facts.push(builder::fact(
        "lineage",
        &[builder::bytes(&claims.lineage.key)],
    ));
    for (key, rate) in claims.lineage.rates.iter() {
        facts.push(builder::fact(
            "lineage_rate",
            &[
                builder::bytes(key),
                builder::int(rate.calls_per_second.into()),
                builder::int(rate.atoms_per_second.into()),
            ],
        ));
    }
    facts.extend(narrowing_of(&claims.restriction, claims.domains.as_ref()).facts());
    let mut token = Biscuit::builder();
    for fact in facts {
        token = token.fact(fact).map_err(internal)?;
    }
    token
        .build(key)
        .and_then(|token| token.to_vec())
        .map_err(internal)
}

/// The narrowing facts of a restriction and a signer's domains.
fn narrowing_of(restriction: &Restriction, domains: Option<&BTreeSet<String>>) -> Narrowing {
    Narrowing {
        kinds: restriction
            .kinds
            .as_ref()
            .map(|kinds| kinds.iter().map(|kind| kind.name().to_owned()).collect()),
        labels: restriction.labels.clone(),
        // Rounded down, so the token never allows more than the capability.
        max_importance_millionths: (restriction.max_importance < 1.0).then(|| {
            (f64::from(restriction.max_importance) * 1e6)
                .floor()
                .clamp(0.0, 1e6) as u32
        }),
        // Rounded down to a second, so the token never outlives the capability.
        expires_unix_s: (restriction.expires_at_unix_ms != 0)
            .then(|| restriction.expires_at_unix_ms.max(0) as u64 / 1000),
        rate: (!restriction.rate.is_unlimited()).then_some((
            restriction.rate.calls_per_second,
            restriction.rate.atoms_per_second,
        )),
        without_approve: !restriction.approve,
        without_save: !restriction.save,
        domains: domains.cloned(),
    }
}

/// The restriction (and signer's domains) one narrowing fact states.
fn restriction_of(narrowing: Narrowing) -> Result<(Restriction, Option<BTreeSet<String>>), String> {
    let kinds = match narrowing.kinds {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|name| {
                    AtomKind::from_name(name).ok_or_else(|| format!("kinds names no kind {name:?}"))
                })
                .collect::<Result<BTreeSet<_>, _>>()?,
        ),
    };
    let restriction = Restriction {
        kinds,
        labels: narrowing.labels,
        max_importance: narrowing
            .max_importance_millionths
            .map_or(1.0, |millionths| (f64::from(millionths) / 1e6) as f32),
        // 1970 itself must still mean "expired", not "never" (0).
        expires_at_unix_ms: narrowing.expires_unix_s.map_or(0, |seconds| {
            seconds.saturating_mul(1000).clamp(1, i64::MAX as u64) as i64
        }),
        rate: narrowing
            .rate
            .map_or(Rate::UNLIMITED, |(calls, atoms)| Rate {
                calls_per_second: calls,
                atoms_per_second: atoms,
            }),
        approve: !narrowing.without_approve,
        save: !narrowing.without_save,
        ..Restriction::NONE
    };
    Ok((restriction, narrowing.domains))
}

/// Reads a token signed by `root`: every block checked, every narrowing applied.
/// Errors are `unauthenticated`, naming the reason; the epoch, the principal and
/// revocations are the caller's to check.
pub(crate) fn open(
    root: &biscuit_auth::PublicKey,
    bytes: &[u8],
) -> Result<Claims, CapabilityError> {
    if bytes.len() > TOKEN_BYTES_MAX {
        return Err(refused(format!(
            "the token is {} bytes; a token is at most {TOKEN_BYTES_MAX}",
            bytes.len()
        )));
    }
    let token = Biscuit::from(bytes, root).map_err(|error| {
        // A format error's own message says what failed; the wrapper's says only that.
        let reason = match error {
            biscuit_auth::error::Token::Format(format) => format.to_string(),
            other => other.to_string(),
        };
        refused(format!(
            "it is not a token this node signed, intact: {reason}"
        ))
    })?;
    let blocks = token.block_count();
    if blocks > TOKEN_BLOCKS_MAX {
        return Err(refused(format!(
            "the token has {blocks} blocks; a token has at most {TOKEN_BLOCKS_MAX}"
        )));
    }
    let mut authority = Authority::default();
    let mut restriction = Restriction::NONE;
    let mut domains: Option<BTreeSet<String>> = None;
    // The rates set by the blocks after the node's, in order: each a lineage node.
    let mut later_rates = Vec::new();
    for (index, facts) in engram_schema::token::typed_blocks(bytes)
        .map_err(refused)?
        .into_iter()
        .enumerate()
    {
        for fact in &facts {
            let name = fact.predicate.name.as_str();
            let terms = fact.predicate.terms.as_slice();
            if index == 0 && authority.read(name, terms)? {
                continue;
            }
            let narrowing = Narrowing::from_fact(name, terms)
                .map_err(|reason| refused(format!("block {index}: {reason}")))?;
            if let Some(narrowing) = narrowing {
                // Every fact narrows what the facts before it allowed.
                let (narrower, only) = restriction_of(narrowing)
                    .map_err(|reason| refused(format!("block {index}: {reason}")))?;
                if index == 0 {
                    authority.rate = authority.rate.narrow(&narrower.rate);
                } else {
                    later_rates.push(narrower.rate);
                }
                restriction = restriction.narrow(&narrower);
                if let Some(only) = only {
                    domains = Some(match domains.take() {
                        None => only,
                        Some(held) => held.intersection(&only).cloned().collect(),
                    });
                }
            } else {
                return Err(refused(if index > 0 && Authority::NAMES.contains(&name) {
                    format!("block {index} states {name}: only the node's own block may")
                } else {
                    format!(
                        "block {index} holds a fact engram does not know: {name} (a block \
                         may hold only the narrowing facts of the schema's tokenFormat)"
                    )
                }));
            }
        }
    }
    // A fact that narrows nothing this token holds would still show as a narrowing (to a
    // reader of the token, `engram token show`): refused.
    let signer = matches!(authority.held, Some(Held::Signer));
    if !signer && domains.is_some() {
        return Err(refused(
            "a block narrows a signer's domains, but the token holds no signer",
        ));
    }
    if signer
        && (restriction.kinds.is_some()
            || restriction.labels.is_some()
            || restriction.max_importance < 1.0)
    {
        return Err(refused(
            "a block narrows atoms (labels, kinds or importance), but the token holds a \
             signer, which reads and writes none",
        ));
    }
    let ids = token.revocation_identifiers();
    let mut claims = authority.claims(&ids[0])?;
    claims.restriction = restriction;
    claims.domains = domains;
    claims.revoked_with.extend(ids);
    for rate in later_rates {
        claims.lineage = claims.lineage.narrowed(rate);
    }
    Ok(claims)
}

/// What the authority block names.
#[derive(Default)]
struct Authority {
    format: Option<i64>,
    principal: Option<PublicKey>,
    held: Option<Held>,
    world: Option<String>,
    epoch: Option<u64>,
    revoked_with: Vec<Vec<u8>>,
    lineage: Option<[u8; 32]>,
    lineage_rates: Vec<([u8; 32], Rate)>,
    /// The rate the block's narrowing facts set (for a token without a lineage).
    rate: Rate,
}

impl Authority {
    const NAMES: [&'static str; 8] = [
        "engram",
        "principal",
        "right",
        "world",
        "epoch",
        "revoked_with",
        "lineage",
        "lineage_rate",
    ];

    /// Takes one fact of the authority block; false if it is not one of these. A fact
    /// stated twice (but `revoked_with`) refuses the token: the node states each once,
    /// so a second is a forgery, never an update.
    fn read(&mut self, name: &str, terms: &[Term]) -> Result<bool, CapabilityError> {
        let malformed = || refused(format!("the authority block's {name} fact is malformed"));
        fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), CapabilityError> {
            if slot.replace(value).is_some() {
                return Err(refused(format!(
                    "the authority block states {name} twice; the node states it once"
                )));
            }
            Ok(())
        }
        match (name, terms) {
            ("engram", [Term::Integer(format)]) => once(&mut self.format, name, *format)?,
            ("principal", [Term::Bytes(key)]) => once(
                &mut self.principal,
                name,
                key.as_slice().try_into().map_err(|_| malformed())?,
            )?,
            ("right", [Term::Str(right)]) => once(
                &mut self.held,
                name,
                Held::ALL
                    .into_iter()
                    .find(|held| held.name() == right)
                    .ok_or_else(malformed)?,
            )?,
            ("world", [Term::Str(world)]) => once(&mut self.world, name, world.clone())?,
            ("epoch", [Term::Integer(epoch)]) => once(
                &mut self.epoch,
                name,
                u64::try_from(*epoch).map_err(|_| malformed())?,
            )?,
            ("revoked_with", [Term::Bytes(id)]) => self.revoked_with.push(id.clone()),
            ("lineage", [Term::Bytes(key)]) => once(
                &mut self.lineage,
                name,
                key.as_slice().try_into().map_err(|_| malformed())?,
            )?,
            ("lineage_rate", [Term::Bytes(key), Term::Integer(calls), Term::Integer(atoms)]) => {
                let per_second = |value: &i64| u32::try_from(*value).map_err(|_| malformed());
                self.lineage_rates.push((
                    key.as_slice().try_into().map_err(|_| malformed())?,
                    Rate {
                        calls_per_second: per_second(calls)?,
                        atoms_per_second: per_second(atoms)?,
                    },
                ));
            }
            _ if Self::NAMES.contains(&name) => return Err(malformed()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The claims of the block whose revocation id is `id`.
    fn claims(self, id: &[u8]) -> Result<Claims, CapabilityError> {
        let missing = |what: &str| refused(format!("the authority block names no {what}"));
        if self.format != Some(TOKEN_FORMAT) {
            return Err(refused(format!(
                "the token's format is {:?}; this node reads format {TOKEN_FORMAT}",
                self.format
            )));
        }
        let held = self.held.ok_or_else(|| missing("right"))?;
        if (held == Held::Signer) != self.world.is_none() {
            return Err(refused(
                "the authority block's world does not fit its right",
            ));
        }
        Ok(Claims {
            principal: self.principal.ok_or_else(|| missing("principal"))?,
            held,
            world: self.world,
            epoch: self.epoch.ok_or_else(|| missing("epoch"))?,
            restriction: Restriction::NONE,
            domains: None,
            revoked_with: self.revoked_with,
            lineage: match self.lineage {
                Some(key) => Lineage {
                    key,
                    rates: self.lineage_rates.into(),
                },
                // A token minted before lineages: its own root, from its authority block.
                None => Lineage::from_key(*blake3::hash(id).as_bytes()).narrowed(self.rate),
            },
        })
    }
}

fn refused(reason: impl Into<String>) -> CapabilityError {
    CapabilityError::Unauthenticated(format!("token refused: {}", reason.into()))
}

fn internal(error: biscuit_auth::error::Token) -> CapabilityError {
    CapabilityError::Internal(format!("the token could not be made: {error}"))
}

#[cfg(test)]
mod tests {
    //! A token narrowed offline, block by block, never allows more than any of its
    //! blocks (nor its authority's restriction): the node reads it exactly as narrow as
    //! the chain of `attenuate` calls it stands for, or narrower (importance and expiry
    //! round down on the way into a token).
    use biscuit_auth::BlockBuilder;
    use proptest::prelude::*;

    use super::*;
    use crate::restriction::arbitrary::{content, no_wider, restriction};

    fn claims(world: &str, labels: &[&str]) -> Claims {
        Claims {
            principal: [3; 32],
            held: Held::Reader,
            world: Some(world.into()),
            epoch: 1,
            restriction: Restriction {
                labels: Some(labels.iter().map(|label| label.to_string()).collect()),
                ..Restriction::NONE
            },
            domains: None,
            revoked_with: Vec::new(),
            lineage: Lineage::root(),
        }
    }

    #[test]
    fn a_string_with_quotes_and_braces_is_one_term() {
        let key = KeyPair::new();
        let forged = "x\"});principal(hex:0404040404040404040404040404040404040404040404040404040404040404);right(\"writer\");world(\"team/secret\");labels({\"y";
        let token = mint(&key, &claims("team/a", &[forged, "public"])).unwrap();
        let opened = open(&key.public(), &token).unwrap();
        assert_eq!(opened.principal, [3; 32]);
        assert_eq!(opened.held, Held::Reader);
        assert_eq!(opened.world.as_deref(), Some("team/a"));
        assert_eq!(
            opened.restriction.labels,
            Some([forged.to_owned(), "public".to_owned()].into())
        );
    }

    #[test]
    fn an_authority_fact_stated_twice_or_by_a_later_block_refuses_the_token() {
        let key = KeyPair::new();
        for (name, term) in [
            ("principal", builder::bytes(&[4; 32])),
            ("right", builder::string("writer")),
            ("world", builder::string("team/secret")),
            ("epoch", builder::int(9)),
            ("engram", builder::int(TOKEN_FORMAT)),
        ] {
            let mut token = Biscuit::builder();
            for fact in [
                builder::fact("engram", &[builder::int(TOKEN_FORMAT)]),
                builder::fact("principal", &[builder::bytes(&[3; 32])]),
                builder::fact("right", &[builder::string("reader")]),
                builder::fact("world", &[builder::string("team/a")]),
                builder::fact("epoch", &[builder::int(1)]),
                builder::fact(name, std::slice::from_ref(&term)),
            ] {
                token = token.fact(fact).unwrap();
            }
            let token = token.build(&key).unwrap().to_vec().unwrap();
            let error = open(&key.public(), &token).unwrap_err().to_string();
            assert!(error.contains("twice"), "{name}: {error}");

            let whole = mint(&key, &claims("team/a", &[])).unwrap();
            let appended = Biscuit::from(&whole, key.public())
                .unwrap()
                .append(
                    BlockBuilder::new()
                        .fact(builder::fact(name, &[term]))
                        .unwrap(),
                )
                .unwrap()
                .to_vec()
                .unwrap();
            let error = open(&key.public(), &appended).unwrap_err().to_string();
            assert!(
                error.contains("only the node's own block"),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn a_block_with_a_rule_or_a_check_is_refused() {
        let key = KeyPair::new();
        let whole =
            Biscuit::from(mint(&key, &claims("team/a", &[])).unwrap(), key.public()).unwrap();
        for (code, expected) in [
            ("labels({\"a\"}) <- right(\"reader\");", "a rule"),
            ("check if right(\"reader\");", "a check"),
        ] {
            let token = whole
                .append(BlockBuilder::new().code(code).unwrap())
                .unwrap()
                .to_vec()
                .unwrap();
            let error = open(&key.public(), &token).unwrap_err().to_string();
            assert!(error.contains(expected), "{code}: {error}");
        }
    }

    proptest! {
        // Each case signs a token and a block per link: fewer cases than the pure chain.
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn a_token_narrowed_offline_never_allows_more_than_any_block(
            chain in proptest::collection::vec(restriction(), 1..5),
            written in content(),
            now in 0i64..12_000,
        ) {
            // A token names its world in its authority block; narrowing facts have none.
            let chain: Vec<Restriction> = chain
                .into_iter()
                .map(|link| Restriction { worlds: None, ..link })
                .collect();
            let key = KeyPair::new();
            let claims = Claims {
                principal: [3; 32],
                held: Held::Writer,
                world: Some("team/a".into()),
                epoch: 1,
                restriction: chain[0].clone(),
                domains: None,
                revoked_with: Vec::new(),
                lineage: Lineage::root(),
            };
            let mut token = Biscuit::from(mint(&key, &claims).unwrap(), key.public()).unwrap();
            for link in &chain[1..] {
                let mut block = BlockBuilder::new();
                for fact in narrowing_of(link, None).facts() {
                    block = block.fact(fact).unwrap();
                }
                token = token.append(block).unwrap();
            }
            let opened = open(&key.public(), &token.to_vec().unwrap()).unwrap();
            for link in &chain {
                no_wider(&opened.restriction, link, &written, now)?;
            }
        }
    }
}
