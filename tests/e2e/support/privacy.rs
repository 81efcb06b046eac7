//! Looking for personal data in what the gateway wrote.

use std::path::Path;

/// Whether `needle` occurs in `haystack` as a whole token: not inside a longer run of
/// letters and digits. A four-digit PIN can turn up inside a timestamp's fraction of a
/// second or a duration; that is not the PIN, while `pin=4321` or `"4321"` would be.
pub fn contains_token(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Every byte of every file under `dir`, subdirectories included.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn contains_token_finds_whole_tokens_only() {
    assert!(contains_token("login pin=4321 ok", "4321"));
    assert!(contains_token("\"4321\"", "4321"));
    assert!(contains_token("4321", "4321"));
    assert!(contains_token("x 14321 4321", "4321"));
    assert!(!contains_token("2026-12-02T10:00:00.143210Z", "4321"));
    assert!(!contains_token("took 14321us", "4321"));
}
