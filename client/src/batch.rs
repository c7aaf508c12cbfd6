//! The JSON-lines atom format of `engram remember --batch`: one atom a line,
//! `{"text": ..., "kind": ..., "labels": [...], "importance": ..., "vector": [...],
//! "validFrom": ..., "validUntil": ..., "proposed": true, "supersedes": [ID, ...],
//! "forbids": [TERM, ...]}`. Every line is someone else's input: any text gives an atom
//! or a message saying what is wrong with it, never a panic.

use serde_json::Value;

use crate::types::{NewAtom, kind_from_name};

/// An instant as unix milliseconds, or an RFC 3339 time; `name` names it in the error.
pub fn parse_instant(text: &str, name: &str) -> Result<i64, String> {
    if let Ok(unix_ms) = text.parse::<i64>() {
        return Ok(unix_ms);
    }
    let time: jiff::Timestamp = text.parse().map_err(|error| {
        format!(
            "{name} {text:?}: expected an RFC 3339 time (2026-03-03T00:00:00Z) or unix \
             milliseconds: {error}"
        )
    })?;
    Ok(time.as_millisecond())
}

/// The atom one line states, or what is wrong with it.
pub fn atom_from_json_line(line: &str) -> Result<NewAtom, String> {
    let value: Value = serde_json::from_str(line).map_err(|error| error.to_string())?;
    let text = value["text"]
        .as_str()
        .ok_or("\"text\" (a string) is required")?;
    let kind = value["kind"].as_str().unwrap_or("observation");
    let mut atom = NewAtom::new(
        kind_from_name(kind).map_err(|error| error.to_string())?,
        text,
    );
    atom.labels = strings(&value, "labels")?;
    atom.forbids = strings(&value, "forbids")?;
    atom.vector = vector(&value)?;
    if let Some(proposed) = value.get("proposed") {
        atom.proposed = proposed
            .as_bool()
            .ok_or("\"proposed\" must be true or false")?;
    }
    for target in strings(&value, "supersedes")? {
        let id: [u8; 32] = hex::decode(&target)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| format!("a \"supersedes\" id must be 64 hex digits, not {target:?}"))?;
        atom = atom.supersedes(id);
    }
    if let Some(importance) = value.get("importance") {
        atom.importance = importance
            .as_f64()
            .ok_or("\"importance\" must be a number")? as f32;
    }
    if let Some(from) = value.get("validFrom") {
        let until = match value.get("validUntil") {
            Some(until) => instant(until, "validUntil")?,
            None => 0,
        };
        atom = atom.valid(instant(from, "validFrom")?, until);
    }
    Ok(atom)
}

/// The numbers of the array `vector` (none if absent).
pub(crate) fn vector(value: &Value) -> Result<Vec<f32>, String> {
    let Some(vector) = value.get("vector") else {
        return Ok(Vec::new());
    };
    let wrong = || "\"vector\" must be an array of numbers".to_owned();
    (vector.as_array().ok_or_else(wrong)?.iter())
        .map(|component| {
            component
                .as_f64()
                .map(|number| number as f32)
                .ok_or_else(wrong)
        })
        .collect()
}

/// The strings of the array `name` (none if absent).
pub(crate) fn strings(value: &Value, name: &str) -> Result<Vec<String>, String> {
    let Some(items) = value.get(name) else {
        return Ok(Vec::new());
    };
    let wrong = || format!("\"{name}\" must be an array of strings");
    items
        .as_array()
        .ok_or_else(wrong)?
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or_else(wrong))
        .collect()
}

fn instant(value: &Value, name: &str) -> Result<i64, String> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .ok_or_else(|| format!("\"{name}\" must be whole unix milliseconds")),
        Value::String(text) => parse_instant(text, name),
        _ => Err(format!(
            "\"{name}\" must be an RFC 3339 time or unix milliseconds"
        )),
    }
}

#[cfg(test)]
mod tests {
    //! Any line: an atom or a message, never a panic — random text, and valid lines
    //! damaged in a few bytes, cut short or run on. `PROPTEST_CASES` sets how many.
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"{"text": "use httpx", "kind": "constraint", "labels": ["http"], "importance": 0.9, "vector": [0.5, 1], "validFrom": "2026-03-03T00:00:00Z", "validUntil": 1800000000000, "proposed": true, "supersedes": ["0101010101010101010101010101010101010101010101010101010101010101"], "forbids": ["requests"]}"#;

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(20_000)
    }

    fn damaged() -> impl Strategy<Value = String> {
        let length = VALID.len();
        prop_oneof![
            ".{0,200}",
            proptest::collection::vec((0..length, any::<u8>()), 1..5).prop_map(|edits| {
                let mut bytes = VALID.as_bytes().to_vec();
                for (position, value) in edits {
                    bytes[position] = value;
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }),
            (0..length).prop_map(|cut| VALID[..cut].to_owned()),
            ".{1,40}".prop_map(|more| format!("{VALID}{more}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn any_line_gives_an_atom_or_a_message(line in damaged()) {
            if let Err(message) = atom_from_json_line(&line) {
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn the_valid_line_gives_its_atom() {
        let atom = atom_from_json_line(VALID).unwrap();
        assert_eq!(atom.text, "use httpx");
        assert_eq!(
            (atom.labels.len(), atom.forbids.len(), atom.links.len()),
            (1, 1, 1)
        );
        assert!(atom.proposed);
        assert_eq!(atom.vector, [0.5, 1.0]);
    }
}
