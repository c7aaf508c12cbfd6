//! Sandboxed children: `engram spawn` starts a child, in a network namespace of its own,
//! whose only authority is one attenuated capability served on its descriptor 3; the
//! child sees what the restriction lets through, cannot reach the node by itself, and
//! its capability fails when the parent's epoch moves on. Over the Unix socket the node
//! serves the child itself (a handoff); over TCP the parent forwards: both are tested.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use engram_client::spawn::{Held, spawn};
use engram_client::{Endpoint, NewAtom};
use engram_tests::{
    TestNode, add_principal, admin_with_facts, admin_with_world, binary, engram_command,
    engram_command_at, run_local, session,
};

#[test]
fn a_child_handed_off_to_the_node_holds_one_narrowed_capability_and_nothing_else() {
    let node = TestNode::start();
    holds_one_narrowed_capability_and_nothing_else(&node, &node.unix());
}

#[test]
fn a_child_its_parent_forwards_for_holds_one_narrowed_capability_and_nothing_else() {
    let node = TestNode::start();
    holds_one_narrowed_capability_and_nothing_else(&node, &node.tcp());
}

fn holds_one_narrowed_capability_and_nothing_else(node: &TestNode, endpoint: &Endpoint) {
    run_local(async {
        let admin = admin_with_world(node, "team/auth").await;
        engram_client::remember(
            &admin.writer("team/auth").unwrap(),
            &[
                NewAtom::fact("tokens expire after one hour").labels(&["public"]),
                NewAtom::fact("the signing key is in the vault").labels(&["secret"]),
            ],
        )
        .await
        .unwrap();

        let mut parent = engram_command_at(endpoint, &node.admin_key_path())
            .args(["spawn", "--reader", "team/auth"])
            .args(["--restrict", "labels=public,kinds=fact", "--"])
            .args(["unshare", "--net"])
            .arg(binary("child"))
            .args(["--try-node", node.tcp_address(), "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running engram spawn");
        let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let waiting = line == "child: waiting";
            printed.push(line);
            if waiting {
                break;
            }
        }
        let text = printed.join("\n");
        assert!(
            text.contains("child: holds a reader of team/auth"),
            "{text}"
        );
        assert!(
            text.contains("child: cannot reach the node directly"),
            "{text}"
        );
        assert!(
            text.contains("sees \"tokens expire after one hour\""),
            "{text}"
        );
        assert!(!text.contains("vault"), "{text}");
        // Nothing it holds can be saved to outlive its parent.
        for which in ["it", "a narrowing of it"] {
            assert!(
                text.contains(&format!("child: saving {which} failed: permissionDenied")),
                "{text}"
            );
        }

        // The operator advances the epoch: the child's capability fails on its own.
        engram_client::advance_epoch(&admin.admin().unwrap(), &[7; 32])
            .await
            .unwrap();
        parent.stdin.take().unwrap().write_all(b"again\n").unwrap();
        let rest: Vec<String> = lines.map(|line| line.unwrap()).collect();
        let rest = rest.join("\n");
        assert!(
            rest.contains("child: reading again failed: staleEpoch"),
            "{rest}"
        );
        assert!(parent.wait().unwrap().success());
        // The node is untouched by it all.
        let admin = session(&node.tcp(), &node.admin_key()).await;
        assert_eq!(admin.epoch.number, 2);
    });
}

#[test]
fn removing_the_parents_principal_fails_its_running_child() {
    let node = TestNode::start();
    let directory = tempfile::tempdir().unwrap();
    for (index, endpoint) in [node.unix(), node.tcp()].into_iter().enumerate() {
        run_local(async {
            let admin = if index == 0 {
                admin_with_facts(&node, "team/auth", &["tokens expire after one hour"]).await
            } else {
                session(&node.tcp(), &node.admin_key()).await
            };
            let key = add_principal(&admin, "agent", &["team/auth=r"]).await;
            let key_path = directory.path().join(format!("agent-{index}.key"));
            engram_client::keyfile::write_new(&key_path, &key).unwrap();
            let (mut parent, lines) = spawn_waiting_reader(&endpoint, &key_path);
            // The operator removes the parent's principal; the parent does nothing.
            engram_client::remove_principal(&admin.admin().unwrap(), "agent")
                .await
                .unwrap();
            parent.stdin.take().unwrap().write_all(b"again\n").unwrap();
            let rest: Vec<String> = lines.map(|line| line.unwrap()).collect();
            assert!(
                rest.iter()
                    .any(|line| line.starts_with("child: reading again failed: permissionDenied")),
                "{endpoint}: {rest:?}"
            );
            assert!(parent.wait().unwrap().success());
        });
    }
}

#[test]
fn a_spawned_writer_writes_as_its_parent_within_the_restriction() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        let output = engram_command(&node, &node.admin_key_path())
            .args(["spawn", "--writer", "team/auth", "--label", "public", "--"])
            .arg(binary("child"))
            .output()
            .expect("running engram spawn");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("child: remembered at commit 1"), "{stdout}");
        let atoms = engram_client::replay(&admin.reader("team/auth").unwrap(), 0, 10)
            .await
            .unwrap()
            .0;
        assert_eq!(atoms.len(), 1);
        assert_eq!(atoms[0].text, "written by a child");
        // A child given a narrower writer is refused what the restriction forbids: its
        // exit code comes back through spawn.
        let refused = engram_command(&node, &node.admin_key_path())
            .args(["spawn", "--writer", "team/auth", "--label", "secret", "--"])
            .arg(binary("child"))
            .output()
            .expect("running engram spawn");
        assert_eq!(refused.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("permissionDenied"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    });
}

#[test]
fn the_child_is_cut_off_when_its_parent_exits() {
    let node = TestNode::start();
    for endpoint in [node.unix(), node.tcp()] {
        child_cut_off_when_its_parent_exits(&node, &endpoint);
    }
}

fn child_cut_off_when_its_parent_exits(node: &TestNode, endpoint: &Endpoint) {
    run_local(async {
        if matches!(endpoint, Endpoint::Unix(_)) {
            admin_with_world(node, "team/auth").await;
        }
        let (mut parent, lines) = spawn_waiting_reader(endpoint, &node.admin_key_path());
        // The child shares its parent's standard input and output: they outlive it.
        let mut input = parent.stdin.take().unwrap();
        parent.kill().unwrap();
        parent.wait().unwrap();
        input.write_all(b"again\n").unwrap();
        let rest: Vec<String> = lines.map(|line| line.unwrap()).collect();
        assert!(
            rest.iter()
                .any(|line| line.starts_with("child: reading again failed")
                    && line.to_lowercase().contains("disconnected")),
            "{rest:?}"
        );
    });
}

#[test]
fn a_child_that_sends_garbage_is_cut_off_and_its_siblings_go_on() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_facts(&node, "team/auth", &["tokens expire after one hour"]).await;
        // This test process is the parent of three children sharing one capability.
        let held = Held::Reader(admin.reader("team/auth").unwrap());
        let mut good = std::process::Command::new(binary("child"));
        good.arg("--wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut good = spawn(
            &node.tcp(),
            &held,
            "team/auth",
            &mut good,
            &Default::default(),
        )
        .await
        .unwrap();
        let mut good_lines = BufReader::new(good.stdout.take().unwrap()).lines();
        let mut good_input = good.stdin.take().unwrap();
        let waiting = tokio::task::spawn_blocking(move || {
            let seen: Vec<String> = good_lines
                .by_ref()
                .map(|line| line.unwrap())
                .take_while(|line| line != "child: waiting")
                .collect();
            (seen, good_lines)
        });
        let (seen, good_lines) = waiting.await.unwrap();
        assert!(
            seen.contains(&"child: sees \"tokens expire after one hour\"".to_owned()),
            "{seen:?}"
        );

        // Hostile children: bytes that are no Cap'n Proto message, and a message that
        // claims a gigabyte. Each is cut off (its descriptor reaches end of file).
        for garbage in [
            "printf 'GARBAGE!%.0s' $(seq 512) >&3",
            "printf '\\000\\000\\000\\000\\000\\000\\000\\010' >&3",
        ] {
            let mut hostile = std::process::Command::new("sh");
            hostile
                .args([
                    "-c",
                    &format!("{garbage}; cat <&3 >/dev/null; echo cut off"),
                ])
                .stdout(Stdio::piped());
            let hostile = spawn(
                &node.tcp(),
                &held,
                "team/auth",
                &mut hostile,
                &Default::default(),
            )
            .await
            .unwrap();
            let output = tokio::task::spawn_blocking(move || hostile.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&output.stdout), "cut off\n");
        }

        // The well-behaved sibling, and the parent's own capability, go on.
        good_input.write_all(b"again\n").unwrap();
        let rest = tokio::task::spawn_blocking(move || {
            good_lines.map(|line| line.unwrap()).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(
            rest.contains(&"child: sees 1 atoms again".to_owned()),
            "{rest:?}"
        );
        assert!(good.wait().unwrap().success());
        engram_client::generation(&admin.reader("team/auth").unwrap())
            .await
            .unwrap();
    });
}

/// The most a parent may hold for a child that never reads, here: its unread bound
/// (16 MiB by default), what it has in flight, and the process itself.
const PARENT_PEAK_BYTES_MAX: u64 = 128 * 1024 * 1024;

#[test]
fn a_child_that_never_reads_its_answers_is_bounded_and_cut_off() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/auth").await;
        // 64 atoms of 60 KiB: each replay answers about 4 MiB.
        let text = "x".repeat(60 * 1024);
        let atoms: Vec<NewAtom> = (0..64)
            .map(|index| NewAtom::fact(format!("{index} {text}")))
            .collect();
        engram_client::remember(&admin.writer("team/auth").unwrap(), &atoms)
            .await
            .unwrap();

        // 200 replays unread would be 800 MiB held by a parent that read them all.
        let mut parent = engram_command(&node, &node.admin_key_path())
            .args([
                "spawn",
                "--reader",
                "team/auth",
                "--stall-timeout-ms",
                "1000",
            ])
            .arg("--")
            .arg(binary("flooder"))
            .args(["--calls", "200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running engram spawn");
        let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
        let said = lines.next().unwrap().unwrap();
        assert!(said.starts_with("flooder: cut off"), "{said}");
        let peak = peak_memory(parent.id());
        assert!(
            peak < PARENT_PEAK_BYTES_MAX,
            "the parent held {peak} bytes for a child that read nothing"
        );
        parent.stdin.take().unwrap().write_all(b"done\n").unwrap();
        assert!(parent.wait().unwrap().success());
        // The node, and the parent's principal, go on.
        engram_client::generation(&admin.reader("team/auth").unwrap())
            .await
            .unwrap();
    });
}

/// A process's peak resident memory (VmHWM), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kilobytes: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|number| number.parse().ok())
        .unwrap();
    kilobytes * 1024
}

/// `engram spawn --reader team/auth -- child --wait` as the principal of `key`, once the
/// child has read and waits for a line; the parent and the rest of what it prints.
fn spawn_waiting_reader(
    endpoint: &Endpoint,
    key: &std::path::Path,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut parent = engram_command_at(endpoint, key)
        .args(["spawn", "--reader", "team/auth", "--"])
        .arg(binary("child"))
        .arg("--wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running engram spawn");
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap() == "child: waiting" {
            break;
        }
    }
    (parent, lines)
}

/// A descriptor the spawner inherited without close-on-exec is closed in the child: the
/// child holds its standard streams and its capability, nothing else.
#[test]
fn a_child_inherits_no_descriptor_and_no_credential_but_its_capability() {
    let node = TestNode::start();
    run_local(async {
        admin_with_world(&node, "team/auth").await;
    });
    let file = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: dup of a descriptor this test owns; the copy has no close-on-exec flag,
    // so `engram spawn` inherits it, as a process started by a careless parent would.
    let leaked = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&file)) };
    assert!(leaked > 3, "dup failed");
    for endpoint in [node.unix(), node.tcp()] {
        let output = engram_command_at(&endpoint, &node.admin_key_path())
            // The parent's key, named in its environment as users do.
            .env("ENGRAM_KEY", node.admin_key_path())
            .args(["spawn", "--reader", "team/auth", "--", "sh", "-c"])
            .arg(format!(
                "[ -e /proc/self/fd/3 ] && echo has-3; \
                 [ -e /proc/self/fd/{leaked} ] && echo leaked || echo closed; \
                 [ -z \"$ENGRAM_KEY\" ] && echo no-key || echo key \"$ENGRAM_KEY\""
            ))
            .output()
            .expect("running engram spawn");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}");
        assert_eq!(text, "has-3\nclosed\nno-key\n", "over {endpoint}");
    }
    // SAFETY: the descriptor dup returned above, closed once.
    unsafe { libc::close(leaked) };
}
