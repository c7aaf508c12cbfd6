//! The runnable examples run against a real node and do what their docs say.

use engram_tests::{TestNode, run_example};

#[test]
fn the_agent_example_regrafts_after_an_epoch_advance() {
    let node = TestNode::start();
    run_example(
        &node,
        "agent",
        &["--world", "demo", "--advance"],
        &[
            "created world demo",
            "advanced the epoch to 2",
            "staleEpoch",
            "re-grafted under epoch 2",
            "ship on Tuesday",
            "deploys happen on Tuesdays",
        ],
    );
}

#[test]
fn the_knowledge_example_checks_plans_and_approves_proposals() {
    let node = TestNode::start();
    run_example(
        &node,
        "knowledge",
        &["--world", "team/auth"],
        &[
            "created world team/auth",
            "current knowledge on jwt holds 0 atoms",
            "approving its own proposal: permissionDenied",
            "the plan violates \"do not use library requests for HTTP; use httpx\"",
            "matched requests",
            "checking plan \"fetch the signing keys from the JWKS endpoint with httpx\"",
            "the plan violates no constraint; acting on it",
            "lead: approved \"JWT algorithm: ES256\"",
            "current knowledge on jwt: \"JWT algorithm: ES256\" (approved)",
        ],
    );
}
