//! Rates: a grant or an attenuation bounds how fast a capability may be used, past it
//! `resourceExhausted`; logging in again or attenuating again never buys more.

use engram_client::engram_schema::engram_capnp::world_reader;
use engram_client::{ClientError, ErrorCode, NewAtom, Rate, Restriction};
use engram_tests::{TestNode, add_principal, admin_with_world, assert_code, run_local, session};

async fn world_call(reader: &world_reader::Client) -> Result<(), ClientError> {
    reader.world_request().send().promise.await?;
    Ok(())
}

/// Sends `calls` calls at once through `readers` in turn; returns how many went through,
/// checking that every other one was refused by a rate, and that no more went through
/// than a bucket of `calls_per_second` allows in the time the burst took (a connection
/// past a rate rests, so a burst's later calls may be read after the bucket refilled).
async fn burst(readers: &[world_reader::Client], calls: usize, calls_per_second: u32) -> usize {
    let started = std::time::Instant::now();
    let answers = futures::future::join_all(
        (0..calls).map(|index| world_call(&readers[index % readers.len()])),
    )
    .await;
    let refilled = (started.elapsed().as_secs_f64() * f64::from(calls_per_second)).ceil();
    let allowed = f64::from(calls_per_second) + refilled;
    let mut passed = 0;
    for answer in answers {
        match answer {
            Ok(()) => passed += 1,
            Err(error) => {
                assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
                assert!(error.to_string().contains("a second"), "{error}");
            }
        }
    }
    assert!(
        passed as f64 <= allowed,
        "{passed} calls passed a rate of {calls_per_second} in {:?}",
        started.elapsed()
    );
    passed
}

/// A restriction of rate only.
fn rated(calls_per_second: u32, atoms_per_second: u32) -> Restriction {
    Restriction {
        rate: Rate {
            calls_per_second,
            atoms_per_second,
        },
        ..Restriction::default()
    }
}

#[test]
fn a_grant_rate_holds_across_every_login_of_the_principal() {
    let node = TestNode::start();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "w")
            .await
            .unwrap();
        let key = add_principal(&admin, "agent", &["w=r@5"]).await;
        let listed = engram_client::list_principals(&admin.admin().unwrap())
            .await
            .unwrap();
        let agent = listed.iter().find(|principal| principal.name == "agent");
        assert_eq!(agent.unwrap().grants[0].rights(), "r@5/0");
        // Two logins on two connections share one bucket of 5 calls.
        let first = session(&node.tcp(), &key).await;
        let second = session(&node.unix(), &key).await;
        let readers = [first.reader("w").unwrap(), second.reader("w").unwrap()];
        let passed = burst(&readers, 12, 5).await;
        assert!((5..12).contains(&passed), "{passed} of 12 calls passed");
    });
}

#[test]
fn an_attenuated_rate_only_narrows() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let slow = engram_client::attenuate_reader(&admin.reader("w").unwrap(), &rated(3, 0))
            .await
            .unwrap();
        // Attenuating the slow reader again to a faster rate draws on the same bucket:
        // that call and the faster child's calls all count against the rate of 3.
        let faster = engram_client::attenuate_reader(&slow, &rated(1000, 0))
            .await
            .unwrap();
        let passed = burst(std::slice::from_ref(&faster), 10, 3).await;
        assert!((2..10).contains(&passed), "{passed} of 10 calls passed");
        // The holder's own reader is untouched.
        assert_eq!(burst(&[admin.reader("w").unwrap()], 10, 1000).await, 10);
    });
}

#[test]
fn an_atoms_rate_bounds_what_a_writer_writes() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let writer = engram_client::attenuate_writer(&admin.writer("w").unwrap(), &rated(0, 10))
            .await
            .unwrap();
        let batch = |count: usize| -> Vec<NewAtom> {
            (0..count)
                .map(|index| NewAtom::fact(format!("atom {index}")))
                .collect()
        };
        // More than a second's worth at once can never pass.
        let error = match engram_client::remember(&writer, &batch(20)).await {
            Ok(_) => panic!("a batch of 20 passed a rate of 10 atoms a second"),
            Err(error) => error,
        };
        assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted));
        assert!(error.to_string().contains("smaller batches"), "{error}");
        engram_client::remember(&writer, &batch(10)).await.unwrap();
        assert_code(
            engram_client::remember(&writer, &batch(5)).await,
            ErrorCode::ResourceExhausted,
        );
        // Nothing refused was written.
        let (atoms, _) = engram_client::replay(&admin.reader("w").unwrap(), 0, 100)
            .await
            .unwrap();
        assert_eq!(atoms.len(), 10);
    });
}

/// A client that keeps calling past its rate does not get an answer for every call as
/// fast as it can send them (which would keep the RPC thread busy refusing it): its
/// connection is not read until the rate allows a call again, while other connections
/// are served meanwhile.
#[test]
fn a_connection_past_its_rate_rests_and_others_are_served() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let key = add_principal(&admin, "agent", &["w=r@1"]).await;
        let agent = session(&node.tcp(), &key).await;
        let reader = agent.reader("w").unwrap();
        world_call(&reader).await.unwrap();
        assert_code(world_call(&reader).await, ErrorCode::ResourceExhausted);
        // The bucket refills in a second: the next call is read about then, and the
        // admin's calls on another connection are answered meanwhile.
        let refused_at = std::time::Instant::now();
        let rested = world_call(&reader);
        let admin_reader = admin.reader("w").unwrap();
        let others = async {
            for _ in 0..20 {
                world_call(&admin_reader).await.unwrap();
            }
        };
        futures::pin_mut!(rested);
        let rested = match futures::future::select(rested, Box::pin(others)).await {
            futures::future::Either::Right(((), rested)) => rested,
            futures::future::Either::Left(_) => {
                panic!("the rested connection was answered before the others")
            }
        };
        rested.await.unwrap();
        let waited = refused_at.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(500),
            "the call after a refusal was answered after {waited:?}, before the rate allowed it"
        );
    });
}

/// A read that must go on past what the RPC thread examines draws on the capability's
/// call rate for the entries it may examine; when the rate cannot pay, the answer is
/// the part read so far, with its cursor, and the cursor finds the rest.
#[test]
fn a_long_read_draws_on_the_rate_and_answers_in_part_when_it_cannot_pay() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let batch: Vec<NewAtom> = (0..600)
            .map(|index| NewAtom::fact(format!("filler {index}")))
            .collect();
        engram_client::remember(&admin.writer("w").unwrap(), &batch)
            .await
            .unwrap();
        let key = add_principal(&admin, "agent", &["w=r@50"]).await;
        let agent = session(&node.tcp(), &key).await;
        let reader = agent.reader("w").unwrap();
        let nothing_matches = engram_client::Filter {
            min_importance: 0.9,
            limit: 10,
            ..engram_client::Filter::default()
        };
        // The first long read is paid for (40 of the 50 calls): it examines all 600.
        let whole = engram_client::ask_scored(&reader, &nothing_matches)
            .await
            .unwrap();
        assert_eq!(whole.resume_before_commit, None, "{}", whole.warning);
        // The second cannot be: it stops where the RPC thread's part stopped.
        let cut = engram_client::ask_scored(&reader, &nothing_matches)
            .await
            .unwrap();
        let resume = cut.resume_before_commit.expect("a cursor");
        assert!(cut.warning.contains("rate"), "{}", cut.warning);
        assert!(cut.hits.is_empty());
        // Following the cursor (cheap calls) reaches the oldest atoms.
        let mut filter = nothing_matches.clone();
        filter.before_commit = resume;
        let rest = engram_client::ask_scored(&reader, &filter).await.unwrap();
        assert!(rest.resume_before_commit.is_none_or(|next| next < resume));
    });
}

/// A reader restored from `token` on a connection of its own.
async fn restored(node: &TestNode, token: &[u8]) -> world_reader::Client {
    let connection = engram_client::connect(&node.tcp()).await.unwrap();
    match connection.restore(token).await.unwrap().1 {
        engram_client::spawn::Held::Reader(reader) => reader,
        _ => panic!("expected a reader"),
    }
}

#[test]
fn a_rate_belongs_to_its_lineage_so_copies_saved_or_narrowed_offline_share_it() {
    use engram_client::spawn::Held;
    use engram_client::token::{self, Narrowing};
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        // Six capabilities narrowed from one reader to three calls a second, and two
        // restored from a token saved from one of them, each on a connection of its
        // own: one bucket of three between them all.
        let mut readers = Vec::new();
        for _ in 0..6 {
            readers.push(
                engram_client::attenuate_reader(&admin.reader("w").unwrap(), &rated(3, 0))
                    .await
                    .unwrap(),
            );
        }
        let saved = token::save(&Held::Reader(readers[0].clone()))
            .await
            .unwrap();
        for _ in 0..2 {
            readers.push(restored(&node, &saved).await);
        }
        // `burst` fails if more passed than one bucket of three allows.
        assert!(burst(&readers, 28, 3).await >= 1);

        // Six offline copies of one token, each narrowed to three calls a second, and a
        // seventh narrowed further from one of them: one bucket of three between them.
        let whole = token::save(&Held::Reader(admin.reader("w").unwrap()))
            .await
            .unwrap();
        let three = Narrowing {
            rate: Some((3, 0)),
            ..Narrowing::default()
        };
        let mut readers = Vec::new();
        let mut copies = Vec::new();
        for _ in 0..6 {
            let copy = token::attenuate(&whole, &three).unwrap();
            readers.push(restored(&node, &copy).await);
            copies.push(copy);
        }
        let two = Narrowing {
            rate: Some((2, 0)),
            ..Narrowing::default()
        };
        readers.push(restored(&node, &token::attenuate(&copies[0], &two).unwrap()).await);
        assert!(burst(&readers, 28, 3).await >= 1);
    });
}
