//! Knowledge agents can trust, against a running node: a lead who states a constraint
//! and approves proposals, and a worker agent who proposes, and checks its plan against
//! the constraints before acting on it.
//!
//! ```text
//! cargo run --release --bin engramd &                        # a node on ./engram-data
//! cargo run -p engram-examples --bin knowledge -- --world team/auth
//! ```
//!
//! The admin key (`--key`) sets the scene: it creates the world and two principals with
//! fresh keys, `lead-<n>` holding the approve right and `worker-<n>` without it; then
//! each logs in as itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use engram_client::engram_schema::engram_capnp::{AtomKind, LifecycleState, TransitionKind};
use engram_client::{
    ClientError, Endpoint, Filter, Grant, NewAtom, Session, connect, keyfile, state_name,
};

#[derive(Parser)]
struct Arguments {
    /// HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:7420")]
    node: String,
    /// An admin's key file.
    #[arg(long, default_value = "./engram-data/admin.key")]
    key: PathBuf,
    /// The world to work in; created if missing.
    #[arg(long, default_value = "team/auth")]
    world: String,
}

async fn login(
    endpoint: &Endpoint,
    key: &ed25519_dalek::SigningKey,
) -> Result<Session, ClientError> {
    connect(endpoint).await?.login(key).await?.graft().await
}

/// The worker's side: before acting, check the plan; revise it until nothing objects.
async fn act_on_checked_plan(worker: &Session, world: &str) -> Result<(), ClientError> {
    let reader = worker.reader(world)?;
    let labels = vec!["http".to_string()];
    let mut plan = "fetch the signing keys from the JWKS endpoint with requests".to_string();
    loop {
        println!("worker: checking plan {plan:?}");
        let answer = engram_client::check(&reader, &plan, &labels).await?;
        if answer.violations.is_empty() {
            break;
        }
        for found in &answer.violations {
            println!(
                "worker: the plan violates {:?} (stated by {}, commit {}; matched {})",
                found.constraint.text,
                &hex(&found.constraint.writer)[..16],
                found.constraint.commit,
                found.matched.join(", ")
            );
        }
        // The constraint says what to use instead; a real agent would ask its model.
        plan = plan.replace("requests", "httpx");
    }
    println!("worker: the plan violates no constraint; acting on it");
    engram_client::remember(
        &worker.writer(world)?,
        &[NewAtom::new(AtomKind::Observation, format!("done: {plan}")).labels(&["http"])],
    )
    .await?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn run(arguments: Arguments) -> Result<(), ClientError> {
    let endpoint = Endpoint::parse(&arguments.node);
    let world = arguments.world.as_str();
    let admin = login(&endpoint, &keyfile::read(&arguments.key)?).await?;
    if !admin.worlds.contains_key(world) {
        engram_client::create_world(&admin.admin()?, world).await?;
        println!("created world {world}");
    }
    // Two principals with fresh keys (a deployment would hand each its key file).
    let suffix = engram_client::current_epoch(&admin.admin()?)
        .await?
        .advanced_at_unix_ms;
    let mut sessions = Vec::new();
    for (role, rights) in [("lead", "rwoa"), ("worker", "rwo")] {
        let key = keyfile::generate()?;
        let name = format!("{role}-{suffix}-{}", std::process::id());
        let grant = Grant::parse(&format!("{world}={rights}"))?;
        engram_client::add_principal(
            &admin.admin()?,
            &name,
            key.verifying_key().as_bytes(),
            false,
            &[grant],
        )
        .await?;
        println!("added {name} with rights {rights}");
        sessions.push(login(&endpoint, &key).await?);
    }
    let (lead, worker) = (&sessions[0], &sessions[1]);

    // The lead states a constraint.
    engram_client::remember(
        &lead.writer(world)?,
        &[NewAtom::constraint(
            "do not use library requests for HTTP; use httpx",
            &["requests"],
        )
        .labels(&["http"])],
    )
    .await?;
    println!("lead: stated the constraint: do not use library requests for HTTP; use httpx");

    // The worker proposes; a proposal is not yet knowledge.
    let proposal = NewAtom::new(AtomKind::Decision, "JWT algorithm: ES256")
        .labels(&["jwt"])
        .proposed();
    engram_client::remember(&worker.writer(world)?, &[proposal]).await?;
    let jwt = Filter {
        labels: vec!["jwt".into()],
        ..Filter::default()
    };
    let current = engram_client::ask(&worker.reader(world)?, &jwt).await?;
    println!(
        "worker: proposed \"JWT algorithm: ES256\"; current knowledge on jwt holds {} atoms",
        current.len()
    );
    // It may not approve its own proposal.
    if let Err(error) = engram_client::transition(
        &worker.writer(world)?,
        &engram_client::ask(
            &worker.reader(world)?,
            &Filter {
                states: vec![LifecycleState::Proposed],
                ..jwt.clone()
            },
        )
        .await?[0]
            .id,
        TransitionKind::Approve,
        "",
    )
    .await
    {
        println!("worker: approving its own proposal: {error}");
    }

    act_on_checked_plan(worker, world).await?;

    // The lead reviews the proposals and approves them.
    let proposals = engram_client::ask(
        &lead.reader(world)?,
        &Filter {
            states: vec![LifecycleState::Proposed],
            ..Filter::default()
        },
    )
    .await?;
    for proposed in &proposals {
        engram_client::transition(
            &lead.writer(world)?,
            &proposed.id,
            TransitionKind::Approve,
            "reviewed: ES256 keys are smaller and our libraries support them",
        )
        .await?;
        println!("lead: approved {:?}", proposed.text);
    }
    for atom in engram_client::ask(&worker.reader(world)?, &jwt).await? {
        println!(
            "worker: current knowledge on jwt: {:?} ({})",
            atom.text,
            state_name(atom.state)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    engram_client::run_program("knowledge", run(Arguments::parse()))
}
