//! Check: the pre-flight check of plans against a world of many constraints, one
//! client, one call at a time: latency percentiles, and how many constraints each check
//! examined (candidates from the forbidden-words index).

use std::time::{Duration, Instant};

use engram_client::NewAtom;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::node::BenchNode;
use crate::report::{percentile, print};

pub struct Options {
    pub constraints: usize,
    pub checks: usize,
    /// Words in each plan, besides the forbidden names it mentions.
    pub plan_words: usize,
    pub seed: u64,
}

/// Words plans are made of; some are in forbidden phrases too ("use", "client").
const VOCABULARY: &[&str] = &[
    "fetch", "the", "page", "parse", "response", "then", "store", "result", "in", "a", "table",
    "retry", "on", "failure", "with", "backoff", "use", "client", "for", "http", "calls", "and",
    "log", "each", "request", "to", "file", "check", "status", "code", "before", "writing",
    "cache", "token", "refresh", "when", "expired", "send", "batch",
];

/// Scopes constraints are labelled with; each plan is checked under one.
const SCOPES: usize = 20;

pub async fn run(options: Options) {
    let node = BenchNode::start();
    let admin = node.login().await;
    engram_client::create_world(&admin.admin().unwrap(), "bench")
        .await
        .unwrap();
    let session = node.login().await;
    let writer = session.writer("bench").unwrap();
    let reader = session.reader("bench").unwrap();
    // Each constraint forbids one library by name and one phrase that starts with a
    // common word ("use client7 directly"), as real rules do.
    let started = Instant::now();
    for first in (0..options.constraints).step_by(1_000) {
        let batch: Vec<NewAtom> = (first..(first + 1_000).min(options.constraints))
            .map(|index| {
                let name = format!("lib{index:05}");
                let phrase = format!("use client{index} directly");
                NewAtom::constraint(
                    format!("do not use {name} or client{index} directly; use the wrapper"),
                    &[name.as_str(), phrase.as_str()],
                )
                .labels(&[format!("scope{}", index % SCOPES).as_str()])
            })
            .collect();
        engram_client::remember(&writer, &batch).await.unwrap();
    }
    print(
        "check.constraints_written_per_second",
        options.constraints as f64 / started.elapsed().as_secs_f64(),
        "atoms/s",
    );

    let mut random = StdRng::seed_from_u64(options.seed);
    let plan = |random: &mut StdRng| {
        let mut words: Vec<String> = (0..options.plan_words)
            .map(|_| VOCABULARY[random.random_range(0..VOCABULARY.len())].to_owned())
            .collect();
        // Two library names, in scope or not, at random places.
        for _ in 0..2 {
            let index = random.random_range(0..options.constraints);
            let at = random.random_range(0..words.len());
            words.insert(at, format!("lib{index:05}"));
        }
        let scope = format!("scope{}", random.random_range(0..SCOPES));
        (words.join(" "), vec![scope])
    };
    for _ in 0..100 {
        let (text, labels) = plan(&mut random);
        engram_client::check(&reader, &text, &labels).await.unwrap();
    }
    let mut latencies = Vec::with_capacity(options.checks);
    let mut violations = 0;
    for _ in 0..options.checks {
        let (text, labels) = plan(&mut random);
        let sent = Instant::now();
        let answer = engram_client::check(&reader, &text, &labels).await.unwrap();
        latencies.push(sent.elapsed());
        assert!(answer.warning.is_empty(), "{}", answer.warning);
        violations += answer.violations.len();
    }
    latencies.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    print("check.constraints", options.constraints as f64, "");
    print("check.plan_words", (options.plan_words + 2) as f64, "");
    print("check.checks", options.checks as f64, "");
    print(
        "check.violations_per_check",
        violations as f64 / options.checks as f64,
        "",
    );
    print("check.latency_p50", ms(percentile(&latencies, 0.5)), "ms");
    print("check.latency_p99", ms(percentile(&latencies, 0.99)), "ms");
    print("check.latency_max", ms(*latencies.last().unwrap()), "ms");
}
