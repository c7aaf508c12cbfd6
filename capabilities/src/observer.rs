//! `Observer`: watches one world through subscriptions (see `subscription.rs`).

use std::rc::Rc;

use engram_schema::engram_capnp::observer;

use crate::convert::{Param, read_ask, read_restriction};
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;
use crate::token::Held;

pub struct Observer {
    grip: Grip,
    world: String,
}

impl crate::metered::Gripped for Observer {
    fn grip(&self) -> &Grip {
        &self.grip
    }

    fn world(&self) -> Option<&str> {
        Some(&self.world)
    }
}

impl Observer {
    pub(crate) fn new(grip: Grip, world: String) -> Observer {
        Observer { grip, world }
    }
}

impl observer::Server for Observer {
    async fn subscribe(
        self: Rc<Self>,
        params: observer::SubscribeParams,
        mut results: observer::SubscribeResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(Some(&self.world), 0).wire()?;
        let params = params.get().param()?;
        let filter = params.get_filter().param()?;
        if filter.get_as_of() != 0 {
            return Err(CapabilityError::invalid(
                "a subscription delivers what is committed from now on; asOf does not apply",
            )
            .into());
        }
        let request = read_ask(filter).wire()?;
        if !request.vector.is_empty() || !request.text.is_empty() {
            return Err(CapabilityError::invalid(
                "a subscription delivers in commit order; it takes no query vector or text",
            )
            .into());
        }
        let mut filter = request.query;
        // A subscription has no page: `limit` and `beforeCommit` do not apply.
        filter.limit = 1;
        filter.before_commit = None;
        filter.validate().map_err(CapabilityError::from).wire()?;
        let sink = params.get_sink().param()?;
        self.grip
            .node
            .open_subscription(&self.grip.principal)
            .map_err(CapabilityError::ResourceExhausted)
            .wire()?;
        let subscription = crate::subscription::start(
            self.grip.clone(),
            self.world.clone(),
            filter,
            sink,
            params.get_from_commit(),
        );
        results.get().set_subscription(subscription);
        Ok(())
    }

    async fn attenuate(
        self: Rc<Self>,
        params: observer::AttenuateParams,
        mut results: observer::AttenuateResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(Some(&self.world), 0).wire()?;
        let restriction =
            read_restriction(params.get().param()?.get_restriction().param()?).wire()?;
        let narrowed = Observer::new(self.grip.narrowed(&restriction), self.world.clone());
        results.get().set_observer(crate::metered::client(narrowed));
        Ok(())
    }

    async fn save(
        self: Rc<Self>,
        _: observer::SaveParams,
        mut results: observer::SaveResults,
    ) -> Result<(), capnp::Error> {
        let token = self
            .grip
            .save(Held::Observer, Some(&self.world), None)
            .wire()?;
        results.get().set_token(&token);
        Ok(())
    }
}
