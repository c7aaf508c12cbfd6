//! `Terminal`: the bootstrap capability. Ed25519 challenge–response login.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use capnp::capability::FromClientHook;
use ed25519_dalek::{Signature, VerifyingKey};
use engram_schema::engram_capnp::{observer, signer, terminal, world_reader, world_writer};
use engram_schema::login_message;

use crate::convert::{Param, bytes32};
use crate::error::{CapabilityError, Wire};
use crate::grip::CallBudget;
use crate::grip::Grip;
use crate::limits::LOGIN_NONCES_PER_CONNECTION_MAX;
use crate::membrane::Membrane;
use crate::node::Node;
use crate::observer::Observer;
use crate::peer::Peer;
use crate::signer::Signer;
pub use crate::token::Held;
use crate::token::{self, Claims};
use crate::world_reader::WorldReader;
use crate::world_writer::WorldWriter;
use engram_store::{Rate, Right};

/// The one answer to every failed login, whatever failed: it does not tell whether a
/// key is registered.
pub const LOGIN_FAILED: &str = "login failed: the key is not registered, the signature \
     does not verify, or the nonce is unknown, used, from another connection or from an \
     earlier epoch; call challenge again";

/// Whether a connection waits on anything the node does for it: a call in flight or a
/// live subscription. A connection that waits on nothing and sends nothing is idle.
#[derive(Clone)]
pub struct Activity(Rc<CallBudget>);

impl Activity {
    pub fn busy(&self) -> bool {
        self.0.busy()
    }

    /// Until when the connection's next calls are not read: set when a call went past
    /// a rate, until the rate allows another.
    pub fn resting_until(&self) -> Option<tokio::time::Instant> {
        self.0.resting_until()
    }
}

/// A capability restored from a token.
pub struct Restored {
    /// Which capability it is.
    pub held: Held,
    /// Its world (empty for a signer).
    pub world: String,
    pub client: capnp::capability::Client,
}

/// One per connection: nonces issued here can be used only here, once.
pub struct Terminal {
    node: Rc<Node>,
    peer: Peer,
    /// (nonce, epoch it was issued in), oldest first.
    nonces: RefCell<VecDeque<([u8; 32], u64)>>,
    /// Notified at the first successful login, which ends the handshake timeout.
    logged_in: Rc<tokio::sync::Notify>,
    /// The connection's calls in flight, shared by every login on it: logging in again
    /// does not buy more.
    budget: Rc<CallBudget>,
}

impl Terminal {
    /// The terminal of a connection from `peer`.
    pub fn new(node: Rc<Node>, peer: Peer) -> Terminal {
        Terminal {
            peer,
            nonces: RefCell::new(VecDeque::with_capacity(LOGIN_NONCES_PER_CONNECTION_MAX)),
            logged_in: Rc::new(tokio::sync::Notify::new()),
            budget: Rc::new(CallBudget::new(
                node.limits.calls_in_flight_per_connection_max,
                node.limits.reads_in_flight_per_connection_max,
            )),
            node,
        }
    }

    /// What the connection waits on, for its idle timeout.
    pub fn activity(&self) -> Activity {
        Activity(self.budget.clone())
    }

    /// Notified (once, with a stored permit) when a login on this connection succeeds.
    pub fn logged_in(&self) -> Rc<tokio::sync::Notify> {
        self.logged_in.clone()
    }

    fn verify_login(
        &self,
        public_key: &[u8],
        nonce: &[u8],
        signature: &[u8],
    ) -> Result<Membrane, CapabilityError> {
        self.node.fleet_gate()?;
        // Refused: the connection rests, so a peer that keeps trying costs nothing.
        self.node.login_attempt(&self.peer, &self.budget)?;
        let nonce = bytes32(nonce, "the nonce")?;
        let public_key = bytes32(public_key, "the public key")?;
        let signature: [u8; 64] = signature.try_into().map_err(|_| {
            CapabilityError::invalid(format!(
                "the signature must be 64 bytes; got {}",
                signature.len()
            ))
        })?;
        let failed = || CapabilityError::Unauthenticated(LOGIN_FAILED.into());
        // Consume the nonce first: it is single-use whatever happens next.
        let issued_epoch = {
            let mut nonces = self.nonces.borrow_mut();
            let position = nonces
                .iter()
                .position(|(issued, _)| *issued == nonce)
                .ok_or_else(failed)?;
            nonces.remove(position).expect("position is in range").1
        };
        if issued_epoch != self.node.epoch() {
            return Err(failed());
        }
        // The signature is checked before the key is looked up, so a registered and an
        // unregistered key fail the same way in the same time.
        let message = login_message(
            &nonce,
            &self.node.node_key.verifying_key().to_bytes(),
            issued_epoch,
        );
        VerifyingKey::from_bytes(&public_key)
            .and_then(|key| key.verify_strict(&message, &Signature::from_bytes(&signature)))
            .map_err(|_| failed())?;
        let principal = self
            .node
            .store
            .read()?
            .principal(&public_key)?
            .ok_or_else(failed)?;
        tracing::info!(principal = %principal.name, peer = %self.peer, "login");
        self.logged_in.notify_one();
        Ok(Membrane::new(
            self.node.clone(),
            public_key,
            principal.name.as_str().into(),
            self.peer,
            self.budget.clone(),
        ))
    }

    /// The live capability a token names (as `restore` returns it), to hand out on
    /// this connection, or why not. Counts as a login attempt. A capability `handed_off`
    /// to a child is narrowed `withoutSave`: its authority ends with the handoff.
    pub async fn restore_token(
        &self,
        token: &[u8],
        handed_off: bool,
    ) -> Result<Restored, CapabilityError> {
        let (claims, grip) = self.open_token(token, handed_off).await?;
        let world = claims.world.unwrap_or_default();
        let client = match claims.held {
            Held::Reader => {
                crate::metered::client::<world_reader::Client, _>(WorldReader::new(
                    grip,
                    world.clone(),
                ))
                .client
            }
            Held::Writer => {
                crate::metered::client::<world_writer::Client, _>(WorldWriter::new(
                    grip,
                    world.clone(),
                ))
                .client
            }
            Held::Observer => {
                crate::metered::client::<observer::Client, _>(Observer::new(grip, world.clone()))
                    .client
            }
            Held::Signer => {
                crate::metered::client::<signer::Client, _>(Signer::new(
                    grip,
                    claims.domains.map(Rc::new),
                ))
                .client
            }
        };
        Ok(Restored {
            held: claims.held,
            world,
            client,
        })
    }

    /// The capability a token names, narrowed by every block, or why not.
    async fn open_token(
        &self,
        token: &[u8],
        handed_off: bool,
    ) -> Result<(Claims, Grip), CapabilityError> {
        let node = &self.node;
        node.fleet_gate()?;
        node.login_attempt(&self.peer, &self.budget)?;
        let mut claims = token::open(&node.token_root, token)?;
        claims.restriction.save &= !handed_off;
        let current = node.epoch();
        if claims.epoch > current {
            // The node names the epoch it mints in; no token of its names a later one.
            return Err(CapabilityError::Unauthenticated(format!(
                "token refused: it names epoch {}, after the current one ({current})",
                claims.epoch
            )));
        }
        if claims.epoch != current {
            return Err(CapabilityError::StaleEpoch {
                issued: claims.epoch,
                current,
            });
        }
        if node.revoked(&claims.revoked_with) {
            return Err(CapabilityError::Unauthenticated(
                "token refused: it, or a token it descends from, has been revoked".into(),
            ));
        }
        let (_, principal, _, generation) = node
            .policy_view(&claims.principal, "the token's principal has been removed")
            .await?;
        let mut rates = Vec::with_capacity(2);
        if let Some(world) = &claims.world {
            let right = match claims.held {
                Held::Reader => Right::Read,
                Held::Writer => Right::Write,
                Held::Observer => Right::Observe,
                Held::Signer => unreachable!("a signer's token names no world"),
            };
            if !principal.holds(world, right) {
                return Err(CapabilityError::denied(format!(
                    "the token's principal no longer holds the {right:?} right in world {world:?}"
                )));
            }
            let grant = principal.grants.iter().find(|grant| &grant.world == world);
            let grant_rate = grant.map_or(Rate::UNLIMITED, |grant| grant.rate);
            rates.extend(node.grant_rate(&claims.principal, world, grant_rate));
        }
        // The buckets of the token's lineage, shared with every copy of it.
        for (key, rate) in claims.lineage.rates.iter() {
            rates.extend(node.lineage_rate(key, *rate));
        }
        tracing::info!(principal = %principal.name, peer = %self.peer, "restore");
        self.logged_in.notify_one();
        let grip = Grip {
            node: node.clone(),
            principal: claims.principal,
            name: principal.name.as_str().into(),
            epoch: claims.epoch,
            generation,
            audit_restriction: claims.restriction.describe().into(),
            restriction: Rc::new(claims.restriction.clone()),
            budget: self.budget.clone(),
            rates: rates.into(),
            lineage: claims.lineage.clone(),
            tokens: claims.revoked_with.clone().into(),
        };
        Ok((claims, grip))
    }
}

impl crate::metered::Caller for Terminal {
    /// Before login, no one.
    fn principal(&self) -> Option<&str> {
        None
    }

    fn slow_call(&self) -> std::time::Duration {
        self.node.limits.slow_call
    }
}

impl Terminal {
    /// The bootstrap capability of a connection: this terminal, its calls metered.
    pub fn into_client(self) -> terminal::Client {
        crate::metered::client(self)
    }
}

impl terminal::Server for Terminal {
    async fn challenge(
        self: Rc<Self>,
        _: terminal::ChallengeParams,
        mut results: terminal::ChallengeResults,
    ) -> Result<(), capnp::Error> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce)
            .map_err(|error| capnp::Error::failed(format!("internal: no randomness: {error}")))?;
        let epoch = self.node.epoch();
        {
            let mut nonces = self.nonces.borrow_mut();
            if nonces.len() == LOGIN_NONCES_PER_CONNECTION_MAX {
                nonces.pop_front();
            }
            nonces.push_back((nonce, epoch));
        }
        let mut results = results.get();
        results.set_nonce(&nonce);
        results.set_node_key(self.node.node_key.verifying_key().as_bytes());
        results.set_epoch(epoch);
        Ok(())
    }

    async fn login(
        self: Rc<Self>,
        params: terminal::LoginParams,
        mut results: terminal::LoginResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get().param()?;
        let membrane = self.verify_login(
            params.get_public_key().param()?,
            params.get_nonce().param()?,
            params.get_signature().param()?,
        );
        let outcome = if membrane.is_ok() { "ok" } else { "failed" };
        metrics::counter!("engram_logins_total", "outcome" => outcome).increment(1);
        let membrane = membrane.wire()?;
        results.get().set_membrane(crate::metered::client(membrane));
        Ok(())
    }

    async fn restore(
        self: Rc<Self>,
        params: terminal::RestoreParams,
        mut results: terminal::RestoreResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get().param()?;
        let token = params.get_token().param()?;
        let restored = self
            .restore_token(token, params.get_without_save())
            .await
            .wire()?;
        let mut results = results.get();
        results.set_world(restored.world.as_str());
        let hook = restored.client.hook;
        match restored.held {
            Held::Reader => results.set_reader(FromClientHook::new(hook)),
            Held::Writer => results.set_writer(FromClientHook::new(hook)),
            Held::Observer => results.set_observer(FromClientHook::new(hook)),
            Held::Signer => results.set_signer(FromClientHook::new(hook)),
        }
        Ok(())
    }
}
