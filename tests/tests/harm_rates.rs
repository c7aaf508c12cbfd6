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
/// checking that every other one was refused by a rate.
async fn burst(readers: &[world_reader::Client], calls: usize) -> usize {
    let answers = futures::future::join_all(
        (0..calls).map(|index| world_call(&readers[index % readers.len()])),
    )
    .await;
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
        let passed = burst(&readers, 12).await;
        assert!(
            (5..=7).contains(&passed),
            "{passed} of 12 calls passed a rate of 5"
        );
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
        let passed = burst(std::slice::from_ref(&faster), 10).await;
        assert!((2..=4).contains(&passed), "{passed} of 10 calls passed");
        // The holder's own reader is untouched.
        assert_eq!(burst(&[admin.reader("w").unwrap()], 10).await, 10);
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
