//! Helpers shared by the crypto unit tests: hex decoding and loading `control/testdata/*.json`.

use std::path::PathBuf;

pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub(crate) fn load_json(name: &str) -> serde_json::Value {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "testdata", name]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["source"].as_str().is_some_and(|s| !s.is_empty()),
        "{name} has no source field"
    );
    v
}

/// A `serde_json` string field decoded from hex.
pub(crate) fn hexf(v: &serde_json::Value, field: &str) -> Vec<u8> {
    hex(v[field]
        .as_str()
        .unwrap_or_else(|| panic!("missing field {field}")))
}
