//! Federation: the gateway as identity provider for vendors that take a signed statement
//! about the patron instead of proxied traffic. [`saml`] is the SAML 2.0 identity provider,
//! [`oidc`] the OpenID provider; both sign with the one RSA key of `[keys]`
//! (`signing_key_file`, `signing_cert_file`), loaded here into a [`SigningKey`].
//!
//! Data flows one way: the entry link or the vendor's request names a service, the
//! pipeline decides, `policy::release` turns the permit into the released attributes, and
//! the modules here turn exactly that [`policy::Release`] into a signed assertion or
//! token. Nothing else about the person reaches these modules, so nothing else can leak.
//!
//! Choices where the spec is silent are written down in each module's docs.

pub mod oidc;
pub mod saml;

use std::fmt;
use std::path::Path;

use data_encoding::BASE64URL_NOPAD;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the signing key is not an RSA private key in PKCS#8 PEM: {0}")]
    Key(String),
    #[error("the signing certificate is not a PEM certificate: {0}")]
    Certificate(String),
    #[error("the signing certificate does not belong to the signing key")]
    Mismatch,
}

/// The RSA key that signs SAML responses and id_tokens, with its certificate (published
/// in the SAML metadata) and its public JWK (published in the JWKS). `Debug` never shows
/// the private key.
#[derive(Clone)]
pub struct SigningKey {
    /// PKCS#1 DER, as jsonwebtoken's RSA signer wants it.
    pkcs1_der: Vec<u8>,
    /// PKCS#8 DER, as xmlsec wants it.
    pkcs8_der: Vec<u8>,
    cert_pem: String,
    cert_der: Vec<u8>,
    jwk: Jwk,
}

/// A public RSA key as a JSON Web Key (RFC 7517), `kid` = its RFC 7638 thumbprint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
    pub kid: String,
    pub n: String,
    pub e: String,
}

impl Jwk {
    fn rsa(n: &[u8], e: &[u8]) -> Self {
        let n = BASE64URL_NOPAD.encode(strip_zeros(n));
        let e = BASE64URL_NOPAD.encode(strip_zeros(e));
        // RFC 7638: the required members only, in lexicographic order, no whitespace. A
        // thumbprint is stable across restarts and replicas, so every replica names the
        // key the same without configuring a kid.
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = BASE64URL_NOPAD.encode(&Sha256::digest(canonical.as_bytes()));
        Self {
            kty: "RSA".into(),
            use_: "sig".into(),
            alg: "RS256".into(),
            kid,
            n,
            e,
        }
    }
}

/// JWK integers are unsigned big-endian without leading zero bytes (RFC 7518 §6.3.1).
fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

impl SigningKey {
    /// From the PEM texts of `signing.key` (PKCS#8) and `signing.crt`.
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, FederationError> {
        let key = rsa::PrivateKey::from_pkcs8_pem(key_pem)
            .map_err(|e| FederationError::Key(e.to_string()))?;
        let pkcs8_der = key
            .to_pkcs8_der()
            .map_err(|e| FederationError::Key(e.to_string()))?
            .as_bytes()
            .to_vec();
        let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes())
            .map_err(|e| FederationError::Certificate(e.to_string()))?;
        let cert_der = cert
            .to_der()
            .map_err(|e| FederationError::Certificate(e.to_string()))?;
        // A certificate of another key would make every signature fail at the vendor,
        // far from the cause: refuse at start instead.
        let cert_n = cert
            .public_key()
            .and_then(|k| k.rsa())
            .map(|r| r.n().to_vec())
            .map_err(|e| FederationError::Certificate(e.to_string()))?;
        let n = key.n_bytes();
        if strip_zeros(&cert_n) != strip_zeros(&n) {
            return Err(FederationError::Mismatch);
        }
        let jwk = Jwk::rsa(&n, &key.e_bytes());
        let pkcs1_der = key
            .to_pkcs1_der()
            .map_err(|e| FederationError::Key(e.to_string()))?
            .as_bytes()
            .to_vec();
        Ok(Self {
            pkcs1_der,
            pkcs8_der,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            jwk,
        })
    }

    /// Reads `[keys] signing_key_file` and `signing_cert_file`.
    pub fn load(key_file: &Path, cert_file: &Path) -> Result<Self, FederationError> {
        let read = |what, path: &Path| {
            std::fs::read_to_string(path).map_err(|source| FederationError::Read {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        Self::from_pem(
            &read("signing key", key_file)?,
            &read("signing certificate", cert_file)?,
        )
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The public key as a JWK; its `kid` is the thumbprint.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    fn pkcs1_der(&self) -> &[u8] {
        &self.pkcs1_der
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

/// A fresh random identifier: 128 bits, hex, prefixed so it is a valid `xs:ID` (which must
/// not start with a digit) and recognisably ours in a vendor's log.
pub(crate) fn random_id(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{prefix}{}",
        data_encoding::HEXLOWER.encode(&bytes)
    ))
}

/// The public JWK of a rotated-out key, for the JWKS: from its certificate, its public key
/// (SPKI PEM) or its private key (PKCS#8 PEM), whichever the operator kept.
pub fn previous_jwk(pem: &str) -> Result<Jwk, FederationError> {
    let (n, e) = if pem.contains("-----BEGIN CERTIFICATE-----") {
        let rsa = openssl::x509::X509::from_pem(pem.as_bytes())
            .and_then(|c| c.public_key())
            .and_then(|k| k.rsa())
            .map_err(|e| FederationError::Certificate(e.to_string()))?;
        (rsa.n().to_vec(), rsa.e().to_vec())
    } else if pem.contains("-----BEGIN PUBLIC KEY-----") {
        let rsa = openssl::rsa::Rsa::public_key_from_pem(pem.as_bytes())
            .map_err(|e| FederationError::Key(e.to_string()))?;
        (rsa.n().to_vec(), rsa.e().to_vec())
    } else {
        let key = rsa::PrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| FederationError::Key(e.to_string()))?;
        (key.n_bytes().to_vec(), key.e_bytes().to_vec())
    };
    Ok(Jwk::rsa(&n, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_thumbprint_matches_rfc7638() {
        // RFC 7638 §3.1's example key and its published thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let e = "AQAB";
        let jwk = Jwk::rsa(
            &BASE64URL_NOPAD.decode(n.as_bytes()).unwrap(),
            &BASE64URL_NOPAD.decode(e.as_bytes()).unwrap(),
        );
        assert_eq!(jwk.kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        assert_eq!(jwk.n, n);
        assert_eq!(jwk.e, e);
    }

    #[test]
    fn a_certificate_of_another_key_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        crate::keys::generate(a.path()).unwrap();
        crate::keys::generate(b.path()).unwrap();
        let read =
            |d: &tempfile::TempDir, f: &str| std::fs::read_to_string(d.path().join(f)).unwrap();
        let ok = SigningKey::from_pem(&read(&a, "signing.key"), &read(&a, "signing.crt")).unwrap();
        assert!(!format!("{ok:?}").contains("PRIVATE"));
        assert!(matches!(
            SigningKey::from_pem(&read(&a, "signing.key"), &read(&b, "signing.crt")),
            Err(FederationError::Mismatch)
        ));
        // The previous key's JWK is the same from its certificate and its private key.
        assert_eq!(
            previous_jwk(&read(&a, "signing.crt")).unwrap(),
            previous_jwk(&read(&a, "signing.key")).unwrap()
        );
        assert_eq!(
            previous_jwk(&read(&a, "signing.crt")).unwrap().kid,
            ok.kid()
        );
    }
}
