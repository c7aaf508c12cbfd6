//! The narrowing facts of tokens (schema `tokenFormat`), as biscuit datalog: written by
//! the node when it saves a capability and by `engram token attenuate`, read by the node
//! when it restores one. What the facts mean (each narrows; blocks intersect) is the
//! node's: this module only spells them.

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use biscuit_auth::builder::{self, Fact, Term};

/// One narrowing: each dimension `None` (or false) narrows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Narrowing {
    /// Only these kinds (by name).
    pub kinds: Option<BTreeSet<String>>,
    /// Only atoms with these labels.
    pub labels: Option<BTreeSet<String>>,
    /// Importance at most this many millionths (0 to 1,000,000).
    pub max_importance_millionths: Option<u32>,
    /// Every call fails from this time (Unix seconds) on.
    pub expires_unix_s: Option<u64>,
    /// Calls and atoms per second (0: no limit on that one).
    pub rate: Option<(u32, u32)>,
    /// Takes away the approve right.
    pub without_approve: bool,
    /// Takes away the right to save the capability as a token again.
    pub without_save: bool,
    /// A signer signs only these domains.
    pub domains: Option<BTreeSet<String>>,
}

impl Narrowing {
    /// The facts that state this narrowing, one per dimension it narrows.
    pub fn facts(&self) -> Vec<Fact> {
        let strings = |values: &BTreeSet<String>| {
            builder::set(values.iter().map(|value| builder::string(value)).collect())
        };
        let mut facts = Vec::new();
        if let Some(kinds) = &self.kinds {
            facts.push(builder::fact("kinds", &[strings(kinds)]));
        }
        if let Some(labels) = &self.labels {
            facts.push(builder::fact("labels", &[strings(labels)]));
        }
        if let Some(millionths) = self.max_importance_millionths {
            facts.push(builder::fact(
                "max_importance",
                &[builder::int(millionths.into())],
            ));
        }
        if let Some(seconds) = self.expires_unix_s {
            let at = UNIX_EPOCH + Duration::from_secs(seconds);
            facts.push(builder::fact("expires", &[builder::date(&at)]));
        }
        if let Some((calls, atoms)) = self.rate {
            facts.push(builder::fact(
                "rate",
                &[builder::int(calls.into()), builder::int(atoms.into())],
            ));
        }
        if self.without_approve {
            facts.push(builder::fact("without_approve", &[builder::boolean(true)]));
        }
        if self.without_save {
            facts.push(builder::fact("without_save", &[builder::boolean(true)]));
        }
        if let Some(domains) = &self.domains {
            facts.push(builder::fact("domains", &[strings(domains)]));
        }
        facts
    }

    /// The narrowing one fact states: `Ok(None)` if `name` is no narrowing fact, an
    /// error naming the expected shape if it is one, malformed.
    pub fn from_fact(name: &str, terms: &[Term]) -> Result<Option<Narrowing>, String> {
        let malformed = |shape: &str| format!("a {name} fact must be {name}({shape})");
        let mut narrowing = Narrowing::default();
        match (name, terms) {
            ("kinds", [Term::Set(names)]) => {
                narrowing.kinds = Some(strings(names).ok_or_else(|| malformed("a set of kinds"))?)
            }
            ("labels", [Term::Set(names)]) => {
                narrowing.labels = Some(strings(names).ok_or_else(|| malformed("a set of labels"))?)
            }
            ("max_importance", [Term::Integer(millionths)]) => {
                narrowing.max_importance_millionths = Some(
                    u32::try_from(*millionths)
                        .ok()
                        .filter(|millionths| *millionths <= 1_000_000)
                        .ok_or_else(|| malformed("millionths, 0 to 1000000"))?,
                )
            }
            ("expires", [Term::Date(seconds)]) => narrowing.expires_unix_s = Some(*seconds),
            ("rate", [Term::Integer(calls), Term::Integer(atoms)]) => {
                let per_second = |value: &i64| u32::try_from(*value).ok();
                narrowing.rate = Some(
                    per_second(calls)
                        .zip(per_second(atoms))
                        .ok_or_else(|| malformed("calls per second, atoms per second"))?,
                )
            }
            ("without_approve", [Term::Bool(true)]) => narrowing.without_approve = true,
            // Narrows nothing, but is well formed.
            ("without_approve", [Term::Bool(false)]) => {}
            ("without_save", [Term::Bool(true)]) => narrowing.without_save = true,
            ("without_save", [Term::Bool(false)]) => {}
            ("domains", [Term::Set(names)]) => {
                narrowing.domains =
                    Some(strings(names).ok_or_else(|| malformed("a set of domains"))?)
            }
            ("kinds" | "labels" | "domains", _) => return Err(malformed("a set of strings")),
            ("max_importance", _) => return Err(malformed("millionths, 0 to 1000000")),
            ("expires", _) => return Err(malformed("a date")),
            ("rate", _) => return Err(malformed("calls per second, atoms per second")),
            ("without_approve" | "without_save", _) => return Err(malformed("true")),
            _ => return Ok(None),
        }
        Ok(Some(narrowing))
    }
}

/// The facts of each block of a token (its serialized bytes), as typed terms read from
/// its protobuf blocks: never printed as datalog and parsed again, where a string term
/// would end at its first quote. A block with a rule, a check, a scope or a third
/// party's signature is refused, with the reason. Checks no signature: the node reads
/// a token only after verifying it.
pub fn typed_blocks(token: &[u8]) -> Result<Vec<Vec<Fact>>, String> {
    use biscuit_auth::builder::Convert;
    use biscuit_auth::datalog::SymbolTable;
    use biscuit_auth::format::{convert, schema};
    use prost::Message;

    let container =
        schema::Biscuit::decode(token).map_err(|error| format!("it is no token: {error}"))?;
    // Symbols are numbered across blocks: the defaults, then each block's own in order.
    let mut symbols = SymbolTable::new();
    let signed = std::iter::once(&container.authority).chain(&container.blocks);
    let mut blocks = Vec::with_capacity(container.blocks.len() + 1);
    for (index, signed) in signed.enumerate() {
        let unreadable =
            |error: &dyn std::fmt::Display| format!("block {index} cannot be read: {error}");
        if signed.external_signature.is_some() {
            return Err(format!(
                "block {index} is signed by a third party; engram tokens take none"
            ));
        }
        let block = schema::Block::decode(signed.block.as_slice()).map_err(|e| unreadable(&e))?;
        let shape = if !block.rules.is_empty() {
            Some("a rule")
        } else if !block.checks.is_empty() {
            Some("a check (an expiry is the fact expires(...))")
        } else if !block.scope.is_empty() || !block.public_keys.is_empty() {
            Some("a scope")
        } else {
            None
        };
        if let Some(shape) = shape {
            return Err(format!(
                "block {index} holds {shape}; a block may hold only narrowing facts"
            ));
        }
        let own = SymbolTable::from(block.symbols.clone()).map_err(|e| unreadable(&e))?;
        symbols.extend(&own).map_err(|e| unreadable(&e))?;
        let facts = convert::proto_block_to_token_block(&block, None)
            .map_err(|e| unreadable(&e))?
            .facts
            .iter()
            .map(|fact| Fact::convert_from(fact, &symbols))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(&e))?;
        blocks.push(facts);
    }
    Ok(blocks)
}

/// A fact as one line of text for people: `name(term, ...)`, strings quoted and escaped
/// as Rust escapes them (so a quote inside a label shows as `\"`, never as the end of
/// the term), bytes as `hex:...`, sets in braces.
pub fn fact_text(fact: &Fact) -> String {
    fn push_term(term: &Term, out: &mut String) {
        use std::fmt::Write;
        match term {
            Term::Str(value) => {
                let _ = write!(out, "{value:?}");
            }
            Term::Bytes(bytes) => {
                out.push_str("hex:");
                for byte in bytes {
                    let _ = write!(out, "{byte:02x}");
                }
            }
            Term::Set(values) => {
                out.push('{');
                for (index, value) in values.iter().enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    push_term(value, out);
                }
                out.push('}');
            }
            Term::Integer(_) | Term::Bool(_) | Term::Date(_) => {
                // Numbers, booleans and dates (RFC 3339) print no holder's text.
                let _ = write!(out, "{term}");
            }
            other => {
                // Terms an engram token never holds; shown escaped all the same.
                let _ = write!(out, "{:?}", other.to_string());
            }
        }
    }
    let mut out = String::with_capacity(64);
    out.push_str(&fact.predicate.name);
    out.push('(');
    for (index, value) in fact.predicate.terms.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        push_term(value, &mut out);
    }
    out.push(')');
    out
}

/// The strings of a set, or `None` if it holds anything else.
fn strings(set: &BTreeSet<Term>) -> Option<BTreeSet<String>> {
    set.iter()
        .map(|term| match term {
            Term::Str(value) => Some(value.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_reads_back_as_written() {
        let narrowing = Narrowing {
            kinds: Some(["fact".to_owned()].into()),
            labels: Some(BTreeSet::new()),
            max_importance_millionths: Some(500_000),
            expires_unix_s: Some(1_800_000_000),
            rate: Some((10, 0)),
            without_approve: true,
            without_save: true,
            domains: Some(["a/b".to_owned(), "c".to_owned()].into()),
        };
        let mut read = Narrowing::default();
        for fact in narrowing.facts() {
            let one = Narrowing::from_fact(&fact.predicate.name, &fact.predicate.terms)
                .unwrap()
                .unwrap();
            read = Narrowing {
                kinds: one.kinds.or(read.kinds),
                labels: one.labels.or(read.labels),
                max_importance_millionths: one
                    .max_importance_millionths
                    .or(read.max_importance_millionths),
                expires_unix_s: one.expires_unix_s.or(read.expires_unix_s),
                rate: one.rate.or(read.rate),
                without_approve: one.without_approve || read.without_approve,
                without_save: one.without_save || read.without_save,
                domains: one.domains.or(read.domains),
            };
        }
        assert_eq!(read, narrowing);
        assert!(
            Narrowing::from_fact("label", &[Term::Str("x".into())])
                .unwrap()
                .is_none()
        );
        assert!(Narrowing::from_fact("labels", &[Term::Str("x".into())]).is_err());
        assert!(Narrowing::from_fact("max_importance", &[Term::Integer(1_000_001)]).is_err());
    }
}
