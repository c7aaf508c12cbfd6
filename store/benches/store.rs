//! Micro-benchmarks of the store's hot paths, so regressions show up for developers:
//! `cargo bench -p engram-store`. Data is generated from a fixed seed.

use criterion::{Criterion, criterion_group, criterion_main};
use engram_store::atom::{EntryHeader, decode_entry, encode_entry, entry_hash};
use engram_store::{
    AtomContent, AtomKind, Authority, Grant, Principal, Query, ReadBudget, Store, WriteOp,
    WriteOutcome, WriteRequest,
};

const WRITER: [u8; 32] = [7; 32];

fn content(number: u64) -> AtomContent {
    let mut content = AtomContent::new(
        [AtomKind::Fact, AtomKind::Decision, AtomKind::Plan][(number % 3) as usize],
        format!("atom {number} {}", "x".repeat(190)),
    );
    content.labels = vec![format!("label-{}", number % 100)];
    content
}

fn remember(atoms: Vec<AtomContent>) -> WriteRequest {
    WriteRequest {
        authority: Authority::Principal {
            key: WRITER,
            epoch: 1,
        },
        op: WriteOp::Remember {
            world: "bench".into(),
            atoms,
            key: None,
        },
    }
}

fn store(directory: &tempfile::TempDir) -> Store {
    let store = Store::open(directory.path().join("bench.redb")).unwrap();
    for op in [
        WriteOp::CreateWorld {
            name: "bench".into(),
            dimension: 0,
        },
        WriteOp::AddPrincipal(Principal {
            name: "writer".into(),
            public_key: WRITER,
            admin: false,
            grants: vec![Grant {
                world: "bench".into(),
                read: true,
                write: true,
                observe: true,
                approve: false,
                rate: Default::default(),
            }],
        }),
    ] {
        store
            .apply_one(WriteRequest {
                authority: Authority::Node,
                op,
            })
            .unwrap();
    }
    store
}

fn benchmarks(criterion: &mut Criterion) {
    let directory = tempfile::tempdir().unwrap();
    let store = store(&directory);
    let mut number = 0;
    let mut ids = Vec::new();
    for _ in 0..100 {
        let batch = (0..1000).map(|_| {
            number += 1;
            content(number)
        });
        match store.apply_one(remember(batch.collect())).unwrap() {
            WriteOutcome::Remembered { receipts, .. } => {
                ids.extend(receipts.iter().step_by(97).map(|receipt| receipt.id))
            }
            other => panic!("{other:?}"),
        }
    }

    criterion.bench_function("chain append: one durable atom", |bench| {
        bench.iter(|| {
            number += 1;
            store.apply_one(remember(vec![content(number)])).unwrap()
        })
    });
    criterion.bench_function("chain append: group of 24 one-atom requests", |bench| {
        bench.iter(|| {
            let group: Vec<WriteRequest> = (0..24)
                .map(|_| {
                    number += 1;
                    remember(vec![content(number)])
                })
                .collect();
            store.apply(&group).unwrap()
        })
    });
    criterion.bench_function("chain append: durable batch of 1000", |bench| {
        bench.iter(|| {
            let batch = (0..1000)
                .map(|_| {
                    number += 1;
                    content(number)
                })
                .collect();
            store.apply_one(remember(batch)).unwrap()
        })
    });
    let header = EntryHeader {
        world: "bench",
        writer: &WRITER,
        seq: 1,
        prev: &[0; 32],
        commit: 1,
        recorded_at_unix_ms: 1_795_000_000_000,
    };
    let atom = content(1);
    let mut entry = Vec::with_capacity(1024);
    criterion.bench_function("entry: encode one atom", |bench| {
        bench.iter(|| {
            entry.clear();
            encode_entry(&header, std::hint::black_box(&atom), &mut entry);
        })
    });
    criterion.bench_function("entry hash: one encoded atom", |bench| {
        bench.iter(|| entry_hash(std::hint::black_box(&entry)))
    });
    let id = entry_hash(&entry);
    criterion.bench_function("entry: decode one atom", |bench| {
        bench.iter(|| decode_entry(id, std::hint::black_box(&entry)).unwrap())
    });
    let view = store.read().unwrap();
    let mut next = 0;
    criterion.bench_function("get: decode one atom by id", |bench| {
        bench.iter(|| {
            next = (next + 1) % ids.len();
            view.atom("bench", &ids[next]).unwrap()
        })
    });
    criterion.bench_function("get: one atom by id, one Store::read per call", |bench| {
        bench.iter(|| {
            next = (next + 1) % ids.len();
            store.read().unwrap().atom("bench", &ids[next]).unwrap()
        })
    });
    let mut label = 0;
    criterion.bench_function("ask: kind and label from indexes, limit 10", |bench| {
        bench.iter(|| {
            label = (label + 1) % 100;
            let query = Query {
                kinds: vec![AtomKind::Fact],
                labels: vec![format!("label-{label}")],
                limit: 10,
                ..Query::default()
            };
            view.ask("bench", &query, ReadBudget::CALL, &|_| true)
                .unwrap()
        })
    });
}

criterion_group!(store_benches, benchmarks);
criterion_main!(store_benches);
