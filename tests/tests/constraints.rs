//! Negative constraints and the pre-flight check: a plan is checked against the live
//! constraints in its scope, with who stated each, when, and the words that matched;
//! retracted, superseded and proposed constraints do not bind; a restricted reader is
//! told only of constraints it may see; the CLI exits 5 on a violation.

use engram_client::engram_schema::engram_capnp::{AtomKind, TransitionKind};
use engram_client::{ErrorCode, NewAtom, Restriction};
use engram_tests::{
    TestNode, add_principal, admin_with_world, assert_code, engram_cli, run_local, session,
};

/// The texts of the constraints `plan` violates, with the terms that matched.
async fn violated(
    reader: &engram_client::engram_schema::engram_capnp::world_reader::Client,
    plan: &str,
    labels: &[&str],
) -> Vec<(String, Vec<String>)> {
    let labels: Vec<String> = labels.iter().map(|label| label.to_string()).collect();
    let answer = engram_client::check(reader, plan, &labels).await.unwrap();
    assert!(answer.warning.is_empty(), "{}", answer.warning);
    answer
        .violations
        .into_iter()
        .map(|found| (found.constraint.text, found.matched))
        .collect()
}

#[test]
fn a_plan_is_checked_against_the_live_constraints_in_its_scope() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/web").await;
        let supervisor_key = add_principal(&admin, "supervisor", &["team/web=rwoa"]).await;
        let supervisor = session(&node.tcp(), &supervisor_key).await;
        let writer = supervisor.writer("team/web").unwrap();
        let remember = |atom: NewAtom| {
            let writer = writer.clone();
            async move { engram_client::remember(&writer, &[atom]).await.unwrap()[0] }
        };
        let http = remember(
            NewAtom::constraint(
                "do not use library requests for HTTP; use httpx",
                &["requests"],
            )
            .labels(&["http"]),
        )
        .await;
        remember(NewAtom::constraint(
            "never vendor left-pad",
            &["left pad", "leftpad"],
        ))
        .await;
        remember(
            NewAtom::constraint("no jQuery in new frontend code", &["jquery"])
                .labels(&["frontend"]),
        )
        .await;
        let reader = admin.reader("team/web").unwrap();

        // Who stated it, when, the words that matched.
        let labels = vec!["http".to_string()];
        let answer = engram_client::check(
            &reader,
            "Fetch the page with requests.get, then left-pad the output",
            &labels,
        )
        .await
        .unwrap();
        let found: Vec<(&str, &[String])> = answer
            .violations
            .iter()
            .map(|found| (found.constraint.text.as_str(), found.matched.as_slice()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "do not use library requests for HTTP; use httpx",
                    &["requests".to_string()][..]
                ),
                ("never vendor left-pad", &["left pad".to_string()][..]),
            ]
        );
        let first = &answer.violations[0].constraint;
        assert_eq!(first.writer, supervisor_key.verifying_key().to_bytes());
        assert_eq!((first.id, first.commit), (http.id, http.commit));
        assert!(first.recorded_at_unix_ms > 0);
        // A plan that violates nothing; words, not substrings.
        assert!(
            violated(
                &reader,
                "call the API with httpx; one request at a time",
                &["http"]
            )
            .await
            .is_empty()
        );
        // Scope: a label elsewhere is out of scope; no labels checks everything.
        assert!(
            violated(&reader, "add jQuery to the page", &["http"])
                .await
                .is_empty()
        );
        assert_eq!(
            violated(&reader, "add jQuery to the page", &[]).await,
            [(
                "no jQuery in new frontend code".to_string(),
                vec!["jquery".to_string()]
            )]
        );

        // Superseded and retracted constraints stop matching; proposals do not bind.
        remember(
            NewAtom::constraint(
                "do not use requests or urllib3 for HTTP; use httpx",
                &["requests", "urllib3"],
            )
            .labels(&["http"])
            .supersedes(http.id),
        )
        .await;
        assert_eq!(
            violated(&reader, "use urllib3 directly", &["http"]).await,
            [(
                "do not use requests or urllib3 for HTTP; use httpx".to_string(),
                vec!["urllib3".to_string()]
            )]
        );
        let proposal = remember(
            NewAtom::constraint("no aiohttp either", &["aiohttp"])
                .labels(&["http"])
                .proposed(),
        )
        .await;
        assert!(violated(&reader, "use aiohttp", &["http"]).await.is_empty());
        engram_client::transition(&writer, &proposal.id, TransitionKind::Approve, "")
            .await
            .unwrap();
        assert_eq!(violated(&reader, "use aiohttp", &["http"]).await.len(), 1);
        engram_client::transition(&writer, &proposal.id, TransitionKind::Retract, "")
            .await
            .unwrap();
        assert!(violated(&reader, "use aiohttp", &["http"]).await.is_empty());

        // A reader that may not see constraints is told of none.
        let facts_only = engram_client::attenuate_reader(
            &reader,
            &Restriction {
                kinds: vec![AtomKind::Fact],
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        assert!(
            violated(&facts_only, "requests and left pad", &[])
                .await
                .is_empty()
        );

        // Only constraints forbid, and terms must have words.
        let mut fact = NewAtom::fact("requests are fine");
        fact.forbids = vec!["requests".into()];
        assert_code(
            engram_client::remember(&writer, &[fact]).await,
            ErrorCode::InvalidArgument,
        );
        assert_code(
            engram_client::remember(&writer, &[NewAtom::constraint("bad", &["--"])]).await,
            ErrorCode::InvalidArgument,
        );
    });
}

#[test]
fn the_cli_checks_a_plan_and_exits_5_on_a_violation() {
    let node = TestNode::start();
    let key = node.admin_key_path();
    let cli = |arguments: &[&str]| engram_cli(&node, &key, arguments);
    assert!(cli(&["world", "create", "team/web"]).status.success());
    let remembered = cli(&[
        "remember",
        "team/web",
        "do not use library requests for HTTP; use httpx",
        "--kind",
        "constraint",
        "--forbid",
        "requests",
        "--label",
        "http",
    ]);
    assert!(
        remembered.status.success(),
        "{}",
        String::from_utf8_lossy(&remembered.stderr)
    );
    let violated = cli(&[
        "check",
        "team/web",
        "fetch it with requests",
        "--label",
        "http",
    ]);
    assert_eq!(violated.status.code(), Some(5));
    let printed = String::from_utf8_lossy(&violated.stdout);
    assert!(printed.contains("matched requests"), "{printed}");
    assert!(printed.contains("use httpx"), "{printed}");
    let json = cli(&["--json", "check", "team/web", "fetch it with requests"]);
    let found: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(found[0]["matched"][0], "requests");
    assert_eq!(found[0]["constraint"]["forbids"][0], "requests");
    let clean = cli(&["check", "team/web", "fetch it with httpx"]);
    assert_eq!(clean.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&clean.stdout).starts_with("ok"));
}

#[test]
fn a_flood_of_constraints_on_one_word_stops_at_the_budget() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "team/web").await;
        let hostile_key = add_principal(&admin, "hostile", &["team/web=rw"]).await;
        let hostile = session(&node.tcp(), &hostile_key).await;
        let writer = hostile.writer("team/web").unwrap();
        // 12,000 constraints on one word: every plan with it makes each a candidate.
        for first in (0..12_000).step_by(4_000) {
            let batch: Vec<NewAtom> = (first..first + 4_000)
                .map(|index| NewAtom::constraint(format!("rule {index}"), &["requests"]))
                .collect();
            engram_client::remember(&writer, &batch).await.unwrap();
        }
        let reader = admin.reader("team/web").unwrap();
        let answer = engram_client::check(&reader, "fetch the page with requests", &[])
            .await
            .unwrap();
        assert!(
            answer.warning.contains("the check stopped at"),
            "{}",
            answer.warning
        );
        // What it examined within the budget (10,000 units of work) it reports.
        assert!(
            (1..10_000).contains(&answer.violations.len()),
            "{}",
            answer.violations.len()
        );
        // A plan without the flooded word is answered in full.
        let answer = engram_client::check(&reader, "fetch a page", &[])
            .await
            .unwrap();
        assert!(answer.warning.is_empty() && answer.violations.is_empty());
    });
}
