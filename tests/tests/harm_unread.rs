//! A client that pipelines large reads and never reads its socket holds a bounded part
//! of the node's memory, stops being read, and is cut off; other clients go on.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use engram_client::NewAtom;
use engram_tests::{TestNode, admin_with_world, run_local, session};
use tokio::io::{AsyncRead, ReadBuf};

/// A socket's read half that reads nothing while paused.
struct Pausable<R> {
    inner: R,
    paused: Rc<Cell<bool>>,
    waiting: Rc<RefCell<Option<Waker>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Pausable<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.paused.get() {
            *self.waiting.borrow_mut() = Some(context.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

#[test]
fn a_client_that_never_reads_its_answers_is_cut_off_within_bounded_memory() {
    let node = TestNode::start_with(&["--write-stall-timeout-ms", "2000"]);
    run_local(async {
        let admin = admin_with_world(&node, "large").await;
        let large: Vec<NewAtom> = (0..24)
            .map(|index| NewAtom {
                payload: vec![7; 1024 * 1024],
                ..NewAtom::fact(format!("large {index}"))
            })
            .collect();
        engram_client::remember(&admin.writer("large").unwrap(), &large)
            .await
            .unwrap();
        let baseline_kib = node.memory_kib("VmRSS");

        // The hostile client: logs in, then stops reading and pipelines reads of
        // about 8 MiB each.
        let stream = tokio::net::TcpStream::connect(node.tcp_address())
            .await
            .unwrap();
        let (read, write) = stream.into_split();
        let paused = Rc::new(Cell::new(false));
        let waiting = Rc::new(RefCell::new(None));
        let reader = Pausable {
            inner: read,
            paused: paused.clone(),
            waiting: waiting.clone(),
        };
        let hostile = engram_client::connect_over(reader, write)
            .login(&node.admin_key())
            .await
            .unwrap()
            .graft()
            .await
            .unwrap();
        let reader = hostile.reader("large").unwrap();
        paused.set(true);
        let mut pending = Vec::new();
        for _ in 0..200 {
            let mut request = reader.replay_request();
            request.get().set_from_commit(0);
            request.get().set_limit(1000);
            pending.push(request.send().promise);
        }

        // Meanwhile another client is served, and the node cuts the hostile one off.
        let bystander = session(&node.unix(), &node.admin_key()).await;
        let (atoms, _) = engram_client::replay(&bystander.reader("large").unwrap(), 0, 2)
            .await
            .unwrap();
        assert_eq!(atoms.len(), 2);
        node.until_logged(
            "read none of its answers in time",
            1,
            Duration::from_secs(60),
        )
        .await;
        let peak_kib = node.memory_kib("VmHWM");

        // Reading again, the hostile client finds its connection gone.
        paused.set(false);
        if let Some(waker) = waiting.borrow_mut().take() {
            waker.wake();
        }
        let answers =
            tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(pending))
                .await
                .expect("the hostile client's calls never ended");
        let failed = answers.iter().filter(|answer| answer.is_err()).count();
        assert!(
            failed > 150,
            "only {failed} of 200 pipelined reads were cut off"
        );
        // 200 answers of 8 MiB would be 1.6 GiB; the node held far less.
        let grown_mib = peak_kib.saturating_sub(baseline_kib) / 1024;
        assert!(
            grown_mib < 256,
            "the node's peak RSS grew by {grown_mib} MiB"
        );
    });
}
