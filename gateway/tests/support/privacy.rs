//! Looking for personal data in what the gateway wrote.

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

#[test]
fn contains_token_finds_whole_tokens_only() {
    assert!(contains_token("login pin=4321 ok", "4321"));
    assert!(contains_token("\"4321\"", "4321"));
    assert!(contains_token("4321", "4321"));
    assert!(contains_token("x 14321 4321", "4321"));
    assert!(!contains_token("2026-12-02T10:00:00.143210Z", "4321"));
    assert!(!contains_token("took 14321us", "4321"));
}
