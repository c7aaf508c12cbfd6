//! Corrections, confirmations and trust; contradictions marked on both sides: through
//! the Rust client, a restricted reader, and the CLI.

use std::time::Duration;

use engram_client::engram_schema::engram_capnp::{LinkKind, TransitionKind};
use engram_client::{ErrorCode, Filter, NewAtom, Restriction};
use engram_tests::{
    TestNode, add_principal, admin_with_world, ask_when_indexed, assert_code, engram_ok, run_local,
    session,
};

#[test]
fn corrections_lower_trust_confirmations_raise_it_and_ranking_weighs_it() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let mut writers = Vec::new();
        let mut keys = Vec::new();
        for name in ["careless", "careful", "reviewer"] {
            let key = add_principal(&admin, name, &["ops=rwo"]).await;
            keys.push(key.verifying_key().to_bytes());
            writers.push(session(&node.tcp(), &key).await);
        }
        let [careless, careful, reviewer] = [&writers[0], &writers[1], &writers[2]];
        let write = |session: &engram_client::Session, atom: NewAtom| {
            let writer = session.writer("ops").unwrap();
            async move { engram_client::remember(&writer, &[atom]).await.unwrap()[0] }
        };
        let confirmed = write(
            careful,
            NewAtom::fact("the connection pool size is 10").labels(&["db"]),
        )
        .await;
        let corrected = write(
            careless,
            NewAtom::fact("the connection pool size is 10").labels(&["db"]),
        )
        .await;
        for _ in 0..3 {
            write(
                reviewer,
                NewAtom::fact("measured: yes").link(LinkKind::Confirms, confirmed.id),
            )
            .await;
        }
        write(
            reviewer,
            NewAtom::fact("measured: no, 20").link(LinkKind::Corrects, corrected.id),
        )
        .await;
        // A writer's word on its own atom moves nothing.
        write(
            careless,
            NewAtom::fact("I confirm myself").link(LinkKind::Confirms, corrected.id),
        )
        .await;

        let reader = admin.reader("ops").unwrap();
        let careless_trust = engram_client::trust(&reader, &keys[0], "db").await.unwrap();
        assert_eq!((careless_trust.confirms, careless_trust.corrects), (0, 1));
        assert!((careless_trust.score - 1.0 / 3.0).abs() < 1e-9);
        let careful_trust = engram_client::trust(&reader, &keys[1], "").await.unwrap();
        assert_eq!((careful_trust.confirms, careful_trust.corrects), (3, 0));
        assert!((careful_trust.score - 0.8).abs() < 1e-9);
        let nobody = engram_client::trust(&reader, &keys[2], "db").await.unwrap();
        assert_eq!(nobody.score, 0.5);

        // Same words, same importance: the trusted writer's atom ranks first although
        // it is older, and the explanation shows the factor.
        let filter = Filter {
            text: "connection pool size".into(),
            labels: vec!["db".into()],
            explain: true,
            ..Filter::default()
        };
        let answer = ask_when_indexed(&reader, &filter, Duration::from_secs(10)).await;
        let ids: Vec<[u8; 32]> = answer.hits.iter().map(|hit| hit.atom.id).collect();
        assert_eq!(ids, [confirmed.id, corrected.id]);
        assert!(
            answer.hits[0].explanation.contains("trust 0.8000"),
            "{}",
            answer.hits[0].explanation
        );
        assert!(
            answer.hits[1].explanation.contains("trust 0.3333"),
            "{}",
            answer.hits[1].explanation
        );

        // Through a restriction that hides atoms, trust is not told.
        let narrowed = engram_client::attenuate_reader(
            &reader,
            &Restriction {
                labels: vec!["db".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        assert_code(
            engram_client::trust(&narrowed, &keys[0], "db").await,
            ErrorCode::PermissionDenied,
        );

        // One atom's word on a target counts once, however many links repeat it.
        write(
            reviewer,
            NewAtom::fact("remeasured: yes, twice")
                .link(LinkKind::Confirms, corrected.id)
                .link(LinkKind::Confirms, corrected.id),
        )
        .await;
        let careless_trust = engram_client::trust(&reader, &keys[0], "db").await.unwrap();
        assert_eq!((careless_trust.confirms, careless_trust.corrects), (1, 1));
    });
}

#[test]
fn contradictions_show_on_both_sides_while_they_live() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let other_key = add_principal(&admin, "other", &["ops=rwo"]).await;
        let other = session(&node.tcp(), &other_key).await;
        let writer = admin.writer("ops").unwrap();
        let first = engram_client::remember(
            &writer,
            &[NewAtom::fact("the pool size is 10").labels(&["db"])],
        )
        .await
        .unwrap()[0];
        let second = engram_client::remember(
            &other.writer("ops").unwrap(),
            &[NewAtom::fact("the pool size is 20")
                .labels(&["db"])
                .importance(0.9)
                .link(LinkKind::Contradicts, first.id)],
        )
        .await
        .unwrap()[0];
        let reader = admin.reader("ops").unwrap();
        let db = Filter {
            labels: vec!["db".into()],
            ..Filter::default()
        };
        let answer = engram_client::ask_scored(&reader, &db).await.unwrap();
        let marked: Vec<([u8; 32], Vec<[u8; 32]>)> = answer
            .hits
            .iter()
            .map(|hit| (hit.atom.id, hit.contradictions.clone()))
            .collect();
        assert_eq!(
            marked,
            [(second.id, vec![first.id]), (first.id, vec![second.id])]
        );
        // A reader that may not see the contradicting atom is not told of it.
        let hidden = engram_client::attenuate_reader(
            &reader,
            &Restriction {
                max_importance: 0.6,
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let answer = engram_client::ask_scored(&hidden, &db).await.unwrap();
        assert_eq!(answer.hits.len(), 1);
        assert_eq!(answer.hits[0].atom.id, first.id);
        assert!(answer.hits[0].contradictions.is_empty());
        // Retracted, the contradiction is no longer live.
        engram_client::transition(
            &other.writer("ops").unwrap(),
            &second.id,
            TransitionKind::Retract,
            "",
        )
        .await
        .unwrap();
        let answer = engram_client::ask_scored(&reader, &db).await.unwrap();
        assert_eq!(answer.hits.len(), 1);
        assert!(answer.hits[0].contradictions.is_empty());
        // As of before the retraction, it was.
        let then = engram_client::ask_scored(
            &reader,
            &Filter {
                as_of: second.commit,
                ..db.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(then.hits[1].contradictions, [second.id]);
    });
}

#[test]
fn the_cli_reads_trust_and_lists_contradictions() {
    let node = TestNode::start();
    let key = node.admin_key_path();
    let run = |arguments: &[&str]| engram_ok(&node, &key, arguments);
    run(&["world", "create", "ops"]);
    let principals: serde_json::Value =
        serde_json::from_str(&run(&["--json", "principal", "list"])).unwrap();
    let admin_key = principals[0]["publicKey"].as_str().unwrap().to_owned();
    let trust: serde_json::Value = serde_json::from_str(&run(&[
        "--json", "trust", "ops", &admin_key, "--label", "db",
    ]))
    .unwrap();
    assert_eq!(trust["score"], 0.5);
    assert_eq!(
        (trust["confirms"].as_u64(), trust["corrects"].as_u64()),
        (Some(0), Some(0))
    );
    let printed = run(&["trust", "ops", &admin_key]);
    assert!(printed.starts_with("trust 0.500"), "{printed}");
}

#[test]
fn a_flood_of_contradictions_lists_a_bounded_few() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let writer = admin.writer("ops").unwrap();
        let target = engram_client::remember(
            &writer,
            &[NewAtom::fact("the pool size is 10").labels(&["db"])],
        )
        .await
        .unwrap()[0];
        let flood: Vec<NewAtom> = (0..2_000)
            .map(|index| {
                NewAtom::fact(format!("no, it is {index}"))
                    .labels(&["noise"])
                    .link(LinkKind::Contradicts, target.id)
            })
            .collect();
        engram_client::remember(&writer, &flood).await.unwrap();
        let reader = admin.reader("ops").unwrap();
        let answer = engram_client::ask_scored(
            &reader,
            &Filter {
                labels: vec!["db".into()],
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(answer.hits.len(), 1);
        // At most 16 listed, the newest first.
        assert_eq!(answer.hits[0].contradictions.len(), 16);
        let newest = engram_client::ask(
            &reader,
            &Filter {
                labels: vec!["noise".into()],
                limit: 1,
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(answer.hits[0].contradictions[0], newest[0].id);
    });
}

#[test]
fn contradictions_past_the_inline_budget_cut_the_answer_when_the_rate_cannot_pay() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let writer = admin.writer("ops").unwrap();
        // Five atoms, each contradicted 100 times: their contradictions take more links
        // than the RPC thread examines inline.
        let mut targets = Vec::new();
        for index in 0..5 {
            let target = engram_client::remember(
                &writer,
                &[NewAtom::fact(format!("claim {index}")).labels(&["db"])],
            )
            .await
            .unwrap()[0];
            let flood: Vec<NewAtom> = (0..100)
                .map(|other| {
                    NewAtom::fact(format!("not claim {index}: {other}"))
                        .labels(&["noise"])
                        .link(LinkKind::Contradicts, target.id)
                })
                .collect();
            engram_client::remember(&writer, &flood).await.unwrap();
            targets.push(target);
        }
        // A reader whose rate cannot pay for a read off the RPC thread, and who may not
        // see the contradicting atoms: each hit's links are all examined, in vain.
        let slow = engram_client::attenuate_reader(
            &admin.reader("ops").unwrap(),
            &Restriction {
                labels: vec!["db".into()],
                rate: engram_client::Rate {
                    calls_per_second: 1,
                    atoms_per_second: 0,
                },
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let answer = engram_client::ask_scored(
            &slow,
            &Filter {
                labels: vec!["db".into()],
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        // The answer is cut where the inline budget ended, and says where to go on.
        assert!(
            !answer.hits.is_empty() && answer.hits.len() < 5,
            "{}",
            answer.hits.len()
        );
        assert!(answer.hits.iter().all(|hit| hit.contradictions.is_empty()));
        let last = answer.hits.last().unwrap().atom.commit;
        assert_eq!(answer.resume_before_commit, Some(last));
        // The node is still serving.
        let all = engram_client::ask_scored(
            &admin.reader("ops").unwrap(),
            &Filter {
                labels: vec!["db".into()],
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(all.hits.len(), 5);
        assert!(all.hits.iter().all(|hit| hit.contradictions.len() == 16));
    });
}
