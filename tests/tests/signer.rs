//! The node signs for a principal with a key that never leaves it; signatures verify
//! against `publicKey` over the documented bytes, and an attenuated signer keeps to its
//! domains.

use ed25519_dalek::{Signature, VerifyingKey};
use engram_client::ErrorCode;
use engram_client::engram_schema::engram_capnp::signer;
use engram_client::engram_schema::signed_message;
use engram_tests::{TestNode, add_principal, assert_code, run_local, session};

#[test]
fn signatures_verify_and_attenuated_signers_keep_to_their_domains() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let agent_key = add_principal(&admin, "agent", &[]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let public = engram_client::signer_public_key(&agent.signer)
            .await
            .unwrap();
        assert_ne!(
            public,
            agent_key.verifying_key().to_bytes(),
            "the node's key, not the agent's"
        );
        let admin_public = engram_client::signer_public_key(&admin.signer)
            .await
            .unwrap();
        assert_ne!(
            public, admin_public,
            "each principal signs with its own key"
        );

        let signature = engram_client::sign(&agent.signer, "release", b"v1.2.3")
            .await
            .unwrap();
        let signature = Signature::from_bytes(&signature.try_into().unwrap());
        let verifier = VerifyingKey::from_bytes(&public).unwrap();
        verifier
            .verify_strict(&signed_message("release", b"v1.2.3"), &signature)
            .unwrap();
        assert!(
            verifier
                .verify_strict(&signed_message("other", b"v1.2.3"), &signature)
                .is_err()
        );

        let mut request = agent.signer.attenuate_request();
        request.get().init_domains(1).set(0, "release");
        let narrowed: signer::Client = request
            .send()
            .promise
            .await
            .unwrap()
            .get()
            .unwrap()
            .get_signer()
            .unwrap();
        engram_client::sign(&narrowed, "release", b"ok")
            .await
            .unwrap();
        assert_code(
            engram_client::sign(&narrowed, "payments", b"no").await,
            ErrorCode::PermissionDenied,
        );
        assert_code(
            engram_client::sign(&agent.signer, "", b"no").await,
            ErrorCode::InvalidArgument,
        );
    });
}
