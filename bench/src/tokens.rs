//! Tokens and sandboxed children: how long `Terminal.restore` takes beside `login +
//! graft` (on one open connection, one call at a time), and the round trip of a call a
//! spawned child makes beside the same call made directly: over the Unix socket (the
//! node serves the child, handed off), and over TCP (the parent forwards).

use std::process::Stdio;
use std::time::{Duration, Instant};

use engram_client::spawn::Held;
use engram_client::{Endpoint, NewAtom, connect, keyfile};

use crate::node::BenchNode;
use crate::report::{percentile, print};

pub struct Options {
    pub iterations: usize,
}

/// Times `iterations` runs of `body`, sorted.
async fn timed<F: std::future::Future<Output = ()>>(
    iterations: usize,
    mut body: impl FnMut() -> F,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        body().await;
        times.push(started.elapsed());
    }
    times.sort();
    times
}

fn report(name: &str, times: &[Duration]) -> Duration {
    let p50 = percentile(times, 0.5);
    print(&format!("{name}.p50"), p50.as_secs_f64() * 1e6, "us");
    print(
        &format!("{name}.p99"),
        percentile(times, 0.99).as_secs_f64() * 1e6,
        "us",
    );
    p50
}

pub async fn run(options: Options) {
    // Every login and restore counts against the peer's login rate: none here.
    let node = BenchNode::start_with(&["--login-attempts-per-minute", "0"]);
    let admin = node.login().await;
    engram_client::create_world(&admin.admin().unwrap(), "bench")
        .await
        .unwrap();
    let session = node.login().await;
    engram_client::remember(&session.writer("bench").unwrap(), &[NewAtom::fact("bench")])
        .await
        .unwrap();
    let key = keyfile::read(&node.admin_key).unwrap();
    let connection = connect(&Endpoint::parse(&node.tcp)).await.unwrap();
    let iterations = options.iterations;

    let login = timed(iterations, || async {
        connection.login(&key).await.unwrap().graft().await.unwrap();
    })
    .await;
    let login = report("tokens.login_and_graft", &login);
    let reader = session.reader("bench").unwrap();
    let token = engram_client::token::save(&Held::Reader(reader.clone()))
        .await
        .unwrap();
    print("tokens.token_bytes", token.len() as f64, "bytes");
    let restore = timed(iterations, || async {
        connection.restore(&token).await.unwrap();
    })
    .await;
    let restore = report("tokens.restore", &restore);
    print(
        "tokens.restore_over_login_and_graft",
        restore.as_secs_f64() / login.as_secs_f64(),
        "x",
    );

    for (name, endpoint) in [("unix", node.unix()), ("tcp", Endpoint::parse(&node.tcp))] {
        spawned_beside_direct(&node, name, &endpoint, iterations).await;
    }
}

/// One endpoint's `generation` round trip, direct and by a spawned child.
async fn spawned_beside_direct(
    node: &BenchNode,
    name: &str,
    endpoint: &Endpoint,
    iterations: usize,
) {
    let reader = node.login_at(endpoint).await.reader("bench").unwrap();
    let direct = timed(iterations, || async {
        engram_client::generation(&reader).await.unwrap();
    })
    .await;
    let direct = report(&format!("tokens.{name}.direct_call"), &direct);
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["spawned-calls", "--calls", &iterations.to_string()])
        .stdout(Stdio::piped());
    let child = engram_client::spawn::spawn(
        endpoint,
        &Held::Reader(reader),
        "bench",
        &mut command,
        &Default::default(),
    )
    .await
    .expect("spawning the child");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "the spawned child failed");
    let nanoseconds: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|number| number.parse().unwrap())
        .collect();
    let spawned = Duration::from_nanos(nanoseconds[0]);
    print(
        &format!("tokens.{name}.spawned_call.p50"),
        spawned.as_secs_f64() * 1e6,
        "us",
    );
    print(
        &format!("tokens.{name}.spawned_call.p99"),
        Duration::from_nanos(nanoseconds[1]).as_secs_f64() * 1e6,
        "us",
    );
    print(
        &format!("tokens.{name}.spawned_over_direct"),
        spawned.as_secs_f64() / direct.as_secs_f64(),
        "x",
    );
}

/// The spawned child: `calls` generation calls through its inherited reader; prints the
/// p50 and p99 round trips in nanoseconds.
pub async fn spawned_calls(calls: usize) {
    let inherited = engram_client::spawn::inherited().expect("started by spawn");
    let Held::Reader(reader) = inherited.held else {
        panic!("the child expects a reader");
    };
    let times = timed(calls, || async {
        engram_client::generation(&reader).await.unwrap();
    })
    .await;
    println!(
        "{} {}",
        percentile(&times, 0.5).as_nanos(),
        percentile(&times, 0.99).as_nanos()
    );
}
