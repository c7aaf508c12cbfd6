//! Tamper evidence: one byte of one stored atom is changed in the redb file while the
//! node is stopped; `verify` names exactly that (world, writer, seq), and the CLI exits 4.

use std::process::Command;

use engram_client::NewAtom;
use engram_tests::{TestNode, add_principal, binary, run_local, session};
use redb::{ReadableTable, TableDefinition};

/// The store's atoms table, as store/FORMAT.md documents it: id → entry bytes.
const ATOMS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("atoms");

#[test]
fn verify_names_the_edited_entry() {
    let mut node = TestNode::start();
    let (victim, agent_public) = run_local(async {
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
        (receipts[1], agent_key.verifying_key().to_bytes())
    });
    node.stop();

    {
        let database = redb::Database::open(node.store_path()).unwrap();
        let transaction = database.begin_write().unwrap();
        {
            let mut atoms = transaction.open_table(ATOMS).unwrap();
            let mut bytes = atoms.get(victim.id).unwrap().unwrap().value().to_vec();
            let position = bytes
                .windows(3)
                .position(|window| window == b"100")
                .expect("the text is stored verbatim");
            bytes[position] = b'9';
            atoms.insert(victim.id, bytes.as_slice()).unwrap();
        }
        transaction.commit().unwrap();
    }

    node.restart();
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let report = engram_client::verify(&admin.reader("ledger").unwrap())
            .await
            .unwrap();
        let (writer, seq, reason) = report.first_bad.expect("the edit is detected");
        assert_eq!((writer, seq), (agent_public, victim.seq));
        assert!(reason.contains("hash"), "{reason}");
    });

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
