//! Abuse: well-behaved clients beside hostile ones on one node, over loopback.
//!
//! The good clients (principal `good`, on the Unix socket, so the per-address limits of
//! the hostile TCP peer do not apply to them) remember atoms with vectors, ask by label
//! and by similarity, and one of them subscribes. The workload runs in rounds, alone and
//! beside the hostile clients in turn (alone first, then beside first, and so on), which
//! run in a process of their own as principal `hostile` (with a rate on its grants, and
//! under SCHED_IDLE by default, standing in for agents on other machines): idle sockets,
//! a login flood, many logins on one connection, pipelined large reads never read, a
//! subscriber whose sink never returns, crafted vectors, and full-scan asks. The figures
//! are the good clients' throughput and p99 alone and beside them, their ratios, the
//! node's and the hostile process's CPU use, the node's peak RSS, and the good atoms
//! lost.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use engram_client::engram_schema::engram_capnp::atom_sink;
use engram_client::{Filter, NewAtom, Restriction, Session, WatchEvent, keyfile};
use tokio::io::{AsyncRead, ReadBuf};

use crate::node::{BenchNode, login_as};
use crate::report::{mib, percentile, print, print_text};

/// What `engram-bench abuse` runs (its command-line options).
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Seconds of each run of the good workload.
    #[arg(long, default_value_t = 4)]
    pub seconds: u64,
    /// Rounds of one run alone and one beside the hostile clients (alone first in even
    /// rounds, beside first in odd ones, so that a drift in the machine's speed falls on
    /// both alike).
    #[arg(long, default_value_t = 6)]
    pub rounds: u32,
    /// Good client connections.
    #[arg(long, default_value_t = 4)]
    pub good_clients: usize,
    /// Small atoms in the world the full-scan asks walk.
    #[arg(long, default_value_t = 100_000)]
    pub scanned_atoms: usize,
    #[command(flatten)]
    pub hostile: HostileOptions,
    /// The rate on the hostile principal's grants, CALLS/ATOMS a second, as an operator
    /// would give an agent it does not trust: by default about what the good clients
    /// write together (0/0: no rate at all).
    #[arg(long, default_value = "100/500")]
    pub hostile_rate: String,
}

/// What the hostile process runs (the options `abuse` hands on to `abuse-hostile`).
#[derive(clap::Args, Clone, Debug)]
pub struct HostileOptions {
    /// The hostile clients to run, of: unread (pipelined reads never read), stuck (a
    /// subscriber that never takes a push), crafted (crafted vectors), scans (full-scan
    /// asks), idle (idle sockets), logins (login floods).
    #[arg(long = "hostile", value_delimiter = ',', default_values_t = HOSTILE_KINDS.map(String::from))]
    pub kinds: Vec<String>,
    /// Idle sockets the hostile peer holds open.
    #[arg(long, default_value_t = 200)]
    pub idle_sockets: usize,
    /// The hostile process's CPU scheduling. Its clients stand in for agents on other
    /// machines or in CPU-limited sandboxes: `idle` (Linux's SCHED_IDLE) runs their own
    /// loops only on CPU the node and the good clients leave, so the figures show what
    /// the node spends on them; `normal` lets them compete for the cores as equals.
    #[arg(long, value_enum, default_value_t = HostilePriority::Idle)]
    pub hostile_priority: HostilePriority,
}

/// How the hostile process is scheduled (`--hostile-priority`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostilePriority {
    Idle,
    Normal,
}

impl HostilePriority {
    fn name(self) -> &'static str {
        match self {
            HostilePriority::Idle => "idle",
            HostilePriority::Normal => "normal",
        }
    }
}

/// The good clients' principal and the hostile one's.
struct Principals {
    good: ed25519_dalek::SigningKey,
    hostile: ed25519_dalek::SigningKey,
}

/// The kinds of hostile client, as `--hostile` names them.
pub const HOSTILE_KINDS: [&str; 6] = ["unread", "stuck", "crafted", "scans", "idle", "logins"];

/// Clock ticks of /proc's CPU times a second (`getconf CLK_TCK` on Linux).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Dimensions of the good world's vectors (the crafted vector's too).
const DIMENSIONS: usize = 128;
/// How long the hostile peer's unread connection may stall before the node cuts it.
const STALL_TIMEOUT_MS: u64 = 3_000;

pub async fn run(options: Options) {
    let node = BenchNode::start_with(&["--write-stall-timeout-ms", &STALL_TIMEOUT_MS.to_string()]);
    let admin = node.login_at(&node.unix()).await;
    let admin_capability = admin.admin().unwrap();
    engram_client::create_world_with_dimension(&admin_capability, "good", DIMENSIONS as u32)
        .await
        .unwrap();
    engram_client::create_world(&admin_capability, "big")
        .await
        .unwrap();
    let principals = Principals {
        good: keyfile::generate().expect("a key"),
        hostile: keyfile::generate().expect("a key"),
    };
    let grant = |text: &str| engram_client::Grant::parse(text).expect("a grant");
    engram_client::add_principal(
        &admin_capability,
        "good",
        principals.good.verifying_key().as_bytes(),
        false,
        &[grant("good=rwo")],
    )
    .await
    .unwrap();
    let rate = &options.hostile_rate;
    engram_client::add_principal(
        &admin_capability,
        "hostile",
        principals.hostile.verifying_key().as_bytes(),
        false,
        &[
            grant(&format!("good=wo@{rate}")),
            grant(&format!("big=r@{rate}")),
        ],
    )
    .await
    .unwrap();
    print_text(
        "abuse.hostile_rate",
        &format!("{rate} (calls/atoms a second; 0: none)"),
    );
    print_text(
        "abuse.hostile_priority",
        options.hostile.hostile_priority.name(),
    );
    let admin = node.login_at(&node.unix()).await;
    let started = Instant::now();
    fill_big_world(&admin, options.scanned_atoms).await;
    print("abuse.setup", started.elapsed().as_secs_f64(), "s");

    // Rounds of one run alone and one beside the hostile clients, in the order alone,
    // beside, then beside, alone, and so on: a drift in the machine's speed, and the
    // good world's growth, fall on both alike.
    // A first run, not counted, so that no counted run meets an empty good world.
    good_workload(&node, &options, &principals).await;
    let (mut alone, mut beside) = (Workload::default(), Workload::default());
    // The hostile clients run in a process of their own, so that their work does not
    // share the good clients' thread; it runs on through two runs beside it in a row.
    let mut hostile: Option<HostileProcess> = None;
    // CPU time the hostile processes used, in clock ticks.
    let mut hostile_ticks = 0;
    for round in 0..options.rounds {
        for with_hostile in [round % 2 == 1, round % 2 == 0] {
            if with_hostile {
                hostile.get_or_insert_with(|| {
                    HostileProcess::start(&node, &options, &principals.hostile)
                });
                beside.add(good_workload(&node, &options, &principals).await);
            } else {
                if let Some(process) = hostile.take() {
                    hostile_ticks += process.stop();
                }
                alone.add(good_workload(&node, &options, &principals).await);
            }
        }
    }
    if let Some(process) = hostile.take() {
        hostile_ticks += process.stop();
    }
    alone.latencies.sort();
    beside.latencies.sort();
    let peak_rss_kib = node.memory_kib("VmHWM");

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

    let each_run = |workload: &Workload| {
        let runs: Vec<String> = workload
            .runs_ops_per_s
            .iter()
            .map(|ops| format!("{ops:.0}"))
            .collect();
        format!("{} ops/s", runs.join(" "))
    };
    print_text("abuse.good.alone.each_run", &each_run(&alone));
    print_text("abuse.good.beside_hostile.each_run", &each_run(&beside));
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
    print("abuse.node.cpu.alone", alone.node_cores(), "cores");
    print(
        "abuse.node.cpu.beside_hostile",
        beside.node_cores(),
        "cores",
    );
    print(
        "abuse.hostile.cpu",
        hostile_ticks as f64 / CLOCK_TICKS_PER_SECOND / beside.elapsed.as_secs_f64(),
        "cores",
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

/// What the good clients did in one or more runs.
#[derive(Default)]
struct Workload {
    latencies: Vec<Duration>,
    elapsed: Duration,
    acknowledged: usize,
    delivered: usize,
    /// CPU time the node used meanwhile, in clock ticks.
    node_ticks: u64,
    /// Each run's operations a second, in order: how much the machine's speed varies.
    runs_ops_per_s: Vec<f64>,
}

impl Workload {
    /// Adds another run's figures (its latencies unsorted).
    fn add(&mut self, run: Workload) {
        self.runs_ops_per_s.push(run.ops_per_s());
        self.latencies.extend(run.latencies);
        self.elapsed += run.elapsed;
        self.acknowledged += run.acknowledged;
        self.delivered += run.delivered;
        self.node_ticks += run.node_ticks;
    }

    /// The node's CPU use meanwhile, in cores.
    fn node_cores(&self) -> f64 {
        self.node_ticks as f64 / CLOCK_TICKS_PER_SECOND / self.elapsed.as_secs_f64()
    }

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
async fn good_workload(node: &BenchNode, options: &Options, principals: &Principals) -> Workload {
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let subscriber = login_as(&node.unix(), &principals.good).await;
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
    let node_ticks = node.cpu_ticks();
    let mut clients = Vec::new();
    for client in 0..options.good_clients {
        let session = login_as(&node.unix(), &principals.good).await;
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
    let mut workload = Workload::default();
    for client in clients {
        let (latencies, acknowledged) = client.await.unwrap();
        workload.latencies.extend(latencies);
        workload.acknowledged += acknowledged;
    }
    workload.elapsed = started.elapsed();
    workload.node_ticks = node.cpu_ticks() - node_ticks;
    workload.delivered = delivered.get();
    watching.abort();
    workload
}

/// The hostile clients' process (`engram-bench abuse-hostile`), killed on drop.
struct HostileProcess {
    child: std::process::Child,
    _key_directory: tempfile::TempDir,
}

impl HostileProcess {
    fn start(
        node: &BenchNode,
        options: &Options,
        key: &ed25519_dalek::SigningKey,
    ) -> HostileProcess {
        let key_directory = tempfile::tempdir().expect("a temporary directory");
        let key_path = key_directory.path().join("hostile.key");
        keyfile::write_new(&key_path, key).expect("writing the hostile key");
        let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
            .arg("abuse-hostile")
            .args(["--tcp", &node.tcp])
            .arg("--key")
            .arg(&key_path)
            .args(["--hostile", &options.hostile.kinds.join(",")])
            .args(["--idle-sockets", &options.hostile.idle_sockets.to_string()])
            .args([
                "--hostile-priority",
                options.hostile.hostile_priority.name(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the hostile clients");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut ready,
        )
        .expect("the hostile clients' ready line");
        assert_eq!(
            ready.trim(),
            "hostile ready",
            "the hostile clients did not start"
        );
        HostileProcess {
            child,
            _key_directory: key_directory,
        }
    }
}

impl HostileProcess {
    /// Stops the hostile clients; the CPU time they used, in clock ticks.
    fn stop(self) -> u64 {
        crate::node::cpu_ticks(self.child.id())
    }
}

impl Drop for HostileProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `engram-bench abuse-hostile`: runs the hostile clients against the node at `tcp` as
/// the principal of `key`, prints `hostile ready` once they all run, until killed.
pub async fn serve_hostile(tcp: String, key: std::path::PathBuf, options: HostileOptions) {
    if options.hostile_priority == HostilePriority::Idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(2) on this process's only thread so far (pid 0:
        // the caller); the threads it starts later inherit the policy.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            panic!(
                "SCHED_IDLE for the hostile clients: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let key = keyfile::read(&key).expect("the hostile key");
    let _tasks = start_hostile(tcp, key, &options).await;
    println!("hostile ready");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::future::pending::<()>().await;
}

async fn start_hostile(
    tcp: String,
    key: ed25519_dalek::SigningKey,
    options: &HostileOptions,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let endpoint = engram_client::Endpoint::Tcp(tcp.clone());
    let wants = |kind: &str| options.kinds.iter().any(|wanted| wanted == kind);

    // Pipelined large reads whose answers are never read, again whenever cut off.
    if wants("unread") {
        let (tcp, key) = (tcp.clone(), key.clone());
        tasks.push(tokio::task::spawn_local(async move {
            loop {
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
                tokio::time::sleep(Duration::from_millis(STALL_TIMEOUT_MS + 1_000)).await;
            }
        }));
    }

    // A subscriber whose sink never returns from a push, on the busy good world.
    if wants("stuck") {
        let hostile = login_as(&endpoint, &key).await;
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
    if wants("crafted") {
        let hostile = login_as(&endpoint, &key).await;
        let writer = engram_client::attenuate_writer(
            &hostile.writer("good").unwrap(),
            &Restriction {
                labels: vec!["crafted".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        tasks.push(tokio::task::spawn_local(async move {
            let mut crafted = vec![2.4e-4f32; DIMENSIONS];
            crafted[0] = 1.0;
            loop {
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
    for _ in 0..if wants("scans") { 4 } else { 0 } {
        let hostile = login_as(&endpoint, &key).await;
        tasks.push(tokio::task::spawn_local(async move {
            let reader = hostile.reader("big").unwrap();
            let nothing_matches = Filter {
                min_importance: 0.99,
                limit: 1000,
                ..Filter::default()
            };
            loop {
                let _ = engram_client::ask(&reader, &nothing_matches).await;
            }
        }));
    }
    // Last, once the other hostile clients hold their sessions: the same peer's idle
    // sockets, login flood and many logins on one connection fill its per-address limits.
    // Idle sockets that never send a byte, opened again whenever the node closes them.
    for _ in 0..if wants("idle") {
        options.idle_sockets
    } else {
        0
    } {
        let tcp = tcp.clone();
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                let Ok(mut socket) = tokio::net::TcpStream::connect(&tcp).await else {
                    continue;
                };
                let mut buffer = [0u8; 256];
                while let Ok(read) = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await {
                    if read == 0 {
                        break;
                    }
                }
                // Closed (refused, or its handshake time is up): open another soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    // A login flood with an unknown key, and many logins on one connection.
    let stranger = keyfile::generate().expect("a key");
    for one_connection in [false, true].into_iter().filter(|_| wants("logins")) {
        let (tcp, stranger) = (tcp.clone(), stranger.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut held = None;
            loop {
                if held.is_none() || !one_connection {
                    held = engram_client::connect(&engram_client::Endpoint::Tcp(tcp.clone()))
                        .await
                        .ok();
                }
                if let Some(connection) = &held
                    && let Err(error) = connection.login(&stranger).await
                    && error.code().is_none()
                {
                    // Not the node's answer: the connection is gone (its handshake time
                    // is up); open another.
                    held = None;
                }
            }
        }));
    }

    tasks
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
