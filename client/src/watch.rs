//! Subscriptions from the client side: an `AtomSink` that hands each pushed batch to the
//! consumer in order and acknowledges it only once the consumer took it, so a slow
//! consumer slows the node's pushes (Cap'n Proto stream flow control) instead of growing
//! memory on either side.

use std::cell::Cell;
use std::rc::Rc;

use engram_schema::engram_capnp::{atom_sink, observer, subscription};
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};

use crate::error::{ClientError, ErrorCode};
use crate::types::{AtomView, Filter};

/// What a subscription delivers, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// Committed atoms in commit order; the last one's commit is the cursor to resume from.
    Atoms(Vec<AtomView>),
    /// The node ended the subscription; `code` is the reason's stable code.
    End {
        code: Option<ErrorCode>,
        message: String,
    },
}

enum Delivery {
    Atoms(Vec<AtomView>, oneshot::Sender<()>),
    End(String),
}

struct Sink {
    deliveries: mpsc::UnboundedSender<Delivery>,
    waiting: Rc<Cell<usize>>,
}

impl atom_sink::Server for Sink {
    async fn push(self: Rc<Self>, params: atom_sink::PushParams) -> Result<(), capnp::Error> {
        let mut atoms = Vec::new();
        for atom in params.get()?.get_atoms()?.iter() {
            atoms.push(
                AtomView::read(atom).map_err(|error| capnp::Error::failed(error.to_string()))?,
            );
        }
        let (taken, was_taken) = oneshot::channel();
        self.waiting.set(self.waiting.get() + 1);
        // Queued in call order; answered only once the consumer took the batch.
        self.deliveries
            .unbounded_send(Delivery::Atoms(atoms, taken))
            .map_err(|_| capnp::Error::failed("the subscriber stopped watching".into()))?;
        was_taken
            .await
            .map_err(|_| capnp::Error::failed("the subscriber stopped watching".into()))
    }

    async fn end(
        self: Rc<Self>,
        params: atom_sink::EndParams,
        _: atom_sink::EndResults,
    ) -> Result<(), capnp::Error> {
        let reason = params.get()?.get_reason()?.to_string()?;
        let _ = self.deliveries.unbounded_send(Delivery::End(reason));
        Ok(())
    }
}

/// A live subscription. Dropping it (or calling [`Watch::cancel`]) ends it.
pub struct Watch {
    subscription: subscription::Client,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    waiting: Rc<Cell<usize>>,
}

impl Watch {
    /// The next event, or `None` once the node ended the subscription and it was reported,
    /// or the connection is gone.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        match self.deliveries.next().await? {
            Delivery::Atoms(atoms, taken) => {
                self.waiting.set(self.waiting.get() - 1);
                let _ = taken.send(());
                Some(WatchEvent::Atoms(atoms))
            }
            Delivery::End(reason) => Some(match ErrorCode::parse_description(&reason) {
                Some((code, message)) => WatchEvent::End {
                    code: Some(code),
                    message: message.to_owned(),
                },
                None => WatchEvent::End {
                    code: None,
                    message: reason,
                },
            }),
        }
    }

    /// Batches the node pushed that [`Watch::next`] has not taken yet. The node stops
    /// pushing once they fill Cap'n Proto's flow-control window, so this stays small
    /// however far behind the consumer falls.
    pub fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// Ends the subscription.
    pub async fn cancel(self) -> Result<(), ClientError> {
        self.subscription.cancel_request().send().promise.await?;
        Ok(())
    }
}

/// Subscribes to atoms after `from_commit` that match `filter` (`limit` and
/// `before_commit` do not apply).
pub async fn subscribe(
    observer: &observer::Client,
    filter: &Filter,
    from_commit: u64,
) -> Result<Watch, ClientError> {
    let (sender, deliveries) = mpsc::unbounded();
    let waiting = Rc::new(Cell::new(0));
    let sink: atom_sink::Client = capnp_rpc::new_client(Sink {
        deliveries: sender,
        waiting: waiting.clone(),
    });
    let mut request = observer.subscribe_request();
    filter.fill(request.get().init_filter());
    request.get().set_sink(sink);
    request.get().set_from_commit(from_commit);
    let response = request.send().promise.await?;
    Ok(Watch {
        subscription: response.get()?.get_subscription()?,
        deliveries,
        waiting,
    })
}
