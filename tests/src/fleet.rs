//! Fleets for tests: a real `nats-server` with JetStream in a temporary directory on
//! loopback, and `engramd` nodes that reach it each through a proxy of its own, which a
//! test cuts to take one node off NATS and restores to bring it back.
//!
//! `nats-server` is the one `NATS_SERVER_BIN` names (`scripts/test` sets it: to one on
//! `PATH`, else to a pinned one it installs), else `nats-server` on `PATH`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::TestNode;

/// A `nats-server` with JetStream, its store in a temporary directory.
pub struct NatsServer {
    directory: tempfile::TempDir,
    child: Child,
    address: SocketAddr,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// A server started with these arguments besides its own (say, what a client must
    /// log in with).
    pub fn start_with(arguments: &[&str]) -> NatsServer {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let binary = std::env::var_os("NATS_SERVER_BIN")
            .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
        let log = directory.path().join("nats.log");
        let child = Command::new(&binary)
            .args(["--jetstream", "--addr", "127.0.0.1", "--port", "-1"])
            .arg("--store_dir")
            .arg(directory.path().join("jetstream"))
            .arg("--ports_file_dir")
            .arg(directory.path())
            .arg("--log")
            .arg(&log)
            .args(arguments)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "starting {} failed ({error}): run the tests with scripts/test (it \
                     provides a nats-server), or set NATS_SERVER_BIN",
                    binary.display()
                )
            });
        // The server writes its ports to <name>_<pid>.ports once it listens.
        let ports = directory
            .path()
            .join(format!("nats-server_{}.ports", child.id()));
        let started = Instant::now();
        let address = loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = json["nats"][0].as_str()
            {
                break url
                    .trim_start_matches("nats://")
                    .parse()
                    .expect("the server's client address");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        NatsServer {
            directory,
            child,
            address,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to one address, on a thread of its own; cut, it closes every
/// connection it carries and every new one at once; stalled, it carries what the client
/// sends and holds back every answer until it is resumed. It counts the bytes it carries
/// upstream.
pub struct Proxy {
    address: SocketAddr,
    cut: watch::Sender<bool>,
    stalled: watch::Sender<bool>,
    upstream_bytes: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let (cut, cuts) = watch::channel(false);
        let (stalled, stalls) = watch::channel(false);
        let (bound, address) = std::sync::mpsc::channel();
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let counted = upstream_bytes.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
                bound.send(listener.local_addr().unwrap()).unwrap();
                let mut dropped = cuts.clone();
                loop {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        changed = dropped.changed() => match changed {
                            Ok(()) => continue,
                            Err(_) => return, // the proxy was dropped
                        },
                    };
                    let Ok((mut client, _)) = accepted else {
                        return;
                    };
                    if *cuts.borrow() {
                        continue; // dropped: closed at once
                    }
                    let mut cuts = cuts.clone();
                    let mut stalls = stalls.clone();
                    let counted = counted.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (mut from_client, mut to_client) = client.split();
                        let (mut from_server, mut to_server) = server.into_split();
                        let up = async {
                            let mut buffer = vec![0; 16 * 1024];
                            loop {
                                let read = from_client.read(&mut buffer).await?;
                                if read == 0 {
                                    return to_server.shutdown().await;
                                }
                                counted.fetch_add(read as u64, Ordering::Relaxed);
                                to_server.write_all(&buffer[..read]).await?;
                            }
                        };
                        let down = async {
                            let mut buffer = vec![0; 16 * 1024];
                            loop {
                                // Held back whole while stalled: read, and written, only
                                // once resumed.
                                let _ = stalls.wait_for(|stalled| !*stalled).await;
                                let read = from_server.read(&mut buffer).await?;
                                if read == 0 {
                                    return to_client.shutdown().await;
                                }
                                let _ = stalls.wait_for(|stalled| !*stalled).await;
                                to_client.write_all(&buffer[..read]).await?;
                            }
                        };
                        tokio::select! {
                            _ = futures::future::join(up, down) => {}
                            _ = cuts.wait_for(|cut| *cut) => {}
                        }
                    });
                }
            });
        });
        Proxy {
            address: address.recv().expect("the proxy's address"),
            cut,
            stalled,
            upstream_bytes,
        }
    }

    /// The bytes carried upstream so far (what the node sent NATS).
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream_bytes.load(Ordering::Relaxed)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Carries connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Holds back every answer from upstream (what the node sent still reaches it).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Delivers the answers held back, and carries on.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

/// A fleet: one NATS server and nodes reaching it through proxies of their own.
pub struct Fleet {
    pub nats: NatsServer,
    pub nodes: Vec<TestNode>,
    pub proxies: Vec<Proxy>,
}

impl Fleet {
    /// Starts `size` nodes, one after another (the first seeds the fleet), each with
    /// `--nats` through its proxy, `--fleet-lease-ms lease` and `arguments`.
    pub fn start(size: usize, lease: Duration, arguments: &[&str]) -> Fleet {
        let nats = NatsServer::start();
        let mut fleet = Fleet {
            nats,
            nodes: Vec::new(),
            proxies: Vec::new(),
        };
        for _ in 0..size {
            let proxy = Proxy::start(fleet.nats.address());
            let url = format!("nats://{}", proxy.address());
            let lease = lease.as_millis().to_string();
            let mut node_arguments = vec!["--nats", &url, "--fleet-lease-ms", &lease];
            node_arguments.extend_from_slice(arguments);
            fleet.nodes.push(TestNode::start_with(&node_arguments));
            fleet.proxies.push(proxy);
        }
        fleet
    }

    /// The fleet's first admin: the key the first node created, which seeded the fleet.
    pub fn admin_key(&self) -> SigningKey {
        self.nodes[0].admin_key()
    }
}
