//! Bounded harm in the derived indexes: a writer with the weakest capability cannot take
//! the similarity or text index down, or make a search walk more than it asked for.

use std::time::Duration;

use engram_client::{Filter, NewAtom, Restriction, Session};
use engram_tests::{
    TestNode, add_principal, admin_with_world, ask_when_indexed, run_local, session,
};

/// A vector whose norm is 1 by a sequential f32 sum, but whose self-dot summed in SIMD
/// lanes is above hnsw_rs's bound of 1.000002: unnormalised, it panicked the indexer.
fn crafted_vector() -> Vec<f32> {
    let mut vector = vec![2.4e-4f32; 128];
    vector[0] = 1.0;
    vector
}

/// Asks by `vector` until the answer carries no warning, that is until the similarity
/// index covers every atom; fails after `deadline`.
async fn until_indexed(session: &Session, world: &str, vector: &[f32], deadline: Duration) {
    let filter = Filter {
        vector: vector.to_vec(),
        limit: 5,
        ..Filter::default()
    };
    ask_when_indexed(&session.reader(world).unwrap(), &filter, deadline).await;
}

#[test]
fn a_crafted_vector_cannot_stop_the_similarity_index() {
    let mut node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "vectors")
            .await
            .unwrap();
        let key = add_principal(&admin, "agent", &["vectors=w"]).await;
        let agent = session(&node.tcp(), &key).await;
        // The weakest writer: attenuated to one kind.
        let writer = engram_client::attenuate_writer(
            &agent.writer("vectors").unwrap(),
            &Restriction {
                kinds: vec![engram_client::engram_schema::engram_capnp::AtomKind::Fact],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let crafted = crafted_vector();
        for text in ["crafted one", "crafted two"] {
            engram_client::remember(&writer, &[NewAtom::fact(text).vector(crafted.clone())])
                .await
                .unwrap();
        }
        let mut ordinary = crafted.clone();
        ordinary[1] = 0.5;
        engram_client::remember(&writer, &[NewAtom::fact("ordinary").vector(ordinary)])
            .await
            .unwrap();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        until_indexed(&admin, "vectors", &crafted, Duration::from_secs(30)).await;
        let found = engram_client::ask(
            &admin.reader("vectors").unwrap(),
            &Filter {
                vector: crafted.clone(),
                limit: 3,
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(found.len(), 3);
        assert!(found[0].text.starts_with("crafted"));
    });
    // The next start loads or rebuilds the index with the same atoms, and serves.
    node.kill();
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        until_indexed(
            &admin,
            "vectors",
            &crafted_vector(),
            Duration::from_secs(30),
        )
        .await;
    });
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(!log.contains("panicked"), "the node's log:\n{log}");
}

/// The texts of a text ask.
async fn by_text(
    session: &Session,
    world: &str,
    text: &str,
) -> Result<Vec<String>, engram_client::ClientError> {
    let filter = Filter {
        text: text.into(),
        limit: 10,
        ..Filter::default()
    };
    let atoms = engram_client::ask(&session.reader(world).unwrap(), &filter).await?;
    let mut texts: Vec<String> = atoms.into_iter().map(|atom| atom.text).collect();
    texts.sort();
    Ok(texts)
}

#[test]
fn text_search_takes_words_and_never_query_syntax() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "words").await;
        let atoms: Vec<NewAtom> = ["alphabet soup", "alpha centauri", "gamma ray"]
            .into_iter()
            .map(NewAtom::fact)
            .collect();
        engram_client::remember(&admin.writer("words").unwrap(), &atoms)
            .await
            .unwrap();
        // Whether the index or the word-by-word tail answers, the words are the words.
        for _ in 0..2 {
            // A wildcard is no word: nothing to search for.
            engram_tests::assert_code(
                by_text(&admin, "words", "*").await,
                engram_client::ErrorCode::InvalidArgument,
            );
            // A prefix wildcard is the word itself.
            assert_eq!(
                by_text(&admin, "words", "alpha*").await.unwrap(),
                ["alpha centauri"]
            );
            // A range is three words, none of them in any atom.
            assert!(
                by_text(&admin, "words", "[a TO z]")
                    .await
                    .unwrap()
                    .is_empty()
            );
            // A field prefix is a word too: `world:` does not reach another field.
            assert_eq!(
                by_text(&admin, "words", "world:words gamma").await.unwrap(),
                ["gamma ray"]
            );
            until_text_indexed(&admin, "words").await;
        }
    });
}

/// Waits until text asks in `world` carry no warning: the text index holds every atom.
async fn until_text_indexed(session: &Session, world: &str) {
    let filter = Filter {
        text: "probe".into(),
        limit: 1,
        ..Filter::default()
    };
    let reader = session.reader(world).unwrap();
    ask_when_indexed(&reader, &filter, Duration::from_secs(30)).await;
}

#[test]
fn a_world_created_with_a_dimension_refuses_a_first_vector_that_disagrees() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let created =
            engram_client::create_world_with_dimension(&admin.admin().unwrap(), "fixed", 4)
                .await
                .unwrap();
        assert_eq!(created.vector_dimension, 4);
        engram_tests::assert_code(
            engram_client::create_world_with_dimension(&admin.admin().unwrap(), "huge", 5000).await,
            engram_client::ErrorCode::InvalidArgument,
        );
        let key = add_principal(&admin, "agent", &["fixed=w"]).await;
        let agent = session(&node.tcp(), &key).await;
        let writer = engram_client::attenuate_writer(
            &agent.writer("fixed").unwrap(),
            &Restriction {
                labels: vec!["mine".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        // The weakest writer cannot choose the world's dimension with its first vector.
        engram_tests::assert_code(
            engram_client::remember(
                &writer,
                &[NewAtom::fact("flat")
                    .labels(&["mine"])
                    .vector(vec![1.0, 0.0])],
            )
            .await,
            engram_client::ErrorCode::InvalidArgument,
        );
        engram_client::remember(
            &writer,
            &[NewAtom::fact("right")
                .labels(&["mine"])
                .vector(vec![1.0, 0.0, 0.0, 0.0])],
        )
        .await
        .unwrap();
        let worlds = engram_client::list_worlds(&admin.admin().unwrap())
            .await
            .unwrap();
        assert_eq!(worlds[0].vector_dimension, 4);
    });
}
