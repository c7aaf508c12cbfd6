//! TLS off loopback: a node started with `--tls` is reached at `tls://ADDRESS` and
//! authenticated by its key — pinned, or recorded on first use in a known-nodes file —
//! and another node presenting its own key in its place (a relay that terminates TLS)
//! is refused before anything is signed. A node refuses to listen off loopback without
//! TLS unless told `--insecure`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use engram_client::{ClientError, Endpoint, NewAtom, NodeTrust, connect};
use engram_tests::{TestNode, binary, engram_command_at, run_local, session};

fn tls_endpoint(node: &TestNode, trust: NodeTrust) -> Endpoint {
    Endpoint::Tcp(node.tcp_address().to_owned()).trusting(trust)
}

#[test]
fn a_pinned_node_is_reached_and_an_impostor_refused() {
    let node = TestNode::start_with(&["--tls"]);
    let impostor = TestNode::start_with(&["--tls"]);
    let pin = NodeTrust::parse_key(node.node_key_hex()).unwrap();
    run_local(async {
        let pinned = session(&tls_endpoint(&node, pin.clone()), &node.admin_key()).await;
        let admin = pinned.admin().unwrap();
        engram_client::create_world(&admin, "w").await.unwrap();
        // The impostor answers at its own address with the node's pin expected: it
        // cannot finish the handshake as the node.
        let refused = connect(&tls_endpoint(&impostor, pin.clone())).await;
        match refused {
            Err(ClientError::NodeKeyMismatch {
                presented,
                expected,
                ..
            }) => {
                assert_eq!(presented, impostor.node_key_hex());
                assert_eq!(expected, node.node_key_hex());
            }
            other => panic!("expected a key mismatch, got {:?}", other.err()),
        }
        // Plain TCP to a TLS listener is not served.
        let plain = connect(&node.tcp()).await.unwrap();
        assert!(plain.login(&node.admin_key()).await.is_err());
    });
    // The CLI: --node-key pins, a wrong one is refused with both keys named.
    let data = node.data_dir();
    let remembered = engram_command_at(
        &Endpoint::Tcp(node.tcp_address().into()),
        &data.join("admin.key"),
    )
    .args(["--node-key", node.node_key_hex(), "world", "create", "cli"])
    .output()
    .unwrap();
    assert!(remembered.status.success(), "{remembered:?}");
    let wrong = engram_command_at(
        &Endpoint::Tcp(node.tcp_address().into()),
        &data.join("admin.key"),
    )
    .args(["--node-key", impostor.node_key_hex(), "whoami"])
    .output()
    .unwrap();
    assert_eq!(wrong.status.code(), Some(3));
    let message = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        message.contains(node.node_key_hex()) && message.contains(impostor.node_key_hex()),
        "{message}"
    );
}

#[test]
fn the_first_key_is_recorded_and_required_after() {
    let node = TestNode::start_with(&["--tls"]);
    let impostor = TestNode::start_with(&["--tls"]);
    let directory = tempfile::tempdir().unwrap();
    let known = directory.path().join("config/engram/known_nodes");
    let trust = NodeTrust::KnownNodes(known.clone());
    run_local(async {
        let first = session(&tls_endpoint(&node, trust.clone()), &node.admin_key()).await;
        engram_client::create_world(&first.admin().unwrap(), "w")
            .await
            .unwrap();
        let recorded = std::fs::read_to_string(&known).unwrap();
        assert_eq!(
            recorded.trim(),
            format!("{} {}", node.tcp_address(), node.node_key_hex())
        );
        // Again: the recorded key is required, and found.
        let again = session(&tls_endpoint(&node, trust.clone()), &node.admin_key()).await;
        let receipts =
            engram_client::remember(&again.writer("w").unwrap(), &[NewAtom::fact("over TLS")])
                .await
                .unwrap();
        assert_eq!(receipts[0].seq, 1);
        // Someone else answering at the recorded address is refused, naming the line.
        std::fs::write(
            &known,
            format!(
                "# pinned\n{} {}\n",
                impostor.tcp_address(),
                node.node_key_hex()
            ),
        )
        .unwrap();
        match connect(&tls_endpoint(&impostor, trust.clone())).await {
            Err(error @ ClientError::NodeKeyMismatch { .. }) => {
                assert!(error.to_string().contains("known_nodes:2"), "{error}");
            }
            other => panic!("expected a key mismatch, got {:?}", other.err()),
        }
    });
}

#[test]
fn a_listener_off_loopback_needs_tls_or_insecure() {
    let directory = tempfile::tempdir().unwrap();
    let refused = Command::new(binary("engramd"))
        .arg("--data")
        .arg(directory.path().join("data"))
        .args(["--listen", "0.0.0.0:0", "--no-socket"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("refusing to listen on 0.0.0.0:0 without TLS")
            && message.contains("--tls"),
        "{message}"
    );
    for allowed in [["--tls"], ["--insecure"]] {
        let mut child = Command::new(binary("engramd"))
            .arg("--data")
            .arg(directory.path().join("data"))
            .args(["--listen", "0.0.0.0:0", "--no-socket"])
            .args(allowed)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("engramd ready tcp=0.0.0.0:"),
            "{allowed:?}: {line}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn one_peer_holding_handshakes_open_leaves_room_for_others() {
    // A peer (127.0.0.2) opens as many TCP connections as the node serves in all and
    // never starts a handshake; a client from another address (127.0.0.1) must still
    // be served, because a handshake counts as a connection of its peer from accept.
    let node = TestNode::start_with(&[
        "--tls",
        "--connections-max",
        "8",
        "--connections-per-address-max",
        "4",
        "--handshake-timeout-ms",
        "60000",
    ]);
    let pin = NodeTrust::parse_key(node.node_key_hex()).unwrap();
    run_local(async {
        let address: std::net::SocketAddr = node.tcp_address().parse().unwrap();
        let mut silent = Vec::new();
        for _ in 0..8 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            silent.push(socket.connect(address).await.unwrap());
        }
        // Past its share the hostile peer's oldest connections are closed at once, to
        // make room for its newer ones (the timeout only bounds a failing run).
        for stream in &mut silent[..4] {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::io::AsyncReadExt::read(stream, &mut byte),
            )
            .await
            .expect("a connection past the peer's share is closed");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        let served = session(&tls_endpoint(&node, pin), &node.admin_key()).await;
        assert!(served.admin().is_ok());
        drop(silent);
    });
}
