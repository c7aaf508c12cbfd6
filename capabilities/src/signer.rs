//! `Signer`: signs for a principal with a key derived inside the node from the node key
//! and the principal's key, so it never leaves the node and needs no storage.

use std::collections::BTreeSet;
use std::rc::Rc;

use ed25519_dalek::{Signer as _, SigningKey};
use engram_schema::engram_capnp::signer;
use engram_schema::signed_message;

use crate::convert::Param;
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;
use crate::limits::{SIGN_DOMAIN_BYTES_MAX, SIGN_DOMAINS_MAX, SIGN_MESSAGE_BYTES_MAX};
use crate::token::Held;

/// BLAKE3 key-derivation context of principals' signing keys.
const SIGNER_KEY_CONTEXT: &str = "engram 2026-11 principal signing key v1";

pub struct Signer {
    grip: Grip,
    /// `None`: every domain.
    domains: Option<Rc<BTreeSet<String>>>,
}

impl crate::metered::Gripped for Signer {
    fn grip(&self) -> &Grip {
        &self.grip
    }
}

impl Signer {
    pub(crate) fn new(grip: Grip, domains: Option<Rc<BTreeSet<String>>>) -> Signer {
        Signer { grip, domains }
    }

    fn key(&self) -> SigningKey {
        let mut hasher = blake3::Hasher::new_derive_key(SIGNER_KEY_CONTEXT);
        hasher.update(self.grip.node.node_key.as_bytes());
        hasher.update(&self.grip.principal);
        SigningKey::from_bytes(hasher.finalize().as_bytes())
    }

    fn check_domain(domain: &str) -> Result<(), CapabilityError> {
        if domain.is_empty() || domain.len() > SIGN_DOMAIN_BYTES_MAX {
            return Err(CapabilityError::invalid(format!(
                "a signing domain is 1 to {SIGN_DOMAIN_BYTES_MAX} bytes; got {}",
                domain.len()
            )));
        }
        if domain.chars().any(char::is_control) {
            return Err(CapabilityError::invalid(format!(
                "signing domain {domain:?} contains a control character"
            )));
        }
        Ok(())
    }
}

impl signer::Server for Signer {
    async fn public_key(
        self: Rc<Self>,
        _: signer::PublicKeyParams,
        mut results: signer::PublicKeyResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(None, 0).wire()?;
        results.get().set_key(self.key().verifying_key().as_bytes());
        Ok(())
    }

    async fn sign(
        self: Rc<Self>,
        params: signer::SignParams,
        mut results: signer::SignResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(None, 0).wire()?;
        let params = params.get().param()?;
        let domain = params
            .get_domain()
            .param()?
            .to_str()
            .map_err(CapabilityError::from)
            .wire()?;
        let message = params.get_message().param()?;
        Signer::check_domain(domain).wire()?;
        if message.len() > SIGN_MESSAGE_BYTES_MAX {
            return Err(CapabilityError::invalid(format!(
                "the message is {} bytes; the limit is {SIGN_MESSAGE_BYTES_MAX}",
                message.len()
            ))
            .into());
        }
        if let Some(domains) = &self.domains
            && !domains.contains(domain)
        {
            return Err(CapabilityError::denied(format!(
                "this signer may not sign in domain {domain:?}"
            ))
            .into());
        }
        let signature = self.key().sign(&signed_message(domain, message));
        results.get().set_signature(&signature.to_bytes());
        Ok(())
    }

    async fn attenuate(
        self: Rc<Self>,
        params: signer::AttenuateParams,
        mut results: signer::AttenuateResults,
    ) -> Result<(), capnp::Error> {
        self.grip.admit(None, 0).wire()?;
        let list = params.get().param()?.get_domains().param()?;
        if list.len() as usize > SIGN_DOMAINS_MAX {
            return Err(CapabilityError::invalid(format!(
                "{} domains; the limit is {SIGN_DOMAINS_MAX}",
                list.len()
            ))
            .into());
        }
        let mut requested = BTreeSet::new();
        for domain in list.iter() {
            let domain = domain
                .param()?
                .to_string()
                .map_err(CapabilityError::from)
                .wire()?;
            Signer::check_domain(&domain).wire()?;
            requested.insert(domain);
        }
        let domains = match &self.domains {
            None => requested,
            Some(held) => held.intersection(&requested).cloned().collect(),
        };
        let narrowed = Signer::new(self.grip.clone(), Some(Rc::new(domains)));
        results.get().set_signer(crate::metered::client(narrowed));
        Ok(())
    }

    async fn save(
        self: Rc<Self>,
        _: signer::SaveParams,
        mut results: signer::SaveResults,
    ) -> Result<(), capnp::Error> {
        let token = self
            .grip
            .save(Held::Signer, None, self.domains.as_deref())
            .wire()?;
        results.get().set_token(&token);
        Ok(())
    }
}
