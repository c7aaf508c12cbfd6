//! A fleet of three nodes on this machine (a `nats-server` with JetStream in a temporary
//! directory, `engramd --nats`) beside one node alone: acknowledged `remember`
//! throughput and p99 with replication and without, replication lag (acknowledged on
//! the owner to pushed by a follower's subscription), failover time (the owner
//! SIGKILLed to a write accepted by another node), and catch-up (a node joining a fleet
//! whose world's stream holds 100,000 single-atom messages, its start included, against
//! one durable commit per message).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use engram_client::engram_schema::engram_capnp::world_writer;
use engram_client::{Filter, NewAtom, WatchEvent, keyfile};
use engram_tests::fleet::NatsServer;

use crate::node::{BenchNode, login_as};
use crate::report::{percentile, print};
use crate::suite::concurrent;

#[derive(clap::Args)]
pub struct Options {
    /// Writer connections for the throughput figures.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Atoms each connection remembers, one per call.
    #[arg(long, default_value_t = 500)]
    per_connection: usize,
    /// Paced writes whose replication lag is measured.
    #[arg(long, default_value_t = 1_000)]
    lag_writes: usize,
    /// The fleet's lease (engramd --fleet-lease-ms).
    #[arg(long, default_value_t = 2_000)]
    lease_ms: u64,
    /// Atoms a joining node catches up (written one per call by one connection, so
    /// one stream message each: the follower's cost per message is what is measured).
    #[arg(long, default_value_t = 100_000)]
    catch_up_atoms: usize,
}

/// Remember throughput and sorted latencies of `options.connections` writers of
/// `world` on the node at `tcp`.
async fn throughput(
    tcp: &str,
    key: &ed25519_dalek::SigningKey,
    world: &str,
    options: &Options,
) -> (f64, Vec<Duration>) {
    let endpoint = engram_client::Endpoint::Tcp(tcp.to_owned());
    let mut writers = Vec::new();
    for _ in 0..options.connections {
        writers.push(login_as(&endpoint, key).await.writer(world).unwrap());
    }
    concurrent(
        writers,
        options.per_connection,
        |writer: Rc<world_writer::Client>, index| async move {
            engram_client::remember(&writer, &[NewAtom::fact(format!("atom {index}"))])
                .await
                .expect("remember");
        },
    )
    .await
}

pub async fn run(options: Options) {
    // One node alone.
    let alone = BenchNode::start();
    let key = keyfile::read(&alone.admin_key).unwrap();
    let admin = alone.login().await;
    engram_client::create_world(&admin.admin().unwrap(), "bench")
        .await
        .unwrap();
    let (rate, latencies) = throughput(&alone.tcp, &key, "bench", &options).await;
    print("fleet.alone_remember", rate, "atoms/s");
    print(
        "fleet.alone_remember_p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        "ms",
    );
    // One durable commit per atom: what a follower storing each stream message in its
    // own commit could do at best (the catch-up before it grouped them).
    let one = Options {
        connections: 1,
        per_connection: 2_000,
        ..options
    };
    let (per_commit, _) = throughput(&alone.tcp, &key, "bench", &one).await;
    print("fleet.one_commit_per_atom", per_commit, "atoms/s");
    drop(alone);

    // Three nodes in a fleet.
    let nats = NatsServer::start();
    let url = format!("nats://{}", nats.address());
    let lease = options.lease_ms.to_string();
    let mut nodes: Vec<BenchNode> = (0..3)
        .map(|_| {
            BenchNode::start_with(&["--no-socket", "--nats", &url, "--fleet-lease-ms", &lease])
        })
        .collect();
    let key = keyfile::read(&nodes[0].admin_key).unwrap();
    let endpoints: Vec<_> = (nodes.iter())
        .map(|node| engram_client::Endpoint::Tcp(node.tcp.clone()))
        .collect();
    let admin = login_as(&endpoints[0], &key).await;
    for world in ["bench", "lag", "failover"] {
        engram_client::create_world(&admin.admin().unwrap(), world)
            .await
            .unwrap();
    }
    // Until the worlds reached every node.
    for endpoint in &endpoints {
        while login_as(endpoint, &key).await.reader("failover").is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (rate, latencies) = throughput(&nodes[0].tcp, &key, "bench", &options).await;
    print("fleet.replicated_remember", rate, "atoms/s");
    print(
        "fleet.replicated_remember_p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        "ms",
    );

    // Replication lag: each follower subscribes; one writer on the owner, one write at
    // a time.
    let arrivals: Vec<Rc<RefCell<HashMap<u64, Instant>>>> = (0..2)
        .map(|_| Rc::new(RefCell::new(HashMap::new())))
        .collect();
    for (follower, arrived) in endpoints[1..].iter().zip(&arrivals) {
        let observer = login_as(follower, &key).await.observer("lag").unwrap();
        let mut watch = engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
        let arrived = arrived.clone();
        tokio::task::spawn_local(async move {
            let _observer = observer;
            while let Some(WatchEvent::Atoms(atoms)) = watch.next().await {
                let now = Instant::now();
                let mut arrived = arrived.borrow_mut();
                for atom in atoms {
                    arrived.insert(atom.commit, now);
                }
            }
        });
    }
    let writer = login_as(&endpoints[0], &key).await.writer("lag").unwrap();
    let mut acknowledged = Vec::with_capacity(options.lag_writes);
    for index in 0..options.lag_writes {
        let receipts = engram_client::remember(&writer, &[NewAtom::fact(format!("lag {index}"))])
            .await
            .expect("remember");
        acknowledged.push((receipts[0].commit, Instant::now()));
    }
    let waited = Instant::now();
    while arrivals
        .iter()
        .any(|arrived| arrived.borrow().len() < options.lag_writes)
        && waited.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lags = Vec::new();
    for arrived in &arrivals {
        let arrived = arrived.borrow();
        for (commit, acked) in &acknowledged {
            let at = arrived
                .get(commit)
                .expect("every atom reaches every follower");
            lags.push(at.saturating_duration_since(*acked));
        }
    }
    lags.sort();
    print(
        "fleet.replication_lag_p50",
        percentile(&lags, 0.5).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "fleet.replication_lag_p99",
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        "ms",
    );

    // Failover: the owner of "failover" is killed; writes go to the second node until
    // one is accepted (after the lease expires).
    let owner = login_as(&endpoints[0], &key)
        .await
        .writer("failover")
        .unwrap();
    engram_client::remember(&owner, &[NewAtom::fact("before")])
        .await
        .unwrap();
    let successor = login_as(&endpoints[1], &key)
        .await
        .writer("failover")
        .unwrap();
    nodes[0].kill();
    let killed = Instant::now();
    loop {
        match engram_client::remember(&successor, &[NewAtom::fact("after")]).await {
            Ok(_) => break,
            Err(error) if error.code() == Some(engram_client::ErrorCode::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("the successor refused: {error}"),
        }
    }
    print("fleet.failover", killed.elapsed().as_secs_f64() * 1e3, "ms");
    print("fleet.lease", options.lease_ms as f64, "ms");

    // Catch-up: a node joins a fleet whose world holds `catch_up_atoms` atoms.
    let catch_up = Options {
        connections: 1,
        per_connection: options.catch_up_atoms,
        ..options
    };
    let atoms = (catch_up.per_connection * catch_up.connections) as u64;
    let on_b = login_as(&endpoints[1], &key).await;
    engram_client::create_world(&on_b.admin().unwrap(), "catch-up")
        .await
        .unwrap();
    while login_as(&endpoints[1], &key)
        .await
        .writer("catch-up")
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    throughput(&nodes[1].tcp, &key, "catch-up", &catch_up).await;
    let started = Instant::now();
    let joining =
        BenchNode::start_with(&["--no-socket", "--nats", &url, "--fleet-lease-ms", &lease]);
    let endpoint = engram_client::Endpoint::Tcp(joining.tcp.clone());
    let membrane = engram_client::connect(&endpoint)
        .await
        .unwrap()
        .login(&key)
        .await
        .unwrap();
    let messages = loop {
        let status = membrane.fleet().await.unwrap();
        let world = (status.worlds.iter()).find(|world| world.world == "catch-up");
        if let Some(world) = world
            && world.held_position > 0
            && world.held_position == world.stream_position
        {
            let reader = membrane.graft().await.unwrap().reader("catch-up").unwrap();
            let generation = engram_client::generation(&reader).await.unwrap();
            assert_eq!(generation.atoms, atoms, "every atom caught up");
            break world.held_position;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    print("fleet.catch_up", atoms as f64 / elapsed, "atoms/s");
    print(
        "fleet.catch_up_messages",
        messages as f64 / elapsed,
        "messages/s",
    );
    // A follower that stored each message in a durable commit of its own could store
    // at most as many messages a second as one writer commits atoms, one per commit.
    print(
        "fleet.catch_up_over_one_commit_per_message",
        messages as f64 / elapsed / per_commit,
        "x",
    );
    drop(nats);
}
