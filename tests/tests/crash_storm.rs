//! The crash storm, short: `engram-bench storm` with writer processes remembering over
//! TCP while the node is killed with SIGKILL and started again ten times. The benchmark
//! checks that every acknowledged atom is there exactly once, that no request is there
//! in part or twice and that every chain verifies, and exits 1 otherwise; the full run
//! is `engram-bench storm` (50 kills, README, Reliability).

use engram_tests::binary;

#[test]
fn acknowledged_atoms_survive_ten_kills_exactly_once() {
    let output = std::process::Command::new(binary("engram-bench"))
        .args(["storm", "--kills", "10", "--writers", "3", "--seed", "7"])
        .env("ENGRAMD_BIN", binary("engramd"))
        .output()
        .expect("running engram-bench storm");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figure = |name: &str| -> u64 {
        report
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    assert_eq!(figure("storm.kills"), 10);
    assert!(figure("storm.acknowledged_atoms_checked") >= 10);
    assert_eq!(figure("storm.acknowledged_atoms_missing"), 0);
    assert_eq!(figure("storm.requests_stored_twice"), 0);
    assert_eq!(figure("storm.requests_stored_in_part"), 0);
}
