//! Anonymous peers cannot lock others out: a connection must log in within the
//! handshake timeout, one address holds a bounded number of connections and login
//! attempts, and every failed login reads the same.

use std::time::Duration;

use engram_client::{ErrorCode, connect, keyfile};
use engram_tests::{TestNode, run_local, session};
use tokio::io::AsyncReadExt;

/// Waits until the node closes `socket` (a read returns end of file or an error).
async fn until_closed(mut socket: tokio::net::TcpStream) {
    let mut buffer = [0u8; 4096];
    loop {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            // A refused connection's error message: keep reading to the end.
            Ok(_) => continue,
        }
    }
}

#[test]
fn idle_sockets_cannot_lock_out_a_real_client() {
    let node = TestNode::start_with(&["--connections-max", "16", "--handshake-timeout-ms", "500"]);
    run_local(async {
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(
                tokio::net::TcpStream::connect(node.tcp_address())
                    .await
                    .unwrap(),
            );
        }
        // The node closes every one of them: the refused at once, the others once
        // their handshake time is up. None of them sent a byte.
        tokio::time::timeout(
            Duration::from_secs(30),
            futures::future::join_all(idle.into_iter().map(until_closed)),
        )
        .await
        .expect("sockets that never log in are held open");
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "w")
            .await
            .unwrap();
        // A connection that logged in is not cut by the handshake timeout.
        let connection = connect(&node.tcp()).await.unwrap();
        let membrane = connection.login(&node.admin_key()).await.unwrap();
        let probe = tokio::net::TcpStream::connect(node.tcp_address())
            .await
            .unwrap();
        until_closed(probe).await;
        membrane.graft().await.unwrap();
    });
}

#[test]
fn one_address_holds_a_bounded_number_of_connections() {
    let node = TestNode::start_with(&["--connections-per-address-max", "3"]);
    run_local(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            let connection = connect(&node.tcp()).await.unwrap();
            connection.login(&node.admin_key()).await.unwrap();
            held.push(connection);
        }
        let fourth = connect(&node.tcp()).await.unwrap();
        let error = match fourth.login(&node.admin_key()).await {
            Ok(_) => panic!("a fourth connection from one address was served"),
            Err(error) => error,
        };
        assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
        assert!(
            error.to_string().contains("3 connections from one address"),
            "{error}"
        );
        // The Unix socket's peers are counted apart from TCP addresses.
        let local = session(&node.unix(), &node.admin_key()).await;
        engram_client::create_world(&local.admin().unwrap(), "w")
            .await
            .unwrap();
        // A place comes back once a connection is closed and the node has seen it.
        held.pop().unwrap().close().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let connection = connect(&node.tcp()).await.unwrap();
            match connection.login(&node.admin_key()).await {
                Ok(_) => break,
                Err(error) => {
                    assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted));
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the place of a closed connection never came back"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}

#[test]
fn login_attempts_per_address_are_rate_limited() {
    let node = TestNode::start_with(&["--login-attempts-per-minute", "5"]);
    run_local(async {
        let stranger = keyfile::generate().unwrap();
        let connection = connect(&node.tcp()).await.unwrap();
        for _ in 0..5 {
            let error = match connection.login(&stranger).await {
                Ok(_) => panic!("an unknown key logged in"),
                Err(error) => error,
            };
            assert_eq!(error.code(), Some(ErrorCode::Unauthenticated), "{error}");
        }
        // Past the rate, even the right key is refused, on a new connection too.
        let refused = |answer: Result<_, engram_client::ClientError>| {
            let error = match answer {
                Ok(_) => panic!("a login past the rate went through"),
                Err(error) => error,
            };
            assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
            assert!(error.to_string().contains("login attempts"), "{error}");
        };
        refused(connection.login(&node.admin_key()).await.map(|_| ()));
        // A new connection's refusal is answered only once the peer's rate would allow
        // an attempt (at most a second later), so a peer that reconnects at once does not
        // keep the node busy refusing it. Another peer (the Unix socket) is served
        // meanwhile, not held back by this address.
        let asked_at = std::time::Instant::now();
        let reconnected = async {
            let connection = connect(&node.tcp()).await?;
            connection.login(&node.admin_key()).await.map(|_| ())
        };
        futures::pin_mut!(reconnected);
        let (unix, admin_key) = (node.unix(), node.admin_key());
        let other_peer = Box::pin(session(&unix, &admin_key));
        let reconnected = match futures::future::select(reconnected, other_peer).await {
            futures::future::Either::Right((_, reconnected)) => reconnected,
            futures::future::Either::Left(_) => {
                panic!("the peer past its rate was answered before another peer")
            }
        };
        refused(reconnected.await);
        let waited = asked_at.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(500),
            "the refusal came after {waited:?}"
        );
    });
}

#[test]
fn an_idle_connection_is_closed_and_a_subscriber_is_not_idle() {
    let node = TestNode::start_with(&["--idle-timeout-ms", "300"]);
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "quiet")
            .await
            .unwrap();
        let subscriber = session(&node.unix(), &node.admin_key()).await;
        let _watch = engram_client::subscribe(
            &subscriber.observer("quiet").unwrap(),
            &engram_client::Filter::default(),
            0,
        )
        .await
        .unwrap();
        // Logged in after the subscriber: its idle time ends later than the subscriber's.
        // The first connection closed is the admin's, which has been idle since.
        let idle = session(&node.tcp(), &node.admin_key()).await;
        node.until_logged("connection closed: idle", 2, Duration::from_secs(30))
            .await;
        assert!(
            engram_client::heads(&idle.reader("quiet").unwrap())
                .await
                .is_err(),
            "the idle connection still answers"
        );
        // Waiting on its subscription, the subscriber was not idle.
        engram_client::heads(&subscriber.reader("quiet").unwrap())
            .await
            .unwrap();
    });
}

/// Bytes that are no Cap'n Proto message, from anonymous peers on TCP and on the Unix
/// socket, close only their own connections, at once: a frame claiming segments of
/// gigabytes or thousands of segments allocates nothing, and a client beside them is
/// served throughout.
#[test]
fn bytes_that_are_no_message_close_only_their_connection() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start_with(&["--handshake-timeout-ms", "60000"]);
    let frames: Vec<Vec<u8>> = vec![
        // One segment of 2^31 - 1 words (16 GiB).
        [0u32.to_le_bytes(), 0x7fff_ffffu32.to_le_bytes()].concat(),
        // 65,536 segments.
        [0xffffu32.to_le_bytes(), 1u32.to_le_bytes()].concat(),
        // 512 segments, each claiming 2^24 words.
        std::iter::once(511u32)
            .chain(std::iter::repeat_n(1 << 24, 512))
            .flat_map(u32::to_le_bytes)
            .collect(),
        // Text.
        b"GET / HTTP/1.1\r\nHost: engram\r\n\r\n".repeat(64),
        // A message whose root pointer points far outside its one segment.
        [
            0u32.to_le_bytes().as_slice(),
            2u32.to_le_bytes().as_slice(),
            &0x7fff_fff0_0000_0000u64.to_le_bytes(),
            &u64::MAX.to_le_bytes(),
        ]
        .concat(),
    ];
    let rss_before = node.memory_kib("VmRSS");
    run_local(async {
        let client = session(&node.tcp(), &node.admin_key()).await;
        for (index, frame) in frames.iter().enumerate() {
            let mut tcp = tokio::net::TcpStream::connect(node.tcp_address())
                .await
                .unwrap();
            let mut unix = tokio::net::UnixStream::connect(node.data_dir().join("engramd.sock"))
                .await
                .unwrap();
            // The node may close before it has read it all.
            let _ = tcp.write_all(frame).await;
            let _ = unix.write_all(frame).await;
            // Closed long before the handshake timeout: the frame itself is refused.
            tokio::time::timeout(Duration::from_secs(10), until_closed(tcp))
                .await
                .unwrap_or_else(|_| panic!("a TCP connection stayed open after {frame:02x?}"));
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = unix.read(&mut buffer).await {
                    if read == 0 {
                        break;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("a Unix connection stayed open after {frame:02x?}"));
            engram_client::create_world(&client.admin().unwrap(), &format!("w{index}"))
                .await
                .expect("the client beside them is served");
        }
    });
    let grown_kib = node.memory_kib("VmRSS").saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "the node grew by {grown_kib} KiB");
}

/// Connections that never log in cannot starve those that do, even when every peer
/// shares one address (all local agents reach TCP from 127.0.0.1): once a limit is met,
/// a new connection closes the oldest that has not logged in (the peer's own, for the
/// per-address limit) rather than being refused, and connections that logged in are
/// never closed for it.
#[test]
fn sockets_that_never_log_in_cannot_lock_out_their_address() {
    let node = TestNode::start_with(&[
        "--connections-per-address-max",
        "8",
        "--connections-max",
        "12",
        "--pre-auth-connections-max",
        "6",
    ]);
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        // A hostile local process holds more never-authenticated connections than any
        // limit allows, and opens a new one whenever one is closed.
        let mut idle = Vec::new();
        for _ in 0..16 {
            idle.push(
                tokio::net::TcpStream::connect(node.tcp_address())
                    .await
                    .unwrap(),
            );
        }
        // Agents on the same address log in all the same, and their logged-in
        // connections outlive any number of newer idle ones.
        let mut agents = Vec::new();
        for _ in 0..4 {
            let connection = connect(&node.tcp()).await.unwrap();
            let membrane = connection.login(&node.admin_key()).await.unwrap();
            agents.push((connection, membrane));
            for _ in 0..8 {
                idle.push(
                    tokio::net::TcpStream::connect(node.tcp_address())
                        .await
                        .unwrap(),
                );
            }
        }
        for (_, membrane) in &agents {
            membrane
                .graft()
                .await
                .expect("a logged-in connection was closed");
        }
        engram_client::create_world(&admin.admin().unwrap(), "w")
            .await
            .expect("the first agent's connection was closed");
        // The idle connections were closed, oldest first: at most the pool's bound are
        // still open.
        let still_open = futures::future::join_all(idle.iter().map(|socket| async move {
            let mut byte = [0u8; 1];
            // A closed socket reads its end at once; an open one has nothing to read.
            tokio::time::timeout(Duration::from_millis(200), socket.peek(&mut byte))
                .await
                .is_err()
        }))
        .await;
        let open = still_open.into_iter().filter(|open| *open).count();
        assert!(
            open <= 6,
            "{open} never-authenticated connections are still open"
        );
    });
}

/// A local process opening and dropping connections on the Unix socket as fast as it
/// can holds the node to a bounded number of descriptors: connections closed to make
/// room for newer ones are bounded while they close, and past that new ones are
/// refused; a client that logged in is served throughout.
#[test]
fn a_flood_of_connections_holds_a_bounded_number_of_descriptors() {
    let node = TestNode::start_with(&["--connections-per-address-max", "8"]);
    let path = match node.unix() {
        engram_client::Endpoint::Unix(path) => path,
        _ => unreachable!("unix() is a Unix endpoint"),
    };
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", node.pid()))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    let before = descriptors();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut opened = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    opened += 1;
                }
            }
            opened
        })
    };
    let mut most = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        most = most.max(descriptors());
        // The pace of sampling, not a wait for the node.
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = flood.join().unwrap();
    assert!(opened > 1_000, "the flood opened only {opened} connections");
    // 8 of the peer's own, at most 64 closing and 64 refused at once, and the node's own.
    assert!(
        most < before + 8 + 64 + 64 + 64,
        "the node held {most} descriptors (from {before}) under a flood of {opened}"
    );
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "after")
            .await
            .expect("served after the flood");
    });
}

/// A process of the same user flooding the Unix socket with connections it never logs
/// in on (holding the newest few hundred open) closes its own oldest to make room, not
/// those of the user's other processes: an agent logs in every time.
#[test]
fn a_flooding_process_closes_its_own_connections_not_its_neighbours() {
    let node = TestNode::start_with(&["--connections-per-address-max", "64"]);
    let path = match node.unix() {
        engram_client::Endpoint::Unix(path) => path,
        _ => unreachable!("unix() is a Unix endpoint"),
    };
    // Another process of this user: connects as fast as it can, keeps the newest 200.
    let program = "import collections, socket, sys\n\
                   held = collections.deque(maxlen=200)\n\
                   opened = 0\n\
                   while True:\n\
                   \x20   s = socket.socket(socket.AF_UNIX)\n\
                   \x20   try:\n\
                   \x20       s.connect(sys.argv[1]); held.append(s); opened += 1\n\
                   \x20   except OSError:\n\
                   \x20       s.close()\n\
                   \x20   if opened == 1000:\n\
                   \x20       print('flooding', flush=True)\n";
    let mut flood = std::process::Command::new("python3")
        .args(["-c", program])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 for the flooding process");
    // Once it has opened a thousand, the flood is under way.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "flooding\n");
    // A connect the kernel refuses (the socket's backlog full of the flood's) is not
    // the node's to answer: it is tried again, for up to a minute on a busy machine,
    // at most once a millisecond. Every connection the node took must log in.
    let (connected, logged_in) = run_local(async {
        let (mut connected, mut logged_in) = (0, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while connected < 10 && std::time::Instant::now() < deadline {
            let Ok(connection) = connect(&node.unix()).await else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            connected += 1;
            match connection.login(&node.admin_key()).await {
                Ok(_) => logged_in += 1,
                Err(error) => eprintln!("login failed: {error}"),
            }
        }
        (connected, logged_in)
    });
    flood.kill().unwrap();
    flood.wait().unwrap();
    assert_eq!(connected, 10, "connects did not get through the backlog");
    assert_eq!(
        logged_in, connected,
        "{logged_in} of {connected} connections logged in beside a flooding process"
    );
}

/// On the Unix socket each process has its own login rate: a process that spends its
/// own (a hostile one, trying keys) leaves its user's other processes theirs.
#[test]
fn a_process_past_its_login_rate_leaves_its_users_other_processes_theirs() {
    let node = TestNode::start_with(&["--login-attempts-per-minute", "5"]);
    run_local(async {
        let stranger = keyfile::generate().unwrap();
        let connection = connect(&node.unix()).await.unwrap();
        for _ in 0..5 {
            let error = connection.login(&stranger).await.err().unwrap();
            assert_eq!(error.code(), Some(ErrorCode::Unauthenticated), "{error}");
        }
        let error = connection.login(&node.admin_key()).await.err().unwrap();
        assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
    });
    // Another process of the same user, at once.
    let output = engram_tests::engram_command_at(&node.unix(), &node.admin_key_path())
        .arg("whoami")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
