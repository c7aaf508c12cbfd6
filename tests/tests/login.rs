//! Login is ed25519 challenge–response: no login, no capability. A wrong key, a
//! signature by another key, a reused nonce and a nonce from another connection all
//! fail with `unauthenticated`.

use ed25519_dalek::{Signer, SigningKey};
use engram_client::engram_schema::engram_capnp::{membrane, terminal};
use engram_client::engram_schema::login_message;
use engram_client::{ClientError, ErrorCode, connect, keyfile};
use engram_tests::{TestNode, assert_code, run_local};

struct Challenge {
    nonce: [u8; 32],
    node_key: [u8; 32],
    epoch: u64,
}

async fn challenge(terminal: &terminal::Client) -> Challenge {
    let response = terminal.challenge_request().send().promise.await.unwrap();
    let results = response.get().unwrap();
    Challenge {
        nonce: results.get_nonce().unwrap().try_into().unwrap(),
        node_key: results.get_node_key().unwrap().try_into().unwrap(),
        epoch: results.get_epoch(),
    }
}

async fn login(
    terminal: &terminal::Client,
    public_key: &[u8; 32],
    nonce: &[u8; 32],
    signature: &[u8],
) -> Result<membrane::Client, ClientError> {
    let mut request = terminal.login_request();
    request.get().set_public_key(public_key);
    request.get().set_nonce(nonce);
    request.get().set_signature(signature);
    let response = request.send().promise.await?;
    Ok(response.get()?.get_membrane()?)
}

fn sign(key: &SigningKey, challenge: &Challenge) -> Vec<u8> {
    key.sign(&login_message(
        &challenge.nonce,
        &challenge.node_key,
        challenge.epoch,
    ))
    .to_bytes()
    .to_vec()
}

async fn graft(membrane: &membrane::Client) -> Result<(), ClientError> {
    membrane.graft_request().send().promise.await?;
    Ok(())
}

#[test]
fn a_good_signature_logs_in_and_everything_else_is_unauthenticated() {
    let node = TestNode::start();
    run_local(async {
        let admin = node.admin_key();
        let admin_public = admin.verifying_key().to_bytes();
        let connection = connect(&node.tcp()).await.unwrap();
        let terminal = connection.terminal();

        // An unknown key, correctly signed.
        let stranger = keyfile::generate().unwrap();
        let first = challenge(terminal).await;
        assert_code(
            login(
                terminal,
                &stranger.verifying_key().to_bytes(),
                &first.nonce,
                &sign(&stranger, &first),
            )
            .await,
            ErrorCode::Unauthenticated,
        );
        // The failed attempt consumed that nonce: the right key cannot reuse it.
        assert_code(
            login(terminal, &admin_public, &first.nonce, &sign(&admin, &first)).await,
            ErrorCode::Unauthenticated,
        );

        // The admin's key claimed, another key's signature.
        let second = challenge(terminal).await;
        assert_code(
            login(
                terminal,
                &admin_public,
                &second.nonce,
                &sign(&stranger, &second),
            )
            .await,
            ErrorCode::Unauthenticated,
        );

        // A signature over another node key or epoch does not verify either.
        let third = challenge(terminal).await;
        let forged = admin
            .sign(&login_message(&third.nonce, &[7; 32], third.epoch))
            .to_bytes();
        assert_code(
            login(terminal, &admin_public, &third.nonce, &forged).await,
            ErrorCode::Unauthenticated,
        );

        // The right key and a fresh nonce log in, once.
        let fourth = challenge(terminal).await;
        let signature = sign(&admin, &fourth);
        let membrane = login(terminal, &admin_public, &fourth.nonce, &signature)
            .await
            .unwrap();
        graft(&membrane).await.unwrap();
        assert_code(
            login(terminal, &admin_public, &fourth.nonce, &signature).await,
            ErrorCode::Unauthenticated,
        );

        // Every failed login reads the same: an unknown key is not told apart from a
        // registered one with a bad signature, nor from a used nonce.
        let (unknown, bad_signature, reused) = {
            let first = challenge(terminal).await;
            let unknown = login(
                terminal,
                &stranger.verifying_key().to_bytes(),
                &first.nonce,
                &sign(&stranger, &first),
            )
            .await;
            let second = challenge(terminal).await;
            let bad_signature = login(
                terminal,
                &admin_public,
                &second.nonce,
                &sign(&stranger, &second),
            )
            .await;
            let reused = login(terminal, &admin_public, &fourth.nonce, &signature).await;
            (unknown, bad_signature, reused)
        };
        let message = |result: Result<membrane::Client, ClientError>| match result {
            Ok(_) => panic!("a failed login succeeded"),
            Err(error) => error.to_string(),
        };
        let unknown = message(unknown);
        assert_eq!(unknown, message(bad_signature));
        assert_eq!(unknown, message(reused));

        // A nonce issued on one connection is worthless on another.
        let other = connect(&node.tcp()).await.unwrap();
        let fifth = challenge(terminal).await;
        assert_code(
            login(
                other.terminal(),
                &admin_public,
                &fifth.nonce,
                &sign(&admin, &fifth),
            )
            .await,
            ErrorCode::Unauthenticated,
        );

        // Malformed fields are invalid arguments, not crashes.
        let sixth = challenge(terminal).await;
        assert_code(
            login(terminal, &admin_public, &sixth.nonce, &[1, 2, 3]).await,
            ErrorCode::InvalidArgument,
        );
    });
}

#[test]
fn without_login_the_bootstrap_capability_grants_nothing() {
    let node = TestNode::start();
    run_local(async {
        let connection = connect(&node.tcp()).await.unwrap();
        // Treat the bootstrap Terminal as if it were a Membrane: the node refuses.
        let pretend = membrane::Client {
            client: connection.terminal().client.clone(),
        };
        let refused = graft(&pretend).await;
        assert!(refused.is_err(), "grafting without login succeeded");
    });
}
