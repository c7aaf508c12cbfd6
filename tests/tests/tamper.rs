//! Tamper evidence: stored entries are changed or removed in the redb file while the
//! node is stopped; `verify` names exactly the (world, writer, seq) where the chain
//! breaks, and the CLI exits 4.

use std::process::Command;

use engram_client::{NewAtom, Receipt};
use engram_tests::{TestNode, add_principal, binary, run_local, session};
use redb::{ReadableTable, TableDefinition};

/// The store's entries table, as store/FORMAT.md documents it: (world, commit) → the
/// entry's id, then its bytes.
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");

/// Starts a node whose world "ledger" holds two admin atoms, then three of an agent's;
/// returns the agent's receipts and public key, with the node stopped.
fn stopped_ledger() -> (TestNode, Vec<Receipt>, [u8; 32]) {
    let mut node = TestNode::start();
    let (receipts, agent_public) = run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "ledger")
            .await
            .unwrap();
        let agent_key = add_principal(&admin, "agent", &["ledger=rw"]).await;
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let agent = session(&node.tcp(), &agent_key).await;
        engram_client::remember(
            &admin.writer("ledger").unwrap(),
            &[NewAtom::fact("admin one"), NewAtom::fact("admin two")],
        )
        .await
        .unwrap();
        let receipts = engram_client::remember(
            &agent.writer("ledger").unwrap(),
            &[
                NewAtom::fact("agent one"),
                NewAtom::fact("agent two: paid 100"),
                NewAtom::fact("agent three"),
            ],
        )
        .await
        .unwrap();
        let clean = engram_client::verify(&agent.reader("ledger").unwrap())
            .await
            .unwrap();
        assert_eq!((clean.chains, clean.entries, clean.first_bad), (2, 5, None));
        (receipts, agent_key.verifying_key().to_bytes())
    });
    node.stop();
    (node, receipts, agent_public)
}

/// Changes the stopped node's entries table in one write transaction.
fn edit_entries(node: &TestNode, edit: impl FnOnce(&mut redb::Table<'_, (&str, u64), &[u8]>)) {
    let database = redb::Database::open(node.store_path()).unwrap();
    let transaction = database.begin_write().unwrap();
    edit(&mut transaction.open_table(ENTRIES).unwrap());
    transaction.commit().unwrap();
}

/// Changes "paid 100" to "paid 900" in the stored entry of `victim`.
fn change_the_payment(node: &TestNode, victim: &Receipt) {
    edit_entries(node, |entries| {
        let key = ("ledger", victim.commit);
        let mut bytes = entries.get(key).unwrap().unwrap().value().to_vec();
        assert_eq!(bytes[..32], victim.id, "the row starts with the entry's id");
        let position = bytes
            .windows(3)
            .position(|window| window == b"100")
            .expect("the text is stored verbatim");
        bytes[position] = b'9';
        entries.insert(key, bytes.as_slice()).unwrap();
    });
}

/// Restarts the node and returns what `verify` reports as the first bad entry.
fn first_bad_after_restart(node: &mut TestNode) -> ([u8; 32], u64, String) {
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let report = engram_client::verify(&admin.reader("ledger").unwrap())
            .await
            .unwrap();
        report.first_bad.expect("the change is detected")
    })
}

#[test]
fn verify_names_the_edited_entry() {
    let (mut node, receipts, agent_public) = stopped_ledger();
    let victim = receipts[1];
    change_the_payment(&node, &victim);

    let (writer, seq, reason) = first_bad_after_restart(&mut node);
    assert_eq!((writer, seq), (agent_public, victim.seq));
    assert!(reason.contains("hash"), "{reason}");

    let output = Command::new(binary("engram"))
        .args(["--node", node.tcp_address(), "--key"])
        .arg(node.admin_key_path())
        .args(["verify", "ledger"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("writer {} seq 2", hex::encode(agent_public))),
        "{stdout}"
    );
}

#[test]
fn verify_names_a_removed_entry_and_a_cut_chain() {
    let (mut node, receipts, agent_public) = stopped_ledger();
    edit_entries(&node, |entries| {
        entries.remove(("ledger", receipts[1].commit)).unwrap();
    });
    let (writer, seq, reason) = first_bad_after_restart(&mut node);
    assert_eq!((writer, seq), (agent_public, 2));
    assert!(reason.contains("entry 2 is missing"), "{reason}");

    node.stop();
    edit_entries(&node, |entries| {
        entries.remove(("ledger", receipts[2].commit)).unwrap();
    });
    let (writer, seq, reason) = first_bad_after_restart(&mut node);
    assert_eq!((writer, seq), (agent_public, 3));
    assert!(reason.contains("ends at entry 1"), "{reason}");
}

#[test]
fn a_restricted_reader_learns_only_that_a_hidden_entry_failed() {
    let (mut node, receipts, _) = stopped_ledger();
    change_the_payment(&node, &receipts[1]);
    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        // No atom of the ledger carries the label: every entry is hidden from it.
        let reader = engram_client::attenuate_reader(
            &admin.reader("ledger").unwrap(),
            &engram_client::Restriction {
                labels: vec!["public".into()],
                ..engram_client::Restriction::default()
            },
        )
        .await
        .unwrap();
        let report = engram_client::verify(&reader).await.unwrap();
        let (writer, seq, reason) = report.first_bad.expect("the change is detected");
        assert_eq!((writer, seq), ([0; 32], 0), "{reason}");
        assert!(reason.contains("may not see"), "{reason}");
        assert_eq!(report.entries, 0);
    });
}
