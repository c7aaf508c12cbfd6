//! Tokens: capabilities saved as biscuit v3 tokens (the schema's `tokenFormat`).
//!
//! The node signs a token's authority block with its node key; whoever holds the token
//! may append blocks that narrow it, with any biscuit library, offline. Every fact in
//! every block is a narrowing the node enforces on each call of the restored
//! capability (a `Restriction`), so no rule, check or unknown fact is accepted: the node
//! would not enforce what it does not understand, and a narrowing it ignored would
//! widen what the block's writer meant to allow.

use biscuit_auth::builder::{self, Term};
use biscuit_auth::{Biscuit, BlockBuilder, KeyPair};
use engram_schema::token::Narrowing;
use engram_store::{AtomKind, PublicKey, Rate};
use std::collections::BTreeSet;

use crate::error::CapabilityError;
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
    for index in 0..blocks {
        let block = read_block(&token, index)?;
        for fact in &block.facts {
            let name = fact.predicate.name.as_str();
            let terms = fact.predicate.terms.as_slice();
            let known = if index == 0 {
                authority.read(name, terms)?
            } else {
                false
            };
            if known {
                continue;
            }
            let narrowing = Narrowing::from_fact(name, terms)
                .map_err(|reason| refused(format!("block {index}: {reason}")))?;
            if let Some(narrowing) = narrowing {
                // Every fact narrows what the facts before it allowed.
                let (narrower, only) = restriction_of(narrowing)
                    .map_err(|reason| refused(format!("block {index}: {reason}")))?;
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
                        "block {index} holds a fact engram does not know: {fact} \
                         (a block may hold only the narrowing facts of the schema's \
                         tokenFormat)"
                    )
                }));
            }
        }
    }
    let mut claims = authority.claims()?;
    claims.restriction = restriction;
    claims.domains = domains;
    claims.revoked_with.extend(token.revocation_identifiers());
    Ok(claims)
}

fn read_block(token: &Biscuit, index: usize) -> Result<BlockBuilder, CapabilityError> {
    let unreadable = |error| refused(format!("block {index} cannot be read: {error}"));
    if token
        .block_external_key(index)
        .map_err(unreadable)?
        .is_some()
    {
        return Err(refused(format!(
            "block {index} is signed by a third party; engram tokens take none"
        )));
    }
    let source = token.print_block_source(index).map_err(unreadable)?;
    let block = BlockBuilder::new().code(&source).map_err(unreadable)?;
    if let Some(rule) = block.rules.first() {
        return Err(refused(format!(
            "block {index} holds a rule ({rule}); a block may hold only narrowing facts"
        )));
    }
    if let Some(check) = block.checks.first() {
        return Err(refused(format!(
            "block {index} holds a check ({check}); a block may hold only narrowing facts \
             (an expiry is the fact expires(...))"
        )));
    }
    if !block.scopes.is_empty() {
        return Err(refused(format!(
            "block {index} declares a scope; a block may hold only narrowing facts"
        )));
    }
    Ok(block)
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
}

impl Authority {
    const NAMES: [&'static str; 6] = [
        "engram",
        "principal",
        "right",
        "world",
        "epoch",
        "revoked_with",
    ];

    /// Takes one fact of the authority block; false if it is not one of these.
    fn read(&mut self, name: &str, terms: &[Term]) -> Result<bool, CapabilityError> {
        let malformed = || refused(format!("the authority block's {name} fact is malformed"));
        match (name, terms) {
            ("engram", [Term::Integer(format)]) => self.format = Some(*format),
            ("principal", [Term::Bytes(key)]) => {
                self.principal = Some(key.as_slice().try_into().map_err(|_| malformed())?)
            }
            ("right", [Term::Str(right)]) => {
                self.held = Some(
                    Held::ALL
                        .into_iter()
                        .find(|held| held.name() == right)
                        .ok_or_else(malformed)?,
                )
            }
            ("world", [Term::Str(world)]) => self.world = Some(world.clone()),
            ("epoch", [Term::Integer(epoch)]) => {
                self.epoch = Some(u64::try_from(*epoch).map_err(|_| malformed())?)
            }
            ("revoked_with", [Term::Bytes(id)]) => self.revoked_with.push(id.clone()),
            _ if Self::NAMES.contains(&name) => return Err(malformed()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn claims(self) -> Result<Claims, CapabilityError> {
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
    use proptest::prelude::*;

    use super::*;
    use crate::restriction::arbitrary::{content, no_wider, restriction};

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
