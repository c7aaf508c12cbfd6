//! Subscriptions: a task per subscription pushes committed atoms to the client's
//! `AtomSink`, always read from the store from a commit cursor. Catch-up and live
//! delivery are the same loop, so a slow subscriber costs the node one batch and the
//! Cap'n Proto flow-control window, never a growing queue, and no event is ever dropped:
//! what is not yet pushed is simply not yet read.

use std::rc::Rc;
use std::time::Duration;

use engram_schema::engram_capnp::{atom_sink, subscription};
use engram_store::audit::AuditedQuery;
use engram_store::{Facts, Query, ReadBudget, ReplayPage};
use tokio::sync::watch;

use crate::convert::write_atoms;
use crate::error::CapabilityError;
use crate::grip::Grip;
use crate::grip::{EXPIRED, now_unix_ms};
use crate::limits::{SUBSCRIPTION_END_WAIT_MS, SUBSCRIPTION_PUSH_ATOMS_MAX};

/// The handle the subscriber holds; cancelling or dropping it ends the subscription.
pub struct Subscription {
    cancel: watch::Sender<bool>,
    /// Set by the delivery task when it has ended and been counted out.
    ended: watch::Receiver<bool>,
    /// Whose subscription of which world, for the log.
    principal: Rc<str>,
    world: Rc<str>,
    slow_call: Duration,
}

impl crate::metered::Caller for Subscription {
    fn principal(&self) -> Option<&str> {
        Some(&self.principal)
    }

    fn world(&self) -> Option<&str> {
        Some(&self.world)
    }

    fn slow_call(&self) -> Duration {
        self.slow_call
    }
}

impl subscription::Server for Subscription {
    /// Returns once the subscription has ended: no push follows, and it no longer
    /// counts against the principal's limit.
    async fn cancel(
        self: Rc<Self>,
        _: subscription::CancelParams,
        _: subscription::CancelResults,
    ) -> Result<(), capnp::Error> {
        self.cancel.send_replace(true);
        let mut ended = self.ended.clone();
        // An error means the task is gone, which is ended too.
        let _ = ended.wait_for(|ended| *ended).await;
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel.send_replace(true);
    }
}

/// Starts delivering atoms of `world` after `from_commit` that match `filter` to `sink`.
/// The caller has counted the subscription with `Node::open_subscription`.
pub(crate) fn start(
    grip: Grip,
    world: String,
    filter: Query,
    sink: atom_sink::Client,
    from_commit: u64,
) -> subscription::Client {
    let (cancel, cancelled) = watch::channel(false);
    let (end, ended) = watch::channel(false);
    let caller = (
        grip.name.clone(),
        Rc::from(world.as_str()),
        grip.node.limits.slow_call,
    );
    let subscriptions = &grip.budget.subscriptions;
    subscriptions.set(subscriptions.get() + 1);
    tokio::task::spawn_local(async move {
        let ending = deliver(&grip, &world, &filter, &sink, from_commit, cancelled).await;
        let subscriptions = &grip.budget.subscriptions;
        subscriptions.set(subscriptions.get() - 1);
        // Ended: the principal's place is free, and a cancel returns, before the sink is
        // told (which a sink stuck in a push takes only once it returns from it).
        grip.node.close_subscription(&grip.principal);
        end.send_replace(true);
        if let Some(reason) = ending {
            tracing::debug!(%reason, world, "subscription ends");
            let mut request = sink.end_request();
            request.get().set_reason(reason.as_str());
            let wait = Duration::from_millis(SUBSCRIPTION_END_WAIT_MS);
            let _ = tokio::time::timeout(wait, request.send().promise).await;
        }
        grip.node.end_notice_sent();
    });
    let (principal, world, slow_call) = caller;
    crate::metered::client(Subscription {
        cancel,
        ended,
        principal,
        world,
        slow_call,
    })
}

fn coded(error: CapabilityError) -> String {
    format!("{}: {error}", error.code().as_str())
}

/// The end notice when the node stops, with the commit to resume from.
fn shutting_down(cursor: u64) -> String {
    coded(CapabilityError::Unavailable(format!(
        "the node is shutting down; subscribe again from commit {cursor}"
    )))
}

/// Resolves when the restriction's expiry time has come; never if it has none.
async fn expiry(grip: &Grip) {
    let expires_at = grip.restriction.expires_at_unix_ms;
    if expires_at <= 0 {
        return std::future::pending().await;
    }
    let left = u64::try_from(expires_at.saturating_sub(now_unix_ms())).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(left)).await;
}

/// The end notice of a subscription whose restriction expired.
fn expired_notice() -> String {
    coded(CapabilityError::denied(EXPIRED))
}

/// Pushes until the subscription ends. Returns the reason to tell the sink, or `None`
/// when the subscriber itself ended it (cancelled, dropped, disconnected). A push the
/// sink is slow to take is abandoned as soon as the subscription must end: cancelled,
/// revoked, expired or shut down.
async fn deliver(
    grip: &Grip,
    world: &str,
    filter: &Query,
    sink: &atom_sink::Client,
    from_commit: u64,
    mut cancelled: watch::Receiver<bool>,
) -> Option<String> {
    let node = &grip.node;
    let mut committed = node.committed.clone();
    let mut policy = node.policy.subscribe();
    let mut shutdown = node.shutdown.subscribe();
    let shows = |facts: &dyn Facts| filter.matches(facts) && grip.restriction.shows(facts);
    let mut cursor = from_commit;
    let expired = expiry(grip);
    let mut expired = std::pin::pin!(expired);
    loop {
        if *cancelled.borrow_and_update() {
            return None;
        }
        if *shutdown.borrow_and_update() {
            return Some(shutting_down(cursor));
        }
        if let Err(error) = grip.check(Some(world)) {
            return Some(coded(error));
        }
        // Mark the doorbell and policy as seen before reading, so a commit or a
        // revocation that lands during the read wakes the wait below at once.
        committed.borrow_and_update();
        policy.borrow_and_update();
        // A bounded read on the RPC thread: a selective filter over a long backlog is
        // read a slice at a time, with other work served between slices.
        let read = node.store.read().and_then(|view| {
            let page = view.replay(
                world,
                cursor,
                SUBSCRIPTION_PUSH_ATOMS_MAX,
                ReadBudget::INLINE,
                &shows,
            )?;
            Ok((page, view.last_commit()))
        });
        let (
            ReplayPage {
                atoms,
                next_commit: next,
                ..
            },
            read_at,
        ) = match read {
            Ok(read) => read,
            Err(error) => return Some(coded(error.into())),
        };
        if !atoms.is_empty() {
            // Recorded like any read that answers with atoms, before it is pushed.
            let push = AuditedQuery::Push {
                filter: filter.clone(),
                from_commit: cursor,
            };
            let ids = atoms.iter().map(|atom| atom.id).collect();
            if let Err(error) = grip.audit(world, push, ids, read_at).await {
                return Some(coded(error));
            }
            let mut request = sink.push_request();
            write_atoms(request.get().init_atoms(atoms.len() as u32), &atoms);
            // Resolves once the flow-control window has room: a slow sink holds us here,
            // but nothing that ends the subscription waits for it.
            let mut sent = std::pin::pin!(request.send());
            loop {
                tokio::select! {
                    result = &mut sent => {
                        if let Err(error) = result {
                            tracing::debug!(%error, world, "subscriber gone");
                            return None;
                        }
                        break;
                    }
                    _ = cancelled.changed() => return None,
                    _ = shutdown.changed() => return Some(shutting_down(cursor)),
                    // A revocation or an epoch advance: the check below says which.
                    _ = policy.changed() => {}
                    _ = &mut expired => return Some(expired_notice()),
                }
                if let Err(error) = grip.check(Some(world)) {
                    return Some(coded(error));
                }
            }
            cursor = next;
            continue;
        }
        if next > cursor {
            cursor = next;
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() {
                return Some(shutting_down(cursor));
            },
            _ = policy.changed() => {}
            _ = shutdown.changed() => {}
            changed = cancelled.changed() => if changed.is_err() {
                return None;
            },
            _ = &mut expired => return Some(expired_notice()),
        }
    }
}
