//! Every atom a writer writes passes its restriction, transition atoms included: kind
//! `transition` is written only by `transition()`, which gives the atom its target's
//! labels, so a label-restricted writer writes nothing outside its labels and a reader
//! who may see an atom sees its state changes.

use engram_client::engram_schema::engram_capnp::{AtomKind, LifecycleState, TransitionKind};
use engram_client::{ErrorCode, Filter, NewAtom, Restriction};
use engram_tests::{TestNode, add_principal, admin_with_world, assert_code, run_local, session};

#[test]
fn a_transition_atom_is_written_only_by_transition_and_carries_its_targets_labels() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let agent_key = add_principal(&admin, "agent", &["team/auth=rw"]).await;
        let agent = session(&node.tcp(), &agent_key).await;
        let writer = agent.writer("team/auth").unwrap();
        let narrow = engram_client::attenuate_writer(
            &writer,
            &Restriction {
                labels: vec!["public".into()],
                kinds: vec![AtomKind::Fact],
                max_importance: 0.3,
                ..Restriction::default()
            },
        )
        .await
        .unwrap();

        // A transition atom through remember: outside every bound of the restriction.
        let mut smuggled = NewAtom::new(AtomKind::Transition, "retracted")
            .labels(&["secret", "hr"])
            .importance(1.0);
        smuggled.payload = vec![7; 200_000];
        assert_code(
            engram_client::remember(&narrow, std::slice::from_ref(&smuggled)).await,
            ErrorCode::InvalidArgument,
        );
        // Nor through an unrestricted writer, alone or in a batch.
        let target = engram_client::remember(
            &writer,
            &[NewAtom::fact("x").labels(&["public"]).importance(0.2)],
        )
        .await
        .unwrap()[0]
            .id;
        let mut forged = NewAtom::new(AtomKind::Transition, "retract");
        forged.links = vec![engram_client::Link {
            kind: engram_client::engram_schema::engram_capnp::LinkKind::Retracts,
            target,
        }];
        assert_code(
            engram_client::remember(&writer, &[NewAtom::fact("y"), forged]).await,
            ErrorCode::InvalidArgument,
        );
        let everything = engram_client::ask(
            &admin.reader("team/auth").unwrap(),
            &Filter {
                limit: 100,
                states: vec![
                    LifecycleState::Asserted,
                    LifecycleState::Retracted,
                    LifecycleState::Approved,
                ],
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(everything.len(), 1, "{everything:?}");

        // A writer narrowed to kinds [fact] writes no transition atom either.
        assert_code(
            engram_client::transition(&narrow, &target, TransitionKind::Retract, "").await,
            ErrorCode::PermissionDenied,
        );

        // Narrowed to labels only, it retracts its public atom; the transition atom is
        // labelled public, and a reader narrowed to public sees it.
        let public_writer = engram_client::attenuate_writer(
            &writer,
            &Restriction {
                labels: vec!["public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let receipt =
            engram_client::transition(&public_writer, &target, TransitionKind::Retract, "")
                .await
                .unwrap();
        let public_reader = engram_client::attenuate_reader(
            &agent.reader("team/auth").unwrap(),
            &Restriction {
                labels: vec!["public".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let seen = engram_client::get(&public_reader, &receipt.id)
            .await
            .unwrap();
        assert_eq!(seen.kind, AtomKind::Transition);
        assert_eq!(seen.labels, ["public"]);

        // An atom that carries a label outside the writer's: its transition atom would
        // carry that label too, so the narrowed writer may not write it.
        let mixed =
            engram_client::remember(&writer, &[NewAtom::fact("z").labels(&["public", "secret"])])
                .await
                .unwrap()[0]
                .id;
        assert_code(
            engram_client::transition(&public_writer, &mixed, TransitionKind::Retract, "").await,
            ErrorCode::PermissionDenied,
        );
        // Nor supersede it: the same change of state, by a link.
        assert_code(
            engram_client::remember(
                &public_writer,
                &[NewAtom::fact("replacement")
                    .labels(&["public"])
                    .supersedes(mixed)],
            )
            .await,
            ErrorCode::PermissionDenied,
        );
    });
}
