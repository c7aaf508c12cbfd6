//! engram's benchmarks. Each starts a real `engramd` (the release build beside this
//! binary) in a temporary directory and drives it over loopback TCP, printing one
//! `name: value unit` line per figure.
//!
//! ```text
//! cargo build --release --bins && target/release/engram-bench observe
//! ```

mod node;
mod observe;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "engram-bench")]
struct Arguments {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
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
