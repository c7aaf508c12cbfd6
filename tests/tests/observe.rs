//! Subscriptions: committed atoms pushed in commit order, exactly once per subscription,
//! resumable from a cursor across a killed client and a restarted node, within filter and
//! restriction, with a stalled subscriber held back by flow control instead of delaying
//! others, and ended with a stable code on epoch advance and shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use engram_client::engram_schema::engram_capnp::AtomKind;
use engram_client::{ErrorCode, Filter, NewAtom, Restriction, Session, Watch, WatchEvent};
use engram_tests::{TestNode, add_principal, binary, run_local, session};

/// The next pushed batch as (commit, text) pairs.
async fn next_batch(watch: &mut Watch) -> Vec<(u64, String)> {
    match watch.next().await.expect("the subscription is live") {
        WatchEvent::Atoms(atoms) => atoms
            .into_iter()
            .map(|atom| (atom.commit, atom.text))
            .collect(),
        WatchEvent::End { code, message } => panic!("ended early: {code:?} {message}"),
    }
}

/// Takes atoms from `watch` until `count` arrived; more than `count` is a failure.
async fn collect(watch: &mut Watch, count: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        seen.extend(next_batch(watch).await);
    }
    assert_eq!(seen.len(), count, "more atoms than expected");
    seen
}

async fn admin_with_world(node: &TestNode, world: &str) -> Session {
    let admin = session(&node.tcp(), &node.admin_key()).await;
    engram_client::create_world(&admin.admin().unwrap(), world)
        .await
        .unwrap();
    session(&node.tcp(), &node.admin_key()).await
}

#[test]
fn concurrent_writers_arrive_in_commit_order_exactly_once() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "busy").await;
        let observer = admin.observer("busy").unwrap();
        let mut from_start = engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
        let mut writers = Vec::new();
        for index in 0..3 {
            let key = add_principal(&admin, &format!("writer{index}"), &["busy=rw"]).await;
            let writer = session(&node.unix(), &key).await.writer("busy").unwrap();
            writers.push(tokio::task::spawn_local(async move {
                for round in 0..20 {
                    let batch: Vec<NewAtom> = (0..(round % 4 + 1))
                        .map(|position| NewAtom::fact(format!("w{index} r{round} p{position}")))
                        .collect();
                    engram_client::remember(&writer, &batch).await.unwrap();
                }
            }));
        }
        let mut late = None;
        let mut seen = Vec::new();
        while seen.len() < 150 {
            seen.extend(next_batch(&mut from_start).await);
            if seen.len() >= 40 && late.is_none() {
                // A second subscriber joins midway from commit 0: catch-up, then live.
                late = Some(
                    engram_client::subscribe(&observer, &Filter::default(), 0)
                        .await
                        .unwrap(),
                );
            }
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let (replayed, _) = engram_client::replay(&admin.reader("busy").unwrap(), 0, 1000)
            .await
            .unwrap();
        let expected: Vec<(u64, String)> = replayed
            .into_iter()
            .map(|atom| (atom.commit, atom.text))
            .collect();
        assert_eq!(expected.len(), 150);
        assert_eq!(seen, expected);
        assert_eq!(collect(late.as_mut().unwrap(), 150).await, expected);
        // Nothing more is pending: a new atom is the next event on both.
        engram_client::remember(&admin.writer("busy").unwrap(), &[NewAtom::fact("last")])
            .await
            .unwrap();
        for watch in [&mut from_start, late.as_mut().unwrap()] {
            assert_eq!(collect(watch, 1).await[0], (151, "last".to_owned()));
        }
    });
}

#[test]
fn filters_and_restrictions_hold_for_subscriptions() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "mixed").await;
        let narrowed = engram_client::attenuate_observer(
            &admin.observer("mixed").unwrap(),
            &Restriction {
                labels: vec!["public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let filter = Filter {
            kinds: vec![AtomKind::Decision],
            ..Filter::default()
        };
        let mut watch = engram_client::subscribe(&narrowed, &filter, 0)
            .await
            .unwrap();
        engram_client::remember(
            &admin.writer("mixed").unwrap(),
            &[
                NewAtom::new(AtomKind::Decision, "public decision").labels(&["public"]),
                NewAtom::new(AtomKind::Decision, "private decision").labels(&["private"]),
                NewAtom::fact("public fact").labels(&["public"]),
                NewAtom::new(AtomKind::Decision, "second public decision").labels(&["public"]),
            ],
        )
        .await
        .unwrap();
        let seen = collect(&mut watch, 2).await;
        // A similarity vector means nothing to a subscription: refused, not ignored.
        let refused = engram_client::subscribe(
            &narrowed,
            &Filter {
                vector: vec![1.0, 0.0],
                ..Filter::default()
            },
            0,
        )
        .await;
        match refused {
            Err(error) => assert_eq!(error.code(), Some(ErrorCode::InvalidArgument), "{error}"),
            Ok(_) => panic!("a subscription with a vector was accepted"),
        }
        assert_eq!(
            seen,
            vec![
                (1, "public decision".to_owned()),
                (4, "second public decision".to_owned())
            ]
        );
    });
}

#[test]
fn a_stalled_subscriber_is_held_back_and_loses_nothing() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "flood").await;
        let observer = admin.observer("flood").unwrap();
        let mut stalled = engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
        let mut active = engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
        let writer = admin.writer("flood").unwrap();
        let text = "x".repeat(200);
        for round in 0..10 {
            let batch: Vec<NewAtom> = (0..200)
                .map(|index| NewAtom::fact(format!("{round}/{index} {text}")))
                .collect();
            engram_client::remember(&writer, &batch).await.unwrap();
        }
        // The active subscriber gets all 2,000 while the stalled one takes nothing.
        let all = collect(&mut active, 2000).await;
        // The node pushed the stalled one only what fits the flow-control window: far
        // less than everything (2,000 atoms of over 200 bytes are 32 pushes).
        assert!(
            stalled.waiting() < 16,
            "{} pushes queued at a stalled subscriber",
            stalled.waiting()
        );
        // Once it reads, it gets everything, in order, exactly once.
        assert_eq!(collect(&mut stalled, 2000).await, all);
    });
}

#[test]
fn epoch_advance_ends_subscriptions_with_stale_epoch() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let agent_key = add_principal(&admin, "agent", &["w=rwo"]).await;
        let agent = session(&node.unix(), &agent_key).await;
        let mut watch =
            engram_client::subscribe(&agent.observer("w").unwrap(), &Filter::default(), 0)
                .await
                .unwrap();
        engram_client::remember(&admin.writer("w").unwrap(), &[NewAtom::fact("before")])
            .await
            .unwrap();
        assert_eq!(collect(&mut watch, 1).await[0].1, "before");
        engram_client::advance_epoch(&admin.admin().unwrap(), &[3; 32])
            .await
            .unwrap();
        match watch.next().await {
            Some(WatchEvent::End { code, message }) => {
                assert_eq!(code, Some(ErrorCode::StaleEpoch), "{message}")
            }
            other => panic!("expected the end of the subscription, got {other:?}"),
        }
        // Re-graft and resume from the cursor: nothing lost, nothing repeated.
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::remember(&admin.writer("w").unwrap(), &[NewAtom::fact("after")])
            .await
            .unwrap();
        let agent = session(&node.unix(), &agent_key).await;
        let mut resumed =
            engram_client::subscribe(&agent.observer("w").unwrap(), &Filter::default(), 1)
                .await
                .unwrap();
        assert_eq!(
            collect(&mut resumed, 1).await,
            vec![(2, "after".to_owned())]
        );
    });
}

#[test]
fn a_subscription_resumes_from_its_cursor_after_a_node_restart() {
    let mut node = TestNode::start();
    let cursor = run_local(async {
        let admin = admin_with_world(&node, "log").await;
        let mut watch =
            engram_client::subscribe(&admin.observer("log").unwrap(), &Filter::default(), 0)
                .await
                .unwrap();
        let batch: Vec<NewAtom> = (0..5)
            .map(|index| NewAtom::fact(format!("a{index}")))
            .collect();
        engram_client::remember(&admin.writer("log").unwrap(), &batch)
            .await
            .unwrap();
        let seen = collect(&mut watch, 5).await;
        node.terminate();
        // A stopping node tells its subscribers why.
        match watch.next().await {
            Some(WatchEvent::End { code, .. }) => assert_eq!(code, Some(ErrorCode::Unavailable)),
            other => panic!("expected an end notice, got {other:?}"),
        }
        node.stop();
        seen.last().unwrap().0
    });
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let batch: Vec<NewAtom> = (5..8)
            .map(|index| NewAtom::fact(format!("a{index}")))
            .collect();
        engram_client::remember(&admin.writer("log").unwrap(), &batch)
            .await
            .unwrap();
        let mut watch =
            engram_client::subscribe(&admin.observer("log").unwrap(), &Filter::default(), cursor)
                .await
                .unwrap();
        let texts: Vec<String> = collect(&mut watch, 3)
            .await
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        assert_eq!(texts, vec!["a5", "a6", "a7"]);
    });
}

#[test]
fn the_watch_cli_resumes_after_its_connection_is_killed() {
    let node = TestNode::start();
    let watch = |from: u64| {
        Command::new(binary("engram"))
            .args(["--json", "--node", node.tcp_address(), "--key"])
            .arg(node.admin_key_path())
            .args(["watch", "feed", "--from", &from.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let lines = |child: &mut std::process::Child, count: usize| -> Vec<serde_json::Value> {
        let mut reader = BufReader::new(child.stdout.as_mut().unwrap());
        (0..count)
            .map(|_| {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                serde_json::from_str(&line).unwrap()
            })
            .collect()
    };
    run_local(async {
        let admin = admin_with_world(&node, "feed").await;
        let writer = admin.writer("feed").unwrap();
        let batch: Vec<NewAtom> = (0..10)
            .map(|index| NewAtom::fact(format!("n{index}")))
            .collect();
        engram_client::remember(&writer, &batch).await.unwrap();

        let mut first = watch(0);
        let got = lines(&mut first, 4);
        first.kill().unwrap();
        first.wait().unwrap();
        let cursor = got.last().unwrap()["commit"].as_u64().unwrap();
        assert_eq!(cursor, 4);

        let more: Vec<NewAtom> = (10..12)
            .map(|index| NewAtom::fact(format!("n{index}")))
            .collect();
        engram_client::remember(&writer, &more).await.unwrap();
        let mut second = watch(cursor);
        let rest: Vec<String> = lines(&mut second, 8)
            .into_iter()
            .map(|atom| atom["text"].as_str().unwrap().to_owned())
            .collect();
        second.kill().unwrap();
        second.wait().unwrap();
        let expected: Vec<String> = (4..12).map(|index| format!("n{index}")).collect();
        assert_eq!(rest, expected);
    });
}

#[test]
fn the_subscription_limit_is_resource_exhausted() {
    let node = TestNode::start_with(&["--subscriptions-per-principal-max", "2"]);
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let observer = admin.observer("w").unwrap();
        let first = engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
        let _second = engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
        match engram_client::subscribe(&observer, &Filter::default(), 0).await {
            Err(error) => assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}"),
            Ok(_) => panic!("a subscription past the limit was accepted"),
        }
        // Cancel returns once the subscription has ended, so its place is free at once.
        first.cancel().await.unwrap();
        engram_client::subscribe(&observer, &Filter::default(), 0)
            .await
            .unwrap();
    });
}
