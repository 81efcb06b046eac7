//! Checks a library card and PIN against the library system (the ACS) over SIP2: settings →
//! a small pool of TCP or TLS connections → one 63/64 exchange per check → a [`Sip2Verdict`].
//!
//! # Messages and fields
//!
//! The [`codec`] speaks, from both sides (this client and the [`server`] demo ACS):
//!
//! | id | message | fields read or written |
//! |---|---|---|
//! | 93 | Login | UID/PWD algorithm (`0`), `CN` user, `CO` password, `CP` location |
//! | 94 | Login Response | ok (`1`/`0`) |
//! | 63 | Patron Information | language, transaction date, summary, `AO`, `AA` card, `AD` PIN (`AC` decoded, not sent) |
//! | 64 | Patron Information Response | patron status (14 × `Y`/blank), language, date, six counts; `AO`, `AA`, `AE`, `BL`, `CQ`, `PB` birth date `YYYYMMDD` (extension), `AQ` home library (extension), `AF`; all other fields (`BZ`, `CA`, `CB`, item lists, …) are skipped |
//! | 99 / 98 | SC Status / ACS Status | all fixed fields; `AO`, `AM`, `BX`, `AN`, `AF` |
//! | 96 / 97 | Request resend | — |
//!
//! Frames end in CR; CRLF and LF are accepted too. With `checksums` on, every request
//! carries `AY<seq>AZ<sum>` (the sum is the two's complement of the 16-bit byte sum through
//! `AZ`, four upper-case hex digits) and every response must carry a correct `AZ` (and, if
//! it has `AY`, the same sequence number). A present `AZ` is verified even with `checksums`
//! off. `encoding` is `utf-8` or `latin1` (bytes above 0x7F are U+0080..U+00FF).
//!
//! # Connections
//!
//! Up to `connections` connections are open at a time; an idle one is reused. A new one
//! sends 93 first when `login_user` is set and needs `94` ok = `1`. A connection that errs,
//! times out or leaves unread bytes behind is dropped, never pooled. A reused connection
//! that the ACS had quietly closed gets one retry on a fresh one. `timeout` bounds the whole
//! check: waiting for a free connection, connecting, the TLS handshake, logging in and the
//! 63/64 exchange.
//!
//! # TLS
//!
//! With [`Sip2Settings::tls`] set ([`Sip2Tls`]), every connection is TLS (1.2 or 1.3, the
//! ring provider) from its first byte, as SIP2-over-TLS ACSs expect: no STARTTLS. The ACS's
//! certificate must chain to a Mozilla root (webpki-roots, compiled in: no system store is
//! read) or to one of the extra CAs given (a library system's own CA), and must name the
//! server name (`tls_server_name`, by default the host of `addr`; an IP address is checked
//! against the certificate's IP addresses). A failed handshake, an untrusted certificate or
//! a wrong name is [`Sip2Error::Tls`]: "the library system is not answering", never "wrong
//! PIN". The SIP2 messages, the pool and the timeout are the same over TLS and plain TCP.
//!
//! # The acceptance rule
//!
//! The 64 must name the card that was asked about in `AA` (compared ignoring ASCII case and
//! surrounding blanks); anything else is [`Sip2Error::CardMismatch`]. Then:
//! `BL` = `N` or `CQ` = `N` → [`Sip2Verdict::WrongCardOrPin`] (so a lost card's status is
//! never shown without its PIN); `BL` or `CQ` missing → [`Sip2Error::Unvalidated`]; patron
//! status position 4 (card reported lost) → `Blocked { lost: true }`; position 0 (charge
//! privileges denied) → `Blocked { lost: false }`; otherwise `Accepted` with `PB` and `AQ`.
//! A card or PIN that cannot be put in a frame at all (empty card, `|`, CR, LF, NUL, or a
//! character outside `latin1`) is `WrongCardOrPin` without asking the ACS. Every
//! [`Sip2Error`] means "the library system is not answering", never "wrong PIN".

pub mod codec;
pub mod server;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::civil::Date;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

pub use codec::Encoding;
use codec::{
    CodecError, ErrorDetection, Frame, Login, Message, PatronInformation,
    PatronInformationResponse, SipDateTime,
};

/// How to reach and talk to one library system.
#[derive(Clone)]
pub struct Sip2Settings {
    /// `host:port` of the ACS.
    pub addr: String,
    /// `CN` of message 93; `None` skips the login.
    pub login_user: Option<String>,
    /// `CO` of message 93, already read from its file by the caller.
    pub login_password: Option<String>,
    /// `AO`, the institution id the ACS expects.
    pub institution_id: String,
    /// `CP` of message 93.
    pub location: Option<String>,
    /// Send `AY`/`AZ` and require `AZ` on responses.
    pub checksums: bool,
    pub encoding: Encoding,
    /// The longest one check may take, from waiting for a connection to the verdict.
    pub timeout: Duration,
    /// Most connections open at once (at least 1).
    pub connections: usize,
    /// TLS to the ACS; `None` is plain TCP.
    pub tls: Option<Sip2Tls>,
}

/// TLS to the ACS: the name its certificate must carry and the roots it must chain to.
#[derive(Clone)]
pub struct Sip2Tls {
    server_name: ServerName<'static>,
    connector: TlsConnector,
    extra_roots: usize,
}

/// Why a [`Sip2Tls`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Sip2TlsError {
    #[error("extra CA certificate {index} is not usable as a root: {source}")]
    BadRoot {
        /// Position in the list given, from 0.
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Config(#[source] rustls::Error),
}

impl Sip2Tls {
    /// Trusts the Mozilla roots (webpki-roots) and `extra_roots` (a library system's own
    /// CA), and checks that the ACS's certificate names `server_name`.
    pub fn new(
        server_name: ServerName<'static>,
        extra_roots: &[CertificateDer<'_>],
    ) -> Result<Self, Sip2TlsError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for (index, der) in extra_roots.iter().enumerate() {
            roots
                .add(der.clone().into_owned())
                .map_err(|source| Sip2TlsError::BadRoot { index, source })?;
        }
        // The ring provider is named rather than taken from a process-wide default, so the
        // config never depends on which crate happened to install one first.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(Sip2TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
            extra_roots: extra_roots.len(),
        })
    }

    /// The name the ACS's certificate must carry.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

impl fmt::Debug for Sip2Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sip2Tls")
            .field("server_name", &self.server_name.to_str())
            .field("extra_roots", &self.extra_roots)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Sip2Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sip2Settings")
            .field("addr", &self.addr)
            .field("login_user", &self.login_user)
            .field(
                "login_password",
                &self.login_password.as_ref().map(|_| "<redacted>"),
            )
            .field("institution_id", &self.institution_id)
            .field("location", &self.location)
            .field("checksums", &self.checksums)
            .field("encoding", &self.encoding)
            .field("timeout", &self.timeout)
            .field("connections", &self.connections)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What the library system said about a card and PIN.
#[derive(Clone, PartialEq, Eq)]
pub enum Sip2Verdict {
    /// `BL` = `Y`, `CQ` = `Y`, not lost, charges allowed.
    Accepted {
        /// `PB`, when the ACS sends it.
        birth_date: Option<Date>,
        /// `AQ`, when the ACS sends it (non-empty).
        home_library: Option<String>,
    },
    /// `BL` = `N` or `CQ` = `N`.
    WrongCardOrPin,
    /// Right card and PIN, but the card is reported lost or may not borrow.
    Blocked { lost: bool },
}

impl fmt::Debug for Sip2Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted {
                birth_date,
                home_library,
            } => f
                .debug_struct("Accepted")
                .field("birth_date", &birth_date.map(|_| "<redacted>"))
                .field("home_library", home_library)
                .finish(),
            Self::WrongCardOrPin => f.write_str("WrongCardOrPin"),
            Self::Blocked { lost } => f.debug_struct("Blocked").field("lost", lost).finish(),
        }
    }
}

/// Why a check got no verdict. Each of these is shown to the patron as "the library system
/// is not answering"; none carries a card, PIN or name.
#[derive(Debug, thiserror::Error)]
pub enum Sip2Error {
    #[error("the library system did not answer in time")]
    Timeout,
    #[error("could not connect to the library system")]
    Connect(#[source] std::io::Error),
    /// The handshake failed: an untrusted or wrongly named certificate, or a peer that does
    /// not speak TLS. The source tells which (rustls's reason, never personal data).
    #[error("the TLS handshake with the library system failed")]
    Tls(#[source] std::io::Error),
    #[error("the connection to the library system failed")]
    Io(#[source] std::io::Error),
    #[error("the library system closed the connection")]
    Closed,
    #[error("malformed frame from the library system: {0}")]
    Malformed(#[from] CodecError),
    #[error("could not encode a request to the library system: {0}")]
    Encode(#[source] CodecError),
    #[error("the library system sent no checksum while checksums are on")]
    MissingChecksum,
    #[error("the library system answered with the wrong sequence number")]
    SequenceMismatch,
    #[error("the library system asked for a resend: our request arrived damaged")]
    ResendRequested,
    #[error("the library system sent message {got} where {expected} was expected")]
    UnexpectedMessage {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the library system rejected the login (93)")]
    LoginRejected,
    #[error("the library system answered about another card")]
    CardMismatch,
    #[error("the library system did not say whether the card and PIN are valid (BL/CQ)")]
    Unvalidated,
    #[error("bad sip2 settings: {0}")]
    InvalidSettings(&'static str),
}

impl Sip2Error {
    /// Errors after which a reused connection may just have been closed by the ACS while
    /// idle, so one retry on a fresh connection is worth it.
    fn stale_connection(&self) -> bool {
        matches!(self, Self::Closed | Self::Io(_))
    }
}

/// A SIP2 client for one library system; share it (it is `Sync`) across requests.
#[derive(Debug)]
pub struct Sip2Client {
    settings: Sip2Settings,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection that may be open; held for the length of a check.
    slots: Semaphore,
}

impl Sip2Client {
    /// Checks the settings; connects lazily, on the first check.
    pub fn new(settings: Sip2Settings) -> Result<Self, Sip2Error> {
        if settings.connections == 0 {
            return Err(Sip2Error::InvalidSettings("connections must be at least 1"));
        }
        if settings.timeout.is_zero() {
            return Err(Sip2Error::InvalidSettings("timeout must be above zero"));
        }
        let enc = settings.encoding;
        let sendable = [
            Some(&settings.institution_id),
            settings.login_user.as_ref(),
            settings.login_password.as_ref(),
            settings.location.as_ref(),
        ];
        if !sendable.into_iter().flatten().all(|s| enc.can_send(s)) {
            return Err(Sip2Error::InvalidSettings(
                "institution_id, login_user, login_password and location must not contain \
                 '|', CR, LF or NUL, and must fit the encoding",
            ));
        }
        if settings.login_user.is_some() != settings.login_password.is_some() {
            return Err(Sip2Error::InvalidSettings(
                "login_user and login_password go together",
            ));
        }
        let slots = Semaphore::new(settings.connections.min(Semaphore::MAX_PERMITS));
        Ok(Self {
            settings,
            idle: Mutex::new(Vec::new()),
            slots,
        })
    }

    /// Asks the library system about `card` and `pin`.
    pub async fn check(&self, card: &str, pin: &str) -> Result<Sip2Verdict, Sip2Error> {
        let enc = self.settings.encoding;
        if card.trim().is_empty() || !enc.can_send(card) || !enc.can_send(pin) {
            return Ok(Sip2Verdict::WrongCardOrPin);
        }
        tokio::time::timeout(self.settings.timeout, self.check_within_timeout(card, pin))
            .await
            .map_err(|_| Sip2Error::Timeout)?
    }

    /// Connections open and idle in the pool now; for tests and metrics.
    pub fn idle_connections(&self) -> usize {
        self.lock_idle().len()
    }

    async fn check_within_timeout(&self, card: &str, pin: &str) -> Result<Sip2Verdict, Sip2Error> {
        // The semaphore is never closed, so an error here cannot happen; map it anyway.
        let _slot = self.slots.acquire().await.map_err(|_| Sip2Error::Closed)?;
        let pooled = self.lock_idle().pop();
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(conn) => conn,
            None => Connection::open(&self.settings).await?,
        };
        match self.check_on(conn, card, pin).await {
            Err(e) if reused && e.stale_connection() => {
                let fresh = Connection::open(&self.settings).await?;
                self.check_on(fresh, card, pin).await
            }
            other => other,
        }
    }

    /// One 63/64 exchange; the connection goes back to the pool only when all went well.
    async fn check_on(
        &self,
        mut conn: Connection,
        card: &str,
        pin: &str,
    ) -> Result<Sip2Verdict, Sip2Error> {
        let request = Message::PatronInformation(PatronInformation {
            language: 0,
            transaction_date: SipDateTime::from_civil(jiff::ZonedDateTime::now().datetime()),
            summary: [false; 10],
            institution_id: self.settings.institution_id.clone(),
            patron_id: card.to_owned(),
            terminal_password: None,
            patron_password: Some(pin.to_owned()),
        });
        let response = match conn.exchange(request, &self.settings).await? {
            Message::PatronInformationResponse(r) => r,
            other => {
                return Err(Sip2Error::UnexpectedMessage {
                    expected: "64",
                    got: other.id(),
                });
            }
        };
        let verdict = verdict(&response, card)?;
        if conn.is_clean() {
            self.lock_idle().push(conn);
        }
        Ok(verdict)
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A panic elsewhere while holding the lock leaves a plain Vec behind: still usable.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The acceptance rule of the module doc, applied to one 64.
fn verdict(r: &PatronInformationResponse, card: &str) -> Result<Sip2Verdict, Sip2Error> {
    if !r.patron_id.trim().eq_ignore_ascii_case(card.trim()) {
        return Err(Sip2Error::CardMismatch);
    }
    match (r.valid_patron, r.valid_patron_password) {
        (Some(false), _) | (_, Some(false)) => return Ok(Sip2Verdict::WrongCardOrPin),
        (Some(true), Some(true)) => {}
        _ => return Err(Sip2Error::Unvalidated),
    }
    if r.patron_status.card_reported_lost() {
        return Ok(Sip2Verdict::Blocked { lost: true });
    }
    if r.patron_status.charge_privileges_denied() {
        return Ok(Sip2Verdict::Blocked { lost: false });
    }
    Ok(Sip2Verdict::Accepted {
        birth_date: r.birth_date,
        home_library: r
            .home_library
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    })
}

/// A connection to the ACS, plain or TLS; the SIP2 code above does not tell them apart.
type Stream = proxy::net::ClientStream;

/// One open, logged-in connection and what it has read past the last frame.
#[derive(Debug)]
struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    /// The next `AY` sequence number, 0–9 and round again.
    next_sequence: u8,
}

impl Connection {
    async fn open(settings: &Sip2Settings) -> Result<Self, Sip2Error> {
        let tcp = TcpStream::connect(&settings.addr)
            .await
            .map_err(Sip2Error::Connect)?;
        // Small request/response frames: waiting to fill a segment only adds latency.
        tcp.set_nodelay(true).map_err(Sip2Error::Connect)?;
        let stream = match &settings.tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::Tls(Box::new(
                tls.connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(Sip2Error::Tls)?,
            )),
        };
        let mut conn = Self {
            stream,
            buf: Vec::new(),
            next_sequence: 0,
        };
        if let (Some(user), Some(password)) = (&settings.login_user, &settings.login_password) {
            let login = Message::Login(Login {
                uid_algorithm: b'0',
                pwd_algorithm: b'0',
                user: user.clone(),
                password: password.clone(),
                location: settings.location.clone(),
            });
            match conn.exchange(login, settings).await? {
                Message::LoginResponse { ok: true } => {}
                Message::LoginResponse { ok: false } => return Err(Sip2Error::LoginRejected),
                other => {
                    return Err(Sip2Error::UnexpectedMessage {
                        expected: "94",
                        got: other.id(),
                    });
                }
            }
        }
        Ok(conn)
    }

    /// Sends one request and reads one response, checking the trailer.
    async fn exchange(
        &mut self,
        message: Message,
        settings: &Sip2Settings,
    ) -> Result<Message, Sip2Error> {
        let sequence = settings.checksums.then(|| {
            let s = self.next_sequence;
            self.next_sequence = (s + 1) % 10;
            s
        });
        let frame = Frame {
            message,
            error_detection: sequence.map(|s| ErrorDetection { sequence: Some(s) }),
        };
        let bytes = codec::encode(&frame, settings.encoding).map_err(Sip2Error::Encode)?;
        self.stream.write_all(&bytes).await.map_err(Sip2Error::Io)?;
        // A no-op on TCP; over TLS it makes sure the last record has left.
        self.stream.flush().await.map_err(Sip2Error::Io)?;
        let raw = self.read_frame().await?;
        let response = codec::decode(&raw, settings.encoding)?;
        match (settings.checksums, response.error_detection) {
            (true, None) => return Err(Sip2Error::MissingChecksum),
            (true, Some(ErrorDetection { sequence: Some(s) })) if Some(s) != sequence => {
                return Err(Sip2Error::SequenceMismatch);
            }
            _ => {}
        }
        if response.message == Message::RequestScResend {
            return Err(Sip2Error::ResendRequested);
        }
        Ok(response.message)
    }

    async fn read_frame(&mut self) -> Result<Vec<u8>, Sip2Error> {
        loop {
            if let Some(frame) = codec::take_frame(&mut self.buf)? {
                return Ok(frame);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(Sip2Error::Io)?;
            if n == 0 {
                return Err(Sip2Error::Closed);
            }
        }
    }

    /// Bytes beyond the last frame (other than a line feed) mean the ACS sent something we
    /// did not ask for; the next answer read from here could belong to someone else.
    fn is_clean(&self) -> bool {
        self.buf.iter().all(|&b| b == b'\r' || b == b'\n')
    }
}
