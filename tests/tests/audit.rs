//! The audit trail: every read that answers with atoms is recorded with who read,
//! through which restriction, what was asked, the ids answered and the commit the
//! answer stood at; an admin reads it by principal and commit range, from the client
//! and the CLI, across a restart.

use std::time::{Duration, Instant};

use engram_client::{Filter, NewAtom, Restriction};
use engram_tests::{TestNode, add_principal, admin_with_world, engram_cli, run_local, session};

/// The trail of `principal` once it holds `count` records (they reach it within the
/// commit interval of their reads); polls with a deadline.
async fn trail_of(
    admin: &engram_client::Session,
    principal: &str,
    count: usize,
) -> Vec<engram_client::AuditView> {
    let started = Instant::now();
    loop {
        let records = engram_client::audit(&admin.admin().unwrap(), principal, 0, 0, 0, 1000)
            .await
            .unwrap();
        if records.len() >= count {
            return records;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the trail holds {} records of {count}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn every_read_is_recorded_with_what_it_answered() {
    let mut node = TestNode::start();
    let (agent_key, expected) = run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let agent_key = add_principal(&admin, "agent", &["team/auth=rw"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let writer = agent.writer("team/auth").unwrap();
        let reader = agent.reader("team/auth").unwrap();
        let receipts = engram_client::remember(
            &writer,
            &[
                NewAtom::fact("tokens expire after one hour").labels(&["auth"]),
                NewAtom::fact("the pool size is 10").labels(&["db"]),
                NewAtom::constraint("do not use requests; use httpx", &["requests"]),
            ],
        )
        .await
        .unwrap();
        let asked_at = receipts[2].commit;
        let auth = Filter {
            labels: vec!["auth".into()],
            ..Filter::default()
        };
        let asked = engram_client::ask(&reader, &auth).await.unwrap();
        engram_client::get(&reader, &receipts[1].id).await.unwrap();
        engram_client::replay(&reader, 0, 10).await.unwrap();
        engram_client::check(&reader, "fetch with requests", &[])
            .await
            .unwrap();
        engram_client::diff(&reader, 0, receipts[1].commit, 10)
            .await
            .unwrap();
        let narrowed = engram_client::attenuate_reader(
            &reader,
            &Restriction {
                labels: vec!["db".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        engram_client::ask(&narrowed, &Filter::default())
            .await
            .unwrap();
        // A later write moves the commit the next answers stand at.
        let later = engram_client::remember(&writer, &[NewAtom::fact("later")])
            .await
            .unwrap()[0];
        engram_client::get(&reader, &later.id).await.unwrap();

        let trail = trail_of(&admin, "agent", 7).await;
        let seen: Vec<(&str, u64, Vec<[u8; 32]>)> = trail
            .iter()
            .map(|record| (record.method.as_str(), record.commit, record.ids.clone()))
            .collect();
        let ids = |indexes: &[usize]| -> Vec<[u8; 32]> {
            indexes.iter().map(|index| receipts[*index].id).collect()
        };
        let expected = vec![
            ("ask", asked_at, vec![asked[0].id]),
            ("get", asked_at, ids(&[1])),
            ("replay", asked_at, ids(&[0, 1, 2])),
            ("check", asked_at, ids(&[2])),
            ("diff", asked_at, ids(&[0, 1])),
            ("ask", asked_at, ids(&[1])),
            ("get", later.commit, vec![later.id]),
        ];
        assert_eq!(seen, expected);
        assert!(trail.iter().all(|record| record.world == "team/auth"
            && record.principal == agent_key.verifying_key().to_bytes()));
        // What it asked, and through which restriction.
        let query: serde_json::Value = serde_json::from_str(&trail[0].query).unwrap();
        assert_eq!(query["labels"][0], "auth");
        assert_eq!(trail[0].restriction, "{}");
        let restriction: serde_json::Value = serde_json::from_str(&trail[5].restriction).unwrap();
        assert_eq!(restriction["labels"][0], "db");
        let plan: serde_json::Value = serde_json::from_str(&trail[3].query).unwrap();
        assert_eq!(plan["plan"], "fetch with requests");
        // "What did it receive when it asked at commit N": one commit's records, and
        // paging within it.
        let at = engram_client::audit(
            &admin.admin().unwrap(),
            "agent",
            later.commit,
            later.commit,
            0,
            10,
        )
        .await
        .unwrap();
        assert_eq!(at.len(), 1);
        assert_eq!(at[0].ids, [later.id]);
        let first_two =
            engram_client::audit(&admin.admin().unwrap(), "agent", asked_at, asked_at, 0, 2)
                .await
                .unwrap();
        let next = engram_client::audit(
            &admin.admin().unwrap(),
            "agent",
            asked_at,
            asked_at,
            first_two[1].sequence,
            10,
        )
        .await
        .unwrap();
        assert_eq!(
            first_two
                .iter()
                .chain(&next)
                .map(|record| record.sequence)
                .collect::<Vec<_>>(),
            trail[..6]
                .iter()
                .map(|record| record.sequence)
                .collect::<Vec<_>>()
        );
        (agent_key, expected)
    });

    // The trail survives a restart, and is read by name or by key from the CLI.
    node.stop();
    node.restart();
    let key = node.admin_key_path();
    let output = engram_cli(&node, &key, &["--json", "audit", "agent"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let methods: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        expected
            .iter()
            .map(|(method, _, _)| *method)
            .collect::<Vec<_>>()
    );
    let by_key = engram_cli(
        &node,
        &key,
        &[
            "audit",
            &hex::encode(agent_key.verifying_key().to_bytes()),
            "--limit",
            "1",
        ],
    );
    let printed = String::from_utf8_lossy(&by_key.stdout);
    assert!(printed.starts_with("commit "), "{printed}");
    assert!(printed.contains("ask team/auth"), "{printed}");
    let unknown = engram_cli(&node, &key, &["audit", "nobody"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("notFound"));
}

/// With `--audit-retention-ms`, a record older than the retention is deleted as the
/// trail goes on being written, and the records of reads within it stay.
#[test]
fn records_past_the_retention_are_deleted_and_recent_ones_kept() {
    const RETENTION_MS: i64 = 2_000;
    let node = TestNode::start_with(&["--audit-retention-ms", &RETENTION_MS.to_string()]);
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let agent_key = add_principal(&admin, "agent", &["w=rw"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let receipts = engram_client::remember(&agent.writer("w").unwrap(), &[NewAtom::fact("x")])
            .await
            .unwrap();
        let reader = agent.reader("w").unwrap();
        engram_client::get(&reader, &receipts[0].id).await.unwrap();
        let first = trail_of(&admin, "agent", 1).await[0].clone();
        // The agent goes on reading; its first record goes once the retention is past.
        let started = Instant::now();
        loop {
            engram_client::get(&reader, &receipts[0].id).await.unwrap();
            let trail = engram_client::audit(&admin.admin().unwrap(), "agent", 0, 0, 0, 1000)
                .await
                .unwrap();
            if trail.iter().all(|record| record.sequence != first.sequence) {
                // What is left is what was read within the retention (and a little
                // more: pruning runs at most every tenth of it).
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                assert!(
                    now - first.at_unix_ms >= RETENTION_MS,
                    "deleted before the retention"
                );
                assert!(!trail.is_empty(), "recent records are kept");
                assert!(
                    (trail.iter()).all(|record| now - record.at_unix_ms < RETENTION_MS + 1_000),
                    "{trail:?}"
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the first record is still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A subscription's pushes answer with atoms too: each is recorded, with the filter,
/// the commit it read after and the ids it pushed.
#[test]
fn each_push_of_a_subscription_is_recorded() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let agent_key = add_principal(&admin, "agent", &["w=rwo"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let auth = Filter {
            labels: vec!["auth".into()],
            ..Filter::default()
        };
        let mut watch = engram_client::subscribe(&agent.observer("w").unwrap(), &auth, 0)
            .await
            .unwrap();
        let receipts = engram_client::remember(
            &agent.writer("w").unwrap(),
            &[
                NewAtom::fact("tokens expire after one hour").labels(&["auth"]),
                NewAtom::fact("the pool size is 10").labels(&["db"]),
                NewAtom::fact("keys rotate monthly").labels(&["auth"]),
            ],
        )
        .await
        .unwrap();
        let mut pushed = Vec::new();
        while pushed.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
                Ok(Some(engram_client::WatchEvent::Atoms(atoms))) => {
                    pushed.extend(atoms.iter().map(|atom| atom.id))
                }
                other => panic!("expected atoms, got {other:?}"),
            }
        }
        assert_eq!(pushed, [receipts[0].id, receipts[2].id]);
        // The agent made no other read: its trail is the pushes, one record each.
        let started = Instant::now();
        let trail = loop {
            let trail = trail_of(&admin, "agent", 1).await;
            let recorded: Vec<[u8; 32]> = (trail.iter())
                .inspect(|record| assert_eq!(record.method, "subscribe"))
                .flat_map(|record| record.ids.clone())
                .collect();
            if recorded == pushed {
                break trail;
            }
            assert!(recorded.len() < 2, "{trail:?}");
            assert!(started.elapsed() < Duration::from_secs(10), "{trail:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let first = &trail[0];
        let query: serde_json::Value = serde_json::from_str(&first.query).unwrap();
        assert_eq!(query["labels"], serde_json::json!(["auth"]));
        assert_eq!(query["fromCommit"], 0);
        assert!(first.commit >= receipts[2].commit);
    });
}
