//! `WorldWriter`: appends to the grafting principal's chain in one world.

use std::rc::Rc;

use engram_schema::engram_capnp::{TransitionKind, world_writer};
use engram_store::limits::{BATCH_ATOMS_MAX, TRANSITIONS_PER_REQUEST_MAX};
use engram_store::{
    AtomContent, AtomKind, Authority, Facts, Link, ReadView, StoreError, Transition, WriteOp,
    WriteOutcome, WriteRequest,
};

use crate::convert::{
    Param, bytes32, read_content, read_idempotency_key, read_restriction, write_receipt,
};
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;
use crate::token::Held;

pub struct WorldWriter {
    grip: Grip,
    world: String,
}

impl crate::metered::Gripped for WorldWriter {
    fn grip(&self) -> &Grip {
        &self.grip
    }

    fn world(&self) -> Option<&str> {
        Some(&self.world)
    }
}

impl WorldWriter {
    pub(crate) fn new(grip: Grip, world: String) -> WorldWriter {
        WorldWriter { grip, world }
    }

    /// Checks the restriction and commits `atoms` durably, all or nothing; with an
    /// idempotency `key`, a request already done answers its receipts again (`replayed`).
    /// Atoms of kind `transition` are refused unless `transition()` made them; their
    /// labels are their target's, read here, never a holder's.
    async fn commit_atoms(
        &self,
        mut atoms: Vec<AtomContent>,
        key: Option<Vec<u8>>,
        made_by_transition: bool,
    ) -> Result<(Vec<engram_store::Receipt>, bool), CapabilityError> {
        let _permit = self.grip.begin_call()?;
        // Malformed content is `invalidArgument` before any restriction is considered.
        let batch = atoms.len() > 1;
        let at = |index: usize| {
            if batch {
                format!("atom {index} of the batch: ")
            } else {
                String::new()
            }
        };
        for (index, content) in atoms.iter().enumerate() {
            if content.kind == AtomKind::Transition && !made_by_transition {
                return Err(CapabilityError::invalid(format!(
                    "{}an atom of kind transition is written by WorldWriter.transition, \
                     which checks it against its target; remember writes every other kind",
                    at(index)
                )));
            }
            if let Err(reason) = content.validate() {
                return Err(CapabilityError::invalid(format!("{}{reason}", at(index))));
            }
        }
        let transitions: usize = atoms.iter().map(|atom| atom.transitions().count()).sum();
        if transitions > TRANSITIONS_PER_REQUEST_MAX {
            return Err(CapabilityError::invalid(format!(
                "the request makes {transitions} lifecycle transitions; the limit is \
                 {TRANSITIONS_PER_REQUEST_MAX}"
            )));
        }
        let view = (transitions > 0)
            .then(|| self.grip.node.store.read())
            .transpose()?;
        for (index, content) in atoms.iter_mut().enumerate() {
            // A transition is bounded by what it acts on (a target this writer cannot
            // see is not found), and every atom, a transition atom too, by what this
            // writer may write. A transition atom carries its target's labels, so
            // whoever may read the target reads its state changes too (and nobody else).
            if let Some(view) = &view {
                let labels =
                    self.check_transitions(view, content)
                        .map_err(|error| match error {
                            CapabilityError::PermissionDenied(reason) => {
                                CapabilityError::denied(format!("{}{reason}", at(index)))
                            }
                            other => other,
                        })?;
                if content.kind == AtomKind::Transition {
                    content.labels = labels;
                }
            }
            if let Some(reason) = self.grip.restriction.forbids_writing(content) {
                return Err(CapabilityError::denied(format!("{}{reason}", at(index))));
            }
        }
        // In a fleet, one node writes a world at a time.
        self.grip.node.claim_world(&self.world).await?;
        let outcome = self
            .grip
            .node
            .write(WriteRequest {
                authority: Authority::Principal {
                    key: self.grip.principal,
                    epoch: self.grip.epoch,
                },
                op: WriteOp::Remember {
                    world: self.world.clone(),
                    atoms,
                    key,
                },
            })
            .await?;
        match outcome {
            WriteOutcome::Remembered { receipts, replayed } => Ok((receipts, replayed)),
            other => unreachable!("remember answered {other:?}"),
        }
    }
}

impl WorldWriter {
    /// What this capability's restriction says of the transitions `content` makes: the
    /// target must be visible through it (else `notFound`, as if it did not exist), a
    /// label-restricted writer may change only atoms whose every label it may write
    /// (their transition atoms carry those labels), and a transition that takes the
    /// approve right needs the restriction to have kept it. The store checks the rest
    /// (the target's world and state, the principal's rights) inside the write
    /// transaction. Targets are read as facts in place: a target's text and payload are
    /// never copied. Returns the labels of the last target (a transition atom's one).
    fn check_transitions(
        &self,
        view: &ReadView,
        content: &AtomContent,
    ) -> Result<Vec<String>, CapabilityError> {
        let mut target_labels = Vec::new();
        for (transition, target) in content.transitions() {
            let seen = view.with_facts(&self.world, target, |facts| {
                let mut labels = Vec::new();
                facts.any_label(&mut |label| {
                    labels.push(label.to_owned());
                    false
                });
                (
                    self.grip.restriction.shows(facts),
                    *facts.writer() == self.grip.principal,
                    labels,
                )
            })?;
            let (own, labels) = match seen {
                Some((true, own, labels)) => (own, labels),
                Some((false, _, _)) => {
                    return Err(CapabilityError::Store(StoreError::AtomNotFound {
                        world: self.world.clone(),
                        id: hex::encode(target),
                    }));
                }
                // Not in this world: the store says whether it is in another one.
                None => continue,
            };
            // The answer names no label of the target's: a writer need not hold the
            // right to read it.
            if let Some(allowed) = &self.grip.restriction.labels
                && labels.iter().any(|label| !allowed.contains(label))
            {
                let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
                return Err(CapabilityError::denied(format!(
                    "this writer may not {transition} an atom carrying a label besides its \
                     own ({})",
                    allowed.join(", ")
                )));
            }
            if transition.needs_approve_right(own) && !self.grip.restriction.approve {
                return Err(CapabilityError::denied(format!(
                    "this writer was attenuated without the approve right: it may not \
                     {transition} {}",
                    if own {
                        "atoms"
                    } else {
                        "another writer's atoms"
                    }
                )));
            }
            target_labels = labels;
        }
        Ok(target_labels)
    }
}

impl world_writer::Server for WorldWriter {
    async fn transition(
        self: Rc<Self>,
        params: world_writer::TransitionParams,
        mut results: world_writer::TransitionResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(Some(&self.world), 1).wire()?;
        let params = params.get().param()?;
        let target = bytes32(params.get_target().param()?, "the target id").wire()?;
        let transition = match params.get_kind() {
            Ok(TransitionKind::Approve) => Transition::Approve,
            Ok(TransitionKind::Reject) => Transition::Reject,
            Ok(TransitionKind::Deprecate) => Transition::Deprecate,
            Ok(TransitionKind::Retract) => Transition::Retract,
            Err(capnp::NotInSchema(which)) => {
                return Err(
                    CapabilityError::invalid(format!("unknown transition kind {which}")).into(),
                );
            }
        };
        let reason = params
            .get_reason()
            .param()?
            .to_string()
            .map_err(CapabilityError::from)
            .wire()?;
        let mut content = AtomContent::new(
            AtomKind::Transition,
            if reason.is_empty() {
                transition.name().to_owned()
            } else {
                reason
            },
        );
        content.importance = 0.0;
        content.links = vec![Link {
            kind: transition.link_kind(),
            target,
        }];
        let (receipts, _) = self.commit_atoms(vec![content], None, true).await.wire()?;
        write_receipt(results.get().init_receipt(), &receipts[0]);
        Ok(())
    }

    async fn remember(
        self: Rc<Self>,
        params: world_writer::RememberParams,
        mut results: world_writer::RememberResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(Some(&self.world), 1).wire()?;
        let params = params.get().param()?;
        let content = read_content(params.get_atom().param()?).wire()?;
        let key = read_idempotency_key(params.get_idempotency_key()).wire()?;
        let (receipts, replayed) = self.commit_atoms(vec![content], key, false).await.wire()?;
        let mut results = results.get();
        write_receipt(results.reborrow().init_receipt(), &receipts[0]);
        results.set_replayed(replayed);
        Ok(())
    }

    async fn remember_batch(
        self: Rc<Self>,
        params: world_writer::RememberBatchParams,
        mut results: world_writer::RememberBatchResults,
    ) -> Result<(), capnp::Error> {
        self.grip.check(Some(&self.world)).wire()?;
        let params = params.get().param()?;
        let key = read_idempotency_key(params.get_idempotency_key()).wire()?;
        let list = params.get_atoms().param()?;
        if list.is_empty() || list.len() as usize > BATCH_ATOMS_MAX {
            return Err(CapabilityError::invalid(format!(
                "a batch holds 1 to {BATCH_ATOMS_MAX} atoms; this one holds {}",
                list.len()
            ))
            .into());
        }
        self.grip.admit(Some(&self.world), list.len()).wire()?;
        let mut atoms = Vec::with_capacity(list.len() as usize);
        for (index, reader) in list.iter().enumerate() {
            atoms.push(
                read_content(reader)
                    .map_err(|error| match error {
                        CapabilityError::InvalidArgument(message) => CapabilityError::invalid(
                            format!("atom {index} of the batch: {message}"),
                        ),
                        other => other,
                    })
                    .wire()?,
            );
        }
        let (receipts, replayed) = self.commit_atoms(atoms, key, false).await.wire()?;
        let mut results = results.get();
        results.set_replayed(replayed);
        let mut list = results.init_receipts(receipts.len() as u32);
        for (index, receipt) in receipts.iter().enumerate() {
            write_receipt(list.reborrow().get(index as u32), receipt);
        }
        Ok(())
    }

    async fn attenuate(
        self: Rc<Self>,
        params: world_writer::AttenuateParams,
        mut results: world_writer::AttenuateResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(Some(&self.world), 0).wire()?;
        let restriction =
            read_restriction(params.get().param()?.get_restriction().param()?).wire()?;
        let narrowed = WorldWriter::new(self.grip.narrowed(&restriction), self.world.clone());
        results.get().set_writer(crate::metered::client(narrowed));
        Ok(())
    }

    async fn save(
        self: Rc<Self>,
        _: world_writer::SaveParams,
        mut results: world_writer::SaveResults,
    ) -> Result<(), capnp::Error> {
        let token = self
            .grip
            .save(Held::Writer, Some(&self.world), None)
            .wire()?;
        results.get().set_token(&token);
        Ok(())
    }
}
