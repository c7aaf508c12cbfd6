//! Handoffs (schema `handoffMagic`) from hostile local peers: a peer on the node's Unix
//! socket chooses every byte and every descriptor it sends. Each bad handoff is refused
//! with its code and reason, keeps none of the descriptors it carried, and leaves the
//! socket serving Cap'n Proto clients as before; a genuine one is served by the node
//! until its handoff connection closes.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use capnp::capability::FromClientHook;
use engram_client::engram_schema::engram_capnp::{HANDOFF_MAGIC, world_reader};
use engram_client::spawn::Held;
use engram_tests::{TestNode, admin_with_facts, admin_with_world, handoff, run_local, session};

/// A hostile handoff: its name, the descriptors it carries, the token length it
/// announces, the token bytes it sends, and what the refusal must say.
struct Case(&'static str, Vec<RawFd>, u32, Vec<u8>, &'static str);

/// How many descriptors the node's process holds.
fn descriptors_held(node: &TestNode) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", node.pid()))
        .unwrap()
        .count()
}

#[test]
fn hostile_handoffs_are_refused_with_their_reason_and_keep_no_descriptor() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let token = engram_client::token::save(&Held::Reader(admin.reader("team/auth").unwrap()))
            .await
            .unwrap();
        let length = token.len() as u32;
        let before = descriptors_held(&node);

        let (pair, _other) = UnixStream::pair().unwrap();
        let (pair_2, _other_2) = UnixStream::pair().unwrap();
        let (pipe_read, _pipe_write) = nix::unistd::pipe().unwrap();
        let datagrams = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            None,
            nix::sys::socket::SockFlag::empty(),
        )
        .unwrap();
        let cases: Vec<Case> = vec![
            Case(
                "no descriptor",
                vec![],
                length,
                token.clone(),
                "invalidArgument: a handoff carries exactly one descriptor; this one carried 0",
            ),
            Case(
                "two descriptors",
                vec![pair.as_raw_fd(), pair_2.as_raw_fd()],
                length,
                token.clone(),
                "carried 2",
            ),
            Case(
                "a pipe",
                vec![pipe_read.as_raw_fd()],
                length,
                token.clone(),
                "it is no socket",
            ),
            Case(
                "a datagram socket",
                vec![datagrams.0.as_raw_fd()],
                length,
                token.clone(),
                "it is not a stream socket",
            ),
            Case(
                "a forged token",
                vec![pair.as_raw_fd()],
                32,
                vec![7; 32],
                "unauthenticated: ",
            ),
            Case(
                "a gigabyte token",
                vec![pair.as_raw_fd()],
                1 << 30,
                vec![],
                "unauthenticated: token refused: the handoff announces 1073741824 bytes",
            ),
            Case(
                "a truncated token",
                vec![pair.as_raw_fd()],
                length,
                token[..length as usize / 2].to_vec(),
                "invalidArgument: the handoff ended early",
            ),
        ];
        for Case(case, descriptors, length, token, reason) in cases {
            let mut stream = handoff::send(&node, &descriptors, length, &token);
            if case == "a truncated token" {
                stream.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let refused = tokio::task::spawn_blocking(move || handoff::answer(&mut stream))
                .await
                .unwrap();
            match refused {
                Err(text) => assert!(text.contains(reason), "{case}: {text}"),
                Ok(()) => panic!("{case}: served"),
            }
        }
        // Every descriptor the hostile handoffs carried is closed again.
        assert_eq!(descriptors_held(&node), before);
        // The socket still serves Cap'n Proto clients.
        let again = session(&node.unix(), &node.admin_key()).await;
        engram_client::generation(&again.reader("team/auth").unwrap())
            .await
            .unwrap();
    });
}

/// A reader of a world `team/auth` holding one fact, handed off to `node` as a parent
/// would; this process plays the child: the handoff connection, the bootstrap
/// capability (the reader itself) and the task that runs the child's connection.
async fn handed_off_reader(
    node: &TestNode,
) -> (
    UnixStream,
    world_reader::Client,
    tokio::task::JoinHandle<Result<(), capnp::Error>>,
) {
    let admin = admin_with_facts(node, "team/auth", &["tokens expire after one hour"]).await;
    let token = engram_client::token::save(&Held::Reader(admin.reader("team/auth").unwrap()))
        .await
        .unwrap();
    let child = handoff::child(node, &token).unwrap();
    (child.hold, child.capability.cast_to(), child.connection)
}

/// A handed-off child lives as long as its parent holds the handoff, however long it
/// stays quiet (an agent may think for longer than the node's idle timeout, and cannot
/// connect again): the idle timeout is for connections nobody answers for.
#[test]
fn a_quiet_child_outlives_the_idle_timeout_while_its_handoff_is_held() {
    let node = TestNode::start_with(&["--idle-timeout-ms", "200"]);
    run_local(async {
        let (hold, reader, _connection) = handed_off_reader(&node).await;
        assert_eq!(
            engram_client::replay(&reader, 0, 10).await.unwrap().0.len(),
            1
        );
        // Quiet for five idle timeouts: the behaviour under test, not a wait for it.
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
        let atoms = engram_client::replay(&reader, 0, 10)
            .await
            .expect("the quiet child is still served");
        assert_eq!(atoms.0.len(), 1);
        drop(hold);
    });
}

#[test]
fn a_handed_off_connection_serves_one_capability_while_its_handoff_is_held() {
    let node = TestNode::start();
    run_local(async {
        let (hold, reader, connection) = handed_off_reader(&node).await;
        let atoms = engram_client::replay(&reader, 0, 10).await.unwrap().0;
        assert_eq!(atoms.len(), 1);

        // The parent lets go: the node ends the child's connection.
        drop(hold);
        connection.await.unwrap().ok();
        let error = engram_client::generation(&reader).await.unwrap_err();
        assert!(
            error.to_string().to_lowercase().contains("disconnected"),
            "{error}"
        );
    });
}

#[test]
fn a_handoff_that_stops_halfway_costs_the_node_nothing_while_it_waits() {
    let node = TestNode::start_with(&["--handshake-timeout-ms", "1000"]);
    let mut partial = UnixStream::connect(handoff::socket_path(&node)).unwrap();
    let cpu_before = cpu_ticks(node.pid());
    partial.write_all(&HANDOFF_MAGIC[..4]).unwrap();
    // The node closes it at the handshake timeout, having waited without spinning.
    assert_eq!(handoff::read_to_close(&mut partial), 0);
    let spent = cpu_ticks(node.pid()) - cpu_before;
    // A spin would take the whole second (100 ticks); waiting takes next to none.
    assert!(
        spent < 30,
        "the node spent {spent} ticks of CPU on a silent peer"
    );
}

/// A process's user and system CPU time, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
