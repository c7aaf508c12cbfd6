//! engram's capabilities: the Cap'n Proto objects a client holds. Each interface of
//! `schema/engram.capnp` is one struct in one file implementing the generated `Server`
//! trait; all of them run on the single RPC thread and share one [`Node`].
//!
//! Every epoch-scoped capability carries a grip (principal, epoch, grant generation,
//! restriction) and checks it on every call: that check is the epoch guard. This crate
//! alone turns errors into wire exceptions (`code: message`).

pub mod admin;
pub mod backup;
mod convert;
pub mod error;
pub mod fleet;
mod grip;
pub mod limits;
pub mod membrane;
mod metered;
pub mod node;
pub mod observer;
pub mod peer;
mod rate;
pub mod restriction;
pub mod signer;
pub mod subscription;
pub mod terminal;
mod token;
pub mod world_reader;
pub mod world_writer;

pub use error::{CapabilityError, ErrorCode};
pub use node::{Node, NodeLimits};
pub use peer::Peer;
pub use terminal::Terminal;
