//! `graft` answers from one snapshot of the policy: capabilities a graft lists under a
//! principal's new grants work under them, even when the graft races the change.

use engram_client::{Grant, connect};
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
