//! Federation: the gateway as identity provider for vendors that take a signed statement
//! about the patron instead of proxied traffic. [`saml`] is the SAML 2.0 identity provider,
//! [`oidc`] the OpenID provider; both sign with the one RSA key of `[keys]`
//! (`signing_key_file`, `signing_cert_file`), loaded here into a [`SigningKey`].
//!
//! Data flows one way: the entry link or the vendor's request names a service, the
//! gateway decides, `policy::release` turns the permit into the released attributes, and
//! the modules here turn exactly that [`policy::Release`] into a signed assertion or
//! token. Nothing else about the person reaches these modules, so nothing else can leak.
//!
//! Choices the standards leave open are written down in each module's docs.

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
    #[error("cannot make a signing key and certificate: {0}")]
    Generate(String),
}

/// The signing key's modulus size. 2048 bits is what SAML and OIDC relying parties accept
/// everywhere; the certificate is pinned in metadata, so a key is rolled by a new file, not
/// by a bigger default.
pub const RSA_BITS: usize = 2048;

/// The signing certificate's common name.
pub const SIGNING_CERT_CN: &str = "Portvakt signing";

/// How long the signing certificate is valid. Vendors pin it in metadata, and a certificate
/// that expires under them breaks every login at once, so it is long-lived; rolling the key
/// is an operator decision, not an expiry.
const SIGNING_CERT_YEARS: i16 = 10;

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
    /// An RSA key and a self-signed certificate for it, both PEM.
    ///
    /// ring (our only crypto provider) signs with RSA keys but cannot generate them, and rcgen
    /// generates RSA keys only under aws-lc; so the `rsa` crate generates the key, and rcgen
    /// signs the certificate through ring with that key. The `rsa` crate is used for nothing
    /// else: every signature at run time goes through ring.
    pub fn generate_pem() -> Result<(String, String), FederationError> {
        let rsa_key = rsa::PrivateKey::new(&mut getrandom::SysRng, RSA_BITS)
            .map_err(|e| FederationError::Generate(e.to_string()))?;
        let pkcs8 = rsa_key
            .to_pkcs8_der()
            .map_err(|e| FederationError::Generate(e.to_string()))?;
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .map_err(|e| FederationError::Generate(e.to_string()))?;

        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, SIGNING_CERT_CN);
        params.distinguished_name = dn;
        // A day's slack before now, so a relying party whose clock is a little behind ours
        // does not see a certificate from the future.
        let today = jiff::Timestamp::now()
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .date();
        let start = today.yesterday().unwrap_or(today);
        let end = start
            .checked_add(jiff::Span::new().years(SIGNING_CERT_YEARS))
            .unwrap_or(start);
        params.not_before = rcgen::date_time_ymd(
            i32::from(start.year()),
            start.month().unsigned_abs(),
            start.day().unsigned_abs(),
        );
        params.not_after = rcgen::date_time_ymd(
            i32::from(end.year()),
            end.month().unsigned_abs(),
            end.day().unsigned_abs(),
        );
        // RFC 5280: a positive serial of at most 20 bytes, unique per issuer; random is the
        // usual way to be unique without keeping state.
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| FederationError::Generate(e.to_string()))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];

        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| FederationError::Generate(e.to_string()))?;
        Ok((key_pair.serialize_pem(), cert.pem()))
    }

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
        let (a_key, a_cert) = SigningKey::generate_pem().unwrap();
        let (_, b_cert) = SigningKey::generate_pem().unwrap();
        let ok = SigningKey::from_pem(&a_key, &a_cert).unwrap();
        assert!(!format!("{ok:?}").contains("PRIVATE"));
        assert!(matches!(
            SigningKey::from_pem(&a_key, &b_cert),
            Err(FederationError::Mismatch)
        ));
        // The previous key's JWK is the same from its certificate and its private key.
        assert_eq!(
            previous_jwk(&a_cert).unwrap(),
            previous_jwk(&a_key).unwrap()
        );
        assert_eq!(previous_jwk(&a_cert).unwrap().kid, ok.kid());
    }
}
