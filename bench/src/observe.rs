//! Observe: subscribers on one node, one writer, commit-to-delivery latency, delivered
//! events per second, and the node's memory with a stalled subscriber among them.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use engram_client::{Filter, NewAtom, WatchEvent};
use futures::StreamExt;

use crate::node::BenchNode;
use crate::report::{mib, percentile, print};

pub struct Options {
    pub subscribers: usize,
    pub atoms: usize,
    pub in_flight: usize,
}

/// Runs the scenario twice, with and without a stalled subscriber, so the node's memory
/// growth that the stalled subscriber causes can be told from the store's own cache.
pub async fn run(options: Options) {
    let without = scenario(&options, false).await;
    let with = scenario(&options, true).await;
    print("observe.subscribers", options.subscribers as f64, "");
    print("observe.atoms_written", options.atoms as f64, "");
    print("observe.write_rate", with.write_rate, "atoms/s");
    print("observe.delivery_latency_p50", with.latency_p50_ms, "ms");
    print("observe.delivery_latency_p99", with.latency_p99_ms, "ms");
    print("observe.delivered_rate", with.delivered_rate, "events/s");
    print(
        "observe.node_rss_growth_without_stalled_subscriber",
        without.rss_growth_mib,
        "MiB",
    );
    print(
        "observe.node_rss_growth_with_stalled_subscriber",
        with.rss_growth_mib,
        "MiB",
    );
    print(
        "observe.node_rss_peak_with_stalled_subscriber",
        with.rss_peak_mib,
        "MiB",
    );
}

struct Figures {
    write_rate: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    delivered_rate: f64,
    rss_growth_mib: f64,
    rss_peak_mib: f64,
}

async fn scenario(options: &Options, stalled: bool) -> Figures {
    let node = BenchNode::start();
    let admin = node.login().await;
    engram_client::create_world(&admin.admin().unwrap(), "bench")
        .await
        .unwrap();
    let admin = node.login().await;

    // Send time of each atom, by index; the atom's text carries its index.
    let sent: Rc<RefCell<Vec<Option<Instant>>>> = Rc::new(RefCell::new(vec![None; options.atoms]));
    let latencies: Rc<RefCell<Vec<Duration>>> = Rc::new(RefCell::new(Vec::with_capacity(
        options.subscribers * options.atoms,
    )));
    let (done, mut finished) = futures::channel::mpsc::unbounded::<Instant>();

    let mut watches = Vec::new();
    for _ in 0..options.subscribers {
        let session = node.login().await;
        let watch =
            engram_client::subscribe(&session.observer("bench").unwrap(), &Filter::default(), 0)
                .await
                .unwrap();
        watches.push((session, watch));
    }
    // One subscriber that never reads: the node must hold it back, not buffer for it.
    let mut _stalled = None;
    if stalled {
        let session = node.login().await;
        let watch =
            engram_client::subscribe(&session.observer("bench").unwrap(), &Filter::default(), 0)
                .await
                .unwrap();
        _stalled = Some((session, watch));
    }

    for (session, mut watch) in watches {
        let sent = sent.clone();
        let latencies = latencies.clone();
        let done = done.clone();
        let expected = options.atoms;
        tokio::task::spawn_local(async move {
            let _session = session;
            let mut received = 0;
            while received < expected {
                match watch.next().await {
                    Some(WatchEvent::Atoms(atoms)) => {
                        let now = Instant::now();
                        let sent = sent.borrow();
                        let mut latencies = latencies.borrow_mut();
                        for atom in &atoms {
                            let index: usize = atom.text.parse().expect("index text");
                            latencies.push(now - sent[index].expect("sent before delivered"));
                        }
                        received += atoms.len();
                    }
                    other => panic!("subscription ended: {other:?}"),
                }
            }
            let _ = done.unbounded_send(Instant::now());
        });
    }

    let rss_before_kib = node.memory_kib("VmRSS");
    let writer = admin.writer("bench").unwrap();
    let started = Instant::now();
    let mut next = 0;
    let mut pending = futures::stream::FuturesUnordered::new();
    while next < options.atoms || !pending.is_empty() {
        while next < options.atoms && pending.len() < options.in_flight {
            let atom = NewAtom::fact(next.to_string());
            sent.borrow_mut()[next] = Some(Instant::now());
            let writer = writer.clone();
            pending.push(async move { engram_client::remember(&writer, &[atom]).await });
            next += 1;
        }
        pending
            .next()
            .await
            .expect("pending write")
            .expect("remember");
    }
    let written = started.elapsed();
    let mut last = started;
    for _ in 0..options.subscribers {
        last = last.max(finished.next().await.expect("a subscriber finished"));
    }
    let elapsed = last - started;
    let peak_kib = node.memory_kib("VmHWM");

    let mut latencies = latencies.borrow_mut();
    latencies.sort_unstable();
    Figures {
        write_rate: options.atoms as f64 / written.as_secs_f64(),
        latency_p50_ms: percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        latency_p99_ms: percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        delivered_rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        rss_growth_mib: mib(peak_kib.saturating_sub(rss_before_kib)),
        rss_peak_mib: mib(peak_kib),
    }
}
