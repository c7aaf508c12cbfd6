//! engram fleets: several `engramd` nodes that follow one policy — the epoch, the
//! principals and their grants, the worlds' records — kept in a NATS JetStream
//! key-value bucket (`engramd --nats URL`).
//!
//! Every change is published with the bucket's last revision the publishing node has
//! applied (`Nats-Expected-Last-Sequence`): JetStream takes it only if nothing was
//! published since, so changes are totally ordered and each was checked against every
//! change before it; two concurrent epoch advances cannot both win. Every node watches
//! the bucket and applies each change durably through its writer, in the bucket's order
//! (`Node::apply_policy`). A heartbeat asks JetStream for the bucket's last revision every
//! quarter of the lease; the node is *confirmed* at the moment it asked once it has
//! applied everything up to that revision, and serves nothing (`unavailable`) when its
//! last confirmation is older than the lease (`Node::fleet_gate`). So a node never serves
//! authority the fleet revoked more than a lease ago.
//!
//! Everything here runs on the node's RPC thread (capabilities are `!Send`); NATS I/O is
//! async-nats' own.

pub mod records;
mod worlds;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use async_nats::{HeaderMap, header};
use engram_capabilities::Node;
use engram_capabilities::fleet::{
    Fleet, FleetHealth, FleetReport, Local, NodeReport, Refusal, WorldReport,
};
use engram_store::PolicyChange;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Notify, watch};

use records::{
    Decoded, EPOCH_KEY, NodeRecord, Record, decode, encode, encode_node, principal_key, world_key,
};

/// The lease a node holds its authority for, by default.
pub const LEASE_DEFAULT: Duration = Duration::from_secs(5);
/// The default of [`Config::idle_release`].
pub const IDLE_RELEASE_DEFAULT: Duration = Duration::from_secs(60);
/// How long joining may take to apply the fleet's policy.
const JOIN_CATCH_UP: Duration = Duration::from_secs(60);
/// Changes applied in one write, at most.
const APPLY_BATCH_MAX: usize = 256;

/// How a node reaches its fleet.
#[derive(Clone, Debug)]
pub struct Config {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The fleet's name: its bucket is `<name>-policy`.
    pub name: String,
    /// A node that has not confirmed the fleet's policy for this long serves nothing.
    pub lease: Duration,
    /// A world this node was not asked to write for this long is given up, so that any
    /// node may take it; zero keeps every world it took for as long as it runs.
    pub idle_release: Duration,
    /// How the node authenticates to NATS.
    pub auth: Auth,
    /// A CA certificate file (PEM): the node then speaks TLS to NATS and trusts servers
    /// this CA signed.
    pub ca: Option<std::path::PathBuf>,
    /// Where clients reach this node, as the fleet tells them; `None`: its TCP
    /// listener's address.
    pub address: Option<String>,
}

/// How a node authenticates to NATS. Secrets are read from files (never taken from a
/// command line, where any local user reads them) and never shown: not in logs, errors
/// or `Debug`.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// A user and the password the file holds.
    UserPassword { user: String, password: String },
    /// The token the file holds.
    Token(String),
    /// The user nkey seed the file holds (`SU...`).
    NKey(String),
    /// A NATS credentials file (a user JWT and its nkey seed), read at each connect.
    Credentials(std::path::PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => write!(formatter, "none"),
            Auth::UserPassword { user, .. } => write!(formatter, "user {user:?}, password hidden"),
            Auth::Token(_) => write!(formatter, "token hidden"),
            Auth::NKey(_) => write!(formatter, "nkey seed hidden"),
            Auth::Credentials(path) => write!(formatter, "credentials file {}", path.display()),
        }
    }
}

/// `url` as it may be shown: any user information (a password, a token) replaced.
pub fn shown_url(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://<hidden>@{}", &one[..scheme], &one[at + 1..])
            }
            (None, Some(at)) => format!("<hidden>@{}", &one[at + 1..]),
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// This node's link to its fleet.
pub struct Link {
    client: async_nats::Client,
    /// The fleet's name.
    name: String,
    node_key: [u8; 32],
    /// Where clients reach this node (its TCP address), as other nodes tell them.
    address: String,
    store: engram_store::Store,
    /// The fleet's nodes, by key, as its bucket holds them.
    nodes: RefCell<HashMap<[u8; 32], NodeRecord>>,
    /// The nodes' keys, decoded, as their messages' signatures are checked.
    verifying_keys: RefCell<HashMap<[u8; 32], ed25519_dalek::VerifyingKey>>,
    /// Which node writes each world.
    leases: kv::Store,
    owned: RefCell<worlds::OwnedWorlds>,
    /// The worlds another node was found writing, with the refusal and when it was
    /// read: a write here is refused from it for a tenth of the lease, so a holder's
    /// flood of refused writes costs NATS a lease read per world that often, not each.
    refused: RefCell<HashMap<String, (String, Instant)>>,
    /// The worlds a call of this node is taking, and the signal that one was taken.
    claiming: RefCell<HashSet<String>>,
    claimed: Notify,
    /// The worlds whose streams this node follows.
    followed: RefCell<HashSet<String>>,
    /// Counts the world stream messages stored, to wake those waiting on them.
    replicated: watch::Sender<u64>,
    jetstream: jetstream::Context,
    bucket: kv::Store,
    stream: Rc<stream::Stream>,
    subject_prefix: String,
    lease: Duration,
    idle_release: Duration,
    /// The last revision every change up to which this node applied.
    applied: watch::Sender<u64>,
    /// When this node last knew it had applied everything the fleet held, and what it
    /// says of itself to the metrics.
    health: Arc<FleetHealth>,
    /// The lease bucket's entries (worlds' leases, nodes' beats) as this node last heard
    /// them, by key, with when it heard them.
    heard: RefCell<HashMap<String, (bytes::Bytes, Instant)>>,
    /// The messages each world's stream holds, as this node last heard.
    stream_ends: RefCell<HashMap<String, u64>>,
    /// A revision the fleet held when asked at an instant, which confirms the node at
    /// that instant once applied.
    pending: Cell<Option<(u64, Instant)>>,
    /// Since when the heartbeat has seen the node behind, to restart a stalled watch.
    behind_since: Cell<Option<Instant>>,
    restart_watch: Notify,
}

/// Joins the fleet `config` names: connects, seeds the fleet with this node's policy if
/// the fleet has none yet, applies the fleet's policy, and from then on keeps it applied
/// and confirmed. Refuses a node whose data directory has worlds the fleet does not
/// know, or an epoch ahead of the fleet's. `health` is where it says, for any thread to
/// read, when it last confirmed the fleet's policy and how its worlds stand.
pub async fn join(
    node: Rc<Node>,
    config: &Config,
    address: &str,
    health: Arc<FleetHealth>,
) -> Result<Rc<Link>, String> {
    health.joining(config.lease);
    let nats = format!("NATS at {}", shown_url(&config.url));
    let mut options = match &config.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        Auth::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
        Auth::Credentials(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|error| {
                format!(
                    "cannot read the NATS credentials file {}: {error}",
                    path.display()
                )
            })?,
    };
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = options
        .name(format!("engramd {}", hex::encode(node.node_key())))
        .connection_timeout(config.lease)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1_000))
        })
        .connect(config.url.as_str())
        .await
        .map_err(|error| format!("cannot reach {nats}: {error}"))?;
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(config.lease / 2)
        .build(client);
    let name = format!("{}-policy", config.name);
    let (bucket, stream) = open_bucket(
        &jetstream,
        &name,
        "engram: the fleet's epoch, principals and worlds",
        Duration::ZERO,
    )
    .await
    .map_err(|error| format!("cannot open the fleet's bucket {name:?} on {nats}: {error}"))?;
    let leases_name = format!("{}-leases", config.name);
    let (leases, _) = open_bucket(
        &jetstream,
        &leases_name,
        "engram: which node writes each world",
        config.lease,
    )
    .await
    .map_err(|error| format!("cannot open the lease bucket {leases_name:?} on {nats}: {error}"))?;
    let link = Rc::new(Link {
        client: jetstream.client(),
        name: config.name.clone(),
        node_key: node.node_key(),
        address: address.to_owned(),
        store: node.store().clone(),
        nodes: RefCell::new(HashMap::new()),
        verifying_keys: RefCell::new(HashMap::new()),
        leases,
        owned: RefCell::new(HashMap::new()),
        refused: RefCell::new(HashMap::new()),
        claiming: RefCell::new(HashSet::new()),
        claimed: Notify::new(),
        followed: RefCell::new(HashSet::new()),
        replicated: watch::Sender::new(0),
        jetstream,
        bucket,
        stream: Rc::new(stream),
        subject_prefix: format!("$KV.{name}."),
        lease: config.lease,
        idle_release: config.idle_release,
        applied: watch::Sender::new(0),
        health,
        heard: RefCell::new(HashMap::new()),
        stream_ends: RefCell::new(HashMap::new()),
        pending: Cell::new(None),
        behind_since: Cell::new(None),
        restart_watch: Notify::new(),
    });
    refuse_unpublished(&node)?;
    let seeded = link.seed(&node).await?;
    tokio::task::spawn_local(link.clone().watch(node.clone()));
    link.caught_up(JOIN_CATCH_UP).await?;
    if !seeded {
        link.adopt(&node).await?;
    }
    let slot = link.register().await?;
    node.set_commit_slot(slot)
        .await
        .map_err(|error| format!("cannot set this node's commit slot: {error}"))?;
    node.store()
        .replicate_to(Arc::new(worlds::publisher(&link, node.signing_key())));
    tokio::task::spawn_local(link.clone().heartbeat());
    tokio::task::spawn_local(link.clone().renew());
    tokio::task::spawn_local(link.clone().hear_leases());
    link.follow_worlds(&node);
    node.join(link.clone());
    tracing::info!(
        fleet = %config.name,
        revision = *link.applied.borrow(),
        seeded,
        "joined the fleet"
    );
    Ok(link)
}

/// Refuses a data directory holding atoms no world stream has (written while the node
/// ran alone: its position in the world's stream is 0, yet the world holds atoms).
/// Seeding a fleet with them, or joining one, would fork the worlds: other nodes could
/// never hold those atoms, and the node that next took a world would write its chains
/// again from where the stream stands.
fn refuse_unpublished(node: &Node) -> Result<(), String> {
    let view = node.store().read().map_err(|error| error.to_string())?;
    let mut unpublished = Vec::new();
    for world in view.worlds().map_err(|error| error.to_string())? {
        let position = (view.stream_position(&world.name)).map_err(|error| error.to_string())?;
        if world.atoms > 0 && position == 0 {
            unpublished.push(format!("{:?} ({} atoms)", world.name, world.atoms));
        }
    }
    if unpublished.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this data directory holds atoms no fleet stream has, written while the node ran \
         alone: {}. A fleet cannot take them (other nodes could never hold them, and the \
         next node to write a world would write its chains again). Start the fleet's \
         nodes with new data directories and bring each world in with `engram export` \
         from this one (run alone) and `engram import` into the fleet",
        unpublished.join(", ")
    ))
}

/// A key-value bucket (one value per key; entries expire after `max_age` unless it is
/// zero), and its stream. Made as async-nats' `create_key_value` makes one, which itself
/// reads account fields nats-server 2.9 does not send.
async fn open_bucket(
    jetstream: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
) -> Result<(kv::Store, stream::Stream), String> {
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|error| error.to_string())?;
    let bucket = jetstream
        .get_key_value(name)
        .await
        .map_err(|error| error.to_string())?;
    Ok((bucket, stream))
}

impl Link {
    /// Publishes this node's policy as the fleet's first, if the fleet has none yet;
    /// whether it did.
    async fn seed(&self, node: &Node) -> Result<bool, String> {
        let view = node.store().read().map_err(|error| error.to_string())?;
        let epoch = encode(&PolicyChange::Epoch(
            view.epoch().map_err(|e| e.to_string())?,
        ));
        let mut after = match self.bucket.create(EPOCH_KEY, epoch.payload.into()).await {
            Ok(revision) => revision,
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(false),
            Err(error) => return Err(format!("cannot seed the fleet's epoch: {error}")),
        };
        let worlds = view.worlds().map_err(|error| error.to_string())?;
        let principals = view.principals().map_err(|error| error.to_string())?;
        let changes = (worlds.into_iter().map(PolicyChange::World))
            .chain(principals.into_iter().map(PolicyChange::Principal));
        for change in changes {
            after = self
                .send(&encode(&change), after)
                .await
                .map_err(|refusal| {
                    format!(
                        "the fleet changed while this node seeded it ({refusal:?}); start again"
                    )
                })?;
        }
        Ok(true)
    }

    /// Takes the fleet's policy in place of this node's own: principals the fleet does
    /// not know are removed here; worlds it does not know, or an epoch ahead of its
    /// own, refuse the join.
    async fn adopt(&self, node: &Rc<Node>) -> Result<(), String> {
        let keys: HashSet<String> = self
            .bucket
            .keys()
            .await
            .map_err(|error| error.to_string())?
            .try_collect()
            .await
            .map_err(|error| error.to_string())?;
        let view = node.store().read().map_err(|error| error.to_string())?;
        let strangers: Vec<String> = (view.worlds().map_err(|error| error.to_string())?)
            .into_iter()
            .filter(|world| !keys.contains(&world_key(&world.name)))
            .map(|world| world.name)
            .collect();
        if !strangers.is_empty() {
            return Err(format!(
                "this data directory has worlds the fleet does not know ({}); a node joins \
                 a fleet with a new data directory, or with the one it had in this fleet",
                strangers.join(", ")
            ));
        }
        let fleet_epoch = match self.bucket.entry(EPOCH_KEY).await {
            Ok(Some(entry)) => match decode(&entry.key, entry.operation, &entry.value)? {
                Decoded::Policy(PolicyChange::Epoch(epoch)) => epoch.number,
                _ => unreachable!("the epoch key holds an epoch"),
            },
            Ok(None) => return Err("the fleet's bucket has lost its epoch".into()),
            Err(error) => return Err(format!("cannot read the fleet's epoch: {error}")),
        };
        let epoch = view.epoch().map_err(|error| error.to_string())?.number;
        if epoch > fleet_epoch {
            return Err(format!(
                "this node's epoch {epoch} is ahead of the fleet's {fleet_epoch}: its data \
                 directory is not this fleet's"
            ));
        }
        let removed: Vec<PolicyChange> = (view.principals().map_err(|e| e.to_string())?)
            .into_iter()
            .filter(|principal| !keys.contains(&principal_key(&principal.name)))
            .map(PolicyChange::PrincipalRemoved)
            .collect();
        drop(view);
        if !removed.is_empty() {
            tracing::info!(
                principals = removed.len(),
                "this node's own principals are not the fleet's: removed here"
            );
            node.apply_policy(removed)
                .await
                .map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    /// Publishes `record` if the bucket's last revision is `after`; its revision.
    async fn send(&self, record: &Record, after: u64) -> Result<u64, Refusal> {
        send(&self.jetstream, &self.subject_prefix, record, after).await
    }

    /// This node's commit slot: its record's, or the first free one, recorded with its
    /// address.
    async fn register(&self) -> Result<u64, String> {
        for _ in 0..5 {
            let (mine, used) = {
                let nodes = self.nodes.borrow();
                let used: HashSet<u64> = nodes.values().map(|node| node.slot).collect();
                (nodes.get(&self.node_key).cloned(), used)
            };
            let slot = match &mine {
                Some(record) if record.address == self.address => return Ok(record.slot),
                Some(record) => record.slot,
                None => (0..engram_store::COMMIT_SLOTS)
                    .find(|slot| !used.contains(slot))
                    .ok_or("the fleet has as many nodes as it may")?,
            };
            let record = encode_node(
                &self.node_key,
                &NodeRecord {
                    slot,
                    address: self.address.clone(),
                },
            );
            let after = *self.applied.borrow();
            match self.send(&record, after).await {
                Ok(_) | Err(Refusal::Moved) => self.caught_up(self.lease).await?,
                Err(Refusal::Unavailable(reason)) => {
                    return Err(format!("cannot record this node in the fleet: {reason}"));
                }
            }
        }
        Err("the fleet's policy kept changing while this node joined; start again".into())
    }

    /// Applies the bucket's changes in order, from the first this node lacks, for as
    /// long as the node runs; a watch that fails or stalls starts again where the last
    /// applied change left off.
    async fn watch(self: Rc<Self>, node: Rc<Node>) {
        let mut pause = Duration::from_millis(50);
        loop {
            let from = *self.applied.borrow() + 1;
            match self.bucket.watch_all_from_revision(from).await {
                Ok(watch) => {
                    let mut entries = watch.ready_chunks(APPLY_BATCH_MAX);
                    loop {
                        let batch = tokio::select! {
                            batch = entries.next() => batch,
                            () = self.restart_watch.notified() => break,
                        };
                        let Some(batch) = batch else { break };
                        match self.apply(&node, batch).await {
                            Ok(()) => pause = Duration::from_millis(50),
                            Err(error) => {
                                tracing::warn!(%error, "the fleet's policy watch failed; watching again");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot watch the fleet's policy"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.lease / 4);
        }
    }

    /// Applies one batch of watched entries, in order, up to the first failure.
    async fn apply(
        self: &Rc<Self>,
        node: &Rc<Node>,
        batch: Vec<Result<kv::Entry, kv::WatcherError>>,
    ) -> Result<(), String> {
        let mut changes = Vec::with_capacity(batch.len());
        let mut last = None;
        let mut failure = None;
        for entry in batch {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            };
            match decode(&entry.key, entry.operation, &entry.value) {
                Ok(Decoded::Policy(change)) => changes.push(change),
                Ok(Decoded::Node(key, record)) => {
                    self.nodes.borrow_mut().insert(key, record);
                }
                // Not this node's to fix: say so and go on with the fleet.
                Err(reason) => tracing::error!(
                    revision = entry.revision,
                    %reason,
                    "the fleet's bucket holds a record that is not a policy change; ignored"
                ),
            }
            last = Some(entry.revision);
        }
        if !changes.is_empty() {
            let worlds = (changes.iter()).any(|change| matches!(change, PolicyChange::World(_)));
            node.apply_policy(changes)
                .await
                .map_err(|error| format!("cannot apply the fleet's changes: {error}"))?;
            // Once joined, a new world's stream is followed from its creation.
            if worlds && node.in_fleet() {
                self.follow_worlds(node);
            }
        }
        if let Some(revision) = last {
            self.applied.send_if_modified(|applied| {
                let moved = revision > *applied;
                *applied = (*applied).max(revision);
                moved
            });
            if let Some((held, asked)) = self.pending.get()
                && revision >= held
            {
                self.pending.set(None);
                self.confirm(asked);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn confirm(&self, asked: Instant) {
        self.health.confirm(asked);
        self.behind_since.set(None);
    }

    /// Asks JetStream for the bucket's last revision every quarter of the lease, and
    /// confirms the node once it has applied it.
    async fn heartbeat(self: Rc<Self>) {
        let mut reachable = true;
        loop {
            tokio::time::sleep(self.lease / 4).await;
            let asked = Instant::now();
            match tokio::time::timeout(self.lease / 2, self.stream.get_info()).await {
                Ok(Ok(info)) => {
                    if !reachable {
                        tracing::info!("the fleet is reachable again");
                        reachable = true;
                    }
                    self.note_held(info.state.last_sequence, asked);
                }
                Ok(Err(error)) => {
                    if reachable {
                        tracing::warn!(%error, "cannot confirm the fleet's policy");
                    }
                    reachable = false;
                }
                Err(_) => {
                    if reachable {
                        tracing::warn!("the fleet did not answer within half the lease");
                    }
                    reachable = false;
                }
            }
        }
    }

    /// The fleet held revision `held` when asked at `asked`.
    fn note_held(&self, held: u64, asked: Instant) {
        if *self.applied.borrow() >= held {
            self.confirm(asked);
            return;
        }
        self.pending.set(Some((held, asked)));
        let since = self.behind_since.get().unwrap_or(asked);
        self.behind_since.set(Some(since));
        if since.elapsed() > self.lease / 2 {
            // The watch has not brought what the fleet holds: start it again.
            self.behind_since.set(Some(asked));
            self.restart_watch.notify_one();
        }
    }

    /// Resolves once this node applied everything the fleet holds now, within `limit`.
    async fn caught_up(&self, limit: Duration) -> Result<(), String> {
        let asked = Instant::now();
        let held = match tokio::time::timeout(limit, self.stream.get_info()).await {
            Ok(Ok(info)) => info.state.last_sequence,
            Ok(Err(error)) => return Err(format!("cannot read the fleet's policy: {error}")),
            Err(_) => return Err("the fleet did not answer in time".into()),
        };
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(limit, applied.wait_for(|applied| *applied >= held)).await {
            Ok(Ok(_)) => {
                self.confirm(asked);
                Ok(())
            }
            _ => Err(format!(
                "this node did not apply the fleet's policy up to revision {held} in time"
            )),
        }
    }
}

/// Publishes `change` to the bucket whose subjects start with `prefix` if its last
/// revision is `after`; the change's revision.
async fn send(
    jetstream: &jetstream::Context,
    prefix: &str,
    record: &Record,
    after: u64,
) -> Result<u64, Refusal> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::NATS_EXPECTED_LAST_SEQUENCE,
        after.to_string().as_str(),
    );
    if record.removal {
        headers.insert("KV-Operation", "DEL");
    }
    let subject = format!("{prefix}{}", record.key);
    let unavailable = |error: &dyn std::fmt::Display| Refusal::Unavailable(error.to_string());
    let acknowledgement = jetstream
        .publish_with_headers(subject, headers, record.payload.clone().into())
        .await
        .map_err(|error| unavailable(&error))?;
    match acknowledgement.await {
        Ok(ack) => Ok(ack.sequence),
        Err(error) if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
            Err(Refusal::Moved)
        }
        Err(error) => Err(unavailable(&error)),
    }
}

impl Fleet for Link {
    fn confirmed(&self) -> Result<(), String> {
        self.health.check()
    }

    fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    fn publish(&self, change: &PolicyChange, after: u64) -> Local<Result<(), Refusal>> {
        let (jetstream, prefix, change) = (
            self.jetstream.clone(),
            self.subject_prefix.clone(),
            change.clone(),
        );
        Box::pin(async move {
            send(&jetstream, &prefix, &encode(&change), after)
                .await
                .map(drop)
        })
    }

    fn catch_up(self: Rc<Self>) -> Local<Result<(), String>> {
        Box::pin(async move { self.caught_up(self.lease).await })
    }

    fn claim(self: Rc<Self>, world: String) -> Local<Result<(), String>> {
        Box::pin(self.claim(world))
    }

    fn status(&self, shown: &dyn Fn(&str) -> bool) -> FleetReport {
        self.report(shown)
    }
}
