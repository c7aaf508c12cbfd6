//! Durability: writers remember concurrently, the node is killed with SIGKILL while
//! writes are in flight, and after a restart every acknowledged atom is there and every
//! chain verifies.

use std::cell::RefCell;
use std::rc::Rc;

use engram_client::{NewAtom, Receipt};
use engram_tests::{TestNode, add_principal, run_local, session};
use futures::StreamExt;

const WRITERS: usize = 4;
const ACKNOWLEDGED_BEFORE_KILL: usize = 200;

#[test]
fn every_acknowledged_atom_survives_kill_9() {
    let mut node = TestNode::start();
    let acknowledged: Rc<RefCell<Vec<Receipt>>> = Rc::default();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "busy")
            .await
            .unwrap();
        let (progress, mut acks) = futures::channel::mpsc::unbounded::<()>();
        for index in 0..WRITERS {
            let key = add_principal(&admin, &format!("writer{index}"), &["busy=rw"]).await;
            let agent = session(&node.tcp(), &key).await;
            let writer = agent.writer("busy").unwrap();
            let acknowledged = acknowledged.clone();
            let progress = progress.clone();
            tokio::task::spawn_local(async move {
                for number in 0.. {
                    let atom = NewAtom::fact(format!("writer {index} atom {number}"));
                    // Several calls in flight per connection, so groups commit together.
                    let batch =
                        futures::future::join_all((0..4).map(|_| {
                            engram_client::remember(&writer, std::slice::from_ref(&atom))
                        }))
                        .await;
                    for result in batch {
                        match result {
                            Ok(receipts) => {
                                acknowledged.borrow_mut().extend(receipts);
                                let _ = progress.unbounded_send(());
                            }
                            Err(_) => return, // the node is gone
                        }
                    }
                }
            });
        }
        for _ in 0..ACKNOWLEDGED_BEFORE_KILL {
            acks.next().await.expect("writers keep acknowledging");
        }
        node.kill();
    });
    let acknowledged = acknowledged.take();
    assert!(acknowledged.len() >= ACKNOWLEDGED_BEFORE_KILL);

    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let reader = admin.reader("busy").unwrap();
        for receipt in &acknowledged {
            let atom = engram_client::get(&reader, &receipt.id).await.unwrap();
            assert_eq!((atom.seq, atom.commit), (receipt.seq, receipt.commit));
        }
        let report = engram_client::verify(&reader).await.unwrap();
        assert_eq!(report.first_bad, None);
        assert_eq!(report.chains, WRITERS as u64);
        assert!(report.entries >= acknowledged.len() as u64);
        // The node goes on where it stopped: new writes extend the recovered chains.
        let more =
            engram_client::remember(&admin.writer("busy").unwrap(), &[NewAtom::fact("after")])
                .await
                .unwrap();
        assert!(
            more[0].commit
                > acknowledged
                    .iter()
                    .map(|receipt| receipt.commit)
                    .max()
                    .unwrap()
        );
    });
}

/// A group that only the journal holds (no checkpoint since) is applied again at start.
#[test]
fn a_group_only_the_journal_holds_is_recovered_after_kill_9() {
    let mut node = TestNode::start();
    let receipts = run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        // Creating a world commits durably in redb; the remember after it is journaled.
        engram_client::create_world(&admin.admin().unwrap(), "journaled")
            .await
            .unwrap();
        let atoms: Vec<NewAtom> = (0..3)
            .map(|number| NewAtom::fact(format!("journaled {number}")).labels(&["j"]))
            .collect();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::remember(&admin.writer("journaled").unwrap(), &atoms)
            .await
            .unwrap()
    });
    node.kill();
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let reader = admin.reader("journaled").unwrap();
        for receipt in &receipts {
            let atom = engram_client::get(&reader, &receipt.id).await.unwrap();
            assert_eq!((atom.seq, atom.commit), (receipt.seq, receipt.commit));
        }
        let labelled = engram_client::ask(
            &reader,
            &engram_client::Filter {
                labels: vec!["j".into()],
                ..engram_client::Filter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(labelled.len(), 3, "the postings were recovered too");
        let report = engram_client::verify(&reader).await.unwrap();
        assert_eq!((report.entries, report.first_bad), (3, None));
    });
    node.stop();
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("recovered atoms from the journal")
                && line.contains("applied=3")),
        "the restart did not recover from the journal:\n{log}"
    );
}
