//! The fleet's policy bucket: one JetStream key-value bucket (`<fleet>-policy`, one
//! value per key) whose keys and values this module spells. store/FORMAT.md, Fleets,
//! documents them.
//!
//! - `epoch` → `{"number": N, "head": HEX, "advanced_at_unix_ms": T}`
//! - `principal.<hex of the name>` → the principal as the store keeps it (JSON); its
//!   removal is a delete marker whose payload is the removed principal's record.
//! - `world.<hex of the name>` → `{"name": NAME, "state": "active"|"archived",
//!   "dimension": D}`
//!
//! - `node.<hex of the node key>` → `{"slot": S, "address": ADDRESS}`: a node of the
//!   fleet, the commit slot it gives out commits in (`engram_store::CommitSpace`), and
//!   where clients reach it.
//!
//! Names are spelled in hex in keys, so that no name can reach outside its key.

use async_nats::jetstream::kv::Operation;
use engram_store::{Epoch, PolicyChange, Principal, WorldInfo, WorldState};
use serde::{Deserialize, Serialize};

/// The key of the fleet's epoch.
pub const EPOCH_KEY: &str = "epoch";

#[derive(Serialize, Deserialize)]
struct EpochRecord {
    number: u64,
    #[serde(with = "hex::serde")]
    head: [u8; 32],
    advanced_at_unix_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct WorldRecord {
    name: String,
    state: String,
    dimension: u32,
}

/// A node of the fleet, as the bucket holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub slot: u64,
    pub address: String,
}

/// What a bucket entry holds.
pub enum Decoded {
    Policy(PolicyChange),
    Node([u8; 32], NodeRecord),
}

/// The key a node's record is kept under.
pub fn node_key(key: &[u8; 32]) -> String {
    format!("node.{}", hex::encode(key))
}

/// The record of node `key`, as the bucket keeps it.
pub fn encode_node(key: &[u8; 32], node: &NodeRecord) -> Record {
    Record {
        key: node_key(key),
        payload: json(node),
        removal: false,
    }
}

/// A change as the bucket holds it: its key, its payload, and whether it is a removal.
pub struct Record {
    pub key: String,
    pub payload: Vec<u8>,
    pub removal: bool,
}

/// The key a principal's record is kept under.
pub fn principal_key(name: &str) -> String {
    format!("principal.{}", hex::encode(name))
}

/// The key a world's record is kept under.
pub fn world_key(name: &str) -> String {
    format!("world.{}", hex::encode(name))
}

/// How `change` is kept in the bucket.
pub fn encode(change: &PolicyChange) -> Record {
    let (key, payload, removal) = match change {
        PolicyChange::Epoch(epoch) => (
            EPOCH_KEY.to_owned(),
            json(&EpochRecord {
                number: epoch.number,
                head: epoch.head,
                advanced_at_unix_ms: epoch.advanced_at_unix_ms,
            }),
            false,
        ),
        PolicyChange::Principal(principal) => {
            (principal_key(&principal.name), json(principal), false)
        }
        PolicyChange::PrincipalRemoved(principal) => {
            (principal_key(&principal.name), json(principal), true)
        }
        PolicyChange::World(world) => (
            world_key(&world.name),
            json(&WorldRecord {
                name: world.name.clone(),
                state: match world.state {
                    WorldState::Active => "active",
                    WorldState::Archived => "archived",
                }
                .to_owned(),
                dimension: world.dimension,
            }),
            false,
        ),
    };
    Record {
        key,
        payload,
        removal,
    }
}

/// What a bucket entry holds, or why it holds nothing this node knows.
pub fn decode(key: &str, operation: Operation, payload: &[u8]) -> Result<Decoded, String> {
    let bad = |error: serde_json::Error| format!("key {key:?}: {error}");
    if let Some(hex_key) = key.strip_prefix("node.")
        && operation == Operation::Put
    {
        let node_key: [u8; 32] = hex::decode(hex_key)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| format!("key {key:?} does not name a node key"))?;
        let record: NodeRecord = serde_json::from_slice(payload).map_err(bad)?;
        return Ok(Decoded::Node(node_key, record));
    }
    let change = if key == EPOCH_KEY && operation == Operation::Put {
        let record: EpochRecord = serde_json::from_slice(payload).map_err(bad)?;
        PolicyChange::Epoch(Epoch {
            number: record.number,
            head: record.head,
            advanced_at_unix_ms: record.advanced_at_unix_ms,
        })
    } else if key.starts_with("principal.") {
        let principal: Principal = serde_json::from_slice(payload).map_err(bad)?;
        if principal_key(&principal.name) != key {
            return Err(format!("key {key:?} holds principal {:?}", principal.name));
        }
        match operation {
            Operation::Put => PolicyChange::Principal(principal),
            Operation::Delete | Operation::Purge => PolicyChange::PrincipalRemoved(principal),
        }
    } else if key.starts_with("world.") && operation == Operation::Put {
        let record: WorldRecord = serde_json::from_slice(payload).map_err(bad)?;
        if world_key(&record.name) != key {
            return Err(format!("key {key:?} holds world {:?}", record.name));
        }
        let state = match record.state.as_str() {
            "active" => WorldState::Active,
            "archived" => WorldState::Archived,
            other => return Err(format!("key {key:?}: unknown world state {other:?}")),
        };
        PolicyChange::World(WorldInfo {
            name: record.name,
            state,
            atoms: 0,
            dimension: record.dimension,
        })
    } else {
        return Err(format!(
            "key {key:?} ({operation:?}) is not a policy record"
        ));
    };
    Ok(Decoded::Policy(change))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a policy record always serialises")
}

#[cfg(test)]
mod tests {
    use engram_store::{Grant, Rate};

    use super::*;

    fn principal(name: &str) -> Principal {
        Principal {
            name: name.into(),
            public_key: [7; 32],
            admin: false,
            grants: vec![Grant {
                world: "team/auth".into(),
                read: true,
                write: false,
                observe: true,
                approve: false,
                rate: Rate::UNLIMITED,
            }],
        }
    }

    #[test]
    fn every_change_reads_back_as_written() {
        let changes = [
            PolicyChange::Epoch(Epoch {
                number: 9,
                head: [3; 32],
                advanced_at_unix_ms: 17,
            }),
            PolicyChange::Principal(principal("agent.7")),
            PolicyChange::PrincipalRemoved(principal("agent.7")),
            PolicyChange::World(WorldInfo {
                name: "team/auth".into(),
                state: WorldState::Archived,
                atoms: 0,
                dimension: 384,
            }),
        ];
        for change in changes {
            let record = encode(&change);
            let operation = if record.removal {
                Operation::Delete
            } else {
                Operation::Put
            };
            match decode(&record.key, operation, &record.payload) {
                Ok(Decoded::Policy(decoded)) => assert_eq!(decoded, change),
                _ => panic!("{change:?} did not read back"),
            }
        }
        let node = NodeRecord {
            slot: 3,
            address: "127.0.0.1:7420".into(),
        };
        let record = encode_node(&[5; 32], &node);
        match decode(&record.key, Operation::Put, &record.payload) {
            Ok(Decoded::Node(key, decoded)) => assert_eq!((key, decoded), ([5; 32], node)),
            _ => panic!("the node record did not read back"),
        }
    }

    #[test]
    fn a_record_under_another_key_is_refused() {
        // A record must name what its key names: no principal can be slipped in under
        // another's key, nor a world under a principal's.
        let record = encode(&PolicyChange::Principal(principal("agent.7")));
        assert!(decode(&principal_key("admin"), Operation::Put, &record.payload).is_err());
        assert!(decode(&world_key("agent.7"), Operation::Put, &record.payload).is_err());
        assert!(decode("elsewhere", Operation::Put, &record.payload).is_err());
        assert!(decode(EPOCH_KEY, Operation::Put, b"not json").is_err());
    }
}
