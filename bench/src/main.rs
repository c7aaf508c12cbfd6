//! engram's benchmarks. Each starts a real `engramd` (the release build beside this
//! binary) in a temporary directory and drives it over loopback TCP, printing one
//! `name: value unit` line per figure.
//!
//! ```text
//! cargo build --release --bins && target/release/engram-bench all
//! cargo build --release --bins && target/release/engram-bench observe
//! cargo build --release --bins && target/release/engram-bench abuse
//! cargo build --release --bins && target/release/engram-bench check
//! cargo build --release --bins && target/release/engram-bench storm
//! cargo build --release --bins && target/release/engram-bench fleet   # needs nats-server
//! ```

mod abuse;
mod check;
mod echo;
mod fleet;
mod node;
mod observe;
mod report;
mod startup;
mod storm;
mod suite;
mod tokens;
mod vectors;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "engram-bench")]
struct Arguments {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
    /// The suite: engram beside redb and a Cap'n Proto echo, figures P1–P8 and ratios.
    All {
        /// Atoms in the world for the ask, verify, size and start-up figures.
        #[arg(long, default_value_t = 1_000_000)]
        large_atoms: usize,
        /// Client connections for the concurrent remember figure (P2).
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Calls per sequential measurement.
        #[arg(long, default_value_t = 2_000)]
        calls: usize,
        /// Seed of every generated atom.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Similarity search on clustered vectors: recall, latency, build and rebuild.
    Vectors {
        #[arg(long, default_value_t = 100_000)]
        atoms: usize,
        #[arg(long, default_value_t = 384)]
        dimensions: usize,
        #[arg(long, default_value_t = 100)]
        clusters: usize,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Good clients (remember, ask, search, subscribe) alone and beside hostile ones
    /// (idle sockets, login floods, unread pipelined reads, a stuck subscriber, crafted
    /// vectors, full-scan asks): their throughput and p99, and the node's peak RSS.
    Abuse(abuse::Options),
    /// The pre-flight check of plans against a world of many constraints.
    Check {
        #[arg(long, default_value_t = 10_000)]
        constraints: usize,
        #[arg(long, default_value_t = 2_000)]
        checks: usize,
        /// Words in each plan, besides the two library names it mentions.
        #[arg(long, default_value_t = 60)]
        plan_words: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// The crash storm: writer processes remember through SIGKILLs of the node; every
    /// acknowledged atom must be there once, no request in part or twice. Exits 1 when
    /// the store broke a promise.
    Storm(storm::Options),
    /// A node of a million text atoms: its memory beyond the page cache per atom, and
    /// start-up to a ranked ask without a warning after a clean stop and after kill -9.
    Startup(startup::Options),
    /// Three nodes in a fleet (nats-server with JetStream) beside one alone: remember
    /// throughput and p99, replication lag, failover time.
    Fleet(fleet::Options),
    /// One writer of `storm`, in a process of its own (started by `storm`).
    #[command(hide = true)]
    StormWriter(storm::WriterOptions),
    /// The hostile clients of `abuse`, in a process of their own (started by `abuse`).
    #[command(hide = true)]
    AbuseHostile {
        #[arg(long)]
        tcp: String,
        #[arg(long)]
        key: std::path::PathBuf,
        #[command(flatten)]
        hostile: abuse::HostileOptions,
    },
    /// The Cap'n Proto echo baseline server (started by `all`).
    /// `restore` beside `login + graft`, and a spawned child's call beside a direct call.
    Tokens {
        #[arg(long, default_value_t = 2_000)]
        iterations: usize,
    },
    #[command(hide = true)]
    SpawnedCalls {
        #[arg(long)]
        calls: usize,
    },
    #[command(hide = true)]
    EchoServer,
    /// Subscribers watching one world while one writer remembers atoms, plus one
    /// subscriber that never reads.
    Observe {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 10_000)]
        atoms: usize,
        /// Remember calls the writer keeps in flight.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
    },
}

fn main() {
    let arguments = Arguments::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    match arguments.benchmark {
        Benchmark::All {
            large_atoms,
            connections,
            calls,
            seed,
        } => local.block_on(
            &runtime,
            suite::run(suite::Options {
                large_atoms,
                connections,
                calls,
                seed,
            }),
        ),
        Benchmark::EchoServer => local.block_on(&runtime, echo::serve()),
        Benchmark::Tokens { iterations } => {
            local.block_on(&runtime, tokens::run(tokens::Options { iterations }))
        }
        Benchmark::SpawnedCalls { calls } => local.block_on(&runtime, tokens::spawned_calls(calls)),
        Benchmark::AbuseHostile { tcp, key, hostile } => {
            local.block_on(&runtime, abuse::serve_hostile(tcp, key, hostile))
        }
        Benchmark::Abuse(options) => local.block_on(&runtime, abuse::run(options)),
        Benchmark::Startup(options) => local.block_on(&runtime, startup::run(options)),
        Benchmark::Check {
            constraints,
            checks,
            plan_words,
            seed,
        } => local.block_on(
            &runtime,
            check::run(check::Options {
                constraints,
                checks,
                plan_words,
                seed,
            }),
        ),
        Benchmark::Vectors {
            atoms,
            dimensions,
            clusters,
            queries,
            seed,
        } => local.block_on(
            &runtime,
            vectors::run(vectors::Options {
                atoms,
                dimensions,
                clusters,
                queries,
                seed,
            }),
        ),
        Benchmark::Storm(options) => storm::run(options),
        Benchmark::Fleet(options) => local.block_on(&runtime, fleet::run(options)),
        Benchmark::StormWriter(options) => local.block_on(&runtime, storm::writer(options)),
        Benchmark::Observe {
            subscribers,
            atoms,
            in_flight,
        } => local.block_on(
            &runtime,
            observe::run(observe::Options {
                subscribers,
                atoms,
                in_flight,
            }),
        ),
    }
}
