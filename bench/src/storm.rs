//! The crash storm: writer processes remember over TCP while the node is killed with
//! SIGKILL at random moments and started again, over and over. Each writer sends every
//! request (one atom, or a batch of up to 8) with an idempotency key and retries it
//! through the kills (`engram_client::remember_retrying`), printing each receipt it is
//! given. At the end every acknowledged atom must be in the world exactly once, no
//! request may be there in part or twice, and every chain must verify.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engram_client::{Endpoint, IdempotencyKey, NewAtom, Session, keyfile};
use rand::{RngExt, SeedableRng};

use crate::node::BenchNode;
use crate::report::print;

const WORLD: &str = "storm";

/// (writer, request).
type RequestOf = (usize, u64);
/// An atom of a request as stored: (its position in the request, the request's size,
/// its id).
type StoredAtom = (usize, usize, String);

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Times the node is killed with SIGKILL and started again.
    #[arg(long, default_value_t = 50)]
    pub kills: usize,
    /// Writer processes.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Acknowledged atoms between two kills, at most (the number is drawn from 1 up).
    #[arg(long, default_value_t = 300)]
    pub acks_between_kills: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// One writer process: `engram-bench storm-writer`.
#[derive(clap::Args, Clone, Debug)]
pub struct WriterOptions {
    /// The file holding the node's current TCP address (rewritten at each restart).
    #[arg(long)]
    pub address_file: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub index: usize,
    #[arg(long)]
    pub seed: u64,
}

pub fn run(options: Options) {
    let started = Instant::now();
    let mut node = BenchNode::start();
    let directory = tempfile::tempdir().expect("a temporary directory");
    let address_file = directory.path().join("address");
    publish(&address_file, &node.tcp);
    let keys: Vec<PathBuf> = engram_client::run_local(async {
        let admin = node.login().await;
        let admin_capability = admin.admin().expect("the admin");
        engram_client::create_world(&admin_capability, WORLD)
            .await
            .expect("the world");
        let mut keys = Vec::new();
        for index in 0..options.writers {
            let key = keyfile::generate().expect("a key");
            let grants = [engram_client::Grant::parse(&format!("{WORLD}=rw")).expect("a grant")];
            engram_client::add_principal(
                &admin_capability,
                &format!("writer{index}"),
                key.verifying_key().as_bytes(),
                false,
                &grants,
            )
            .await
            .expect("a writer principal");
            let path = directory.path().join(format!("writer{index}.key"));
            keyfile::write_new(&path, &key).expect("a key file");
            keys.push(path);
        }
        keys
    })
    .expect("a runtime");

    // Each writer prints `ack REQUEST ATOMS ID...` per receipt; one thread per writer
    // passes its lines on.
    let (lines, acks) = mpsc::channel::<(usize, String)>();
    let mut writers: Vec<Child> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().expect("the benchmark's path"))
            .arg("storm-writer")
            .arg("--address-file")
            .arg(&address_file)
            .arg("--key")
            .arg(key)
            .args(["--index", &index.to_string()])
            .args(["--seed", &(options.seed + index as u64).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send((index, line)).is_err() {
                    return;
                }
            }
        });
        writers.push(child);
    }
    drop(lines);

    let mut chance = rand::rngs::StdRng::seed_from_u64(options.seed);
    // (writer, request) → the ids acknowledged for it.
    let mut acknowledged: BTreeMap<RequestOf, Vec<String>> = BTreeMap::new();
    let mut acknowledged_atoms = 0usize;
    let mut take = |wanted: usize, acknowledged: &mut BTreeMap<RequestOf, Vec<String>>| {
        let goal = acknowledged_atoms + wanted;
        while acknowledged_atoms < goal {
            let (index, line) = acks
                .recv_timeout(Duration::from_secs(60))
                .expect("the writers keep acknowledging");
            let mut fields = line.split_whitespace();
            assert_eq!(fields.next(), Some("ack"), "a writer printed {line:?}");
            let request: u64 = fields
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a request");
            let ids: Vec<String> = fields.map(str::to_owned).collect();
            acknowledged_atoms += ids.len();
            let earlier = acknowledged.insert((index, request), ids);
            assert!(
                earlier.is_none(),
                "request {request} of writer {index} answered twice"
            );
        }
    };
    let mut restart_ms = Vec::new();
    for _ in 0..options.kills {
        take(
            chance.random_range(1..=options.acks_between_kills),
            &mut acknowledged,
        );
        node.kill();
        restart_ms.push(node.restart().as_secs_f64() * 1000.0);
        publish(&address_file, &node.tcp);
    }
    take(options.acks_between_kills, &mut acknowledged);
    for writer in &mut writers {
        let _ = writer.kill();
        let _ = writer.wait();
    }

    // What the world holds, by writer and request.
    let (stored, verified) = engram_client::run_local(async {
        let admin = node.login().await;
        let reader = admin.reader(WORLD).expect("a reader");
        let mut stored: HashMap<RequestOf, Vec<StoredAtom>> = HashMap::new();
        let mut from = 0;
        loop {
            let (atoms, next) = engram_client::replay(&reader, from, 1000)
                .await
                .expect("replay");
            for atom in &atoms {
                let (writer, request, position, size) = parse_text(&atom.text);
                stored.entry((writer, request)).or_default().push((
                    position,
                    size,
                    hex_id(&atom.id),
                ));
            }
            if atoms.is_empty() || next == from {
                break;
            }
            from = next;
        }
        let verified = engram_client::verify(&reader).await.expect("verify");
        (stored, verified)
    })
    .expect("a runtime");

    let mut partial = 0;
    let mut duplicated = 0;
    for atoms in stored.values() {
        let size = atoms[0].1;
        let mut positions: Vec<usize> = atoms.iter().map(|atom| atom.0).collect();
        positions.sort_unstable();
        positions.dedup();
        if atoms.len() > size || positions.len() < atoms.len() {
            duplicated += 1;
        } else if positions.len() != size {
            partial += 1;
        }
    }
    let mut missing = 0;
    let mut changed = 0;
    for (request, ids) in &acknowledged {
        match stored.get(request) {
            None => missing += ids.len(),
            Some(atoms) => {
                let mut stored_ids: Vec<&String> = atoms.iter().map(|atom| &atom.2).collect();
                stored_ids.sort();
                let mut acknowledged_ids: Vec<&String> = ids.iter().collect();
                acknowledged_ids.sort();
                if stored_ids != acknowledged_ids {
                    changed += 1;
                }
            }
        }
    }
    let stored_atoms: usize = stored.values().map(Vec::len).sum();
    print("storm.kills", options.kills as f64, "");
    print("storm.writers", options.writers as f64, "");
    print(
        "storm.acknowledged_atoms_checked",
        acknowledged_atoms as f64,
        "",
    );
    print("storm.atoms_stored", stored_atoms as f64, "");
    print(
        "storm.acknowledged_atoms_missing",
        missing as f64,
        "(must be 0)",
    );
    print(
        "storm.acknowledged_requests_stored_otherwise",
        changed as f64,
        "(must be 0)",
    );
    print(
        "storm.requests_stored_in_part",
        partial as f64,
        "(must be 0)",
    );
    print(
        "storm.requests_stored_twice",
        duplicated as f64,
        "(must be 0)",
    );
    print(
        "storm.chains_verified",
        verified.chains as f64,
        if verified.first_bad.is_none() {
            "(all)"
        } else {
            "(one failed)"
        },
    );
    restart_ms.sort_by(f64::total_cmp);
    print(
        "storm.restart_median",
        restart_ms[restart_ms.len() / 2],
        "ms",
    );
    print("storm.elapsed", started.elapsed().as_secs_f64(), "s");
    let clean = missing == 0
        && changed == 0
        && partial == 0
        && duplicated == 0
        && verified.first_bad.is_none()
        && verified.entries as usize == stored_atoms;
    if !clean {
        eprintln!("engram-bench storm: the store broke a promise (see the lines above)");
        std::process::exit(1);
    }
}

/// Writes the node's address where the writers read it, atomically.
fn publish(address_file: &Path, tcp: &str) {
    let staging = address_file.with_extension("new");
    std::fs::write(&staging, tcp).expect("writing the address");
    std::fs::rename(&staging, address_file).expect("publishing the address");
}

fn hex_id(id: &[u8; 32]) -> String {
    id.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `w{writer} r{request} {position}/{size} …` → its numbers.
fn parse_text(text: &str) -> (usize, u64, usize, usize) {
    let mut fields = text.split_whitespace();
    let mut number = |prefix: &str| -> &str {
        fields
            .next()
            .and_then(|field| field.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("an atom no writer wrote: {text:?}"))
    };
    let writer = number("w").parse().expect("a writer");
    let request = number("r").parse().expect("a request");
    let (position, size) = number("")
        .split_once('/')
        .and_then(|(position, size)| Some((position.parse().ok()?, size.parse().ok()?)))
        .unwrap_or_else(|| panic!("an atom no writer wrote: {text:?}"));
    (writer, request, position, size)
}

/// A writer: requests one after another, each retried with its key until answered.
pub async fn writer(options: WriterOptions) {
    let key = keyfile::read(&options.key).expect("the writer's key");
    let mut chance = rand::rngs::StdRng::seed_from_u64(options.seed);
    // The session in use: the first attempt of a request uses it, a retry connects
    // again (to the address the storm published last) and keeps that one.
    let held: RefCell<Option<Session>> = RefCell::new(None);
    let attempts = Cell::new(0u32);
    let acquire = || async {
        attempts.set(attempts.get() + 1);
        if attempts.get() == 1
            && let Some(session) = held.borrow().as_ref()
        {
            return session.writer(WORLD);
        }
        held.borrow_mut().take();
        let address = std::fs::read_to_string(&options.address_file).map_err(|source| {
            engram_client::ClientError::Connect {
                endpoint: options.address_file.display().to_string(),
                source,
            }
        })?;
        let session = engram_client::connect(&Endpoint::Tcp(address))
            .await?
            .login(&key)
            .await?
            .graft()
            .await?;
        let writer = session.writer(WORLD);
        *held.borrow_mut() = Some(session);
        writer
    };
    let mut stdout = std::io::stdout().lock();
    for request in 0u64.. {
        let size = if chance.random_bool(0.3) {
            chance.random_range(2..=8)
        } else {
            1
        };
        let atoms: Vec<NewAtom> = (0..size)
            .map(|position| {
                NewAtom::fact(format!(
                    "w{} r{request} {position}/{size} written through the storm",
                    options.index
                ))
            })
            .collect();
        let idempotency_key =
            IdempotencyKey::new(format!("w{}-r{request}", options.index)).expect("a key");
        attempts.set(0);
        let remembered =
            engram_client::remember_retrying(&acquire, &atoms, &idempotency_key, u32::MAX)
                .await
                .expect("retried until answered");
        let ids: Vec<String> = remembered
            .receipts
            .iter()
            .map(|receipt| receipt.id_hex())
            .collect();
        writeln!(stdout, "ack {request} {}", ids.join(" ")).expect("the storm reads");
        stdout.flush().expect("the storm reads");
    }
}
