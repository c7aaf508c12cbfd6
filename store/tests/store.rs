//! The store through its public API on a temporary redb file.

use engram_store::{
    AtomContent, AtomKind, Authority, Grant, Principal, Query, ReadBudget, Store, StoreError,
    WriteOp, WriteOutcome, WriteRequest,
};
use redb::ReadableDatabase;

const ALICE: [u8; 32] = [0xa1; 32];
const BOB: [u8; 32] = [0xb0; 32];

struct Fixture {
    directory: tempfile::TempDir,
    store: Store,
}

fn fixture() -> Fixture {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path().join("engram.redb")).unwrap();
    for name in ["team/auth", "other"] {
        store
            .apply_one(WriteRequest {
                authority: Authority::Node,
                op: WriteOp::CreateWorld {
                    name: name.into(),
                    dimension: 0,
                },
            })
            .unwrap();
    }
    for (name, key, admin) in [("alice", ALICE, true), ("bob", BOB, false)] {
        store
            .apply_one(WriteRequest {
                authority: Authority::Node,
                op: WriteOp::AddPrincipal(Principal {
                    name: name.into(),
                    public_key: key,
                    admin,
                    grants: vec![Grant {
                        world: "team/auth".into(),
                        read: true,
                        write: true,
                        observe: true,
                        approve: false,
                        rate: Default::default(),
                    }],
                }),
            })
            .unwrap();
    }
    Fixture { directory, store }
}

fn remember(key: [u8; 32], world: &str, atoms: Vec<AtomContent>) -> WriteRequest {
    WriteRequest {
        authority: Authority::Principal { key, epoch: 1 },
        op: WriteOp::Remember {
            world: world.into(),
            atoms,
            key: None,
        },
    }
}

fn atom(kind: AtomKind, text: &str, labels: &[&str], importance: f32) -> AtomContent {
    let mut content = AtomContent::new(kind, text);
    content.labels = labels.iter().map(|label| label.to_string()).collect();
    content.importance = importance;
    content
}

#[test]
fn chains_link_commits_increase_and_verify_is_clean() {
    let fixture = fixture();
    let receipts = match fixture
        .store
        .apply_one(remember(
            ALICE,
            "team/auth",
            vec![
                atom(AtomKind::Fact, "one", &[], 0.5),
                atom(AtomKind::Fact, "two", &[], 0.5),
            ],
        ))
        .unwrap()
    {
        WriteOutcome::Remembered { receipts, .. } => receipts,
        other => panic!("{other:?}"),
    };
    assert_eq!(receipts[0].seq, 1);
    assert_eq!(receipts[0].prev, [0; 32]);
    assert_eq!(receipts[1].prev, receipts[0].id);
    assert_eq!(receipts[1].commit, receipts[0].commit + 1);
    let view = fixture.store.read().unwrap();
    let heads = view.heads("team/auth").unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!((heads[0].seq, heads[0].id), (2, receipts[1].id));
    let report = view.verify("team/auth", None).unwrap();
    assert_eq!(
        (report.chains, report.entries, report.first_bad),
        (1, 2, None)
    );
    assert_eq!(
        view.atom("team/auth", &receipts[0].id)
            .unwrap()
            .content
            .text,
        "one"
    );
    assert!(matches!(
        view.atom("other", &receipts[0].id),
        Err(StoreError::AtomNotFound { .. })
    ));
}

#[test]
fn a_group_commits_good_requests_and_rejects_bad_ones_without_a_trace() {
    let fixture = fixture();
    let verdicts = fixture
        .store
        .apply(&[
            remember(
                ALICE,
                "team/auth",
                vec![atom(AtomKind::Fact, "kept", &[], 0.5)],
            ),
            remember(
                ALICE,
                "team/auth",
                vec![
                    atom(AtomKind::Fact, "fine", &[], 0.5),
                    atom(AtomKind::Fact, "bad", &[], 2.0),
                ],
            ),
            remember(
                BOB,
                "other",
                vec![atom(AtomKind::Fact, "no grant", &[], 0.5)],
            ),
            remember(ALICE, "missing", vec![atom(AtomKind::Fact, "x", &[], 0.5)]),
            remember(ALICE, "team/auth", vec![]),
            remember(
                BOB,
                "team/auth",
                vec![atom(AtomKind::Fact, "bob", &[], 0.5)],
            ),
        ])
        .unwrap();
    assert!(verdicts[0].is_ok());
    assert!(matches!(
        verdicts[1],
        Err(StoreError::InvalidAtom { index: 1, .. })
    ));
    assert!(matches!(
        verdicts[2],
        Err(StoreError::PermissionDenied { .. })
    ));
    assert!(matches!(verdicts[3], Err(StoreError::WorldNotFound { .. })));
    assert!(matches!(verdicts[4], Err(StoreError::InvalidBatch { .. })));
    let Ok(WriteOutcome::Remembered { receipts: bob, .. }) = &verdicts[5] else {
        panic!("{:?}", verdicts[5])
    };
    // The rejected batch consumed no commit number.
    assert_eq!(bob[0].commit, 2);
    let view = fixture.store.read().unwrap();
    assert_eq!(view.world("team/auth").unwrap().unwrap().atoms, 2);
    assert_eq!(view.last_commit(), 2);
}

#[test]
fn an_advanced_epoch_rejects_older_requests_in_the_same_group() {
    let fixture = fixture();
    let verdicts = fixture
        .store
        .apply(&[
            WriteRequest {
                authority: Authority::Principal {
                    key: ALICE,
                    epoch: 1,
                },
                op: WriteOp::AdvanceEpoch { head: [9; 32] },
            },
            remember(
                ALICE,
                "team/auth",
                vec![atom(AtomKind::Fact, "late", &[], 0.5)],
            ),
        ])
        .unwrap();
    assert!(matches!(&verdicts[0], Ok(WriteOutcome::Epoch(epoch)) if epoch.number == 2));
    assert!(matches!(
        verdicts[1],
        Err(StoreError::StaleEpoch {
            issued: 1,
            current: 2
        })
    ));
    let view = fixture.store.read().unwrap();
    assert_eq!(view.epoch().unwrap().head, [9; 32]);
    assert_eq!(view.last_commit(), 0);
}

#[test]
fn ask_filters_from_indexes_newest_first() {
    let fixture = fixture();
    let mut batch = Vec::new();
    for index in 0..60u32 {
        let kind = [AtomKind::Fact, AtomKind::Decision, AtomKind::Plan][index as usize % 3];
        let labels: &[&str] = if index % 2 == 0 {
            &["auth", "even"]
        } else {
            &["auth"]
        };
        batch.push(atom(
            kind,
            &format!("atom {index}"),
            labels,
            index as f32 / 60.0,
        ));
    }
    fixture
        .store
        .apply_one(remember(ALICE, "team/auth", batch))
        .unwrap();
    fixture
        .store
        .apply_one(remember(
            BOB,
            "team/auth",
            vec![atom(AtomKind::Fact, "bob's", &["auth"], 0.9)],
        ))
        .unwrap();
    let view = fixture.store.read().unwrap();
    let check = |query: Query, expected: &[&str]| {
        let texts: Vec<String> = view
            .ask("team/auth", &query, ReadBudget::CALL, &|_| true)
            .unwrap()
            .atoms
            .into_iter()
            .map(|atom| atom.content.text)
            .collect();
        assert_eq!(texts, expected, "{query:?}");
    };
    check(
        Query {
            kinds: vec![AtomKind::Decision],
            limit: 3,
            ..Query::default()
        },
        &["atom 58", "atom 55", "atom 52"],
    );
    check(
        Query {
            kinds: vec![AtomKind::Decision, AtomKind::Plan],
            limit: 4,
            ..Query::default()
        },
        &["atom 59", "atom 58", "atom 56", "atom 55"],
    );
    check(
        Query {
            labels: vec!["auth".into(), "even".into()],
            kinds: vec![AtomKind::Fact],
            limit: 3,
            ..Query::default()
        },
        &["atom 54", "atom 48", "atom 42"],
    );
    check(
        Query {
            writers: vec![BOB],
            ..Query::default()
        },
        &["bob's"],
    );
    check(
        Query {
            min_importance: 0.3,
            max_importance: 0.34,
            ..Query::default()
        },
        &["atom 20", "atom 19", "atom 18"],
    );
    check(
        Query {
            labels: vec!["even".into()],
            before_commit: Some(5),
            ..Query::default()
        },
        &["atom 2", "atom 0"],
    );
    let page = view
        .replay("team/auth", 58, 10, ReadBudget::CALL, &|_| true)
        .unwrap();
    assert_eq!(
        page.atoms
            .iter()
            .map(|atom| atom.commit)
            .collect::<Vec<_>>(),
        vec![59, 60, 61]
    );
    assert_eq!(page.next_commit, 61);

    // Within a budget of 5 entries, a selective ask answers in pages, each with the
    // commit to continue before; following them finds what one long scan would.
    let selective = Query {
        min_importance: 0.3,
        max_importance: 0.34,
        ..Query::default()
    };
    let small = ReadBudget {
        examined: 5,
        bytes: usize::MAX,
    };
    let mut found = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = view
            .ask(
                "team/auth",
                &Query {
                    before_commit: before,
                    ..selective.clone()
                },
                small,
                &|_| true,
            )
            .unwrap();
        pages += 1;
        found.extend(page.atoms.into_iter().map(|atom| atom.content.text));
        match page.resume_before_commit {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(found, ["atom 20", "atom 19", "atom 18"]);
    assert!(pages > 5, "{pages} pages");
    // A budget of bytes: one atom a page, the cursor moving one at a time.
    let one_atom = ReadBudget {
        examined: usize::MAX,
        bytes: 1,
    };
    let page = view
        .replay("team/auth", 0, 10, one_atom, &|_| true)
        .unwrap();
    assert_eq!(page.atoms.len(), 1);
    assert_eq!(page.next_commit, page.atoms[0].commit);
    assert!(matches!(
        view.ask(
            "team/auth",
            &Query {
                limit: 0,
                ..Query::default()
            },
            ReadBudget::CALL,
            &|_| true
        ),
        Err(StoreError::InvalidQuery { .. })
    ));
}

#[test]
fn removing_the_last_admin_is_refused_and_only_admins_administer() {
    let fixture = fixture();
    let verdict = fixture.store.apply_one(WriteRequest {
        authority: Authority::Principal {
            key: ALICE,
            epoch: 1,
        },
        op: WriteOp::RemovePrincipal {
            name: "alice".into(),
        },
    });
    assert!(matches!(verdict, Err(StoreError::LastAdmin { .. })));
    let verdict = fixture.store.apply_one(WriteRequest {
        authority: Authority::Principal { key: BOB, epoch: 1 },
        op: WriteOp::CreateWorld {
            name: "mine".into(),
            dimension: 0,
        },
    });
    assert!(matches!(verdict, Err(StoreError::PermissionDenied { .. })));
}

#[test]
fn a_group_larger_than_the_journal_commits_durably_in_redb() {
    let fixture = fixture();
    // 20 requests of 1,000 atoms of 1 KiB text: one group of about 21 MiB, more than
    // the journal holds.
    let text = "x".repeat(1024);
    let requests: Vec<WriteRequest> = (0..20)
        .map(|_| {
            let atoms = (0..1000)
                .map(|_| atom(AtomKind::Fact, &text, &["big"], 0.5))
                .collect();
            remember(ALICE, "team/auth", atoms)
        })
        .collect();
    let verdicts = fixture.store.apply(&requests).unwrap();
    assert!(verdicts.iter().all(|verdict| verdict.is_ok()));
    // The next group is journaled again, after it.
    let small = remember(
        ALICE,
        "team/auth",
        vec![atom(AtomKind::Fact, "small", &[], 0.5)],
    );
    match fixture.store.apply_one(small).unwrap() {
        WriteOutcome::Remembered { receipts, .. } => assert_eq!(receipts[0].seq, 20_001),
        other => panic!("{other:?}"),
    }
    let view = fixture.store.read().unwrap();
    assert_eq!(view.world("team/auth").unwrap().unwrap().atoms, 20_001);
    assert_eq!(view.verify("team/auth", None).unwrap().first_bad, None);
    // The journal (store/FORMAT.md) starts over after the durable commit: its first
    // record is the small group alone.
    let journal = std::fs::read(fixture.directory.path().join("engram.journal")).unwrap();
    assert_eq!(&journal[..4], b"EJR1");
    let body_length = u32::from_be_bytes(journal[4..8].try_into().unwrap());
    assert!(body_length < 1024, "the first record holds one small entry");
}

#[test]
fn a_read_after_a_write_sees_it_and_an_older_view_keeps_its_snapshot() {
    let fixture = fixture();
    let remember_one = |text: &str| match fixture
        .store
        .apply_one(remember(
            ALICE,
            "team/auth",
            vec![atom(AtomKind::Fact, text, &[], 0.5)],
        ))
        .unwrap()
    {
        WriteOutcome::Remembered { receipts, .. } => receipts[0],
        other => panic!("{other:?}"),
    };
    let first = remember_one("first");
    // Two reads with no write between share a snapshot; both see the first atom.
    let before = fixture.store.read().unwrap();
    let again = fixture.store.read().unwrap();
    assert_eq!(
        before.atom("team/auth", &first.id).unwrap().content.text,
        "first"
    );
    assert_eq!(again.last_commit(), first.commit);

    let second = remember_one("second");
    // Reads begun after the write returned see it, on this thread and on another.
    let after = fixture.store.read().unwrap();
    assert_eq!(
        after.atom("team/auth", &second.id).unwrap().content.text,
        "second"
    );
    let store = fixture.store.clone();
    let seen = std::thread::spawn(move || {
        store
            .read()
            .unwrap()
            .atom("team/auth", &second.id)
            .map(|atom| atom.content.text)
    })
    .join()
    .unwrap();
    assert_eq!(seen.unwrap(), "second");
    // The views begun before it still read the state they began with.
    assert!(matches!(
        before.atom("team/auth", &second.id),
        Err(StoreError::AtomNotFound { .. })
    ));
    assert_eq!(again.last_commit(), first.commit);
    assert_eq!(after.last_commit(), second.commit);
}

/// The entries and heads tables, as store/FORMAT.md documents them.
const ENTRIES: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("entries");
/// A chain head: (seq, id).
type Head = (u64, [u8; 32]);
const HEADS: redb::TableDefinition<(&str, [u8; 32]), Head> = redb::TableDefinition::new("heads");

#[test]
fn verify_detects_every_single_byte_change_to_an_entry_its_id_or_a_head() {
    let Fixture { directory, store } = fixture();
    for (key, texts) in [(ALICE, ["one", "two"]), (BOB, ["three", "four"])] {
        let atoms = texts
            .iter()
            .map(|text| atom(AtomKind::Fact, text, &["auth"], 0.5))
            .collect();
        store.apply_one(remember(key, "team/auth", atoms)).unwrap();
    }
    drop(store);
    let path = directory.path().join("engram.redb");
    let entries: Vec<(u64, Vec<u8>)> = {
        let database = redb::Database::open(&path).unwrap();
        let read = database.begin_read().unwrap();
        let table = read.open_table(ENTRIES).unwrap();
        table
            .range(("team/auth", 0)..=("team/auth", u64::MAX))
            .unwrap()
            .map(|row| {
                let (key, value) = row.unwrap();
                (key.value().1, value.value().to_vec())
            })
            .collect()
    };
    assert_eq!(entries.len(), 4);
    let verify = || {
        let store = Store::open(&path).unwrap();
        let report = store.read().unwrap().verify("team/auth", None).unwrap();
        report.first_bad
    };
    let edit = |change: &dyn Fn(&redb::WriteTransaction)| {
        let database = redb::Database::open(&path).unwrap();
        let write = database.begin_write().unwrap();
        change(&write);
        write.commit().unwrap();
    };
    assert_eq!(verify(), None);

    // Every byte of every row: the id (its first 32 bytes) and the entry after it.
    let mut changes = 0;
    for (commit, row) in &entries {
        for position in 0..row.len() {
            let mut changed = row.clone();
            changed[position] ^= 0x5a;
            let put = |bytes: &[u8]| {
                edit(&|write| {
                    let mut table = write.open_table(ENTRIES).unwrap();
                    table.insert(("team/auth", *commit), bytes).unwrap();
                })
            };
            put(&changed);
            assert!(
                verify().is_some(),
                "a change at byte {position} of commit {commit}'s row went unnoticed"
            );
            put(row);
            changes += 1;
        }
    }
    // Every byte of every head: its seq and its id.
    for writer in [ALICE, BOB] {
        let head = {
            let database = redb::Database::open(&path).unwrap();
            let read = database.begin_read().unwrap();
            let table = read.open_table(HEADS).unwrap();
            table.get(("team/auth", writer)).unwrap().unwrap().value()
        };
        let mut bytes = head.0.to_le_bytes().to_vec();
        bytes.extend_from_slice(&head.1);
        for position in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[position] ^= 0x5a;
            let seq = u64::from_le_bytes(changed[..8].try_into().unwrap());
            let id: [u8; 32] = changed[8..].try_into().unwrap();
            let put = |value: Head| {
                edit(&|write| {
                    let mut table = write.open_table(HEADS).unwrap();
                    table.insert(("team/auth", writer), value).unwrap();
                })
            };
            put((seq, id));
            assert!(
                verify().is_some(),
                "a change at byte {position} of a head went unnoticed"
            );
            put(head);
            changes += 1;
        }
    }
    assert_eq!(verify(), None);
    println!("{changes} single-byte changes, each detected by verify");
}
