//! Lifecycles: proposals are not decisions, transitions (approve, reject, deprecate,
//! supersede, retract) move an atom's state exactly and only where legal, the approve
//! right is granted and can be attenuated away, and transitions are chain entries that
//! replay, subscriptions, time travel, `verify` and a crash all keep.

use std::time::Duration;

use engram_client::engram_schema::engram_capnp::{
    AtomKind, LifecycleState, LinkKind, TransitionKind, world_reader, world_writer,
};
use engram_client::{AtomView, ErrorCode, Filter, NewAtom, Receipt, Restriction, WatchEvent};
use engram_tests::{
    TestNode, add_principal, admin_with_world, ask_when_indexed, assert_code, engram_cli,
    engram_ok, run_local, session,
};

const CURRENT_AND_PROPOSED: [LifecycleState; 3] = [
    LifecycleState::Asserted,
    LifecycleState::Proposed,
    LifecycleState::Approved,
];

const EVERY_STATE: [LifecycleState; 7] = [
    LifecycleState::Asserted,
    LifecycleState::Proposed,
    LifecycleState::Approved,
    LifecycleState::Rejected,
    LifecycleState::Deprecated,
    LifecycleState::Superseded,
    LifecycleState::Retracted,
];

async fn try_remember(
    writer: &world_writer::Client,
    atom: NewAtom,
) -> Result<Receipt, engram_client::ClientError> {
    Ok(engram_client::remember(writer, &[atom]).await?[0])
}

async fn remember(writer: &world_writer::Client, atom: NewAtom) -> Receipt {
    try_remember(writer, atom).await.unwrap()
}

async fn act(
    writer: &world_writer::Client,
    target: &Receipt,
    kind: TransitionKind,
) -> Result<Receipt, engram_client::ClientError> {
    engram_client::transition(writer, &target.id, kind, "").await
}

fn jwt(states: &[LifecycleState]) -> Filter {
    Filter {
        labels: vec!["jwt".into()],
        states: states.to_vec(),
        ..Filter::default()
    }
}

/// (text, state) of each atom, newest first as asked.
fn seen(atoms: &[AtomView]) -> Vec<(String, LifecycleState)> {
    atoms
        .iter()
        .map(|atom| (atom.text.clone(), atom.state))
        .collect()
}

/// (text, state) of every atom labelled jwt, whatever its state, oldest first.
async fn in_every_state(reader: &world_reader::Client) -> Vec<(String, LifecycleState)> {
    let mut all = engram_client::ask(
        reader,
        &Filter {
            states: EVERY_STATE.to_vec(),
            ..jwt(&[])
        },
    )
    .await
    .unwrap();
    // Transition atoms carry their targets' labels; these are the knowledge atoms.
    all.retain(|atom| atom.kind != AtomKind::Transition);
    all.sort_by_key(|atom| atom.commit);
    seen(&all)
}

#[test]
fn a_proposal_is_not_a_decision_until_approved() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let lead_key = add_principal(&admin, "lead", &["team/auth=rwoa"]).await;
        let researcher_key = add_principal(&admin, "researcher", &["team/auth=rwo"]).await;
        let lead = session(&node.tcp(), &lead_key).await;
        let researcher = session(&node.tcp(), &researcher_key).await;
        let lead_writer = lead.writer("team/auth").unwrap();
        let research_writer = researcher.writer("team/auth").unwrap();

        let decided = remember(
            &lead_writer,
            NewAtom::new(AtomKind::Decision, "JWT algorithm: RS256").labels(&["jwt"]),
        )
        .await;
        act(&lead_writer, &decided, TransitionKind::Approve)
            .await
            .unwrap();
        remember(
            &research_writer,
            NewAtom::new(AtomKind::Decision, "JWT algorithm: ES256")
                .labels(&["jwt"])
                .proposed(),
        )
        .await;
        // Written without a state: asserted, current knowledge as before lifecycles.
        remember(
            &research_writer,
            NewAtom::fact("JWT keys rotate monthly").labels(&["jwt"]),
        )
        .await;

        let reader = researcher.reader("team/auth").unwrap();
        assert_eq!(
            seen(&engram_client::ask(&reader, &jwt(&[])).await.unwrap()),
            [
                ("JWT keys rotate monthly".into(), LifecycleState::Asserted),
                ("JWT algorithm: RS256".into(), LifecycleState::Approved),
            ]
        );
        assert_eq!(
            seen(
                &engram_client::ask(&reader, &jwt(&CURRENT_AND_PROPOSED))
                    .await
                    .unwrap()
            ),
            [
                ("JWT keys rotate monthly".into(), LifecycleState::Asserted),
                ("JWT algorithm: ES256".into(), LifecycleState::Proposed),
                // Asked by state, the approval is there too: it carries its target's
                // labels.
                ("approve".into(), LifecycleState::Asserted),
                ("JWT algorithm: RS256".into(), LifecycleState::Approved),
            ]
        );
        // Asked by state alone (the state index lists them).
        for (state, text) in [
            (LifecycleState::Proposed, "JWT algorithm: ES256"),
            (LifecycleState::Approved, "JWT algorithm: RS256"),
        ] {
            let only = Filter {
                states: vec![state],
                ..Filter::default()
            };
            let found = engram_client::ask(&reader, &only).await.unwrap();
            assert_eq!(seen(&found), [(text.into(), state)]);
        }
        // Ranked asks keep to current knowledge too.
        let by_words = Filter {
            text: "JWT algorithm".into(),
            ..jwt(&[])
        };
        let ranked = ask_when_indexed(&reader, &by_words, Duration::from_secs(10)).await;
        let texts: Vec<&str> = ranked
            .hits
            .iter()
            .map(|hit| hit.atom.text.as_str())
            .collect();
        assert!(texts.contains(&"JWT algorithm: RS256"), "{texts:?}");
        assert!(!texts.contains(&"JWT algorithm: ES256"), "{texts:?}");
        let ranked = ask_when_indexed(
            &reader,
            &Filter {
                states: CURRENT_AND_PROPOSED.to_vec(),
                ..by_words
            },
            Duration::from_secs(10),
        )
        .await;
        assert!(
            ranked
                .hits
                .iter()
                .any(|hit| hit.atom.state == LifecycleState::Proposed),
            "{:?}",
            ranked.hits
        );
        // The transition atom itself is found by kind, and only so.
        let transitions = Filter {
            kinds: vec![AtomKind::Transition],
            ..Filter::default()
        };
        let found = engram_client::ask(&reader, &transitions).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].links[0].kind, LinkKind::Approves);
        assert_eq!(found[0].links[0].target, decided.id);
        assert_eq!(found[0].text, "approve");
    });
}

#[test]
fn transitions_move_states_only_where_legal_and_only_with_the_right() {
    let mut node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        engram_client::create_world(&admin.admin().unwrap(), "team/other")
            .await
            .unwrap();
        let lead_key = add_principal(&admin, "lead", &["team/auth=rwoa", "team/other=rwoa"]).await;
        let researcher_key = add_principal(&admin, "researcher", &["team/auth=rwo"]).await;
        let lead = session(&node.tcp(), &lead_key).await;
        let researcher = session(&node.tcp(), &researcher_key).await;
        let lead_writer = lead.writer("team/auth").unwrap();
        let research_writer = researcher.writer("team/auth").unwrap();
        let reader = lead.reader("team/auth").unwrap();
        let state_of = |receipt: Receipt| {
            let reader = reader.clone();
            async move {
                engram_client::get(&reader, &receipt.id)
                    .await
                    .unwrap()
                    .state
            }
        };
        let head_seqs = || {
            let reader = reader.clone();
            async move {
                let mut seqs: Vec<u64> = engram_client::heads(&reader)
                    .await
                    .unwrap()
                    .iter()
                    .map(|head| head.seq)
                    .collect();
                seqs.sort();
                seqs
            }
        };
        let fact = |text: &str| NewAtom::fact(text).labels(&["jwt"]);

        // Reject a proposal; a rejected atom is final.
        let proposal = remember(&research_writer, fact("use HS256").proposed()).await;
        let before_failures = head_seqs().await;
        assert_code(
            act(&research_writer, &proposal, TransitionKind::Approve).await,
            ErrorCode::PermissionDenied,
        );
        act(&lead_writer, &proposal, TransitionKind::Reject)
            .await
            .unwrap();
        assert_eq!(state_of(proposal).await, LifecycleState::Rejected);
        let after_reject = head_seqs().await;
        for (writer, kind) in [
            (&lead_writer, TransitionKind::Approve),
            (&lead_writer, TransitionKind::Reject),
            (&lead_writer, TransitionKind::Deprecate),
            (&research_writer, TransitionKind::Retract),
        ] {
            assert_code(act(writer, &proposal, kind).await, ErrorCode::Conflict);
        }
        assert_code(
            try_remember(
                &lead_writer,
                fact("HS256 after all").supersedes(proposal.id),
            )
            .await,
            ErrorCode::Conflict,
        );
        // Failed transitions wrote nothing: only the reject's entry was added.
        assert_eq!(
            after_reject.iter().sum::<u64>(),
            before_failures.iter().sum::<u64>() + 1
        );
        assert_eq!(head_seqs().await, after_reject);

        // Deprecate an asserted atom; it leaves current knowledge.
        let asserted = remember(&research_writer, fact("keys live in the vault")).await;
        act(&lead_writer, &asserted, TransitionKind::Deprecate)
            .await
            .unwrap();
        assert_eq!(state_of(asserted).await, LifecycleState::Deprecated);
        assert_code(
            act(&lead_writer, &asserted, TransitionKind::Approve).await,
            ErrorCode::Conflict,
        );

        // Retract: by its writer only.
        let retracted = remember(&research_writer, fact("tokens last a day")).await;
        assert_code(
            act(&lead_writer, &retracted, TransitionKind::Retract).await,
            ErrorCode::PermissionDenied,
        );
        act(&research_writer, &retracted, TransitionKind::Retract)
            .await
            .unwrap();
        assert_code(
            act(&lead_writer, &retracted, TransitionKind::Approve).await,
            ErrorCode::Conflict,
        );

        // Supersede: one's own atom freely, another writer's with the approve right.
        let old = remember(&research_writer, fact("rotate keys yearly")).await;
        let new = remember(
            &research_writer,
            fact("rotate keys monthly").supersedes(old.id),
        )
        .await;
        assert_eq!(state_of(old).await, LifecycleState::Superseded);
        assert_eq!(state_of(new).await, LifecycleState::Asserted);
        let decision = remember(&lead_writer, fact("JWT algorithm: RS256")).await;
        assert_code(
            try_remember(
                &research_writer,
                fact("JWT algorithm: EdDSA").supersedes(decision.id),
            )
            .await,
            ErrorCode::PermissionDenied,
        );
        assert_code(
            try_remember(
                &research_writer,
                fact("JWT algorithm: EdDSA")
                    .proposed()
                    .supersedes(decision.id),
            )
            .await,
            ErrorCode::InvalidArgument,
        );
        assert_eq!(state_of(decision).await, LifecycleState::Asserted);

        // Targets that are elsewhere, nowhere, or hidden from the capability.
        let elsewhere = remember(
            &lead.writer("team/other").unwrap(),
            NewAtom::fact("another world's fact"),
        )
        .await;
        // Another world's atom is not found, as one that does not exist: a writer learns
        // nothing of ids in worlds it may hold no grant for.
        assert_code(
            try_remember(&lead_writer, fact("replaces it").supersedes(elsewhere.id)).await,
            ErrorCode::NotFound,
        );
        assert_code(
            act(&lead_writer, &elsewhere, TransitionKind::Approve).await,
            ErrorCode::NotFound,
        );
        let nowhere = Receipt {
            id: [9; 32],
            ..decision
        };
        assert_code(
            act(&lead_writer, &nowhere, TransitionKind::Approve).await,
            ErrorCode::NotFound,
        );
        let narrowed = engram_client::attenuate_writer(
            &lead_writer,
            &Restriction {
                labels: vec!["billing".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        assert_code(
            act(&narrowed, &decision, TransitionKind::Approve).await,
            ErrorCode::NotFound,
        );
        // Attenuated without the approve right: may propose and retract its own, no more.
        let proposer = engram_client::attenuate_writer(
            &lead_writer,
            &Restriction {
                without_approve: true,
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        assert_code(
            act(&proposer, &decision, TransitionKind::Approve).await,
            ErrorCode::PermissionDenied,
        );
        let own_proposal = remember(&proposer, fact("JWT algorithm: PS256").proposed()).await;
        assert_code(
            act(&proposer, &own_proposal, TransitionKind::Approve).await,
            ErrorCode::PermissionDenied,
        );
        act(&lead_writer, &decision, TransitionKind::Approve)
            .await
            .unwrap();
        act(&proposer, &decision, TransitionKind::Retract)
            .await
            .unwrap();
        assert_eq!(state_of(decision).await, LifecycleState::Retracted);

        // Time travel sees states as they stood.
        let as_of = |commit: u64| {
            let reader = reader.clone();
            async move {
                engram_client::get_as_of(&reader, &decision.id, commit)
                    .await
                    .unwrap()
                    .state
            }
        };
        assert_eq!(as_of(decision.commit).await, LifecycleState::Asserted);
        let approved_at = engram_client::ask(
            &reader,
            &Filter {
                kinds: vec![AtomKind::Transition],
                limit: 2,
                ..Filter::default()
            },
        )
        .await
        .unwrap()[1]
            .commit;
        assert_eq!(as_of(approved_at).await, LifecycleState::Approved);
        let current_then = engram_client::ask(
            &reader,
            &Filter {
                as_of: approved_at,
                ..jwt(&[])
            },
        )
        .await
        .unwrap();
        assert!(
            current_then.iter().any(|atom| atom.id == decision.id),
            "{current_then:?}"
        );

        // A diff lists the state changes between two commits: the transition atoms.
        let (changed, _) = engram_client::diff(&reader, decision.commit, approved_at, 1000)
            .await
            .unwrap();
        assert!(
            changed.iter().any(|atom| atom.kind == AtomKind::Transition
                && atom.links[0]
                    == engram_client::Link {
                        kind: LinkKind::Approves,
                        target: decision.id,
                    }),
            "{changed:?}"
        );
        // Transitions are chain entries: replay carries them and verify covers them.
        let (replayed, _) = engram_client::replay(&reader, 0, 1000).await.unwrap();
        let transitions: Vec<(LinkKind, [u8; 32])> = replayed
            .iter()
            .filter(|atom| atom.kind == AtomKind::Transition)
            .map(|atom| (atom.links[0].kind, atom.links[0].target))
            .collect();
        assert_eq!(
            transitions,
            [
                (LinkKind::Rejects, proposal.id),
                (LinkKind::Deprecates, asserted.id),
                (LinkKind::Retracts, retracted.id),
                (LinkKind::Approves, decision.id),
                (LinkKind::Retracts, decision.id),
            ]
        );
        assert!(
            engram_client::verify(&reader)
                .await
                .unwrap()
                .first_bad
                .is_none()
        );
        let every_state = in_every_state(&reader).await;
        assert_eq!(
            every_state,
            [
                ("use HS256".into(), LifecycleState::Rejected),
                ("keys live in the vault".into(), LifecycleState::Deprecated),
                ("tokens last a day".into(), LifecycleState::Retracted),
                ("rotate keys yearly".into(), LifecycleState::Superseded),
                ("rotate keys monthly".into(), LifecycleState::Asserted),
                ("JWT algorithm: RS256".into(), LifecycleState::Retracted),
                ("JWT algorithm: PS256".into(), LifecycleState::Proposed),
            ]
        );

        // A crash keeps every state: the journal is applied again at start, states too.
        node.kill();
        node.restart();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let reader = admin.reader("team/auth").unwrap();
        assert_eq!(in_every_state(&reader).await, every_state);
        let current: Vec<String> = engram_client::ask(&reader, &jwt(&[]))
            .await
            .unwrap()
            .into_iter()
            .map(|atom| atom.text)
            .collect();
        assert_eq!(current, ["rotate keys monthly"]);
    });
}

#[test]
fn subscriptions_carry_transitions() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let writer = admin.writer("team/auth").unwrap();
        let observer = admin.observer("team/auth").unwrap();
        let mut watch = engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
        let proposal = remember(&writer, NewAtom::fact("use httpx").proposed()).await;
        act(&writer, &proposal, TransitionKind::Approve)
            .await
            .unwrap();
        let mut delivered = Vec::new();
        while delivered.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
                Ok(Some(WatchEvent::Atoms(atoms))) => delivered.extend(atoms),
                other => panic!("the subscription stopped early: {other:?}"),
            }
        }
        assert_eq!(delivered[0].id, proposal.id);
        assert_eq!(delivered[1].kind, AtomKind::Transition);
        assert_eq!(delivered[1].links[0].kind, LinkKind::Approves);
        assert_eq!(delivered[1].links[0].target, proposal.id);
    });
}

#[test]
fn the_cli_proposes_approves_supersedes_and_retracts() {
    let node = TestNode::start();
    let key = node.admin_key_path();
    let run = |arguments: &[&str]| engram_ok(&node, &key, arguments);
    let id_of = |printed: String| -> String {
        let receipts: serde_json::Value = serde_json::from_str(&printed).unwrap();
        receipts[0]["id"].as_str().unwrap().to_owned()
    };
    run(&["world", "create", "team/auth"]);
    let proposal = id_of(run(&[
        "--json",
        "propose",
        "team/auth",
        "JWT algorithm: ES256",
        "--kind",
        "decision",
        "--label",
        "jwt",
    ]));
    let states = |extra: &[&str]| -> Vec<(String, String)> {
        let mut arguments = vec!["--json", "ask", "team/auth", "--label", "jwt"];
        arguments.extend_from_slice(extra);
        let hits: serde_json::Value = serde_json::from_str(&run(&arguments)).unwrap();
        hits.as_array()
            .unwrap()
            .iter()
            .map(|hit| {
                (
                    hit["text"].as_str().unwrap().to_owned(),
                    hit["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert!(states(&[]).is_empty());
    assert_eq!(
        states(&["--include-proposals"]),
        [("JWT algorithm: ES256".into(), "proposed".into())]
    );
    run(&[
        "approve",
        "team/auth",
        &proposal,
        "--reason",
        "benchmarks agree",
    ]);
    assert_eq!(
        states(&[]),
        [("JWT algorithm: ES256".into(), "approved".into())]
    );
    let replacement = id_of(run(&[
        "--json",
        "supersede",
        "team/auth",
        &proposal,
        "JWT algorithm: EdDSA",
        "--label",
        "jwt",
    ]));
    assert_eq!(
        states(&[]),
        [("JWT algorithm: EdDSA".into(), "asserted".into())]
    );
    assert_eq!(
        states(&["--state", "superseded"]),
        [("JWT algorithm: ES256".into(), "superseded".into())]
    );
    run(&["retract", "team/auth", &replacement]);
    assert!(states(&[]).is_empty());
    // The text output names a state other than asserted.
    let printed = run(&["get", "team/auth", &replacement]);
    assert!(printed.contains("(retracted)"), "{printed}");
    // Illegal transitions exit 1 with the node's code.
    let output = engram_cli(&node, &key, &["reject", "team/auth", &replacement]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("conflict"), "{message}");
    // The approve right is a grant letter.
    let lead_key = node.data_dir().join("lead.key");
    let lead_public = run(&["keygen", lead_key.to_str().unwrap()]);
    run(&[
        "principal",
        "add",
        "lead",
        "--public-key",
        lead_public.trim(),
        "--grant",
        "team/auth=rwa",
    ]);
    let listed = run(&["--json", "principal", "list"]);
    assert!(listed.contains("\"rights\":\"rwa\""), "{listed}");
}

#[test]
fn a_request_past_the_transitions_limit_is_refused_whole() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let writer = admin.writer("team/auth").unwrap();
        let kept = remember(&writer, NewAtom::fact("stays asserted")).await;
        // 157 atoms of 64 supersedes links each: 10,048 transitions, past the 10,000 one
        // request may make. Refused before any target is looked up.
        let batch: Vec<NewAtom> = (0..157u32)
            .map(|index| {
                (0..64u32).fold(
                    NewAtom::fact(format!("replacement {index}")),
                    |atom, link| {
                        let mut target = [0; 32];
                        target[..4].copy_from_slice(&index.to_be_bytes());
                        target[4..8].copy_from_slice(&link.to_be_bytes());
                        atom.supersedes(target)
                    },
                )
            })
            .collect();
        let refused = engram_client::remember(&writer, &batch).await;
        assert_code(refused, ErrorCode::InvalidArgument);
        let reader = admin.reader("team/auth").unwrap();
        let (atoms, _) = engram_client::replay(&reader, 0, 1000).await.unwrap();
        assert_eq!(atoms.len(), 1);
        assert_eq!(atoms[0].id, kept.id);
    });
}
