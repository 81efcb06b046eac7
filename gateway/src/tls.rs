//! The public listener's TLS: PEM files on disk → one shared `rustls::ServerConfig`.
//!
//! The certificate must cover `public_host` and `*.public_host` (every service answers on
//! a host label of its own). The chain file holds the server certificate first, then any
//! intermediates; the key file holds one private key (PKCS#8, PKCS#1 or SEC1). The ring
//! provider is named explicitly rather than taken from a process-wide default, so the
//! config never depends on which crate happened to install one first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The protocols offered in ALPN, best first: the server speaks both.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS certificate file {} holds no certificate (expected PEM `BEGIN CERTIFICATE`)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the TLS key file {} holds no private key (expected PEM `BEGIN PRIVATE KEY`)", path.display())]
    NoKey { path: PathBuf },
    #[error("the TLS {what} {} is not valid PEM: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "the TLS certificate {} and key {} do not make a usable pair: {source}",
        cert.display(),
        key.display()
    )]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Reads the certificate chain and key and builds the server config, TLS 1.2 and 1.3 with
/// ring's defaults, no client certificates, ALPN `h2` then `http/1.1`.
pub fn server_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert_pem_path, "certificate file")?;
    let key_pem = read(key_pem_path, "key file")?;

    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "certificate file",
            path: cert_pem_path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_pem_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_pem_path.to_path_buf(),
        },
        source => TlsError::Pem {
            what: "key file",
            path: key_pem_path.to_path_buf(),
            source,
        },
    })?;

    let config_error = |source| TlsError::Config {
        cert: cert_pem_path.to_path_buf(),
        key: key_pem_path.to_path_buf(),
        source,
    };
    // with_single_cert also checks that the key belongs to the first certificate, so a
    // mismatched pair fails here, at start, not at the first handshake.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(config_error)?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    fn write_pair(names: &[&str]) -> (Files, rcgen::Certificate) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join("server.crt");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            Files {
                _dir: dir,
                cert: cert_path,
                key: key_path,
            },
            cert,
        )
    }

    #[test]
    fn builds_a_config_with_alpn() {
        let (files, _) = write_pair(&["bib.localhost", "*.bib.localhost"]);
        let config = server_config(&files.cert, &files.key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn errors_name_the_file() {
        let (files, _) = write_pair(&["bib.localhost"]);
        let missing = files.cert.with_file_name("missing.crt");
        let err = server_config(&missing, &files.key).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");

        // A certificate where the key should be: no private key in it.
        let err = server_config(&files.cert, &files.cert).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("server.crt"), "{err}");

        let err = server_config(&files.key, &files.key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn a_key_from_another_pair_is_refused_at_start() {
        let (a, _) = write_pair(&["bib.localhost"]);
        let (b, _) = write_pair(&["bib.localhost"]);
        let err = server_config(&a.cert, &b.key).unwrap_err();
        assert!(matches!(err, TlsError::Config { .. }), "{err}");
    }

    /// A real handshake on loopback: a client trusting the test certificate connects to a
    /// service host under the wildcard and negotiates h2.
    #[tokio::test]
    async fn handshakes_for_a_wildcard_host_and_negotiates_h2() {
        let (files, cert) = write_pair(&["bib.localhost", "*.bib.localhost"]);
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server_config(&files.cert, &files.key).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            tls.write_all(b"hello").await.unwrap();
            tls.shutdown().await.unwrap();
        });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("pressreader.bib.localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        server.await.unwrap();
    }
}
