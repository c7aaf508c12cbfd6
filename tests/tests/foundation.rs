//! The vertical slice over real processes: log in, graft, remember a batch, get, replay
//! in commit order, heads, verify — over TCP and over the Unix socket.

use engram_client::{Endpoint, NewAtom, engram_schema::engram_capnp::AtomKind};
use engram_tests::{TestNode, run_local, session};

fn round_trip(endpoint_of: fn(&TestNode) -> Endpoint) {
    let node = TestNode::start();
    run_local(async {
        let endpoint = endpoint_of(&node);
        let admin = session(&endpoint, &node.admin_key()).await;
        assert_eq!(admin.principal, "admin");
        assert_eq!(admin.epoch.number, 1);
        engram_client::create_world(&admin.admin().unwrap(), "team/auth")
            .await
            .unwrap();
        // Graft again: the new world's capabilities come with the new graft.
        let admin = session(&endpoint, &node.admin_key()).await;
        let writer = admin.writer("team/auth").unwrap();
        let reader = admin.reader("team/auth").unwrap();

        let batch = vec![
            NewAtom::fact("tokens expire after one hour").labels(&["auth"]),
            NewAtom::new(AtomKind::Decision, "hash passwords with argon2")
                .labels(&["auth", "crypto"])
                .importance(0.9),
            NewAtom::new(AtomKind::Observation, "login latency is 40 ms"),
        ];
        let receipts = engram_client::remember(&writer, &batch).await.unwrap();
        assert_eq!(receipts.len(), 3);
        for (index, receipt) in receipts.iter().enumerate() {
            assert_eq!(receipt.seq, index as u64 + 1);
            assert_eq!(receipt.commit, index as u64 + 1);
        }
        assert_eq!(receipts[0].prev, [0; 32]);
        assert_eq!(receipts[1].prev, receipts[0].id);
        let single = engram_client::remember(&writer, &[NewAtom::fact("one more")])
            .await
            .unwrap();
        assert_eq!((single[0].seq, single[0].prev), (4, receipts[2].id));

        let atom = engram_client::get(&reader, &receipts[1].id).await.unwrap();
        assert_eq!(atom.text, "hash passwords with argon2");
        assert_eq!(atom.kind, AtomKind::Decision);
        assert_eq!(atom.labels, vec!["auth", "crypto"]);
        assert_eq!(atom.importance, 0.9);
        assert_eq!(atom.world, "team/auth");
        assert_eq!(atom.writer, *node.admin_key().verifying_key().as_bytes());

        let (replayed, cursor) = engram_client::replay(&reader, 0, 100).await.unwrap();
        let commits: Vec<u64> = replayed.iter().map(|atom| atom.commit).collect();
        assert_eq!(commits, vec![1, 2, 3, 4]);
        assert_eq!(cursor, 4);
        let (rest, _) = engram_client::replay(&reader, 2, 100).await.unwrap();
        assert_eq!(rest[0].text, "login latency is 40 ms");

        let heads = engram_client::heads(&reader).await.unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!((heads[0].seq, heads[0].id), (4, single[0].id));

        let verification = engram_client::verify(&reader).await.unwrap();
        assert_eq!(verification.first_bad, None);
        assert_eq!((verification.chains, verification.entries), (1, 4));
    });
}

#[test]
fn round_trip_over_tcp() {
    round_trip(TestNode::tcp);
}

#[test]
fn round_trip_over_the_unix_socket() {
    round_trip(TestNode::unix);
}
