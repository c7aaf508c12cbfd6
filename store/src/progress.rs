//! The progress of a long index catch-up (a rebuild at start-up) in the node's log:
//! atoms done of the total, the rate and the time left, every few seconds, and a last
//! line when it is done. Short catch-ups, the usual ones, log nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redb::ReadableTable;

use crate::error::StoreError;

/// How often a long catch-up logs where it stands.
const LOG_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct Progress {
    index: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    /// A catch-up of `index` over about `total` atoms.
    pub(crate) fn new(index: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            index,
            total,
            done: 0,
            started: now,
            logged: now,
        }
    }

    /// `atoms` more are done.
    pub(crate) fn advance(&mut self, atoms: u64) {
        self.done += atoms;
        if self.logged.elapsed() < LOG_EVERY {
            return;
        }
        self.logged = Instant::now();
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let left = self.total.saturating_sub(self.done) as f64 / rate.max(1.0);
        tracing::info!(
            index = self.index,
            atoms = self.done,
            of = self.total,
            per_second = rate as u64,
            left_s = left.ceil() as u64,
            "index catching up"
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.started.elapsed() >= LOG_EVERY {
            tracing::info!(
                index = self.index,
                atoms = self.done,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "index caught up"
            );
        }
    }
}

/// About how many atoms an index covering each world up to `covered` lacks: a world's
/// atoms when it covers none of it, else the commits it is behind by (at most the
/// world's atoms). With `vectors_only`, worlds that hold no vector are left out.
pub(crate) fn behind(
    view: &crate::ReadView,
    worlds: &redb::ReadOnlyTable<&'static str, (u8, u64, u32)>,
    covered: &HashMap<String, u64>,
    vectors_only: bool,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for entry in worlds.iter()? {
        let (name, record) = entry?;
        let (name, (_, atoms, dimension)) = (name.value(), record.value());
        if vectors_only && dimension == 0 {
            continue;
        }
        let from = covered.get(name).copied().unwrap_or(0);
        let target = view.world_last_commit(name)?;
        if target > from {
            total += if from == 0 {
                atoms
            } else {
                (target - from).min(atoms)
            };
        }
    }
    Ok(total)
}
