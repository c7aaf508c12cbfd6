//! The export format of `engram export` and `engram import`: JSON lines, one atom a
//! line in commit order, every field of it (`AtomView::to_json`, and `vector` and the
//! exact `payloadHex`), with its id, writer, seq and prev, so that an importer can check
//! that each writer's chain is whole before it writes anything of it.
//!
//! An import writes each atom anew, as the importing principal, with a `derivedFrom`
//! link to its original id; links between exported atoms are carried over to the new
//! ids. Batches are sent with idempotency keys made of their atoms' original ids, so an
//! import run again after an interruption is answered for what was written (within
//! the node's idempotency window, 24 hours) and writes the rest.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::batch::{strings, vector};
use crate::types::{
    AtomView, IdempotencyKey, Link, NewAtom, ValidTime, kind_from_name, link_kind_from_name,
};
use engram_schema::engram_capnp as wire;

/// One exported atom as a line (no newline).
pub fn export_line(atom: &AtomView) -> String {
    let mut value = atom.to_json();
    value["vector"] = Value::from(atom.vector.clone());
    value["payloadHex"] = Value::from(hex::encode(&atom.payload));
    value.to_string()
}

/// An exported atom as read back: where it stood in its chain, and what to write.
#[derive(Clone, Debug)]
pub struct Exported {
    pub id: [u8; 32],
    pub writer: [u8; 32],
    pub seq: u64,
    pub prev: [u8; 32],
    /// Its content, with its links as exported (to original ids).
    pub atom: NewAtom,
}

fn hash(value: &Value, name: &str) -> Result<[u8; 32], String> {
    value[name]
        .as_str()
        .and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| format!("\"{name}\" must be 64 hex digits"))
}

fn unit(value: &Value, name: &str) -> Result<f32, String> {
    value[name]
        .as_f64()
        .map(|number| number as f32)
        .ok_or_else(|| format!("\"{name}\" must be a number"))
}

/// Reads one exported line, or says what is wrong with it.
pub fn parse_line(line: &str) -> Result<Exported, String> {
    let value: Value = serde_json::from_str(line).map_err(|error| error.to_string())?;
    let kind = value["kind"]
        .as_str()
        .ok_or("\"kind\" (a string) is required")?;
    let text = value["text"]
        .as_str()
        .ok_or("\"text\" (a string) is required")?;
    let mut atom = NewAtom::new(
        kind_from_name(kind).map_err(|error| error.to_string())?,
        text,
    );
    atom.labels = strings(&value, "labels")?;
    atom.forbids = strings(&value, "forbids")?;
    atom.importance = unit(&value, "importance")?;
    atom.confidence = unit(&value, "confidence")?;
    atom.payload = value["payloadHex"]
        .as_str()
        .and_then(|text| hex::decode(text).ok())
        .ok_or("\"payloadHex\" must be hex digits")?;
    atom.vector = vector(&value)?;
    atom.valid_time = match &value["validTime"] {
        Value::Null => None,
        interval => Some(ValidTime {
            from_unix_ms: interval["fromUnixMs"]
                .as_i64()
                .ok_or("\"validTime.fromUnixMs\" must be an integer")?,
            until_unix_ms: interval["untilUnixMs"]
                .as_i64()
                .ok_or("\"validTime.untilUnixMs\" must be an integer")?,
        }),
    };
    if let Some(links) = value.get("links") {
        for link in links.as_array().ok_or("\"links\" must be an array")? {
            let kind = link["kind"]
                .as_str()
                .ok_or("a link's \"kind\" is required")?;
            atom.links.push(Link {
                kind: link_kind_from_name(kind).map_err(|error| error.to_string())?,
                target: hash(link, "target")?,
            });
        }
    }
    atom.proposed = value["state"].as_str() == Some("proposed");
    Ok(Exported {
        id: hash(&value, "id")?,
        writer: hash(&value, "writer")?,
        seq: value["seq"].as_u64().ok_or("\"seq\" must be an integer")?,
        prev: hash(&value, "prev")?,
        atom,
    })
}

/// Checks that exported atoms come as their chains made them: each writer's atoms in
/// order from seq 1, each naming the one before it as `prev`, no id twice.
#[derive(Default)]
pub struct ChainCheck {
    heads: HashMap<[u8; 32], (u64, [u8; 32])>,
    seen: HashSet<[u8; 32]>,
}

impl ChainCheck {
    pub fn check(&mut self, atom: &Exported) -> Result<(), String> {
        let (seq, prev) = self
            .heads
            .get(&atom.writer)
            .copied()
            .unwrap_or((0, [0; 32]));
        if atom.seq != seq + 1 || atom.prev != prev {
            return Err(format!(
                "writer {}'s chain is broken here: seq {} after seq {seq}, prev {} where {} was expected",
                hex::encode(atom.writer),
                atom.seq,
                hex::encode(atom.prev),
                hex::encode(prev)
            ));
        }
        if !self.seen.insert(atom.id) {
            return Err(format!("atom {} comes twice", hex::encode(atom.id)));
        }
        self.heads.insert(atom.writer, (atom.seq, atom.id));
        Ok(())
    }
}

/// Maps original ids to the ids their imports got.
#[derive(Default)]
pub struct Imported {
    ids: HashMap<[u8; 32], [u8; 32]>,
}

impl Imported {
    /// The atom to write for `exported`: its links to atoms imported before point at
    /// their new ids, and it is `derivedFrom` its original.
    pub fn to_write(&self, exported: &Exported) -> NewAtom {
        let mut atom = exported.atom.clone();
        for link in &mut atom.links {
            if let Some(new) = self.ids.get(&link.target) {
                link.target = *new;
            }
        }
        atom.links.push(Link {
            kind: wire::LinkKind::DerivedFrom,
            target: exported.id,
        });
        atom
    }

    pub fn record(&mut self, original: [u8; 32], new: [u8; 32]) {
        self.ids.insert(original, new);
    }
}

/// Bytes of export lines after which `engram import` sends what it has read as one
/// batch, whatever its atom count: a line is at least as long as its atom's entry, so a
/// batch stays well inside a node's message limit and a fleet's 1 MiB NATS message.
pub const IMPORT_BATCH_BYTES: usize = 512 * 1024;

/// The idempotency key of a batch of exported atoms imported into `world`: the same
/// batch into the same world gets the same key, so an import run again is answered,
/// not written twice.
pub fn batch_key(world: &str, batch: &[Exported]) -> IdempotencyKey {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"engram import\0");
    hasher.update(world.as_bytes());
    hasher.update(b"\0");
    for atom in batch {
        hasher.update(&atom.id);
    }
    IdempotencyKey::new(hasher.finalize().as_bytes().to_vec()).expect("32 bytes is a valid key")
}
