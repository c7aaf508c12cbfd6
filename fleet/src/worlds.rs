//! Replicated worlds. Each world has a stream of its own (`<fleet>-world-<hash>`, one
//! subject) whose messages are the world's part of its owner's groups
//! (`engram_store::replica`), signed by the owner's node key; and at most one *owner*, the
//! node holding the world's lease in the `<fleet>-leases` bucket, whose entries expire
//! after the lease unless renewed.
//!
//! - The owner's writer publishes each group's message before it commits the group
//!   ([`Publisher`], `Nats-Expected-Last-Subject-Sequence` = the position it holds), so
//!   the stream orders every message and a node that is not at the stream's end cannot
//!   write: safety does not rest on the lease, only liveness does.
//! - Every node follows every world's stream ([`follow`]) and stores each message with
//!   `WriteOp::Replicate`, which checks every entry's id, chain position and commit;
//!   a message that is not signed by a node of the fleet, or does not check, is refused
//!   and reported, never stored.
//! - A node that receives a write for a world takes the lease if no node holds it
//!   ([`Link::claim`]), catches up the world's stream, and only then writes; a world
//!   another node holds is refused with that node's address.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{HeaderMap, header};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use engram_capabilities::Node;
use engram_store::{StoreError, WriteOutcome};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{FleetReport, Link, NodeReport, WorldReport};

/// The signature's domain: what a node signs is this, the world, then the message.
const SIGNED_CONTEXT: &[u8] = b"engram 2026-11 world stream message v1\0";
/// Messages of a world's stream stored in one group commit, at most.
const CATCH_UP_GROUP_MAX: usize = 256;
/// How long the writer waits for the stream's answer to a group's message, at most.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers of a world stream message.
const NODE_HEADER: &str = "Engram-Node";
const SIGNATURE_HEADER: &str = "Engram-Signature";
/// What a message's headers and subject take, at most, of the server's `max_payload`,
/// which counts them with the payload: the expected sequence, the node's key and the
/// signature in hex, their names, and the subject.
const HEADERS_BYTES_MAX: usize = 1024;

/// The stream of `world` in fleet `fleet`, and its one subject.
pub(crate) fn stream_of(fleet: &str, world: &str) -> (String, String) {
    let hash = blake3::hash(world.as_bytes()).to_hex();
    let hash = &hash.as_str()[..32];
    (
        format!("{fleet}-world-{hash}"),
        format!("engram.{fleet}.world.{hash}"),
    )
}

/// The bytes a node signs for a message of `world`.
fn signed(world: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNED_CONTEXT.len() + world.len() + 1 + message.len());
    bytes.extend_from_slice(SIGNED_CONTEXT);
    bytes.extend_from_slice(world.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

/// Makes sure `world`'s stream exists.
pub(crate) async fn open_stream(
    jetstream: &jetstream::Context,
    fleet: &str,
    world: &str,
) -> Result<stream::Stream, String> {
    let (name, subject) = stream_of(fleet, world);
    jetstream
        .get_or_create_stream(stream::Config {
            name,
            description: Some(format!("engram: the entries of world {world:?}")),
            subjects: vec![subject],
            storage: stream::StorageType::File,
            num_replicas: 1,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        })
        .await
        .map_err(|error| format!("cannot open the stream of world {world:?}: {error}"))
}

/// One message for the publishing task.
struct Job {
    world: String,
    after: u64,
    message: Vec<u8>,
    signature: [u8; 64],
    reply: std::sync::mpsc::SyncSender<Result<u64, Unpublished>>,
}

/// Why a message is not known to be in its stream.
enum Unpublished {
    /// The stream did not take it: nothing of it was written.
    Refused(String),
    /// It may be in the stream (sent, and no answer came): every node stores it from
    /// there if it is.
    Unknown(String),
}

/// The writer's way to the worlds' streams: it hands each message to a task on the RPC
/// thread (where the NATS connection lives) and waits for the stream's answer.
pub(crate) struct Publisher {
    jobs: mpsc::UnboundedSender<Job>,
    node_key: ed25519_dalek::SigningKey,
    timeout: Duration,
    /// The NATS server's `max_payload` less what the headers take.
    message_bytes_max: usize,
}

impl engram_store::replica::Replicator for Publisher {
    fn publish(&self, world: &str, after: u64, message: &[u8]) -> Result<u64, StoreError> {
        let failed = |reason: String| StoreError::Replication {
            world: world.to_owned(),
            reason,
        };
        let signature = ed25519_dalek::Signer::sign(&self.node_key, &signed(world, message));
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Job {
                world: world.to_owned(),
                after,
                message: message.to_vec(),
                signature: signature.to_bytes(),
                reply,
            })
            .map_err(|_| failed("the node is shutting down".into()))?;
        let unknown = |reason: String| StoreError::MayHaveBeenWritten {
            reason: format!("world {world:?}'s fleet stream: {reason}"),
        };
        match answer.recv_timeout(self.timeout) {
            Ok(Ok(position)) => Ok(position),
            Ok(Err(Unpublished::Refused(reason))) => Err(failed(reason)),
            Ok(Err(Unpublished::Unknown(reason))) => Err(unknown(reason)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(unknown(format!(
                "the stream did not answer within {} s",
                self.timeout.as_secs()
            ))),
            // The publishing task went before the answer: the node is stopping.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(unknown(
                "the node stopped before the stream's answer came".into(),
            )),
        }
    }

    fn message_bytes_max(&self) -> usize {
        self.message_bytes_max
    }
}

/// Starts the publishing task; the writer's [`Publisher`].
pub(crate) fn publisher(link: &Rc<Link>, node_key: ed25519_dalek::SigningKey) -> Publisher {
    let message_bytes_max =
        (link.client.server_info().max_payload).saturating_sub(HEADERS_BYTES_MAX);
    let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
    let link = link.clone();
    tokio::task::spawn_local(async move {
        while let Some(job) = queue.recv().await {
            let answer = link.send_message(&job).await;
            let _ = job.reply.send(answer);
        }
    });
    Publisher {
        jobs,
        node_key,
        timeout: PUBLISH_TIMEOUT,
        message_bytes_max,
    }
}

/// A world's lease, as the lease bucket holds it.
#[derive(Serialize, Deserialize)]
struct Lease {
    #[serde(with = "hex::serde")]
    node: [u8; 32],
    address: String,
}

/// A node's beat, as the lease bucket holds it under `node.<key in hex>`: the node runs
/// (it is rewritten every third of the lease, and expires with it).
#[derive(Serialize, Deserialize)]
struct Beat {
    /// How long ago the node had confirmed the fleet's policy; `None`: never.
    confirmed_ago_ms: Option<u64>,
}

/// A world this node owns: the revision of its lease entry, when it was last renewed,
/// and when a write last asked for it.
#[derive(Clone, Copy)]
pub(crate) struct Owned {
    revision: u64,
    renewed: Instant,
    used: Instant,
}

impl Link {
    async fn send_message(&self, job: &Job) -> Result<u64, Unpublished> {
        if !self.owns(&job.world) {
            return Err(Unpublished::Refused(format!(
                "this node no longer holds the lease of world {:?}",
                job.world
            )));
        }
        // The claim that made this node the owner opened the world's stream.
        let (_, subject) = stream_of(&self.name, &job.world);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            job.after.to_string().as_str(),
        );
        headers.insert(NODE_HEADER, hex::encode(self.node_key).as_str());
        headers.insert(SIGNATURE_HEADER, hex::encode(job.signature).as_str());
        let acknowledgement = self
            .jetstream
            .publish_with_headers(subject, headers, job.message.clone().into())
            .await
            .map_err(|error| Unpublished::Unknown(error.to_string()))?;
        match acknowledgement.await {
            Ok(ack) => Ok(ack.sequence),
            Err(error)
                if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                // Another node wrote the world, or this node has not stored all it
                // published: it catches up from the stream before writing again.
                self.owned.borrow_mut().remove(&job.world);
                Err(Unpublished::Refused(format!(
                    "world {:?}'s stream moved past what this node holds; try again",
                    job.world
                )))
            }
            // Sent, and no answer, or one that does not say the stream refused it.
            Err(error) => {
                // The stream may hold the message: this node catches up from it before
                // writing the world again.
                self.owned.borrow_mut().remove(&job.world);
                Err(Unpublished::Unknown(error.to_string()))
            }
        }
    }

    /// Whether this node holds `world`'s lease now.
    pub(crate) fn owns(&self, world: &str) -> bool {
        (self.owned.borrow().get(world)).is_some_and(|owned| owned.renewed.elapsed() < self.lease)
    }

    fn lease_key(world: &str) -> String {
        let hash = blake3::hash(world.as_bytes()).to_hex();
        format!("world.{}", &hash.as_str()[..32])
    }

    fn beat_key(node: &[u8; 32]) -> String {
        format!("node.{}", hex::encode(node))
    }

    /// Keeps [`Link::heard`] current with the lease bucket, for as long as the node
    /// runs: each world's lease, each node's beat.
    pub(crate) async fn hear_leases(self: Rc<Self>) {
        loop {
            match self.leases.watch_with_history(">").await {
                Ok(mut entries) => {
                    while let Some(Ok(entry)) = entries.next().await {
                        let mut heard = self.heard.borrow_mut();
                        match entry.operation {
                            kv::Operation::Put => {
                                heard.insert(entry.key, (entry.value, Instant::now()));
                            }
                            _ => {
                                heard.remove(&entry.key);
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot watch the lease bucket"),
            }
            tokio::time::sleep(self.lease / 4).await;
        }
    }

    /// What the lease bucket said of `key` within the lease, when heard.
    fn heard_of(&self, key: &str) -> Option<(bytes::Bytes, Duration)> {
        let heard = self.heard.borrow();
        let (value, at) = heard.get(key)?;
        (at.elapsed() < self.lease).then(|| (value.clone(), at.elapsed()))
    }

    /// What this node knows of its fleet now (`Membrane.fleet`), of the worlds `shown`
    /// lets through: one read of the store for all of them.
    pub(crate) fn report(&self, shown: &dyn Fn(&str) -> bool) -> FleetReport {
        let confirmed_ago = |age: Option<f64>| {
            age.filter(|age| age.is_finite())
                .map(Duration::from_secs_f64)
        };
        let mut nodes: Vec<NodeReport> = (self.nodes.borrow().iter())
            .map(|(key, record)| {
                let beat = self
                    .heard_of(&Link::beat_key(key))
                    .and_then(|(value, ago)| {
                        let beat: Beat = serde_json::from_slice(&value).ok()?;
                        Some((ago, beat.confirmed_ago_ms.map(Duration::from_millis)))
                    });
                NodeReport {
                    key: *key,
                    address: record.address.clone(),
                    slot: record.slot,
                    seen_ago: beat.as_ref().map(|(ago, _)| *ago),
                    confirmed_ago: beat
                        .and_then(|(ago, confirmed)| confirmed.map(|confirmed| confirmed + ago)),
                }
            })
            .collect();
        nodes.sort_by_key(|node| node.slot);
        let view = self.store.read().ok();
        let held = |world: &str| {
            (view.as_ref())
                .and_then(|view| view.stream_position(world).ok())
                .unwrap_or(0)
        };
        let mut worlds: Vec<WorldReport> = (self.followed.borrow().iter())
            .filter(|world| shown(world))
            .map(|world| {
                let owner = self
                    .heard_of(&Link::lease_key(world))
                    .and_then(|(value, _)| serde_json::from_slice::<Lease>(&value).ok())
                    .map(|lease| (lease.node, lease.address));
                let held_position = held(world);
                let end = self.stream_ends.borrow().get(world).copied().unwrap_or(0);
                WorldReport {
                    world: world.clone(),
                    owner,
                    stream_position: end.max(held_position),
                    held_position,
                }
            })
            .collect();
        worlds.sort_by(|a, b| a.world.cmp(&b.world));
        FleetReport {
            name: self.name.clone(),
            address: self.address.clone(),
            lease: self.lease,
            confirmed_ago: confirmed_ago(self.health.age()),
            nodes,
            worlds,
        }
    }

    /// Says in the lease bucket that this node runs, and how recently it confirmed the
    /// fleet's policy.
    async fn beat(&self) {
        let beat = Beat {
            confirmed_ago_ms: (self.health.age())
                .filter(|age| age.is_finite())
                .map(|age| (age * 1000.0) as u64),
        };
        let value = serde_json::to_vec(&beat).expect("a beat serialises");
        if let Err(error) = (self.leases)
            .put(Link::beat_key(&self.node_key), value.into())
            .await
        {
            tracing::debug!(%error, "cannot say in the lease bucket that this node runs");
        }
    }

    /// Makes this node `world`'s owner if no node is, once it holds every message of
    /// the world's stream; refuses when another node owns it, naming its address. One
    /// call at a time takes a world; concurrent calls for it wait for that one.
    pub(crate) async fn claim(self: Rc<Self>, world: String) -> Result<(), String> {
        if self.owns(&world) {
            if let Some(owned) = self.owned.borrow_mut().get_mut(&world) {
                owned.used = Instant::now();
            }
            return Ok(());
        }
        if let Some((refusal, read)) = self.refused.borrow().get(&world)
            && read.elapsed() < self.lease / 10
        {
            return Err(refusal.clone());
        }
        if self.claiming.borrow().contains(&world) {
            let deadline = Instant::now() + self.lease;
            while self.claiming.borrow().contains(&world) && Instant::now() < deadline {
                let _ = tokio::time::timeout(self.lease / 10, self.claimed.notified()).await;
            }
            if self.owns(&world) {
                return Ok(());
            }
            // The claim it waited for found another node writing the world: say where.
            if let Some((refusal, read)) = self.refused.borrow().get(&world)
                && read.elapsed() < self.lease
            {
                return Err(refusal.clone());
            }
            return Err(format!(
                "this node could not take world {world:?} (NATS did not answer in time, \
                 or another node took it first); try again"
            ));
        }
        // Taken out again however the claim ends, its caller cancelled included.
        struct Claiming<'a>(&'a Link, &'a str);
        impl Drop for Claiming<'_> {
            fn drop(&mut self) {
                self.0.claiming.borrow_mut().remove(self.1);
                self.0.claimed.notify_waiters();
            }
        }
        self.claiming.borrow_mut().insert(world.clone());
        let _claiming = Claiming(&self, &world);
        self.take(&world).await
    }

    async fn take(&self, world: &str) -> Result<(), String> {
        let world = world.to_owned();
        let key = Link::lease_key(&world);
        let lease = serde_json::to_vec(&Lease {
            node: self.node_key,
            address: self.address.clone(),
        })
        .expect("a lease serialises");
        let held = self
            .leases
            .entry(key.as_str())
            .await
            .map_err(|error| format!("cannot read the lease of world {world:?}: {error}"))?;
        let revision = match held {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let holder: Lease = serde_json::from_slice(&entry.value)
                    .map_err(|error| format!("the lease of world {world:?}: {error}"))?;
                if holder.node != self.node_key {
                    let refusal = format!(
                        "world {world:?} is written on another node of the fleet, at {}; \
                         send its writes there (another node takes it over if that one \
                         stays away for the fleet's lease)",
                        holder.address
                    );
                    let read = Instant::now();
                    (self.refused.borrow_mut()).insert(world.clone(), (refusal.clone(), read));
                    return Err(refusal);
                }
                self.leases
                    .update(key.as_str(), lease.into(), entry.revision)
                    .await
                    .map_err(|error| error.to_string())
            }
            Some(entry) => self
                .leases
                .update(key.as_str(), lease.into(), entry.revision)
                .await
                .map_err(|error| error.to_string()),
            None => self
                .leases
                .create(key.as_str(), lease.into())
                .await
                .map_err(|error| error.to_string()),
        }
        .map_err(|error| format!("another node took world {world:?} first ({error}); try again"))?;
        // Everything the stream holds is here before the first write.
        let stream = open_stream(&self.jetstream, &self.name, &world).await?;
        let last = stream.cached_info().state.last_sequence;
        let started = Instant::now();
        loop {
            let held = (self.store.read())
                .and_then(|view| view.stream_position(&world))
                .map_err(|error| error.to_string())?;
            if held >= last {
                break;
            }
            if started.elapsed() > self.lease {
                return Err(format!(
                    "this node has not caught up world {world:?} (at {held} of {last}); try again"
                ));
            }
            let mut changed = self.replicated.subscribe();
            let _ = tokio::time::timeout(self.lease / 10, changed.changed()).await;
        }
        let now = Instant::now();
        self.owned.borrow_mut().insert(
            world.clone(),
            Owned {
                revision,
                renewed: now,
                used: now,
            },
        );
        tracing::info!(world, "this node owns the world now");
        Ok(())
    }

    /// Renews the leases of the worlds this node owns every third of the lease; a
    /// lease it cannot renew is given up.
    pub(crate) async fn renew(self: Rc<Self>) {
        loop {
            self.beat().await;
            self.health.set_owned(self.owned.borrow().len());
            tokio::time::sleep(self.lease / 3).await;
            let owned: Vec<(String, Owned)> = (self.owned.borrow().iter())
                .map(|(world, owned)| (world.clone(), *owned))
                .collect();
            let lease = serde_json::to_vec(&Lease {
                node: self.node_key,
                address: self.address.clone(),
            })
            .expect("a lease serialises");
            for (world, owned) in owned {
                if !self.idle_release.is_zero() && owned.used.elapsed() >= self.idle_release {
                    self.release(&world, owned).await;
                    continue;
                }
                let asked = Instant::now();
                let renewed = self
                    .leases
                    .update(
                        Link::lease_key(&world),
                        lease.clone().into(),
                        owned.revision,
                    )
                    .await;
                let mut all = self.owned.borrow_mut();
                match renewed {
                    Ok(revision) => {
                        // A write may have asked for it meanwhile.
                        let used = all.get(&world).map_or(owned.used, |now| now.used);
                        all.insert(
                            world,
                            Owned {
                                revision,
                                renewed: asked,
                                used,
                            },
                        );
                    }
                    Err(error) => {
                        tracing::warn!(world, %error, "lost the world's lease");
                        all.remove(&world);
                    }
                }
            }
        }
    }

    /// Gives up `world`, which no write asked for during the idle release: it is no
    /// longer this node's, and its lease entry is deleted (if still the one this node
    /// wrote) so that the next node asked to write it takes it at once.
    async fn release(&self, world: &str, owned: Owned) {
        {
            let mut all = self.owned.borrow_mut();
            // Asked for since the loop looked: keep it.
            if all.get(world).is_some_and(|now| now.used != owned.used) {
                return;
            }
            all.remove(world);
        }
        let deleted = (self.leases)
            .delete_expect_revision(Link::lease_key(world), Some(owned.revision))
            .await;
        match deleted {
            Ok(()) => tracing::info!(world, "gave up the world's lease: no write asked for it"),
            // Expiry frees it instead, within the lease.
            Err(error) => {
                tracing::debug!(world, %error, "the idle world's lease stays until it expires")
            }
        }
    }

    /// Follows every world this node knows and does not follow yet.
    pub(crate) fn follow_worlds(self: &Rc<Self>, node: &Rc<Node>) {
        let Ok(worlds) = node.store().read().and_then(|view| view.worlds()) else {
            return;
        };
        for world in worlds {
            if self.followed.borrow_mut().insert(world.name.clone()) {
                tokio::task::spawn_local(follow(self.clone(), node.clone(), world.name));
            }
        }
    }
}

/// Stores `world`'s stream's messages from the first this node does not hold, for as
/// long as the node runs.
async fn follow(link: Rc<Link>, node: Rc<Node>, world: String) {
    let mut pause = Duration::from_millis(50);
    let mut progress = Progress::default();
    loop {
        if let Err(error) = follow_once(&link, &node, &world, &mut progress).await {
            tracing::warn!(world, %error, "following the world's stream; again shortly");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(link.lease / 2);
        }
    }
}

async fn follow_once(
    link: &Rc<Link>,
    node: &Rc<Node>,
    world: &str,
    progress: &mut Progress,
) -> Result<(), String> {
    let held = (node.store().read())
        .and_then(|view| view.stream_position(world))
        .map_err(|error| error.to_string())?;
    let stream = open_stream(&link.jetstream, &link.name, world).await?;
    let end = stream.cached_info().state.last_sequence.max(held);
    link.heard_stream(world, end, held);
    progress.start(link, world, held, end);
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: link.client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: held + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|error| error.to_string())?;
    // The messages already here are stored together: each one's write is queued, in
    // stream order, before the first is awaited, so the writer takes them in one group
    // commit (catching up costs a sync per group, not per message). While the writer
    // stores one chunk, the next is read and its signatures checked: one chunk at most
    // is in flight behind the one being read.
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| error.to_string())?
        .ready_chunks(CATCH_UP_GROUP_MAX);
    let mut in_flight: Option<tokio::task::JoinHandle<Stored>> = None;
    loop {
        // The chunk in flight is settled as soon as it is stored, not only when the next
        // arrives: its progress (lag, readiness) is said at once.
        let ready = match &mut in_flight {
            Some(chunk) => tokio::select! {
                ready = messages.next() => ready,
                outcome = chunk => {
                    in_flight = None;
                    settle(link, world, progress, outcome)?;
                    continue;
                }
            },
            None => messages.next().await,
        };
        let Some(ready) = ready else { break };
        let mut writes = Vec::with_capacity(ready.len());
        let mut last = None;
        for message in ready {
            let message = message.map_err(|error| error.to_string())?;
            let info = message.info().map_err(|error| error.to_string())?;
            let position = info.stream_sequence;
            last = Some((position, position + info.pending));
            // A message no node of the fleet signed is passed with nothing stored.
            let signed = link.signed_by_fleet(world, &message);
            let payload = match &signed {
                Ok(()) => message.payload.to_vec(),
                Err(_) => Vec::new(),
            };
            let (node, world) = (node.clone(), world.to_owned());
            writes.push(async move {
                let stored = node.replicate(world, position, payload).await;
                (position, signed.err(), stored)
            });
        }
        // Spawned, it queues its writes behind the chunk in flight, in stream order.
        let chunk = tokio::task::spawn_local(stored(link.clone(), world.to_owned(), writes, last));
        if let Some(previous) = in_flight.replace(chunk) {
            settle(link, world, progress, previous.await)?;
        }
    }
    if let Some(previous) = in_flight {
        settle(link, world, progress, previous.await)?;
    }
    Err("the stream's consumer ended".into())
}

/// A stored chunk's last position and the stream's end then, or why a message of it was
/// not stored.
type Stored = Result<Option<(u64, u64)>, String>;

/// Stores one chunk of a world's stream: each message's write, awaited in order.
async fn stored(
    link: Rc<Link>,
    world: String,
    writes: Vec<
        impl std::future::Future<Output = (u64, Option<String>, Result<WriteOutcome, StoreError>)>,
    >,
    last: Option<(u64, u64)>,
) -> Stored {
    for (position, unsigned, stored) in futures::future::join_all(writes).await {
        match stored {
            Ok(WriteOutcome::Replicated { refused, .. }) => {
                if let Some(reason) = unsigned.or(refused) {
                    report_refusal(&world, position, &reason);
                }
                link.replicated.send_modify(|count| *count += 1);
            }
            Ok(other) => unreachable!("replicate answered {other:?}"),
            // The world's record has not reached this node yet, the writer failed, or an
            // earlier message was not stored (a later one is then refused as after a
            // gap): the follower reads again from the first not stored.
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(last)
}

/// Takes a stored chunk's outcome: says how far the follower is, or fails.
fn settle(
    link: &Link,
    world: &str,
    progress: &mut Progress,
    outcome: Result<Stored, tokio::task::JoinError>,
) -> Result<(), String> {
    let last = outcome.map_err(|error| error.to_string())??;
    if let Some((held, end)) = last {
        link.heard_stream(world, end, held);
        progress.note(link, world, held, end);
    }
    Ok(())
}

/// How far a follower is in catching up a world's stream, and when it last said so.
#[derive(Default)]
struct Progress {
    /// Where the stream stood when this node began following it; `None` before it did,
    /// and once caught up to there.
    target: Option<u64>,
    started: bool,
    said: Option<Instant>,
}

impl Progress {
    /// How often a follower catching up says how far it is.
    const EVERY: Duration = Duration::from_secs(2);

    /// The follower (again) reads the stream, holding `held` of `end` messages.
    fn start(&mut self, link: &Link, world: &str, held: u64, end: u64) {
        if !self.started {
            self.started = true;
            if held < end {
                self.target = Some(end);
                link.health.set_catching_up(world, true);
            }
        }
        self.note(link, world, held, end);
    }

    /// The follower holds `held` of `end` messages.
    fn note(&mut self, link: &Link, world: &str, held: u64, end: u64) {
        if self.target.is_some_and(|target| held >= target) {
            self.target = None;
            link.health.set_catching_up(world, false);
        }
        if held < end {
            if self
                .said
                .is_none_or(|said| said.elapsed() >= Progress::EVERY)
            {
                tracing::info!(world, held, of = end, "catching up the world's stream");
                self.said = Some(Instant::now());
            }
        } else if self.said.take().is_some() {
            tracing::info!(world, held, "caught up the world's stream");
        }
    }
}

impl Link {
    /// `world`'s stream holds `end` messages, of which this node holds `held`.
    fn heard_stream(&self, world: &str, end: u64, held: u64) {
        self.stream_ends.borrow_mut().insert(world.to_owned(), end);
        self.health.set_lag(world, end.saturating_sub(held));
    }
}

fn report_refusal(world: &str, position: u64, reason: &str) {
    tracing::error!(
        world,
        position,
        reason,
        "refused a message of the world's stream: not stored"
    );
}

impl Link {
    /// Whether `message` is signed by a node of the fleet.
    fn signed_by_fleet(&self, world: &str, message: &jetstream::Message) -> Result<(), String> {
        let headers = message
            .headers
            .as_ref()
            .ok_or("the message has no headers")?;
        let field = |name: &str| {
            headers
                .get(name)
                .and_then(|value| hex::decode(value.as_str()).ok())
                .ok_or_else(|| format!("the message has no valid {name}"))
        };
        let key: [u8; 32] = field(NODE_HEADER)?
            .try_into()
            .map_err(|_| "the node key is not 32 bytes")?;
        if !self.nodes.borrow().contains_key(&key) {
            return Err(format!(
                "node {} is not a node of the fleet",
                hex::encode(key)
            ));
        }
        let signature: [u8; 64] = field(SIGNATURE_HEADER)?
            .try_into()
            .map_err(|_| "the signature is not 64 bytes")?;
        // A key decoded once per node, not once per message (decoding is a good part of
        // a check's cost).
        let key = match self.verifying_keys.borrow_mut().entry(key) {
            std::collections::hash_map::Entry::Occupied(known) => *known.get(),
            std::collections::hash_map::Entry::Vacant(new) => {
                *new.insert(VerifyingKey::from_bytes(&key).map_err(|error| error.to_string())?)
            }
        };
        key.verify(
            &signed(world, &message.payload),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| "the signature does not verify".to_owned())
    }
}

/// The worlds this node owns, by name.
pub(crate) type OwnedWorlds = HashMap<String, Owned>;
