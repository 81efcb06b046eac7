//! A small demo ACS (library system) speaking real SIP2, for `portvakt demo` and tests:
//! accepted connection → frames through the [`codec`](super::codec) → 93/99/63 answered from
//! an in-memory patron list → 94/98/64 back, with `PB` birth date and `AQ` home library.
//!
//! Responses carry `AY`/`AZ` when the request did (mirroring the request, as ACSs do). A
//! request with a bad checksum gets a 96 (resend); anything undecodable closes the
//! connection. With a login configured, 63 before a successful 93 closes the connection.
//!
//! [`serve`] speaks plain TCP; [`serve_tls`] the same SIP2 inside TLS from the first byte,
//! for testing the client's `tls` setting.

use std::fmt;
use std::sync::Arc;

use jiff::civil::Date;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::codec::{
    self, AcsStatus, CodecError, Encoding, ErrorDetection, Frame, Message, PatronInformation,
    PatronInformationResponse, PatronStatus, SipDateTime,
};

/// A patron the demo ACS knows.
#[derive(Clone)]
pub struct DemoPatron {
    /// AA
    pub card: String,
    /// AD
    pub pin: String,
    /// AE
    pub name: String,
    /// PB
    pub birth_date: Option<Date>,
    /// AQ
    pub home_library: Option<String>,
    /// Sets patron status position 0, charge privileges denied.
    pub blocked: bool,
    /// Sets patron status position 4, card reported lost.
    pub lost: bool,
}

impl fmt::Debug for DemoPatron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoPatron")
            .field("home_library", &self.home_library)
            .field("blocked", &self.blocked)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

/// How the demo ACS presents itself.
#[derive(Clone)]
pub struct DemoAcsOptions {
    /// AO in responses.
    pub institution_id: String,
    /// When set, a connection must log in (93) with this user and password before a 63.
    pub login: Option<(String, String)>,
    pub encoding: Encoding,
}

impl fmt::Debug for DemoAcsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoAcsOptions")
            .field("institution_id", &self.institution_id)
            .field("login_user", &self.login.as_ref().map(|(u, _)| u))
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

/// What ends a demo ACS or one of its connections.
#[derive(Debug, thiserror::Error)]
pub enum DemoAcsError {
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("connection i/o failed")]
    Io(#[source] std::io::Error),
    #[error("malformed request: {0}")]
    Malformed(#[from] CodecError),
    #[error("63 before a successful login")]
    NotLoggedIn,
    #[error("unsupported message {0}")]
    Unsupported(&'static str),
}

/// Serves SIP2 on `listener` until dropped or accepting fails. Connections are tasks in a
/// `JoinSet`, so dropping this future ends them too.
pub async fn serve(
    listener: TcpListener,
    patrons: Vec<DemoPatron>,
    options: DemoAcsOptions,
) -> Result<(), DemoAcsError> {
    serve_with(listener, None, patrons, options).await
}

/// [`serve`] inside TLS: every connection is a TLS handshake with `acceptor` first.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    patrons: Vec<DemoPatron>,
    options: DemoAcsOptions,
) -> Result<(), DemoAcsError> {
    serve_with(listener, Some(acceptor), patrons, options).await
}

async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    patrons: Vec<DemoPatron>,
    options: DemoAcsOptions,
) -> Result<(), DemoAcsError> {
    let patrons: Arc<[DemoPatron]> = patrons.into();
    let options = Arc::new(options);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(DemoAcsError::Accept)?;
                let (patrons, options) = (Arc::clone(&patrons), Arc::clone(&options));
                let tls = tls.clone();
                // The handshake runs in the connection's task, so a slow or silent client
                // does not hold up the accept loop.
                connections.spawn(async move {
                    let served = match tls {
                        None => handle(stream, &patrons, &options).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => handle(stream, &patrons, &options).await,
                            Err(e) => Err(DemoAcsError::Tls(e)),
                        },
                    };
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "demo ACS closed a connection");
                    }
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    patrons: &[DemoPatron],
    options: &DemoAcsOptions,
) -> Result<(), DemoAcsError> {
    let mut buf = Vec::new();
    let mut logged_in = options.login.is_none();
    let mut last_response: Option<Vec<u8>> = None;
    loop {
        let raw = loop {
            if let Some(frame) = codec::take_frame(&mut buf)? {
                break frame;
            }
            if stream.read_buf(&mut buf).await.map_err(DemoAcsError::Io)? == 0 {
                return Ok(());
            }
        };
        let request = match codec::decode(&raw, options.encoding) {
            Ok(frame) => frame,
            Err(CodecError::BadChecksum) => {
                let resend = Frame {
                    message: Message::RequestScResend,
                    error_detection: Some(ErrorDetection { sequence: None }),
                };
                let bytes = codec::encode(&resend, options.encoding)?;
                send(&mut stream, &bytes).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let reply = match request.message {
            Message::Login(login) => {
                let ok = options.login.as_ref().is_some_and(|(user, password)| {
                    login.user == *user && same_secret(&login.password, password)
                });
                logged_in = ok;
                Message::LoginResponse { ok }
            }
            Message::ScStatus(_) => Message::AcsStatus(acs_status(options)),
            Message::PatronInformation(p) if logged_in => {
                Message::PatronInformationResponse(patron_information(patrons, &p, options))
            }
            Message::PatronInformation(_) => return Err(DemoAcsError::NotLoggedIn),
            Message::RequestAcsResend => {
                if let Some(bytes) = &last_response {
                    send(&mut stream, bytes).await?;
                }
                continue;
            }
            other => return Err(DemoAcsError::Unsupported(other.id())),
        };
        let frame = Frame {
            message: reply,
            error_detection: request.error_detection,
        };
        let bytes = codec::encode(&frame, options.encoding)?;
        send(&mut stream, &bytes).await?;
        last_response = Some(bytes);
    }
}

/// Writes one frame; the flush is a no-op on TCP and pushes the TLS record out.
async fn send(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<(), DemoAcsError> {
    stream.write_all(bytes).await.map_err(DemoAcsError::Io)?;
    stream.flush().await.map_err(DemoAcsError::Io)
}

fn now() -> SipDateTime {
    SipDateTime::from_civil(jiff::ZonedDateTime::now().datetime())
}

fn acs_status(options: &DemoAcsOptions) -> AcsStatus {
    AcsStatus {
        online: true,
        checkin_ok: false,
        checkout_ok: false,
        renewal_policy: false,
        status_update_ok: false,
        offline_ok: false,
        timeout_period: 30,
        retries_allowed: 3,
        date_time_sync: now(),
        protocol_version: "2.00".to_owned(),
        institution_id: options.institution_id.clone(),
        library_name: Some("Portvakt demo library".to_owned()),
        // 99, 97, 93 and 63 only.
        supported_messages: Some("NNNNYYYYNNNNNNNN".to_owned()),
        terminal_location: None,
        screen_messages: Vec::new(),
    }
}

fn patron_information(
    patrons: &[DemoPatron],
    request: &PatronInformation,
    options: &DemoAcsOptions,
) -> PatronInformationResponse {
    let patron = patrons.iter().find(|p| p.card == request.patron_id);
    let pin_ok = patron.is_some_and(|p| {
        request
            .patron_password
            .as_deref()
            .is_some_and(|pin| same_secret(pin, &p.pin))
    });
    let mut status = PatronStatus::default();
    if let Some(p) = patron {
        status.0[PatronStatus::CHARGE_PRIVILEGES_DENIED] = p.blocked;
        status.0[PatronStatus::CARD_REPORTED_LOST] = p.lost;
    }
    PatronInformationResponse {
        patron_status: status,
        language: 0,
        transaction_date: now(),
        counts: [Some(0); 6],
        institution_id: options.institution_id.clone(),
        patron_id: request.patron_id.clone(),
        personal_name: patron.map(|p| p.name.clone()).unwrap_or_default(),
        valid_patron: Some(patron.is_some()),
        valid_patron_password: Some(pin_ok),
        // Personal details only to whoever knows the PIN.
        birth_date: patron.filter(|_| pin_ok).and_then(|p| p.birth_date),
        home_library: patron
            .filter(|_| pin_ok)
            .and_then(|p| p.home_library.clone()),
        screen_messages: Vec::new(),
    }
}

/// Compares without stopping at the first difference, so timing says little about a PIN.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
