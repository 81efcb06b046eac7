//! Pairwise pseudonyms: the only identifier of a person a vendor ever receives.
//!
//! `base32_lower(HMAC-SHA256(key, "portvakt-pairwise-v1" ‖ 0x00 ‖ sector ‖ 0x00 ‖ subject
//! key)[..20])`, 32 characters without padding. The same person gets the same pseudonym in
//! one sector on every replica and after every restart (it depends only on the key), and
//! unlinkable pseudonyms in different sectors. Test vectors are in `docs/policy.md`, so vendors
//! and other implementations can check theirs.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::ids::{Pseudonym, SubjectKey};

/// The domain-separation label; a new scheme gets a new label, never a changed meaning.
const LABEL: &[u8] = b"portvakt-pairwise-v1";

/// Keys shorter than this are refused: the pseudonyms would be guessable from card numbers.
pub const MIN_KEY_BYTES: usize = 32;

/// The gateway's pseudonym key. `Debug` never shows it.
#[derive(Clone)]
pub struct PseudonymKey {
    mac: Hmac<Sha256>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the pseudonym key is {0} bytes; it must be at least {MIN_KEY_BYTES} (make one with `portvakt keys generate`)"
)]
pub struct KeyTooShort(pub usize);

impl PseudonymKey {
    /// The key is the raw bytes as given (a key file's whole content, no trimming).
    pub fn new(bytes: &[u8]) -> Result<Self, KeyTooShort> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort(bytes.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| KeyTooShort(bytes.len()))?;
        Ok(Self { mac })
    }

    /// The pairwise pseudonym of a subject in a sector.
    pub fn pairwise(&self, sector: &str, subject: &SubjectKey) -> Pseudonym {
        let mut mac = self.mac.clone();
        mac.update(LABEL);
        mac.update(&[0]);
        mac.update(sector.as_bytes());
        mac.update(&[0]);
        mac.update(subject.expose().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut text = data_encoding::BASE32_NOPAD.encode(&digest[..20]);
        text.make_ascii_lowercase();
        Pseudonym::new(text)
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of the published test vectors: the 32 bytes 0x00, 0x01, …, 0x1f.
    fn vector_key() -> PseudonymKey {
        let bytes: Vec<u8> = (0u8..32).collect();
        PseudonymKey::new(&bytes).unwrap()
    }

    #[test]
    fn published_test_vectors() {
        // These values are in docs/policy.md and were computed with Python's hmac/hashlib/base64,
        // an independent implementation. A change here breaks every vendor's accounts.
        let k = vector_key();
        let cases = [
            (
                "ebok",
                "card:NO-2390700:12345678",
                "wsjo7zg7ncm2hv5g3637l5tuh4p5yvwu",
            ),
            (
                "filmbib",
                "card:NO-2390700:12345678",
                "dw73ndopehfxldneehldu2urag2lplhj",
            ),
            (
                "ebok",
                "card:NO:N123456789",
                "7zjx6tzllcfkmae4j53rg6uh5miztl74",
            ),
            (
                "fagportalen",
                "feide:kari@nottero-vgs.example.no",
                "avt5ichcfjqdbvetu47z252dgqkzpmha",
            ),
        ];
        for (sector, subject, expected) in cases {
            let p = k.pairwise(sector, &SubjectKey::new(subject));
            assert_eq!(p.expose(), expected, "{sector} / {subject}");
        }
    }

    #[test]
    fn shape_and_separation() {
        let k = vector_key();
        let s = SubjectKey::new("card:NO-2390700:1");
        let a = k.pairwise("a", &s);
        assert_eq!(a.expose().len(), 32);
        assert!(
            a.expose()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        assert_ne!(a, k.pairwise("b", &s));
        assert_eq!(a, k.pairwise("a", &s));
        // The zero separators keep ("ab", "c…") and ("a", "bc…") apart.
        assert_ne!(
            k.pairwise("ab", &SubjectKey::new("c")),
            k.pairwise("a", &SubjectKey::new("bc"))
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(PseudonymKey::new(&[7u8; 31]).is_err());
        assert!(PseudonymKey::new(&[7u8; 32]).is_ok());
    }
}
