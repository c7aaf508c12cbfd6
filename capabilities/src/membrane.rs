//! `Membrane`: a logged-in principal's source of epoch-scoped capabilities.

use std::rc::Rc;

use engram_schema::engram_capnp::membrane;
use engram_store::{PublicKey, Rate, Right};

use crate::admin::Admin;
use crate::convert::{Param, write_epoch, write_principal};
use crate::error::Wire;
use crate::grip::{CallBudget, Grip};
use crate::node::Node;
use crate::observer::Observer;
use crate::peer::Peer;
use crate::restriction::Restriction;
use crate::signer::Signer;
use crate::world_reader::WorldReader;
use crate::world_writer::WorldWriter;

pub struct Membrane {
    node: Rc<Node>,
    principal: PublicKey,
    /// The principal's name at login, for the log.
    name: Rc<str>,
    /// Who logged in: a token to revoke counts against its login rate.
    peer: Peer,
    /// The calls-in-flight budget of the connection this login came on, shared by every
    /// capability it grafts (and by every other login on that connection).
    budget: Rc<CallBudget>,
}

impl crate::metered::Caller for Membrane {
    fn principal(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn slow_call(&self) -> std::time::Duration {
        self.node.limits.slow_call
    }
}

impl Membrane {
    pub(crate) fn new(
        node: Rc<Node>,
        principal: PublicKey,
        name: Rc<str>,
        peer: Peer,
        budget: Rc<CallBudget>,
    ) -> Membrane {
        Membrane {
            node,
            principal,
            name,
            peer,
            budget,
        }
    }
}

/// Whether `principal` may use `world` at all (an admin: every world).
fn may_use(principal: &engram_store::Principal, world: &str) -> bool {
    principal.admin || (principal.grants.iter()).any(|grant| grant.world == world)
}

impl membrane::Server for Membrane {
    async fn graft(
        self: Rc<Self>,
        _: membrane::GraftParams,
        mut results: membrane::GraftResults,
    ) -> Result<(), capnp::Error> {
        let node = &self.node;
        node.fleet_gate().wire()?;
        // One snapshot of the policy: the capabilities work under what the graft lists.
        let (view, principal, epoch, generation) = node
            .policy_view(&self.principal, "this principal has been removed")
            .await
            .wire()?;
        let worlds: Vec<_> = view
            .worlds()
            .wire()?
            .into_iter()
            .filter(|world| may_use(&principal, &world.name))
            .collect();
        drop(view);
        let grip = Grip {
            node: node.clone(),
            principal: self.principal,
            name: principal.name.as_str().into(),
            epoch: epoch.number,
            generation,
            restriction: Rc::new(Restriction::NONE),
            audit_restriction: Restriction::NONE.describe().into(),
            budget: self.budget.clone(),
            rates: Rc::new([]),
            lineage: crate::rate::Lineage::root(),
            tokens: Rc::new([]),
        };
        let mut results = results.get();
        write_epoch(results.reborrow().init_epoch(), &epoch);
        write_principal(results.reborrow().init_principal(), &principal);
        let mut list = results.reborrow().init_worlds(worlds.len() as u32);
        for (index, world) in worlds.iter().enumerate() {
            let mut entry = list.reborrow().get(index as u32);
            entry.set_world(world.name.as_str());
            // The grant's rate, shared by every login of the principal.
            let rate = principal
                .grants
                .iter()
                .find(|grant| grant.world == world.name)
                .map_or(Rate::UNLIMITED, |grant| grant.rate);
            let grip = Grip {
                rates: node
                    .grant_rate(&self.principal, &world.name, rate)
                    .into_iter()
                    .collect(),
                ..grip.clone()
            };
            if principal.holds(&world.name, Right::Read) {
                entry.set_reader(crate::metered::client(WorldReader::new(
                    grip.clone(),
                    world.name.clone(),
                )));
            }
            if principal.holds(&world.name, Right::Write) {
                entry.set_writer(crate::metered::client(WorldWriter::new(
                    grip.clone(),
                    world.name.clone(),
                )));
            }
            if principal.holds(&world.name, Right::Observe) {
                entry.set_observer(crate::metered::client(Observer::new(
                    grip.clone(),
                    world.name.clone(),
                )));
            }
        }
        results.set_signer(crate::metered::client(Signer::new(grip.clone(), None)));
        if principal.admin {
            results.set_admin(crate::metered::client(Admin::new(grip)));
        }
        Ok(())
    }

    async fn fleet(
        self: Rc<Self>,
        _: membrane::FleetParams,
        mut results: membrane::FleetResults,
    ) -> Result<(), capnp::Error> {
        let node = &self.node;
        node.fleet_gate().wire()?;
        let (view, principal, _, _) = node
            .policy_view(&self.principal, "this principal has been removed")
            .await
            .wire()?;
        drop(view);
        let fleet = node.fleet.borrow().clone();
        let mut status = results.get().init_status();
        status.set_node_key(&node.node_key());
        let Some(fleet) = fleet else {
            return Ok(());
        };
        // Only the worlds the principal may use, and only they cost anything: the
        // others' names, owners and sizes are not its to learn.
        let granted: std::collections::HashSet<&str> = (principal.grants.iter())
            .map(|grant| grant.world.as_str())
            .collect();
        let report = fleet.status(&|world| principal.admin || granted.contains(world));
        let millis = |ago: Option<std::time::Duration>| {
            ago.map_or(u64::MAX, |ago| {
                ago.as_millis().min(u64::MAX as u128 - 1) as u64
            })
        };
        status.set_name(report.name.as_str());
        status.set_address(report.address.as_str());
        status.set_lease_ms(report.lease.as_millis() as u64);
        status.set_confirmed_ago_ms(millis(report.confirmed_ago));
        let mut nodes = status.reborrow().init_nodes(report.nodes.len() as u32);
        for (index, reported) in report.nodes.iter().enumerate() {
            let mut entry = nodes.reborrow().get(index as u32);
            entry.set_key(&reported.key);
            entry.set_address(reported.address.as_str());
            entry.set_slot(reported.slot as u32);
            entry.set_seen_ago_ms(millis(reported.seen_ago));
            entry.set_confirmed_ago_ms(millis(reported.confirmed_ago));
        }
        let mut worlds = status.init_worlds(report.worlds.len() as u32);
        for (index, reported) in report.worlds.iter().enumerate() {
            let mut entry = worlds.reborrow().get(index as u32);
            entry.set_world(reported.world.as_str());
            if let Some((key, address)) = &reported.owner {
                entry.set_owner_key(key);
                entry.set_owner_address(address.as_str());
            }
            entry.set_stream_position(reported.stream_position);
            entry.set_held_position(reported.held_position);
        }
        Ok(())
    }

    async fn revoke_token(
        self: Rc<Self>,
        params: membrane::RevokeTokenParams,
        _: membrane::RevokeTokenResults,
    ) -> Result<(), capnp::Error> {
        let token = params.get().param()?.get_token().param()?;
        self.node.login_attempt(&self.peer, &self.budget).wire()?;
        let _permit = CallBudget::begin_call(&self.budget).wire()?;
        self.node
            .revoke_token(self.principal, self.node.epoch(), token, false)
            .await
            .wire()
    }
}
