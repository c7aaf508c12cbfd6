//! Fuzzing every request through a real RPC connection: each case is one call to a
//! method of a live capability (Terminal, Membrane, WorldReader, WorldWriter, Observer,
//! Signer, Admin), whose parameters are a Cap'n Proto message generated from random
//! shapes — structs of any size with random data, texts and data that are not UTF-8 or
//! too long, lists of every element size, nested structs and struct lists — in place
//! of the method's parameter struct, so each field is read as whatever type the shape
//! put there. (Messages that are not well-formed Cap'n Proto never reach a handler:
//! the client library refuses to send them and the node's reader to read them.) Every call must be
//! answered (within 10 s) with a result or an error carrying a stable code other than
//! `internal`, and the node must serve an ordinary client afterwards.
//!
//! `ENGRAM_FUZZ_CALLS` sets how many calls (default 4,000) and `ENGRAM_FUZZ_SEED` the
//! generator's seed (default 1, so that CI runs the same calls every time); a failure
//! names the call. The README gives a long run.

use std::time::{Duration, Instant};

use capnp::traits::HasTypeId;
use engram_client::engram_schema::engram_capnp::{
    admin, membrane, observer, signer, terminal, world_reader, world_writer,
};
use engram_client::{ClientError, ErrorCode, NewAtom, connect};
use engram_tests::{TestNode, admin_with_world, run_local};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A random piece of a Cap'n Proto message.
#[derive(Clone, Debug)]
enum Shape {
    Null,
    Struct(Vec<u64>, Vec<Shape>),
    /// A list of 1-, 2-, 4- or 8-byte elements (size code 2 to 5), or bits (1).
    Bytes(u8, Vec<u8>),
    /// A list of structs (composite), each with these data words and pointers.
    Structs(Vec<(Vec<u64>, Vec<Shape>)>),
}

fn shape() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        2 => Just(Shape::Null),
        3 => (
            prop_oneof![Just(1u8), Just(2), Just(3), Just(4), Just(5)],
            prop::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(size, bytes)| Shape::Bytes(size, bytes)),
        // Text-like: bytes ending in NUL, sometimes not UTF-8, sometimes long.
        3 => prop_oneof![
            6 => "[a-z/ ]{0,40}".prop_map(|text| text.into_bytes()),
            3 => prop::collection::vec(any::<u8>(), 0..200),
            1 => prop::collection::vec(any::<u8>(), 0..70_000),
        ]
        .prop_map(|mut bytes| {
            bytes.push(0);
            Shape::Bytes(2, bytes)
        }),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            (
                prop::collection::vec(any::<u64>(), 0..6),
                prop::collection::vec(inner.clone(), 0..6)
            )
                .prop_map(|(data, pointers)| Shape::Struct(data, pointers)),
            prop::collection::vec(
                (
                    prop::collection::vec(any::<u64>(), 0..3),
                    prop::collection::vec(inner, 0..3)
                ),
                0..5
            )
            .prop_map(Shape::Structs),
        ]
    })
}

/// Writes `shape` at the end of `words`, pointed to by the pointer word at `at`.
fn encode(shape: &Shape, words: &mut Vec<u64>, at: usize) {
    let offset = |target: usize| ((target as i64 - at as i64 - 1) as u64 & 0x3FFF_FFFF) << 2;
    match shape {
        Shape::Null => words[at] = 0,
        Shape::Struct(data, pointers) => {
            let start = words.len();
            words.extend_from_slice(data);
            words.extend(std::iter::repeat_n(0, pointers.len()));
            words[at] = offset(start) | (data.len() as u64) << 32 | (pointers.len() as u64) << 48;
            for (index, pointer) in pointers.iter().enumerate() {
                encode(pointer, words, start + data.len() + index);
            }
        }
        Shape::Bytes(size, bytes) => {
            let start = words.len();
            let (count, length) = match size {
                1 => (bytes.len() * 8, bytes.len()),
                2 => (bytes.len(), bytes.len()),
                3 => (bytes.len() / 2, bytes.len() / 2 * 2),
                4 => (bytes.len() / 4, bytes.len() / 4 * 4),
                _ => (bytes.len() / 8, bytes.len() / 8 * 8),
            };
            for chunk in bytes[..length].chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                words.push(u64::from_le_bytes(word));
            }
            words[at] = offset(start) | 1 | u64::from(*size) << 32 | (count as u64) << 35;
        }
        Shape::Structs(elements) => {
            let data = elements
                .iter()
                .map(|(data, _)| data.len())
                .max()
                .unwrap_or(0);
            let pointers = elements.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
            let tag = words.len();
            words
                .push((elements.len() as u64) << 2 | (data as u64) << 32 | (pointers as u64) << 48);
            let first = words.len();
            words.extend(std::iter::repeat_n(0, elements.len() * (data + pointers)));
            words[at] =
                offset(tag) | 1 | 7 << 32 | ((elements.len() * (data + pointers)) as u64) << 35;
            for (index, (element_data, element_pointers)) in elements.iter().enumerate() {
                let base = first + index * (data + pointers);
                words[base..base + element_data.len()].copy_from_slice(element_data);
                for (slot, pointer) in element_pointers.iter().enumerate() {
                    encode(pointer, words, base + data + slot);
                }
            }
        }
    }
}

/// Calls the fuzzer once found answered without a code, kept as (target, method,
/// parameters): a parameter struct where a null or a list was (Observer.subscribe with
/// no sink; a params pointer that is not a struct), and `check`'s labels as a list of
/// structs and of bytes rather than texts.
fn regressions() -> Vec<(usize, u16, Shape)> {
    let words = |count: usize| (0..count as u64).map(|word| word * 0x0101).collect();
    vec![
        (4, 0, Shape::Struct(vec![], vec![Shape::Null, Shape::Null])),
        (2, 10, Shape::Structs(vec![(vec![], vec![])])),
        (
            2,
            10,
            Shape::Struct(
                words(3),
                vec![
                    Shape::Bytes(2, b"  / \0".to_vec()),
                    Shape::Structs(vec![(words(2), vec![Shape::Bytes(1, vec![7; 66])])]),
                ],
            ),
        ),
        (
            2,
            10,
            Shape::Struct(
                vec![],
                vec![
                    Shape::Bytes(2, b"plan\0".to_vec()),
                    Shape::Bytes(5, vec![1; 16]),
                ],
            ),
        ),
    ]
}

/// The methods of each interface the fuzzer calls: (interface, type id, methods).
fn targets() -> Vec<(&'static str, u64, u16)> {
    vec![
        ("Terminal", terminal::Client::TYPE_ID, 3),
        ("Membrane", membrane::Client::TYPE_ID, 2),
        ("WorldReader", world_reader::Client::TYPE_ID, 13),
        ("WorldWriter", world_writer::Client::TYPE_ID, 5),
        ("Observer", observer::Client::TYPE_ID, 3),
        ("Signer", signer::Client::TYPE_ID, 4),
        ("Admin", admin::Client::TYPE_ID, 13),
    ]
}

#[test]
fn every_request_answers_a_crafted_message_with_a_code() {
    let calls: usize = std::env::var("ENGRAM_FUZZ_CALLS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(4_000);
    // Logins are not rate-limited here, so that the fuzzer may try as many as it likes.
    let node = TestNode::start_with(&["--login-attempts-per-minute", "0"]);
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let connection = connect(&node.tcp()).await.unwrap();
        let membrane = connection.login(&node.admin_key()).await.unwrap().client;
        let mut session = admin;
        let seed: u64 = std::env::var("ENGRAM_FUZZ_SEED")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(1);
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
        );
        // Mostly a struct at the root, as parameters are; sometimes anything.
        let parameters = prop_oneof![
            9 => (
                prop::collection::vec(any::<u64>(), 0..6),
                prop::collection::vec(shape(), 0..6)
            )
                .prop_map(|(data, pointers)| Shape::Struct(data, pointers)),
            1 => shape(),
        ];
        let strategy = (0..targets().len(), any::<u16>(), parameters);
        let mut answered: std::collections::BTreeMap<String, usize> = Default::default();
        let mut sent = 0;
        let started = Instant::now();
        // What the fuzzer found once, first; then the generated calls.
        let mut cases = regressions().into_iter();
        for _ in 0..calls {
            let (target, method, params) = match cases.next() {
                Some(case) => case,
                None => strategy.new_tree(&mut runner).unwrap().current(),
            };
            let (name, interface, methods) = targets()[target];
            let method = method % methods;
            let mut words = vec![0u64];
            encode(&params, &mut words, 0);
            let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_le_bytes()).collect();
            let segments: [&[u8]; 1] = [&bytes];
            let message = capnp::message::Reader::new(
                capnp::message::SegmentArray::new(&segments),
                capnp::message::ReaderOptions::new(),
            );
            let capability: capnp::capability::Client = match name {
                "Terminal" => connection.terminal().clone().client,
                "Membrane" => membrane.clone().client,
                "WorldReader" => session.reader("w").unwrap().client,
                "WorldWriter" => session.writer("w").unwrap().client,
                "Observer" => session.observer("w").unwrap().client,
                "Signer" => session.signer.clone().client,
                _ => session.admin().unwrap().client,
            };
            let mut request = capability
                .new_call::<capnp::any_pointer::Owned, capnp::any_pointer::Owned>(
                    interface, method, None,
                );
            let Ok(root) = message.get_root::<capnp::any_pointer::Reader>() else {
                *answered
                    .entry("not a message (refused by the client library)".into())
                    .or_default() += 1;
                continue;
            };
            if request.get().set_as(root).is_err() {
                *answered
                    .entry("not a message (refused by the client library)".into())
                    .or_default() += 1;
                continue;
            }
            sent += 1;
            let answer = tokio::time::timeout(Duration::from_secs(10), request.send().promise)
                .await
                .unwrap_or_else(|_| panic!("{name} method {method} did not answer {params:?}"));
            let outcome = match answer {
                Ok(_) => "answered".to_owned(),
                Err(error) => match ClientError::from(error) {
                    ClientError::Node { code, message } => {
                        assert_ne!(
                            code,
                            ErrorCode::Internal,
                            "{name} method {method} answered internal ({message}) to {params:?}"
                        );
                        if code == ErrorCode::StaleEpoch {
                            // Some crafted call advanced the epoch: graft again.
                            session = membrane_graft(&membrane).await;
                        }
                        format!("{code}")
                    }
                    other => panic!(
                        "{name} method {method} failed without a code ({other}) on {params:?}"
                    ),
                },
            };
            *answered.entry(outcome).or_default() += 1;
        }
        println!(
            "seed {seed}: {calls} cases, {sent} calls sent in {:.1} s: {answered:?}",
            started.elapsed().as_secs_f64()
        );
        assert!(sent * 2 > calls, "most crafted messages reach the node");
        // The node still serves an ordinary client.
        let admin = admin_with_world(&node, "after").await;
        let receipts = engram_client::remember(
            &admin.writer("after").unwrap(),
            &[NewAtom::fact("still here")],
        )
        .await
        .unwrap();
        assert_eq!(receipts[0].seq, 1);
    });
}

async fn membrane_graft(membrane: &membrane::Client) -> engram_client::Session {
    engram_client::Membrane {
        client: membrane.clone(),
    }
    .graft()
    .await
    .unwrap()
}
