//! engramd's configuration: a TOML file (`--config`, or `engram.toml` in the data
//! directory), `ENGRAM_*` variables and flags, each over the one before; `--print-config`
//! shows the effective values and their sources; a key that is no option stops the start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use engram_client::Endpoint;
use engram_tests::{binary, run_local, session};

/// `engramd` with `arguments`, none of the caller's `ENGRAM_*` variables but `variables`.
fn engramd(arguments: &[&str], variables: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary("engramd"));
    for (name, _) in std::env::vars() {
        if name.starts_with("ENGRAM_") {
            command.env_remove(name);
        }
    }
    command.args(arguments).envs(variables.iter().copied());
    command
}

fn output(arguments: &[&str], variables: &[(&str, &str)]) -> Output {
    engramd(arguments, variables)
        .output()
        .expect("running engramd")
}

/// The `key = value` lines of `--print-config`, with their source comments.
fn effective(output: &Output) -> Vec<String> {
    assert!(
        output.status.success(),
        "--print-config failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn data_dir_with(configuration: &str) -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(directory.path().join("data")).expect("the data directory");
    std::fs::write(
        directory.path().join("data").join("engram.toml"),
        configuration,
    )
    .expect("writing engram.toml");
    directory
}

#[test]
fn flags_override_variables_which_override_the_file() {
    let directory = data_dir_with("cache-mib = 64\nconnections-max = 9\nidle-timeout-ms = 0\n");
    let data = directory.path().join("data");
    let lines = effective(&output(
        &[
            "--data",
            data.to_str().unwrap(),
            "--connections-max",
            "7",
            "--print-config",
        ],
        &[("ENGRAM_CACHE_MIB", "32"), ("ENGRAM_CONNECTIONS_MAX", "8")],
    ));
    for expected in [
        "connections-max = 7  # flag",
        "cache-mib = 32  # ENGRAM_CACHE_MIB",
        "idle-timeout-ms = 0  # file",
        "message-bytes-max = 67108864  # default",
        "tls = false  # default",
        "# nats is not set",
    ] {
        assert!(
            lines.iter().any(|line| line == expected),
            "no line {expected:?} in:\n{}",
            lines.join("\n")
        );
    }
    // Its output is a configuration file engramd reads back to the same values.
    let printed = directory.path().join("printed.toml");
    std::fs::write(&printed, lines.join("\n")).unwrap();
    let again = effective(&output(
        &["--config", printed.to_str().unwrap(), "--print-config"],
        &[],
    ));
    assert!(
        again
            .iter()
            .any(|line| line == "connections-max = 7  # file")
    );
    assert!(again.iter().any(|line| line == "cache-mib = 32  # file"));
}

#[test]
fn a_node_serves_as_its_file_says() {
    let directory = data_dir_with("");
    let data = directory.path().join("data");
    let socket = directory.path().join("elsewhere.sock");
    std::fs::write(
        data.join("engram.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nsocket = {:?}\n",
            socket.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = engramd(&["--data", data.to_str().unwrap()], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting engramd");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .expect("the ready line");
    assert!(
        ready.contains(&format!("unix={}", socket.display())),
        "the node did not listen where its file said: {ready}"
    );
    let admin = engram_client::keyfile::read(&data.join("admin.key")).expect("admin.key");
    run_local(async {
        let session = session(&Endpoint::Unix(socket.clone()), &admin).await;
        assert!(session.admin.is_some(), "the admin logs in on the socket");
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_key_that_is_no_option_stops_the_start_and_is_named() {
    for (configuration, expected) in [
        ("conections-max = 9\n", "unknown key `conections-max`"),
        ("cache-mib = \"big\"\n", "`cache-mib` must be an integer"),
        ("tls = 1\n", "`tls` must be a boolean"),
        (
            "connections-max = -1\n",
            "`connections-max`: invalid value '-1'",
        ),
        (
            "data = \"/elsewhere\"\n",
            "cannot name another data directory",
        ),
        // Out of range is refused, not raised or lowered in silence.
        (
            "nats = \"nats://127.0.0.1:1\"\nfleet-lease-ms = 50\n",
            "`fleet-lease-ms`: invalid value '50'",
        ),
    ] {
        let directory = data_dir_with(configuration);
        let data = directory.path().join("data");
        let outcome = output(&["--data", data.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&outcome.stderr);
        assert_eq!(outcome.status.code(), Some(2), "{configuration}: {stderr}");
        assert!(stderr.contains(expected), "{configuration}: {stderr}");
        assert!(
            !data.join("engram.redb").exists(),
            "{configuration}: nothing is created before the configuration is read"
        );
    }
    let missing = output(&["--config", "/nonexistent/engram.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn the_readme_documents_every_option() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("reading README.md");
    let lines = effective(&output(&["--print-config"], &[]));
    let keys = lines
        .iter()
        .filter_map(|line| match line.strip_prefix("# ") {
            Some(comment) => comment.strip_suffix(" is not set"),
            None => line.split_once(" = ").map(|(key, _)| key),
        });
    assert!(keys.clone().count() > 20, "too few options in {lines:?}");
    for key in keys {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "README's configuration table has no row for `{key}`"
        );
    }
}

/// `--socket` naming a file that is no socket stops the start, named, and leaves the
/// file as it was (the node replaces only a socket a dead node left behind).
#[test]
fn a_socket_path_that_names_another_file_is_refused_and_left_alone() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let precious = directory.path().join("notes.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let data = directory.path().join("data");
    let mut child = engramd(
        &[
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--socket",
            precious.to_str().unwrap(),
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("running engramd");
    // A node that took the path prints its ready line and serves until stopped; one that
    // refused it exits, closing its output.
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    if !ready.is_empty() {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(ready.is_empty(), "the node started: {ready}");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("is no socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}
