//! Policy: the epoch, the principals and their grants, and the worlds' records — what a
//! fleet of nodes shares (engram-fleet), and what admins change on one node.
//!
//! A change is *planned* against the tables as they are (the actor's authority, then
//! the op's rules: names, grants naming existing worlds, the last admin), which gives a
//! [`PolicyChange`]: the record as it will be. Applying a change sets that record and
//! checks nothing, so the same change applied twice, or on another node, leaves the same
//! state. A node alone plans and applies in one transaction (`write.rs`); a node in a
//! fleet plans on its snapshot, publishes the change to the fleet, and applies it when the
//! fleet has it (`WriteOp::ApplyPolicy`).

use redb::ReadableTable;

use crate::atom::{Hash, PublicKey};
use crate::epoch::Epoch;
use crate::error::StoreError;
use crate::limits::ATOM_VECTOR_DIMENSIONS_MAX;
use crate::principal::{Principal, validate_grants, validate_principal_name};
use crate::world::{WorldInfo, WorldState, validate_world_name};
use crate::write::{Authority, WriteOp, WriteRequest, current_epoch};

/// One policy record as it will be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// The epoch advanced to this one (applying an older or equal epoch changes nothing).
    Epoch(Epoch),
    /// The principal of this name, as it will be (added, or its grants changed).
    Principal(Principal),
    /// The principal of this name is removed.
    PrincipalRemoved(Principal),
    /// A world created (with no atoms), or its state changed; its atom count and vector
    /// dimension, once it has atoms, are the world's own and never set by a change.
    World(WorldInfo),
}

/// The tables a change is planned against: a write transaction's, or a snapshot's.
pub(crate) struct PolicyTables<'a, W, P, N, E> {
    pub worlds: &'a W,
    pub principals: &'a P,
    pub names: &'a N,
    pub epochs: &'a E,
}

type Checked<T> = Result<Result<T, StoreError>, StoreError>;

impl<W, P, N, E> PolicyTables<'_, W, P, N, E>
where
    W: ReadableTable<&'static str, (u8, u64, u32)>,
    P: ReadableTable<PublicKey, &'static [u8]>,
    N: ReadableTable<&'static str, PublicKey>,
    E: ReadableTable<u64, (Hash, i64)>,
{
    pub fn epoch(&self) -> Result<Epoch, StoreError> {
        current_epoch(self.epochs)
    }

    /// Who asks for `request`, in epoch `epoch`: none for the node itself, else the
    /// principal, still present, asking through a capability of this epoch. Anything
    /// but a `remember`, or the revocation of the principal's own token, takes an admin.
    pub fn actor(&self, epoch: u64, request: &WriteRequest) -> Checked<Option<Principal>> {
        let Authority::Principal { key, epoch: issued } = request.authority else {
            return Ok(Ok(None));
        };
        if issued != epoch {
            return Ok(Err(StoreError::StaleEpoch {
                issued,
                current: epoch,
            }));
        }
        let Some(bytes) = self.principals.get(key)? else {
            return Ok(Err(StoreError::PermissionDenied {
                reason: "this principal has been removed".into(),
            }));
        };
        let actor = Principal::decode(bytes.value())?;
        let admin_only = match &request.op {
            WriteOp::Remember { .. } => false,
            WriteOp::RevokeToken { owner, .. } => *owner != actor.public_key,
            _ => true,
        };
        if admin_only && !actor.admin {
            return Ok(Err(StoreError::PermissionDenied {
                reason: format!("principal {:?} is not an admin", actor.name),
            }));
        }
        Ok(Ok(Some(actor)))
    }

    /// What a policy op changes, if its rules allow it; `None` for an op that is not
    /// one (`remember`, token revocations, changes already planned).
    pub fn plan(
        &self,
        epoch: &Epoch,
        op: &WriteOp,
        now_unix_ms: i64,
    ) -> Checked<Option<PolicyChange>> {
        let change = match op {
            WriteOp::CreateWorld { name, dimension } => {
                if let Err(error) = validate_world_name(name) {
                    return Ok(Err(error));
                }
                if *dimension as usize > ATOM_VECTOR_DIMENSIONS_MAX {
                    return Ok(Err(StoreError::InvalidWorldDimension {
                        dimension: *dimension,
                    }));
                }
                if self.worlds.get(name.as_str())?.is_some() {
                    return Ok(Err(StoreError::WorldExists {
                        world: name.clone(),
                    }));
                }
                PolicyChange::World(WorldInfo {
                    name: name.clone(),
                    state: WorldState::Active,
                    atoms: 0,
                    dimension: *dimension,
                })
            }
            WriteOp::SetWorldState { name, state } => match self.world(name)? {
                Some(world) => PolicyChange::World(WorldInfo {
                    state: *state,
                    ..world
                }),
                None => {
                    return Ok(Err(StoreError::WorldNotFound {
                        world: name.clone(),
                    }));
                }
            },
            WriteOp::AddPrincipal(principal) => {
                if let Err(error) = validate_principal_name(&principal.name) {
                    return Ok(Err(error));
                }
                if let Err(error) = self.check_grants(&principal.grants)? {
                    return Ok(Err(error));
                }
                if self.names.get(principal.name.as_str())?.is_some() {
                    return Ok(Err(StoreError::PrincipalExists {
                        what: "name",
                        value: principal.name.clone(),
                    }));
                }
                if self.principals.get(principal.public_key)?.is_some() {
                    return Ok(Err(StoreError::PrincipalExists {
                        what: "public key",
                        value: hex::encode(principal.public_key),
                    }));
                }
                PolicyChange::Principal(principal.clone())
            }
            WriteOp::SetGrants { name, grants } => {
                let Some(principal) = self.principal_by_name(name)? else {
                    return Ok(Err(StoreError::PrincipalNotFound { name: name.clone() }));
                };
                if let Err(error) = self.check_grants(grants)? {
                    return Ok(Err(error));
                }
                PolicyChange::Principal(Principal {
                    grants: grants.clone(),
                    ..principal
                })
            }
            WriteOp::RemovePrincipal { name } => {
                let Some(principal) = self.principal_by_name(name)? else {
                    return Ok(Err(StoreError::PrincipalNotFound { name: name.clone() }));
                };
                if principal.admin && self.count_admins()? == 1 {
                    return Ok(Err(StoreError::LastAdmin { name: name.clone() }));
                }
                PolicyChange::PrincipalRemoved(principal)
            }
            WriteOp::AdvanceEpoch { head } => PolicyChange::Epoch(Epoch {
                number: epoch.number + 1,
                head: *head,
                advanced_at_unix_ms: now_unix_ms,
            }),
            WriteOp::Remember { .. }
            | WriteOp::RevokeToken { .. }
            | WriteOp::ApplyPolicy(_)
            | WriteOp::SetCommitSlot(_)
            | WriteOp::Replicate { .. } => return Ok(Ok(None)),
        };
        Ok(Ok(Some(change)))
    }

    pub fn world(&self, name: &str) -> Result<Option<WorldInfo>, StoreError> {
        match self.worlds.get(name)? {
            Some(value) => WorldInfo::from_record(name, value.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn principal_by_name(&self, name: &str) -> Result<Option<Principal>, StoreError> {
        let Some(key) = self.names.get(name)? else {
            return Ok(None);
        };
        let key = key.value();
        let bytes = self
            .principals
            .get(key)?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("principal name {name:?} points at a missing key"),
            })?;
        Principal::decode(bytes.value()).map(Some)
    }

    fn count_admins(&self) -> Result<usize, StoreError> {
        let mut admins = 0;
        for entry in self.principals.iter()? {
            let (_, bytes) = entry?;
            if Principal::decode(bytes.value())?.admin {
                admins += 1;
            }
        }
        Ok(admins)
    }

    /// Validates grants: names, duplicates, and that every granted world exists.
    fn check_grants(&self, grants: &[crate::principal::Grant]) -> Checked<()> {
        if let Err(error) = validate_grants(grants) {
            return Ok(Err(error));
        }
        for grant in grants {
            if self.worlds.get(grant.world.as_str())?.is_none() {
                return Ok(Err(StoreError::WorldNotFound {
                    world: grant.world.clone(),
                }));
            }
        }
        Ok(Ok(()))
    }
}
