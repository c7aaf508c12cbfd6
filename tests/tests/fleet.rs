//! Fleets: three `engramd` nodes follow one epoch, one set of principals and grants and
//! one set of worlds, kept in NATS JetStream (a real `nats-server` on loopback). An
//! advance on one node revokes capabilities on every node; two concurrent advances
//! cannot both win; a principal removed on one node is revoked on all; a node cut off
//! from NATS fails closed within its lease and serves again once it has caught up.

use std::time::{Duration, Instant};

use engram_client::{ClientError, ErrorCode, NewAtom, Session};
use engram_tests::fleet::Fleet;
use engram_tests::{add_principal, assert_code, run_local, session};

const LEASE: Duration = Duration::from_millis(1_500);
/// How long a change may take to reach every node on a loaded machine (usually
/// milliseconds): a bound for waiting, not a property of the fleet.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Polls `probe` until it answers `code`, and returns how long it went on succeeding:
/// from then on what it uses is no longer served (`unavailable` while a node catches
/// up, then `code`). Fails if it still succeeds after `deadline` (what the fleet's lease
/// bounds), or if `code` has not come after five times that (a slow machine may take a
/// while to apply what it was refused for).
async fn until_code<T, F, P>(deadline: Duration, code: ErrorCode, mut probe: P) -> Duration
where
    F: std::future::Future<Output = Result<T, ClientError>>,
    P: FnMut() -> F,
{
    let started = Instant::now();
    let mut refused = None;
    loop {
        // A call sent before the deadline may be served, however long its answer takes.
        let sent = started.elapsed();
        match probe().await {
            Err(error) if error.code() == Some(code) => return refused.unwrap_or(sent),
            Err(error) if error.code() == Some(ErrorCode::Unavailable) => {
                refused.get_or_insert(sent);
            }
            Err(error) => panic!("expected {code}, got {error}"),
            Ok(_) => assert!(
                sent < deadline,
                "still served {sent:?} after it should have stopped (at most {deadline:?})"
            ),
        }
        assert!(
            started.elapsed() < deadline * 5,
            "no {code} within {:?}",
            deadline * 5
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session on `node`, logging in again while an epoch the fleet advanced is being
/// applied there (the admin's key is valid throughout).
async fn fresh_session(node: &engram_tests::TestNode, key: &ed25519_dalek::SigningKey) -> Session {
    let started = Instant::now();
    loop {
        let connection = engram_client::connect(&node.tcp()).await.unwrap();
        let grafted = match connection.login(key).await {
            Ok(membrane) => membrane.graft().await,
            Err(error) => Err(error),
        };
        match grafted {
            Ok(session) => return session,
            // Unavailable while an advance is applied; a login whose challenge came
            // before the advance is refused (its nonce is of the older epoch).
            Err(error)
                if matches!(
                    error.code(),
                    Some(ErrorCode::Unavailable | ErrorCode::Unauthenticated)
                ) =>
            {
                assert!(started.elapsed() < PROPAGATION, "still refused: {error}")
            }
            Err(error) => panic!("cannot log in: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn epoch_of(session: &Session) -> u64 {
    engram_client::current_epoch(&session.admin().unwrap())
        .await
        .unwrap()
        .number
}

#[test]
fn an_advance_on_one_node_revokes_capabilities_on_every_node() {
    let fleet = Fleet::start(3, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let on_a = session(&fleet.nodes[0].tcp(), &admin_key).await;
        engram_client::create_world(&on_a.admin().unwrap(), "shared")
            .await
            .unwrap();
        let agent_key = add_principal(&on_a, "agent", &["shared=rw"]).await;
        // The world and the principal reach every node; the first node's admin key,
        // which seeded the fleet, logs in everywhere, and the others' own admin keys
        // are no principals of the fleet (their logs say so).
        for node in &fleet.nodes[1..] {
            node.until_logged("is not a principal of the fleet", 1, PROPAGATION)
                .await;
            let connection = engram_client::connect(&node.tcp()).await.unwrap();
            assert_code(
                connection.login(&node.admin_key()).await,
                ErrorCode::Unauthenticated,
            );
        }
        let mut agents = Vec::new();
        for node in &fleet.nodes[1..] {
            let agent = until_session(node, &agent_key).await;
            engram_client::ask(&agent.reader("shared").unwrap(), &Default::default())
                .await
                .unwrap();
            agents.push(agent);
        }
        let before = epoch_of(&on_a).await;
        let advanced = engram_client::advance_epoch(&on_a.admin().unwrap(), &[7; 32])
            .await
            .unwrap();
        assert_eq!(advanced.number, before + 1);
        for agent in &agents {
            let reader = agent.reader("shared").unwrap();
            until_code(LEASE, ErrorCode::StaleEpoch, || async {
                engram_client::ask(&reader, &Default::default()).await
            })
            .await;
        }
        // Grafting again on any node gets the new epoch.
        for node in &fleet.nodes {
            let admin = fresh_session(node, &admin_key).await;
            assert_eq!(admin.epoch.number, before + 1);
            assert_eq!(admin.epoch.head, [7; 32]);
        }
    });
}

/// A session on `node` as soon as the principal of `key` has reached it.
async fn until_session(node: &engram_tests::TestNode, key: &ed25519_dalek::SigningKey) -> Session {
    until_login(node, key).await.graft().await.unwrap()
}

/// A login on `node` as soon as the principal of `key` has reached it.
async fn until_login(
    node: &engram_tests::TestNode,
    key: &ed25519_dalek::SigningKey,
) -> engram_client::Membrane {
    let started = Instant::now();
    loop {
        let connection = engram_client::connect(&node.tcp()).await.unwrap();
        match connection.login(key).await {
            Ok(membrane) => return membrane,
            Err(error) => assert!(
                started.elapsed() < PROPAGATION,
                "the principal did not reach the node: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn of_two_concurrent_advances_exactly_one_wins() {
    let fleet = Fleet::start(3, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        for round in 0..5u8 {
            let on_b = fresh_session(&fleet.nodes[1], &admin_key).await;
            let on_c = fresh_session(&fleet.nodes[2], &admin_key).await;
            let before = on_b.epoch.number;
            assert_eq!(
                on_c.epoch.number, before,
                "the nodes agree before round {round}"
            );
            let (admin_b, admin_c) = (on_b.admin().unwrap(), on_c.admin().unwrap());
            let (head_b, head_c) = ([round; 32], [round + 100; 32]);
            let (b, c) = futures::join!(
                engram_client::advance_epoch(&admin_b, &head_b),
                engram_client::advance_epoch(&admin_c, &head_c),
            );
            let winners = [&b, &c].iter().filter(|answer| answer.is_ok()).count();
            assert_eq!(winners, 1, "round {round}: b {b:?}, c {c:?}");
            let (won, lost) = if b.is_ok() { (b, c) } else { (c, b) };
            assert_eq!(won.unwrap().number, before + 1);
            // The loser's capability was issued in the epoch the winner ended.
            assert_code(lost, ErrorCode::StaleEpoch);
            // Every node ends at the winner's epoch, never two past it.
            for node in &fleet.nodes {
                let started = Instant::now();
                loop {
                    let epoch = epoch_of(&fresh_session(node, &admin_key).await).await;
                    assert!(epoch <= before + 1, "two advances won");
                    if epoch == before + 1 {
                        break;
                    }
                    assert!(started.elapsed() < PROPAGATION, "a node stayed behind");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
}

#[test]
fn a_principal_removed_on_one_node_is_revoked_on_every_node() {
    let fleet = Fleet::start(3, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let on_a = session(&fleet.nodes[0].tcp(), &admin_key).await;
        engram_client::create_world(&on_a.admin().unwrap(), "team")
            .await
            .unwrap();
        let agent_key = add_principal(&on_a, "agent", &["team=rw"]).await;
        let agent_on_c = until_session(&fleet.nodes[2], &agent_key).await;
        let writer = agent_on_c.writer("team").unwrap();
        engram_client::remember(&writer, &[NewAtom::fact("while granted")])
            .await
            .unwrap();
        // Narrowing its grants on B revokes its capability on C...
        let on_b = session(&fleet.nodes[1].tcp(), &admin_key).await;
        engram_client::set_grants(
            &on_b.admin().unwrap(),
            "agent",
            &[engram_client::Grant::parse("team=r").unwrap()],
        )
        .await
        .unwrap();
        until_code(LEASE, ErrorCode::PermissionDenied, || async {
            engram_client::remember(&writer, &[NewAtom::fact("after narrowing")]).await
        })
        .await;
        let agent_on_c = session(&fleet.nodes[2].tcp(), &agent_key).await;
        assert!(
            agent_on_c.writer("team").is_err(),
            "no writer after narrowing"
        );
        let reader = agent_on_c.reader("team").unwrap();
        // ...and removing it on B does too, and refuses its logins everywhere.
        engram_client::remove_principal(&on_b.admin().unwrap(), "agent")
            .await
            .unwrap();
        until_code(LEASE, ErrorCode::PermissionDenied, || async {
            engram_client::ask(&reader, &Default::default()).await
        })
        .await;
        for node in &fleet.nodes {
            until_code(LEASE, ErrorCode::Unauthenticated, || async {
                let connection = engram_client::connect(&node.tcp()).await.unwrap();
                connection.login(&agent_key).await
            })
            .await;
        }
        // A name the fleet holds cannot be added again on another node.
        let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let on_c = session(&fleet.nodes[2].tcp(), &admin_key).await;
        engram_client::add_principal(
            &on_c.admin().unwrap(),
            "dup",
            other.verifying_key().as_bytes(),
            false,
            &[],
        )
        .await
        .unwrap();
        assert_code(
            engram_client::add_principal(
                &on_a.admin().unwrap(),
                "dup",
                other.verifying_key().as_bytes(),
                false,
                &[],
            )
            .await,
            ErrorCode::Conflict,
        );
    });
}

#[test]
fn a_node_cut_off_from_nats_fails_closed_and_serves_again_once_caught_up() {
    let fleet = Fleet::start(3, LEASE, &["--metrics", "127.0.0.1:0"]);
    let readyz = || {
        let address = fleet.nodes[2].metrics_address().expect("--metrics");
        engram_tests::http_get(address, "/readyz")
    };
    let admin_key = fleet.admin_key();
    run_local(async {
        let on_a = session(&fleet.nodes[0].tcp(), &admin_key).await;
        engram_client::create_world(&on_a.admin().unwrap(), "w")
            .await
            .unwrap();
        let reader = (until_world(&fleet.nodes[2], &admin_key, "w").await)
            .reader("w")
            .unwrap();
        engram_client::ask(&reader, &Default::default())
            .await
            .unwrap();
        assert_eq!(readyz().0, 200, "{readyz:?}", readyz = readyz());

        fleet.proxies[2].cut();
        // Its last confirmation came before the cut: it serves at most the lease more
        // (and the probe's own round trips).
        until_code(
            LEASE + Duration::from_millis(300),
            ErrorCode::Unavailable,
            || async { engram_client::ask(&reader, &Default::default()).await },
        )
        .await;
        // Logins fail closed too, and the node says it is not ready, so that a load
        // balancer sends its calls elsewhere.
        let connection = engram_client::connect(&fleet.nodes[2].tcp()).await.unwrap();
        assert_code(connection.login(&admin_key).await, ErrorCode::Unavailable);
        let (status, why) = readyz();
        assert_eq!(status, 503, "{why}");
        assert!(why.contains("not in touch with its fleet"), "{why}");
        let address = fleet.nodes[2].metrics_address().unwrap();
        let scraped = engram_tests::http_get(address, "/metrics").1;
        let age: f64 = scraped
            .lines()
            .find_map(|line| line.strip_prefix("engram_fleet_confirmation_age_seconds "))
            .expect("the confirmation's age")
            .parse()
            .unwrap();
        assert!(age >= LEASE.as_secs_f64(), "{age}");

        // Meanwhile the fleet moves on.
        let advanced = engram_client::advance_epoch(&on_a.admin().unwrap(), &[3; 32])
            .await
            .unwrap();

        fleet.proxies[2].restore();
        // Back in touch, it serves again, under the fleet's new epoch only.
        until_code(LEASE * 2, ErrorCode::StaleEpoch, || async {
            engram_client::ask(&reader, &Default::default()).await
        })
        .await;
        let again = fresh_session(&fleet.nodes[2], &admin_key).await;
        assert_eq!(again.epoch.number, advanced.number);
        engram_client::ask(&again.reader("w").unwrap(), &Default::default())
            .await
            .unwrap();
        assert_eq!(readyz().0, 200, "{readyz:?}", readyz = readyz());
    });
}

/// A session on `node` whose capabilities include `world`, once the world reached it.
async fn until_world(
    node: &engram_tests::TestNode,
    key: &ed25519_dalek::SigningKey,
    world: &str,
) -> Session {
    let started = Instant::now();
    loop {
        let session = session(&node.tcp(), key).await;
        if session.reader(world).is_ok() {
            return session;
        }
        assert!(
            started.elapsed() < LEASE,
            "world {world} did not reach the node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `world` on the fleet's first node: a session there that holds it.
async fn created_on_first(fleet: &Fleet, key: &ed25519_dalek::SigningKey, world: &str) -> Session {
    let on_a = session(&fleet.nodes[0].tcp(), key).await;
    engram_client::create_world(&on_a.admin().unwrap(), world)
        .await
        .unwrap();
    until_world(&fleet.nodes[0], key, world).await
}

/// Waits until `world` on `session`'s node holds `atoms` atoms.
async fn until_atoms(session: &Session, world: &str, atoms: u64) {
    let reader = session.reader(world).unwrap();
    let started = Instant::now();
    loop {
        let generation = engram_client::generation(&reader).await.unwrap();
        if generation.atoms == atoms {
            return;
        }
        assert!(
            generation.atoms < atoms,
            "more atoms than written: {generation:?}"
        );
        assert!(
            started.elapsed() < PROPAGATION,
            "world {world} holds {} of {atoms} atoms",
            generation.atoms
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn every_node_holds_every_world_with_identical_chains() {
    let fleet = Fleet::start(3, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let on_a = session(&fleet.nodes[0].tcp(), &admin_key).await;
        let worlds = ["w0", "w1", "w2"];
        for world in worlds {
            engram_client::create_world(&on_a.admin().unwrap(), world)
                .await
                .unwrap();
        }
        // Each node writes a world of its own, in batches; every write is acknowledged
        // once the world's stream holds it.
        let mut receipts = Vec::new();
        for (index, world) in worlds.iter().enumerate() {
            let writer = until_world(&fleet.nodes[index], &admin_key, world).await;
            let writer = writer.writer(world).unwrap();
            for batch in 0..5 {
                let atoms: Vec<NewAtom> = (0..4)
                    .map(|atom| NewAtom::fact(format!("{world} batch {batch} atom {atom}")))
                    .collect();
                receipts.extend(
                    engram_client::remember(&writer, &atoms)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|receipt| (*world, receipt)),
                );
            }
        }
        // A world is written by one node: another refuses, naming the owner.
        let on_b = until_world(&fleet.nodes[1], &admin_key, "w0").await;
        let refused = engram_client::remember(&on_b.writer("w0").unwrap(), &[NewAtom::fact("x")])
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
        assert!(
            refused.to_string().contains(fleet.nodes[0].tcp_address()),
            "the refusal names the owner: {refused}"
        );
        // Every node ends with every atom, the same chains, and they verify.
        let mut heads = Vec::new();
        for node in &fleet.nodes {
            let admin = session(&node.tcp(), &admin_key).await;
            let mut node_heads = Vec::new();
            for world in worlds {
                until_atoms(&admin, world, 20).await;
                let reader = admin.reader(world).unwrap();
                let verification = engram_client::verify(&reader).await.unwrap();
                assert_eq!(verification.first_bad, None);
                assert_eq!(verification.entries, 20);
                node_heads.push(engram_client::heads(&reader).await.unwrap());
            }
            for (world, receipt) in &receipts {
                let atom = engram_client::get(&admin.reader(world).unwrap(), &receipt.id)
                    .await
                    .unwrap();
                assert_eq!((atom.seq, atom.commit), (receipt.seq, receipt.commit));
            }
            heads.push(node_heads);
        }
        assert!(heads.windows(2).all(|pair| pair[0] == pair[1]), "{heads:?}");
    });
}

#[test]
fn the_owner_killed_mid_storm_loses_nothing_acknowledged() {
    let mut fleet = Fleet::start(3, LEASE, &[]);
    let admin_key = fleet.admin_key();
    let endpoints: Vec<_> = fleet.nodes.iter().map(|node| node.tcp()).collect();
    let (before_kill, after_kill) = (30, 20);
    let acknowledged = run_local(async {
        let on_a = session(&endpoints[0], &admin_key).await;
        engram_client::create_world(&on_a.admin().unwrap(), "storm")
            .await
            .unwrap();
        for node in &fleet.nodes {
            until_world(node, &admin_key, "storm").await;
        }
        // A writer that reaches the first node it can: the owner until it dies.
        let acquire = || async {
            let mut last = None;
            for endpoint in &endpoints {
                match engram_client::connect(endpoint).await {
                    Ok(connection) => {
                        let membrane = connection.login(&admin_key).await?;
                        return membrane.graft().await?.writer("storm");
                    }
                    Err(error) => last = Some(error),
                }
            }
            Err(last.unwrap())
        };
        let mut acknowledged = Vec::new();
        let mut in_flight = None;
        let mut killed_at = None;
        let mut first_after_kill = None;
        for index in 0..before_kill + after_kill {
            let atom = [NewAtom::fact(format!("storm atom {index}"))];
            let key = engram_client::IdempotencyKey::random().unwrap();
            if index == before_kill {
                // One write in flight as the owner dies: it is done once or not at all,
                // and its retry on another node says which.
                let writer = acquire().await.unwrap();
                let sent = {
                    let (atom, key) = (atom.clone(), key.clone());
                    tokio::task::spawn_local(async move {
                        engram_client::remember_keyed(&writer, &atom, &key).await
                    })
                };
                tokio::task::yield_now().await;
                fleet.nodes[0].kill();
                killed_at = Some(Instant::now());
                in_flight = Some(sent);
            }
            let remembered = engram_client::remember_retrying(acquire, &atom, &key, 12)
                .await
                .unwrap_or_else(|error| panic!("atom {index} was not written: {error}"));
            if let (Some(killed_at), None) = (killed_at, first_after_kill) {
                first_after_kill = Some(killed_at.elapsed());
            }
            acknowledged.push(remembered.receipts[0]);
        }
        let _ = in_flight.unwrap().await;
        eprintln!(
            "failover: writes accepted again {:?} after the owner was killed (lease {LEASE:?})",
            first_after_kill.unwrap()
        );
        acknowledged
    });
    // Every acknowledged atom is on both survivors, once, and the chains verify.
    run_local(async {
        let mut heads = Vec::new();
        for node in &fleet.nodes[1..] {
            let admin = session(&node.tcp(), &admin_key).await;
            until_atoms(&admin, "storm", acknowledged.len() as u64).await;
            let reader = admin.reader("storm").unwrap();
            for receipt in &acknowledged {
                let atom = engram_client::get(&reader, &receipt.id).await.unwrap();
                assert_eq!((atom.seq, atom.commit), (receipt.seq, receipt.commit));
            }
            let verification = engram_client::verify(&reader).await.unwrap();
            assert_eq!(verification.first_bad, None);
            heads.push(engram_client::heads(&reader).await.unwrap());
        }
        assert_eq!(heads[0], heads[1]);
    });
    // The old owner, back, catches up and agrees.
    fleet.nodes[0].restart();
    run_local(async {
        let admin = session(&fleet.nodes[0].tcp(), &admin_key).await;
        until_atoms(&admin, "storm", acknowledged.len() as u64).await;
        let verification = engram_client::verify(&admin.reader("storm").unwrap())
            .await
            .unwrap();
        assert_eq!(verification.first_bad, None);
    });
}

#[test]
fn a_tampered_message_in_a_world_stream_is_refused_by_every_node_and_verify_says_so() {
    let fleet = Fleet::start(3, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let writer = created_on_first(&fleet, &admin_key, "t").await;
        let atoms: Vec<NewAtom> = (0..5).map(|n| NewAtom::fact(format!("fact {n}"))).collect();
        engram_client::remember(&writer.writer("t").unwrap(), &atoms)
            .await
            .unwrap();
        for node in &fleet.nodes {
            until_atoms(&until_world(node, &admin_key, "t").await, "t", 5).await;
        }

        // As someone who may publish to the fleet's NATS (store/FORMAT.md, World streams).
        let client = async_nats::connect(fleet.nats.address().to_string())
            .await
            .unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let hash = blake3::hash(b"t").to_hex();
        let hash = &hash.as_str()[..32];
        let stream = jetstream
            .get_stream(format!("engram-world-{hash}"))
            .await
            .unwrap();
        let original = stream.get_raw_message(1).await.unwrap();
        let subject = format!("engram.engram.world.{hash}");
        let mut tampered = original.payload.to_vec();
        let last = tampered.len() - 40; // inside the last entry, past its header
        tampered[last] ^= 1;
        // Signed by a real node of the fleet (its key taken from its data directory):
        // the entry no longer continues its chain.
        let node_key =
            engram_client::keyfile::read(&fleet.nodes[0].data_dir().join("node.key")).unwrap();
        let sign = |message: &[u8]| {
            let mut signed = b"engram 2026-11 world stream message v1\0t\0".to_vec();
            signed.extend_from_slice(message);
            hex::encode(ed25519_dalek::Signer::sign(&node_key, &signed).to_bytes())
        };
        let headers = |signature: String| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Engram-Node",
                hex::encode(node_key.verifying_key().as_bytes()).as_str(),
            );
            headers.insert("Engram-Signature", signature.as_str());
            headers
        };
        let injected = [
            Some(headers(sign(&tampered))),
            // The tampered bytes under the original's signature.
            Some(headers(
                original
                    .headers
                    .get("Engram-Signature")
                    .unwrap()
                    .to_string(),
            )),
            // No signature at all.
            None,
        ];
        for headers in injected {
            let payload = tampered.clone().into();
            let ack = match headers {
                Some(headers) => jetstream
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                    .unwrap(),
                None => jetstream.publish(subject.clone(), payload).await.unwrap(),
            };
            ack.await.unwrap();
        }
        for node in &fleet.nodes {
            node.until_logged(
                "refused a message of the world's stream",
                3,
                Duration::from_secs(10),
            )
            .await;
            let admin = session(&node.tcp(), &admin_key).await;
            let reader = admin.reader("t").unwrap();
            assert_eq!(engram_client::generation(&reader).await.unwrap().atoms, 5);
            // Every node refused the node-signed message, and says so: its copy of the
            // world differs from the stream's (the unsigned ones are no node's word).
            let verification = engram_client::verify(&reader).await.unwrap();
            assert_eq!(verification.entries, 5);
            let (writer, seq, reason) = verification
                .first_bad
                .expect("a refused message a node signed is reported");
            assert_eq!((writer, seq), (*admin_key.verifying_key().as_bytes(), 1));
            assert!(
                reason.contains("refused the message at position 2 of the world's fleet stream"),
                "{reason}"
            );
        }
        // The owner passes what it refused and writes on.
        let acquire = || async {
            let session = session(&fleet.nodes[0].tcp(), &admin_key).await;
            session.writer("t")
        };
        let key = engram_client::IdempotencyKey::random().unwrap();
        engram_client::remember_retrying(acquire, &[NewAtom::fact("after")], &key, 8)
            .await
            .unwrap();
        for node in &fleet.nodes {
            until_atoms(&session(&node.tcp(), &admin_key).await, "t", 6).await;
        }
    });
}

#[test]
fn a_follower_subscription_misses_nothing_while_the_follower_writes_its_own_world() {
    // Atoms of a world written elsewhere arrive with their owner's commits, which may be
    // below commits this node gave its own world meanwhile: a subscriber here must still
    // get every one of them.
    let fleet = Fleet::start(3, LEASE, &[]);
    let admin_key = fleet.admin_key();
    let rounds = 60;
    run_local(async {
        let on_a = session(&fleet.nodes[0].tcp(), &admin_key).await;
        for world in ["far", "near"] {
            engram_client::create_world(&on_a.admin().unwrap(), world)
                .await
                .unwrap();
        }
        let on_c = until_world(&fleet.nodes[2], &admin_key, "far").await;
        let on_c = if on_c.writer("near").is_ok() {
            on_c
        } else {
            until_world(&fleet.nodes[2], &admin_key, "near").await
        };
        let mut watch = engram_client::subscribe(
            &on_c.observer("far").unwrap(),
            &engram_client::Filter::default(),
            0,
        )
        .await
        .unwrap();
        let on_a = until_world(&fleet.nodes[0], &admin_key, "far").await;
        let (far, near) = (on_a.writer("far").unwrap(), on_c.writer("near").unwrap());
        let far_writes = tokio::task::spawn_local(async move {
            for round in 0..rounds {
                engram_client::remember(&far, &[NewAtom::fact(format!("far {round}"))])
                    .await
                    .unwrap();
            }
        });
        let near_writes = tokio::task::spawn_local(async move {
            for round in 0..rounds {
                let batch: Vec<NewAtom> = (0..3)
                    .map(|n| NewAtom::fact(format!("near {round} {n}")))
                    .collect();
                engram_client::remember(&near, &batch).await.unwrap();
            }
        });
        far_writes.await.unwrap();
        near_writes.await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < rounds {
            let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {rounds} atoms arrived", seen.len()));
            match event.expect("the subscription is live") {
                engram_client::WatchEvent::Atoms(atoms) => {
                    seen.extend(atoms.into_iter().map(|atom| atom.text))
                }
                engram_client::WatchEvent::End { code, message } => {
                    panic!("ended: {code:?} {message}")
                }
            }
        }
        let expected: Vec<String> = (0..rounds).map(|round| format!("far {round}")).collect();
        assert_eq!(seen, expected);
        // A replay paged from the start, as a poller would, gets them all too.
        let (replayed, _) = engram_client::replay(&on_c.reader("far").unwrap(), 0, 1000)
            .await
            .unwrap();
        assert_eq!(replayed.len(), rounds);
    });
}

#[test]
fn concurrent_first_writes_to_a_world_on_one_node_all_succeed() {
    let fleet = Fleet::start(2, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let on_b = session(&fleet.nodes[1].tcp(), &admin_key).await;
        engram_client::create_world(&on_b.admin().unwrap(), "fresh")
            .await
            .unwrap();
        let mut writers = Vec::new();
        for _ in 0..8 {
            let session = until_world(&fleet.nodes[1], &admin_key, "fresh").await;
            writers.push(session.writer("fresh").unwrap());
        }
        // Each takes the world's lease if nobody holds it: one call of the node takes
        // it, the others wait for that one.
        let writes = writers
            .iter()
            .enumerate()
            .map(|(index, writer)| async move {
                engram_client::remember(writer, &[NewAtom::fact(format!("first {index}"))]).await
            });
        for answer in futures::future::join_all(writes).await {
            answer.unwrap();
        }
        until_atoms(
            &session(&fleet.nodes[0].tcp(), &admin_key).await,
            "fresh",
            8,
        )
        .await;
    });
}

/// A batch: `atoms` atoms of 60 KiB of text each, told apart by `tag`.
fn heavy_batch(tag: &str, atoms: usize) -> Vec<NewAtom> {
    (0..atoms)
        .map(|index| NewAtom::fact(format!("{tag} {index} {}", "word ".repeat(12_000))))
        .collect()
}

/// A world's entries travel in NATS messages, which hold 1 MiB by default. One holder's
/// batch too large for a message is refused on its own, saying so; the requests the
/// node writes in the same group are written, however many bytes they come to together,
/// and reach the other node whole.
#[test]
fn an_oversized_batch_is_refused_alone_and_large_groups_reach_every_node() {
    let fleet = Fleet::start(2, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let writers_session = created_on_first(&fleet, &admin_key, "heavy").await;
        let mut writers = Vec::new();
        for _ in 0..9 {
            let session = session(&fleet.nodes[0].tcp(), &admin_key).await;
            writers.push(session.writer("heavy").unwrap());
        }
        // About 1.2 MB in one request; eight of about 600 kB, sent together so that the
        // node writes several in a group.
        let oversized_batch = heavy_batch("oversized", 20);
        let oversized = engram_client::remember(&writers[0], &oversized_batch);
        let others = writers[1..]
            .iter()
            .enumerate()
            .map(|(index, writer)| async move {
                engram_client::remember(writer, &heavy_batch(&format!("request {index}"), 10)).await
            });
        let (refused, written) =
            futures::future::join(oversized, futures::future::join_all(others)).await;
        let refused = refused.unwrap_err();
        assert_eq!(
            refused.code(),
            Some(ErrorCode::InvalidArgument),
            "{refused}"
        );
        assert!(refused.to_string().contains("split"), "{refused}");
        let mut receipts = Vec::new();
        for answer in written {
            receipts.extend(answer.expect("a request beside the oversized one is written"));
        }
        assert_eq!(receipts.len(), 80);
        // The other node holds every atom, in the same chain.
        let on_b = until_world(&fleet.nodes[1], &admin_key, "heavy").await;
        until_atoms(&on_b, "heavy", 80).await;
        let reader = on_b.reader("heavy").unwrap();
        assert_eq!(
            engram_client::verify(&reader).await.unwrap().first_bad,
            None
        );
        for receipt in &receipts {
            let atom = engram_client::get(&reader, &receipt.id).await.unwrap();
            assert_eq!((atom.seq, atom.commit), (receipt.seq, receipt.commit));
        }
        assert_eq!(
            engram_client::heads(&reader).await.unwrap(),
            engram_client::heads(&writers_session.reader("heavy").unwrap())
                .await
                .unwrap()
        );
    });
}

/// A write to a world another node writes is refused, naming that node; a holder's
/// flood of such writes costs NATS a lease read now and then, not one each (the node's
/// traffic to NATS is counted at its proxy).
#[test]
fn a_flood_of_writes_to_another_nodes_world_costs_nats_little() {
    const WRITES: u64 = 300;
    let fleet = Fleet::start(2, LEASE, &[]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let on_a = created_on_first(&fleet, &admin_key, "owned").await;
        engram_client::remember(&on_a.writer("owned").unwrap(), &[NewAtom::fact("mine")])
            .await
            .unwrap();
        let on_b = until_world(&fleet.nodes[1], &admin_key, "owned").await;
        let writer = on_b.writer("owned").unwrap();
        let before = fleet.proxies[1].upstream_bytes();
        for index in 0..WRITES {
            let refused = engram_client::remember(&writer, &[NewAtom::fact(format!("{index}"))])
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
            assert!(
                refused.to_string().contains(fleet.nodes[0].tcp_address()),
                "the refusal names the owner: {refused}"
            );
        }
        let sent = fleet.proxies[1].upstream_bytes() - before;
        assert!(
            sent < WRITES * 20,
            "node B sent NATS {sent} bytes for {WRITES} refused writes"
        );
    });
}

/// A world no write asked for during the idle release is given up: the next node asked
/// to write it takes it, while the first goes on running (without the release, the
/// first renews its lease for as long as it runs and every other node refuses).
#[test]
fn an_idle_world_is_given_up_and_another_node_takes_it() {
    let fleet = Fleet::start(2, LEASE, &["--fleet-idle-release-ms", "300"]);
    let admin_key = fleet.admin_key();
    run_local(async {
        let on_a = created_on_first(&fleet, &admin_key, "roaming").await;
        let first =
            engram_client::remember(&on_a.writer("roaming").unwrap(), &[NewAtom::fact("a")])
                .await
                .unwrap();
        let on_b = until_world(&fleet.nodes[1], &admin_key, "roaming").await;
        let started = Instant::now();
        let second = loop {
            match engram_client::remember(&on_b.writer("roaming").unwrap(), &[NewAtom::fact("b")])
                .await
            {
                Ok(receipts) => break receipts,
                Err(error) => {
                    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
                    assert!(
                        started.elapsed() < PROPAGATION,
                        "node B never took the idle world: {error}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The writer's chain goes on across the nodes.
        assert_eq!((second[0].seq, second[0].prev), (2, first[0].id));
        // Node A now refuses, naming B.
        let refused =
            engram_client::remember(&on_a.writer("roaming").unwrap(), &[NewAtom::fact("c")])
                .await
                .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
        assert!(
            refused.to_string().contains(fleet.nodes[1].tcp_address()),
            "the refusal names node B: {refused}"
        );
        until_atoms(&on_a, "roaming", 2).await;
        let verification = engram_client::verify(&on_a.reader("roaming").unwrap())
            .await
            .unwrap();
        assert_eq!((verification.first_bad, verification.entries), (None, 2));
    });
}

/// A write whose stream took its message but whose answer a NATS stall held back is
/// answered `unavailable`, "may have been written", never "nothing was written"; the CLI
/// prints the idempotency key it used, and the same command run again with that key
/// stores the atom once on every node.
#[test]
fn a_write_lost_in_a_nats_stall_is_answered_honestly_and_retried_once_with_its_key() {
    let mut fleet = Fleet::start(2, LEASE, &[]);
    let key = fleet.admin_key();
    let key_path = fleet.nodes[0].admin_key_path();
    let text = "written while NATS held its answers back";
    let cli = |arguments: &[&str]| engram_tests::engram_cli(&fleet.nodes[0], &key_path, arguments);
    run_local(async {
        let on_a = created_on_first(&fleet, &key, "stalled").await;
        // Node A owns the world from here on.
        engram_client::remember(&on_a.writer("stalled").unwrap(), &[NewAtom::fact("first")])
            .await
            .unwrap();
        let on_b = until_world(&fleet.nodes[1], &key, "stalled").await;
        until_atoms(&on_b, "stalled", 1).await;

        fleet.proxies[0].stall();
        let output = cli(&[
            "remember",
            "stalled",
            text,
            "--kind",
            "fact",
            "--attempts",
            "1",
        ]);
        fleet.proxies[0].resume();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("unavailable: "), "{stderr}");
        assert!(stderr.contains("may have been written"), "{stderr}");
        assert!(!stderr.contains("nothing was written"), "{stderr}");
        let used = stderr
            .split("--idempotency-key \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no idempotency key printed: {stderr}"))
            .to_owned();

        // The stream took the message: it reaches the other node.
        until_atoms(&on_b, "stalled", 2).await;
        // The same command with the printed key writes nothing again.
        let output = cli(&[
            "remember",
            "stalled",
            text,
            "--kind",
            "fact",
            "--idempotency-key",
            &used,
            "--attempts",
            "10",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("done before"), "{stderr}");
        for node in &fleet.nodes {
            let session = fresh_session(node, &key).await;
            let (atoms, _) = engram_client::replay(&session.reader("stalled").unwrap(), 0, 100)
                .await
                .unwrap();
            assert_eq!(
                atoms.iter().filter(|atom| atom.text == text).count(),
                1,
                "{atoms:?}"
            );
        }
    });
    // A fleet node stops cleanly: exit 0, and nothing panics on the way out (async-nats'
    // subscriptions once panicked, dropped outside the runtime).
    for node in &mut fleet.nodes {
        node.stop();
        let log = std::fs::read_to_string(node.log_path()).unwrap();
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// `Membrane.fleet` (and `engram fleet status`, `whoami`) shows the fleet as a node
/// knows it: both nodes running and confirmed, each world's owner and stream position
/// against what the node holds; a principal sees only the worlds it may use. The
/// metrics say the worlds a node owns and its lag on each stream.
#[test]
fn the_fleet_status_shows_nodes_owners_and_positions_to_whom_may_see_them() {
    let fleet = Fleet::start(2, LEASE, &["--metrics", "127.0.0.1:0"]);
    let key = fleet.admin_key();
    let (a_key, a_address) = (
        fleet.nodes[0].node_key_hex().to_owned(),
        fleet.nodes[0].tcp_address().to_owned(),
    );
    let agent_key = run_local(async {
        let on_a = created_on_first(&fleet, &key, "shown").await;
        engram_client::create_world(&on_a.admin().unwrap(), "hidden")
            .await
            .unwrap();
        let atoms = [NewAtom::fact("one"), NewAtom::fact("two")];
        for atom in &atoms {
            engram_client::remember(&on_a.writer("shown").unwrap(), std::slice::from_ref(atom))
                .await
                .unwrap();
        }
        let agent_key = add_principal(&on_a, "agent", &["shown=r"]).await;
        let on_b = until_world(&fleet.nodes[1], &key, "shown").await;
        until_atoms(&on_b, "shown", 2).await;
        // The beats of both nodes reach node B within a third of the lease.
        let started = Instant::now();
        let status = loop {
            let status = engram_client::connect(&fleet.nodes[1].tcp())
                .await
                .unwrap()
                .login(&key)
                .await
                .unwrap()
                .fleet()
                .await
                .unwrap();
            if status.nodes.iter().all(|node| node.seen_ago_ms.is_some()) {
                break status;
            }
            assert!(started.elapsed() < LEASE * 2, "{status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!status.name.is_empty(), "{status:?}");
        assert_eq!(hex::encode(status.node_key), fleet.nodes[1].node_key_hex());
        assert!(status.confirmed_ago_ms.unwrap() < LEASE.as_millis() as u64);
        assert_eq!(status.nodes.len(), 2, "{status:?}");
        assert!(
            (status.nodes.iter()).all(|node| node.confirmed_ago_ms.is_some()),
            "{status:?}"
        );
        let worlds: Vec<&str> = status
            .worlds
            .iter()
            .map(|world| world.world.as_str())
            .collect();
        assert_eq!(worlds, ["hidden", "shown"]);
        let shown = &status.worlds[1];
        let (owner, address) = shown.owner.clone().expect("node A owns the world it wrote");
        assert_eq!(
            (hex::encode(owner), address),
            (a_key.clone(), a_address.to_string())
        );
        assert_eq!(
            (shown.stream_position, shown.held_position),
            (2, 2),
            "{shown:?}"
        );
        assert_eq!(status.worlds[0].owner, None, "nobody wrote it: {status:?}");

        // A principal granted one world sees only that one.
        let agents = (until_login(&fleet.nodes[1], &agent_key).await)
            .fleet()
            .await
            .unwrap();
        let worlds: Vec<&str> = agents
            .worlds
            .iter()
            .map(|world| world.world.as_str())
            .collect();
        assert_eq!(worlds, ["shown"]);
        agent_key
    });
    // The CLI: `fleet status` in JSON and text, `whoami` names the fleet.
    let agent_path = fleet.nodes[1].data_dir().join("agent.key");
    engram_client::keyfile::write_new(&agent_path, &agent_key).unwrap();
    let output =
        engram_tests::engram_cli(&fleet.nodes[1], &agent_path, &["--json", "fleet", "status"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["worlds"][0]["ownerKey"], *a_key);
    assert_eq!(status["worlds"][0]["heldPosition"], 2);
    let output = engram_tests::engram_cli(&fleet.nodes[1], &agent_path, &["fleet", "status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("shown  written at {a_address}")),
        "{text}"
    );
    let output = engram_tests::engram_cli(&fleet.nodes[1], &agent_path, &["--json", "whoami"]);
    let whoami: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(whoami["fleet"], status["name"]);
    assert_eq!(whoami["node"], fleet.nodes[1].node_key_hex());
    // Metrics: node A owns one world; node B is behind on no stream.
    let scrape = |node: usize| {
        let address = fleet.nodes[node].metrics_address().unwrap();
        engram_tests::http_get(address, "/metrics").1
    };
    let started = Instant::now();
    while !scrape(0).contains("engram_fleet_owned_worlds 1") {
        assert!(started.elapsed() < LEASE * 2, "{}", scrape(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Node B holds both messages (until_atoms above): its lag says so within moments.
    while !scrape(1).contains("engram_fleet_stream_lag_messages{world=\"shown\"} 0") {
        assert!(started.elapsed() < LEASE * 2, "{}", scrape(1));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes follow their world's owner: the CLI sent to a node that does not write the
/// world writes it at the node that does (found through `Membrane.fleet`), so a writer
/// alternating between nodes is never refused, and nothing is written twice.
#[test]
fn a_write_sent_to_another_node_is_written_at_the_worlds_owner() {
    let fleet = Fleet::start(2, LEASE, &[]);
    let key = fleet.admin_key();
    let key_path = fleet.nodes[0].admin_key_path();
    run_local(async {
        let on_a = created_on_first(&fleet, &key, "routed").await;
        engram_client::remember(&on_a.writer("routed").unwrap(), &[NewAtom::fact("on a")])
            .await
            .unwrap();
        until_world(&fleet.nodes[1], &key, "routed").await;
        // Node B's client is sent on to node A, the owner.
        let membrane = engram_client::login_for_writing(&fleet.nodes[1].tcp(), &key, "routed")
            .await
            .unwrap();
        let status = membrane.fleet().await.unwrap();
        assert_eq!(hex::encode(status.node_key), fleet.nodes[0].node_key_hex());
    });
    for index in 0..6 {
        let node = &fleet.nodes[index % 2];
        let text = format!("written through node {}", index % 2);
        let output = engram_tests::engram_cli(
            node,
            &key_path,
            &[
                "remember",
                "routed",
                &text,
                "--kind",
                "fact",
                "--attempts",
                "1",
            ],
        );
        assert!(
            output.status.success(),
            "write {index}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    run_local(async {
        until_atoms(&fresh_session(&fleet.nodes[1], &key).await, "routed", 7).await;
        let on_a = fresh_session(&fleet.nodes[0], &key).await;
        let (atoms, _) = engram_client::replay(&on_a.reader("routed").unwrap(), 0, 100)
            .await
            .unwrap();
        assert_eq!(atoms.len(), 7, "{atoms:?}");
        // Node A wrote every one: the world never changed hands.
        let heads = engram_client::heads(&on_a.reader("routed").unwrap())
            .await
            .unwrap();
        assert_eq!(heads.len(), 1, "one writer, one chain: {heads:?}");
    });
    // The owner dies: a write sent to node B waits for its lease to lapse, then node B
    // takes the world and writes it, where the CLI gave up within 0.3 s.
    let mut fleet = fleet;
    fleet.nodes[0].kill();
    let output = engram_tests::engram_cli(
        &fleet.nodes[1],
        &key_path,
        &[
            "remember",
            "routed",
            "after the owner died",
            "--kind",
            "fact",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    run_local(async {
        until_atoms(&fresh_session(&fleet.nodes[1], &key).await, "routed", 8).await;
    });
}

/// A fleet node tells clients where to reach it: `--fleet-address`, else its listener's
/// address; one listening on every interface must say it.
#[test]
fn a_node_on_every_interface_must_say_where_clients_reach_it() {
    let nats = engram_tests::fleet::NatsServer::start();
    let url = format!("nats://{}", nats.address());
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(engram_tests::binary("engramd"))
        .arg("--data")
        .arg(data.path())
        .args([
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--no-socket",
            "--nats",
            &url,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--fleet-address"), "{stderr}");
    // Every principal is shown the address, and clients connect to it: only
    // [tls://]HOST:PORT, never control characters, and tls:// from a TLS node; a node
    // without TCP must give one.
    let refused: [&[&str]; 12] = [
        &["--fleet-address", "engram-a.example"],
        &["--fleet-address", "0:7420"],
        &["--fleet-address", "[::ffff:0.0.0.0]:7420"],
        &["--fleet-address", "256.256.256.256:7420"],
        &["--fleet-address", "engram-a.example:080"],
        &["--fleet-address", "tls://engram-a.example:7420"],
        &["--fleet-address", "engram-a.example:99999"],
        &["--fleet-address", "http://engram-a.example:80"],
        &["--fleet-address", "\u{1b}[31mred:7420"],
        &["--fleet-address", "a b:7420"],
        &["--tls", "--fleet-address", "engram-a.example:7420"],
        &["--no-tcp"],
    ];
    for arguments in refused {
        let data = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(engram_tests::binary("engramd"))
            .arg("--data")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0", "--no-socket", "--nats", &url])
            .args(arguments)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}: {stderr}");
        assert!(
            stderr.contains("--fleet-address"),
            "{arguments:?}: {stderr}"
        );
        assert!(!stderr.contains('\u{1b}'), "{arguments:?}: {stderr}");
    }

    let node = engram_tests::TestNode::start_with(&[
        "--nats",
        &url,
        "--fleet-address",
        "engram-a.example:7420",
    ]);
    run_local(async {
        let status = (until_login(&node, &node.admin_key()).await)
            .fleet()
            .await
            .unwrap();
        assert_eq!(status.address, "engram-a.example:7420");
        assert_eq!(status.nodes[0].address, "engram-a.example:7420");
    });
}

/// SIGTERM while a write waits on a stalled NATS: the node answers the write (it may
/// have been written) and exits 0 within the test's bound, where it once hung for good
/// once its listeners were closed.
#[test]
fn a_node_stops_on_sigterm_with_a_write_in_flight_in_a_nats_stall() {
    let mut fleet = Fleet::start(1, LEASE, &[]);
    let key = fleet.admin_key();
    run_local(async {
        let on_a = created_on_first(&fleet, &key, "stopping").await;
        let writer = on_a.writer("stopping").unwrap();
        engram_client::remember(&writer, &[NewAtom::fact("first")])
            .await
            .unwrap();
        fleet.proxies[0].stall();
        let before = fleet.proxies[0].upstream_bytes();
        let text = "x".repeat(20_000);
        let write = tokio::task::spawn_local(async move {
            engram_client::remember(&writer, &[NewAtom::fact(&text)]).await
        });
        // The group's message is on its way to NATS: the writer waits for its answer.
        while fleet.proxies[0].upstream_bytes() < before + 20_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fleet.nodes[0].terminate();
        let answer = write.await.unwrap();
        let error = answer.expect_err("a write the node stopped under is not acknowledged");
        assert!(
            matches!(error.code(), Some(ErrorCode::Unavailable) | None),
            "{error}"
        );
    });
    fleet.nodes[0].stop();
    fleet.proxies[0].resume();
}

/// A node that ran alone holds atoms no world stream has: seeding a fleet with it would
/// let a joining node take its worlds without them and write their chains again (a
/// fork). Its start in a fleet is refused, naming the worlds and the way to bring them.
#[test]
fn a_node_that_ran_alone_does_not_seed_a_fleet_with_atoms_no_stream_has() {
    let mut alone = engram_tests::TestNode::start();
    run_local(async {
        let admin = engram_tests::admin_with_world(&alone, "solo").await;
        engram_client::remember(&admin.writer("solo").unwrap(), &[NewAtom::fact("mine")])
            .await
            .unwrap();
    });
    alone.stop();
    let nats = engram_tests::fleet::NatsServer::start();
    let stderr = refused_start(
        &alone.data_dir(),
        &["--nats", &format!("nats://{}", nats.address())],
    );
    assert!(stderr.contains("solo"), "{stderr}");
    assert!(stderr.contains("engram export"), "{stderr}");
    // Nothing of it was seeded: a new node seeds the fleet instead, and knows no world.
    let seed =
        engram_tests::TestNode::start_with(&["--nats", &format!("nats://{}", nats.address())]);
    run_local(async {
        let session = session(&seed.tcp(), &seed.admin_key()).await;
        assert!(session.reader("solo").is_err(), "the world was seeded");
    });
}

/// `engramd` started on `data` with `arguments` (and a TCP port of its own), its stderr
/// going to `stderr`: the process, and its ready line (empty if it exited instead).
fn engramd_on(
    data: &std::path::Path,
    arguments: &[&str],
    stderr: std::process::Stdio,
) -> (std::process::Child, String) {
    engramd_logging(data, arguments, stderr, "info")
}

/// [`engramd_on`] with `RUST_LOG` set to `filter`.
fn engramd_logging(
    data: &std::path::Path,
    arguments: &[&str],
    stderr: std::process::Stdio,
    filter: &str,
) -> (std::process::Child, String) {
    let mut started = std::process::Command::new(engram_tests::binary("engramd"))
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(arguments)
        .env("RUST_LOG", filter)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(started.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    (started, ready)
}

/// Starts `engramd` on `data` with `arguments`, which must not serve: what it printed on
/// stderr as it gave up.
fn refused_start(data: &std::path::Path, arguments: &[&str]) -> String {
    let (mut started, ready) = engramd_on(data, arguments, std::process::Stdio::piped());
    if !ready.is_empty() {
        started.kill().unwrap();
    }
    let output = started.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(ready.is_empty(), "it served: {ready}");
    assert!(!output.status.success(), "{stderr}");
    stderr
}

/// A NATS server that requires a login: a node logs in with a user and password, a
/// token or an nkey, each from a file, and serves; without them it does not start, and
/// no secret shows in what it prints (a URL holding one is refused, shown hidden).
#[test]
fn a_node_logs_in_to_nats_with_secrets_from_files_and_shows_none() {
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let password = "correct-horse-battery";
    let token = "s3cret-token-of-the-fleet";
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let configuration = file(
        "nats.conf",
        &format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}",
            user.public_key()
        ),
    );
    let cases: Vec<(engram_tests::fleet::NatsServer, Vec<String>)> = vec![
        (
            engram_tests::fleet::NatsServer::start_with(&["--user", "engram", "--pass", password]),
            vec![
                "--nats-user".into(),
                "engram".into(),
                "--nats-password-file".into(),
                file("password", password),
            ],
        ),
        (
            engram_tests::fleet::NatsServer::start_with(&["--auth", token]),
            vec!["--nats-token-file".into(), file("token", token)],
        ),
        (
            engram_tests::fleet::NatsServer::start_with(&["--config", &configuration]),
            vec!["--nats-nkey".into(), file("seed", &seed)],
        ),
    ];
    for (nats, login) in &cases {
        let url = format!("nats://{}", nats.address());
        let mut arguments = vec!["--nats", url.as_str()];
        arguments.extend(login.iter().map(String::as_str));
        let node = engram_tests::TestNode::start_with(&arguments);
        run_local(async {
            let session = session(&node.tcp(), &node.admin_key()).await;
            assert!(session.admin.is_some(), "logged in as the fleet's admin");
        });
        let data = tempfile::tempdir().unwrap();
        let refused = refused_start(data.path(), &["--nats", &url]);
        assert!(
            refused.to_lowercase().contains("authorization"),
            "{refused}"
        );
    }
    // Credentials in the URL: refused before any is used, and shown hidden.
    let data = tempfile::tempdir().unwrap();
    let address = cases[0].0.address();
    let refused = refused_start(
        data.path(),
        &["--nats", &format!("nats://engram:{password}@{address}")],
    );
    assert!(refused.contains("<hidden>"), "{refused}");
    assert!(!refused.contains(password), "{refused}");
    let printed = std::process::Command::new(engram_tests::binary("engramd"))
        .args(["--print-config", "--nats"])
        .arg(format!("nats://engram:{password}@{address}"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("<hidden>"), "{printed}");
    assert!(!printed.contains(password), "{printed}");
    // async-nats logs its CONNECT line, password included, at trace: capped at debug
    // whatever RUST_LOG asks, and off unless it asks (it once logged at debug always).
    for (filter, debug_shown) in [("trace", true), ("info", false)] {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("log");
        let url = format!("nats://{address}");
        let mut arguments = vec!["--nats", url.as_str()];
        arguments.extend(cases[0].1.iter().map(String::as_str));
        let stderr = std::process::Stdio::from(std::fs::File::create(&log).unwrap());
        let (mut node, ready) = engramd_logging(&data.path().join("d"), &arguments, stderr, filter);
        assert!(ready.starts_with("engramd ready"), "{ready}");
        node.kill().unwrap();
        node.wait().unwrap();
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(!log.contains(password), "RUST_LOG={filter}: {log}");
        assert_eq!(
            log.contains("DEBUG async_nats"),
            debug_shown,
            "RUST_LOG={filter}: {log}"
        );
    }
    // A file that holds no seed, or no CA certificate, is named, and nothing of it shown.
    let url = format!("nats://{address}");
    for (option, name, text) in [
        ("--nats-nkey", "bad-seed", "SUnot-a-seed-at-all"),
        ("--nats-ca", "bad-ca", "not a certificate"),
    ] {
        let bad = file(name, text);
        let output = std::process::Command::new(engram_tests::binary("engramd"))
            .args([
                "--data",
                data.path().to_str().unwrap(),
                "--nats",
                &url,
                option,
                &bad,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&bad), "{stderr}");
        assert!(!stderr.contains(text), "{stderr}");
    }
}

/// A node that was in a fleet, started alone, reads its fleet's worlds but writes none of
/// them: chains it extended alone would fork from the fleet's stream when it rejoined.
#[test]
fn a_fleet_node_started_alone_does_not_write_its_fleets_worlds() {
    let mut fleet = Fleet::start(1, LEASE, &[]);
    let key = fleet.admin_key();
    run_local(async {
        let on_a = created_on_first(&fleet, &key, "shared").await;
        engram_client::remember(&on_a.writer("shared").unwrap(), &[NewAtom::fact("first")])
            .await
            .unwrap();
    });
    fleet.nodes[0].stop();
    let (mut alone, ready) = engramd_on(
        &fleet.nodes[0].data_dir(),
        &["--no-socket"],
        std::process::Stdio::null(),
    );
    let address = ready
        .split_whitespace()
        .find_map(|field| field.strip_prefix("tcp="))
        .unwrap_or_else(|| panic!("no address in {ready:?}"))
        .to_owned();
    let endpoint = engram_client::Endpoint::parse(&address);
    run_local(async {
        let session = session(&endpoint, &key).await;
        let read = engram_client::replay(&session.reader("shared").unwrap(), 0, 10)
            .await
            .unwrap();
        assert_eq!(read.0.len(), 1);
        let refused = engram_client::remember(
            &session.writer("shared").unwrap(),
            &[NewAtom::fact("written alone")],
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
        assert!(refused.to_string().contains("--nats"), "{refused}");
    });
    alone.kill().unwrap();
    alone.wait().unwrap();
}
