//! `engram export` and `engram import` through the real CLI and node: every field of
//! every atom travels, each imported atom is `derivedFrom` its original and links
//! between exported atoms follow them, a broken chain in the file is refused before it
//! is written, and an import stopped midway and run again writes each atom once.

use std::collections::HashMap;

use engram_client::engram_schema::engram_capnp::LinkKind;
use engram_client::{AtomView, NewAtom};
use engram_tests::{TestNode, admin_with_world, engram_cli, run_local};

fn cli(node: &TestNode, arguments: &[&str]) -> std::process::Output {
    engram_cli(node, &node.admin_key_path(), arguments)
}

#[track_caller]
fn succeeds(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `engram --json import copy FILE --batch 2`, which must succeed: its summary.
fn import_into_copy(node: &TestNode, file: &std::path::Path) -> serde_json::Value {
    let arguments = [
        "--json",
        "import",
        "copy",
        file.to_str().unwrap(),
        "--batch",
        "2",
    ];
    serde_json::from_str(&succeeds(cli(node, &arguments))).unwrap()
}

/// Every atom of `world`, in commit order.
async fn atoms_of(node: &TestNode, world: &str) -> Vec<AtomView> {
    let session = engram_tests::session(&node.tcp(), &node.admin_key()).await;
    let reader = session.reader(world).unwrap();
    let (atoms, _) = engram_client::replay(&reader, 0, 1000).await.unwrap();
    atoms
}

/// A world `source` with atoms of every shape: a vector, a payload, a valid time,
/// labels, a proposal, a constraint, and one atom superseding another.
fn populated(node: &TestNode) -> Vec<AtomView> {
    run_local(async {
        let admin = admin_with_world(node, "source").await;
        engram_client::create_world(&admin.admin().unwrap(), "copy")
            .await
            .unwrap();
        let writer = admin.writer("source").unwrap();
        let mut first = NewAtom::fact("the pool size is 10")
            .labels(&["db"])
            .vector(vec![0.6, 0.8]);
        first.payload = vec![0, 159, 255];
        first.importance = 0.9;
        let receipts = engram_client::remember(
            &writer,
            &[
                first,
                NewAtom::fact("deploys freeze on fridays").valid(1_000, 2_000),
                NewAtom::constraint("do not use requests", &["requests"]),
            ],
        )
        .await
        .unwrap();
        let mut proposal = NewAtom::fact("maybe cache the tokens");
        proposal.proposed = true;
        engram_client::remember(&writer, &[proposal]).await.unwrap();
        engram_client::remember(
            &writer,
            &[NewAtom::fact("the pool size is 20").supersedes(receipts[0].id)],
        )
        .await
        .unwrap();
        atoms_of(node, "source").await
    })
}

#[test]
fn an_export_imports_whole_with_every_field_and_its_links() {
    let node = TestNode::start();
    let originals = populated(&node);
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("source.jsonl");
    succeeds(cli(
        &node,
        &["export", "source", "-o", file.to_str().unwrap()],
    ));
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), originals.len());
    for (line, original) in lines.lines().zip(&originals) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["id"], original.id_hex());
        assert_eq!(value["prev"], hex::encode(original.prev));
        assert_eq!(value["seq"], original.seq);
    }
    // To stdout, the same lines.
    assert_eq!(succeeds(cli(&node, &["export", "source"])), lines);

    let summary = import_into_copy(&node, &file);
    assert_eq!(summary["written"], originals.len());
    let copies = run_local(atoms_of(&node, "copy"));
    assert_eq!(copies.len(), originals.len());
    let new_id: HashMap<[u8; 32], [u8; 32]> = copies
        .iter()
        .map(|copy| {
            let derived = copy
                .links
                .iter()
                .find(|link| link.kind == LinkKind::DerivedFrom)
                .expect("every import is derivedFrom its original");
            (derived.target, copy.id)
        })
        .collect();
    for (original, copy) in originals.iter().zip(&copies) {
        assert_eq!(new_id[&original.id], copy.id, "in the same order");
        assert_eq!(copy.text, original.text);
        assert_eq!(copy.kind, original.kind);
        assert_eq!(copy.labels, original.labels);
        assert_eq!(copy.importance, original.importance);
        assert_eq!(copy.confidence, original.confidence);
        assert_eq!(copy.payload, original.payload);
        assert_eq!(copy.vector, original.vector);
        assert_eq!(copy.valid_time, original.valid_time);
        assert_eq!(copy.forbids, original.forbids);
        assert_eq!(copy.state, original.state, "{}", original.text);
        // Links to exported atoms point at their copies.
        let carried: Vec<_> = original
            .links
            .iter()
            .map(|link| (link.kind, new_id[&link.target]))
            .collect();
        let kept: Vec<_> = copy
            .links
            .iter()
            .filter(|link| link.kind != LinkKind::DerivedFrom)
            .map(|link| (link.kind, link.target))
            .collect();
        assert_eq!(kept, carried);
    }
    succeeds(cli(&node, &["verify", "copy"]));
}

#[test]
fn a_broken_chain_is_refused_and_an_interrupted_import_resumes_once() {
    let node = TestNode::start();
    let originals = populated(&node);
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("source.jsonl");
    succeeds(cli(
        &node,
        &["export", "source", "-o", file.to_str().unwrap()],
    ));
    let whole = std::fs::read_to_string(&file).unwrap();

    // The fourth atom's prev altered: the chain breaks there; the batches before it
    // are written, and the import stops, naming the line.
    let broken = tamper_line(&whole, 3);
    let broken_file = directory.path().join("broken.jsonl");
    std::fs::write(&broken_file, broken).unwrap();
    let stopped = cli(
        &node,
        &[
            "import",
            "copy",
            broken_file.to_str().unwrap(),
            "--batch",
            "2",
        ],
    );
    assert_eq!(stopped.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        stderr.contains("line 4") && stderr.contains("chain is broken"),
        "{stderr}"
    );
    let partial = run_local(atoms_of(&node, "copy"));
    assert_eq!(
        partial.len(),
        2,
        "the batch before the broken line was written"
    );

    // Run again on the whole export: the first batch is answered, the rest written.
    let summary = import_into_copy(&node, &file);
    assert_eq!(summary["alreadyWritten"], 2);
    assert_eq!(summary["written"], originals.len() - 2);
    let copies = run_local(atoms_of(&node, "copy"));
    assert_eq!(copies.len(), originals.len(), "each atom once");
    succeeds(cli(&node, &["verify", "copy"]));
}

/// `export` with line `index`'s prev replaced by another hash.
fn tamper_line(export: &str, index: usize) -> String {
    let mut lines: Vec<String> = export.lines().map(str::to_owned).collect();
    let mut value: serde_json::Value = serde_json::from_str(&lines[index]).unwrap();
    value["prev"] = hex::encode([0xab; 32]).into();
    lines[index] = value.to_string();
    lines.join("\n") + "\n"
}

/// Large atoms make smaller batches: 2.4 MB of atoms import with the default `--batch`
/// into a node that takes messages of at most 1 MiB (one batch of them would not fit).
#[test]
fn large_atoms_import_in_batches_the_node_takes() {
    let node = TestNode::start_with(&["--message-bytes-max", "1048576"]);
    run_local(async {
        let admin = admin_with_world(&node, "source").await;
        engram_client::create_world(&admin.admin().unwrap(), "copy")
            .await
            .unwrap();
        let writer = admin.writer("source").unwrap();
        for round in 0..4 {
            let atoms: Vec<NewAtom> = (0..10)
                .map(|index| NewAtom::fact(format!("{round}/{index} {}", "word ".repeat(12_000))))
                .collect();
            engram_client::remember(&writer, &atoms).await.unwrap();
        }
    });
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("large.jsonl");
    succeeds(cli(
        &node,
        &["export", "source", "-o", file.to_str().unwrap()],
    ));
    let summary: serde_json::Value = serde_json::from_str(&succeeds(cli(
        &node,
        &["--json", "import", "copy", file.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(summary["written"], 40);
    assert_eq!(run_local(atoms_of(&node, "copy")).len(), 40);
    succeeds(cli(&node, &["verify", "copy"]));
}
