//! Online backup and restore through the real CLI and `engramd restore`: a backup taken
//! while a writer keeps writing restores every atom acknowledged before it began, and
//! every chain verifies; a damaged backup, or one whose store does not match its
//! manifest, is refused with nothing left to serve; one backup at a time, its files
//! gone from the node once released.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_client::{ErrorCode, NewAtom, Receipt};
use engram_tests::{TestNode, admin_with_world, engram_cli, run_local, session};

/// Writes one atom at a time into `world` until `stop`, recording each receipt once it
/// is acknowledged.
fn keep_writing(
    node: &TestNode,
    world: &'static str,
    stop: Arc<AtomicBool>,
    receipts: Arc<Mutex<Vec<Receipt>>>,
) -> std::thread::JoinHandle<()> {
    let (endpoint, key) = (node.tcp(), node.admin_key());
    std::thread::spawn(move || {
        run_local(async {
            let writer = session(&endpoint, &key).await.writer(world).unwrap();
            let mut index = 0;
            while !stop.load(Ordering::Acquire) {
                let written = engram_client::remember(
                    &writer,
                    &[NewAtom::fact(format!("written during the backup, {index}"))],
                )
                .await
                .expect("the node keeps serving writes");
                receipts.lock().unwrap().extend(written);
                index += 1;
            }
        })
    })
}

#[test]
fn a_backup_taken_during_writes_restores_all_that_was_acknowledged_before_it() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let writer = admin.writer("w").unwrap();
        // Enough for the copy to take a while.
        for round in 0..10 {
            let atoms: Vec<NewAtom> = (0..500)
                .map(|index| NewAtom::fact(format!("{round}/{index}: {}", "x".repeat(400))))
                .collect();
            engram_client::remember(&writer, &atoms).await.unwrap();
        }
    });
    let (stop, receipts) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let writing = keep_writing(&node, "w", stop.clone(), Arc::clone(&receipts));
    let started = Instant::now();
    while receipts.lock().unwrap().len() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the writer writes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before: Vec<Receipt> = receipts.lock().unwrap().clone();
    let destination = tempfile::tempdir().unwrap();
    let target = destination.path().join("backup");
    let output = engram_cli(
        &node,
        &node.admin_key_path(),
        &["backup", target.to_str().unwrap()],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let during = receipts.lock().unwrap().len() - before.len();
    stop.store(true, Ordering::Release);
    writing.join().unwrap();
    assert!(during > 0, "writes were acknowledged while the backup ran");
    // The node lets the backup go when it sees the CLI's connection close, which it
    // may do after the CLI has exited.
    let released = Instant::now();
    while std::fs::read_dir(node.data_dir().join("backups"))
        .unwrap()
        .next()
        .is_some()
    {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "the node deletes a backup once its holder is gone"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let restored = TestNode::restore_from(&target);
    run_local(async {
        // The restored store has the original's principals: its admin logs in.
        let admin = session(&restored.tcp(), &node.admin_key()).await;
        let reader = admin.reader("w").unwrap();
        for receipt in &before {
            let atom = engram_client::get(&reader, &receipt.id)
                .await
                .expect("every atom acknowledged before the backup is restored");
            assert_eq!(atom.commit, receipt.commit);
        }
        let verification = engram_client::verify(&reader).await.unwrap();
        assert!(verification.first_bad.is_none());
        assert!(verification.entries >= 5_000 + before.len() as u64);
        // It serves writes, continuing the chain.
        let next = engram_client::remember(&admin.writer("w").unwrap(), &[NewAtom::fact("after")])
            .await
            .unwrap();
        assert!(next[0].commit > before.last().unwrap().commit);
    });
}

fn restore(from: &std::path::Path, data: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(engram_tests::binary("engramd"))
        .args(["restore", "--from"])
        .arg(from)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_backup_that_does_not_match_its_manifest_is_refused() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        engram_client::remember(&admin.writer("w").unwrap(), &[NewAtom::fact("one")])
            .await
            .unwrap();
    });
    let scratch = tempfile::tempdir().unwrap();
    let backup = scratch.path().join("backup");
    let output = engram_cli(
        &node,
        &node.admin_key_path(),
        &["backup", backup.to_str().unwrap()],
    );
    assert!(output.status.success());

    // A file changed: refused before anything is written.
    let damaged = scratch.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for file in ["manifest.json", "engram.redb", "audit.redb"] {
        std::fs::copy(backup.join(file), damaged.join(file)).unwrap();
    }
    let mut bytes = std::fs::read(damaged.join("engram.redb")).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(damaged.join("engram.redb"), bytes).unwrap();
    let data = scratch.path().join("from-damaged");
    let (code, stderr) = restore(&damaged, &data);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("engram.redb does not match the manifest"),
        "{stderr}"
    );
    assert!(!data.join("engram.redb").exists());

    // The files match, but the manifest claims a later commit: refused once the store
    // is opened, and the restored files are removed.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    manifest["lastCommit"] = (manifest["lastCommit"].as_u64().unwrap() + 1).into();
    std::fs::write(backup.join("manifest.json"), manifest.to_string()).unwrap();
    let data = scratch.path().join("from-lying");
    let (code, stderr) = restore(&backup, &data);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("does not hold what the manifest says"),
        "{stderr}"
    );
    assert!(
        !data.join("engram.redb").exists(),
        "nothing is left to serve"
    );

    // No manifest, no backup.
    std::fs::remove_file(backup.join("manifest.json")).unwrap();
    let (code, stderr) = restore(&backup, &scratch.path().join("none"));
    assert_eq!(code, 1);
    assert!(stderr.contains("manifest.json"), "{stderr}");
}

#[test]
fn one_backup_at_a_time_and_only_its_own_files() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let admin_capability = admin.admin().unwrap();
        let held = admin_capability
            .backup_request()
            .send()
            .promise
            .await
            .unwrap()
            .get()
            .unwrap()
            .get_backup()
            .unwrap();
        let second = admin_capability.backup_request().send().promise.await;
        let error = engram_client::ClientError::from(second.err().expect("refused"));
        assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted));
        for name in ["../engram.redb", "node.key", "manifest.json"] {
            let mut request = held.read_request();
            request.get().set_file(name);
            request.get().set_length(16);
            let error = engram_client::ClientError::from(
                request.send().promise.await.err().expect("refused"),
            );
            assert_eq!(error.code(), Some(ErrorCode::NotFound), "{name}");
        }
        let mut request = held.read_request();
        request.get().set_file("engram.redb");
        request.get().set_length(64 * 1024 * 1024);
        let error =
            engram_client::ClientError::from(request.send().promise.await.err().expect("refused"));
        assert_eq!(error.code(), Some(ErrorCode::InvalidArgument));
        // Released, another may be made.
        drop(held);
        let started = Instant::now();
        loop {
            match admin_capability.backup_request().send().promise.await {
                Ok(_) => break,
                Err(error) => {
                    let error = engram_client::ClientError::from(error);
                    assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted));
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "never released"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}
