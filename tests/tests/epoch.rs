//! Advancing the epoch revokes every capability issued before it — readers, writers,
//! attenuated ones, ones handed to a third party over another connection, the signer and
//! the admin capability — with `staleEpoch`; grafting again works.

use engram_client::engram_schema::engram_capnp::{world_reader, world_writer};
use engram_client::{ErrorCode, NewAtom, Restriction};
use engram_tests::{TestNode, add_principal, assert_code, hand_over, run_local, session};

#[test]
fn advance_revokes_every_older_capability_and_regraft_works() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "shared")
            .await
            .unwrap();
        let agent_key = add_principal(&admin, "agent", &["shared=rwo"]).await;
        // The agent is on the Unix socket; the admin advances over TCP.
        let agent = session(&node.unix(), &agent_key).await;
        let reader = agent.reader("shared").unwrap();
        let writer = agent.writer("shared").unwrap();
        let narrowed = engram_client::attenuate_writer(
            &writer,
            &Restriction {
                labels: vec!["ops".into()],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        let handed_writer: world_writer::Client = hand_over(writer.clone().client);
        let handed_reader: world_reader::Client = hand_over(reader.clone().client);
        let receipts = engram_client::remember(&handed_writer, &[NewAtom::fact("before")])
            .await
            .unwrap();
        engram_client::remember(&narrowed, &[NewAtom::fact("ops note").labels(&["ops"])])
            .await
            .unwrap();
        engram_client::get(&handed_reader, &receipts[0].id)
            .await
            .unwrap();

        let epoch = engram_client::advance_epoch(&admin.admin().unwrap(), &[0xab; 32])
            .await
            .unwrap();
        assert_eq!((epoch.number, epoch.head), (2, [0xab; 32]));

        let atom = [NewAtom::fact("after")];
        assert_code(
            engram_client::remember(&writer, &atom).await,
            ErrorCode::StaleEpoch,
        );
        assert_code(
            engram_client::remember(&narrowed, &[NewAtom::fact("x").labels(&["ops"])]).await,
            ErrorCode::StaleEpoch,
        );
        assert_code(
            engram_client::remember(&handed_writer, &atom).await,
            ErrorCode::StaleEpoch,
        );
        assert_code(
            engram_client::get(&reader, &receipts[0].id).await,
            ErrorCode::StaleEpoch,
        );
        assert_code(
            engram_client::get(&handed_reader, &receipts[0].id).await,
            ErrorCode::StaleEpoch,
        );
        assert_code(
            engram_client::replay(&reader, 0, 10).await,
            ErrorCode::StaleEpoch,
        );
        assert_code(engram_client::verify(&reader).await, ErrorCode::StaleEpoch);
        assert_code(
            engram_client::attenuate_reader(&reader, &Restriction::default())
                .await
                .map(|_| ()),
            ErrorCode::StaleEpoch,
        );
        assert_code(
            engram_client::sign(&agent.signer, "ci", b"m").await,
            ErrorCode::StaleEpoch,
        );
        assert_code(
            engram_client::list_worlds(&admin.admin().unwrap()).await,
            ErrorCode::StaleEpoch,
        );

        // Nothing written after the advance went in; a re-graft works under epoch 2.
        let agent = session(&node.unix(), &agent_key).await;
        assert_eq!(agent.epoch.number, 2);
        let (atoms, _) = engram_client::replay(&agent.reader("shared").unwrap(), 0, 10)
            .await
            .unwrap();
        let texts: Vec<&str> = atoms.iter().map(|atom| atom.text.as_str()).collect();
        assert_eq!(texts, vec!["before", "ops note"]);
        engram_client::remember(&agent.writer("shared").unwrap(), &atom)
            .await
            .unwrap();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let current = engram_client::current_epoch(&admin.admin().unwrap())
            .await
            .unwrap();
        assert_eq!(current.number, 2);
    });
}

#[test]
fn the_epoch_survives_a_restart() {
    let mut node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::advance_epoch(&admin.admin().unwrap(), &[1; 32])
            .await
            .unwrap();
    });
    node.stop();
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        assert_eq!(admin.epoch.number, 2);
        assert_eq!(admin.epoch.head, [1; 32]);
    });
}
