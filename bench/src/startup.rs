//! Start-up and memory at scale: a node filled with `--atoms` text atoms (no vectors),
//! its memory beyond the page cache per atom once both indexes are caught up, and the
//! time from starting it again to accepting connections and to answering a ranked
//! (text) ask without a warning, after a clean stop and after `kill -9`.
//!
//! Memory beyond the page cache is the node's anonymous resident memory (`RssAnon`:
//! the text index's memory-mapped files are page cache, as redb's file is) less redb's
//! own cache (`--cache-mib`, run small here so it is a tight bound) and less what the
//! node held empty.

use std::time::{Duration, Instant};

use engram_client::NewAtom;

use crate::node::{BenchNode, until_indexed};
use crate::report::{mib, print};

/// Run small, so that redb's cache (anonymous memory) is a tight, known bound.
const CACHE_MIB: u64 = 16;

#[derive(clap::Args, Debug)]
pub struct Options {
    #[arg(long, default_value_t = 1_000_000)]
    atoms: usize,
    /// Atoms a batch.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Batches in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
}

const WORDS: [&str; 16] = [
    "argon", "token", "deploy", "cache", "latency", "schema", "replica", "lease", "quorum",
    "ledger", "cursor", "budget", "epoch", "signer", "world", "chain",
];

pub async fn run(options: Options) {
    let cache = CACHE_MIB.to_string();
    let mut node = BenchNode::start_with(&["--no-socket", "--cache-mib", &cache]);
    let empty_kib = node.memory_kib("RssAnon");
    let admin = node.login().await;
    engram_client::create_world(&admin.admin().expect("admin"), "bench")
        .await
        .expect("the world");
    let admin = node.login().await;
    let writer = admin.writer("bench").expect("a writer");
    let started = Instant::now();
    let batches = options.atoms.div_ceil(options.batch);
    let mut sent = 0;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for number in 0..batches {
        let atoms: Vec<NewAtom> = (0..options.batch.min(options.atoms - sent))
            .map(|index| {
                let at = sent + index;
                NewAtom::fact(format!(
                    "note {at}: the {} of the {} moved the {} past the {}",
                    WORDS[at % 16],
                    WORDS[(at / 16) % 16],
                    WORDS[(at / 256) % 16],
                    WORDS[(at / 4096) % 16]
                ))
            })
            .collect();
        sent += atoms.len();
        let writer = writer.clone();
        in_flight.push(async move { engram_client::remember(&writer, &atoms).await });
        if in_flight.len() >= options.in_flight {
            in_flight.next().await.expect("a batch").expect("remember");
        }
        if number % 100 == 99 {
            eprintln!("startup: {sent} atoms written");
        }
    }
    while let Some(done) = in_flight.next().await {
        done.expect("remember");
    }
    let written = started.elapsed();
    print("startup.atoms", sent as f64, "");
    print(
        "startup.write_rate",
        sent as f64 / written.as_secs_f64(),
        "atoms/s",
    );
    let indexed = until_indexed(&admin, "bench", &[]).await;
    print(
        "startup.indexed_after_writes",
        indexed.as_secs_f64() * 1e3,
        "ms",
    );
    let anonymous_kib = node.memory_kib("RssAnon");
    print("startup.node_rss", mib(node.memory_kib("VmRSS")), "MiB");
    print("startup.node_rss_anonymous", mib(anonymous_kib), "MiB");
    let beyond =
        (anonymous_kib.saturating_sub(empty_kib) * 1024).saturating_sub(CACHE_MIB * 1024 * 1024);
    print(
        "startup.memory_beyond_page_cache_per_atom",
        beyond as f64 / sent as f64,
        "bytes",
    );
    drop((writer, admin));

    node.stop();
    let (accepting, answering) = reopen(&mut node).await;
    print("startup.clean_to_accepting", ms(accepting), "ms");
    print(
        "startup.clean_to_ranked_ask_without_warning",
        ms(answering),
        "ms",
    );
    node.kill();
    let (accepting, answering) = reopen(&mut node).await;
    print("startup.killed_to_accepting", ms(accepting), "ms");
    print(
        "startup.killed_to_ranked_ask_without_warning",
        ms(answering),
        "ms",
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Starts the node again: how long until it accepted connections, and until a ranked
/// ask was answered without a warning (both from the start).
async fn reopen(node: &mut BenchNode) -> (Duration, Duration) {
    let accepting = node.restart();
    let started = Instant::now();
    let session = node.login().await;
    let answering = until_indexed(&session, "bench", &[]).await;
    (accepting, accepting + started.elapsed().max(answering))
}
