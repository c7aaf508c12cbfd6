//! An agent's life against a running node: log in, graft, remember what it observes, ask
//! what is known, and survive an epoch advance by grafting again.
//!
//! ```text
//! cargo run --release --bin engramd &                        # a node on ./engram-data
//! cargo run -p engram-examples --bin agent -- --world demo --advance
//! ```
//!
//! With `--advance` (admin keys only) the agent advances the epoch itself halfway, to show
//! what every agent sees when an operator does: its capabilities fail with `staleEpoch`,
//! and it grafts again and carries on.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use engram_client::engram_schema::engram_capnp::AtomKind;
use engram_client::{
    ClientError, Endpoint, ErrorCode, Filter, Membrane, NewAtom, Session, connect, keyfile,
};

#[derive(Parser)]
struct Arguments {
    /// HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:7420")]
    node: String,
    /// The agent's key file.
    #[arg(long, default_value = "./engram-data/admin.key")]
    key: PathBuf,
    /// The world to work in; created if missing and the key is an admin's.
    #[arg(long, default_value = "demo")]
    world: String,
    /// Advance the epoch halfway (admin only).
    #[arg(long)]
    advance: bool,
}

/// Remembers through the session's writer; on `staleEpoch`, grafts again and retries once.
async fn remember(
    membrane: &Membrane,
    session: &mut Session,
    world: &str,
    atom: NewAtom,
) -> Result<(), ClientError> {
    let attempt =
        engram_client::remember(&session.writer(world)?, std::slice::from_ref(&atom)).await;
    let receipts = match attempt {
        Err(error) if error.code() == Some(ErrorCode::StaleEpoch) => {
            println!("stale capability ({error}); grafting again");
            *session = membrane.graft().await?;
            println!("re-grafted under epoch {}", session.epoch.number);
            engram_client::remember(&session.writer(world)?, std::slice::from_ref(&atom)).await?
        }
        other => other?,
    };
    println!(
        "remembered {:?} as {} (commit {})",
        atom.text,
        &receipts[0].id_hex()[..16],
        receipts[0].commit
    );
    Ok(())
}

async fn run(arguments: Arguments) -> Result<(), ClientError> {
    let key = keyfile::read(&arguments.key)?;
    let connection = connect(&Endpoint::parse(&arguments.node)).await?;
    let membrane = connection.login(&key).await?;
    let mut session = membrane.graft().await?;
    println!(
        "logged in as {} in epoch {}",
        session.principal, session.epoch.number
    );
    if !session.worlds.contains_key(&arguments.world) {
        engram_client::create_world(&session.admin()?, &arguments.world).await?;
        session = membrane.graft().await?;
        println!("created world {}", arguments.world);
    }
    let world = arguments.world.as_str();
    remember(
        &membrane,
        &mut session,
        world,
        NewAtom::new(AtomKind::Observation, "the build is green").labels(&["ci"]),
    )
    .await?;
    remember(
        &membrane,
        &mut session,
        world,
        NewAtom::fact("deploys happen on Tuesdays")
            .labels(&["ops"])
            .importance(0.8),
    )
    .await?;
    if arguments.advance {
        let epoch = engram_client::advance_epoch(&session.admin()?, &[0x42; 32]).await?;
        println!("advanced the epoch to {}", epoch.number);
    }
    remember(
        &membrane,
        &mut session,
        world,
        NewAtom::new(AtomKind::Decision, "ship on Tuesday").labels(&["ops"]),
    )
    .await?;
    let facts = engram_client::ask(
        &session.reader(world)?,
        &Filter {
            labels: vec!["ops".into()],
            limit: 5,
            ..Filter::default()
        },
    )
    .await?;
    println!("known about ops:");
    for atom in facts {
        println!("  #{} {}", atom.commit, atom.text);
    }
    Ok(())
}

fn main() -> ExitCode {
    engram_client::run_program("agent", run(Arguments::parse()))
}
