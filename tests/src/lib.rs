//! Support for end-to-end tests: start a real `engramd` on a loopback port and a Unix
//! socket in a temporary data directory, stop it, kill it, restart it, and log in to it.
//!
//! The binaries are the ones `cargo build --workspace --bins` puts beside the test
//! executables (`target/<profile>/`); `ENGRAMD_BIN` and `ENGRAM_BIN` override them.

pub mod fleet;
pub mod handoff;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ed25519_dalek::SigningKey;
use engram_client::{ClientError, Endpoint, ErrorCode, Grant, Session, connect, keyfile};

/// GETs `path` from the HTTP listener at `address` (the metrics listener): the status
/// and the body, whatever the status.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut response = agent
        .get(&format!("http://{address}{path}"))
        .call()
        .unwrap_or_else(|error| panic!("GET {path}: {error}"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("a text body");
    (status, body)
}

/// Asks with `filter` until the answer carries no warning, that is until the vector and
/// text indexes cover every atom the ask could find, and returns that answer; fails
/// after `deadline`. Polls: the indexes catch up on a thread of their own and announce
/// it nowhere a client can wait on.
pub async fn ask_when_indexed(
    reader: &engram_client::engram_schema::engram_capnp::world_reader::Client,
    filter: &engram_client::Filter,
    deadline: std::time::Duration,
) -> engram_client::Answer {
    let started = std::time::Instant::now();
    loop {
        let answer = engram_client::ask_scored(reader, filter)
            .await
            .expect("an ask answers");
        if answer.warning.is_empty() {
            return answer;
        }
        assert!(
            started.elapsed() < deadline,
            "the indexes never caught up: {}",
            answer.warning
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs the `engram` CLI against `node`'s TCP listener with the key at `key`, ignoring
/// any `ENGRAM_NODE` and `ENGRAM_KEY` of the environment.
pub fn engram_cli(node: &TestNode, key: &Path, arguments: &[&str]) -> std::process::Output {
    engram_command(node, key)
        .args(arguments)
        .output()
        .expect("running engram")
}

/// The `engram` CLI set to talk to `node`'s TCP listener with the key at `key`, ignoring
/// any `ENGRAM_NODE` and `ENGRAM_KEY` of the environment; the caller adds the command.
pub fn engram_command(node: &TestNode, key: &Path) -> Command {
    engram_command_at(&node.tcp(), key)
}

/// The `engram` CLI as [`engram_command`] sets it up, reaching the node at `endpoint`.
pub fn engram_command_at(endpoint: &Endpoint, key: &Path) -> Command {
    let mut command = Command::new(binary("engram"));
    command
        .arg("--node")
        .arg(endpoint.to_string())
        .arg("--key")
        .arg(key)
        .env_remove("ENGRAM_NODE")
        .env_remove("ENGRAM_KEY");
    command
}

/// Runs the `engram` CLI as [`engram_cli`] does, asserts that it succeeded, and returns
/// what it printed.
#[track_caller]
pub fn engram_ok(node: &TestNode, key: &Path, arguments: &[&str]) -> String {
    let output = engram_cli(node, key, arguments);
    assert!(
        output.status.success(),
        "engram {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the CLI prints UTF-8")
}

/// Runs the example binary `name` against `node` with `arguments` (and the admin's key),
/// asserts that it succeeded and printed each of `expected`.
pub fn run_example(node: &TestNode, name: &str, arguments: &[&str], expected: &[&str]) {
    let output = Command::new(binary(name))
        .args(["--node", node.tcp_address()])
        .args(arguments)
        .arg("--key")
        .arg(node.admin_key_path())
        .output()
        .expect("running an example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in expected {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}

/// A binary of this workspace, found beside the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let variable = format!("{}_BIN", name.to_uppercase());
    if let Some(path) = std::env::var_os(&variable) {
        return PathBuf::from(path);
    }
    let executable = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = executable
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does), or set {variable}",
        path.display()
    );
    path
}

/// A running `engramd` in its own temporary data directory.
pub struct TestNode {
    directory: tempfile::TempDir,
    child: Option<Child>,
    tcp: String,
    node_key: String,
    metrics: Option<String>,
    arguments: Vec<String>,
    terminated: bool,
}

impl TestNode {
    /// Starts a node on a free loopback port and the default Unix socket.
    pub fn start() -> TestNode {
        TestNode::start_with(&[])
    }

    /// Starts a node with extra `engramd` options (kept across restarts).
    pub fn start_with(arguments: &[&str]) -> TestNode {
        TestNode::start_in(
            tempfile::tempdir().expect("a temporary directory"),
            arguments,
        )
    }

    /// Restores the backup in `backup` (`engramd restore`) into a new data directory
    /// and starts a node on it; fails if the restore does.
    pub fn restore_from(backup: &Path) -> TestNode {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let output = Command::new(binary("engramd"))
            .args(["restore", "--from"])
            .arg(backup)
            .arg("--data")
            .arg(directory.path().join("data"))
            .output()
            .expect("running engramd restore");
        assert!(
            output.status.success(),
            "the restore failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        TestNode::start_in(directory, &[])
    }

    fn start_in(directory: tempfile::TempDir, arguments: &[&str]) -> TestNode {
        let mut node = TestNode {
            directory,
            child: None,
            tcp: String::new(),
            node_key: String::new(),
            metrics: None,
            arguments: arguments
                .iter()
                .map(|argument| argument.to_string())
                .collect(),
            terminated: false,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "the node is already running");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the node's log file");
        let mut child = Command::new(binary("engramd"))
            .arg("--data")
            .arg(self.data_dir())
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.arguments)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting engramd");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the ready line");
        let tcp = line
            .strip_prefix("engramd ready tcp=")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "engramd did not get ready; its log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                )
            });
        self.tcp = tcp.to_owned();
        self.node_key = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("node_key="))
            .expect("the ready line names the node key")
            .to_owned();
        self.metrics = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("metrics="))
            .filter(|address| *address != "-")
            .map(str::to_owned);
        self.child = Some(child);
    }

    /// The data directory (redb file, keys, socket).
    pub fn data_dir(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    /// The node's log (stderr), across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.directory.path().join("engramd.log")
    }

    /// The redb file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir().join("engram.redb")
    }

    /// The TCP endpoint.
    pub fn tcp(&self) -> Endpoint {
        Endpoint::Tcp(self.tcp.clone())
    }

    /// The TCP address as `HOST:PORT`.
    /// The node's public key, as its ready line prints it (hex).
    pub fn node_key_hex(&self) -> &str {
        &self.node_key
    }

    /// The metrics listener's `HOST:PORT`, when the node was started with `--metrics`.
    pub fn metrics_address(&self) -> Option<&str> {
        self.metrics.as_deref()
    }

    pub fn tcp_address(&self) -> &str {
        &self.tcp
    }

    /// The Unix socket endpoint.
    pub fn unix(&self) -> Endpoint {
        Endpoint::Unix(self.data_dir().join("engramd.sock"))
    }

    /// The admin key written on first start.
    pub fn admin_key_path(&self) -> PathBuf {
        self.data_dir().join("admin.key")
    }

    pub fn admin_key(&self) -> SigningKey {
        keyfile::read(&self.admin_key_path()).expect("the admin key")
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").id()
    }

    /// A field of the node's `/proc/PID/status` in KiB, e.g. `VmHWM` (peak RSS).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the node's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in the node's status"))
    }

    /// Waits until the node's log contains `text` `times` times, or fails after
    /// `deadline`.
    pub async fn until_logged(&self, text: &str, times: usize, deadline: std::time::Duration) {
        let started = std::time::Instant::now();
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.matches(text).count() >= times {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "the node never logged {text:?}; its log:\n{log}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("killing engramd");
            child.wait().expect("reaping engramd");
        }
    }

    /// Sends SIGTERM without waiting, so that an async test can go on serving its
    /// connections while the node shuts down; [`TestNode::stop`] then waits for it.
    pub fn terminate(&mut self) {
        if let Some(child) = &self.child
            && !self.terminated
        {
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            assert_eq!(sent, 0, "sending SIGTERM");
            self.terminated = true;
        }
    }

    /// SIGTERM (unless already sent), and the node must exit 0, within a minute (it is
    /// killed past that, and the test fails: a stop that hangs is a defect).
    pub fn stop(&mut self) {
        self.terminate();
        if let Some(mut child) = self.child.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().expect("waiting for engramd") {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("engramd did not exit within a minute of SIGTERM");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            assert!(status.success(), "engramd exited with {status}");
        }
        self.terminated = false;
    }

    /// Starts the node again on the same data directory.
    pub fn restart(&mut self) {
        self.launch();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs an async test body on a single-threaded runtime inside a `LocalSet`, as
/// Cap'n Proto RPC needs.
pub fn run_local<F: Future>(body: F) -> F::Output {
    engram_client::run_local(body).expect("a tokio runtime")
}

/// Connects, logs in with `key`, and grafts.
pub async fn session(endpoint: &Endpoint, key: &SigningKey) -> Session {
    let connection = connect(endpoint).await.expect("connecting");
    let membrane = connection.login(key).await.expect("logging in");
    membrane.graft().await.expect("grafting")
}

/// Creates `world` as the admin, and returns an admin session grafted after it exists
/// (so it holds the world's capabilities).
pub async fn admin_with_world(node: &TestNode, world: &str) -> Session {
    let admin = session(&node.tcp(), &node.admin_key()).await;
    engram_client::create_world(&admin.admin().expect("admin"), world)
        .await
        .expect("creating a world");
    session(&node.tcp(), &node.admin_key()).await
}

/// [`admin_with_world`], with `facts` remembered in the world.
pub async fn admin_with_facts(node: &TestNode, world: &str, facts: &[&str]) -> Session {
    let admin = admin_with_world(node, world).await;
    let atoms: Vec<engram_client::NewAtom> = facts
        .iter()
        .map(|fact| engram_client::NewAtom::fact(*fact))
        .collect();
    engram_client::remember(&admin.writer(world).expect("a writer"), &atoms)
        .await
        .expect("remembering");
    admin
}

/// Creates worlds and a principal with grants through the admin; returns its key.
pub async fn add_principal(admin: &Session, name: &str, grants: &[&str]) -> SigningKey {
    let key = keyfile::generate().expect("a key");
    let grants: Vec<Grant> = grants
        .iter()
        .map(|grant| Grant::parse(grant).expect("a grant"))
        .collect();
    engram_client::add_principal(
        &admin.admin().expect("admin"),
        name,
        key.verifying_key().as_bytes(),
        false,
        &grants,
    )
    .await
    .expect("adding a principal");
    key
}

/// Asserts that `result` failed with the node's error `code`.
#[track_caller]
pub fn assert_code<T>(result: Result<T, ClientError>, code: ErrorCode) {
    match result {
        Err(error) => assert_eq!(error.code(), Some(code), "wrong error: {error}"),
        Ok(_) => panic!("expected {code}, got success"),
    }
}

/// Hands a capability to a third party over a second Cap'n Proto connection (an
/// in-process pipe): the returned client reaches the node only through that hop, as a
/// capability passed to another process would.
pub fn hand_over<C: capnp::capability::FromClientHook>(capability: capnp::capability::Client) -> C {
    use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
    use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

    let (holder_end, third_party_end) = tokio::io::duplex(64 * 1024);
    let (read, write) = tokio::io::split(holder_end);
    let holder = twoparty::VatNetwork::new(
        read.compat(),
        write.compat_write(),
        Side::Server,
        Default::default(),
    );
    tokio::task::spawn_local(RpcSystem::new(Box::new(holder), Some(capability)));
    let (read, write) = tokio::io::split(third_party_end);
    let third_party = twoparty::VatNetwork::new(
        read.compat(),
        write.compat_write(),
        Side::Client,
        Default::default(),
    );
    let mut system = RpcSystem::new(Box::new(third_party), None);
    let handed = system.bootstrap(Side::Server);
    tokio::task::spawn_local(system);
    handed
}
