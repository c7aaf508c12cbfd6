//! The credentials every epoch-scoped capability carries and the guard each call runs.

use std::cell::Cell;
use std::rc::Rc;

use engram_store::audit::{AuditRecord, AuditedQuery};
use engram_store::limits::{READ_EXAMINED_MAX, READ_INLINE_EXAMINED_MAX};
use engram_store::{Hash, PublicKey};

use crate::error::CapabilityError;
use crate::node::Node;
use crate::rate::{Bucket, Lineage};
use crate::restriction::Restriction;
use crate::token::{self, Claims, Held};

/// Why a call through an expired capability fails.
pub(crate) const EXPIRED: &str = "this capability has expired";

/// Who holds a capability, under which epoch and grant generation, narrowed how.
#[derive(Clone)]
pub(crate) struct Grip {
    pub node: Rc<Node>,
    pub principal: PublicKey,
    /// The principal's name when the capability was handed out, for the log.
    pub name: Rc<str>,
    pub epoch: u64,
    pub generation: u64,
    pub restriction: Rc<Restriction>,
    /// The restriction as the audit trail records it (JSON), described once.
    pub audit_restriction: std::sync::Arc<str>,
    /// Shared by every capability of the logins of one connection, attenuated or
    /// handed on.
    pub budget: Rc<CallBudget>,
    /// The rates this capability obeys: its grant's, then each of its lineage's.
    pub rates: Rc<[Rc<Bucket>]>,
    /// Where its rates come from, shared with every capability saved or narrowed
    /// from the same root.
    pub lineage: Lineage,
    /// The revocation ids of the tokens this capability was restored from (none for a
    /// grafted one): revoking any of them fails it.
    pub tokens: Rc<[Vec<u8>]>,
}

/// How many calls that wait on the writer or the blocking pool one connection's logins
/// have in flight, and how many of them are reads off the RPC thread (whose answers can
/// be large, so fewer of them may wait at once).
pub(crate) struct CallBudget {
    in_flight: Cell<usize>,
    max: usize,
    reads: Cell<usize>,
    reads_max: usize,
    /// Live subscriptions started through the connection's logins.
    pub subscriptions: Cell<usize>,
    /// Until when the connection's next calls are not read: a call past a rate makes
    /// its connection rest until the rate allows another.
    resting_until: Cell<Option<tokio::time::Instant>>,
}

impl CallBudget {
    pub fn new(max: usize, reads_max: usize) -> CallBudget {
        CallBudget {
            in_flight: Cell::new(0),
            max,
            reads: Cell::new(0),
            reads_max,
            subscriptions: Cell::new(0),
            resting_until: Cell::new(None),
        }
    }

    /// Until when the connection's next calls are not read, if it rests.
    pub fn resting_until(&self) -> Option<tokio::time::Instant> {
        self.resting_until.get()
    }

    /// Rests the connection for `time` (at most `REST_MAX_MS`) from now, or longer if it
    /// already rests longer.
    pub fn rest(&self, time: std::time::Duration) {
        let longest = std::time::Duration::from_millis(crate::limits::REST_MAX_MS);
        let until = tokio::time::Instant::now() + time.min(longest);
        if self
            .resting_until
            .get()
            .is_none_or(|resting| resting < until)
        {
            self.resting_until.set(Some(until));
        }
    }

    /// Takes a place for a call that will wait (a write, a verification), or fails with
    /// `resourceExhausted` when the connection already has its limit in flight.
    pub fn begin_call(budget: &Rc<CallBudget>) -> Result<CallPermit, CapabilityError> {
        let in_flight = budget.in_flight.get();
        if in_flight >= budget.max {
            return Err(CapabilityError::ResourceExhausted(format!(
                "this connection has {in_flight} calls in flight, the node's limit \
                 (engramd --calls-in-flight-max); wait for answers before sending more"
            )));
        }
        budget.in_flight.set(in_flight + 1);
        Ok(CallPermit {
            budget: budget.clone(),
            read: false,
        })
    }

    /// Whether the connection waits on anything: a call in flight or a subscription.
    pub fn busy(&self) -> bool {
        self.in_flight.get() > 0 || self.subscriptions.get() > 0
    }
}

/// One call in flight; returns its place in the budget when dropped.
pub(crate) struct CallPermit {
    budget: Rc<CallBudget>,
    read: bool,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.budget.in_flight.set(self.budget.in_flight.get() - 1);
        if self.read {
            self.budget.reads.set(self.budget.reads.get() - 1);
        }
    }
}

impl Grip {
    /// Records a read of `world` in the audit trail (`query`, the `ids` answered, the
    /// commit the answer stood at) before it is answered: waits while the trail's queue
    /// is full, and fails (`unavailable`) once the trail cannot be written.
    pub(crate) async fn audit(
        &self,
        world: &str,
        query: AuditedQuery,
        ids: Vec<Hash>,
        commit: u64,
    ) -> Result<(), CapabilityError> {
        let record = AuditRecord {
            principal: self.principal,
            world: world.to_owned(),
            restriction: self.audit_restriction.clone(),
            query,
            ids,
            commit,
            at_unix_ms: engram_store::now_unix_ms(),
        };
        Ok(self.node.audit.record(record).await?)
    }

    /// The epoch guard: fails once the node has left the capability's epoch, once its
    /// principal was removed or its grants changed, and once its restriction expired or
    /// excludes `world`.
    pub fn check(&self, world: Option<&str>) -> Result<(), CapabilityError> {
        self.node.fleet_gate()?;
        let current = self.node.epoch();
        if current != self.epoch {
            return Err(CapabilityError::StaleEpoch {
                issued: self.epoch,
                current,
            });
        }
        if self.node.generation(&self.principal) != Some(self.generation) {
            return Err(CapabilityError::denied(
                "this principal was removed or its grants changed; graft again",
            ));
        }
        if !self.tokens.is_empty() && self.node.revoked(&self.tokens) {
            return Err(CapabilityError::denied(
                "the token this capability was restored from has been revoked",
            ));
        }
        if self.restriction.expired(now_unix_ms()) {
            return Err(CapabilityError::denied(EXPIRED));
        }
        if let Some(world) = world
            && !self.restriction.allows_world(world)
        {
            return Err(CapabilityError::denied(format!(
                "this capability was attenuated to exclude world {world:?}"
            )));
        }
        Ok(())
    }

    /// Takes a place for a call that will wait (a write, a verification), or fails with
    /// `resourceExhausted` when the login already has its limit in flight.
    pub fn begin_call(&self) -> Result<CallPermit, CapabilityError> {
        CallBudget::begin_call(&self.budget)
    }

    /// Takes a place for a read off the RPC thread: one among the calls in flight, and
    /// one among the connection's reads in flight.
    fn begin_read(&self) -> Result<CallPermit, CapabilityError> {
        let reads = self.budget.reads.get();
        if reads >= self.budget.reads_max {
            return Err(CapabilityError::ResourceExhausted(format!(
                "this connection has {reads} long reads in flight, the node's limit \
                 (engramd --reads-in-flight-max); wait for answers before sending more"
            )));
        }
        let mut permit = self.begin_call()?;
        permit.read = true;
        self.budget.reads.set(reads + 1);
        Ok(permit)
    }

    /// Runs `work` on the blocking pool, off the RPC thread: it holds a place among the
    /// connection's reads in flight (or fails with `resourceExhausted`) and waits for one
    /// of the node's read workers, so heavy reads never hold up other connections and
    /// never run more at once than the node has workers.
    pub async fn off_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce(&engram_store::Store) -> Result<T, engram_store::StoreError> + Send + 'static,
    ) -> Result<T, CapabilityError> {
        let _permit = self.begin_read()?;
        let shutting_down = |_| CapabilityError::Unavailable("the node is shutting down".into());
        // The principal's share first, so that its queued reads hold no node-wide place.
        let share = self
            .node
            .read_share(&self.principal)
            .acquire_owned()
            .await
            .map_err(shutting_down)?;
        let worker = self
            .node
            .read_workers
            .clone()
            .acquire_owned()
            .await
            .map_err(shutting_down)?;
        let store = self.node.store.clone();
        // The places go with the work: a caller that cancels stops waiting, but the work
        // it started holds its worker until it ends, so cancelled reads cannot pile up
        // on the blocking pool.
        let done = tokio::task::spawn_blocking(move || {
            let _places = (share, worker);
            lower_priority();
            work(&store)
        })
        .await
        .map_err(|error| {
            CapabilityError::Store(engram_store::StoreError::TransactionFailed {
                reason: format!("a read task failed: {error}"),
            })
        })??;
        Ok(done)
    }

    /// The epoch guard of [`Grip::check`], then one call and `atoms` atoms taken from
    /// every rate the capability obeys: the entry of every call through it.
    pub fn admit(&self, world: Option<&str>, atoms: u32) -> Result<(), CapabilityError> {
        self.check(world)?;
        for bucket in self.rates.iter() {
            // Refused: the caller's next calls wait in its socket, not on the RPC thread.
            bucket.admit(atoms).map_err(|(error, wait)| {
                self.budget.rest(wait);
                error
            })?;
        }
        Ok(())
    }

    /// Takes what a read off the RPC thread costs beyond one call from every rate the
    /// capability obeys: a call for each [`READ_INLINE_EXAMINED_MAX`] entries it may
    /// examine (at most a second's worth of each rate); whether every rate paid.
    pub fn pay_for_long_read(&self) -> bool {
        let calls = (READ_EXAMINED_MAX / READ_INLINE_EXAMINED_MAX - 1) as u32;
        self.rates.iter().all(|bucket| bucket.pay(calls))
    }

    /// This capability as a token: `held` in `world` (none for a signer), narrowed as
    /// it is, dying with the tokens it was restored from.
    pub fn save(
        &self,
        held: Held,
        world: Option<&str>,
        domains: Option<&std::collections::BTreeSet<String>>,
    ) -> Result<Vec<u8>, CapabilityError> {
        self.admit(world, 0)?;
        if !self.restriction.save {
            return Err(CapabilityError::denied(
                "this capability may not be saved: it was narrowed withoutSave (as a \
                 capability handed to a spawned child is, whose authority ends with its \
                 parent's handoff)",
            ));
        }
        token::mint(
            &self.node.token_key,
            &Claims {
                principal: self.principal,
                held,
                world: world.map(str::to_owned),
                epoch: self.epoch,
                restriction: (*self.restriction).clone(),
                domains: domains.cloned(),
                revoked_with: self.tokens.to_vec(),
                lineage: self.lineage.clone(),
            },
        )
    }

    /// The same grip, narrowed: a rate in `restriction` is a node of the lineage, whose
    /// bucket every copy of the narrowed capability shares, on top of those the
    /// capability already obeys.
    pub fn narrowed(&self, restriction: &Restriction) -> Grip {
        let lineage = self.lineage.narrowed(restriction.rate);
        let mut rates = self.rates.to_vec();
        if lineage != self.lineage {
            rates.extend(self.node.lineage_rate(&lineage.key, restriction.rate));
        }
        let restriction = self.restriction.narrow(restriction);
        Grip {
            audit_restriction: restriction.describe().into(),
            restriction: Rc::new(restriction),
            rates: rates.into(),
            lineage,
            ..self.clone()
        }
    }
}

/// Lowers the calling blocking-pool thread's scheduling priority (once per thread):
/// reads off the RPC thread take the CPU the RPC and writer threads leave, so a flood of
/// long reads slows other reads, never the calls that need no worker.
fn lower_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: setpriority(2) on the calling thread (who 0), which Linux applies
            // to that thread alone; a failure only leaves the priority as it was.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, READ_WORKER_NICENESS);
            }
        }
    });
}

/// The niceness of the threads that run reads off the RPC thread.
const READ_WORKER_NICENESS: libc::c_int = 10;

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}
