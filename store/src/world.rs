//! Worlds: named namespaces of memory, active or archived.

use crate::error::StoreError;
use crate::limits::WORLD_NAME_BYTES_MAX;

/// Whether a world accepts writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldState {
    Active,
    Archived,
}

impl WorldState {
    pub(crate) fn code(self) -> u8 {
        match self {
            WorldState::Active => 0,
            WorldState::Archived => 1,
        }
    }

    /// `active` or `archived`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorldState::Active => "active",
            WorldState::Archived => "archived",
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<Self, StoreError> {
        match code {
            0 => Ok(WorldState::Active),
            1 => Ok(WorldState::Archived),
            other => Err(StoreError::Corrupt {
                what: format!("unknown world state {other}"),
            }),
        }
    }
}

/// What the store knows of one world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldInfo {
    pub name: String,
    pub state: WorldState,
    pub atoms: u64,
    /// The dimension the world's first vector fixed; 0 before any vector.
    pub dimension: u32,
}

impl WorldInfo {
    pub(crate) fn from_record(
        name: &str,
        (state, atoms, dimension): (u8, u64, u32),
    ) -> Result<WorldInfo, StoreError> {
        Ok(WorldInfo {
            name: name.to_owned(),
            state: WorldState::from_code(state)?,
            atoms,
            dimension,
        })
    }

    pub(crate) fn record(&self) -> (u8, u64, u32) {
        (self.state.code(), self.atoms, self.dimension)
    }
}

/// Checks a world name: 1 to 128 bytes of lowercase segments of `[a-z0-9._-]`, separated
/// by single `/`, no segment `.` or `..`. Names are used verbatim as index key prefixes
/// and in paths a CLI prints, so they are kept plain.
pub fn validate_world_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidWorldName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > WORLD_NAME_BYTES_MAX {
        return Err(invalid("it is longer than 128 bytes"));
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(invalid(
                "it has an empty segment (a leading, trailing or double '/')",
            ));
        }
        if segment == "." || segment == ".." {
            return Err(invalid("a segment is '.' or '..'"));
        }
        if !segment.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"._-".contains(&byte)
        }) {
            return Err(invalid(
                "segments may hold only lowercase letters, digits, '.', '_' and '-'",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_world_name;

    #[test]
    fn world_names() {
        for good in ["team", "team/auth", "a.b_c-d/0"] {
            assert!(validate_world_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            "/team",
            "team/",
            "a//b",
            "Team",
            "a b",
            "a/../b",
            long.as_str(),
        ] {
            assert!(validate_world_name(bad).is_err(), "{bad}");
        }
    }
}
