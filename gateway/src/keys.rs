//! Key material: `portvakt keys generate` writes it, the gateway reads it back at start.
//!
//! Four files in one directory, each created with mode 0600 and never overwritten:
//!
//! | file | content | used for |
//! |---|---|---|
//! | `pseudonym.key` | 32 random bytes, raw | pairwise pseudonyms (`pseudonym.rs`) |
//! | `session.key` | 32 random bytes, raw | session and cookie integrity |
//! | `signing.key` | RSA 2048 private key, PKCS#8 PEM | SAML signatures (RSA-SHA256), OIDC id_tokens (RS256) |
//! | `signing.crt` | self-signed X.509 PEM, CN "Portvakt signing", 10 years | SAML metadata (vendors pin it) |
//!
//! A raw key file's whole content is the key, with no trimming or decoding
//! ([`read_key_file`]), so a trailing newline added by an editor is part of the key: the
//! operating guide says so, and it keeps two replicas from disagreeing about a key.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// File names inside the `--out` directory.
pub const PSEUDONYM_KEY_FILE: &str = "pseudonym.key";
pub const SESSION_KEY_FILE: &str = "session.key";
pub const SIGNING_KEY_FILE: &str = "signing.key";
pub const SIGNING_CERT_FILE: &str = "signing.crt";

/// Length in bytes of the random keys `generate` writes.
pub const RAW_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot create the directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists; refusing to overwrite a key (move it away first)", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Signing(#[from] federation::FederationError),
    #[error(
        "the {what} {} does not exist (make one with `portvakt keys generate --out DIR`)",
        path.display()
    )]
    Missing { what: String, path: PathBuf },
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the {what} {} is {len} bytes; it must be at least {min_len} (make one with `portvakt keys generate --out DIR`)",
        path.display()
    )]
    TooShort {
        what: String,
        path: PathBuf,
        len: usize,
        min_len: usize,
    },
}

/// Where `generate` put each file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedKeys {
    pub pseudonym_key: PathBuf,
    pub session_key: PathBuf,
    pub signing_key: PathBuf,
    pub signing_cert: PathBuf,
}

/// Creates the four key files in `out_dir` (created with mode 0700 if missing).
///
/// Refuses before writing anything when any of the four already exists, so a second run
/// cannot replace a pseudonym key (which would change every patron's pseudonym at every
/// vendor). If writing fails half-way, the files this call created are removed again.
pub fn generate(out_dir: &Path) -> Result<GeneratedKeys, KeysError> {
    let keys = GeneratedKeys {
        pseudonym_key: out_dir.join(PSEUDONYM_KEY_FILE),
        session_key: out_dir.join(SESSION_KEY_FILE),
        signing_key: out_dir.join(SIGNING_KEY_FILE),
        signing_cert: out_dir.join(SIGNING_CERT_FILE),
    };
    let paths = [
        &keys.pseudonym_key,
        &keys.session_key,
        &keys.signing_key,
        &keys.signing_cert,
    ];
    for path in paths {
        // symlink_metadata: a dangling symlink is "there" too, and writing through it is
        // exactly what create_new refuses later anyway.
        if path.symlink_metadata().is_ok() {
            return Err(KeysError::Exists { path: path.clone() });
        }
    }

    // Everything that can fail without touching the disk comes first.
    let pseudonym = random_bytes()?;
    let session = random_bytes()?;
    let (key_pem, cert_pem) = federation::SigningKey::generate_pem()?;

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out_dir)
        .map_err(|source| KeysError::CreateDir {
            path: out_dir.to_path_buf(),
            source,
        })?;

    let contents: [&[u8]; 4] = [
        &pseudonym,
        &session,
        key_pem.as_bytes(),
        cert_pem.as_bytes(),
    ];
    let mut written: Vec<&PathBuf> = Vec::new();
    for (path, content) in paths.into_iter().zip(contents) {
        if let Err(e) = write_new_private(path, content) {
            for done in written {
                // Best effort: the error that matters is the one being returned.
                let _ = std::fs::remove_file(done);
            }
            return Err(e);
        }
        written.push(path);
    }
    Ok(keys)
}

/// Reads a raw key file: its whole content, unchanged, is the key. `what` names the key in
/// errors ("pseudonym key"), which say how to make one.
pub fn read_key_file(what: &str, path: &Path, min_len: usize) -> Result<Vec<u8>, KeysError> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == ErrorKind::NotFound {
            KeysError::Missing {
                what: what.to_owned(),
                path: path.to_path_buf(),
            }
        } else {
            KeysError::Read {
                what: what.to_owned(),
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if bytes.len() < min_len {
        return Err(KeysError::TooShort {
            what: what.to_owned(),
            path: path.to_path_buf(),
            len: bytes.len(),
            min_len,
        });
    }
    Ok(bytes)
}

fn random_bytes() -> Result<[u8; RAW_KEY_LEN], KeysError> {
    let mut key = [0u8; RAW_KEY_LEN];
    getrandom::fill(&mut key).map_err(KeysError::Random)?;
    Ok(key)
}

/// The mode is given at creation, so the file is never readable by others, not even for
/// the moment between a create and a chmod. `create_new` refuses an existing file or
/// symlink atomically, which the check in `generate` alone could not.
fn write_new_private(path: &Path, content: &[u8]) -> Result<(), KeysError> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == ErrorKind::AlreadyExists {
                KeysError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeysError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let write = |file: &mut File| -> std::io::Result<()> {
        file.write_all(content)?;
        file.sync_all()
    };
    write(&mut file).map_err(|source| KeysError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    use x509_parser::prelude::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn generate_writes_four_private_files_that_parse() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys").join("nested");
        let keys = generate(&out).unwrap();

        for path in [
            &keys.pseudonym_key,
            &keys.session_key,
            &keys.signing_key,
            &keys.signing_cert,
        ] {
            assert_eq!(mode(path), 0o600, "{}", path.display());
        }
        assert_eq!(mode(&out), 0o700);

        let p = read_key_file("pseudonym key", &keys.pseudonym_key, 32).unwrap();
        let s = read_key_file("session key", &keys.session_key, 32).unwrap();
        assert_eq!(p.len(), RAW_KEY_LEN);
        assert_eq!(s.len(), RAW_KEY_LEN);
        assert_ne!(p, s);

        let key_pem = std::fs::read_to_string(&keys.signing_key).unwrap();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let rsa_key = rsa::PrivateKey::from_pkcs8_pem(&key_pem).unwrap();
        assert_eq!(rsa_key.size() * 8, federation::RSA_BITS);

        let cert_pem = std::fs::read(&keys.signing_cert).unwrap();
        let (_, pem) = parse_x509_pem(&cert_pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), federation::SIGNING_CERT_CN);
        assert_eq!(cert.subject(), cert.issuer());
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA
        );
        let validity = cert.validity();
        let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
        assert!((3650..=3653).contains(&days), "{days} days");
        let spki_n = match cert.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => rsa.modulus.to_vec(),
            other => panic!("not RSA: {other:?}"),
        };
        let n = rsa_key.n().to_be_bytes();
        assert_eq!(
            spki_n.iter().skip_while(|b| **b == 0).collect::<Vec<_>>(),
            n.iter().skip_while(|b| **b == 0).collect::<Vec<_>>(),
            "the certificate is for the key next to it"
        );
        // ring, which signs at run time, loads the key, and rustls agrees the pair matches.
        crate::tls::server_config(&keys.signing_cert, &keys.signing_key).unwrap();
    }

    #[test]
    fn generate_refuses_to_overwrite_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SIGNING_CERT_FILE), b"old").unwrap();
        let err = generate(dir.path()).unwrap_err();
        assert!(matches!(err, KeysError::Exists { .. }));
        assert!(err.to_string().contains("signing.crt"), "{err}");
        // Nothing else was written either.
        assert!(!dir.path().join(PSEUDONYM_KEY_FILE).exists());
        assert_eq!(
            std::fs::read(dir.path().join(SIGNING_CERT_FILE)).unwrap(),
            b"old"
        );
    }

    #[test]
    fn read_key_file_takes_every_byte_and_explains_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pseudonym.key");
        let content = [b' '; 33];
        std::fs::write(&path, content).unwrap();
        assert_eq!(read_key_file("pseudonym key", &path, 32).unwrap(), content);

        std::fs::write(&path, [7u8; 12]).unwrap();
        let err = read_key_file("pseudonym key", &path, 32).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the pseudonym key {} is 12 bytes; it must be at least 32 \
                 (make one with `portvakt keys generate --out DIR`)",
                path.display()
            )
        );

        let missing = dir.path().join("nope.key");
        let err = read_key_file("session key", &missing, 32).unwrap_err();
        assert!(err.to_string().contains("nope.key"), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
