//! Configured limits answer `resourceExhausted` and give their place back: calls in
//! flight per login, connections (subscriptions per principal are in observe.rs).

use engram_client::{ErrorCode, NewAtom};
use engram_tests::{TestNode, run_local, session};

#[test]
fn a_connection_past_the_limit_is_told_why_and_the_others_keep_working() {
    let node = TestNode::start_with(&["--connections-max", "1"]);
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let refused = engram_client::connect(&node.tcp())
            .await
            .expect("the node accepts the socket");
        let error = match refused.login(&node.admin_key()).await {
            Ok(_) => panic!("a second connection was served past a limit of one"),
            Err(error) => error,
        };
        assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
        assert!(
            error.to_string().contains("at most 1 connections"),
            "the error names the limit: {error}"
        );
        // The connection inside the limit is untouched.
        engram_client::create_world(&admin.admin().unwrap(), "w")
            .await
            .unwrap();
    });
}

#[test]
fn calls_past_the_in_flight_limit_are_refused_and_nothing_is_lost() {
    let node = TestNode::start_with(&["--calls-in-flight-max", "1"]);
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "w")
            .await
            .unwrap();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let writer = admin.writer("w").unwrap();
        // Twenty calls sent at once: the first waits on the durable commit while the
        // others arrive, so the limit of one refuses some of them.
        let results = futures::future::join_all((0..20).map(|index| {
            let writer = writer.clone();
            async move {
                engram_client::remember(&writer, &[NewAtom::fact(format!("call {index}"))]).await
            }
        }))
        .await;
        let accepted = results.iter().filter(|result| result.is_ok()).count();
        let refused = results
            .iter()
            .filter(|result| {
                matches!(result, Err(error) if error.code() == Some(ErrorCode::ResourceExhausted))
            })
            .count();
        assert!(accepted >= 1, "no call went through");
        assert!(refused >= 1, "the limit refused nothing");
        assert_eq!(accepted + refused, 20, "{results:?}");
        // The places come back: a call after the answers goes through.
        engram_client::remember(&writer, &[NewAtom::fact("later")])
            .await
            .unwrap();
        let (atoms, _) = engram_client::replay(&admin.reader("w").unwrap(), 0, 100)
            .await
            .unwrap();
        assert_eq!(atoms.len(), accepted + 1, "refused calls wrote nothing");
    });
}
