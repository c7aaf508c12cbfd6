//! A subscriber that never takes its pushes holds nothing but its own subscription: a
//! push it leaves waiting does not keep the subscription alive past a cancel or an epoch
//! advance, and a restriction that expires ends an idle subscription when it expires.

use std::rc::Rc;
use std::time::Duration;

use engram_client::engram_schema::engram_capnp::{atom_sink, observer, subscription};
use engram_client::{ErrorCode, Filter, NewAtom, Restriction};
use engram_tests::{TestNode, add_principal, admin_with_world, run_local, session};
use futures::StreamExt;
use futures::channel::mpsc;

/// A sink that never returns from a push, and reports every end notice.
struct StuckSink {
    pushed: mpsc::UnboundedSender<()>,
    ended: mpsc::UnboundedSender<String>,
}

impl atom_sink::Server for StuckSink {
    async fn push(self: Rc<Self>, _: atom_sink::PushParams) -> Result<(), capnp::Error> {
        let _ = self.pushed.unbounded_send(());
        std::future::pending().await
    }

    async fn end(
        self: Rc<Self>,
        params: atom_sink::EndParams,
        _: atom_sink::EndResults,
    ) -> Result<(), capnp::Error> {
        let reason = params.get()?.get_reason()?.to_string()?;
        let _ = self.ended.unbounded_send(reason);
        Ok(())
    }
}

struct Stuck {
    subscription: subscription::Client,
    pushed: mpsc::UnboundedReceiver<()>,
    ended: mpsc::UnboundedReceiver<String>,
}

async fn subscribe_stuck(observer: &observer::Client) -> Stuck {
    let (pushed_sender, pushed) = mpsc::unbounded();
    let (ended_sender, ended) = mpsc::unbounded();
    let sink: atom_sink::Client = capnp_rpc::new_client(StuckSink {
        pushed: pushed_sender,
        ended: ended_sender,
    });
    let mut request = observer.subscribe_request();
    Filter::default().fill(request.get().init_filter());
    request.get().set_sink(sink);
    request.get().set_from_commit(0);
    let response = request.send().promise.await.unwrap();
    Stuck {
        subscription: response.get().unwrap().get_subscription().unwrap(),
        pushed,
        ended,
    }
}

/// The end notice's code, within a deadline.
async fn end_code(ended: &mut mpsc::UnboundedReceiver<String>) -> ErrorCode {
    let reason = tokio::time::timeout(Duration::from_secs(30), ended.next())
        .await
        .expect("no end notice came")
        .expect("the sink is gone");
    ErrorCode::parse_description(&reason)
        .unwrap_or_else(|| panic!("the reason has no code: {reason}"))
        .0
}

#[test]
fn a_stuck_push_does_not_outlive_a_cancel_or_an_epoch_advance() {
    let node = TestNode::start_with(&["--subscriptions-per-principal-max", "1"]);
    run_local(async {
        let admin = session(&node.tcp(), &node.admin_key()).await;
        engram_client::create_world(&admin.admin().unwrap(), "w")
            .await
            .unwrap();
        let key = add_principal(&admin, "agent", &["w=o"]).await;
        let admin = session(&node.tcp(), &node.admin_key()).await;
        let agent = session(&node.unix(), &key).await;
        let writer = admin.writer("w").unwrap();
        engram_client::remember(&writer, &[NewAtom::fact("one")])
            .await
            .unwrap();

        // Cancel returns although the push it is stuck in is never taken, and gives
        // the principal's one place back.
        let mut cancelled = subscribe_stuck(&agent.observer("w").unwrap()).await;
        cancelled.pushed.next().await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            cancelled.subscription.cancel_request().send().promise,
        )
        .await
        .expect("cancel waited for a push the sink never took")
        .unwrap();

        // An epoch advance ends a subscription stuck in a push (its sink sees the end
        // notice only once it returns from the push, as Cap'n Proto streams go) and
        // gives its place back.
        let mut stuck = subscribe_stuck(&agent.observer("w").unwrap()).await;
        stuck.pushed.next().await.unwrap();
        engram_client::advance_epoch(&admin.admin().unwrap(), &[1; 32])
            .await
            .unwrap();
        let agent = session(&node.unix(), &key).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let attempt =
                engram_client::subscribe(&agent.observer("w").unwrap(), &Filter::default(), 0)
                    .await;
            match attempt {
                Ok(_) => break,
                Err(error) => {
                    assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the stuck subscription of the old epoch still holds its place"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        drop(stuck);
    });
}

#[test]
fn an_expiring_restriction_ends_an_idle_subscription_when_it_expires() {
    let node = TestNode::start();
    run_local(async {
        let admin = admin_with_world(&node, "w").await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let expiring = engram_client::attenuate_observer(
            &admin.observer("w").unwrap(),
            &Restriction {
                expires_at_unix_ms: now_ms + 500,
                ..Restriction::default()
            },
        )
        .await
        .unwrap();
        // Nothing is ever written: the subscription stays idle until it expires.
        let mut idle = subscribe_stuck(&expiring).await;
        assert_eq!(end_code(&mut idle.ended).await, ErrorCode::PermissionDenied);
    });
}
