//! The node state every capability on the RPC thread shares: the store, the writer, the
//! node key, the current epoch and the principals' grant generations.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use engram_store::audit::AuditLog;
use engram_store::writer::Writer;
use engram_store::{
    Epoch, Principal, PublicKey, Rate, ReadView, Store, StoreError, TextIndex, VectorIndex,
    WriteOutcome, WriteRequest,
};
use tokio::sync::watch;

use crate::error::CapabilityError;
use crate::fleet::Fleet;
use crate::limits::REVOKED_TOKENS_PER_PRINCIPAL_MAX;
use crate::peer::LoginRate;
use crate::rate::Bucket;

/// The longest `policy_view` waits for this node to mirror a committed policy change.
const POLICY_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The fewest lineage buckets kept before the ones nobody holds are forgotten.
const LINEAGE_SWEEP_MIN: usize = 1024;

/// Shared by every capability of the node (`Rc<Node>` on the RPC thread).
pub struct Node {
    pub(crate) store: Store,
    pub(crate) writer: Writer,
    pub(crate) node_key: SigningKey,
    /// The node key as biscuit's key pair, which signs tokens.
    pub(crate) token_key: biscuit_auth::KeyPair,
    /// Its public half, which verifies them.
    pub(crate) token_root: biscuit_auth::PublicKey,
    /// Mirror of the store's revocation list of the current epoch (revocation ids),
    /// updated once a revocation is durable.
    revoked_tokens: RefCell<HashSet<Vec<u8>>>,
    /// How many of them each principal's tokens are.
    revocations: RefCell<HashMap<PublicKey, usize>>,
    /// The rate buckets of lineage nodes (`rate::Lineage`), by key: one per node, shared
    /// by every capability whose lineage passes through it, so saving, restoring or
    /// narrowing again buys nothing.
    lineage_rates: RefCell<HashMap<[u8; 32], Rc<Bucket>>>,
    /// The size of `lineage_rates` at which the buckets nobody holds are next forgotten:
    /// twice what was left after the last sweep, so a holder keeping many capabilities
    /// alive costs each new bucket no scan of all the others.
    lineage_sweep_at: Cell<usize>,
    /// Mirror of the store's current epoch number, updated only after an advance is
    /// durable, read by every call's epoch guard.
    epoch: Cell<u64>,
    /// Principal → the generation its capabilities must carry. A grants change or a
    /// removal changes or deletes it, which revokes that principal's live capabilities.
    generations: RefCell<HashMap<PublicKey, (u64, Principal)>>,
    next_generation: Cell<u64>,
    pub(crate) started: Instant,
    /// The doorbell: the last durable commit, rung by the writer thread.
    pub(crate) committed: watch::Receiver<u64>,
    /// The similarity index, caught up by the indexer thread (derived state).
    pub(crate) vectors: Arc<VectorIndex>,
    /// The lexical index, caught up by the indexer thread (derived state).
    pub(crate) texts: Arc<TextIndex>,
    /// The audit trail every read that answers with atoms is recorded in.
    pub(crate) audit: AuditLog,
    /// Bumped whenever an epoch advance or a principal change may revoke capabilities,
    /// so that waiting subscriptions check their grip again.
    pub(crate) policy: watch::Sender<u64>,
    /// Set once the node begins to shut down.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Live subscriptions per principal.
    subscriptions: RefCell<HashMap<PublicKey, usize>>,
    /// Ended subscriptions whose end notice is still on its way.
    ending: Cell<usize>,
    subscription_closed: tokio::sync::Notify,
    pub(crate) limits: NodeLimits,
    /// Login attempts per peer.
    pub(crate) logins: LoginRate,
    /// Places for reads that run off the RPC thread (`Grip::off_thread`).
    pub(crate) read_workers: Arc<tokio::sync::Semaphore>,
    /// Each principal's share of them: half the workers (at least one), so one
    /// principal's reads never take every worker.
    read_shares: RefCell<HashMap<PublicKey, Arc<tokio::sync::Semaphore>>>,
    /// The rate buckets of grants, by principal and world: one per grant, shared by every
    /// login of the principal, so logging in again buys nothing.
    grant_rates: RefCell<HashMap<(PublicKey, String), Rc<Bucket>>>,
    /// The fleet whose policy this node follows (`engramd --nats`), if any.
    pub(crate) fleet: RefCell<Option<Rc<dyn Fleet>>>,
    /// Where backups are made (`Admin.backup`); `None`: this node makes none.
    backups: RefCell<Option<std::path::PathBuf>>,
    /// Whether a backup is held (one at a time).
    pub(crate) backup_held: Cell<bool>,
}

/// Limits an operator configures.
#[derive(Clone, Copy, Debug)]
pub struct NodeLimits {
    /// Live subscriptions one principal may hold.
    pub subscriptions_per_principal_max: usize,
    /// Writes, verifications and searches one connection may have in flight at once.
    pub calls_in_flight_per_connection_max: usize,
    /// Of those, reads off the RPC thread (searches, long asks and replays,
    /// verifications), whose answers may be large.
    pub reads_in_flight_per_connection_max: usize,
    /// Login attempts one peer may make a minute; 0 sets no limit.
    pub login_attempts_per_minute: u32,
    /// Reads (searches, long asks and replays, verifications) run off the RPC thread at
    /// once; more wait for a place.
    pub read_workers: usize,
    /// Calls that take longer are logged as slow (`--slow-call-ms`).
    pub slow_call: std::time::Duration,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            subscriptions_per_principal_max: crate::limits::SUBSCRIPTIONS_PER_PRINCIPAL_MAX_DEFAULT,
            calls_in_flight_per_connection_max:
                crate::limits::CALLS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT,
            reads_in_flight_per_connection_max:
                crate::limits::READS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT,
            login_attempts_per_minute: crate::limits::LOGIN_ATTEMPTS_PER_MINUTE_DEFAULT,
            read_workers: crate::limits::read_workers_default(),
            slow_call: std::time::Duration::from_millis(crate::limits::SLOW_CALL_MS_DEFAULT),
        }
    }
}

impl Node {
    /// Loads the epoch and principals from `store`. `committed` is the doorbell the
    /// writer rings after each durable commit.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        writer: Writer,
        node_key: SigningKey,
        committed: watch::Receiver<u64>,
        vectors: Arc<VectorIndex>,
        texts: Arc<TextIndex>,
        audit: AuditLog,
        limits: NodeLimits,
    ) -> Result<Node, StoreError> {
        let view = store.read()?;
        let epoch = view.epoch()?.number;
        let mut revocations = HashMap::new();
        let revoked_tokens = view
            .revoked_tokens(epoch)?
            .into_iter()
            .map(|(id, owner)| {
                *revocations.entry(owner).or_insert(0) += 1;
                id
            })
            .collect();
        let generations = view
            .principals()?
            .into_iter()
            .map(|principal| (principal.public_key, (0, principal)))
            .collect();
        drop(view);
        let token_key = crate::token::key_pair(&node_key);
        Ok(Node {
            store,
            writer,
            token_root: token_key.public(),
            token_key,
            revoked_tokens: RefCell::new(revoked_tokens),
            revocations: RefCell::new(revocations),
            lineage_rates: RefCell::new(HashMap::new()),
            lineage_sweep_at: Cell::new(LINEAGE_SWEEP_MIN),
            node_key,
            epoch: Cell::new(epoch),
            generations: RefCell::new(generations),
            next_generation: Cell::new(1),
            started: Instant::now(),
            committed,
            vectors,
            texts,
            audit,
            policy: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            subscriptions: RefCell::new(HashMap::new()),
            ending: Cell::new(0),
            subscription_closed: tokio::sync::Notify::new(),
            logins: LoginRate::new(limits.login_attempts_per_minute),
            read_workers: Arc::new(tokio::sync::Semaphore::new(limits.read_workers.max(1))),
            grant_rates: RefCell::new(HashMap::new()),
            read_shares: RefCell::new(HashMap::new()),
            fleet: RefCell::new(None),
            backups: RefCell::new(None),
            backup_held: Cell::new(false),
            limits,
        })
    }

    /// Why a new connection of `peer` is refused, and how long the peer stays past its
    /// login rate, if it is now.
    pub fn login_refusal(&self, peer: &crate::Peer) -> Option<(String, std::time::Duration)> {
        let left = self.logins.blocks(peer)?;
        Some((self.logins.refusal(peer), left))
    }

    /// Makes backups (`Admin.backup`) in `directory`, which only they use: whatever it
    /// holds is deleted now (backups a stopped node left behind) and as each backup is
    /// released.
    pub fn set_backup_directory(&self, directory: std::path::PathBuf) {
        if let Err(error) = std::fs::remove_dir_all(&directory)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, directory = %directory.display(), "old backups could not be deleted");
        }
        self.backups.replace(Some(directory));
    }

    /// Where backups are made, if this node makes them.
    pub(crate) fn backup_directory(&self) -> Option<std::path::PathBuf> {
        self.backups.borrow().clone()
    }

    /// The store this node serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's public key.
    pub fn node_key(&self) -> [u8; 32] {
        self.node_key.verifying_key().to_bytes()
    }

    /// The node's signing key, for what the node signs in its own name (its fleet
    /// stream messages). Never sent anywhere.
    pub fn signing_key(&self) -> SigningKey {
        self.node_key.clone()
    }

    /// Makes this node follow `fleet`'s policy: from now on admins' policy changes go
    /// through it, and nothing is served while it is not confirmed.
    pub fn join(&self, fleet: Rc<dyn Fleet>) {
        *self.fleet.borrow_mut() = Some(fleet);
    }

    /// Whether this node has joined a fleet.
    pub fn in_fleet(&self) -> bool {
        self.fleet.borrow().is_some()
    }

    /// `unavailable` while this node, in a fleet, has not confirmed the fleet's policy
    /// within its lease: it never serves authority the fleet may have revoked.
    pub(crate) fn fleet_gate(&self) -> Result<(), CapabilityError> {
        match &*self.fleet.borrow() {
            Some(fleet) => fleet.confirmed().map_err(|reason| {
                CapabilityError::Unavailable(format!(
                    "this node is not in touch with its fleet ({reason}); it serves again \
                     once it has caught up: try again, or another node"
                ))
            }),
            None => Ok(()),
        }
    }

    /// Makes a policy change: through the fleet in a fleet, else through the writer.
    pub(crate) async fn write_policy(
        self: &Rc<Self>,
        request: WriteRequest,
    ) -> Result<WriteOutcome, CapabilityError> {
        debug_assert!(crate::fleet::is_policy(&request.op));
        let fleet = self.fleet.borrow().clone();
        match fleet {
            Some(fleet) => self.write_to_fleet(fleet, request).await,
            None => Ok(self.write(request).await?),
        }
    }

    /// The current epoch number.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// The generation a principal's fresh capabilities carry, if it exists.
    pub(crate) fn generation(&self, principal: &PublicKey) -> Option<u64> {
        self.generations
            .borrow()
            .get(principal)
            .map(|(generation, _)| *generation)
    }

    /// One snapshot of the policy for `key`: a read of the store whose epoch and
    /// principal record this node's mirror agrees with, the record and the generation
    /// capabilities made from it carry. The store and the mirror differ only between a
    /// change's commit and its mirroring on this thread; capabilities handed out then
    /// would list the new grants under the old generation and fail at their first call,
    /// so that moment is waited out (at most `POLICY_SETTLE`, then `unavailable`).
    /// `permissionDenied` if the principal is removed.
    pub(crate) async fn policy_view(
        &self,
        key: &PublicKey,
        removed: &str,
    ) -> Result<(ReadView, Principal, Epoch, u64), CapabilityError> {
        let mut changed = self.policy.subscribe();
        let deadline = tokio::time::Instant::now() + POLICY_SETTLE;
        loop {
            let view = self.store.read()?;
            let stored = view.principal(key)?;
            let epoch = view.epoch()?;
            let mirrored = self.generations.borrow().get(key).cloned();
            if epoch.number == self.epoch.get() {
                match (stored, mirrored) {
                    (None, None) => return Err(CapabilityError::denied(removed)),
                    (Some(stored), Some((generation, record))) if stored == record => {
                        return Ok((view, stored, epoch, generation));
                    }
                    _ => {}
                }
            }
            drop(view);
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(CapabilityError::Unavailable(
                    "the policy is changing (an epoch advance or a grant change is being \
                     applied); try again"
                        .into(),
                ));
            }
        }
    }

    /// Submits a write and mirrors its effect on epochs and generations once durable.
    ///
    /// The submission and the mirroring run in a task of their own on the RPC thread,
    /// not in the calling future: capnp-rpc drops a call's future when its caller
    /// disconnects or cancels, and a change the writer makes durable must take effect
    /// whether or not anyone still waits for its answer.
    pub(crate) async fn write(
        self: &Rc<Self>,
        request: WriteRequest,
    ) -> Result<WriteOutcome, StoreError> {
        let node = self.clone();
        let applied = tokio::task::spawn_local(async move {
            let outcome = node.writer.submit(request).await?;
            node.mirror(&outcome);
            Ok(outcome)
        });
        applied.await.unwrap_or_else(|error| {
            Err(StoreError::TransactionFailed {
                reason: format!("the write's task ended: {error}"),
            })
        })
    }

    /// Mirrors a durable write's effect on the epoch and the grant generations, and
    /// tells waiting subscriptions to check their grip again.
    fn mirror(&self, outcome: &WriteOutcome) {
        match outcome {
            // Applied changes and direct writes finish in any order; the store's epoch
            // only advances, and so does its mirror.
            WriteOutcome::Epoch(Epoch { number, .. }) if *number <= self.epoch.get() => return,
            WriteOutcome::Epoch(Epoch { number, .. }) => {
                self.epoch.set(*number);
                // Every older token is stale now; the store emptied its list too.
                self.revoked_tokens.borrow_mut().clear();
                self.revocations.borrow_mut().clear();
                self.lineage_rates.borrow_mut().clear();
            }
            WriteOutcome::Principal(principal) => {
                let generation = self.next_generation.get();
                self.next_generation.set(generation + 1);
                self.generations
                    .borrow_mut()
                    .insert(principal.public_key, (generation, principal.clone()));
            }
            WriteOutcome::PrincipalRemoved(principal) => {
                self.generations.borrow_mut().remove(&principal.public_key);
                self.grant_rates
                    .borrow_mut()
                    .retain(|(key, _), _| *key != principal.public_key);
            }
            WriteOutcome::TokenRevoked { owner, id } => {
                self.revoked_tokens.borrow_mut().insert(id.clone());
                *self.revocations.borrow_mut().entry(*owner).or_insert(0) += 1;
            }
            WriteOutcome::Applied(outcomes) => {
                for outcome in outcomes {
                    self.mirror(outcome);
                }
                return;
            }
            WriteOutcome::Remembered { .. }
            | WriteOutcome::World(_)
            | WriteOutcome::Replicated { .. }
            | WriteOutcome::CommitSlot => return,
        }
        self.policy.send_modify(|version| *version += 1);
    }

    /// The bucket of `principal`'s grant rate in `world`, shared by all its logins; a
    /// new one when the rate changed, none when it sets no limit.
    pub(crate) fn grant_rate(
        &self,
        principal: &PublicKey,
        world: &str,
        rate: Rate,
    ) -> Option<Rc<Bucket>> {
        let mut rates = self.grant_rates.borrow_mut();
        if rate.is_unlimited() {
            // The usual case: no key is built unless a bucket of an older grant is left.
            if !rates.is_empty() {
                rates.remove(&(*principal, world.to_owned()));
            }
            return None;
        }
        let key = (*principal, world.to_owned());
        if let Some(bucket) = rates.get(&key)
            && bucket.rate() == rate
        {
            return Some(bucket.clone());
        }
        let bucket = Rc::new(Bucket::new(rate, "this principal's grant")?);
        rates.insert(key, bucket.clone());
        Some(bucket)
    }

    /// Revokes `token` (its last block) as `actor`, a principal in `epoch`: any token
    /// when `any` (an admin), else only one naming `actor`. A stale or already revoked
    /// token changes nothing.
    pub(crate) async fn revoke_token(
        self: &Rc<Self>,
        actor: PublicKey,
        epoch: u64,
        token: &[u8],
        any: bool,
    ) -> Result<(), crate::CapabilityError> {
        let claims = crate::token::open(&self.token_root, token)?;
        if !any && claims.principal != actor {
            return Err(crate::CapabilityError::denied(
                "this token names another principal; only it or an admin may revoke it",
            ));
        }
        let id = claims
            .revoked_with
            .last()
            .expect("a token has its authority block")
            .clone();
        if claims.epoch != self.epoch() || self.revoked(std::slice::from_ref(&id)) {
            return Ok(());
        }
        let revoked = self.revocations.borrow().get(&claims.principal).copied();
        if !any && revoked >= Some(REVOKED_TOKENS_PER_PRINCIPAL_MAX) {
            return Err(crate::CapabilityError::ResourceExhausted(format!(
                "this principal has revoked {REVOKED_TOKENS_PER_PRINCIPAL_MAX} of its tokens \
                 in this epoch, the limit; an admin may revoke more, or advance the epoch"
            )));
        }
        self.write(WriteRequest {
            authority: engram_store::Authority::Principal { key: actor, epoch },
            op: engram_store::WriteOp::RevokeToken {
                owner: claims.principal,
                id,
            },
        })
        .await?;
        Ok(())
    }

    /// Counts one login attempt of `peer` — a login, a restore, a token to revoke: each
    /// checks signatures — or refuses it with `resourceExhausted`, resting the
    /// connection of `budget` until the peer's rate allows another.
    pub(crate) fn login_attempt(
        &self,
        peer: &crate::Peer,
        budget: &crate::grip::CallBudget,
    ) -> Result<(), crate::CapabilityError> {
        self.logins.attempt(peer).map_err(|(error, wait)| {
            budget.rest(wait);
            error
        })
    }

    /// Whether any of these revocation ids is revoked.
    pub(crate) fn revoked(&self, ids: &[Vec<u8>]) -> bool {
        let revoked = self.revoked_tokens.borrow();
        !revoked.is_empty() && ids.iter().any(|id| revoked.contains(id))
    }

    /// The bucket of the lineage node `key` (see [`crate::rate::Lineage`]), shared by
    /// every capability whose lineage passes through it, online or restored from a
    /// token; none when it sets no limit.
    pub(crate) fn lineage_rate(&self, key: &[u8; 32], rate: Rate) -> Option<Rc<Bucket>> {
        if rate.is_unlimited() {
            return None;
        }
        let mut rates = self.lineage_rates.borrow_mut();
        // A node's key is derived from its rate, so a bucket found is of this rate.
        if let Some(bucket) = rates.get(key) {
            return Some(bucket.clone());
        }
        // Forget the buckets no capability holds any more, so the map stays small.
        if rates.len() >= self.lineage_sweep_at.get() {
            rates.retain(|_, bucket| Rc::strong_count(bucket) > 1);
            self.lineage_sweep_at
                .set((2 * rates.len()).max(LINEAGE_SWEEP_MIN));
        }
        let bucket = Rc::new(Bucket::new(rate, "this capability's restriction")?);
        rates.insert(*key, bucket.clone());
        Some(bucket)
    }

    /// The places `principal` may hold among the read workers.
    pub(crate) fn read_share(&self, principal: &PublicKey) -> Arc<tokio::sync::Semaphore> {
        let share = (self.limits.read_workers / 2).max(1);
        let mut shares = self.read_shares.borrow_mut();
        // Forget the shares nobody holds or waits for, so the map stays small.
        if shares.len() > 1024 {
            shares.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        }
        shares
            .entry(*principal)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(share)))
            .clone()
    }

    /// Tells every subscription that the node is shutting down; they end with
    /// `unavailable`. See [`Node::subscriptions_live`] to wait for them.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// How many subscriptions are still running or sending their end notice.
    pub fn subscriptions_live(&self) -> usize {
        self.subscriptions.borrow().values().sum::<usize>() + self.ending.get()
    }

    /// Counts a new subscription of `principal`, or says why it may not have one.
    pub(crate) fn open_subscription(&self, principal: &PublicKey) -> Result<(), String> {
        let mut subscriptions = self.subscriptions.borrow_mut();
        let count = subscriptions.entry(*principal).or_insert(0);
        if *count >= self.limits.subscriptions_per_principal_max {
            return Err(format!(
                "this principal holds {count} live subscriptions, the node's limit \
                 (engramd --subscriptions-per-principal-max); cancel one first"
            ));
        }
        *count += 1;
        metrics::gauge!("engram_subscriptions").increment(1);
        Ok(())
    }

    /// Counts out an ended subscription: its principal's place is free at once, while
    /// its end notice (if any) is on its way until [`Node::end_notice_sent`].
    pub(crate) fn close_subscription(&self, principal: &PublicKey) {
        let mut subscriptions = self.subscriptions.borrow_mut();
        if let Some(count) = subscriptions.get_mut(principal) {
            *count -= 1;
            if *count == 0 {
                subscriptions.remove(principal);
            }
            metrics::gauge!("engram_subscriptions").decrement(1);
        }
        self.ending.set(self.ending.get() + 1);
    }

    /// The end notice of a subscription counted out by [`Node::close_subscription`] was
    /// taken, refused, or waited for long enough.
    pub(crate) fn end_notice_sent(&self) {
        self.ending.set(self.ending.get() - 1);
        self.subscription_closed.notify_waiters();
    }

    /// Resolves the next time a subscription ends.
    pub async fn subscriptions_closed(&self) {
        self.subscription_closed.notified().await;
    }
}
