//! Abuse: well-behaved clients beside hostile ones on one node, over loopback.
//!
//! The good clients (on the Unix socket, so the per-address limits of the hostile TCP
//! peer do not apply to them) remember atoms with vectors, ask by label and by
//! similarity, and one of them subscribes. The workload runs once alone and once beside
//! every hostile client at once: idle sockets, a login flood, many logins on one
//! connection, pipelined large reads never read, a subscriber whose sink never returns,
//! crafted vectors, and full-scan asks. The figures are the good clients' throughput and
//! p99 in both runs, their ratios, the node's peak RSS, and the good atoms lost.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use engram_client::engram_schema::engram_capnp::atom_sink;
use engram_client::{Filter, NewAtom, Restriction, Session, WatchEvent, keyfile};
use tokio::io::{AsyncRead, ReadBuf};

use crate::node::BenchNode;
use crate::report::{mib, percentile, print};

pub struct Options {
    /// Seconds each run of the good workload lasts.
    pub seconds: u64,
    /// Good client connections.
    pub good_clients: usize,
    /// Small atoms in the world the full-scan asks walk.
    pub scanned_atoms: usize,
    /// Idle sockets the hostile peer keeps open.
    pub idle_sockets: usize,
}

/// Dimensions of the good world's vectors (the crafted vector's too).
const DIMENSIONS: usize = 128;
/// How long the hostile peer's unread connection may stall before the node cuts it.
const STALL_TIMEOUT_MS: &str = "3000";

pub async fn run(options: Options) {
    let node = BenchNode::start_with(&["--write-stall-timeout-ms", STALL_TIMEOUT_MS]);
    let admin = node.login_at(&node.unix()).await;
    let admin_capability = admin.admin().unwrap();
    engram_client::create_world_with_dimension(&admin_capability, "good", DIMENSIONS as u32)
        .await
        .unwrap();
    engram_client::create_world(&admin_capability, "big")
        .await
        .unwrap();
    let admin = node.login_at(&node.unix()).await;
    let started = Instant::now();
    fill_big_world(&admin, options.scanned_atoms).await;
    print("abuse.setup", started.elapsed().as_secs_f64(), "s");

    let alone = good_workload(&node, &options).await;
    let stop = Rc::new(Cell::new(false));
    let hostile = start_hostile(&node, &options, stop.clone()).await;
    let beside = good_workload(&node, &options).await;
    stop.set(true);
    let peak_rss_kib = node.memory_kib("VmHWM");
    drop(hostile);

    // Nothing a good client was told is durable may be missing.
    let reader = admin.reader("good").unwrap();
    let mut stored = 0;
    let mut cursor = 0;
    loop {
        let (atoms, next) = engram_client::replay(&reader, cursor, 1000).await.unwrap();
        if atoms.is_empty() {
            break;
        }
        stored += atoms
            .iter()
            .filter(|atom| atom.labels.iter().any(|label| label == "good"))
            .count();
        cursor = next;
    }
    let acknowledged = alone.acknowledged + beside.acknowledged;

    print("abuse.good.alone.ops_per_s", alone.ops_per_s(), "ops/s");
    print("abuse.good.alone.p99", alone.p99_ms(), "ms");
    print(
        "abuse.good.beside_hostile.ops_per_s",
        beside.ops_per_s(),
        "ops/s",
    );
    print("abuse.good.beside_hostile.p99", beside.p99_ms(), "ms");
    print(
        "abuse.good.throughput_ratio",
        beside.ops_per_s() / alone.ops_per_s(),
        "(goal >= 0.8)",
    );
    print(
        "abuse.good.p99_ratio",
        beside.p99_ms() / alone.p99_ms(),
        "(goal <= 2)",
    );
    print(
        "abuse.good.deliveries_beside_hostile",
        beside.delivered as f64,
        "atoms",
    );
    print(
        "abuse.good.lost",
        acknowledged.saturating_sub(stored) as f64,
        "atoms",
    );
    print("abuse.node.peak_rss", mib(peak_rss_kib), "MiB");
}

/// The world the full-scan asks and the large reads walk: small atoms, then 64 large ones.
async fn fill_big_world(admin: &Session, atoms: usize) {
    let writer = admin.writer("big").unwrap();
    for start in (0..atoms).step_by(10_000) {
        let batch: Vec<NewAtom> = (start..(start + 10_000).min(atoms))
            .map(|index| NewAtom::fact(format!("filler {index}")))
            .collect();
        engram_client::remember(&writer, &batch).await.unwrap();
    }
    for _ in 0..8 {
        let large: Vec<NewAtom> = (0..8)
            .map(|index| NewAtom {
                payload: vec![7; 1024 * 1024],
                ..NewAtom::fact(format!("large {index}"))
            })
            .collect();
        engram_client::remember(&writer, &large).await.unwrap();
    }
}

struct Workload {
    latencies: Vec<Duration>,
    elapsed: Duration,
    acknowledged: usize,
    delivered: usize,
}

impl Workload {
    fn ops_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn p99_ms(&self) -> f64 {
        percentile(&self.latencies, 0.99).as_secs_f64() * 1000.0
    }
}

/// A seeded pseudo-random unit-ish vector.
fn vector(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..DIMENSIONS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Each good client loops: remember one atom with a vector, ask by label, ask by
/// similarity; one more subscribes to the good world and counts what it receives.
async fn good_workload(node: &BenchNode, options: &Options) -> Workload {
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let subscriber = node.login_at(&node.unix()).await;
    let mut watch = engram_client::subscribe(
        &subscriber.observer("good").unwrap(),
        &Filter {
            labels: vec!["good".into()],
            ..Filter::default()
        },
        0,
    )
    .await
    .unwrap();
    let delivered = Rc::new(Cell::new(0));
    let counting = delivered.clone();
    let watching = tokio::task::spawn_local(async move {
        while let Some(WatchEvent::Atoms(atoms)) = watch.next().await {
            counting.set(counting.get() + atoms.len());
        }
    });
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..options.good_clients {
        let session = node.login_at(&node.unix()).await;
        clients.push(tokio::task::spawn_local(async move {
            let (writer, reader) = (
                session.writer("good").unwrap(),
                session.reader("good").unwrap(),
            );
            let mut latencies = Vec::new();
            let mut acknowledged = 0;
            let mut round = 0u64;
            while Instant::now() < deadline {
                round += 1;
                let seed = (client as u64) << 32 | round;
                let atom = NewAtom::fact(format!("good {client} {round}"))
                    .labels(&["good"])
                    .vector(vector(seed));
                let sent = Instant::now();
                engram_client::remember(&writer, &[atom])
                    .await
                    .expect("a good write");
                latencies.push(sent.elapsed());
                acknowledged += 1;
                let by_label = Filter {
                    labels: vec!["good".into()],
                    limit: 10,
                    ..Filter::default()
                };
                let sent = Instant::now();
                engram_client::ask(&reader, &by_label)
                    .await
                    .expect("a good ask");
                latencies.push(sent.elapsed());
                let similar = Filter {
                    vector: vector(seed + 1),
                    limit: 10,
                    ..Filter::default()
                };
                let sent = Instant::now();
                engram_client::ask(&reader, &similar)
                    .await
                    .expect("a good search");
                latencies.push(sent.elapsed());
            }
            (latencies, acknowledged)
        }));
    }
    let mut workload = Workload {
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
        acknowledged: 0,
        delivered: 0,
    };
    for client in clients {
        let (latencies, acknowledged) = client.await.unwrap();
        workload.latencies.extend(latencies);
        workload.acknowledged += acknowledged;
    }
    workload.elapsed = started.elapsed();
    workload.latencies.sort();
    workload.delivered = delivered.get();
    watching.abort();
    workload
}

/// The hostile tasks, running until `stop` is set; dropping the handles ends them.
struct Hostile(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Hostile {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn start_hostile(node: &BenchNode, options: &Options, stop: Rc<Cell<bool>>) -> Hostile {
    let mut tasks = Vec::new();
    let tcp = node.tcp.clone();
    let key = keyfile::read(&node.admin_key).expect("the admin key");

    // Idle sockets that never send a byte, opened again whenever the node closes them.
    for _ in 0..options.idle_sockets {
        let (tcp, stop) = (tcp.clone(), stop.clone());
        tasks.push(tokio::task::spawn_local(async move {
            while !stop.get() {
                let Ok(mut socket) = tokio::net::TcpStream::connect(&tcp).await else {
                    continue;
                };
                let mut buffer = [0u8; 256];
                while let Ok(read) = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await {
                    if read == 0 {
                        break;
                    }
                }
            }
        }));
    }

    // A login flood with an unknown key, and many logins on one connection.
    let stranger = keyfile::generate().expect("a key");
    for one_connection in [false, true] {
        let (tcp, stop, stranger) = (tcp.clone(), stop.clone(), stranger.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut held = None;
            while !stop.get() {
                if held.is_none() || !one_connection {
                    held = engram_client::connect(&engram_client::Endpoint::Tcp(tcp.clone()))
                        .await
                        .ok();
                }
                if let Some(connection) = &held {
                    let _ = connection.login(&stranger).await;
                }
            }
        }));
    }

    // Pipelined large reads whose answers are never read, again whenever cut off.
    {
        let (tcp, stop, key) = (tcp.clone(), stop.clone(), key.clone());
        tasks.push(tokio::task::spawn_local(async move {
            while !stop.get() {
                let Some((hostile, paused)) = unread_session(&tcp, &key).await else {
                    continue;
                };
                let reader = hostile.reader("big").unwrap();
                paused.set(true);
                let _pending: Vec<_> = (0..200)
                    .map(|_| {
                        let mut request = reader.replay_request();
                        request.get().set_from_commit(0);
                        request.get().set_limit(1000);
                        request.send().promise
                    })
                    .collect();
                // This client reads nothing, not even that the node cut it off: it
                // starts again once the node has had time to.
                let stall: u64 = STALL_TIMEOUT_MS.parse().expect("a number");
                tokio::time::sleep(Duration::from_millis(stall + 1_000)).await;
            }
        }));
    }

    // A subscriber whose sink never returns from a push, on the busy good world.
    {
        let hostile = node.login().await;
        let observer = hostile.observer("good").unwrap();
        tasks.push(tokio::task::spawn_local(async move {
            let sink: atom_sink::Client = capnp_rpc::new_client(StuckSink);
            let mut request = observer.subscribe_request();
            Filter::default().fill(request.get().init_filter());
            request.get().set_sink(sink);
            request.get().set_from_commit(0);
            let _subscription = request.send().promise.await;
            std::future::pending::<()>().await;
        }));
    }

    // Crafted vectors from the weakest writer, and full-scan asks.
    {
        let hostile = node.login().await;
        let writer = engram_client::attenuate_writer(
            &hostile.writer("good").unwrap(),
            &Restriction {
                labels: vec!["crafted".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let stop = stop.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut crafted = vec![2.4e-4f32; DIMENSIONS];
            crafted[0] = 1.0;
            while !stop.get() {
                let atoms: Vec<NewAtom> = (0..50)
                    .map(|_| {
                        NewAtom::fact("crafted")
                            .labels(&["crafted"])
                            .vector(crafted.clone())
                    })
                    .collect();
                let _ = engram_client::remember(&writer, &atoms).await;
            }
        }));
    }
    for _ in 0..4 {
        let hostile = node.login().await;
        let stop = stop.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let reader = hostile.reader("big").unwrap();
            let nothing_matches = Filter {
                min_importance: 0.99,
                limit: 1000,
                ..Filter::default()
            };
            while !stop.get() {
                let _ = engram_client::ask(&reader, &nothing_matches).await;
            }
        }));
    }
    Hostile(tasks)
}

/// A sink that never returns from a push.
struct StuckSink;

impl atom_sink::Server for StuckSink {
    async fn push(self: Rc<Self>, _: atom_sink::PushParams) -> Result<(), capnp::Error> {
        std::future::pending().await
    }
}

/// A socket's read half that, once `paused` is set, never reads again.
struct Pausable<R> {
    inner: R,
    paused: Rc<Cell<bool>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Pausable<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.paused.get() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

/// An admin session whose connection stops reading once `paused` is set.
async fn unread_session(
    tcp: &str,
    key: &ed25519_dalek::SigningKey,
) -> Option<(Session, Rc<Cell<bool>>)> {
    let stream = tokio::net::TcpStream::connect(tcp).await.ok()?;
    let (read, write) = stream.into_split();
    let paused = Rc::new(Cell::new(false));
    let reader = Pausable {
        inner: read,
        paused: paused.clone(),
    };
    let connection = engram_client::connect_over(reader, write);
    let session = connection.login(key).await.ok()?.graft().await.ok()?;
    Some((session, paused))
}
