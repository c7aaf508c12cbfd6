//! Similarity search in `ask`: the known nearest atoms of a small seeded set, the
//! dimension rules, filters and restrictions applied inside the search, and the same
//! answers after a restart with the persisted index, without it, and after kill -9;
//! snapshots written while the node runs, which a start after a crash loads.

use engram_client::engram_schema::engram_capnp::AtomKind;
use engram_client::{ErrorCode, Filter, NewAtom, Restriction, Session};
use engram_tests::{TestNode, assert_code, run_local, session};

const DIMENSIONS: usize = 16;
const CLUSTERS: usize = 4;
const ATOMS: usize = 240;

/// A seeded generator (64-bit LCG): the same vectors on every run.
struct Seeded(u64);

impl Seeded {
    fn next_unit(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// Atom `index`: a cluster centre plus small noise; every tenth carries label "rare".
fn vectors() -> Vec<Vec<f32>> {
    let mut seeded = Seeded(7);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| (0..DIMENSIONS).map(|_| seeded.next_unit() * 4.0).collect())
        .collect();
    (0..ATOMS)
        .map(|index| {
            centres[index % CLUSTERS]
                .iter()
                .map(|value| value + seeded.next_unit() * 0.6)
                .collect()
        })
        .collect()
}

fn cosine(left: &[f32], right: &[f32]) -> f32 {
    let dot: f32 = left.iter().zip(right).map(|(a, b)| a * b).sum();
    let norm = |vector: &[f32]| vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    dot / (norm(left) * norm(right))
}

/// The indexes of the `k` best atoms for `query` among those `keep` allows, computed
/// exactly with the schema's documented ranking: of the 4k most similar, the best by
/// 0.9 (asserted) × (0.7 × similarity + 0.1 × importance (0.5 here) + 0.1 × commit /
/// last commit (atom `i` is commit `i + 1` of `ATOMS`) + 0.1 × trust (0.5: no links)).
fn exact(all: &[Vec<f32>], query: &[f32], k: usize, keep: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut similar: Vec<(f32, usize)> = (0..all.len())
        .filter(|index| keep(*index))
        .map(|index| (cosine(&all[index], query), index))
        .collect();
    similar.sort_by(|left, right| right.0.total_cmp(&left.0));
    similar.truncate(4 * k);
    let mut ranked: Vec<(f64, usize)> = similar
        .into_iter()
        .map(|(similarity, index)| {
            let recency = (index + 1) as f64 / ATOMS as f64;
            (
                0.9 * (0.7 * f64::from(similarity) + 0.1 * 0.5 + 0.1 * recency + 0.1 * 0.5),
                index,
            )
        })
        .collect();
    ranked.sort_by(|left, right| right.0.total_cmp(&left.0));
    ranked.into_iter().take(k).map(|(_, index)| index).collect()
}

async fn seeded_world(node: &TestNode) -> (Session, Vec<Vec<f32>>) {
    let admin = session(&node.tcp(), &node.admin_key()).await;
    engram_client::create_world(&admin.admin().unwrap(), "vectors")
        .await
        .unwrap();
    let admin = session(&node.tcp(), &node.admin_key()).await;
    let all = vectors();
    let atoms: Vec<NewAtom> = all
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let labels: &[&str] = if index % 10 == 0 {
                &["rare"]
            } else {
                &["common"]
            };
            NewAtom::fact(format!("{index}"))
                .labels(labels)
                .vector(vector.clone())
        })
        .collect();
    engram_client::remember(&admin.writer("vectors").unwrap(), &atoms)
        .await
        .unwrap();
    (admin, all)
}

/// The texts (atom indexes) of a similarity ask.
async fn similar(session: &Session, filter: Filter) -> Vec<usize> {
    engram_client::ask(&session.reader("vectors").unwrap(), &filter)
        .await
        .unwrap()
        .into_iter()
        .map(|atom| atom.text.parse().unwrap())
        .collect()
}

fn by_vector(vector: &[f32], limit: u32) -> Filter {
    Filter {
        vector: vector.to_vec(),
        limit,
        ..Filter::default()
    }
}

#[test]
fn similarity_finds_the_known_nearest_atoms() {
    let node = TestNode::start();
    run_local(async {
        let (admin, all) = seeded_world(&node).await;
        for probe in [0, 57, 130, 239] {
            let found = similar(&admin, by_vector(&all[probe], 10)).await;
            assert_eq!(
                found,
                exact(&all, &all[probe], 10, |_| true),
                "probe {probe}"
            );
            assert!(
                found
                    .iter()
                    .all(|index| index % CLUSTERS == probe % CLUSTERS)
            );
        }
        let answer = engram_client::ask_scored(
            &admin.reader("vectors").unwrap(),
            &Filter {
                explain: true,
                ..by_vector(&all[239], 3)
            },
        )
        .await
        .unwrap();
        let own = answer
            .hits
            .iter()
            .find(|hit| hit.atom.text == "239")
            .unwrap();
        assert!((own.similarity - 1.0).abs() < 1e-4, "{}", own.similarity);
        assert!(
            answer.hits[0].explanation.starts_with("similarity "),
            "{}",
            answer.hits[0].explanation
        );
        assert!(answer.hits[0].score >= answer.hits[1].score);
    });
}

#[test]
fn vectors_and_queries_follow_the_dimension_rules() {
    let node = TestNode::start();
    run_local(async {
        let (admin, all) = seeded_world(&node).await;
        let writer = admin.writer("vectors").unwrap();
        let reader = admin.reader("vectors").unwrap();
        for (case, vector) in [
            ("wrong dimension", vec![1.0; DIMENSIONS + 1]),
            ("all zeros", vec![0.0; DIMENSIONS]),
            ("not finite", {
                let mut vector = all[0].clone();
                vector[3] = f32::INFINITY;
                vector
            }),
        ] {
            let result =
                engram_client::remember(&writer, &[NewAtom::fact(case).vector(vector)]).await;
            match result {
                Err(error) => assert_eq!(
                    error.code(),
                    Some(ErrorCode::InvalidArgument),
                    "{case}: {error}"
                ),
                Ok(_) => panic!("{case}: accepted"),
            }
        }
        for query in [
            vec![1.0; DIMENSIONS - 1],
            vec![0.0; DIMENSIONS],
            vec![f32::NAN; DIMENSIONS],
        ] {
            assert_code(
                engram_client::ask(&reader, &by_vector(&query, 5)).await,
                ErrorCode::InvalidArgument,
            );
        }
        let (atoms, _) = engram_client::replay(&reader, 0, 1000).await.unwrap();
        assert_eq!(atoms.len(), ATOMS, "rejected atoms wrote nothing");
    });
}

#[test]
fn filters_and_restrictions_hold_inside_the_search() {
    let node = TestNode::start();
    run_local(async {
        let (admin, all) = seeded_world(&node).await;
        // Ask near a common atom for rare ones only: still k results, all rare.
        let rare = Filter {
            labels: vec!["rare".into()],
            ..by_vector(&all[1], 8)
        };
        let found = similar(&admin, rare).await;
        assert_eq!(found, exact(&all, &all[1], 8, |index| index % 10 == 0));
        // A reader restricted to "common" never receives a rare atom, even the query's
        // own nearest neighbour.
        let reader = engram_client::attenuate_reader(
            &admin.reader("vectors").unwrap(),
            &Restriction {
                labels: vec!["common".into()],
                kinds: vec![AtomKind::Fact],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let found: Vec<usize> = engram_client::ask(&reader, &by_vector(&all[20], 10))
            .await
            .unwrap()
            .into_iter()
            .map(|atom| atom.text.parse().unwrap())
            .collect();
        assert_eq!(found, exact(&all, &all[20], 10, |index| index % 10 != 0));
        assert!(!found.contains(&20));
    });
}

#[test]
fn answers_are_the_same_after_a_restart_and_after_kill_9() {
    let mut node = TestNode::start();
    let probes = [5, 88, 201];
    let before = run_local(async {
        let (admin, all) = seeded_world(&node).await;
        let mut answers = Vec::new();
        for probe in probes {
            answers.push(similar(&admin, by_vector(&all[probe], 10)).await);
        }
        answers
    });
    let check = |node: &TestNode| {
        run_local(async {
            let admin = session(&node.tcp(), &node.admin_key()).await;
            let all = vectors();
            for (probe, expected) in probes.iter().zip(&before) {
                assert_eq!(
                    &similar(&admin, by_vector(&all[*probe], 10)).await,
                    expected
                );
            }
        })
    };
    // A clean stop persists the index; the next start loads it.
    node.stop();
    assert!(node.data_dir().join("vector-index/manifest").exists());
    node.restart();
    check(&node);
    node.stop();
    // The log is complete once the node has exited: the start above loaded the snapshot.
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("vector index loaded")
                && line.contains(&format!("atoms={ATOMS}"))),
        "the restart did not load the persisted index:\n{log}"
    );
    // A damaged snapshot is ignored and rebuilt: cut the graph file short.
    let graph_file = node.data_dir().join("vector-index/world-0.hnsw.graph");
    let length = std::fs::metadata(&graph_file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&graph_file)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    node.restart();
    check(&node);
    node.stop();
    // Without the persisted index the node rebuilds it from the store.
    std::fs::remove_dir_all(node.data_dir().join("vector-index")).unwrap();
    node.restart();
    check(&node);
    // Killed, the node starts from its last snapshot and catches up from the store.
    node.kill();
    node.restart();
    check(&node);
}

#[test]
fn a_node_writes_snapshots_as_it_runs_so_a_crash_costs_no_rebuild() {
    let mut node = TestNode::start_with(&["--vector-snapshot-ms", "100"]);
    run_local(async {
        seeded_world(&node).await;
        node.until_logged(
            &format!("vector index snapshot written saved=true atoms={ATOMS}"),
            1,
            std::time::Duration::from_secs(30),
        )
        .await;
    });
    // No clean stop: the snapshot written while the node ran is what the next start
    // loads.
    node.kill();
    node.restart();
    // The node loads its snapshot before it stops (the indexer thread's first work).
    node.stop();
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    let loads: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("vector index loaded"))
        .collect();
    assert_eq!(loads.len(), 2, "{log}");
    assert!(
        loads[0].contains("atoms=0"),
        "the first start had nothing to load"
    );
    assert!(
        loads[1].contains(&format!("atoms={ATOMS}")),
        "the start after the crash loaded the snapshot:\n{log}"
    );
}
