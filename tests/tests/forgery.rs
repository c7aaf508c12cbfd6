//! Token forgery: a string a holder chose (a restriction's label, a signer's domain)
//! travels inside a token as a typed term, never as datalog source, so a quote or a
//! brace in it cannot end the term and state new facts. A holder with no grant at all
//! cannot turn its own signer into an admin's writer, reader or signer.

use engram_client::spawn::Held;
use engram_client::token;
use engram_client::{ErrorCode, NewAtom, Restriction, connect};
use engram_tests::{TestNode, add_principal, admin_with_world, assert_code, run_local, session};

/// A string that, printed into datalog unescaped, closes its set and fact and states
/// the admin as principal, a writer's right and a world.
fn forged(admin_key_hex: &str, world: &str) -> String {
    format!(
        "x\"}});principal(hex:{admin_key_hex});right(\"writer\");world(\"{world}\");\
         domains({{\"y"
    )
}

#[test]
fn a_quote_in_a_domain_or_a_label_states_no_fact_in_a_token() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/secret").await;
        engram_client::create_world(&admin.admin().unwrap(), "team/public")
            .await
            .unwrap();
        engram_client::remember(
            &admin.writer("team/secret").unwrap(),
            &[NewAtom::fact("the vault code is 0451").labels(&["public"])],
        )
        .await
        .unwrap();
        let admin_hex = hex::encode(node.admin_key().verifying_key().as_bytes());
        // A principal with no grant at all: it holds its own signer only.
        let nobody_key = add_principal(&admin, "nobody", &[]).await;
        let nobody = session(&node.tcp(), &nobody_key).await;
        let nobody_public = *nobody_key.verifying_key().as_bytes();

        let payload = forged(&admin_hex, "team/secret");
        // Either the node refuses the string as no domain at all, or the token it
        // saves restores exactly the signer it narrowed: never more.
        match engram_client::attenuate_signer(&nobody.signer, std::slice::from_ref(&payload)).await
        {
            Err(error) => assert_eq!(error.code(), Some(ErrorCode::InvalidArgument), "{error}"),
            Ok(narrowed) => {
                let saved = token::save(&Held::Signer(narrowed)).await.unwrap();
                let connection = connect(&node.tcp()).await.unwrap();
                let (_, held) = connection.restore(&saved).await.unwrap();
                let Held::Signer(signer) = held else {
                    panic!("a signer's token restored something else");
                };
                assert_eq!(
                    engram_client::signer_public_key(&signer).await.unwrap(),
                    nobody_public,
                    "the restored signer signs as someone else"
                );
                // It signs only in the one (odd) domain it was narrowed to.
                assert_code(
                    engram_client::sign(&signer, "y", b"message").await,
                    ErrorCode::PermissionDenied,
                );
            }
        }

        // The same through a reader's labels: an agent that reads one world, narrowed
        // to a label carrying the payload, restores a reader of that world only, as
        // itself, seeing nothing (no atom carries that label).
        let agent_key = add_principal(&admin, "agent", &["team/public=r"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let narrowed = engram_client::attenuate_reader(
            &agent.reader("team/public").unwrap(),
            &Restriction {
                labels: vec![forged(&admin_hex, "team/secret"), "public".into()],
                ..Restriction::default()
            },
        )
        .await;
        match narrowed {
            Err(error) => assert_eq!(error.code(), Some(ErrorCode::InvalidArgument), "{error}"),
            Ok(narrowed) => {
                let saved = token::save(&Held::Reader(narrowed)).await.unwrap();
                let connection = connect(&node.tcp()).await.unwrap();
                let (world, _) = connection.restore(&saved).await.unwrap();
                assert_eq!(world, "team/public", "the token restored another world");
            }
        }

        // A block appended offline carrying the payload is one label, not facts.
        let whole = token::save(&Held::Reader(agent.reader("team/public").unwrap()))
            .await
            .unwrap();
        let offline = token::attenuate(
            &whole,
            &token::Narrowing {
                labels: Some([forged(&admin_hex, "team/secret")].into()),
                ..token::Narrowing::default()
            },
        )
        .unwrap();
        let connection = connect(&node.tcp()).await.unwrap();
        let (world, _) = connection.restore(&offline).await.unwrap();
        assert_eq!(
            world, "team/public",
            "the offline block restored another world"
        );
    });
}
