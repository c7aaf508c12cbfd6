//! Valid time: `ask` keeps the atoms claimed to hold in the world at an instant, apart
//! from when the node recorded them, in structured, text and similarity asks alike, from
//! the Rust client and the CLI.

use std::time::Duration;

use engram_client::{Filter, NewAtom, ValidTime};
use engram_tests::{TestNode, admin_with_world, ask_when_indexed, engram_cli, run_local};

const MARCH: i64 = 1_772_496_000_000; // 2026-03-03T00:00:00Z
const APRIL: i64 = 1_775_174_400_000; // 2026-04-03T00:00:00Z
const MAY: i64 = 1_777_766_400_000; // 2026-05-03T00:00:00Z

/// The texts of the answer once the indexes caught up, so that the filter is applied
/// inside the indexed search and not only to atoms compared exactly.
async fn indexed_texts(
    reader: &engram_client::engram_schema::engram_capnp::world_reader::Client,
    filter: &Filter,
) -> Vec<String> {
    let answer = ask_when_indexed(reader, filter, Duration::from_secs(30)).await;
    answer.hits.into_iter().map(|hit| hit.atom.text).collect()
}

#[test]
fn ask_keeps_what_holds_at_an_instant() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "limits").await;
        let atoms = [
            NewAtom::fact("rate limit 100 per second")
                .labels(&["rate"])
                .vector(vec![1.0, 0.0])
                .valid(MARCH, APRIL),
            NewAtom::fact("rate limit 500 per second")
                .labels(&["rate"])
                .vector(vec![0.9, 0.1])
                .valid(APRIL, 0),
            // No claim about when it holds: never kept by a valid-time filter.
            NewAtom::fact("rate limit matters")
                .labels(&["rate"])
                .vector(vec![1.0, 0.1]),
        ];
        engram_client::remember(&admin.writer("limits").unwrap(), &atoms)
            .await
            .unwrap();
        let reader = admin.reader("limits").unwrap();
        let at = |instant: i64| Filter {
            labels: vec!["rate".into()],
            valid_at: Some(instant),
            ..Filter::default()
        };
        // Structured: newest first, filtered.
        let texts = |atoms: Vec<engram_client::AtomView>| -> Vec<String> {
            atoms.into_iter().map(|atom| atom.text).collect()
        };
        assert_eq!(
            texts(engram_client::ask(&reader, &at(MARCH + 1)).await.unwrap()),
            ["rate limit 100 per second"]
        );
        // The end of an interval is excluded; an open end holds for ever.
        let later = engram_client::ask(&reader, &at(APRIL)).await.unwrap();
        assert_eq!(texts(later.clone()), ["rate limit 500 per second"]);
        assert_eq!(
            later[0].valid_time,
            Some(ValidTime {
                from_unix_ms: APRIL,
                until_unix_ms: 0
            })
        );
        assert!(
            engram_client::ask(&reader, &at(MARCH - 1))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            engram_client::ask(&reader, &Filter::default())
                .await
                .unwrap()
                .len(),
            3
        );
        // Similarity and text searches apply it inside the index.
        let similar = Filter {
            vector: vec![1.0, 0.0],
            ..at(MAY)
        };
        assert_eq!(
            indexed_texts(&reader, &similar).await,
            ["rate limit 500 per second"]
        );
        let words = Filter {
            text: "rate limit".into(),
            ..at(MARCH + 1)
        };
        assert_eq!(
            indexed_texts(&reader, &words).await,
            ["rate limit 100 per second"]
        );
    });
}

#[test]
fn the_cli_takes_rfc_3339_times_and_unix_milliseconds() {
    let node = TestNode::start();
    let run = |arguments: &[&str]| engram_cli(&node, &node.admin_key_path(), arguments);
    assert!(run(&["world", "create", "limits"]).status.success());
    let remembered = run(&[
        "remember",
        "limits",
        "rate limit 100 per second",
        "--valid-from",
        "2026-03-03T00:00:00Z",
        "--valid-until",
        &APRIL.to_string(),
    ]);
    assert!(remembered.status.success(), "{remembered:?}");
    let asked = run(&[
        "--json",
        "ask",
        "limits",
        "--valid-at",
        "2026-03-10T12:00:00Z",
    ]);
    assert!(asked.status.success(), "{asked:?}");
    let hits: serde_json::Value = serde_json::from_slice(&asked.stdout).unwrap();
    assert_eq!(hits[0]["validTime"]["fromUnixMs"], MARCH);
    assert_eq!(hits[0]["validTime"]["untilUnixMs"], APRIL);
    let none = run(&[
        "--json",
        "ask",
        "limits",
        "--valid-at",
        "2026-05-03T00:00:00Z",
    ]);
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "[]");
    // JSON lines take the same two forms.
    let scratch = tempfile::tempdir().unwrap();
    let batch = scratch.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        format!(
            "{{\"text\": \"rate limit 500 per second\", \"validFrom\": {APRIL}}}\n\
             {{\"text\": \"burst 50\", \"validFrom\": \"2026-04-03T00:00:00Z\", \
             \"validUntil\": \"2026-06-01T00:00:00Z\"}}\n"
        ),
    )
    .unwrap();
    let batched = run(&["remember", "limits", "--batch", batch.to_str().unwrap()]);
    assert!(batched.status.success(), "{batched:?}");
    let may = run(&["--json", "ask", "limits", "--valid-at", &MAY.to_string()]);
    let hits: serde_json::Value = serde_json::from_slice(&may.stdout).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 2);
    let bad = run(&["ask", "limits", "--valid-at", "the third of March"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}
