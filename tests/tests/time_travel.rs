//! Time travel: `ask`, `get` and `heads` answer as the world stood at a commit (`asOf`),
//! for unrestricted and restricted readers, from the Rust client and the CLI; a
//! subscription refuses it.

use engram_client::{ErrorCode, Filter, NewAtom, Restriction};
use engram_tests::{TestNode, admin_with_world, assert_code, engram_cli, run_local};

#[test]
fn ask_get_and_heads_answer_as_of_a_commit() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "history").await;
        let writer = admin.writer("history").unwrap();
        let remember = |text: &'static str, label: &'static str| {
            let writer = writer.clone();
            async move {
                engram_client::remember(&writer, &[NewAtom::fact(text).labels(&["jwt", label])])
                    .await
                    .unwrap()[0]
            }
        };
        let first = remember("JWT algorithm: RS256", "public").await;
        let second = remember("JWT algorithm: ES256", "secret").await;
        let third = remember("JWT keys rotate monthly", "public").await;
        let reader = admin.reader("history").unwrap();
        let texts = |atoms: Vec<engram_client::AtomView>| -> Vec<String> {
            atoms.into_iter().map(|atom| atom.text).collect()
        };
        let as_of = |commit: u64| Filter {
            labels: vec!["jwt".into()],
            as_of: commit,
            ..Filter::default()
        };
        assert_eq!(
            texts(
                engram_client::ask(&reader, &as_of(first.commit))
                    .await
                    .unwrap()
            ),
            ["JWT algorithm: RS256"]
        );
        assert_eq!(
            engram_client::ask(&reader, &as_of(second.commit))
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            engram_client::ask(&reader, &as_of(0)).await.unwrap().len(),
            3
        );
        // Paging within a moment: beforeCommit and asOf both bound the answer.
        let paged = Filter {
            before_commit: second.commit,
            ..as_of(third.commit)
        };
        assert_eq!(
            texts(engram_client::ask(&reader, &paged).await.unwrap()),
            ["JWT algorithm: RS256"]
        );

        assert_code(
            engram_client::get_as_of(&reader, &third.id, second.commit).await,
            ErrorCode::NotFound,
        );
        let got = engram_client::get_as_of(&reader, &third.id, third.commit)
            .await
            .unwrap();
        assert_eq!(got.text, "JWT keys rotate monthly");

        let heads = engram_client::heads_as_of(&reader, second.commit)
            .await
            .unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!((heads[0].seq, heads[0].id), (second.seq, second.id));
        assert_eq!(engram_client::heads(&reader).await.unwrap()[0].id, third.id);
        // A restricted reader's heads as of a commit: its newest visible atom by then.
        let public = engram_client::attenuate_reader(
            &reader,
            &Restriction {
                labels: vec!["public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let heads = engram_client::heads_as_of(&public, second.commit)
            .await
            .unwrap();
        assert_eq!(heads[0].id, first.id);

        // diff: what changed between two commits, in commit order, paged.
        let (changed, cursor) = engram_client::diff(&reader, first.commit, third.commit, 1)
            .await
            .unwrap();
        assert_eq!(
            (texts(changed), cursor),
            (vec!["JWT algorithm: ES256".to_owned()], second.commit)
        );
        let (changed, cursor) = engram_client::diff(&reader, cursor, third.commit, 1)
            .await
            .unwrap();
        assert_eq!((changed[0].id, cursor), (third.id, third.commit));
        let (changed, cursor) = engram_client::diff(&reader, cursor, third.commit, 1)
            .await
            .unwrap();
        assert_eq!((changed.len(), cursor), (0, third.commit));
        // Through a restriction: the hidden change is not there, and the cursor does not
        // stop on it.
        let (changed, cursor) = engram_client::diff(&public, first.commit, third.commit, 10)
            .await
            .unwrap();
        assert_eq!(
            (texts(changed), cursor),
            (vec!["JWT keys rotate monthly".to_owned()], third.commit)
        );

        // A subscription delivers what comes; asOf has no meaning there.
        let observer = admin.observer("history").unwrap();
        let mut request = observer.subscribe_request();
        as_of(first.commit).fill(request.get().init_filter());
        let error = match request.send().promise.await {
            Ok(_) => panic!("a subscription took asOf"),
            Err(error) => engram_client::ClientError::from(error),
        };
        assert_eq!(error.code(), Some(ErrorCode::InvalidArgument), "{error}");
    });
}

#[test]
fn the_cli_takes_as_of() {
    let node = TestNode::start();
    let run = |arguments: &[&str]| {
        let output = engram_cli(&node, &node.admin_key_path(), arguments);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()
    };
    run(&["world", "create", "history"]);
    let first = run(&["--json", "remember", "history", "RS256"]);
    run(&["--json", "remember", "history", "ES256"]);
    let commit = first[0]["commit"].as_u64().unwrap().to_string();
    let then = run(&["--json", "ask", "history", "--as-of", &commit]);
    assert_eq!(then.as_array().unwrap().len(), 1);
    assert_eq!(then[0]["text"], "RS256");
    let heads = run(&["--json", "heads", "history", "--as-of", &commit]);
    assert_eq!(heads[0]["seq"], 1);
    let id = first[0]["id"].as_str().unwrap();
    assert_eq!(
        run(&["--json", "get", "history", id, "--as-of", &commit])["text"],
        "RS256"
    );
    let changed = run(&["--json", "diff", "history", "--from", &commit]);
    assert_eq!(changed["atoms"][0]["text"], "ES256");
    assert_eq!(changed["atoms"].as_array().unwrap().len(), 1);

    // A time names the last commit recorded at or before it.
    let recorded = |id: &str| {
        let atom = run(&["--json", "get", "history", id]);
        atom["recordedAtUnixMs"].as_i64().unwrap()
    };
    let time = |unix_ms: i64| {
        jiff::Timestamp::from_millisecond(unix_ms)
            .unwrap()
            .to_string()
    };
    let first_time = recorded(id);
    let then = run(&["--json", "ask", "history", "--as-of", &time(first_time)]);
    assert_eq!(then.as_array().unwrap().last().unwrap()["text"], "RS256");
    let now = run(&[
        "--json",
        "ask",
        "history",
        "--as-of",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(now.as_array().unwrap().len(), 2);
    let before = engram_cli(
        &node,
        &node.admin_key_path(),
        &["ask", "history", "--as-of", &time(first_time - 1)],
    );
    assert_eq!(before.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&before.stderr).contains("nothing recorded by then"));
}

#[test]
fn commit_at_finds_the_last_commit_recorded_by_a_time() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "history").await;
        let writer = admin.writer("history").unwrap();
        let reader = admin.reader("history").unwrap();
        assert_eq!(
            engram_client::commit_at(&reader, i64::MAX).await.unwrap(),
            0
        );
        let mut receipts = Vec::new();
        for index in 0..40 {
            receipts.push(
                engram_client::remember(&writer, &[NewAtom::fact(format!("fact {index}"))])
                    .await
                    .unwrap()[0],
            );
        }
        let mut recorded = Vec::new();
        for receipt in &receipts {
            let atom = engram_client::get(&reader, &receipt.id).await.unwrap();
            recorded.push((receipt.commit, atom.recorded_at_unix_ms));
        }
        for &(commit, at) in &recorded {
            // The last commit recorded in that millisecond: this one or a later one of
            // the same millisecond.
            let found = engram_client::commit_at(&reader, at).await.unwrap();
            let last_then = recorded
                .iter()
                .filter(|(_, other)| *other == at)
                .map(|(other, _)| *other)
                .max()
                .unwrap();
            assert_eq!(found, last_then, "for commit {commit} recorded at {at}");
            let earlier = engram_client::commit_at(&reader, at - 1).await.unwrap();
            assert!(earlier < commit, "{earlier} for commit {commit}");
        }
        assert_eq!(engram_client::commit_at(&reader, 0).await.unwrap(), 0);
        assert_eq!(
            engram_client::commit_at(&reader, i64::MAX).await.unwrap(),
            receipts.last().unwrap().commit
        );
    });
}
