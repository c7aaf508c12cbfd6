//! `WorldWriter`: appends to the grafting principal's chain in one world.

use std::rc::Rc;

use engram_schema::engram_capnp::world_writer;
use engram_store::limits::BATCH_ATOMS_MAX;
use engram_store::{AtomContent, Authority, WriteOp, WriteOutcome, WriteRequest};

use crate::convert::{malformed, read_content, read_restriction, write_receipt};
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;

pub struct WorldWriter {
    grip: Grip,
    world: String,
}

impl WorldWriter {
    pub(crate) fn new(grip: Grip, world: String) -> WorldWriter {
        WorldWriter { grip, world }
    }

    /// Checks the restriction and commits `atoms` durably, all or nothing.
    async fn commit_atoms(
        &self,
        atoms: Vec<AtomContent>,
    ) -> Result<Vec<engram_store::Receipt>, CapabilityError> {
        let _permit = self.grip.begin_call()?;
        // Malformed content is `invalidArgument` before any restriction is considered.
        let at = |index: usize| {
            if atoms.len() > 1 {
                format!("atom {index} of the batch: ")
            } else {
                String::new()
            }
        };
        for (index, content) in atoms.iter().enumerate() {
            if let Err(reason) = content.validate() {
                return Err(CapabilityError::invalid(format!("{}{reason}", at(index))));
            }
        }
        for (index, content) in atoms.iter().enumerate() {
            if let Some(reason) = self.grip.restriction.forbids_writing(content) {
                return Err(CapabilityError::denied(format!("{}{reason}", at(index))));
            }
        }
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
                },
            })
            .await?;
        match outcome {
            WriteOutcome::Remembered(receipts) => Ok(receipts),
            other => unreachable!("remember answered {other:?}"),
        }
    }
}

impl world_writer::Server for WorldWriter {
    async fn remember(
        self: Rc<Self>,
        params: world_writer::RememberParams,
        mut results: world_writer::RememberResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(Some(&self.world), 1).wire()?;
        let content = read_content(params.get()?.get_atom().map_err(malformed).wire()?).wire()?;
        let receipts = self.commit_atoms(vec![content]).await.wire()?;
        write_receipt(results.get().init_receipt(), &receipts[0]);
        Ok(())
    }

    async fn remember_batch(
        self: Rc<Self>,
        params: world_writer::RememberBatchParams,
        mut results: world_writer::RememberBatchResults,
    ) -> Result<(), capnp::Error> {
        self.grip.check(Some(&self.world)).wire()?;
        let list = params.get()?.get_atoms().map_err(malformed).wire()?;
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
        let receipts = self.commit_atoms(atoms).await.wire()?;
        let mut list = results.get().init_receipts(receipts.len() as u32);
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
            read_restriction(params.get()?.get_restriction().map_err(malformed).wire()?).wire()?;
        let narrowed = WorldWriter::new(self.grip.narrowed(&restriction), self.world.clone());
        results.get().set_writer(capnp_rpc::new_client(narrowed));
        Ok(())
    }
}
