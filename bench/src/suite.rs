//! The suite: engram's figures side by side with the limits of its building blocks,
//! measured in the same run on the same machine (P1–P8 of the README).

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use engram_client::engram_schema::engram_capnp::{AtomKind, world_writer};
use engram_client::{Filter, NewAtom, Receipt};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::echo;
use crate::node::{BenchNode, EchoServer, until_indexed};
use crate::report::{mib, percentile, print};

pub struct Options {
    /// Atoms in the world for P5, P8 and the size figures.
    pub large_atoms: usize,
    /// Client connections of P2.
    pub connections: usize,
    /// Calls per sequential measurement (P3, P4, P5).
    pub calls: usize,
    pub seed: u64,
}

/// Labels the generated atoms carry (one each), and kinds they cycle through.
const LABELS: usize = 100;
const TEXT_BYTES: usize = echo::ECHO_TEXT_BYTES;
/// The size of one stored entry of a generated atom, for the redb baselines.
const ENTRY_BYTES: usize = 330;
const KINDS: [AtomKind; 4] = [
    AtomKind::Fact,
    AtomKind::Observation,
    AtomKind::Decision,
    AtomKind::Plan,
];
/// Chain entry context, as store/FORMAT.md documents it.
const CHAIN_ENTRY_CONTEXT: &str = "engram 2026-11 chain entry v1";
/// The baselines' own table: a random 32-byte key, as an id, to an entry's bytes.
const ATOMS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("atoms");
/// engram's entries table, as store/FORMAT.md documents it: (world, commit) → the
/// entry's id (32 bytes), then its bytes.
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");

fn atom(rng: &mut StdRng, number: usize) -> NewAtom {
    let mut text = format!("atom {number} ");
    while text.len() < TEXT_BYTES {
        text.push((b'a' + rng.random_range(0..26u8)) as char);
    }
    NewAtom::new(KINDS[number % KINDS.len()], text)
        .labels(&[&format!("label-{}", rng.random_range(0..LABELS))])
}

fn mean(durations: &[Duration]) -> Duration {
    durations.iter().sum::<Duration>() / durations.len().max(1) as u32
}

/// Times `calls` sequential calls of `call`.
async fn sequential<F, Fut>(calls: usize, mut call: F) -> Vec<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(calls);
    for index in 0..calls {
        let started = Instant::now();
        call(index).await;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    times
}

/// Runs `per_connection` sequential calls on each of `clients` concurrently; returns
/// the calls per second and the sorted latencies.
pub(crate) async fn concurrent<C, F, Fut>(
    clients: Vec<C>,
    per_connection: usize,
    call: F,
) -> (f64, Vec<Duration>)
where
    C: 'static,
    F: Fn(Rc<C>, usize) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let latencies = Rc::new(RefCell::new(Vec::new()));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let client = Rc::new(client);
            let latencies = latencies.clone();
            let call = call.clone();
            tokio::task::spawn_local(async move {
                for index in 0..per_connection {
                    let begun = Instant::now();
                    call(client.clone(), index).await;
                    latencies.borrow_mut().push(begun.elapsed());
                }
            })
        })
        .collect();
    let count = tasks.len() * per_connection;
    for task in tasks {
        task.await.expect("a client task");
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let mut latencies = latencies.take();
    latencies.sort_unstable();
    (rate, latencies)
}

async fn remember_one(writer: &world_writer::Client, atom: NewAtom) -> Receipt {
    engram_client::remember(writer, &[atom])
        .await
        .expect("remember")[0]
}

pub async fn run(options: Options) {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let echo_server = EchoServer::start();
    let (echo_reader, echo_writer) = echo::capabilities(&echo_server.tcp).await;
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let mut node = BenchNode::start();
    let admin = node.login().await;
    engram_client::create_world(&admin.admin().unwrap(), "bench")
        .await
        .unwrap();
    let admin = node.login().await;
    let writer = admin.writer("bench").unwrap();
    let reader = admin.reader("bench").unwrap();
    let mut ratios = Vec::new();

    // P1: batches of 1,000 durable, against redb writing 1,000 rows per durable transaction.
    let batches = 20;
    let started = Instant::now();
    for batch in 0..batches {
        let atoms: Vec<NewAtom> = (0..1000)
            .map(|index| atom(&mut rng, batch * 1000 + index))
            .collect();
        engram_client::remember(&writer, &atoms)
            .await
            .expect("batch");
    }
    let engram_rate = (batches * 1000) as f64 / started.elapsed().as_secs_f64();
    let redb_rate = redb_rows_per_second(&scratch.path().join("p1.redb"), batches, 1000);
    print("P1.engram_batch_remember", engram_rate, "atoms/s");
    print("P1.redb_batch_insert", redb_rate, "rows/s");
    ratios.push(("P1", engram_rate / redb_rate, "≥ 0.5"));

    // P3: one client, one atom at a time, against an echo round trip plus one durable
    // redb commit of one row. Each measurement starts with the indexes at rest.
    until_indexed(&admin, "bench", &[]).await;
    let calls = options.calls;
    let engram_times = sequential(calls, |index| {
        let writer = writer.clone();
        let atom = atom(&mut rng, 100_000 + index);
        async move {
            remember_one(&writer, atom).await;
        }
    })
    .await;
    let echo_remember_times = sequential(calls, |index| {
        let writer = echo_writer.clone();
        let atom = atom(&mut StdRng::seed_from_u64(index as u64), index);
        async move {
            remember_one(&writer, atom).await;
        }
    })
    .await;
    let commit_times = redb_single_commits(&scratch.path().join("p3.redb"), calls);
    let limit = mean(&echo_remember_times) + mean(&commit_times);
    print(
        "P3.engram_remember_mean",
        mean(&engram_times).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "P3.echo_round_trip_mean",
        mean(&echo_remember_times).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "P3.redb_durable_commit_mean",
        mean(&commit_times).as_secs_f64() * 1e3,
        "ms",
    );
    ratios.push((
        "P3",
        limit.as_secs_f64() / mean(&engram_times).as_secs_f64(),
        "≥ 0.8",
    ));

    // P2: one atom per call from many connections at once, against the echo with as many
    // connections.
    until_indexed(&admin, "bench", &[]).await;
    let per_connection = (calls / 4).max(50);
    let mut writers = Vec::new();
    for _ in 0..options.connections {
        writers.push(node.login().await.writer("bench").unwrap());
    }
    let mut echo_writers = Vec::new();
    for _ in 0..options.connections {
        echo_writers.push(echo::capabilities(&echo_server.tcp).await.1);
    }
    let text: Rc<NewAtom> = Rc::new(atom(&mut rng, 7));
    let remember_call = {
        let text = text.clone();
        move |writer: Rc<world_writer::Client>, _| {
            let atom = (*text).clone();
            async move {
                remember_one(&writer, atom).await;
            }
        }
    };
    let (engram_rate, engram_latencies) =
        concurrent(writers, per_connection, remember_call.clone()).await;
    let (echo_rate, _) = concurrent(echo_writers, per_connection, remember_call).await;
    print("P2.engram_concurrent_remember", engram_rate, "atoms/s");
    print(
        "P2.engram_concurrent_remember_p50",
        percentile(&engram_latencies, 0.5).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "P2.engram_concurrent_remember_p99",
        percentile(&engram_latencies, 0.99).as_secs_f64() * 1e3,
        "ms",
    );
    print("P2.echo_concurrent", echo_rate, "calls/s");
    ratios.push(("P2", engram_rate / echo_rate, "≥ 0.5 and ≥ 50,000 atoms/s"));

    // Fill the world to `large_atoms`, from four connections at once.
    let loaded = fill(&node, options.large_atoms, options.seed).await;
    print("load.rate", loaded, "atoms/s");
    until_indexed(&admin, "bench", &[]).await;

    // P4: get by id, one client, against an echo of the same sizes. Each is timed after a
    // first pass over the same ids, once the pages they touch are in the node's cache;
    // engram's first pass, which reads them from the file, is printed beside.
    let (sample, _) = engram_client::replay(&reader, 0, 1000)
        .await
        .expect("replay");
    let ids: Vec<[u8; 32]> = sample.iter().map(|atom| atom.id).collect();
    let engram_get = |index: usize| {
        let reader = reader.clone();
        let id = ids[index % ids.len()];
        async move {
            engram_client::get(&reader, &id).await.expect("get");
        }
    };
    let echo_get = |_| {
        let reader = echo_reader.clone();
        async move {
            engram_client::get(&reader, &[1; 32])
                .await
                .expect("echo get");
        }
    };
    let first_pass_times = sequential(ids.len(), engram_get).await;
    let engram_times = sequential(calls, engram_get).await;
    sequential(ids.len(), echo_get).await;
    let echo_times = sequential(calls, echo_get).await;
    print(
        "P4.engram_get_first_pass_mean",
        mean(&first_pass_times).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "P4.engram_get_mean",
        mean(&engram_times).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "P4.echo_get_mean",
        mean(&echo_times).as_secs_f64() * 1e3,
        "ms",
    );
    ratios.push((
        "P4",
        mean(&echo_times).as_secs_f64() / mean(&engram_times).as_secs_f64(),
        "≥ 0.83",
    ));

    // P5: ask with kind and label filters in the large world, limit 10.
    let engram_times = sequential(calls, |index| {
        let reader = reader.clone();
        let filter = Filter {
            kinds: vec![AtomKind::Fact],
            labels: vec![format!("label-{}", index % LABELS)],
            limit: 10,
            ..Filter::default()
        };
        async move {
            let hits = engram_client::ask(&reader, &filter).await.expect("ask");
            assert_eq!(hits.len(), 10, "the world holds enough matches");
        }
    })
    .await;
    let echo_times = sequential(calls, |_| {
        let reader = echo_reader.clone();
        let filter = Filter {
            limit: 10,
            ..Filter::default()
        };
        async move {
            engram_client::ask(&reader, &filter)
                .await
                .expect("echo ask");
        }
    })
    .await;
    print(
        "P5.engram_ask_p50",
        percentile(&engram_times, 0.5).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "P5.engram_ask_p99",
        percentile(&engram_times, 0.99).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "P5.echo_ask_p99",
        percentile(&echo_times, 0.99).as_secs_f64() * 1e3,
        "ms",
    );
    ratios.push((
        "P5",
        percentile(&engram_times, 0.99).as_secs_f64() / percentile(&echo_times, 0.99).as_secs_f64(),
        "≤ 2 (p99 over echo p99)",
    ));

    // Size and memory at `large_atoms`.
    let atoms_total = (20 + 1 + 1) * 1000
        + calls * 2
        + per_connection * options.connections
        + options.large_atoms;
    print("size.atoms", atoms_total as f64, "");
    print("size.node_rss", mib(node.memory_kib("VmRSS")), "MiB");

    // P8: verify every chain of the world, against reading the same entries from redb in
    // key order and hashing them with BLAKE3.
    let started = Instant::now();
    let report = engram_client::verify(&reader).await.expect("verify");
    let verify_time = started.elapsed();
    assert_eq!(report.first_bad, None);
    let engram_rate = report.entries as f64 / verify_time.as_secs_f64();
    print("P8.engram_verify", engram_rate, "entries/s");
    drop((writer, reader, admin));
    node.stop();
    // redb grows its file in large steps: the blocks allocated say what is used.
    let file = std::fs::metadata(node.store_path()).expect("the store");
    print(
        "size.bytes_on_disk_per_atom",
        (file.blocks() * 512) as f64 / atoms_total as f64,
        "bytes",
    );
    print(
        "size.file_bytes_per_atom",
        file.len() as f64 / atoms_total as f64,
        "bytes",
    );
    let baseline_rate = redb_read_and_hash(&node.store_path());
    print("P8.redb_read_and_blake3", baseline_rate, "entries/s");
    ratios.push(("P8", engram_rate / baseline_rate, "≥ 0.5"));

    let startup = node.restart();
    print("startup.time_to_ready", startup.as_secs_f64() * 1e3, "ms");

    println!();
    for (name, ratio, goal) in ratios {
        println!("ratio.{name}: {ratio:.2} (goal {goal})");
    }
}

/// Fills the world to `total` atoms in batches of 1,000 from four connections; returns
/// the load rate.
async fn fill(node: &BenchNode, total: usize, seed: u64) -> f64 {
    const CONNECTIONS: usize = 4;
    let batches = total.div_ceil(1000);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let writer = node.login().await.writer("bench").unwrap();
        tasks.push(tokio::task::spawn_local(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (connection as u64 + 1));
            for batch in (connection..batches).step_by(CONNECTIONS) {
                let atoms: Vec<NewAtom> = (0..1000)
                    .map(|index| atom(&mut rng, 1_000_000 + batch * 1000 + index))
                    .collect();
                engram_client::remember(&writer, &atoms)
                    .await
                    .expect("load batch");
            }
        }));
    }
    let mut tasks: futures::stream::FuturesUnordered<_> = tasks.into_iter().collect();
    while let Some(result) = tasks.next().await {
        result.expect("a load task");
    }
    (batches * 1000) as f64 / started.elapsed().as_secs_f64()
}

fn entry(rng: &mut StdRng) -> Vec<u8> {
    (0..ENTRY_BYTES)
        .map(|_| rng.random_range(0..=255u8))
        .collect()
}

/// redb: `batches` durable write transactions of `rows` rows of an entry's size.
fn redb_rows_per_second(path: &std::path::Path, batches: usize, rows: usize) -> f64 {
    let database = redb::Database::create(path).expect("a redb file");
    let mut rng = StdRng::seed_from_u64(1);
    let values: Vec<([u8; 32], Vec<u8>)> = (0..batches * rows)
        .map(|_| (rng.random::<[u8; 32]>(), entry(&mut rng)))
        .collect();
    let started = Instant::now();
    for chunk in values.chunks(rows) {
        let transaction = database.begin_write().expect("a write transaction");
        {
            let mut table = transaction.open_table(ATOMS).expect("the table");
            for (key, value) in chunk {
                table.insert(key, value.as_slice()).expect("insert");
            }
        }
        transaction.commit().expect("commit");
    }
    (batches * rows) as f64 / started.elapsed().as_secs_f64()
}

/// redb: `commits` durable write transactions of one row each; their durations.
fn redb_single_commits(path: &std::path::Path, commits: usize) -> Vec<Duration> {
    let database = redb::Database::create(path).expect("a redb file");
    let mut rng = StdRng::seed_from_u64(2);
    let mut times = Vec::with_capacity(commits);
    for _ in 0..commits {
        let key: [u8; 32] = rng.random();
        let value = entry(&mut rng);
        let started = Instant::now();
        let transaction = database.begin_write().expect("a write transaction");
        {
            let mut table = transaction.open_table(ATOMS).expect("the table");
            table.insert(key, value.as_slice()).expect("insert");
        }
        transaction.commit().expect("commit");
        times.push(started.elapsed());
    }
    times
}

/// Reads every stored entry of engram's entries table in key order and hashes it as a
/// chain entry; entries per second.
fn redb_read_and_hash(path: &std::path::Path) -> f64 {
    let database = redb::Database::open(path).expect("the engram store");
    let transaction = database.begin_read().expect("a read transaction");
    let table = transaction.open_table(ENTRIES).expect("the entries table");
    let started = Instant::now();
    let mut entries = 0usize;
    let mut digest = 0u8;
    for row in table.iter().expect("iterating") {
        let (_, value) = row.expect("a row");
        let mut hasher = blake3::Hasher::new_derive_key(CHAIN_ENTRY_CONTEXT);
        hasher.update(&value.value()[32..]);
        digest ^= hasher.finalize().as_bytes()[0];
        entries += 1;
    }
    std::hint::black_box(digest);
    entries as f64 / started.elapsed().as_secs_f64()
}
