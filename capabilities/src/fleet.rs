//! A node in a fleet (`engramd --nats`): the policy — the epoch, principals and grants,
//! the worlds' records — is the fleet's, kept by the `engram-fleet` crate, which this
//! trait keeps out of this crate. An admin's change is planned on this node's snapshot,
//! published to the fleet if the fleet has not changed since that snapshot, and then
//! applied here; every node applies every change the fleet publishes. A node that has
//! not confirmed the fleet's policy within its lease serves nothing (`unavailable`).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use engram_store::{PolicyChange, WriteOp, WriteOutcome, WriteRequest};

use crate::error::CapabilityError;
use crate::node::Node;

/// What a fleet node says of itself to the metrics listener, readable from any thread:
/// when it last confirmed the fleet's policy (`/readyz` reads it; outside a fleet it is
/// always confirmed), how many worlds it owns, and how far it is behind each world's
/// stream.
#[derive(Debug, Default)]
pub struct FleetHealth {
    /// The fleet's lease and the moment of the last confirmation; `None` outside a fleet.
    state: std::sync::Mutex<Option<(Duration, Option<Instant>)>>,
    owned: std::sync::atomic::AtomicUsize,
    /// Messages of each world's stream this node does not hold yet, by world.
    lags: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// The worlds whose streams this node has not caught up to where they stood when it
    /// began following them (after its start, or the world's creation).
    catching_up: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl FleetHealth {
    /// This node owns `count` worlds.
    pub fn set_owned(&self, count: usize) {
        self.owned
            .store(count, std::sync::atomic::Ordering::Relaxed);
    }

    /// The worlds this node owns.
    pub fn owned(&self) -> usize {
        self.owned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node holds all but `lag` messages of `world`'s stream.
    pub fn set_lag(&self, world: &str, lag: u64) {
        let mut lags = self.lags.lock().expect("never poisoned");
        match lags.get_mut(world) {
            Some(held) => *held = lag,
            None => {
                lags.insert(world.to_owned(), lag);
            }
        }
    }

    /// Whether this node is still catching up `world`'s stream from where it stood
    /// when the node began following it.
    pub fn set_catching_up(&self, world: &str, catching_up: bool) {
        let mut worlds = self.catching_up.lock().expect("never poisoned");
        match catching_up {
            true => worlds.insert(world.to_owned()),
            false => worlds.remove(world),
        };
    }

    /// The worlds this node is catching up (see [`FleetHealth::set_catching_up`]).
    pub fn catching_up(&self) -> Vec<String> {
        let worlds = self.catching_up.lock().expect("never poisoned");
        worlds.iter().cloned().collect()
    }

    /// Each followed world's lag, by world.
    pub fn lags(&self) -> Vec<(String, u64)> {
        let lags = self.lags.lock().expect("never poisoned");
        lags.iter()
            .map(|(world, lag)| (world.clone(), *lag))
            .collect()
    }

    /// The node is joining a fleet whose lease is `lease`, and has confirmed nothing.
    pub fn joining(&self, lease: Duration) {
        *self.state.lock().expect("never poisoned") = Some((lease, None));
    }

    /// The node was confirmed at the moment `asked` (never earlier than before).
    pub fn confirm(&self, asked: Instant) {
        if let Some((_, at)) = &mut *self.state.lock().expect("never poisoned") {
            *at = Some(at.map_or(asked, |at| at.max(asked)));
        }
    }

    /// Seconds since the last confirmation: `None` outside a fleet, infinite before the
    /// first.
    pub fn age(&self) -> Option<f64> {
        let state = *self.state.lock().expect("never poisoned");
        state.map(|(_, at)| at.map_or(f64::INFINITY, |at| at.elapsed().as_secs_f64()))
    }

    /// `Ok` outside a fleet, and while the last confirmation is younger than the lease;
    /// else why not.
    pub fn check(&self) -> Result<(), String> {
        match *self.state.lock().expect("never poisoned") {
            None => Ok(()),
            Some((lease, Some(at))) if at.elapsed() < lease => Ok(()),
            Some((lease, Some(at))) => Err(format!(
                "its last confirmation of the fleet's policy was {:.1} s ago; its lease is \
                 {:.1} s",
                at.elapsed().as_secs_f64(),
                lease.as_secs_f64()
            )),
            Some((_, None)) => Err("it has not confirmed the fleet's policy yet".into()),
        }
    }
}

/// What a fleet node knows of its fleet (`Membrane.fleet`), from its own state.
#[derive(Clone, Debug)]
pub struct FleetReport {
    pub name: String,
    pub address: String,
    pub lease: Duration,
    /// Since this node last confirmed the fleet's policy; `None`: never.
    pub confirmed_ago: Option<Duration>,
    pub nodes: Vec<NodeReport>,
    /// The worlds asked about, of those this node follows, by name.
    pub worlds: Vec<WorldReport>,
}

/// A node of the fleet, as its policy records it and as it last said it runs.
#[derive(Clone, Debug)]
pub struct NodeReport {
    pub key: [u8; 32],
    pub address: String,
    pub slot: u64,
    /// Since it last said it runs; `None`: not within the lease.
    pub seen_ago: Option<Duration>,
    /// How long ago, when it last said so, it had confirmed the fleet's policy.
    pub confirmed_ago: Option<Duration>,
}

/// A world of the fleet: who writes it, and how far its stream is.
#[derive(Clone, Debug)]
pub struct WorldReport {
    pub world: String,
    /// The owner's key and address; `None`: no node owns it now.
    pub owner: Option<([u8; 32], String)>,
    /// The messages its stream holds, as this node last heard (at least what it holds).
    pub stream_position: u64,
    pub held_position: u64,
}

/// A future on the RPC thread.
pub type Local<T> = Pin<Box<dyn Future<Output = T>>>;

/// How many times a change is planned again after the fleet changed under it.
const PUBLISH_ATTEMPTS: usize = 5;

/// Why the fleet did not take a change.
#[derive(Debug)]
pub enum Refusal {
    /// The fleet's policy moved past the revision the change was planned at.
    Moved,
    /// The fleet could not be reached, or did not answer in time.
    Unavailable(String),
}

/// The node's link to its fleet.
pub trait Fleet {
    /// `Ok` while this node has confirmed, within its lease, that it applied every
    /// change the fleet holds; else why not.
    fn confirmed(&self) -> Result<(), String>;
    /// The fleet revision this node has applied every change up to.
    fn applied(&self) -> u64;
    /// Publishes `change` as the fleet's next change if its last is still `after`.
    fn publish(&self, change: &PolicyChange, after: u64) -> Local<Result<(), Refusal>>;
    /// Resolves once this node has applied every change the fleet held when called.
    fn catch_up(self: Rc<Self>) -> Local<Result<(), String>>;
    /// Resolves once this node may write `world` (it owns it, and holds all its stream
    /// holds); else why not, with the owner's address.
    fn claim(self: Rc<Self>, world: String) -> Local<Result<(), String>>;
    /// What this node knows of its fleet now, of the worlds `shown` lets through.
    fn status(&self, shown: &dyn Fn(&str) -> bool) -> FleetReport;
}

/// Whether a write is a policy change (the fleet's, in a fleet).
pub(crate) fn is_policy(op: &WriteOp) -> bool {
    !matches!(
        op,
        WriteOp::Remember { .. }
            | WriteOp::RevokeToken { .. }
            | WriteOp::ApplyPolicy(_)
            | WriteOp::SetCommitSlot(_)
            | WriteOp::Replicate { .. }
    )
}

impl Node {
    /// Makes a policy change through `fleet`: plans it on this node's snapshot, publishes
    /// it, and applies it here once the fleet has it. When another node's change came
    /// first, catches up and plans again, so a change is always checked against every
    /// change before it (two concurrent epoch advances: one wins, the other's capability
    /// is then stale).
    pub(crate) async fn write_to_fleet(
        self: &Rc<Self>,
        fleet: Rc<dyn Fleet>,
        request: WriteRequest,
    ) -> Result<WriteOutcome, CapabilityError> {
        for _ in 0..PUBLISH_ATTEMPTS {
            let after = fleet.applied();
            let change = self
                .store
                .read()?
                .plan_policy(&request)?
                .expect("only policy changes are published");
            match fleet.publish(&change, after).await {
                Ok(()) => {
                    self.apply_policy(vec![change.clone()]).await?;
                    return Ok(WriteOutcome::of(change));
                }
                Err(Refusal::Moved) => fleet
                    .clone()
                    .catch_up()
                    .await
                    .map_err(CapabilityError::Unavailable)?,
                Err(Refusal::Unavailable(reason)) => {
                    return Err(CapabilityError::Unavailable(format!(
                        "the fleet did not take the change: {reason}"
                    )));
                }
            }
        }
        Err(CapabilityError::Conflict(format!(
            "the fleet's policy changed {PUBLISH_ATTEMPTS} times while this change was \
             being made; try again"
        )))
    }

    /// `unavailable` unless this node may write `world` now (alone, always).
    pub(crate) async fn claim_world(self: &Rc<Self>, world: &str) -> Result<(), CapabilityError> {
        let fleet = self.fleet.borrow().clone();
        match fleet {
            Some(fleet) => fleet
                .claim(world.to_owned())
                .await
                .map_err(CapabilityError::Unavailable),
            None => Ok(()),
        }
    }

    /// Stores a world's stream message at `position` (`WriteOp::Replicate`).
    pub async fn replicate(
        self: &Rc<Self>,
        world: String,
        position: u64,
        message: Vec<u8>,
    ) -> Result<WriteOutcome, engram_store::StoreError> {
        self.write_as_node(WriteOp::Replicate {
            world,
            position,
            message,
        })
        .await
    }

    /// Makes this node give out the commits of `slot` (`WriteOp::SetCommitSlot`).
    pub async fn set_commit_slot(
        self: &Rc<Self>,
        slot: u64,
    ) -> Result<(), engram_store::StoreError> {
        self.write_as_node(WriteOp::SetCommitSlot(slot))
            .await
            .map(drop)
    }

    /// Applies policy changes the fleet holds, durably, and mirrors what they changed.
    pub async fn apply_policy(
        self: &Rc<Self>,
        changes: Vec<PolicyChange>,
    ) -> Result<(), engram_store::StoreError> {
        self.write_as_node(WriteOp::ApplyPolicy(changes))
            .await
            .map(drop)
    }

    /// A write the node makes in its own name (what only it may ask for).
    async fn write_as_node(
        self: &Rc<Self>,
        op: WriteOp,
    ) -> Result<WriteOutcome, engram_store::StoreError> {
        self.write(WriteRequest {
            authority: engram_store::Authority::Node,
            op,
        })
        .await
    }
}
