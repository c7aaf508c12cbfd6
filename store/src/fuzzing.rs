//! What the store's fuzz-style property tests share: how many cases, and bytes that
//! are almost a valid encoding.

use proptest::prelude::*;

/// Cases a fuzz-style property runs: `PROPTEST_CASES`, or 20,000 (a long run passes
/// millions).
pub(crate) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(20_000)
}

/// Random bytes, or `valid` damaged in up to 4 bytes, cut short or run on.
pub(crate) fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let length = valid.len();
    let edited = valid.clone();
    let cut = valid.clone();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec((0..length, any::<u8>()), 1..5).prop_map(move |edits| {
            let mut bytes = edited.clone();
            for (position, value) in edits {
                bytes[position] = value;
            }
            bytes
        }),
        (0..length).prop_map(move |at| cut[..at].to_vec()),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(move |more| {
            let mut bytes = valid.clone();
            bytes.extend(more);
            bytes
        }),
    ]
}
