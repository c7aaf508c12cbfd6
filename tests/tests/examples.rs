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
