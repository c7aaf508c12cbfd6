//! A restricted reader learns nothing of the atoms its restriction hides: not from
//! `heads`, `verify`, `replay`'s cursor or `ask`, as the schema's `Restriction` says.

use engram_client::{ErrorCode, NewAtom, Restriction};
use engram_tests::{TestNode, add_principal, admin_with_world, run_local, session};

#[test]
fn a_restricted_reader_learns_nothing_of_hidden_atoms() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "mixed")
            .await
            .unwrap();
        let secretive = add_principal(&admin, "secretive", &["mixed=w"]).await;
        let open_key = add_principal(&admin, "open", &["mixed=w"]).await;
        let secretive = session(&node.tcp(), &secretive).await;
        let open = session(&node.tcp(), &open_key).await;
        // One writer writes only secret atoms; the other public and secret ones.
        for index in 0..3 {
            engram_client::remember(
                &secretive.writer("mixed").unwrap(),
                &[NewAtom::fact(format!("secret {index}")).labels(&["secret"])],
            )
            .await
            .unwrap();
        }
        let public = engram_client::remember(
            &open.writer("mixed").unwrap(),
            &[NewAtom::fact("public").labels(&["public"])],
        )
        .await
        .unwrap();
        let last = engram_client::remember(
            &open.writer("mixed").unwrap(),
            &[NewAtom::fact("open's secret").labels(&["secret"])],
        )
        .await
        .unwrap();

        let admin = session(&node.tcp(), &node.admin_key()).await;
        let reader = engram_client::attenuate_reader(
            &admin.reader("mixed").unwrap(),
            &Restriction {
                labels: vec!["public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();

        // heads: only the open writer's chain, at its newest visible atom.
        let heads = engram_client::heads(&reader).await.unwrap();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert_eq!(heads[0].writer, open_key.verifying_key().to_bytes());
        assert_eq!((heads[0].seq, heads[0].id), (public[0].seq, public[0].id));
        assert_ne!(heads[0].id, last[0].id);

        // verify: counts what the reader sees.
        let report = engram_client::verify(&reader).await.unwrap();
        assert_eq!((report.chains, report.entries), (1, 1));
        assert_eq!(report.first_bad, None);

        // replay: the visible atom, and a cursor that does not stop on a hidden one.
        let (atoms, next) = engram_client::replay(&reader, 0, 10).await.unwrap();
        assert_eq!(atoms.len(), 1);
        assert_eq!(atoms[0].text, "public");
        let (atoms, after) = engram_client::replay(&reader, next, 10).await.unwrap();
        assert!(atoms.is_empty());
        assert_eq!(after, next);

        // generation: no count, and the node's commit for the world's newest atom, so
        // that the hidden atom written last does not show.
        let seen = engram_client::generation(&reader).await.unwrap();
        assert!(!seen.counted);
        assert_eq!(seen.atoms, 0);
        assert_eq!(seen.last_commit, seen.node_commit);
        let unrestricted = engram_client::generation(&admin.reader("mixed").unwrap())
            .await
            .unwrap();
        assert_eq!(
            (unrestricted.last_commit, unrestricted.atoms),
            (last[0].commit, 5)
        );
        assert!(unrestricted.counted);

        // commitAt: bisecting it by time would find the hidden atoms' commits (and so
        // their count and times); through a restriction that hides atoms it is refused,
        // as trust is. Unrestricted, it names the world's last commit.
        let error = engram_client::commit_at(&reader, i64::MAX)
            .await
            .expect_err("commitAt through a hiding restriction");
        assert_eq!(error.code(), Some(ErrorCode::PermissionDenied), "{error}");
        assert_eq!(
            engram_client::commit_at(&admin.reader("mixed").unwrap(), i64::MAX)
                .await
                .unwrap(),
            last[0].commit
        );

        // The unrestricted reader sees both chains at their true heads.
        let heads = engram_client::heads(&admin.reader("mixed").unwrap())
            .await
            .unwrap();
        assert_eq!(heads.len(), 2);
        let report = engram_client::verify(&admin.reader("mixed").unwrap())
            .await
            .unwrap();
        assert_eq!((report.chains, report.entries), (2, 5));
    });
}

/// Finding a restricted reader's heads walks each chain back to its newest visible atom;
/// a chain whose newest 10,000 atoms are all hidden stops the walk at the call's budget
/// with `resourceExhausted`, rather than reading the whole chain on the node's time, and
/// the reader still learns nothing it may not see.
#[test]
fn a_restricted_readers_heads_stop_at_the_budget() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "deep").await;
        let writer = admin.writer("deep").unwrap();
        engram_client::remember(&writer, &[NewAtom::fact("public").labels(&["public"])])
            .await
            .unwrap();
        for start in (0..10_001).step_by(5_000) {
            let batch: Vec<NewAtom> = (start..(start + 5_000).min(10_001))
                .map(|index| NewAtom::fact(format!("secret {index}")).labels(&["secret"]))
                .collect();
            engram_client::remember(&writer, &batch).await.unwrap();
        }
        let reader = engram_client::attenuate_reader(
            &admin.reader("deep").unwrap(),
            &Restriction {
                labels: vec!["public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let error = match engram_client::heads(&reader).await {
            Ok(heads) => panic!("heads past the budget answered {heads:?}"),
            Err(error) => error,
        };
        assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
        // An unrestricted reader's heads come from the heads table, at no such cost.
        let heads = engram_client::heads(&admin.reader("deep").unwrap())
            .await
            .unwrap();
        assert_eq!(heads[0].seq, 10_002);
    });
}
