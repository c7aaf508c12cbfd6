//! The `engram` CLI against a real node: the README's tour, `--json` output, and the
//! documented exit codes (0 ok, 1 refused by the node, 2 usage, 3 cannot connect or log
//! in, 4 verification failed — the last is in tamper.rs).

use std::path::Path;
use std::process::Command;

use engram_tests::{TestNode, binary, engram_cli};
use serde_json::Value;

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn engram(node: &TestNode, key: &Path, arguments: &[&str]) -> Outcome {
    let output = engram_cli(node, key, arguments);
    Outcome {
        code: output.status.code().expect("engram exited"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 output"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 errors"),
    }
}

#[track_caller]
fn ok(outcome: Outcome) -> String {
    assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
    outcome.stdout
}

#[track_caller]
fn json(outcome: Outcome) -> Value {
    serde_json::from_str(&ok(outcome)).expect("JSON output")
}

#[test]
fn the_tour_works_and_prints_json_on_request() {
    let node = TestNode::start();
    let admin = node.admin_key_path();
    let scratch = tempfile::tempdir().unwrap();
    let run = |arguments: &[&str]| engram(&node, &admin, arguments);

    assert!(ok(run(&["world", "create", "team/auth"])).contains("team/auth  active"));
    let agent_key = scratch.path().join("agent.key");
    let public_key = ok(run(&["keygen", agent_key.to_str().unwrap()]));
    let public_key = public_key.trim();
    assert_eq!(public_key.len(), 64);
    let added = json(run(&[
        "--json",
        "principal",
        "add",
        "agent",
        "--public-key",
        public_key,
        "--grant",
        "team/auth=rwo",
    ]));
    assert_eq!(added["grants"][0]["rights"], "rwo");

    let remembered = json(run(&[
        "--json",
        "remember",
        "team/auth",
        "tokens expire after one hour",
        "--kind",
        "fact",
        "--label",
        "auth",
        "--importance",
        "0.8",
    ]));
    let id = remembered[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(remembered[0]["commit"], 1);

    let batch = scratch.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        "{\"text\": \"use argon2\", \"kind\": \"decision\", \"labels\": [\"auth\"]}\n\n{\"text\": \"an agent's note\"}\n",
    )
    .unwrap();
    let batch_receipts = json(engram(
        &node,
        &agent_key,
        &[
            "--json",
            "remember",
            "team/auth",
            "--batch",
            batch.to_str().unwrap(),
        ],
    ));
    assert_eq!(batch_receipts.as_array().unwrap().len(), 2);

    let atom = json(run(&["--json", "get", "team/auth", &id]));
    assert_eq!(atom["text"], "tokens expire after one hour");
    assert_eq!(atom["kind"], "fact");
    assert!(ok(run(&["get", "team/auth", &id])).contains("tokens expire after one hour"));

    let decisions = json(run(&["--json", "ask", "team/auth", "--kind", "decision"]));
    assert_eq!(decisions[0]["text"], "use argon2");
    let by_agent = json(run(&[
        "--json",
        "ask",
        "team/auth",
        "--writer",
        public_key,
        "--limit",
        "1",
    ]));
    assert_eq!(by_agent[0]["text"], "an agent's note");

    let explained = json(run(&[
        "--json",
        "ask",
        "team/auth",
        "--kind",
        "decision",
        "--explain",
    ]));
    assert_eq!(explained[0]["explanation"], "newest first: rank 1");

    let replay = json(run(&["--json", "replay", "team/auth", "--from", "1"]));
    let commits: Vec<u64> = replay["atoms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|atom| atom["commit"].as_u64().unwrap())
        .collect();
    assert_eq!(commits, vec![2, 3]);
    assert_eq!(replay["nextCommit"], 3);

    let heads = json(run(&["--json", "heads", "team/auth"]));
    assert_eq!(heads.as_array().unwrap().len(), 2);
    let generation = json(run(&["--json", "generation", "team/auth"]));
    assert_eq!(generation["last_commit"], 3);
    assert_eq!(generation["atoms"], 3);
    assert!(
        ok(run(&["generation", "team/auth"]))
            .starts_with("world team/auth: last commit 3, 3 atoms")
    );
    assert!(ok(run(&["verify", "team/auth"])).starts_with("ok: 2 chains, 3 entries"));

    let whoami = json(engram(&node, &agent_key, &["--json", "whoami"]));
    assert_eq!(whoami["principal"], "agent");
    assert_eq!(whoami["worlds"][0]["rights"], "rwo");

    // Similarity from the command line.
    assert!(
        ok(run(&[
            "world",
            "create",
            "vectors",
            "--vector-dimension",
            "3"
        ]))
        .contains("vectors  active  0 atoms  vectors of 3")
    );
    for (text, vector) in [("north", "0,1,0"), ("east", "1,0,0"), ("down", "0,0,-1")] {
        ok(run(&["remember", "vectors", text, "--vector", vector]));
    }
    let nearest = json(run(&[
        "--json",
        "ask",
        "vectors",
        "--vector",
        "0.1,-0.2,-0.9",
        "--limit",
        "1",
    ]));
    assert_eq!(nearest[0]["text"], "down");
    assert!(nearest[0]["similarity"].as_f64().unwrap() > 0.9);

    assert_eq!(json(run(&["--json", "epoch", "show"]))["number"], 1);
    let head = "ab".repeat(32);
    let advanced = json(run(&["--json", "epoch", "advance", "--head", &head]));
    assert_eq!(advanced["number"], 2);
    assert_eq!(advanced["head"], head.as_str());
    assert!(ok(run(&["epoch", "show"])).starts_with("epoch 2"));
}

#[test]
fn exit_codes_follow_the_documentation() {
    let node = TestNode::start();
    let admin = node.admin_key_path();
    let scratch = tempfile::tempdir().unwrap();
    let stranger = scratch.path().join("stranger.key");
    assert_eq!(
        engram(&node, &admin, &["keygen", stranger.to_str().unwrap()]).code,
        0
    );
    let cases: Vec<(Vec<&str>, &Path, i32, &str)> = vec![
        (
            vec!["world", "create", "Bad Name"],
            &admin,
            1,
            "engram: invalidArgument: ",
        ),
        (
            vec!["world", "archive", "nowhere"],
            &admin,
            1,
            "engram: notFound: ",
        ),
        (vec!["remember", "nowhere", "text"], &admin, 1, "engram: "),
        (vec!["nonsense"], &admin, 2, "unrecognized subcommand"),
        (vec!["get", "w", "not-hex"], &admin, 2, "64 hex digits"),
        (
            vec!["remember", "w", "x", "--kind", "rumour"],
            &admin,
            2,
            "unknown kind",
        ),
        (vec!["whoami"], &stranger, 3, "engram: unauthenticated: "),
        (
            vec!["whoami"],
            Path::new("/nonexistent/key"),
            3,
            "/nonexistent/key",
        ),
    ];
    for (arguments, key, code, message) in cases {
        let outcome = engram(&node, key, &arguments);
        assert_eq!(outcome.code, code, "{arguments:?}: {}", outcome.stderr);
        assert!(
            outcome.stderr.contains(message),
            "{arguments:?}: {:?} lacks {message:?}",
            outcome.stderr
        );
    }
    // A node that is not there.
    let output = Command::new(binary("engram"))
        .args(["--node", "unix:/nonexistent/engramd.sock", "--key"])
        .arg(&admin)
        .arg("whoami")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .starts_with("engram: cannot connect to unix:/nonexistent/engramd.sock")
    );
}

/// A write the CLI tries again says why each attempt failed, not only the last, and
/// ends with the key that retries it safely.
#[test]
fn each_failed_attempt_of_a_write_is_told() {
    let node = TestNode::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let output = Command::new(binary("engram"))
        .args(["--node", &address, "--key"])
        .arg(node.admin_key_path())
        .args(["remember", "team/auth", "x", "--attempts", "3"])
        .env_remove("ENGRAM_NODE")
        .env_remove("ENGRAM_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    for attempt in 1..=2 {
        assert!(
            stderr.contains(&format!("attempt {attempt} of 3 failed (")),
            "{stderr}"
        );
    }
    assert!(!stderr.contains("attempt 3 of 3 failed"), "{stderr}");
    assert!(stderr.contains("--idempotency-key"), "{stderr}");
}

/// A reader that goes away (`engram ... | head`) ends the command quietly: exit 0, no
/// panic, where it once panicked (exit 101) with a backtrace.
#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let node = TestNode::start();
    let key = node.admin_key_path();
    ok(engram(&node, &key, &["world", "create", "piped"]));
    ok(engram(
        &node,
        &key,
        &["remember", "piped", "an atom to export"],
    ));
    for command in [&["whoami"][..], &["export", "piped"]] {
        let mut child = Command::new(binary("engram"))
            .args(["--node", &node.tcp().to_string(), "--key"])
            .arg(&key)
            .args(command)
            .env_remove("ENGRAM_NODE")
            .env_remove("ENGRAM_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command could log in and print.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{command:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{command:?}: {stderr}");
    }
}
