//! engramd's own surface: first start, clean shutdown, and start-up errors that say what
//! is wrong with exit code 1 (2 for bad usage).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn engramd(data: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engramd"));
    command
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("ENGRAM_DATA");
    command
}

/// Starts engramd on `data` with `extra` and waits for its ready line: the process
/// and the line.
fn ready(data: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut child = engramd(data, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    (child, ready)
}

/// The exit code and the last line of stderr (the error, after any log lines).
fn failure(output: Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().expect("exited"),
        stderr.lines().last().unwrap_or_default().to_owned(),
    )
}

#[test]
fn first_start_creates_the_data_directory_and_sigterm_stops_cleanly() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let (mut child, ready) = ready(&data, &[]);
    assert!(ready.starts_with("engramd ready tcp=127.0.0.1:"), "{ready}");
    let socket = data.join("engramd.sock");
    let fields: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(fields[3], format!("unix={}", socket.display()), "{ready}");
    assert_eq!(fields[4], "tls=off", "{ready}");
    let node_key = fields[5].strip_prefix("node_key=").expect("the node key");
    assert_eq!(node_key.len(), 64, "{ready}");
    for (file, mode) in [("admin.key", 0o600), ("node.key", 0o600)] {
        let permissions = std::fs::metadata(data.join(file)).unwrap().permissions();
        assert_eq!(permissions.mode() & 0o777, mode, "{file}");
    }
    assert!(data.join("engram.redb").exists());

    // A second node on the same data directory is refused while the first runs.
    let (code, stderr) = failure(engramd(&data, &["--no-socket"]).output().unwrap());
    assert_eq!(code, 1);
    assert!(stderr.starts_with("engramd: store "), "{stderr}");

    // SAFETY: kill(2) on our own child with a valid signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[test]
fn start_up_errors_are_explained() {
    let scratch = tempfile::tempdir().unwrap();
    let not_a_directory = scratch.path().join("file");
    std::fs::write(&not_a_directory, "").unwrap();
    let (code, stderr) = failure(engramd(&not_a_directory, &[]).output().unwrap());
    assert_eq!(code, 1);
    assert!(stderr.starts_with("engramd: data directory"), "{stderr}");

    let data = scratch.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("node.key"), "00\n").unwrap();
    std::fs::set_permissions(
        data.join("node.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, stderr) = failure(engramd(&data, &[]).output().unwrap());
    assert_eq!(code, 1);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(
        data.join("node.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let (code, stderr) = failure(engramd(&data, &[]).output().unwrap());
    assert_eq!(code, 1);
    assert!(stderr.contains("64 hex digits"), "{stderr}");

    let fresh = scratch.path().join("fresh");
    let output = Command::new(env!("CARGO_BIN_EXE_engramd"))
        .arg("--data")
        .arg(&fresh)
        .args(["--listen", "not an address", "--no-socket"])
        .output()
        .unwrap();
    let (code, stderr) = failure(output);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("engramd: listening on not an address"),
        "{stderr}"
    );

    let (code, _) = failure(engramd(&data, &["--frobnicate"]).output().unwrap());
    assert_eq!(code, 2);
}

#[test]
fn a_signal_sent_as_soon_as_the_node_is_ready_stops_it_cleanly() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    for signal in [libc::SIGTERM, libc::SIGINT].repeat(5) {
        let (mut child, ready) = ready(&data, &["--no-socket"]);
        assert!(ready.starts_with("engramd ready "), "{ready}");
        // SAFETY: kill(2) on our own child with a valid signal.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "signal {signal}: engramd exited with {status}"
        );
    }
}
