//! Who is at the other end of a connection, and how often one peer may try to log in.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::CapabilityError;

/// The peer of a connection, as per-peer limits count it: a TCP peer by its IP address
/// (whatever its port), a Unix socket peer by its user id; and, for the login rate, a
/// Unix socket peer by its process, where the operating system says (see
/// [`Peer::of_process`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Address(IpAddr),
    LocalUser(u32),
    LocalProcess {
        uid: u32,
        pid: i32,
    },
    /// The operating system did not say (counted as one peer).
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Address(address) => write!(formatter, "{address}"),
            Peer::LocalUser(uid) => write!(formatter, "local user {uid}"),
            Peer::LocalProcess { uid, pid } => {
                write!(formatter, "local process {pid} (user {uid})")
            }
            Peer::Unknown => write!(formatter, "an unknown peer"),
        }
    }
}

impl Peer {
    /// The peer whose login rate a connection of `peer` from `process` spends: on the
    /// Unix socket, its own process's, so that a process spending its rate cannot keep
    /// its user's other processes from logging in; else the peer's.
    pub fn of_process(self, process: Option<i32>) -> Peer {
        match (self, process) {
            (Peer::LocalUser(uid), Some(pid)) => Peer::LocalProcess { uid, pid },
            (peer, _) => peer,
        }
    }
}

/// Peers remembered before those whose allowance is whole again are forgotten.
const REMEMBERED_PEERS_MAX: usize = 4096;

/// Login attempts per peer: a token bucket holding a minute's allowance, refilled
/// evenly over the minute. An attempt costs the node a store read and a signature
/// verification, so a peer cannot make it do many of them.
pub struct LoginRate {
    limiter: Option<DefaultKeyedRateLimiter<Peer>>,
    per_minute: u32,
    /// Peers past their rate, until their next attempt would be allowed: their new
    /// connections are closed at once, before any work is spent on them.
    blocked: RefCell<HashMap<Peer, Instant>>,
}

impl LoginRate {
    /// `per_minute` attempts a minute for each peer; 0 sets no limit.
    pub fn new(per_minute: u32) -> LoginRate {
        LoginRate {
            limiter: NonZeroU32::new(per_minute)
                .map(|rate| RateLimiter::keyed(Quota::per_minute(rate))),
            per_minute,
            blocked: RefCell::new(HashMap::new()),
        }
    }

    /// How long `peer` stays past its rate, if it is now, so that a new connection of
    /// its is refused without being served.
    pub fn blocks(&self, peer: &Peer) -> Option<Duration> {
        let mut blocked = self.blocked.borrow_mut();
        let until = *blocked.get(peer)?;
        let left = until.checked_duration_since(Instant::now());
        if left.is_none() {
            blocked.remove(peer);
        }
        left
    }

    /// Counts one attempt of `peer`, or refuses it with `resourceExhausted` and the time
    /// until its next attempt would be allowed.
    pub fn attempt(&self, peer: &Peer) -> Result<(), (CapabilityError, Duration)> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > REMEMBERED_PEERS_MAX {
            limiter.retain_recent();
        }
        limiter.check_key(peer).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let mut blocked = self.blocked.borrow_mut();
            if blocked.len() > REMEMBERED_PEERS_MAX {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(*peer, Instant::now() + wait);
            (CapabilityError::ResourceExhausted(self.refusal(peer)), wait)
        })
    }

    /// What a peer past its rate is told.
    pub fn refusal(&self, peer: &Peer) -> String {
        format!(
            "too many login attempts from {peer}: the node allows {} a minute \
             (engramd --login-attempts-per-minute); try again later",
            self.per_minute
        )
    }
}
