//! Principals: the ed25519 keys the node knows, with names and grants.

use serde::{Deserialize, Serialize};

use crate::atom::PublicKey;
use crate::error::StoreError;
use crate::limits::{PRINCIPAL_GRANTS_MAX, PRINCIPAL_NAME_BYTES_MAX};
use crate::world::validate_world_name;

/// The rights a principal holds in one world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub world: String,
    pub read: bool,
    pub write: bool,
    pub observe: bool,
    /// May approve, reject and deprecate atoms, and supersede other writers' atoms
    /// (records before lifecycles have none).
    #[serde(default)]
    pub approve: bool,
    /// How fast the principal may use the world (records before it have none).
    #[serde(default, skip_serializing_if = "Rate::is_unlimited")]
    pub rate: Rate,
}

/// A token-bucket rate: calls and atoms per second; 0 sets no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub calls_per_second: u32,
    pub atoms_per_second: u32,
}

impl Rate {
    /// No limit at all.
    pub const UNLIMITED: Rate = Rate {
        calls_per_second: 0,
        atoms_per_second: 0,
    };

    pub fn is_unlimited(&self) -> bool {
        *self == Rate::UNLIMITED
    }

    /// The slower of the two in each dimension (0, no limit, is the fastest).
    pub fn narrow(&self, other: &Rate) -> Rate {
        let slower = |mine: u32, theirs: u32| match (mine, theirs) {
            (0, theirs) => theirs,
            (mine, 0) => mine,
            (mine, theirs) => mine.min(theirs),
        };
        Rate {
            calls_per_second: slower(self.calls_per_second, other.calls_per_second),
            atoms_per_second: slower(self.atoms_per_second, other.atoms_per_second),
        }
    }
}

/// A principal as stored. Admins hold every right in every world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    #[serde(with = "hex::serde")]
    pub public_key: PublicKey,
    pub admin: bool,
    pub grants: Vec<Grant>,
}

/// A right in a world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    Observe,
    /// Approve, reject and deprecate atoms; supersede other writers' atoms.
    Approve,
}

impl Principal {
    /// Whether this principal holds `right` in `world`.
    pub fn holds(&self, world: &str, right: Right) -> bool {
        self.admin
            || self.grants.iter().any(|grant| {
                grant.world == world
                    && match right {
                        Right::Read => grant.read,
                        Right::Write => grant.write,
                        Right::Observe => grant.observe,
                        Right::Approve => grant.approve,
                    }
            })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a principal always serialises")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
            what: format!("principal record: {error}"),
        })
    }
}

/// Checks a principal name: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn validate_principal_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= PRINCIPAL_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidPrincipal {
            reason: format!(
                "name {name:?} must be 1 to {PRINCIPAL_NAME_BYTES_MAX} bytes of letters, digits, '.', '_' and '-'"
            ),
        })
    }
}

/// Checks a grant list: valid, distinct world names, within the limit.
pub(crate) fn validate_grants(grants: &[Grant]) -> Result<(), StoreError> {
    if grants.len() > PRINCIPAL_GRANTS_MAX {
        return Err(StoreError::InvalidPrincipal {
            reason: format!(
                "{} grants; the limit is {PRINCIPAL_GRANTS_MAX}",
                grants.len()
            ),
        });
    }
    for (position, grant) in grants.iter().enumerate() {
        validate_world_name(&grant.world)?;
        if grants[..position]
            .iter()
            .any(|other| other.world == grant.world)
        {
            return Err(StoreError::InvalidPrincipal {
                reason: format!("world {:?} is granted twice", grant.world),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod decoding_anything {
    //! Principal records are JSON read back from the file: whatever a damaged or
    //! hostile file holds must decode to a principal or an error, never a panic, and a
    //! principal that decodes encodes back to itself.
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{cases, damaged};

    fn valid_record() -> Vec<u8> {
        Principal {
            name: "agent-7".into(),
            public_key: [3; 32],
            admin: false,
            grants: vec![Grant {
                world: "team/auth".into(),
                read: true,
                write: true,
                observe: false,
                approve: true,
                rate: Rate {
                    calls_per_second: 5,
                    atoms_per_second: 50,
                },
            }],
        }
        .encode()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn any_bytes_decode_to_a_principal_or_an_error(bytes in damaged(valid_record())) {
            if let Ok(principal) = Principal::decode(&bytes) {
                let _ = principal.holds("team/auth", Right::Write);
                prop_assert_eq!(Principal::decode(&principal.encode()).unwrap(), principal);
            }
        }
    }

    #[test]
    fn the_valid_record_decodes() {
        let principal = Principal::decode(&valid_record()).unwrap();
        assert!(principal.holds("team/auth", Right::Approve));
    }
}
