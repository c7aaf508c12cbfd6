//! Token forgery: a string a holder chose (a restriction's label, a signer's domain)
//! travels inside a token as a typed term, never as datalog source, so a quote or a
//! brace in it cannot end the term and state new facts. A holder with no grant at all
//! cannot turn its own signer into an admin's reader, nor a reader of one world into a
//! reader of another.

use engram_client::spawn::Held;
use engram_client::token;
use engram_client::{NewAtom, Restriction, connect};
use engram_tests::{TestNode, add_principal, admin_with_world, run_local, session};

/// The world the forged facts name.
const SECRET: &str = "t/s";

/// A string that, printed into datalog unescaped, closes its set and fact and states
/// the admin as principal, a reader's right and the secret world, then opens a set of
/// `then` again. Short enough (under 128 bytes) to be a label or a domain.
fn forged(admin_key_hex: &str, then: &str) -> String {
    let forged = format!(
        "x\"}});principal(hex:{admin_key_hex});right(\"reader\");world(\"{SECRET}\");\
         {then}({{\"y"
    );
    assert!(forged.len() <= 128, "{} bytes", forged.len());
    forged
}

#[test]
fn a_quote_in_a_domain_or_a_label_states_no_fact_in_a_token() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, SECRET).await;
        engram_client::create_world(&admin.admin().unwrap(), "team/public")
            .await
            .unwrap();
        engram_client::remember(
            &admin.writer(SECRET).unwrap(),
            &[NewAtom::fact("the vault code is 0451").labels(&["public"])],
        )
        .await
        .unwrap();
        let admin_hex = hex::encode(node.admin_key().verifying_key().as_bytes());
        // A principal with no grant at all: it holds its own signer only.
        let nobody_key = add_principal(&admin, "nobody", &[]).await;
        let nobody = session(&node.tcp(), &nobody_key).await;

        // A signer narrowed to the payload as its one domain restores as that signer:
        // its principal's key, that one (odd) domain.
        let payload = forged(&admin_hex, "domains");
        let narrowed =
            engram_client::attenuate_signer(&nobody.signer, std::slice::from_ref(&payload))
                .await
                .unwrap();
        let saved = token::save(&Held::Signer(narrowed)).await.unwrap();
        let connection = connect(&node.tcp()).await.unwrap();
        let (_, held) = connection.restore(&saved).await.unwrap();
        let Held::Signer(signer) = held else {
            panic!("a signer's token restored something else");
        };
        assert_eq!(
            engram_client::signer_public_key(&signer).await.unwrap(),
            engram_client::signer_public_key(&nobody.signer)
                .await
                .unwrap(),
            "the restored signer signs as someone else"
        );
        engram_client::sign(&signer, &payload, b"message")
            .await
            .expect("it signs in its one domain");
        assert!(engram_client::sign(&signer, "y", b"message").await.is_err());

        // The same through a reader's labels: a reader of team/public narrowed to a
        // label carrying the payload restores a reader of team/public only, as itself,
        // seeing nothing (no atom carries that label).
        let agent_key = add_principal(&admin, "agent", &["team/public=r"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let narrowed = engram_client::attenuate_reader(
            &agent.reader("team/public").unwrap(),
            &Restriction {
                labels: vec![forged(&admin_hex, "labels"), "public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let saved = token::save(&Held::Reader(narrowed)).await.unwrap();
        let (world, _) = connect(&node.tcp())
            .await
            .unwrap()
            .restore(&saved)
            .await
            .unwrap();
        assert_eq!(world, "team/public", "the token restored another world");

        // A block appended offline carrying the payload is one label, not facts.
        let whole = token::save(&Held::Reader(agent.reader("team/public").unwrap()))
            .await
            .unwrap();
        let offline = token::attenuate(
            &whole,
            &token::Narrowing {
                labels: Some([forged(&admin_hex, "labels")].into()),
                ..token::Narrowing::default()
            },
        )
        .unwrap();
        let (world, held) = connect(&node.tcp())
            .await
            .unwrap()
            .restore(&offline)
            .await
            .unwrap();
        assert_eq!(
            world, "team/public",
            "the offline block restored another world"
        );
        let Held::Reader(reader) = held else {
            panic!("a reader's token restored something else");
        };
        assert!(
            engram_client::replay(&reader, 0, 10)
                .await
                .unwrap()
                .0
                .is_empty()
        );
    });
}
