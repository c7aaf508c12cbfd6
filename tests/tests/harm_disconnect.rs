//! A committed change takes effect whether or not its caller still listens: an admin
//! that queues an epoch advance or a revocation behind a large backlog of writes and
//! disconnects before the answer leaves the node wedges nothing.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use engram_client::{ErrorCode, Filter, NewAtom, Session, Watch, WatchEvent, connect};
use engram_tests::{TestNode, add_principal, assert_code, run_local, session};

/// Atoms per batch and batches queued ahead of the change: enough for the writer to
/// be busy well after the caller is gone.
const BATCH_ATOMS: u32 = 5_000;
const BATCHES: usize = 4;

/// Sends `BATCHES` large batches to `writer`, then `change` on the same connection,
/// and closes the connection once the messages are out, without reading any answer.
async fn queue_and_disconnect(node: &TestNode, change: impl FnOnce(&engram_client::Session)) {
    let connection = connect(&node.tcp()).await.unwrap();
    let hostile = connection
        .login(&node.admin_key())
        .await
        .unwrap()
        .graft()
        .await
        .unwrap();
    let writer = hostile.writer("busy").unwrap();
    let text = "x".repeat(512);
    let mut pending = Vec::new();
    for _ in 0..BATCHES {
        let mut request = writer.remember_batch_request();
        let mut list = request.get().init_atoms(BATCH_ATOMS);
        for index in 0..BATCH_ATOMS {
            NewAtom::fact(text.as_str()).fill(list.reborrow().get(index));
        }
        pending.push(request.send());
    }
    change(&hostile);
    connection.close().await.unwrap();
    drop(pending);
}

/// A world `busy`, and an agent watching it over the Unix socket (a quiet filter, so its
/// subscription waits on the node's policy, not on deliveries).
async fn agent_watching(node: &TestNode) -> (SigningKey, Session, Watch) {
    let admin = session(&node.tcp(), &node.admin_key()).await;
    engram_client::create_world(&admin.admin().unwrap(), "busy")
        .await
        .unwrap();
    let key = add_principal(&admin, "agent", &["busy=ro"]).await;
    let agent = session(&node.unix(), &key).await;
    let watch = engram_client::subscribe(
        &agent.observer("busy").unwrap(),
        &Filter {
            labels: vec!["quiet".into()],
            ..Filter::default()
        },
        0,
    )
    .await
    .unwrap();
    (key, agent, watch)
}

/// The code the node ends `watch` with, within a deadline.
async fn end_code(watch: &mut Watch) -> Option<ErrorCode> {
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await {
                Some(WatchEvent::Atoms(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription never ended");
    match ended {
        Some(WatchEvent::End { code, .. }) => code,
        other => panic!("expected the end notice, got {other:?}"),
    }
}

#[test]
fn an_epoch_advance_takes_effect_when_its_caller_is_gone() {
    let node = TestNode::start();
    run_local(async {
        let (key, agent, mut watch) = agent_watching(&node).await;
        queue_and_disconnect(&node, |hostile| {
            let mut request = hostile.admin().unwrap().advance_epoch_request();
            request.get().set_head(&[0xee; 32]);
            // Sent now; its answer is never read.
            std::mem::forget(request.send());
        })
        .await;
        // The agent's subscription of the old epoch ends with staleEpoch once the
        // advance is durable, although nobody waits for the advance's answer.
        assert_eq!(end_code(&mut watch).await, Some(ErrorCode::StaleEpoch));
        assert_code(
            engram_client::heads(&agent.reader("busy").unwrap()).await,
            ErrorCode::StaleEpoch,
        );
        // A fresh graft works, in the new epoch.
        let again = session(&node.tcp(), &key).await;
        assert_eq!(again.epoch.number, 2);
        assert_eq!(again.epoch.head, [0xee; 32]);
        engram_client::heads(&again.reader("busy").unwrap())
            .await
            .unwrap();
    });
}

#[test]
fn a_revocation_takes_effect_when_its_caller_is_gone() {
    let node = TestNode::start();
    run_local(async {
        let (_, agent, mut watch) = agent_watching(&node).await;
        queue_and_disconnect(&node, |hostile| {
            let mut request = hostile.admin().unwrap().remove_principal_request();
            request.get().set_name("agent");
            std::mem::forget(request.send());
        })
        .await;
        assert_eq!(
            end_code(&mut watch).await,
            Some(ErrorCode::PermissionDenied)
        );
        assert_code(
            engram_client::heads(&agent.reader("busy").unwrap()).await,
            ErrorCode::PermissionDenied,
        );
    });
}
