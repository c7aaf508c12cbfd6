//! A real `engramd` for a benchmark: started in a temporary directory on a free port,
//! with its memory read from /proc.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use engram_client::{Endpoint, Filter, Session, connect, keyfile};

pub struct BenchNode {
    _directory: tempfile::TempDir,
    data: PathBuf,
    child: Child,
    pub tcp: String,
    pub admin_key: PathBuf,
    /// engramd's options beyond the data directory and the TCP address.
    arguments: Vec<String>,
}

/// Starts `program` and reads its ready line `... tcp=ADDRESS ...`.
fn launch(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting a benchmark server");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("the ready line");
    let tcp = ready
        .split_whitespace()
        .find_map(|field| field.strip_prefix("tcp="))
        .unwrap_or_else(|| panic!("no address in the ready line {ready:?}"))
        .to_owned();
    (child, tcp)
}

/// The echo baseline server (this binary's `echo-server`), killed on drop.
pub struct EchoServer {
    child: Child,
    pub tcp: String,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let mut command = Command::new(std::env::current_exe().expect("the benchmark's path"));
        command.arg("echo-server");
        let (child, tcp) = launch(command);
        EchoServer { child, tcp }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `engramd` beside this executable (same profile), or `ENGRAMD_BIN`.
fn engramd() -> PathBuf {
    if let Some(path) = std::env::var_os("ENGRAMD_BIN") {
        return PathBuf::from(path);
    }
    let executable = std::env::current_exe().expect("the benchmark's path");
    let path = executable.with_file_name("engramd");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release --bins`",
        path.display()
    );
    path
}

/// Connects at `endpoint`, logs in with `key` and grafts.
pub async fn login_as(endpoint: &Endpoint, key: &ed25519_dalek::SigningKey) -> Session {
    connect(endpoint)
        .await
        .expect("connecting")
        .login(key)
        .await
        .expect("login")
        .graft()
        .await
        .expect("graft")
}

impl BenchNode {
    /// A node on TCP only.
    pub fn start() -> BenchNode {
        BenchNode::start_with(&["--no-socket"])
    }

    /// A node with these engramd options (beyond its data directory and TCP address).
    pub fn start_with(arguments: &[&str]) -> BenchNode {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let data = directory.path().join("data");
        let arguments: Vec<String> = arguments
            .iter()
            .map(|argument| argument.to_string())
            .collect();
        let (child, tcp) = launch(BenchNode::command(&data, &arguments));
        BenchNode {
            _directory: directory,
            admin_key: data.join("admin.key"),
            data,
            child,
            tcp,
            arguments,
        }
    }

    fn command(data: &std::path::Path, arguments: &[String]) -> Command {
        let mut command = Command::new(engramd());
        command
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(arguments)
            .env("RUST_LOG", "warn");
        command
    }

    /// The node's Unix socket (unless started with `--no-socket`).
    pub fn unix(&self) -> Endpoint {
        Endpoint::Unix(self.data.join("engramd.sock"))
    }

    /// Connects as the admin over TCP, logs in and grafts.
    pub async fn login(&self) -> Session {
        self.login_at(&Endpoint::Tcp(self.tcp.clone())).await
    }

    /// Connects as the admin at `endpoint`, logs in and grafts.
    pub async fn login_at(&self, endpoint: &Endpoint) -> Session {
        let key = keyfile::read(&self.admin_key).expect("the admin key");
        login_as(endpoint, &key).await
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// The redb file.
    pub fn store_path(&self) -> PathBuf {
        self.data.join("engram.redb")
    }

    /// Stops the node with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for engramd");
        assert!(status.success(), "engramd exited with {status}");
    }

    /// Kills the node with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        self.child.kill().expect("killing engramd");
        self.child.wait().expect("reaping engramd");
    }

    /// Starts the stopped node again; returns how long it took to accept connections.
    pub fn restart(&mut self) -> std::time::Duration {
        let started = std::time::Instant::now();
        let (child, tcp) = launch(BenchNode::command(&self.data, &self.arguments));
        let elapsed = started.elapsed();
        self.child = child;
        self.tcp = tcp;
        elapsed
    }

    /// CPU time the node has used so far, user and system, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.child.id())
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading /proc");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until an ask in `world` is served entirely by the indexes, text and (with a
/// `probe` vector) similarity, with no warning, so that measurements see the node at
/// rest; returns how long it took.
pub async fn until_indexed(session: &Session, world: &str, probe: &[f32]) -> Duration {
    let reader = session.reader(world).expect("a reader");
    let started = Instant::now();
    loop {
        let filter = Filter {
            vector: probe.to_vec(),
            text: "vector".into(),
            limit: 1,
            ..Filter::default()
        };
        let answer = engram_client::ask_scored(&reader, &filter)
            .await
            .expect("ask");
        if answer.warning.is_empty() {
            return started.elapsed();
        }
        // A benchmark, not a test: poll the node's own report at a coarse interval.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time process `pid` has used so far, user and system, in clock ticks
/// (`getconf CLK_TCK`, 100 on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5): the 12th and 13th after the name.
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
    };
    ticks(11).unwrap_or(0) + ticks(12).unwrap_or(0)
}
