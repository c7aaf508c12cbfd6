//! Text search in `ask`: words ranked by BM25, filters and restrictions inside the
//! search, fusion with vector similarity, and the same answers after a restart. The
//! text index is kept on disk: after a crash the node answers text asks from it at
//! once, and it never serves another store's index.

use engram_client::{ErrorCode, Filter, NewAtom, Restriction, Session};
use engram_tests::{TestNode, assert_code, run_local, session};

const NOTES: [(&str, &str, [f32; 3]); 6] = [
    ("Hash passwords with argon2id", "auth", [1.0, 0.0, 0.0]),
    ("Tokens expire after one hour", "auth", [0.9, 0.1, 0.0]),
    ("Rotate the signing keys monthly", "crypto", [0.0, 1.0, 0.0]),
    (
        "Argon2 parameters: memory 64 MiB, three passes",
        "crypto",
        [0.7, 0.7, 0.0],
    ),
    ("Deploys happen on Tuesdays", "ops", [0.0, 0.0, 1.0]),
    ("Never store passwords in logs", "ops", [0.6, 0.0, 0.8]),
];

async fn notes(node: &TestNode) -> Session {
    let admin = session(&node.tcp(), &node.admin_key()).await;
    engram_client::create_world(&admin.admin().unwrap(), "notes")
        .await
        .unwrap();
    let admin = session(&node.tcp(), &node.admin_key()).await;
    let atoms: Vec<NewAtom> = NOTES
        .iter()
        .map(|(text, label, vector)| {
            NewAtom::fact(*text)
                .labels(&[label])
                .vector(vector.to_vec())
        })
        .collect();
    engram_client::remember(&admin.writer("notes").unwrap(), &atoms)
        .await
        .unwrap();
    admin
}

async fn texts(session: &Session, filter: Filter) -> Vec<String> {
    engram_client::ask(&session.reader("notes").unwrap(), &filter)
        .await
        .unwrap()
        .into_iter()
        .map(|atom| atom.text)
        .collect()
}

fn words(text: &str, limit: u32) -> Filter {
    Filter {
        text: text.into(),
        limit,
        ..Filter::default()
    }
}

#[test]
fn words_find_atoms_and_filters_hold_inside_the_search() {
    let node = TestNode::start();
    run_local(async {
        let admin = notes(&node).await;
        // Case-insensitive, whole words: "argon2id" is another word than "argon2".
        let found = texts(&admin, words("ARGON2", 5)).await;
        assert_eq!(
            found,
            vec!["Argon2 parameters: memory 64 MiB, three passes"]
        );
        let found = texts(&admin, words("passwords", 5)).await;
        assert_eq!(found.len(), 2, "{found:?}");
        // Only ops atoms: the label filter applies inside the search.
        let found = texts(
            &admin,
            Filter {
                labels: vec!["ops".into()],
                ..words("passwords", 5)
            },
        )
        .await;
        assert_eq!(found, vec!["Never store passwords in logs"]);
        // A reader restricted to "crypto" never receives an auth atom.
        let reader = engram_client::attenuate_reader(
            &admin.reader("notes").unwrap(),
            &Restriction {
                labels: vec!["crypto".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let found: Vec<String> = engram_client::ask(&reader, &words("argon2 passwords", 5))
            .await
            .unwrap()
            .into_iter()
            .map(|atom| atom.text)
            .collect();
        assert_eq!(
            found,
            vec!["Argon2 parameters: memory 64 MiB, three passes"]
        );
        assert_code(
            engram_client::ask(&admin.reader("notes").unwrap(), &words("!!! ...", 5)).await,
            ErrorCode::InvalidArgument,
        );
    });
}

#[test]
fn text_and_vector_rankings_are_fused() {
    let node = TestNode::start();
    run_local(async {
        let admin = notes(&node).await;
        // "passwords" matches two atoms; the vector points at the first note. Both
        // rankings contribute to an atom found by both, and only text and vector
        // candidates come back.
        let answer = engram_client::ask_scored(
            &admin.reader("notes").unwrap(),
            &Filter {
                vector: vec![1.0, 0.0, 0.1],
                explain: true,
                ..words("passwords", 6)
            },
        )
        .await
        .unwrap();
        let hash = answer
            .hits
            .iter()
            .find(|hit| hit.atom.text == "Hash passwords with argon2id")
            .expect("the atom both rankings find");
        assert!(
            hash.explanation.contains("text rank") && hash.explanation.contains("vector rank"),
            "{}",
            hash.explanation
        );
        assert!(hash.similarity > 0.99, "{}", hash.similarity);
        let scores: Vec<f64> = answer.hits.iter().map(|hit| hit.score).collect();
        assert!(
            scores.windows(2).all(|pair| pair[0] >= pair[1]),
            "{scores:?}"
        );
        // Text alone ranks only atoms with the words.
        let text_only = texts(&admin, words("passwords", 6)).await;
        assert_eq!(text_only.len(), 2, "{text_only:?}");
    });
}

#[test]
fn text_answers_are_the_same_after_a_restart() {
    let mut node = TestNode::start();
    let queries = ["argon2", "passwords logs", "keys"];
    let before: Vec<Vec<String>> = run_local(async {
        let admin = notes(&node).await;
        let mut answers = Vec::new();
        for query in queries {
            answers.push(texts(&admin, words(query, 5)).await);
        }
        answers
    });
    node.stop();
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        for (query, expected) in queries.iter().zip(&before) {
            assert_eq!(&texts(&admin, words(query, 5)).await, expected, "{query}");
        }
    });
}

/// A text ask of `text` in `world`: the texts found, and the warning.
async fn text_ask(session: &Session, world: &str, text: &str) -> (Vec<String>, String) {
    let answer = engram_client::ask_scored(
        &session.reader(world).unwrap(),
        &Filter {
            text: text.into(),
            limit: 50,
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    let texts = answer.hits.into_iter().map(|hit| hit.atom.text).collect();
    (texts, answer.warning)
}

/// Waits until a text ask of `word` in `notes` carries no warning: the text index holds
/// every atom.
async fn until_text_indexed(session: &Session, word: &str) {
    let filter = Filter {
        text: word.into(),
        limit: 1,
        ..Filter::default()
    };
    let reader = session.reader("notes").unwrap();
    engram_tests::ask_when_indexed(&reader, &filter, std::time::Duration::from_secs(30)).await;
}

#[test]
fn after_a_crash_the_text_index_answers_at_once_from_disk() {
    let mut node = TestNode::start();
    let atoms: Vec<NewAtom> = (0..3000)
        .map(|index| {
            NewAtom::fact(format!(
                "note {index} about {}",
                ["argon", "tokens", "deploys"][index % 3]
            ))
        })
        .collect();
    let before = run_local(async {
        let admin = notes(&node).await;
        engram_client::remember(&admin.writer("notes").unwrap(), &atoms)
            .await
            .unwrap();
        until_text_indexed(&admin, "argon").await;
        text_ask(&admin, "notes", "argon").await.0
    });
    node.kill();
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let (after, warning) = text_ask(&admin, "notes", "argon").await;
        assert_eq!(
            warning, "",
            "the first ask after the restart is answered from the index"
        );
        assert_eq!(after, before);
    });
}

#[test]
fn a_text_index_of_another_store_is_never_served() {
    let mut first = TestNode::start();
    run_local(async {
        let admin = notes(&first).await;
        until_text_indexed(&admin, "passwords").await;
    });
    first.stop();
    // A second node whose store has the same world, other atoms, and the first node's
    // text index copied in.
    let mut second = TestNode::start();
    run_local(async {
        let admin = session(&second.tcp(), &second.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "notes")
            .await
            .unwrap();
        let admin = session(&second.tcp(), &second.admin_key()).await;
        let atoms: Vec<NewAtom> = (0..10)
            .map(|index| NewAtom::fact(format!("other {index}")))
            .collect();
        engram_client::remember(&admin.writer("notes").unwrap(), &atoms)
            .await
            .unwrap();
    });
    second.stop();
    let copied = second.data_dir().join("text-index");
    std::fs::remove_dir_all(&copied).unwrap();
    std::fs::create_dir(&copied).unwrap();
    for file in std::fs::read_dir(first.data_dir().join("text-index")).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), copied.join(file.file_name())).unwrap();
    }
    second.restart();
    run_local(async {
        let admin = session(&second.tcp(), &second.admin_key()).await;
        let (found, _) = text_ask(&admin, "notes", "passwords").await;
        assert!(
            found.is_empty(),
            "another store's atoms were answered: {found:?}"
        );
    });
    second.stop();
    let log = std::fs::read_to_string(second.log_path()).unwrap();
    assert!(log.contains("not this store's"), "{log}");
}

/// The text ranking a reader sees (each hit's text and text rank and score, as
/// `explain` shows them, by text) once the index holds every atom.
async fn text_ranking(
    reader: &engram_client::engram_schema::engram_capnp::world_reader::Client,
    text: &str,
) -> Vec<(String, String)> {
    let filter = Filter {
        explain: true,
        ..words(text, 6)
    };
    let answer =
        engram_tests::ask_when_indexed(reader, &filter, std::time::Duration::from_secs(30)).await;
    answer
        .hits
        .into_iter()
        .map(|hit| {
            // The text part: "text rank N (score S)". (The fused order is not compared:
            // recency is a commit over the node's last commit, which moves with every
            // world's writes, as the cursors of every answer do.)
            let text_part = hit
                .explanation
                .split(", ")
                .find(|part| part.contains("text rank"))
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            (hit.atom.text, text_part)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What a text ask shows is computed from what its reader may read: writing a word
/// into a world the reader holds no grant for moves none of its ranks or scores, and a
/// reader whose restriction hides atoms sees ranks, not raw scores (they count hidden
/// atoms).
#[test]
fn a_text_ask_shows_nothing_of_worlds_or_atoms_its_reader_may_not_read() {
    let node = TestNode::start();
    run_local(async {
        let admin = notes(&node).await;
        engram_client::create_world(&admin.admin().unwrap(), "other")
            .await
            .unwrap();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let agent_key = engram_tests::add_principal(&admin, "agent", &["notes=r"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let reader = agent.reader("notes").unwrap();
        let before = text_ranking(&reader, "passwords argon2").await;
        assert!(
            before.iter().any(|(_, text)| text.contains("score")),
            "{before:?}"
        );

        // "argon2", rare in notes, becomes common in a world the agent cannot read.
        let flood: Vec<NewAtom> = (0..200)
            .map(|index| NewAtom::fact(format!("argon2 setting number {index}")))
            .collect();
        engram_client::remember(&admin.writer("other").unwrap(), &flood)
            .await
            .unwrap();
        engram_tests::ask_when_indexed(
            &admin.reader("other").unwrap(),
            &words("argon2", 1),
            std::time::Duration::from_secs(30),
        )
        .await;
        assert_eq!(text_ranking(&reader, "passwords argon2").await, before);

        // Restricted to a label, the reader sees where each hit ranks, not its score.
        let auth = engram_client::attenuate_reader(
            &reader,
            &Restriction {
                labels: vec!["auth".into(), "crypto".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let restricted = text_ranking(&auth, "passwords argon2").await;
        assert!(!restricted.is_empty());
        for (text, part) in &restricted {
            assert!(
                part.contains("text rank") && !part.contains("score"),
                "{text}: {part}"
            );
        }
        // Nor do its ranks move when atoms it may not see take up its words: "argon2",
        // in many atoms labelled ops, would make it commoner than "passwords".
        let hidden: Vec<NewAtom> = (0..60)
            .map(|index| NewAtom::fact(format!("argon2 ops note {index}")).labels(&["ops"]))
            .collect();
        engram_client::remember(&admin.writer("notes").unwrap(), &hidden)
            .await
            .unwrap();
        engram_tests::ask_when_indexed(
            &admin.reader("notes").unwrap(),
            &words("argon2", 1),
            std::time::Duration::from_secs(30),
        )
        .await;
        assert_eq!(text_ranking(&auth, "passwords argon2").await, restricted);
    });
}
