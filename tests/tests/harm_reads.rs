//! The cost model of reads: a read that would scan a whole world answers in pages off
//! the RPC thread, so other connections are never held up, and no answer is larger
//! than the node's budget of bytes, however large the atoms.

use std::cell::RefCell;
use std::rc::Rc;

use engram_client::{Filter, NewAtom, Session};
use engram_tests::{TestNode, admin_with_world, run_local, session};

/// Atoms in the big world; more than three calls' budgets of entries examined.
const ATOMS: usize = 30_000;

async fn big_world(node: &TestNode) -> Session {
    let admin = session(&node.tcp(), &node.admin_key()).await;
    engram_client::create_world(&admin.admin().unwrap(), "big")
        .await
        .unwrap();
    let admin = session(&node.tcp(), &node.admin_key()).await;
    let writer = admin.writer("big").unwrap();
    // The one important atom is the oldest: a newest-first scan meets it last.
    engram_client::remember(
        &writer,
        &[NewAtom::fact("the important one").importance(1.0)],
    )
    .await
    .unwrap();
    for batch in 0..ATOMS / 10_000 {
        let atoms: Vec<NewAtom> = (0..10_000)
            .map(|index| NewAtom::fact(format!("ordinary {batch}-{index}")))
            .collect();
        engram_client::remember(&writer, &atoms).await.unwrap();
    }
    admin
}

fn important_only() -> Filter {
    Filter {
        min_importance: 0.99,
        limit: 10,
        ..Filter::default()
    }
}

#[test]
fn full_scan_asks_never_hold_up_other_connections() {
    let node = TestNode::start();
    run_local(async {
        let admin = big_world(&node).await;
        let hostile = session(&node.tcp(), &node.admin_key()).await;
        let bystander = session(&node.unix(), &node.admin_key()).await;
        let finished = Rc::new(RefCell::new(Vec::new()));
        let mut asks = Vec::new();
        for _ in 0..4 {
            let reader = hostile.reader("big").unwrap();
            let finished = finished.clone();
            asks.push(tokio::task::spawn_local(async move {
                let answer = engram_client::ask_scored(&reader, &important_only()).await;
                finished.borrow_mut().push("ask");
                answer
            }));
        }
        // Sent after the four asks: answered before any of them.
        tokio::task::yield_now().await;
        let reader = bystander.reader("big").unwrap();
        reader.world_request().send().promise.await.unwrap();
        finished.borrow_mut().push("world");
        for ask in asks {
            ask.await.unwrap().unwrap();
        }
        assert_eq!(finished.borrow()[0], "world", "{:?}", finished.borrow());

        // Each answer stopped at the budget with a cursor; following the cursors finds
        // the one important atom, the oldest, in several pages.
        let reader = admin.reader("big").unwrap();
        let mut filter = important_only();
        let mut pages = 0;
        let found = loop {
            let answer = engram_client::ask_scored(&reader, &filter).await.unwrap();
            pages += 1;
            if !answer.hits.is_empty() {
                break answer;
            }
            let before = answer
                .resume_before_commit
                .expect("an empty page that is not the last carries a cursor");
            assert!(
                answer.warning.contains("beforeCommit"),
                "{}",
                answer.warning
            );
            filter.before_commit = before;
        };
        assert_eq!(found.hits.len(), 1);
        assert_eq!(found.hits[0].atom.text, "the important one");
        assert_eq!(found.resume_before_commit, None);
        assert!(pages >= 3, "{pages} pages");
    });
}

#[test]
fn answers_are_bounded_in_bytes_and_continue_by_cursor() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "large").await;
        let writer = admin.writer("large").unwrap();
        let large: Vec<NewAtom> = (0..24)
            .map(|index| NewAtom {
                payload: vec![7; 1024 * 1024],
                ..NewAtom::fact(format!("large {index}"))
            })
            .collect();
        engram_client::remember(&writer, &large).await.unwrap();
        let reader = admin.reader("large").unwrap();

        // Replay: pages of at most the budget, in order, nothing skipped or repeated.
        let mut texts = Vec::new();
        let mut cursor = 0;
        let mut pages = 0;
        loop {
            let (atoms, next) = engram_client::replay(&reader, cursor, 1000).await.unwrap();
            if atoms.is_empty() {
                break;
            }
            pages += 1;
            assert!(atoms.len() <= 8, "a page of {} atoms of 1 MiB", atoms.len());
            texts.extend(atoms.into_iter().map(|atom| atom.text));
            cursor = next;
        }
        let expected: Vec<String> = (0..24).map(|index| format!("large {index}")).collect();
        assert_eq!(texts, expected);
        assert!(pages >= 3, "{pages} pages");

        // Ask: newest first, in pages joined by the cursor.
        let mut filter = Filter {
            limit: 1000,
            ..Filter::default()
        };
        let mut texts = Vec::new();
        loop {
            let answer = engram_client::ask_scored(&reader, &filter).await.unwrap();
            assert!(
                answer.hits.len() <= 8,
                "a page of {} atoms of 1 MiB",
                answer.hits.len()
            );
            texts.extend(answer.hits.into_iter().map(|hit| hit.atom.text));
            match answer.resume_before_commit {
                Some(before) => filter.before_commit = before,
                None => break,
            }
        }
        let newest_first: Vec<String> = expected.into_iter().rev().collect();
        assert_eq!(texts, newest_first);
    });
}

#[test]
fn logins_on_one_connection_share_its_reads_in_flight() {
    let node = TestNode::start_with(&["--reads-in-flight-max", "1"]);
    run_local(async {
        big_world(&node).await;
        let connection = engram_client::connect(&node.tcp()).await.unwrap();
        let key = node.admin_key();
        let login = || async { connection.login(&key).await.unwrap().graft().await.unwrap() };
        let (first, second) = (login().await, login().await);
        let (first, second) = (first.reader("big").unwrap(), second.reader("big").unwrap());
        // Two long reads at once on one connection, one per login: logging in again
        // buys no second place.
        let filter = important_only();
        let (one, other) = futures::join!(
            engram_client::ask_scored(&first, &filter),
            engram_client::ask_scored(&second, &filter),
        );
        let refused = [&one, &other]
            .iter()
            .filter(|answer| {
                matches!(answer, Err(error)
                    if error.code() == Some(engram_client::ErrorCode::ResourceExhausted)
                        && error.to_string().contains("--reads-in-flight-max"))
            })
            .count();
        assert_eq!(refused, 1, "{one:?} {other:?}");
    });
}

/// The reads the knowledge calls added keep to the same budget: a `diff` through a
/// restriction that hides every atom, and an `ask` by valid time that nothing matches,
/// each stop at the call's budget with a cursor instead of walking the whole world, and
/// `heads` as of a commit answers at once.
#[test]
fn diff_valid_time_and_as_of_reads_stop_at_the_budget() {
    let node = TestNode::start();
    run_local(async {
        let admin = big_world(&node).await;
        let hidden_all = engram_client::attenuate_reader(
            &admin.reader("big").unwrap(),
            &engram_client::Restriction {
                labels: vec!["nowhere".into()],
                ..engram_client::Restriction::default()
            },
        )
        .await
        .unwrap();
        let (atoms, cursor) = engram_client::diff(&hidden_all, 0, 0, 1000).await.unwrap();
        assert!(atoms.is_empty());
        assert!(
            cursor < ATOMS as u64,
            "a diff of {ATOMS} hidden atoms read to {cursor} in one call"
        );
        let reader = admin.reader("big").unwrap();
        let never = Filter {
            valid_at: Some(0),
            limit: 10,
            ..Filter::default()
        };
        let answer = engram_client::ask_scored(&reader, &never).await.unwrap();
        assert!(answer.hits.is_empty());
        assert!(answer.resume_before_commit.is_some(), "{}", answer.warning);
        let heads = engram_client::heads_as_of(&reader, 1).await.unwrap();
        assert_eq!(heads[0].seq, 1);
    });
}
