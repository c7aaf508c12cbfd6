//! Property: after an epoch advance, every capability derived from an older graft fails
//! with `staleEpoch`, whatever the derivation — attenuated online, saved as a token and
//! restored, the token narrowed offline and restored — for each kind of capability, on
//! a real node.

use engram_client::spawn::Held;
use engram_client::token::{self, Narrowing};
use engram_client::{ClientError, ErrorCode, Filter, NewAtom, Restriction};
use engram_tests::{TestNode, admin_with_world, run_local, session};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Clone, Copy, Debug)]
enum Step {
    /// `attenuate` on the node, narrowing to label "auth".
    Attenuate,
    /// `save`, then `Terminal.restore` on a new connection.
    SaveAndRestore,
    /// `save`, a block appended offline (label "auth"), then restore.
    NarrowOffline,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Reader,
    Writer,
    Observer,
    Signer,
}

fn narrowed() -> Restriction {
    Restriction {
        labels: vec!["auth".into()],
        ..Restriction::default()
    }
}

async fn derive(node: &TestNode, held: Held, step: Step) -> Result<Held, ClientError> {
    match step {
        Step::Attenuate => Ok(match held {
            Held::Reader(reader) => {
                Held::Reader(engram_client::attenuate_reader(&reader, &narrowed()).await?)
            }
            Held::Writer(writer) => {
                Held::Writer(engram_client::attenuate_writer(&writer, &narrowed()).await?)
            }
            Held::Observer(observer) => {
                Held::Observer(engram_client::attenuate_observer(&observer, &narrowed()).await?)
            }
            Held::Signer(signer) => {
                Held::Signer(engram_client::attenuate_signer(&signer, &["probe".into()]).await?)
            }
        }),
        Step::SaveAndRestore | Step::NarrowOffline => {
            let mut saved = token::save(&held).await?;
            if matches!(step, Step::NarrowOffline) {
                let narrowing = match held {
                    Held::Signer(_) => Narrowing {
                        domains: Some(["probe".to_owned()].into()),
                        ..Narrowing::default()
                    },
                    _ => Narrowing {
                        labels: Some(["auth".to_owned()].into()),
                        ..Narrowing::default()
                    },
                };
                saved = token::attenuate(&saved, &narrowing)?;
            }
            let connection = engram_client::connect(&node.tcp()).await?;
            Ok(connection.restore(&saved).await?.1)
        }
    }
}

/// One call through the capability; its error, if it failed.
async fn probe(held: &Held) -> Result<(), ClientError> {
    match held {
        Held::Reader(reader) => engram_client::generation(reader).await.map(drop),
        Held::Writer(writer) => {
            engram_client::remember(writer, &[NewAtom::fact("probe").labels(&["auth"])])
                .await
                .map(drop)
        }
        Held::Observer(observer) => {
            engram_client::watch::subscribe(observer, &Filter::default(), 0)
                .await
                .map(drop)
        }
        Held::Signer(signer) => engram_client::sign(signer, "probe", b"message")
            .await
            .map(drop),
    }
}

#[test]
fn every_capability_derived_from_an_older_graft_fails_with_stale_epoch() {
    let node = TestNode::start();
    run_local(async { admin_with_world(&node, "team/auth").await });
    let step = prop_oneof![
        Just(Step::Attenuate),
        Just(Step::SaveAndRestore),
        Just(Step::NarrowOffline)
    ];
    let kind = prop_oneof![
        Just(Kind::Reader),
        Just(Kind::Writer),
        Just(Kind::Observer),
        Just(Kind::Signer)
    ];
    let case = (kind, proptest::collection::vec(step, 0..4));
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let epochs = std::cell::Cell::new(1);
    runner
        .run(&case, |(kind, steps)| {
            let outcome = run_local(async {
                let admin = session(&node.tcp(), &node.admin_key()).await;
                let mut held = match kind {
                    Kind::Reader => Held::Reader(admin.reader("team/auth").unwrap()),
                    Kind::Writer => Held::Writer(admin.writer("team/auth").unwrap()),
                    Kind::Observer => Held::Observer(admin.observer("team/auth").unwrap()),
                    Kind::Signer => Held::Signer(admin.signer.clone()),
                };
                let mut derived = vec![held.clone()];
                for step in &steps {
                    held = derive(&node, held, *step).await.unwrap();
                    derived.push(held.clone());
                }
                // Each works before the advance...
                for held in &derived {
                    probe(held).await.unwrap();
                }
                engram_client::advance_epoch(&admin.admin().unwrap(), &[7; 32])
                    .await
                    .unwrap();
                // ...and none after it.
                let mut codes = Vec::new();
                for held in &derived {
                    codes.push(probe(held).await.err().and_then(|error| error.code()));
                }
                codes
            });
            epochs.set(epochs.get() + 1);
            for code in outcome {
                prop_assert_eq!(
                    code,
                    Some(ErrorCode::StaleEpoch),
                    "{:?} after {:?}",
                    kind,
                    steps
                );
            }
            Ok(())
        })
        .unwrap();
    println!(
        "{} epochs, each staling every derivation of a graft",
        epochs.get()
    );
}
