//! Bad input gets its stable code and changes nothing: each case is sent to a real node,
//! and afterwards the world holds exactly what it held before.

use engram_client::engram_schema::engram_capnp::{atom_content, world_writer};
use engram_client::{ClientError, ErrorCode, Filter, Grant, NewAtom, Session};
use engram_tests::{TestNode, assert_code, run_local, session};

/// Sends `remember` with content filled by `NewAtom` and then adjusted by `adjust`.
async fn remember_raw(
    writer: &world_writer::Client,
    atom: &NewAtom,
    adjust: impl FnOnce(atom_content::Builder<'_>),
) -> Result<(), ClientError> {
    let mut request = writer.remember_request();
    atom.fill(request.get().init_atom());
    adjust(request.get().get_atom().unwrap());
    request.send().promise.await?;
    Ok(())
}

async fn world_state(admin: &Session) -> (u64, usize) {
    let worlds = engram_client::list_worlds(&admin.admin().unwrap())
        .await
        .unwrap();
    let atoms = worlds.iter().find(|world| world.name == "w").unwrap().atoms;
    let (replayed, _) = engram_client::replay(&admin.reader("w").unwrap(), 0, 1000)
        .await
        .unwrap();
    (atoms, replayed.len())
}

#[test]
fn each_bad_input_gets_its_code_and_changes_nothing() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let control = admin.admin().unwrap();
        engram_client::create_world(&control, "w").await.unwrap();
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let writer = admin.writer("w").unwrap();
        let reader = admin.reader("w").unwrap();
        let kept = engram_client::remember(&writer, &[NewAtom::fact("kept")])
            .await
            .unwrap();
        let before = world_state(&admin).await;

        let fact = NewAtom::fact("text");
        let invalid_atoms: Vec<(&str, NewAtom)> = vec![
            ("importance above 1", fact.clone().importance(1.5)),
            ("importance below 0", fact.clone().importance(-0.1)),
            ("importance NaN", fact.clone().importance(f32::NAN)),
            (
                "confidence above 1",
                NewAtom {
                    confidence: 2.0,
                    ..fact.clone()
                },
            ),
            ("empty text", NewAtom::fact("")),
            ("oversized text", NewAtom::fact("x".repeat(64 * 1024 + 1))),
            ("repeated label", fact.clone().labels(&["a", "a"])),
            ("empty label", fact.clone().labels(&[""])),
        ];
        for (case, atom) in &invalid_atoms {
            let result = engram_client::remember(&writer, std::slice::from_ref(atom)).await;
            match result {
                Err(error) => assert_eq!(
                    error.code(),
                    Some(ErrorCode::InvalidArgument),
                    "{case}: {error}"
                ),
                Ok(_) => panic!("{case}: accepted"),
            }
        }
        // One bad atom in a batch rejects the whole batch.
        assert_code(
            engram_client::remember(
                &writer,
                &[NewAtom::fact("good"), fact.clone().importance(7.0)],
            )
            .await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            engram_client::remember(&writer, &[]).await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            remember_raw(&writer, &fact, |builder| {
                let mut vector = builder.init_vector(2);
                vector.set(0, 1.0);
                vector.set(1, f32::NAN);
            })
            .await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            remember_raw(&writer, &fact, |builder| {
                builder.init_links(1).get(0).set_target(&[1, 2, 3]);
            })
            .await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            remember_raw(&writer, &fact, |builder| {
                let mut interval = builder.init_valid_time().init_interval();
                interval.set_from_unix_ms(10);
                interval.set_until_unix_ms(5);
            })
            .await,
            ErrorCode::InvalidArgument,
        );

        // Reads.
        assert_code(
            engram_client::get(&reader, &[1, 2, 3]).await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            engram_client::get(&reader, &[9; 32]).await,
            ErrorCode::NotFound,
        );
        engram_client::get(&reader, &kept[0].id).await.unwrap();
        for filter in [
            Filter {
                limit: 0,
                ..Filter::default()
            },
            Filter {
                limit: 100_000,
                ..Filter::default()
            },
            Filter {
                min_importance: f32::NAN,
                ..Filter::default()
            },
            Filter {
                min_importance: 0.9,
                max_importance: 0.1,
                ..Filter::default()
            },
            Filter {
                writers: vec![[0; 32]; 65],
                ..Filter::default()
            },
        ] {
            assert_code(
                engram_client::ask(&reader, &filter).await,
                ErrorCode::InvalidArgument,
            );
        }
        assert_code(
            engram_client::replay(&reader, 0, 0).await,
            ErrorCode::InvalidArgument,
        );

        // Administration.
        assert_code(
            engram_client::create_world(&control, "Not A Name").await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            engram_client::create_world(&control, "w").await,
            ErrorCode::Conflict,
        );
        assert_code(
            engram_client::set_world_archived(&control, "nowhere", true).await,
            ErrorCode::NotFound,
        );
        assert_code(
            engram_client::add_principal(
                &control,
                "ghost",
                engram_client::keyfile::generate()
                    .unwrap()
                    .verifying_key()
                    .as_bytes(),
                false,
                &[Grant::parse("nowhere=r").unwrap()],
            )
            .await,
            ErrorCode::NotFound,
        );
        assert_code(
            engram_client::add_principal(&control, "short", &[7; 5], false, &[]).await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            engram_client::set_grants(&control, "nobody", &[]).await,
            ErrorCode::NotFound,
        );
        let mut request = control.advance_epoch_request();
        request.get().set_head(&[1, 2, 3]);
        assert_code(
            request.send().promise.await.map_err(ClientError::from),
            ErrorCode::InvalidArgument,
        );

        // An archived world refuses writes until it is resumed.
        engram_client::set_world_archived(&control, "w", true)
            .await
            .unwrap();
        assert_code(
            engram_client::remember(&writer, &[NewAtom::fact("archived")]).await,
            ErrorCode::Conflict,
        );
        engram_client::set_world_archived(&control, "w", false)
            .await
            .unwrap();

        assert_eq!(world_state(&admin).await, before);
        let epoch = engram_client::current_epoch(&control).await.unwrap();
        assert_eq!(epoch.number, 1);
        let principals = engram_client::list_principals(&control).await.unwrap();
        assert_eq!(principals.len(), 1);
    });
}
