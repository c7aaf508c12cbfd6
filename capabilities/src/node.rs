//! The node state every capability on the RPC thread shares: the store, the writer, the
//! node key, the current epoch and the principals' grant generations.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use engram_store::writer::Writer;
use engram_store::{Epoch, PublicKey, Store, StoreError, WriteOutcome, WriteRequest};

/// Shared by every capability of the node (`Rc<Node>` on the RPC thread).
pub struct Node {
    pub(crate) store: Store,
    pub(crate) writer: Writer,
    pub(crate) node_key: SigningKey,
    /// Mirror of the store's current epoch number, updated only after an advance is
    /// durable, read by every call's epoch guard.
    epoch: Cell<u64>,
    /// Principal → the generation its capabilities must carry. A grants change or a
    /// removal changes or deletes it, which revokes that principal's live capabilities.
    generations: RefCell<HashMap<PublicKey, u64>>,
    next_generation: Cell<u64>,
    pub(crate) started: Instant,
}

impl Node {
    /// Loads the epoch and principals from `store`.
    pub fn new(store: Store, writer: Writer, node_key: SigningKey) -> Result<Node, StoreError> {
        let view = store.read()?;
        let epoch = view.epoch()?.number;
        let generations = view
            .principals()?
            .into_iter()
            .map(|principal| (principal.public_key, 0))
            .collect();
        drop(view);
        Ok(Node {
            store,
            writer,
            node_key,
            epoch: Cell::new(epoch),
            generations: RefCell::new(generations),
            next_generation: Cell::new(1),
            started: Instant::now(),
        })
    }

    /// The current epoch number.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// The generation a principal's fresh capabilities carry, if it exists.
    pub(crate) fn generation(&self, principal: &PublicKey) -> Option<u64> {
        self.generations.borrow().get(principal).copied()
    }

    /// Submits a write and mirrors its effect on epochs and generations once durable.
    pub(crate) async fn write(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        let outcome = self.writer.submit(request).await?;
        match &outcome {
            WriteOutcome::Epoch(Epoch { number, .. }) => {
                assert!(*number > self.epoch.get(), "epochs only advance");
                self.epoch.set(*number);
            }
            WriteOutcome::Principal(principal) => {
                let generation = self.next_generation.get();
                self.next_generation.set(generation + 1);
                self.generations
                    .borrow_mut()
                    .insert(principal.public_key, generation);
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Forgets a removed principal: its capabilities fail from now on.
    pub(crate) fn forget(&self, principal: &PublicKey) {
        self.generations.borrow_mut().remove(principal);
    }
}
