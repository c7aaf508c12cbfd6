//! Rates: token buckets of calls and atoms that a grant or a restriction puts on
//! capabilities. A capability draws on every bucket on its way from the graft (its
//! grant's, then each attenuation's), so attenuating again never buys more.

use std::num::NonZeroU32;
use std::rc::Rc;
use std::time::Duration;

use engram_store::Rate;
use governor::clock::{Clock, QuantaInstant};
use governor::{DefaultDirectRateLimiter, NotUntil, Quota, RateLimiter};

use crate::error::CapabilityError;

/// One rate's buckets, shared by every capability that must obey it.
pub(crate) struct Bucket {
    rate: Rate,
    /// Whose rate this is, for the error message.
    source: &'static str,
    calls: Option<DefaultDirectRateLimiter>,
    atoms: Option<DefaultDirectRateLimiter>,
}

impl Bucket {
    /// The buckets of `rate`, or `None` when it sets no limit.
    pub fn new(rate: Rate, source: &'static str) -> Option<Bucket> {
        if rate.is_unlimited() {
            return None;
        }
        let limiter = |per_second: u32| {
            NonZeroU32::new(per_second).map(|rate| RateLimiter::direct(Quota::per_second(rate)))
        };
        Some(Bucket {
            rate,
            source,
            calls: limiter(rate.calls_per_second),
            atoms: limiter(rate.atoms_per_second),
        })
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `calls` more calls (at most a second's worth) for work beyond an ordinary
    /// call's, if the bucket holds them now; whether it did.
    pub fn pay(&self, calls: u32) -> bool {
        let Some(limiter) = &self.calls else {
            return true;
        };
        let calls = calls.min(self.rate.calls_per_second);
        NonZeroU32::new(calls).is_none_or(|calls| matches!(limiter.check_n(calls), Ok(Ok(()))))
    }

    /// Takes one call and `atoms` atoms, or says why not and how long until the bucket
    /// could take them.
    pub fn admit(&self, atoms: u32) -> Result<(), (CapabilityError, Duration)> {
        if let Some(calls) = &self.calls
            && let Err(until) = calls.check()
        {
            return Err(self.exhausted("calls", self.rate.calls_per_second, calls, until));
        }
        if let (Some(limiter), Some(count)) = (&self.atoms, NonZeroU32::new(atoms)) {
            match limiter.check_n(count) {
                Ok(Ok(())) => {}
                Ok(Err(until)) => {
                    let per_second = self.rate.atoms_per_second;
                    return Err(self.exhausted("atoms", per_second, limiter, until));
                }
                Err(_) => {
                    return Err((
                        CapabilityError::ResourceExhausted(format!(
                            "{} allows {} atoms a second, fewer than the {atoms} of this \
                             call; write them in smaller batches",
                            self.source, self.rate.atoms_per_second
                        )),
                        Duration::ZERO,
                    ));
                }
            }
        }
        Ok(())
    }

    /// The refusal of a call past `limiter`, and the time until it would admit one.
    fn exhausted(
        &self,
        what: &str,
        per_second: u32,
        limiter: &DefaultDirectRateLimiter,
        until: NotUntil<QuantaInstant>,
    ) -> (CapabilityError, Duration) {
        let error = CapabilityError::ResourceExhausted(format!(
            "{} allows {per_second} {what} a second; slow down and try again",
            self.source
        ));
        (error, until.wait_time_from(limiter.clock().now()))
    }
}

/// Where a capability's rates come from: one lineage from its root (a graft, or a token
/// of a node before lineages), each rate set along the way a node of its own. Every
/// capability saved, restored or narrowed from another carries its lineage, online or
/// offline, so copies share their rates' buckets: six tokens saved from a capability of
/// three calls a second share those three, and so do six offline copies narrowed to
/// three calls a second each. A node's key is derived from its parent's key and its
/// rate, so the same narrowing of the same capability, made twice, is the same node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lineage {
    /// The key of the deepest node: the root's, if no rate was set yet.
    pub key: [u8; 32],
    /// Every node with a rate from the root down, with its rate: the buckets a call
    /// draws on (besides its grant's).
    pub rates: Rc<[([u8; 32], Rate)]>,
}

impl Lineage {
    /// A new root: a random key, no rate yet.
    pub fn root() -> Lineage {
        let mut key = [0; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        Lineage::from_key(key)
    }

    /// A lineage with this key and no rate yet.
    pub fn from_key(key: [u8; 32]) -> Lineage {
        Lineage {
            key,
            rates: Rc::new([]),
        }
    }

    /// The lineage of a capability narrowed to `rate`: one node deeper, or the same
    /// when the narrowing sets no rate.
    pub fn narrowed(&self, rate: Rate) -> Lineage {
        if rate.is_unlimited() {
            return self.clone();
        }
        let mut hasher = blake3::Hasher::new_derive_key("engram 2026-12 rate lineage node");
        hasher.update(&self.key);
        hasher.update(&rate.calls_per_second.to_le_bytes());
        hasher.update(&rate.atoms_per_second.to_le_bytes());
        let key = *hasher.finalize().as_bytes();
        let mut rates = self.rates.to_vec();
        rates.push((key, rate));
        Lineage {
            key,
            rates: rates.into(),
        }
    }
}
