//! `Admin`: worlds, principals and the epoch, for admin principals.

use std::rc::Rc;

use engram_schema::engram_capnp::admin;
use engram_store::{Authority, Principal, WorldState, WriteOp, WriteOutcome, WriteRequest};

use crate::backup::{Backup, BackupSlot};
use crate::convert::{
    Param, bytes32, malformed, read_epoch_head, read_grants, write_epoch, write_principal,
    write_world,
};
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;

pub struct Admin {
    grip: Grip,
}

impl crate::metered::Gripped for Admin {
    fn grip(&self) -> &Grip {
        &self.grip
    }
}

impl Admin {
    pub(crate) fn new(grip: Grip) -> Admin {
        Admin { grip }
    }

    /// The epoch guard, then a live check that the principal is still an admin.
    fn authorize(&self) -> Result<(), CapabilityError> {
        self.grip.check(None)?;
        let principal = self
            .grip
            .node
            .store
            .read()?
            .principal(&self.grip.principal)?;
        match principal {
            Some(principal) if principal.admin => Ok(()),
            _ => Err(CapabilityError::denied(
                "this principal is no longer an admin",
            )),
        }
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, capnp::Error> {
        self.authorize().wire()?;
        let _permit = self.grip.begin_call().wire()?;
        self.grip
            .node
            .write_policy(WriteRequest {
                authority: Authority::Principal {
                    key: self.grip.principal,
                    epoch: self.grip.epoch,
                },
                op,
            })
            .await
            .wire()
    }

    async fn set_world_state(
        &self,
        name: capnp::Result<capnp::text::Reader<'_>>,
        state: WorldState,
        builder: engram_schema::engram_capnp::world_info::Builder<'_>,
    ) -> Result<(), capnp::Error> {
        let name = text(name).wire()?;
        match self.write(WriteOp::SetWorldState { name, state }).await? {
            WriteOutcome::World(world) => write_world(builder, &world),
            other => unreachable!("set world state answered {other:?}"),
        }
        Ok(())
    }
}

fn text(reader: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, CapabilityError> {
    Ok(reader.map_err(malformed)?.to_string()?)
}

impl admin::Server for Admin {
    async fn create_world(
        self: Rc<Self>,
        params: admin::CreateWorldParams,
        mut results: admin::CreateWorldResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get().param()?;
        let name = text(params.get_name()).wire()?;
        let dimension = params.get_vector_dimension();
        match self.write(WriteOp::CreateWorld { name, dimension }).await? {
            WriteOutcome::World(world) => write_world(results.get().init_world(), &world),
            other => unreachable!("create world answered {other:?}"),
        }
        Ok(())
    }

    async fn archive_world(
        self: Rc<Self>,
        params: admin::ArchiveWorldParams,
        mut results: admin::ArchiveWorldResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get().param()?;
        self.set_world_state(
            params.get_name(),
            WorldState::Archived,
            results.get().init_world(),
        )
        .await
    }

    async fn resume_world(
        self: Rc<Self>,
        params: admin::ResumeWorldParams,
        mut results: admin::ResumeWorldResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get().param()?;
        self.set_world_state(
            params.get_name(),
            WorldState::Active,
            results.get().init_world(),
        )
        .await
    }

    async fn list_worlds(
        self: Rc<Self>,
        _: admin::ListWorldsParams,
        mut results: admin::ListWorldsResults,
    ) -> Result<(), capnp::Error> {
        self.authorize().wire()?;
        let worlds = self.grip.node.store.read().wire()?.worlds().wire()?;
        let mut list = results.get().init_worlds(worlds.len() as u32);
        for (index, world) in worlds.iter().enumerate() {
            write_world(list.reborrow().get(index as u32), world);
        }
        Ok(())
    }

    async fn add_principal(
        self: Rc<Self>,
        params: admin::AddPrincipalParams,
        mut results: admin::AddPrincipalResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get().param()?;
        let principal = Principal {
            name: text(params.get_name()).wire()?,
            public_key: bytes32(params.get_public_key().param()?, "the public key").wire()?,
            admin: params.get_admin(),
            grants: read_grants(params.get_grants().param()?).wire()?,
        };
        if ed25519_dalek::VerifyingKey::from_bytes(&principal.public_key).is_err() {
            return Err(
                CapabilityError::invalid("the public key is not a valid ed25519 key").into(),
            );
        }
        match self.write(WriteOp::AddPrincipal(principal)).await? {
            WriteOutcome::Principal(principal) => {
                tracing::info!(principal = %principal.name, "principal added");
                write_principal(results.get().init_principal(), &principal)
            }
            other => unreachable!("add principal answered {other:?}"),
        }
        Ok(())
    }

    async fn set_grants(
        self: Rc<Self>,
        params: admin::SetGrantsParams,
        mut results: admin::SetGrantsResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get().param()?;
        let name = text(params.get_name()).wire()?;
        let grants = read_grants(params.get_grants().param()?).wire()?;
        match self.write(WriteOp::SetGrants { name, grants }).await? {
            WriteOutcome::Principal(principal) => {
                tracing::info!(principal = %principal.name, "grants replaced; its live capabilities are revoked");
                write_principal(results.get().init_principal(), &principal)
            }
            other => unreachable!("set grants answered {other:?}"),
        }
        Ok(())
    }

    async fn remove_principal(
        self: Rc<Self>,
        params: admin::RemovePrincipalParams,
        _: admin::RemovePrincipalResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get().param()?.get_name()).wire()?;
        match self.write(WriteOp::RemovePrincipal { name }).await? {
            WriteOutcome::PrincipalRemoved(principal) => {
                tracing::info!(principal = %principal.name, "principal removed; its live capabilities are revoked");
            }
            other => unreachable!("remove principal answered {other:?}"),
        }
        Ok(())
    }

    async fn list_principals(
        self: Rc<Self>,
        _: admin::ListPrincipalsParams,
        mut results: admin::ListPrincipalsResults,
    ) -> Result<(), capnp::Error> {
        self.authorize().wire()?;
        let principals = self.grip.node.store.read().wire()?.principals().wire()?;
        let mut list = results.get().init_principals(principals.len() as u32);
        for (index, principal) in principals.iter().enumerate() {
            write_principal(list.reborrow().get(index as u32), principal);
        }
        Ok(())
    }

    async fn current_epoch(
        self: Rc<Self>,
        _: admin::CurrentEpochParams,
        mut results: admin::CurrentEpochResults,
    ) -> Result<(), capnp::Error> {
        self.authorize().wire()?;
        let epoch = self.grip.node.store.read().wire()?.epoch().wire()?;
        write_epoch(results.get().init_epoch(), &epoch);
        Ok(())
    }

    async fn advance_epoch(
        self: Rc<Self>,
        params: admin::AdvanceEpochParams,
        mut results: admin::AdvanceEpochResults,
    ) -> Result<(), capnp::Error> {
        let head = read_epoch_head(params.get().param()?.get_head().param()?).wire()?;
        match self.write(WriteOp::AdvanceEpoch { head }).await? {
            WriteOutcome::Epoch(epoch) => {
                tracing::info!(epoch = epoch.number, head = %hex::encode(epoch.head), "epoch advanced; older capabilities are revoked");
                write_epoch(results.get().init_epoch(), &epoch)
            }
            other => unreachable!("advance epoch answered {other:?}"),
        }
        Ok(())
    }

    async fn backup(
        self: Rc<Self>,
        _: admin::BackupParams,
        mut results: admin::BackupResults,
    ) -> Result<(), capnp::Error> {
        self.authorize().wire()?;
        let node = &self.grip.node;
        let directory = node
            .backup_directory()
            .ok_or_else(|| CapabilityError::Unavailable("this node makes no backups".into()))
            .wire()?;
        let slot = BackupSlot::take(node).wire()?;
        let backup = Backup::make(self.grip.clone(), slot, directory)
            .await
            .wire()?;
        results.get().set_backup(crate::metered::client(backup));
        Ok(())
    }

    async fn health(
        self: Rc<Self>,
        _: admin::HealthParams,
        mut results: admin::HealthResults,
    ) -> Result<(), capnp::Error> {
        self.authorize().wire()?;
        let node = &self.grip.node;
        let view = node.store.read().wire()?;
        let worlds = view.worlds().wire()?;
        let mut health = results.get().init_health();
        health.set_version(env!("CARGO_PKG_VERSION"));
        write_epoch(health.reborrow().init_epoch(), &view.epoch().wire()?);
        health.set_last_commit(view.last_commit());
        health.set_atoms(worlds.iter().map(|world| world.atoms).sum());
        health.set_worlds(worlds.len() as u64);
        health.set_principals(view.principals().wire()?.len() as u64);
        health.set_uptime_ms(node.started.elapsed().as_millis() as u64);
        Ok(())
    }

    async fn audit(
        self: Rc<Self>,
        params: admin::AuditParams,
        mut results: admin::AuditResults,
    ) -> Result<(), capnp::Error> {
        self.authorize().wire()?;
        let params = params.get().param()?;
        let named = params
            .get_principal()
            .param()?
            .to_str()
            .map_err(CapabilityError::from)
            .wire()?;
        let node = &self.grip.node;
        let key = match hex::decode(named)
            .ok()
            .and_then(|key| <[u8; 32]>::try_from(key).ok())
        {
            Some(key) => key,
            None => node
                .store
                .read()
                .wire()?
                .principals()
                .wire()?
                .into_iter()
                .find(|principal| principal.name == named)
                .map(|principal| principal.public_key)
                .ok_or_else(|| {
                    CapabilityError::Store(engram_store::StoreError::PrincipalNotFound {
                        name: named.to_owned(),
                    })
                })
                .wire()?,
        };
        let to_commit = match params.get_to_commit() {
            0 => u64::MAX,
            to_commit => to_commit,
        };
        // Up to a thousand records, each with a plan of up to 64 KiB to render: off the
        // RPC thread.
        let (audit, from_commit) = (node.audit.clone(), params.get_from_commit());
        let (after_sequence, limit) = (params.get_after_sequence(), params.get_limit());
        let entries = self
            .grip
            .off_thread(move |_| audit.read(&key, from_commit, to_commit, after_sequence, limit))
            .await
            .wire()?;
        let mut list = results.get().init_records(entries.len() as u32);
        for (index, entry) in entries.iter().enumerate() {
            let mut record = list.reborrow().get(index as u32);
            record.set_principal(&entry.principal);
            record.set_world(entry.world.as_str());
            record.set_method(entry.method.as_str());
            record.set_restriction(entry.restriction.as_str());
            record.set_query(entry.query.as_str());
            record.set_commit(entry.commit);
            record.set_sequence(entry.sequence);
            record.set_at_unix_ms(entry.at_unix_ms);
            let mut ids = record.init_ids(entry.ids.len() as u32);
            for (position, id) in entry.ids.iter().enumerate() {
                ids.set(position as u32, id);
            }
        }
        Ok(())
    }

    async fn revoke_token(
        self: Rc<Self>,
        params: admin::RevokeTokenParams,
        _: admin::RevokeTokenResults,
    ) -> Result<(), capnp::Error> {
        self.authorize().wire()?;
        let token = params.get().param()?.get_token().param()?;
        let _permit = self.grip.begin_call().wire()?;
        let grip = &self.grip;
        grip.node
            .revoke_token(grip.principal, grip.epoch, token, true)
            .await
            .wire()
    }
}
