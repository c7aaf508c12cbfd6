//! What an operator watches: Prometheus metrics, `/healthz` and `/readyz` on the
//! `--metrics` listener, scraped with a real HTTP client while real calls move them;
//! and the JSON log's events for failed and slow calls, which name the principal, the
//! world and the method and never carry an atom's text or a key.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use engram_client::{ErrorCode, NewAtom, connect};
use engram_tests::{TestNode, admin_with_world, http_get, run_local};

/// The value of the sample `name{labels}` (labels as Prometheus writes them, in
/// order), 0 when it is not there yet.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

fn scrape(node: &TestNode) -> String {
    let (status, body) = http_get(node.metrics_address().expect("--metrics"), "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

const REMEMBERED: &str =
    r#"engram_calls_total{interface="WorldWriter",method="remember",code="ok"}"#;
const NOT_FOUND: &str =
    r#"engram_calls_total{interface="WorldReader",method="get",code="notFound"}"#;
const LOGINS_FAILED: &str = r#"engram_logins_total{outcome="failed"}"#;

#[test]
fn metrics_move_with_the_calls_that_make_them() {
    let node = TestNode::start_with(&["--metrics", "127.0.0.1:0"]);
    let address = node
        .metrics_address()
        .expect("the ready line names the listener")
        .to_owned();
    let address = address.as_str();
    assert_eq!(http_get(address, "/healthz"), (200, "alive\n".to_owned()));
    let before = scrape(&node);
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let writer = admin.writer("ops").unwrap();
        let reader = admin.reader("ops").unwrap();
        for index in 0..3 {
            engram_client::remember(&writer, &[NewAtom::fact(format!("fact {index}"))])
                .await
                .unwrap();
        }
        let missing = engram_client::get(&reader, &[7u8; 32]).await.unwrap_err();
        assert_eq!(missing.code(), Some(ErrorCode::NotFound));
        let stranger = SigningKey::from_bytes(&[9u8; 32]);
        let connection = connect(&node.tcp()).await.unwrap();
        assert!(connection.login(&stranger).await.is_err());

        let during = scrape(&node);
        assert_eq!(
            sample(&during, REMEMBERED) - sample(&before, REMEMBERED),
            3.0
        );
        assert_eq!(sample(&during, NOT_FOUND) - sample(&before, NOT_FOUND), 1.0);
        assert_eq!(sample(&during, LOGINS_FAILED), 1.0);
        assert!(sample(&during, r#"engram_logins_total{outcome="ok"}"#) >= 1.0);
        // The admin's connections and the stranger's are open.
        assert!(sample(&during, "engram_connections") >= 2.0);
        assert!(sample(&during, "engram_last_commit") >= 3.0);
        assert_eq!(sample(&during, "engram_epoch"), 1.0);
        assert!(sample(&during, "engram_store_bytes") > 0.0);
        assert!(
            sample(
                &during,
                r#"engram_call_seconds_count{interface="WorldWriter",method="remember"}"#
            ) >= 3.0
        );
        assert!(sample(&during, "engram_write_group_atoms_sum") >= 3.0);
        assert!(sample(&during, "engram_journal_sync_seconds_count") >= 3.0);
        assert!(
            during.contains(
                r#"engram_call_seconds_bucket{interface="WorldWriter",method="remember",le="#
            ),
            "latencies are histograms"
        );

        // Ready at once: the indexes had nothing to catch up with at the start, and an
        // index a few writes behind (as every write leaves it, for milliseconds) does not
        // take the node out of a load balancer.
        let (status, body) = http_get(address, "/readyz");
        assert_eq!(status, 200, "{body}");
        // The lag is a metric: it goes to 0 once the text index publishes what it took.
        let started = Instant::now();
        while sample(&scrape(&node), r#"engram_index_lag_commits{index="text"}"#) > 0.0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the text index lags"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = scrape(&node);
        assert_eq!(
            sample(&ready, r#"engram_index_lag_commits{index="text"}"#),
            0.0
        );
    });
    // The listener closes with the node.
    drop(node);
    assert!(
        ureq::get(&format!("http://{address}/healthz"))
            .call()
            .is_err()
    );
}

#[test]
fn failed_and_slow_calls_are_logged_as_json_without_text_or_keys() {
    let node = TestNode::start_with(&["--log-format", "json", "--slow-call-ms", "100000"]);
    let secret = "the launch code is tangerine";
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let writer = admin.writer("ops").unwrap();
        let reader = admin.reader("ops").unwrap();
        engram_client::remember(&writer, &[NewAtom::fact(secret)])
            .await
            .unwrap();
        let missing = engram_client::get(&reader, &[7u8; 32]).await.unwrap_err();
        assert_eq!(missing.code(), Some(ErrorCode::NotFound));
    });
    let deadline = Duration::from_secs(10);
    run_local(node.until_logged("\"call failed\"", 1, deadline));
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let failed: Vec<_> = events
        .iter()
        .filter(|event| event["message"] == "call failed")
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert_eq!(failed[0]["principal"], "admin");
    assert_eq!(failed[0]["world"], "ops");
    assert_eq!(failed[0]["interface"], "WorldReader");
    assert_eq!(failed[0]["method"], "get");
    assert_eq!(failed[0]["code"], "notFound");
    assert!(
        !events.iter().any(|event| event["message"] == "slow call"),
        "nothing took 100 s"
    );
    assert!(!log.contains("tangerine"), "an atom's text reached the log");
    let admin_seed = hex::encode(node.admin_key().to_bytes());
    assert!(!log.contains(&admin_seed), "key material reached the log");
}

#[test]
fn every_call_over_the_threshold_is_a_slow_call() {
    let node = TestNode::start_with(&["--log-format", "json", "--slow-call-ms", "0"]);
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let writer = admin.writer("ops").unwrap();
        // A durable write takes a journal sync: more than 0 ms.
        engram_client::remember(&writer, &[NewAtom::fact("slow enough")])
            .await
            .unwrap();
        node.until_logged("\"method\":\"remember\"", 1, Duration::from_secs(10))
            .await;
    });
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    let remembered = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|event| event["method"] == "remember")
        .unwrap();
    assert_eq!(remembered["message"], "slow call");
    assert_eq!(remembered["principal"], "admin");
    assert_eq!(remembered["world"], "ops");
    assert_eq!(remembered["code"], "ok");
}

#[test]
fn idle_connections_keep_no_scraper_out_and_no_caller_waiting() {
    let node = TestNode::start_with(&["--metrics", "127.0.0.1:0"]);
    let address = node.metrics_address().unwrap().to_owned();
    // Every place of the listener taken by a peer that sends nothing.
    let held: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(&address).expect("connecting"))
        .collect();
    // Calls are served meanwhile: the listener is apart from the RPC thread.
    run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        engram_client::remember(&admin.writer("ops").unwrap(), &[NewAtom::fact("served")])
            .await
            .unwrap();
    });
    // The idle connections are closed, and a scraper gets its place.
    let started = Instant::now();
    assert_eq!(http_get(&address, "/healthz").0, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(held);
}

/// Connections that each send a byte every second, never finishing a request, hold the
/// listener's places for at most its deadline: a connection's whole life is bounded,
/// not the time between its bytes, so a scraper gets a place.
#[test]
fn connections_trickling_bytes_keep_no_scraper_out() {
    use std::io::Write;
    let node = TestNode::start_with(&["--metrics", "127.0.0.1:0"]);
    let address = node.metrics_address().unwrap().to_owned();
    let mut held: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(&address).expect("connecting"))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // "GET /met" and so on, a byte a second: each byte within the idle timeout.
            let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for stream in &mut held {
                    let _ = stream.write_all(&[request[sent.min(request.len() - 1)]]);
                }
                sent += 1;
                // The pace of the attack, not a wait for the node.
                std::thread::sleep(Duration::from_millis(1_000));
            }
        })
    };
    let started = Instant::now();
    assert_eq!(http_get(&address, "/healthz").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickling.join().unwrap();
}

/// A holder making bad calls as fast as it can does not flood the log: at most 50 lines
/// of failed calls a second, and the next line logged counts the calls left out, so
/// every failed call is in the log, as a line or in a count.
#[test]
fn a_flood_of_failed_calls_logs_a_bounded_number_of_lines() {
    const CALLS: usize = 1_000;
    let node = TestNode::start_with(&["--log-format", "json"]);
    let started = Instant::now();
    let made = run_local(async {
        let admin = admin_with_world(&node, "ops").await;
        let reader = admin.reader("ops").unwrap();
        let flood = (0..CALLS).map(|_| engram_client::get(&reader, &[7u8; 32]));
        for answer in futures::future::join_all(flood).await {
            assert_eq!(answer.unwrap_err().code(), Some(ErrorCode::NotFound));
        }
        // Failed calls go on until a line counts those left out (the next second).
        let mut made = CALLS;
        while !std::fs::read_to_string(node.log_path())
            .unwrap()
            .contains("calls_not_logged")
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no count logged"
            );
            engram_client::get(&reader, &[7u8; 32]).await.unwrap_err();
            made += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        made
    });
    let seconds = started.elapsed().as_secs() + 1;
    // The last call's line may be still on its way: wait for the log to account for all.
    let accounted = || {
        let log = std::fs::read_to_string(node.log_path()).unwrap();
        let failed: Vec<serde_json::Value> = log
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["message"] == "call failed")
            .collect();
        let counted: u64 = (failed.iter())
            .map(|event| event["calls_not_logged"].as_u64().unwrap_or(0))
            .sum();
        (failed.len(), failed.len() as u64 + counted)
    };
    let (lines, total) = accounted();
    assert!(
        lines as u64 <= 50 * (seconds + 1),
        "{lines} lines of failed calls in {seconds} s"
    );
    assert!(lines < CALLS / 4, "{lines} lines for {made} failed calls");
    assert_eq!(
        total, made as u64,
        "every failed call is a line or counted in one"
    );
}
