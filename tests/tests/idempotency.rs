//! Safe retries: a `remember` sent again with its idempotency key writes nothing and
//! answers the first request's receipts, across connections, a SIGKILL and a restart;
//! the same key with other atoms is refused; the client's retry reconnects and writes
//! once; the CLI retries with a key of its own or the one given.

use engram_client::{ErrorCode, Filter, IdempotencyKey, NewAtom};
use engram_tests::{
    TestNode, add_principal, admin_with_world, assert_code, engram_cli, run_local, session,
};
use serde_json::Value;

async fn count(reader: &engram_client::engram_schema::engram_capnp::world_reader::Client) -> usize {
    let filter = Filter {
        limit: 1000,
        ..Filter::default()
    };
    engram_client::ask(reader, &filter).await.unwrap().len()
}

#[test]
fn a_retried_request_is_answered_again_and_written_once() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let key = add_principal(&admin, "agent", &["w=rw"]).await;
        let agent = session(&node.tcp(), &key).await;
        let writer = agent.writer("w").unwrap();
        let atoms = [NewAtom::fact("deploys run at noon")];
        let request = IdempotencyKey::new("deploy-note-1").unwrap();

        let first = engram_client::remember_keyed(&writer, &atoms, &request)
            .await
            .unwrap();
        assert!(!first.replayed);
        // Another connection of the same principal: keys are the principal's.
        let again = session(&node.unix(), &key).await;
        let second = engram_client::remember_keyed(&again.writer("w").unwrap(), &atoms, &request)
            .await
            .unwrap();
        assert!(second.replayed);
        assert_eq!(second.receipts, first.receipts);

        // The same key with other atoms is a conflict, and writes nothing.
        let other = [NewAtom::fact("deploys run at midnight")];
        assert_code(
            engram_client::remember_keyed(&writer, &other, &request).await,
            ErrorCode::Conflict,
        );
        // Another principal's key of the same bytes is its own.
        let admin_writer = admin.writer("w").unwrap();
        let theirs = engram_client::remember_keyed(&admin_writer, &atoms, &request)
            .await
            .unwrap();
        assert!(!theirs.replayed);
        assert_ne!(theirs.receipts, first.receipts);
        assert_eq!(count(&agent.reader("w").unwrap()).await, 2);

        // A batch: every receipt again, none of its atoms twice.
        let batch: Vec<NewAtom> = (0..50)
            .map(|index| NewAtom::fact(format!("batch atom {index}")))
            .collect();
        let batch_key = IdempotencyKey::random().unwrap();
        let written = engram_client::remember_keyed(&writer, &batch, &batch_key)
            .await
            .unwrap();
        let retried = engram_client::remember_keyed(&writer, &batch, &batch_key)
            .await
            .unwrap();
        assert!(retried.replayed);
        assert_eq!(retried.receipts, written.receipts);
        assert_eq!(count(&agent.reader("w").unwrap()).await, 52);

        // Keys the node refuses before writing anything.
        let mut request = writer.remember_request();
        NewAtom::fact("x").fill(request.get().init_atom());
        request.get().set_idempotency_key(&[7; 65]);
        assert_code(
            request
                .send()
                .promise
                .await
                .map(|_| ())
                .map_err(engram_client::ClientError::from),
            ErrorCode::InvalidArgument,
        );
        assert_eq!(count(&agent.reader("w").unwrap()).await, 52);
    });
}

#[test]
fn a_key_survives_kill_9_and_the_retry_after_the_restart_writes_nothing() {
    let mut node = TestNode::start();
    let key_path = node.data_dir().join("agent.key");
    let (first, request, atoms, agent_key) = run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let key = add_principal(&admin, "agent", &["w=rw"]).await;
        engram_client::keyfile::write_new(&key_path, &key).unwrap();
        let agent = session(&node.tcp(), &key).await;
        let atoms: Vec<NewAtom> = (0..3)
            .map(|index| NewAtom::fact(format!("before the crash {index}")))
            .collect();
        let request = IdempotencyKey::random().unwrap();
        let first = engram_client::remember_keyed(&agent.writer("w").unwrap(), &atoms, &request)
            .await
            .unwrap();
        (first, request, atoms, key)
    });
    // Acknowledged moments before: the group is in the journal, not yet checkpointed.
    node.kill();
    node.restart();
    run_local(async {
        // The writer the closure gives first is of a connection the kill broke: the
        // retry connects again and sends the same key.
        let stale = session(&node.unix(), &agent_key).await.writer("w").unwrap();
        node.kill();
        node.restart();
        let mut acquired = 0;
        let endpoint = node.tcp();
        let retried = engram_client::remember_retrying(
            || {
                acquired += 1;
                let stale = stale.clone();
                let endpoint = endpoint.clone();
                let agent_key = agent_key.clone();
                async move {
                    if acquired == 1 {
                        Ok(stale)
                    } else {
                        session(&endpoint, &agent_key).await.writer("w")
                    }
                }
            },
            &atoms,
            &request,
            3,
        )
        .await
        .unwrap();
        assert_eq!(acquired, 2, "one lost attempt, one retry");
        assert!(retried.replayed);
        assert_eq!(retried.receipts, first.receipts);
        let agent = session(&node.tcp(), &agent_key).await;
        assert_eq!(count(&agent.reader("w").unwrap()).await, 3);
        let report = engram_client::verify(&agent.reader("w").unwrap())
            .await
            .unwrap();
        assert_eq!((report.entries, report.first_bad), (3, None));
    });
    // The CLI sends a key of its own, or the one given: the same command run again is
    // answered, not written again.
    let remember = |text: &str| {
        engram_cli(
            &node,
            &key_path,
            &[
                "--json",
                "remember",
                "w",
                text,
                "--idempotency-key",
                "nightly-2026-11-29",
            ],
        )
    };
    let first_run = remember("the nightly build passed");
    assert!(first_run.status.success(), "{first_run:?}");
    let second_run = remember("the nightly build passed");
    assert!(second_run.status.success(), "{second_run:?}");
    let receipts = |output: &std::process::Output| -> Value {
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let (first_run, second_run) = (receipts(&first_run), receipts(&second_run));
    assert_eq!(first_run[0]["replayed"], false);
    assert_eq!(second_run[0]["replayed"], true);
    assert_eq!(first_run[0]["id"], second_run[0]["id"]);
    let conflict = remember("the nightly build failed");
    assert_eq!(conflict.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&conflict.stderr).contains("conflict: idempotency key"),
        "{conflict:?}"
    );
    let without_key = engram_cli(&node, &key_path, &["remember", "w", "a note"]);
    assert!(without_key.status.success(), "{without_key:?}");
    let too_long = "k".repeat(65);
    let refused = engram_cli(
        &node,
        &key_path,
        &["remember", "w", "x", "--idempotency-key", &too_long],
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    run_local(async {
        let agent = session(&node.tcp(), &agent_key).await;
        assert_eq!(count(&agent.reader("w").unwrap()).await, 5);
    });
}
