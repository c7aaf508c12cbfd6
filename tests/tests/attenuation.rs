//! Attenuation only narrows: a narrowed writer cannot write a kind, label or importance
//! outside its restriction, attenuating again cannot widen it, and a narrowed reader
//! sees only what its restriction shows — also after being handed to a third party.

use engram_client::engram_schema::engram_capnp::{AtomKind, world_writer};
use engram_client::{ErrorCode, Filter, NewAtom, Restriction};
use engram_tests::{TestNode, assert_code, hand_over, run_local, session};

#[test]
fn a_narrowed_writer_stays_inside_its_restriction_and_cannot_widen() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "ops")
            .await
            .unwrap();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let writer = admin.writer("ops").unwrap();
        let reader = admin.reader("ops").unwrap();
        let narrowed = engram_client::attenuate_writer(
            &writer,
            &Restriction {
                kinds: vec![AtomKind::Fact, AtomKind::Decision],
                labels: vec!["ops".into(), "infra".into()],
                max_importance: 0.6,
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let check = async |writer: &world_writer::Client, atom: NewAtom, allowed: bool| {
            let result = engram_client::remember(writer, std::slice::from_ref(&atom)).await;
            if allowed {
                result.unwrap_or_else(|error| panic!("{atom:?} refused: {error}"));
            } else {
                assert_code(result, ErrorCode::PermissionDenied);
            }
        };
        let ops_fact = || NewAtom::fact("disk is 80% full").labels(&["ops"]);
        check(&narrowed, ops_fact(), true).await;
        check(&narrowed, ops_fact().importance(0.6), true).await;
        check(
            &narrowed,
            NewAtom::new(AtomKind::Plan, "migrate").labels(&["ops"]),
            false,
        )
        .await;
        check(&narrowed, NewAtom::fact("x").labels(&["secret"]), false).await;
        check(
            &narrowed,
            NewAtom::fact("x").labels(&["ops", "secret"]),
            false,
        )
        .await;
        check(&narrowed, NewAtom::fact("no label"), false).await;
        check(&narrowed, ops_fact().importance(0.8), false).await;

        // Asking for more than it holds yields only the intersection.
        let again = engram_client::attenuate_writer(
            &narrowed,
            &Restriction {
                kinds: vec![AtomKind::Plan, AtomKind::Fact],
                labels: vec!["secret".into(), "ops".into()],
                max_importance: 1.0,
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        check(&again, ops_fact(), true).await;
        check(
            &again,
            NewAtom::new(AtomKind::Plan, "migrate").labels(&["ops"]),
            false,
        )
        .await;
        check(
            &again,
            NewAtom::new(AtomKind::Decision, "d").labels(&["ops"]),
            false,
        )
        .await;
        check(&again, NewAtom::fact("x").labels(&["secret"]), false).await;
        check(&again, ops_fact().importance(0.9), false).await;

        // Handed to another process, it is just as narrow.
        let handed: world_writer::Client = hand_over(again.clone().client);
        check(&handed, ops_fact(), true).await;
        check(&handed, NewAtom::fact("x").labels(&["secret"]), false).await;

        // Excluding the capability's own world leaves it nothing.
        let elsewhere = engram_client::attenuate_writer(
            &writer,
            &Restriction {
                worlds: vec!["other".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        check(&elsewhere, NewAtom::fact("x"), false).await;

        // Only the four allowed writes went in.
        let (atoms, _) = engram_client::replay(&reader, 0, 100).await.unwrap();
        assert_eq!(atoms.len(), 4);
    });
}

#[test]
fn a_narrowed_reader_sees_only_what_its_restriction_shows() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "notes")
            .await
            .unwrap();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let receipts = engram_client::remember(
            &admin.writer("notes").unwrap(),
            &[
                NewAtom::fact("public fact").labels(&["public"]),
                NewAtom::fact("private fact").labels(&["private"]),
                NewAtom::new(AtomKind::Plan, "public plan").labels(&["public"]),
                NewAtom::fact("important public fact")
                    .labels(&["public"])
                    .importance(0.9),
            ],
        )
        .await
        .unwrap();
        let reader = engram_client::attenuate_reader(
            &admin.reader("notes").unwrap(),
            &Restriction {
                labels: vec!["public".into()],
                kinds: vec![AtomKind::Fact],
                max_importance: 0.5,
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let texts = |atoms: Vec<engram_client::AtomView>| -> Vec<String> {
            atoms.into_iter().map(|atom| atom.text).collect()
        };
        let (replayed, _) = engram_client::replay(&reader, 0, 100).await.unwrap();
        assert_eq!(texts(replayed), vec!["public fact"]);
        let asked = engram_client::ask(&reader, &Filter::default())
            .await
            .unwrap();
        assert_eq!(texts(asked), vec!["public fact"]);
        let asked = engram_client::ask(
            &reader,
            &Filter {
                kinds: vec![AtomKind::Plan],
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        assert!(asked.is_empty());
        engram_client::get(&reader, &receipts[0].id).await.unwrap();
        for hidden in &receipts[1..] {
            assert_code(
                engram_client::get(&reader, &hidden.id).await,
                ErrorCode::NotFound,
            );
        }
    });
}
