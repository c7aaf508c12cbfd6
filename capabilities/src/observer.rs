//! `Observer`: watches one world. Subscriptions arrive in a later version; until then
//! `subscribe` says so with `unavailable`, and attenuation already narrows.

use std::rc::Rc;

use engram_schema::engram_capnp::observer;

use crate::convert::{malformed, read_restriction};
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;

pub struct Observer {
    grip: Grip,
    world: String,
}

impl Observer {
    pub(crate) fn new(grip: Grip, world: String) -> Observer {
        Observer { grip, world }
    }
}

impl observer::Server for Observer {
    async fn subscribe(
        self: Rc<Self>,
        _: observer::SubscribeParams,
        _: observer::SubscribeResults,
    ) -> Result<(), capnp::Error> {
        self.grip.check(Some(&self.world)).wire()?;
        Err(CapabilityError::Unavailable(
            "subscriptions are not served by this node version; poll WorldReader.replay with a cursor".into(),
        )
        .into())
    }

    async fn attenuate(
        self: Rc<Self>,
        params: observer::AttenuateParams,
        mut results: observer::AttenuateResults,
    ) -> Result<(), capnp::Error> {
        self.grip.check(Some(&self.world)).wire()?;
        let restriction =
            read_restriction(params.get()?.get_restriction().map_err(malformed).wire()?).wire()?;
        let narrowed = Observer::new(self.grip.narrowed(&restriction), self.world.clone());
        results.get().set_observer(capnp_rpc::new_client(narrowed));
        Ok(())
    }
}
