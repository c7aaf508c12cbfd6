//! Removing a principal or changing its grants revokes its live capabilities at once,
//! without an epoch advance and without touching anyone else's.

use engram_client::{ErrorCode, Grant, NewAtom};
use engram_tests::{TestNode, add_principal, assert_code, run_local, session};

#[test]
fn removal_and_regrant_revoke_only_that_principal() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let control = admin.admin().unwrap();
        for world in ["a", "b"] {
            engram_client::create_world(&control, world).await.unwrap();
        }
        let alice_key = add_principal(&admin, "alice", &["a=rw", "b=rw"]).await;
        let bob_key = add_principal(&admin, "bob", &["a=rw"]).await;
        let alice = session(&node.tcp(), &alice_key).await;
        let bob = session(&node.tcp(), &bob_key).await;
        let atom = [NewAtom::fact("hello")];
        engram_client::remember(&alice.writer("a").unwrap(), &atom)
            .await
            .unwrap();

        // Narrow alice to read-only in a: her live capabilities stop at once.
        engram_client::set_grants(&control, "alice", &[Grant::parse("a=r").unwrap()])
            .await
            .unwrap();
        assert_code(
            engram_client::remember(&alice.writer("a").unwrap(), &atom).await,
            ErrorCode::PermissionDenied,
        );
        assert_code(
            engram_client::replay(&alice.reader("b").unwrap(), 0, 10).await,
            ErrorCode::PermissionDenied,
        );
        // Bob is untouched.
        engram_client::remember(&bob.writer("a").unwrap(), &atom)
            .await
            .unwrap();
        // Alice grafts again under her new grants.
        let alice = session(&node.tcp(), &alice_key).await;
        assert!(alice.writer("a").is_err());
        assert!(!alice.worlds.contains_key("b"));
        engram_client::replay(&alice.reader("a").unwrap(), 0, 10)
            .await
            .unwrap();

        // Removing bob revokes his capabilities and his login.
        engram_client::remove_principal(&control, "bob")
            .await
            .unwrap();
        assert_code(
            engram_client::remember(&bob.writer("a").unwrap(), &atom).await,
            ErrorCode::PermissionDenied,
        );
        let connection = engram_client::connect(&node.tcp()).await.unwrap();
        assert_code(
            connection.login(&bob_key).await.map(|_| ()),
            ErrorCode::Unauthenticated,
        );
        engram_client::replay(&alice.reader("a").unwrap(), 0, 10)
            .await
            .unwrap();

        // The last admin cannot be removed.
        assert_code(
            engram_client::remove_principal(&control, "admin").await,
            ErrorCode::Conflict,
        );
    });
}
