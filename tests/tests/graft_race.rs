//! `graft` answers from one snapshot of the policy: capabilities a graft lists under a
//! principal's new grants work under them, even when the graft races the change.

use engram_client::{ErrorCode, Grant, connect};
use engram_tests::{TestNode, add_principal, admin_with_world, run_local};

#[test]
fn a_graft_racing_a_grant_change_hands_out_only_live_capabilities() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w1").await;
        engram_client::create_world(&admin.admin().unwrap(), "w2")
            .await
            .unwrap();
        let agent_key = add_principal(&admin, "agent", &["w1=r"]).await;
        let mut membranes = Vec::new();
        for _ in 0..4 {
            let connection = connect(&node.tcp()).await.unwrap();
            membranes.push(connection.login(&agent_key).await.unwrap());
        }
        let narrow = [Grant::parse("w1=r").unwrap()];
        let wide = [Grant::parse("w1=r").unwrap(), Grant::parse("w2=r").unwrap()];
        let (mut dead, mut new_grafts) = (0, 0);
        for round in 0..40 {
            // One change a round: to wide on even rounds, back to narrow on odd ones.
            let (grants, new_has_w2) = if round % 2 == 0 {
                (&wide[..], true)
            } else {
                (&narrow[..], false)
            };
            let change = async {
                engram_client::set_grants(&admin.admin().unwrap(), "agent", grants)
                    .await
                    .unwrap();
            };
            let grafts = membranes.iter().flat_map(|membrane| {
                (0..4).map(move |_| async move {
                    let session = membrane.graft().await.unwrap();
                    let lists_w2 = session.worlds.contains_key("w2");
                    let reader = session.reader("w1").unwrap();
                    (lists_w2, engram_client::generation(&reader).await)
                })
            });
            let ((), answers) = futures::join!(change, futures::future::join_all(grafts));
            for (lists_w2, first_call) in answers {
                // A graft that listed the new grants came after the round's one change:
                // nothing changed since, so its capabilities must work.
                if lists_w2 == new_has_w2 {
                    new_grafts += 1;
                    if let Err(error) = first_call {
                        dead += 1;
                        eprintln!("round {round}: {error}");
                    }
                }
            }
        }
        assert!(new_grafts > 0);
        assert_eq!(
            dead, 0,
            "{dead} of {new_grafts} grafts under the new grants were dead"
        );
    });
}

/// Once a capability is stale it stays stale: grafts racing epoch advances hand out
/// capabilities that either work or answer `staleEpoch`, and one that answered
/// `staleEpoch` answers it to every later call (a graft must not hand out a capability
/// of an epoch this node has not yet taken on).
#[test]
fn a_capability_that_answered_stale_epoch_answers_it_ever_after() {
    let node = TestNode::start();
    run_local(async {
        admin_with_world(&node, "w1").await;
        let agent_key = {
            let admin = engram_tests::session(&node.tcp(), &node.admin_key()).await;
            add_principal(&admin, "agent", &["w1=r"]).await
        };
        let mut membranes = Vec::new();
        for _ in 0..4 {
            let connection = connect(&node.tcp()).await.unwrap();
            membranes.push(connection.login(&agent_key).await.unwrap());
        }
        let (mut stale, mut revived) = (0, 0);
        for round in 0..40u8 {
            let admin = engram_tests::session(&node.tcp(), &node.admin_key()).await;
            let advance = async {
                engram_client::advance_epoch(&admin.admin().unwrap(), &[round; 32])
                    .await
                    .unwrap();
            };
            let grafts = membranes.iter().flat_map(|membrane| {
                (0..4).map(move |_| async move {
                    let reader = membrane.graft().await.ok()?.reader("w1").ok()?;
                    let first = engram_client::generation(&reader).await;
                    Some((reader, first))
                })
            });
            let ((), answers) = futures::join!(advance, futures::future::join_all(grafts));
            for (reader, first) in answers.into_iter().flatten() {
                let Err(error) = first else { continue };
                assert_eq!(error.code(), Some(ErrorCode::StaleEpoch), "{error}");
                stale += 1;
                if engram_client::generation(&reader).await.is_ok() {
                    revived += 1;
                }
            }
        }
        eprintln!("{stale} capabilities answered staleEpoch; {revived} of them later ok");
        assert_eq!(
            revived, 0,
            "{revived} of {stale} stale capabilities answered ok later"
        );
    });
}
