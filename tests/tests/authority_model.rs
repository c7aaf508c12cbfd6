//! Property: whatever chain of derivations a holder makes from its grants — `attenuate`
//! online, `save` and `restore` (with or without `withoutSave`), a token narrowed
//! offline with any biscuit block, a block that restates an authority fact, a handoff
//! to a child on the node's Unix socket (as `engram spawn` makes) — with hostile strings
//! in every string it controls (quotes, braces, datalog, control characters, NUL,
//! strings too long), what the resulting capability can do on a real node is exactly
//! what a model of authority says, never more: the atoms it reads, the atoms it may
//! write (as its own principal), the atoms whose lifecycle it may move (a retraction of
//! its own atom), whether it may save, which derivations are refused and with which
//! code.
//!
//! The model is written here from the schema (`Restriction`, `tokenFormat`), not from
//! the node's code. A seeded few hundred chains run in CI; the documented long run:
//! `ENGRAM_AUTHORITY_CASES=10000 ENGRAM_AUTHORITY_SEED=7 cargo nextest run -p
//! engram-tests --test authority_model`. Rates are out of its scope (they are
//! `harm_rates`'s): a rate is a bound in time, not a set of allowed acts.

use std::cell::RefCell;

use capnp::capability::FromClientHook;
use std::collections::BTreeSet;

use engram_client::engram_schema::engram_capnp::AtomKind;
use engram_client::spawn::Held;
use engram_client::token::{self, Narrowing};
use engram_client::{ClientError, ErrorCode, Filter, Grant, NewAtom, Restriction, connect};
use engram_tests::{TestNode, admin_with_world, run_local};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Labels atoms carry, hostile ones among them: a string that would close a datalog
/// set and state facts, one that would split into two labels, datalog keywords, and
/// characters that are no ASCII.
const LABELS: [&str; 6] = [
    "public",
    "ops",
    "x\"});right(\"writer\");world(\"team/secret\");labels({\"y",
    "p\", \"public",
    "ops\"}); check if true; rule($x) <- labels($x); labels({\"z",
    "ünï \"ç\" ∅ {}",
];

/// Strings a holder may try as restriction labels or world names: the labels above,
/// and ones no atom can carry (refused online; offline they narrow to nothing).
const HOSTILE: [&str; 5] = ["a\nb", "nul\0byte", "", "team/a\"})", "\""];

const WORLDS: [&str; 3] = ["team/a", "team/b", "team/w"];
const KINDS: [AtomKind; 2] = [AtomKind::Fact, AtomKind::Decision];
const IMPORTANCES: [f32; 4] = [0.25, 0.5, 0.75, 1.0];

/// What a capability may do, by the schema.
#[derive(Clone, Debug)]
struct Model {
    world: &'static str,
    /// `None`: every label.
    labels: Option<BTreeSet<String>>,
    kinds: Option<BTreeSet<AtomKindKey>>,
    max_importance: f32,
    save: bool,
    /// Attenuated to worlds that exclude its own: every call is refused.
    dead: bool,
}

/// `AtomKind` ordered, for sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct AtomKindKey(u16);

fn key(kind: AtomKind) -> AtomKindKey {
    AtomKindKey(kind as u16)
}

impl Model {
    fn narrow(&mut self, narrowing: &Narrow) {
        fn intersect<T: Ord + Clone>(held: &mut Option<BTreeSet<T>>, new: BTreeSet<T>) {
            *held = Some(match held.take() {
                None => new,
                Some(held) => held.intersection(&new).cloned().collect(),
            });
        }
        if let Some(labels) = &narrowing.labels
            && !labels.is_empty()
        {
            intersect(&mut self.labels, labels.iter().cloned().collect());
        }
        if let Some(kinds) = &narrowing.kinds
            && !kinds.is_empty()
        {
            intersect(
                &mut self.kinds,
                kinds.iter().map(|kind| key(*kind)).collect(),
            );
        }
        if let Some(max) = narrowing.max_importance {
            self.max_importance = self.max_importance.min(max);
        }
        if let Some(worlds) = &narrowing.worlds
            && !worlds.is_empty()
            && !worlds.iter().any(|world| world == self.world)
        {
            self.dead = true;
        }
        self.save &= !narrowing.without_save;
    }

    /// Whether a reader under this model sees an atom.
    fn shows(&self, atom: &Known) -> bool {
        self.labels
            .as_ref()
            .is_none_or(|labels| atom.labels.iter().any(|label| labels.contains(label)))
            && self
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&key(atom.kind)))
            && atom.importance <= self.max_importance
    }

    /// Whether a writer under this model may write an atom.
    fn may_write(&self, atom: &Known) -> bool {
        self.labels.as_ref().is_none_or(|labels| {
            !atom.labels.is_empty() && atom.labels.iter().all(|label| labels.contains(label))
        }) && self
            .kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&key(atom.kind)))
            && atom.importance <= self.max_importance
    }
}

/// An atom of the test's worlds.
#[derive(Clone, Debug)]
struct Known {
    id: [u8; 32],
    labels: Vec<String>,
    kind: AtomKind,
    importance: f32,
}

/// One narrowing a holder asks for, online or offline.
#[derive(Clone, Debug)]
struct Narrow {
    labels: Option<Vec<String>>,
    kinds: Option<Vec<AtomKind>>,
    max_importance: Option<f32>,
    /// Online only: a restriction's worlds.
    worlds: Option<Vec<String>>,
    without_save: bool,
}

impl Narrow {
    /// Whether the node must refuse it online (`invalidArgument`): a label no atom can
    /// carry.
    fn invalid_online(&self) -> bool {
        self.labels.iter().flatten().any(|label| {
            label.is_empty() || label.len() > 128 || label.chars().any(char::is_control)
        })
    }

    fn restriction(&self) -> Restriction {
        Restriction {
            labels: self.labels.clone().unwrap_or_default(),
            kinds: self.kinds.clone().unwrap_or_default(),
            max_importance: self.max_importance.unwrap_or(1.0),
            worlds: self.worlds.clone().unwrap_or_default(),
            without_save: self.without_save,
            ..Restriction::default()
        }
    }

    fn narrowing(&self) -> Narrowing {
        Narrowing {
            labels: self
                .labels
                .as_ref()
                .filter(|labels| !labels.is_empty())
                .map(|labels| labels.iter().cloned().collect()),
            kinds: self
                .kinds
                .as_ref()
                .filter(|kinds| !kinds.is_empty())
                .map(|kinds| {
                    kinds
                        .iter()
                        .map(|kind| kind_name(*kind).to_owned())
                        .collect()
                }),
            max_importance_millionths: self.max_importance.map(|max| (max * 1e6) as u32),
            without_save: self.without_save,
            ..Narrowing::default()
        }
    }
}

fn kind_name(kind: AtomKind) -> &'static str {
    match kind {
        AtomKind::Fact => "fact",
        AtomKind::Decision => "decision",
        _ => unreachable!("the test uses facts and decisions"),
    }
}

/// An authority fact a holder's block restates: every one refuses the token.
#[derive(Clone, Copy, Debug)]
enum Forged {
    Principal,
    Right,
    World,
    Epoch,
    Lineage,
}

#[derive(Clone, Debug)]
enum Step {
    Attenuate(Narrow),
    SaveRestore {
        without_save: bool,
    },
    Offline(Narrow),
    Forge(Forged),
    /// Saved, and handed to a child on the node's Unix socket; the child's capability
    /// goes on.
    Handoff,
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(&LABELS[..]).prop_map(str::to_owned),
        2 => proptest::sample::select(&HOSTILE[..]).prop_map(str::to_owned),
        1 => Just("l".repeat(200)),
        1 => "[a-z\"{}();,\\\\ ]{1,12}",
    ]
}

fn narrow() -> impl Strategy<Value = Narrow> {
    (
        proptest::option::of(proptest::collection::vec(string(), 0..3)),
        proptest::option::of(proptest::collection::vec(
            proptest::sample::select(&KINDS[..]),
            0..2,
        )),
        proptest::option::of(proptest::sample::select(&IMPORTANCES[..])),
        proptest::option::weighted(
            0.15,
            proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(&WORLDS[..]).prop_map(str::to_owned),
                    proptest::sample::select(&HOSTILE[3..]).prop_map(str::to_owned),
                ],
                1..3,
            ),
        ),
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(labels, kinds, max_importance, worlds, without_save)| Narrow {
                labels,
                kinds,
                max_importance,
                worlds,
                without_save,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => narrow().prop_map(Step::Attenuate),
        2 => proptest::bool::weighted(0.3).prop_map(|without_save| Step::SaveRestore { without_save }),
        3 => narrow().prop_map(|narrow| Step::Offline(Narrow { worlds: None, ..narrow })),
        1 => prop_oneof![
            Just(Forged::Principal),
            Just(Forged::Right),
            Just(Forged::World),
            Just(Forged::Epoch),
            Just(Forged::Lineage),
        ]
        .prop_map(Step::Forge),
        1 => Just(Step::Handoff),
    ]
}

/// What a writer tries at the end of a chain: an atom to write, and which of its own
/// atoms (an index into `World::own`) to retract; and whether the capability is used
/// directly or through an MCP bridge holding its token.
#[derive(Clone, Debug)]
struct Attempt {
    labels: Vec<String>,
    kind: AtomKind,
    importance: f32,
    retract: usize,
    bridge: bool,
}

fn attempt() -> impl Strategy<Value = Attempt> {
    (
        proptest::sample::subsequence(&LABELS[..], 0..3)
            .prop_map(|labels| labels.into_iter().map(str::to_owned).collect()),
        proptest::sample::select(&KINDS[..]),
        proptest::sample::select(&IMPORTANCES[..]),
        any::<usize>(),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(labels, kind, importance, retract, bridge)| Attempt {
            labels,
            kind,
            importance,
            retract,
            bridge,
        })
}

/// Whether `result` failed with `code`.
fn failed_with<T>(result: &Result<T, ClientError>, code: ErrorCode) -> bool {
    matches!(result, Err(error) if error.code() == Some(code))
}

/// The node and what the chains need of it. Connections are made in each chain's own
/// run (an RPC connection lives on the runtime that made it).
struct World {
    node: TestNode,
    agent: ed25519_dalek::SigningKey,
    atoms: Vec<(&'static str, Known)>,
    /// The agent's own atoms in `team/w`, for the writers' retractions.
    own: Vec<Known>,
}

fn set_up() -> World {
    let node = TestNode::start_with(&[
        "--login-attempts-per-minute",
        "10000000",
        "--connections-per-address-max",
        "100000",
        "--connections-max",
        "100000",
        "--pre-auth-connections-max",
        "100000",
    ]);
    let (agent, atoms, own) = run_local(async {
        let admin = admin_with_world(&node, "team/a").await;
        for world in ["team/b", "team/w", "team/secret"] {
            engram_client::create_world(&admin.admin().unwrap(), world)
                .await
                .unwrap();
        }
        let admin = engram_tests::session(&node.tcp(), &node.admin_key()).await;
        let key = engram_client::keyfile::generate().unwrap();
        let grants: Vec<Grant> = ["team/a=r", "team/b=r", "team/w=w"]
            .iter()
            .map(|grant| Grant::parse(grant).unwrap())
            .collect();
        engram_client::add_principal(
            &admin.admin().unwrap(),
            "agent",
            key.verifying_key().as_bytes(),
            false,
            &grants,
        )
        .await
        .unwrap();
        // Every label (alone, and the first two together) in every kind, at two
        // importances, in each readable world and in the one the agent may not read;
        // and the same written by the agent in the world it writes.
        let agent = engram_tests::session(&node.tcp(), &key).await;
        let mut atoms = Vec::new();
        let mut own = Vec::new();
        for world in ["team/a", "team/b", "team/secret", "team/w"] {
            let mut label_sets: Vec<Vec<String>> =
                LABELS.iter().map(|label| vec![label.to_string()]).collect();
            label_sets.push(vec![LABELS[2].to_owned(), LABELS[3].to_owned()]);
            let writer = if world == "team/w" {
                agent.writer(world).unwrap()
            } else {
                admin.writer(world).unwrap()
            };
            for labels in label_sets {
                for kind in KINDS {
                    for importance in [0.25f32, 0.75] {
                        let mut atom = NewAtom::new(kind, format!("{world} {labels:?}"))
                            .importance(importance);
                        atom.labels = labels.clone();
                        let receipt = engram_client::remember(&writer, std::slice::from_ref(&atom))
                            .await
                            .unwrap();
                        let known = Known {
                            id: receipt[0].id,
                            labels: labels.clone(),
                            kind,
                            importance,
                        };
                        if world == "team/w" {
                            own.push(known);
                        } else {
                            atoms.push((world, known));
                        }
                    }
                }
            }
        }
        (key, atoms, own)
    });
    World {
        node,
        agent,
        atoms,
        own,
    }
}

/// A token of `held` with one more block holding `fact`.
fn forged_block(saved: &[u8], forged: Forged, admin_key: &[u8; 32]) -> Vec<u8> {
    use biscuit_auth::builder;
    let fact = match forged {
        Forged::Principal => builder::fact("principal", &[builder::bytes(admin_key)]),
        Forged::Right => builder::fact("right", &[builder::string("writer")]),
        Forged::World => builder::fact("world", &[builder::string("team/secret")]),
        Forged::Epoch => builder::fact("epoch", &[builder::int(99)]),
        Forged::Lineage => builder::fact("lineage", &[builder::bytes(&[0; 32])]),
    };
    let token = biscuit_auth::UnverifiedBiscuit::from(saved).unwrap();
    token
        .append(biscuit_auth::BlockBuilder::new().fact(fact).unwrap())
        .unwrap()
        .to_vec()
        .unwrap()
}

async fn attenuate(held: &Held, narrowing: &Narrow) -> Result<Held, ClientError> {
    let restriction = narrowing.restriction();
    Ok(match held {
        Held::Reader(reader) => {
            Held::Reader(engram_client::attenuate_reader(reader, &restriction).await?)
        }
        Held::Writer(writer) => {
            Held::Writer(engram_client::attenuate_writer(writer, &restriction).await?)
        }
        _ => unreachable!("the model covers readers and writers"),
    })
}

/// `held` saved as a token, or `None` where the model says it may not save (and the
/// node refused it so).
async fn save(held: &Held, model: &Model) -> Result<Option<Vec<u8>>, String> {
    let saved = token::save(held).await;
    if model.dead || !model.save {
        return if failed_with(&saved, ErrorCode::PermissionDenied) {
            Ok(None)
        } else {
            Err("a capability that may not save saved".into())
        };
    }
    saved.map(Some).map_err(|error| error.to_string())
}

/// The capability `saved` restores on a connection of its own, of the model's world.
async fn restore(
    world: &World,
    saved: &[u8],
    without_save: bool,
    model: &Model,
) -> Result<Held, String> {
    let connection = connect(&world.node.tcp()).await.unwrap();
    let (restored_world, restored) = connection
        .restore_with(saved, without_save)
        .await
        .map_err(|error| error.to_string())?;
    if restored_world != model.world {
        return Err(format!("restored a capability of {restored_world}"));
    }
    Ok(restored)
}

/// Runs one chain: what its capability did at the end, or the first disagreement with
/// the model.
async fn run_chain(
    world: &World,
    start: usize,
    steps: &[Step],
    attempt: &Attempt,
) -> Result<&'static str, String> {
    let session = engram_tests::session(&world.node.tcp(), &world.agent).await;
    let admin_key = *world.node.admin_key().verifying_key().as_bytes();
    let (model_world, writer) = [("team/a", false), ("team/b", false), ("team/w", true)][start];
    let mut held = if writer {
        Held::Writer(session.writer(model_world).unwrap())
    } else {
        Held::Reader(session.reader(model_world).unwrap())
    };
    let mut model = Model {
        world: model_world,
        labels: None,
        kinds: None,
        max_importance: 1.0,
        save: true,
        dead: false,
    };
    // Children handed off along the chain: each lives while its handoff is held.
    let mut children = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let at = |what: String| format!("step {index} {step:?}: {what}; model {model:?}");
        match step {
            Step::Attenuate(narrowing) => {
                let attenuated = attenuate(&held, narrowing).await;
                if model.dead {
                    if !failed_with(&attenuated, ErrorCode::PermissionDenied) {
                        return Err(at(format!(
                            "a dead capability attenuated: {attenuated:?}",
                            attenuated = attenuated.as_ref().err()
                        )));
                    }
                } else if narrowing.invalid_online() {
                    if !failed_with(&attenuated, ErrorCode::InvalidArgument) {
                        return Err(at("a label no atom can carry was taken".into()));
                    }
                } else {
                    held = attenuated.map_err(|error| at(error.to_string()))?;
                    model.narrow(narrowing);
                }
            }
            Step::SaveRestore { without_save } => {
                let Some(saved) = save(&held, &model).await.map_err(at)? else {
                    continue;
                };
                held = restore(world, &saved, *without_save, &model)
                    .await
                    .map_err(at)?;
                model.save &= !without_save;
            }
            Step::Offline(narrowing) => {
                let Some(saved) = save(&held, &model).await.map_err(at)? else {
                    continue;
                };
                let narrowed = token::attenuate(&saved, &narrowing.narrowing())
                    .map_err(|error| at(error.to_string()))?;
                held = restore(world, &narrowed, false, &model).await.map_err(at)?;
                model.narrow(narrowing);
            }
            Step::Forge(forged) => {
                let Some(saved) = save(&held, &model).await.map_err(at)? else {
                    continue;
                };
                let token = forged_block(&saved, *forged, &admin_key);
                let connection = connect(&world.node.tcp()).await.unwrap();
                let restored = connection.restore(&token).await;
                if !failed_with(&restored, ErrorCode::Unauthenticated) {
                    return Err(at(format!(
                        "a block restating an authority fact was taken: {:?}",
                        restored.map(|(world, _)| world)
                    )));
                }
            }
            Step::Handoff => {
                let Some(saved) = save(&held, &model).await.map_err(at)? else {
                    continue;
                };
                let child = engram_tests::handoff::child(&world.node, &saved).map_err(at)?;
                held = match held {
                    Held::Reader(_) => Held::Reader(child.capability.clone().cast_to()),
                    Held::Writer(_) => Held::Writer(child.capability.clone().cast_to()),
                    _ => unreachable!("the model covers readers and writers"),
                };
                children.push(child);
                // The node narrows what it serves a child `withoutSave`.
                model.save = false;
            }
        }
    }

    // What it can do now.
    let saved = token::save(&held).await;
    if (model.save && !model.dead) != saved.is_ok() {
        return Err(format!("save answered {:?}; model {model:?}", saved.err()));
    }
    if attempt.bridge
        && let Ok(saved) = &saved
    {
        return through_bridge(
            world,
            saved,
            matches!(held, Held::Reader(_)),
            &model,
            attempt,
        )
        .await;
    }
    match &held {
        Held::Reader(reader) => {
            let seen = engram_client::ask(
                reader,
                &Filter {
                    limit: 1000,
                    ..Filter::default()
                },
            )
            .await;
            if model.dead {
                return if failed_with(&seen, ErrorCode::PermissionDenied) {
                    Ok("refused every call (its worlds narrowed away)")
                } else {
                    Err(format!("a dead reader read; model {model:?}"))
                };
            }
            let seen: BTreeSet<[u8; 32]> = seen
                .map_err(|error| error.to_string())?
                .iter()
                .map(|atom| atom.id)
                .collect();
            reads_within(world, &model, &seen)
        }
        Held::Writer(writer) => {
            let retracted = retract(world, writer, &model, attempt).await?;
            let atom = Known {
                id: [0; 32],
                labels: attempt.labels.clone(),
                kind: attempt.kind,
                importance: attempt.importance,
            };
            let mut new = NewAtom::new(attempt.kind, "written at the end of a chain")
                .importance(attempt.importance);
            new.labels = attempt.labels.clone();
            let written = engram_client::remember(writer, &[new]).await;
            let allowed = !model.dead && model.may_write(&atom);
            match written {
                Ok(receipts) => {
                    if !allowed {
                        return Err(format!("wrote {atom:?} outside model {model:?}"));
                    }
                    written_as_the_agent(world, &receipts[0].id).await?;
                    Ok(if retracted {
                        "wrote, retracted"
                    } else {
                        "wrote, was refused a retraction"
                    })
                }
                Err(error) => {
                    if allowed || error.code() != Some(ErrorCode::PermissionDenied) {
                        return Err(format!(
                            "write of {atom:?} answered {error}; model {model:?}"
                        ));
                    }
                    Ok(if retracted {
                        "was refused a write, retracted"
                    } else {
                        "was refused a write and a retraction"
                    })
                }
            }
        }
        _ => unreachable!(),
    }
}

/// Whether `seen` is exactly what the model lets a reader read.
fn reads_within(
    world: &World,
    model: &Model,
    seen: &BTreeSet<[u8; 32]>,
) -> Result<&'static str, String> {
    let expected: BTreeSet<[u8; 32]> = world
        .atoms
        .iter()
        .filter(|(atom_world, atom)| *atom_world == model.world && model.shows(atom))
        .map(|(_, atom)| atom.id)
        .collect();
    if *seen != expected {
        return Err(format!(
            "read {} atoms, the model allows {} (extra: {}); model {model:?}",
            seen.len(),
            expected.len(),
            seen.difference(&expected).count()
        ));
    }
    Ok(if seen.is_empty() {
        "read nothing"
    } else {
        "read some atoms"
    })
}

/// That the atom `id` of `team/w` was written as the agent.
async fn written_as_the_agent(world: &World, id: &[u8; 32]) -> Result<(), String> {
    let admin = engram_tests::session(&world.node.tcp(), &world.node.admin_key()).await;
    let stored = engram_client::get(&admin.reader("team/w").unwrap(), id)
        .await
        .map_err(|error| error.to_string())?;
    if stored.writer != *world.agent.verifying_key().as_bytes() {
        return Err("an atom was written as another principal".into());
    }
    Ok(())
}

/// The end of a chain through an MCP bridge (`engram mcp` over stdio, as a host runs
/// it) holding `token`: a reader's `replay` tool reads what the model shows, a writer's
/// `remember` tool writes what the model allows, as the agent, and is refused the rest
/// with `permissionDenied`.
async fn through_bridge(
    world: &World,
    token: &[u8],
    reader: bool,
    model: &Model,
    attempt: &Attempt,
) -> Result<&'static str, String> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let directory = tempfile::tempdir().unwrap();
    let token_path = directory.path().join("token");
    token::write_file(&token_path, token).unwrap();
    let mut bridge = std::process::Command::new(engram_tests::binary("engram"))
        .arg("--node")
        .arg(world.node.tcp().to_string())
        .arg("--token")
        .arg(&token_path)
        .arg("mcp")
        .env_remove("ENGRAM_NODE")
        .env_remove("ENGRAM_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = bridge.stdin.take().unwrap();
    let mut output = BufReader::new(bridge.stdout.take().unwrap());
    let (tool, arguments) = if reader {
        ("replay", serde_json::json!({"limit": 100}))
    } else {
        (
            "remember",
            serde_json::json!({
                "text": "written through a bridge",
                "kind": kind_name(attempt.kind),
                "labels": attempt.labels,
                "importance": attempt.importance,
            }),
        )
    };
    for message in [
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "authority-model", "version": "1"}}}),
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}),
    ] {
        writeln!(input, "{message}").unwrap();
    }
    let mut answer = serde_json::Value::Null;
    for line in (&mut output).lines() {
        let message: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if message["id"] == 2 {
            answer = message;
            break;
        }
    }
    drop(input);
    bridge.wait().unwrap();
    let result = &answer["result"];
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    let failed = result["isError"].as_bool().unwrap_or(false);
    if reader {
        if failed {
            return Err(format!(
                "the bridge's replay failed: {answer}; model {model:?}"
            ));
        }
        let atoms: serde_json::Value = serde_json::from_str(text).unwrap();
        let seen: BTreeSet<[u8; 32]> = atoms["atoms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|atom| {
                hex::decode(atom["id"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        return reads_within(world, model, &seen).map(|_| "read through a bridge");
    }
    let atom = Known {
        id: [0; 32],
        labels: attempt.labels.clone(),
        kind: attempt.kind,
        importance: attempt.importance,
    };
    match (model.may_write(&atom), failed) {
        (true, false) => {
            let receipts: serde_json::Value = serde_json::from_str(text).unwrap();
            let id: [u8; 32] = hex::decode(receipts[0]["id"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            written_as_the_agent(world, &id).await?;
            Ok("wrote through a bridge")
        }
        (false, true) if text.starts_with("permissionDenied: ") => {
            Ok("was refused a write through a bridge")
        }
        _ => Err(format!(
            "the bridge's remember of {atom:?} answered {answer}; model {model:?}"
        )),
    }
}

/// Retracts, through `writer`, the agent's own atom `attempt.retract` names: whether the
/// model let it (the node answered it or said it was retracted already), or how the
/// node disagreed with the model. The transition atom is checked like any atom of the
/// writer's: a writer restricted to kinds cannot write one (their kinds never include
/// `transition`); a label-restricted writer may move only atoms whose every label it
/// may write; a target the writer cannot see is `notFound`.
async fn retract(
    world: &World,
    writer: &engram_client::engram_schema::engram_capnp::world_writer::Client,
    model: &Model,
    attempt: &Attempt,
) -> Result<bool, String> {
    let target = &world.own[attempt.retract % world.own.len()];
    let answered = engram_client::transition(
        writer,
        &target.id,
        engram_client::engram_schema::engram_capnp::TransitionKind::Retract,
        "",
    )
    .await;
    let expected = if model.dead {
        Err(ErrorCode::PermissionDenied)
    } else if !model.shows(target) {
        Err(ErrorCode::NotFound)
    } else if model.kinds.is_some()
        || model
            .labels
            .as_ref()
            .is_some_and(|labels| target.labels.iter().any(|label| !labels.contains(label)))
    {
        Err(ErrorCode::PermissionDenied)
    } else {
        Ok(())
    };
    match (&expected, &answered) {
        (Ok(()), Ok(_)) => Ok(true),
        // Retracted by an earlier chain.
        (Ok(()), Err(error)) if error.code() == Some(ErrorCode::Conflict) => Ok(true),
        (Err(code), Err(error)) if error.code() == Some(*code) => Ok(false),
        _ => Err(format!(
            "retraction of {target:?} answered {:?}, the model says {expected:?}; model \
             {model:?}",
            answered.as_ref().map(|_| ()).map_err(ToString::to_string)
        )),
    }
}

#[test]
fn what_any_derivation_can_do_is_within_the_model_of_authority() {
    let world = set_up();
    let cases: u32 = std::env::var("ENGRAM_AUTHORITY_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("ENGRAM_AUTHORITY_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(1);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let outcomes = RefCell::new(std::collections::BTreeMap::<&str, u32>::new());
    let case = (
        0usize..3,
        proptest::collection::vec(step(), 0..5),
        attempt(),
    );
    runner
        .run(&case, |(start, steps, attempt)| {
            match run_local(run_chain(&world, start, &steps, &attempt)) {
                Ok(what) => *outcomes.borrow_mut().entry(what).or_default() += 1,
                Err(disagreement) => prop_assert!(false, "{}", disagreement),
            }
            Ok(())
        })
        .unwrap();
    // How the chains ended, to show the property was not met vacuously.
    println!(
        "derivation chains, each within the model: {:?}",
        outcomes.borrow()
    );
}
