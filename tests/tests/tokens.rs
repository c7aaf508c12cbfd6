//! Tokens: a capability saved as a biscuit token restores on any connection without a
//! login, narrowed by every block appended to it offline and never widened; it dies with
//! its epoch, its principal and its revocation; and whatever is not a token this node
//! signed, intact and understood, is refused with `unauthenticated`.

use engram_client::engram_schema::engram_capnp::AtomKind;
use engram_client::spawn::Held;
use engram_client::token::{self, Narrowing};
use engram_client::{ErrorCode, Filter, NewAtom, Restriction, connect};
use engram_tests::{
    TestNode, add_principal, admin_with_world, assert_code, engram_cli, engram_ok, run_local,
    session,
};

/// Restores `token` on a connection of its own, with no login.
async fn restore(node: &TestNode, token: &[u8]) -> Result<Held, engram_client::ClientError> {
    let connection = connect(&node.tcp()).await.expect("connecting");
    Ok(connection.restore(token).await?.1)
}

fn reader(held: Held) -> engram_client::engram_schema::engram_capnp::world_reader::Client {
    match held {
        Held::Reader(reader) => reader,
        _ => panic!("expected a reader"),
    }
}

fn writer(held: Held) -> engram_client::engram_schema::engram_capnp::world_writer::Client {
    match held {
        Held::Writer(writer) => writer,
        _ => panic!("expected a writer"),
    }
}

async fn texts(
    reader: &engram_client::engram_schema::engram_capnp::world_reader::Client,
) -> Result<Vec<String>, engram_client::ClientError> {
    let atoms = engram_client::ask(
        reader,
        &Filter {
            limit: 100,
            ..Filter::default()
        },
    )
    .await?;
    Ok(atoms.into_iter().map(|atom| atom.text).collect())
}

fn labels(names: &[&str]) -> Option<std::collections::BTreeSet<String>> {
    Some(names.iter().map(|name| name.to_string()).collect())
}

#[test]
fn a_saved_capability_restores_without_a_login_and_acts_as_its_principal() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let agent_key = add_principal(&admin, "agent", &["team/auth=rw"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        engram_client::remember(
            &agent.writer("team/auth").unwrap(),
            &[
                NewAtom::fact("tokens expire after one hour").labels(&["public"]),
                NewAtom::fact("the signing key is in the vault").labels(&["secret"]),
            ],
        )
        .await
        .unwrap();

        // A reader narrowed to public atoms, saved and restored elsewhere.
        let public = engram_client::attenuate_reader(
            &agent.reader("team/auth").unwrap(),
            &Restriction {
                labels: vec!["public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let saved = token::save(&Held::Reader(public)).await.unwrap();
        let connection = connect(&node.tcp()).await.unwrap();
        let (world, held) = connection.restore(&saved).await.unwrap();
        assert_eq!(world, "team/auth");
        assert_eq!(
            texts(&reader(held)).await.unwrap(),
            ["tokens expire after one hour"]
        );

        // A writer writes as the principal that saved it.
        let saved = token::save(&Held::Writer(agent.writer("team/auth").unwrap()))
            .await
            .unwrap();
        let receipts = engram_client::remember(
            &writer(restore(&node, &saved).await.unwrap()),
            &[NewAtom::fact("written through a token")],
        )
        .await
        .unwrap();
        let atom = engram_client::get(&agent.reader("team/auth").unwrap(), &receipts[0].id)
            .await
            .unwrap();
        assert_eq!(atom.writer, *agent_key.verifying_key().as_bytes());

        // A signer signs with the principal's key.
        let saved = token::save(&Held::Signer(agent.signer.clone()))
            .await
            .unwrap();
        let Held::Signer(signer) = restore(&node, &saved).await.unwrap() else {
            panic!("expected a signer");
        };
        assert_eq!(
            engram_client::signer_public_key(&signer).await.unwrap(),
            engram_client::signer_public_key(&agent.signer)
                .await
                .unwrap()
        );

        // The token shows what it holds.
        let blocks = token::describe(&saved).unwrap();
        assert!(blocks[0].contains("right(\"signer\")"), "{blocks:?}");
        // A signer token narrowed by labels would show a narrowing that narrows nothing.
        let labelled = token::attenuate(
            &saved,
            &token::Narrowing {
                labels: Some(["public".to_owned()].into()),
                ..token::Narrowing::default()
            },
        )
        .unwrap();
        let refused = restore(&node, &labelled).await.err().unwrap();
        assert!(refused.to_string().contains("holds a signer"), "{refused}");
    });
}

#[test]
fn a_token_attenuated_offline_is_narrower_and_never_wider() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        engram_client::remember(
            &admin.writer("team/auth").unwrap(),
            &[
                NewAtom::fact("tokens expire after one hour").labels(&["public"]),
                NewAtom::fact("the signing key is in the vault").labels(&["secret"]),
                NewAtom::fact("rotate keys weekly")
                    .labels(&["public"])
                    .importance(0.9),
            ],
        )
        .await
        .unwrap();
        let whole = token::save(&Held::Reader(admin.reader("team/auth").unwrap()))
            .await
            .unwrap();
        assert_eq!(
            texts(&reader(restore(&node, &whole).await.unwrap()))
                .await
                .unwrap()
                .len(),
            3
        );

        // Labels, then importance: each block narrows what the last allowed.
        let public = token::attenuate(
            &whole,
            &Narrowing {
                labels: labels(&["public"]),
                ..Narrowing::default()
            },
        )
        .unwrap();
        let public_reader = reader(restore(&node, &public).await.unwrap());
        assert_eq!(texts(&public_reader).await.unwrap().len(), 2);
        let modest = token::attenuate(
            &public,
            &Narrowing {
                max_importance_millionths: Some(500_000),
                ..Narrowing::default()
            },
        )
        .unwrap();
        assert_eq!(
            texts(&reader(restore(&node, &modest).await.unwrap()))
                .await
                .unwrap(),
            ["tokens expire after one hour"]
        );
        // A block that names more labels than its token allows widens nothing.
        let wider = token::attenuate(
            &public,
            &Narrowing {
                labels: labels(&["public", "secret"]),
                ..Narrowing::default()
            },
        )
        .unwrap();
        let wider_reader = reader(restore(&node, &wider).await.unwrap());
        assert!(
            !texts(&wider_reader)
                .await
                .unwrap()
                .iter()
                .any(|text| text.contains("vault"))
        );

        // Kinds and the approve right bind a writer.
        let writer_token = token::save(&Held::Writer(admin.writer("team/auth").unwrap()))
            .await
            .unwrap();
        let facts_only = token::attenuate(
            &writer_token,
            &Narrowing {
                kinds: labels(&["fact"]),
                without_approve: true,
                ..Narrowing::default()
            },
        )
        .unwrap();
        let facts_writer = writer(restore(&node, &facts_only).await.unwrap());
        assert_code(
            engram_client::remember(
                &facts_writer,
                &[NewAtom::new(AtomKind::Decision, "ship it")],
            )
            .await,
            ErrorCode::PermissionDenied,
        );
        let receipts =
            engram_client::remember(&facts_writer, &[NewAtom::fact("a fact").proposed()])
                .await
                .unwrap();
        assert_code(
            engram_client::transition(
                &facts_writer,
                &receipts[0].id,
                engram_client::engram_schema::engram_capnp::TransitionKind::Approve,
                "",
            )
            .await,
            ErrorCode::PermissionDenied,
        );

        // An expiry in the past: every call is refused.
        let expired = token::attenuate(
            &whole,
            &Narrowing {
                expires_unix_s: Some(1),
                ..Narrowing::default()
            },
        )
        .unwrap();
        assert_code(
            texts(&reader(restore(&node, &expired).await.unwrap())).await,
            ErrorCode::PermissionDenied,
        );

        // A token's rate is shared by every capability restored from it: restoring
        // again buys nothing.
        let slow = token::attenuate(
            &whole,
            &Narrowing {
                rate: Some((1, 0)),
                ..Narrowing::default()
            },
        )
        .unwrap();
        let first = reader(restore(&node, &slow).await.unwrap());
        let second = reader(restore(&node, &slow).await.unwrap());
        texts(&first).await.unwrap();
        assert_code(texts(&second).await, ErrorCode::ResourceExhausted);
    });
}

#[test]
fn a_token_dies_with_its_epoch_its_principal_and_its_revocation() {
    let mut node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let agent_key = add_principal(&admin, "agent", &["team/auth=r"]).await;
        let other_key = add_principal(&admin, "other", &["team/auth=r"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let saved = token::save(&Held::Reader(agent.reader("team/auth").unwrap()))
            .await
            .unwrap();
        let narrowed = token::attenuate(
            &saved,
            &Narrowing {
                labels: labels(&["public"]),
                ..Narrowing::default()
            },
        )
        .unwrap();
        let live = reader(restore(&node, &narrowed).await.unwrap());
        texts(&live).await.unwrap();

        // Another principal may not revoke it; its own principal may.
        let other = connect(&node.tcp()).await.unwrap();
        let other = other.login(&other_key).await.unwrap();
        assert_code(
            other.revoke_token(&narrowed).await,
            ErrorCode::PermissionDenied,
        );
        let connection = connect(&node.tcp()).await.unwrap();
        let membrane = connection.login(&agent_key).await.unwrap();
        membrane.revoke_token(&narrowed).await.unwrap();
        // Gone: restoring it, and the capability restored before.
        let refused = restore(&node, &narrowed).await;
        assert_code(refused, ErrorCode::Unauthenticated);
        assert_code(texts(&live).await, ErrorCode::PermissionDenied);
        // What was attenuated from it goes with it; what it was attenuated from stays.
        let further = token::attenuate(
            &narrowed,
            &Narrowing {
                kinds: labels(&["fact"]),
                ..Narrowing::default()
            },
        )
        .unwrap();
        assert_code(restore(&node, &further).await, ErrorCode::Unauthenticated);
        let parent = reader(restore(&node, &saved).await.unwrap());
        texts(&parent).await.unwrap();

        // A token saved from a restored capability dies with the token it came from.
        let resaved = token::save(&Held::Reader(parent.clone())).await.unwrap();
        engram_client::token::revoke_token(&admin.admin().unwrap(), &saved)
            .await
            .unwrap();
        assert_code(restore(&node, &resaved).await, ErrorCode::Unauthenticated);

        // Revocations are durable, whatever stops the node.
        node.kill();
        node.restart();
        assert_code(restore(&node, &narrowed).await, ErrorCode::Unauthenticated);
        assert_code(restore(&node, &saved).await, ErrorCode::Unauthenticated);

        // A principal removed: its tokens restore nothing.
        let agent = session(&node.tcp(), &agent_key).await;
        let fresh = token::save(&Held::Reader(agent.reader("team/auth").unwrap()))
            .await
            .unwrap();
        let live = reader(restore(&node, &fresh).await.unwrap());
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::remove_principal(&admin.admin().unwrap(), "agent")
            .await
            .unwrap();
        assert_code(restore(&node, &fresh).await, ErrorCode::PermissionDenied);
        assert_code(texts(&live).await, ErrorCode::PermissionDenied);

        // An epoch advance: every token and what was restored from it is stale.
        let other = session(&node.tcp(), &other_key).await;
        let saved = token::save(&Held::Reader(other.reader("team/auth").unwrap()))
            .await
            .unwrap();
        let live = reader(restore(&node, &saved).await.unwrap());
        engram_client::advance_epoch(&admin.admin().unwrap(), &[1; 32])
            .await
            .unwrap();
        assert_code(restore(&node, &saved).await, ErrorCode::StaleEpoch);
        assert_code(texts(&live).await, ErrorCode::StaleEpoch);
    });
}

#[test]
fn forged_altered_and_misunderstood_tokens_are_refused() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let saved = token::save(&Held::Writer(admin.writer("team/auth").unwrap()))
            .await
            .unwrap();
        let refused = |result: Result<Held, engram_client::ClientError>, reason: &str| match result
        {
            Err(error) => {
                assert_eq!(error.code(), Some(ErrorCode::Unauthenticated), "{error}");
                assert!(
                    error.to_string().contains(reason),
                    "{error} lacks {reason:?}"
                );
            }
            Ok(_) => panic!("a bad token was restored"),
        };
        refused(restore(&node, b"not a token").await, "token refused");
        refused(
            restore(&node, &saved[..saved.len() / 2]).await,
            "token refused",
        );
        let mut altered = saved.clone();
        let middle = altered.len() / 3;
        altered[middle] ^= 1;
        refused(restore(&node, &altered).await, "token refused");
        refused(restore(&node, &vec![0u8; 70_000]).await, "at most 65536");

        // The same facts signed by another key.
        let forger = biscuit_auth::KeyPair::new();
        let mut forged = biscuit_auth::Biscuit::builder();
        for block in token::describe(&saved).unwrap().iter().take(1) {
            forged = forged.code(block).unwrap();
        }
        let forged = forged.build(&forger).unwrap().to_vec().unwrap();
        refused(
            restore(&node, &forged).await,
            "not a token this node signed",
        );

        // Blocks the node would not enforce: a check, a rule, an unknown fact, a claim
        // only the node may make.
        for (source, reason) in [
            (
                "check if time($t), $t < 2030-01-01T00:00:00Z;",
                "holds a check",
            ),
            ("kinds($k) <- labels($k);", "holds a rule"),
            ("label(\"public\");", "a fact engram does not know"),
            ("principal(hex:00);", "only the node's own block may"),
            ("labels(\"public\");", "must be labels("),
            // A narrowing of what the token does not hold would show as one.
            ("domains({\"x\"});", "holds no signer"),
        ] {
            let appended = biscuit_auth::UnverifiedBiscuit::from(&saved)
                .unwrap()
                .append(biscuit_auth::BlockBuilder::new().code(source).unwrap())
                .unwrap()
                .to_vec()
                .unwrap();
            refused(restore(&node, &appended).await, reason);
        }

        // None of it wrote anything, and the genuine token still works.
        let writer = writer(restore(&node, &saved).await.unwrap());
        let receipts = engram_client::remember(&writer, &[NewAtom::fact("still here")])
            .await
            .unwrap();
        assert_eq!(receipts[0].seq, 1);
    });
}

#[test]
fn the_cli_saves_narrows_shows_uses_and_revokes_tokens() {
    let node = TestNode::start();
    let admin_key = node.admin_key_path();
    engram_ok(&node, &admin_key, &["world", "create", "team/auth"]);
    engram_ok(
        &node,
        &admin_key,
        &[
            "remember",
            "team/auth",
            "tokens expire",
            "--kind",
            "fact",
            "--label",
            "public",
        ],
    );
    engram_ok(
        &node,
        &admin_key,
        &[
            "remember",
            "team/auth",
            "the key is in the vault",
            "--label",
            "secret",
        ],
    );
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("reader.token");
    let narrowed = directory.path().join("public.token");
    let file_text = file.to_str().unwrap();
    let narrowed_text = narrowed.to_str().unwrap();
    engram_ok(
        &node,
        &admin_key,
        &[
            "token",
            "save",
            "--reader",
            "team/auth",
            "--output",
            file_text,
        ],
    );
    engram_ok(
        &node,
        &admin_key,
        &[
            "token",
            "attenuate",
            file_text,
            "--restrict",
            "labels=public",
            "--output",
            narrowed_text,
        ],
    );
    // A key --restrict does not know is a usage error, before anything is read.
    let unknown = engram_cli(
        &node,
        &admin_key,
        &["token", "attenuate", "missing", "--restrict", "colour=red"],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("\"colour\" is not label"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let shown = engram_ok(&node, &admin_key, &["token", "show", narrowed_text]);
    assert!(shown.contains("labels({\"public\"})"), "{shown}");
    // A label a holder chose shows as one string, escaped inside its quotes: never as
    // the end of a term and facts of its own.
    let hostile = directory.path().join("hostile.token");
    engram_ok(
        &node,
        &admin_key,
        &[
            "token",
            "attenuate",
            narrowed_text,
            "--restrict",
            "labels=x\");right(\"writer",
            "--output",
            hostile.to_str().unwrap(),
        ],
    );
    let shown = engram_ok(
        &node,
        &admin_key,
        &["token", "show", hostile.to_str().unwrap()],
    );
    assert!(
        shown.contains(r#"labels({"x\");right(\"writer"})"#),
        "{shown}"
    );
    // No key at all: the token is the only credential.
    let missing_key = directory.path().join("no.key");
    let asked = engram_ok(
        &node,
        &missing_key,
        &["--token", narrowed_text, "ask", "team/auth"],
    );
    assert!(asked.contains("tokens expire"), "{asked}");
    assert!(!asked.contains("vault"), "{asked}");
    engram_ok(&node, &admin_key, &["token", "revoke", narrowed_text]);
    let output = engram_tests::engram_cli(
        &node,
        &missing_key,
        &["--token", narrowed_text, "ask", "team/auth"],
    );
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unauthenticated: token refused"),
        "{stderr}"
    );
}

#[test]
fn revoking_is_charged_as_a_login_so_a_flood_of_bad_tokens_stops_at_the_peers_rate() {
    // Opening a token costs signature checks; a logged-in principal sending bad tokens
    // to revoke pays for them from its address's login attempts, as a restore does.
    let node = TestNode::start_with(&["--login-attempts-per-minute", "5"]);
    run_local(async {
        let connection = connect(&node.tcp()).await.unwrap();
        let membrane = connection.login(&node.admin_key()).await.unwrap();
        for _ in 0..4 {
            assert_code(
                membrane.revoke_token(b"not a token").await,
                ErrorCode::Unauthenticated,
            );
        }
        assert_code(
            membrane.revoke_token(b"not a token").await,
            ErrorCode::ResourceExhausted,
        );
    });
}

#[test]
fn one_principal_revoking_its_tokens_cannot_fill_the_list_for_others() {
    let node = TestNode::start_with(&["--login-attempts-per-minute", "0"]);
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let flooder_key = add_principal(&admin, "flooder", &["team/auth=r"]).await;
        let other_key = add_principal(&admin, "other", &["team/auth=r"]).await;
        let flooder = session(&node.tcp(), &flooder_key).await;
        let reader = Held::Reader(flooder.reader("team/auth").unwrap());
        let connection = connect(&node.tcp()).await.unwrap();
        let membrane = connection.login(&flooder_key).await.unwrap();
        for _ in 0..1_000 {
            let saved = token::save(&reader).await.unwrap();
            membrane.revoke_token(&saved).await.unwrap();
        }
        let one_more = token::save(&reader).await.unwrap();
        assert_code(
            membrane.revoke_token(&one_more).await,
            ErrorCode::ResourceExhausted,
        );
        // Another principal still revokes its own, and an admin the flooder's.
        let other = session(&node.tcp(), &other_key).await;
        let saved = token::save(&Held::Reader(other.reader("team/auth").unwrap()))
            .await
            .unwrap();
        let connection = connect(&node.tcp()).await.unwrap();
        connection
            .login(&other_key)
            .await
            .unwrap()
            .revoke_token(&saved)
            .await
            .unwrap();
        assert_code(restore(&node, &saved).await, ErrorCode::Unauthenticated);
        engram_client::token::revoke_token(&admin.admin().unwrap(), &one_more)
            .await
            .unwrap();
        assert_code(restore(&node, &one_more).await, ErrorCode::Unauthenticated);
    });
}
