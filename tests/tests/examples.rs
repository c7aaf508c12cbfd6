//! The runnable examples run against a real node and do what their docs say.

use std::process::Command;

use engram_tests::{TestNode, binary};

#[test]
fn the_agent_example_regrafts_after_an_epoch_advance() {
    let node = TestNode::start();
    let output = Command::new(binary("agent"))
        .args([
            "--node",
            node.tcp_address(),
            "--world",
            "demo",
            "--advance",
            "--key",
        ])
        .arg(node.admin_key_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "created world demo",
        "advanced the epoch to 2",
        "staleEpoch",
        "re-grafted under epoch 2",
        "ship on Tuesday",
        "deploys happen on Tuesdays",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
}

#[test]
fn the_knowledge_example_checks_plans_and_approves_proposals() {
    let node = TestNode::start();
    let output = Command::new(binary("knowledge"))
        .args([
            "--node",
            node.tcp_address(),
            "--world",
            "team/auth",
            "--key",
        ])
        .arg(node.admin_key_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "created world team/auth",
        "current knowledge on jwt holds 0 atoms",
        "approving its own proposal: permissionDenied",
        "the plan violates \"do not use library requests for HTTP; use httpx\"",
        "matched requests",
        "checking plan \"fetch the signing keys from the JWKS endpoint with httpx\"",
        "the plan violates no constraint; acting on it",
        "lead: approved \"JWT algorithm: ES256\"",
        "current knowledge on jwt: \"JWT algorithm: ES256\" (approved)",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
}
