//! Similarity search: clustered vectors in one world, asked through the RPC path from
//! this client process; recall@10 against an exact search, latency with and without a
//! filter that keeps 10% of the atoms, index build and rebuild time, and the exact scan
//! for the ratio. Every vector comes from the seed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use engram_client::{Filter, NewAtom, Session};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::node::{BenchNode, until_indexed};
use crate::report::{percentile, print};

pub struct Options {
    pub atoms: usize,
    pub dimensions: usize,
    pub clusters: usize,
    pub queries: usize,
    pub seed: u64,
}

const K: usize = 10;
/// The label that one atom in ten carries, for the filtered searches.
const SELECTED: &str = "selected";

fn unit(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    vector.iter().map(|value| value / norm).collect()
}

fn dot(left: &[f32], right: &[f32]) -> f32 {
    left.iter().zip(right).map(|(a, b)| a * b).sum()
}

/// The exact answer under the schema's ranking: of the 4k most similar allowed atoms, the
/// best k by 0.9 (asserted) × (0.7 × similarity + 0.1 × importance (0.5) + 0.1 × commit
/// / last commit + 0.1 × trust (0.5: no links)).
fn exact(
    units: &[Vec<f32>],
    commits: &[u64],
    last_commit: u64,
    query: &[f32],
    allowed: impl Fn(usize) -> bool,
) -> Vec<u64> {
    let query = unit(query);
    let mut similar: Vec<(f32, usize)> = (0..units.len())
        .filter(|index| allowed(*index))
        .map(|index| (dot(&units[index], &query), index))
        .collect();
    similar.sort_by(|left, right| right.0.total_cmp(&left.0));
    similar.truncate(4 * K);
    let mut ranked: Vec<(f64, u64)> = similar
        .into_iter()
        .map(|(similarity, index)| {
            let recency = commits[index] as f64 / last_commit as f64;
            (
                0.9 * (0.7 * f64::from(similarity) + 0.05 + 0.1 * recency + 0.05),
                commits[index],
            )
        })
        .collect();
    ranked.sort_by(|left, right| right.0.total_cmp(&left.0));
    ranked
        .into_iter()
        .take(K)
        .map(|(_, commit)| commit)
        .collect()
}

/// Asks every query; returns the sorted latencies, the recall against `exact` and
/// whether any answer carried a warning.
async fn measure(
    session: &Session,
    queries: &[Vec<f32>],
    labels: Vec<String>,
    expected: &[Vec<u64>],
) -> (Vec<Duration>, f64, bool) {
    let reader = session.reader("vectors").expect("a reader");
    let mut latencies = Vec::with_capacity(queries.len());
    let mut found_total = 0;
    let mut warned = false;
    for (query, expected) in queries.iter().zip(expected) {
        let filter = Filter {
            vector: query.clone(),
            labels: labels.clone(),
            limit: K as u32,
            ..Filter::default()
        };
        let started = Instant::now();
        let answer = engram_client::ask_scored(&reader, &filter)
            .await
            .expect("ask");
        latencies.push(started.elapsed());
        warned |= !answer.warning.is_empty();
        let expected: HashSet<u64> = expected.iter().copied().collect();
        found_total += answer
            .hits
            .iter()
            .filter(|hit| expected.contains(&hit.atom.commit))
            .count();
    }
    latencies.sort_unstable();
    let recall = found_total as f64 / (expected.len() * K) as f64;
    (latencies, recall, warned)
}

pub async fn run(options: Options) {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let centres: Vec<Vec<f32>> = (0..options.clusters)
        .map(|_| {
            (0..options.dimensions)
                .map(|_| rng.random_range(-1.0..1.0f32))
                .collect()
        })
        .collect();
    let noisy = |rng: &mut StdRng, centre: &[f32]| -> Vec<f32> {
        centre
            .iter()
            .map(|value| value + rng.random_range(-0.25..0.25f32))
            .collect()
    };
    let vectors: Vec<Vec<f32>> = (0..options.atoms)
        .map(|index| noisy(&mut rng, &centres[index % options.clusters]))
        .collect();
    let queries: Vec<Vec<f32>> = (0..options.queries)
        .map(|_| {
            let centre = rng.random_range(0..options.clusters);
            noisy(&mut rng, &centres[centre])
        })
        .collect();
    let selected = |index: usize| index % 10 == 3;

    let mut node = BenchNode::start();
    let admin = node.login().await;
    engram_client::create_world(&admin.admin().unwrap(), "vectors")
        .await
        .unwrap();
    let admin = node.login().await;
    let writer = admin.writer("vectors").unwrap();
    let started = Instant::now();
    let mut commits = Vec::with_capacity(options.atoms);
    for (chunk_index, chunk) in vectors.chunks(1000).enumerate() {
        let atoms: Vec<NewAtom> = chunk
            .iter()
            .enumerate()
            .map(|(offset, vector)| {
                let index = chunk_index * 1000 + offset;
                let label = if selected(index) { SELECTED } else { "other" };
                NewAtom::fact(format!("vector {index}"))
                    .labels(&[label])
                    .vector(vector.clone())
            })
            .collect();
        let receipts = engram_client::remember(&writer, &atoms)
            .await
            .expect("remember");
        commits.extend(receipts.iter().map(|receipt| receipt.commit));
    }
    let written = started.elapsed();
    let probe = &queries[0];
    let indexed_after_writes = until_indexed(&admin, "vectors", probe).await;
    let build = written + indexed_after_writes;
    print("vectors.atoms", options.atoms as f64, "");
    print("vectors.dimensions", options.dimensions as f64, "");
    print(
        "vectors.remember_rate",
        options.atoms as f64 / written.as_secs_f64(),
        "atoms/s",
    );
    print(
        "vectors.index_build_rate_vector_and_text",
        options.atoms as f64 / build.as_secs_f64(),
        "atoms/s",
    );

    let last_commit = *commits.last().expect("atoms were written");
    let units: Vec<Vec<f32>> = vectors.iter().map(|vector| unit(vector)).collect();
    let exact_started = Instant::now();
    let expected_all: Vec<Vec<u64>> = queries
        .iter()
        .map(|query| exact(&units, &commits, last_commit, query, |_| true))
        .collect();
    let exact_scan = exact_started.elapsed() / options.queries as u32;
    let expected_selected: Vec<Vec<u64>> = queries
        .iter()
        .map(|query| exact(&units, &commits, last_commit, query, selected))
        .collect();

    let (latencies, recall, warned) = measure(&admin, &queries, Vec::new(), &expected_all).await;
    assert!(!warned, "the index was caught up");
    print("vectors.recall_at_10", recall, "");
    print(
        "vectors.ask_p50",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "vectors.ask_p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        "ms",
    );
    let (latencies, recall, _) =
        measure(&admin, &queries, vec![SELECTED.into()], &expected_selected).await;
    print("vectors.recall_at_10_filtered_10pct", recall, "");
    print(
        "vectors.ask_filtered_p50",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "vectors.ask_filtered_p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        "ms",
    );
    print(
        "vectors.exact_scan_in_process",
        exact_scan.as_secs_f64() * 1e3,
        "ms",
    );

    drop((writer, admin));
    // A clean stop persists the index: reopening loads it.
    node.stop();
    let ready = node.restart();
    let loaded = until_indexed(&node.login().await, "vectors", probe).await;
    print("vectors.reopen_to_ready", ready.as_secs_f64() * 1e3, "ms");
    print(
        "vectors.reopen_index_present",
        (ready + loaded).as_secs_f64() * 1e3,
        "ms",
    );
    // Without it, the node rebuilds the index from the store.
    node.stop();
    std::fs::remove_dir_all(node.data_dir().join("vector-index")).expect("the persisted index");
    let ready = node.restart();
    let rebuilt = until_indexed(&node.login().await, "vectors", probe).await;
    print(
        "vectors.reopen_index_rebuilt",
        (ready + rebuilt).as_secs_f64() * 1e3,
        "ms",
    );
}
