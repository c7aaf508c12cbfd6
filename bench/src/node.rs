//! A real `engramd` for a benchmark: started in a temporary directory on a free port,
//! with its memory read from /proc.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct BenchNode {
    _directory: tempfile::TempDir,
    child: Child,
    pub tcp: String,
    pub admin_key: PathBuf,
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

impl BenchNode {
    pub fn start() -> BenchNode {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let data = directory.path().join("data");
        let mut child = Command::new(engramd())
            .arg("--data")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--no-socket"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting engramd");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("the ready line");
        let tcp = ready
            .strip_prefix("engramd ready tcp=")
            .and_then(|rest| rest.split_whitespace().next())
            .expect("engramd printed its ready line")
            .to_owned();
        BenchNode {
            _directory: directory,
            child,
            tcp,
            admin_key: data.join("admin.key"),
        }
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
