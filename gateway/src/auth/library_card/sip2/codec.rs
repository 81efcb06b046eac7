//! The SIP2 wire codec: bytes in, typed [`Frame`]s out, and back; it does no I/O.
//!
//! Data flows in two steps. [`take_frame`] cuts one terminated frame from a connection's read
//! buffer (CR, CRLF or LF); [`decode`] checks the `AY`/`AZ` trailer, reads the two-digit
//! message id, the fixed fields and the `XX…|` variable fields, and returns a [`Frame`].
//! [`encode`] is the inverse and refuses values that would smuggle a field separator or a
//! frame end into the wire. Every failure is a [`CodecError`] that names the field, never its
//! value: the values are card numbers, PINs and names.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};

/// The longest frame we buffer before calling the peer broken. Real 64 responses with item
/// lists stay far below this; the bound keeps a garbage-spewing peer from growing memory.
pub const MAX_FRAME_LEN: usize = 16 * 1024;

/// Everything that can be wrong with a frame, on the way in or out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty frame")]
    Empty,
    #[error("frame longer than {MAX_FRAME_LEN} bytes without a terminator")]
    TooLong,
    #[error("unknown message id {0}")]
    UnknownMessage(MessageId),
    #[error("message {message}: fixed field {field} is truncated")]
    Truncated {
        message: &'static str,
        field: &'static str,
    },
    #[error("message {message}: fixed field {field} is malformed")]
    BadFixedField {
        message: &'static str,
        field: &'static str,
    },
    #[error("malformed variable field")]
    BadFieldId,
    #[error("field {field} is malformed")]
    BadField { field: &'static str },
    #[error("field {field} appears twice")]
    DuplicateField { field: &'static str },
    #[error("message {message}: required field {field} is missing")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },
    #[error("frame contains a NUL, CR or LF byte inside it")]
    ControlCharacter,
    #[error("checksum does not match")]
    BadChecksum,
    #[error("sequence number must be one digit 0-9")]
    BadSequence,
    #[error("field {field} is not valid {encoding}")]
    InvalidText {
        field: &'static str,
        encoding: Encoding,
    },
    #[error("field {field} contains '|', CR, LF or NUL")]
    ForbiddenCharacter { field: &'static str },
    #[error("field {field} has a character {encoding} cannot represent")]
    Unrepresentable {
        field: &'static str,
        encoding: Encoding,
    },
    #[error("field {field} is out of range")]
    OutOfRange { field: &'static str },
}

/// The two bytes where a message id should be; printed escaped, as they may be garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId(pub [u8; 2]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// The character encoding of text fields. Fixed fields, field ids and the trailer are ASCII
/// in both. Windows library systems commonly speak `latin1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `utf-8`, the default.
    #[default]
    Utf8,
    /// `latin1` (ISO 8859-1): byte `0xNN` is `U+00NN`; characters above `U+00FF` cannot be sent.
    Latin1,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Utf8 => "utf-8",
            Self::Latin1 => "latin1",
        })
    }
}

/// The configuration names `utf-8` and `latin1` (plus common spellings) parse; others do not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encoding (expected \"utf-8\" or \"latin1\")")]
pub struct UnknownEncoding;

impl FromStr for Encoding {
    type Err = UnknownEncoding;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Ok(Self::Utf8),
            "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => Ok(Self::Latin1),
            _ => Err(UnknownEncoding),
        }
    }
}

impl Encoding {
    /// Appends `value` to `out`, refusing what would break the frame apart.
    fn put(self, field: &'static str, value: &str, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if value.contains(['|', '\r', '\n', '\0']) {
            return Err(CodecError::ForbiddenCharacter { field });
        }
        match self {
            Self::Utf8 => out.extend_from_slice(value.as_bytes()),
            Self::Latin1 => {
                for c in value.chars() {
                    let byte =
                        u8::try_from(u32::from(c)).map_err(|_| CodecError::Unrepresentable {
                            field,
                            encoding: self,
                        })?;
                    out.push(byte);
                }
            }
        }
        Ok(())
    }

    fn text(self, field: &'static str, bytes: &[u8]) -> Result<String, CodecError> {
        match self {
            Self::Utf8 => {
                std::str::from_utf8(bytes)
                    .map(str::to_owned)
                    .map_err(|_| CodecError::InvalidText {
                        field,
                        encoding: self,
                    })
            }
            Self::Latin1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        }
    }

    /// Whether `value` can be sent in a field at all: used to answer "no such card" for input
    /// that no library system could hold, without a round trip.
    pub fn can_send(self, value: &str) -> bool {
        self.put("", value, &mut Vec::new()).is_ok()
    }
}

/// One message on the wire plus its error-detection trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub message: Message,
    /// `Some` when the frame carries (or is to carry) `AZ` — and `AY` if `sequence` is set.
    pub error_detection: Option<ErrorDetection>,
}

/// The `AY` sequence number (0–9) and the `AZ` checksum that follows it. The checksum itself
/// is not stored: [`encode`] computes it and [`decode`] has verified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorDetection {
    pub sequence: Option<u8>,
}

/// The messages Portvakt speaks, from both sides (the client and the demo ACS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 93
    Login(Login),
    /// 94
    LoginResponse { ok: bool },
    /// 63
    PatronInformation(PatronInformation),
    /// 64
    PatronInformationResponse(PatronInformationResponse),
    /// 99
    ScStatus(ScStatus),
    /// 98
    AcsStatus(AcsStatus),
    /// 96: the ACS asks the SC to send its last message again (after a bad checksum).
    RequestScResend,
    /// 97: the SC asks the ACS to send its last message again.
    RequestAcsResend,
}

impl Message {
    /// The two-digit id, for errors and logs.
    pub fn id(&self) -> &'static str {
        match self {
            Self::Login(_) => "93",
            Self::LoginResponse { .. } => "94",
            Self::PatronInformation(_) => "63",
            Self::PatronInformationResponse(_) => "64",
            Self::ScStatus(_) => "99",
            Self::AcsStatus(_) => "98",
            Self::RequestScResend => "96",
            Self::RequestAcsResend => "97",
        }
    }
}

/// Prints `<redacted>` for a value about a person.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// 93 Login: the SC logs in to the ACS once per connection.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// UID algorithm, `'0'` = unencrypted (the only one in use).
    pub uid_algorithm: u8,
    /// PWD algorithm, `'0'` = unencrypted.
    pub pwd_algorithm: u8,
    /// CN
    pub user: String,
    /// CO
    pub password: String,
    /// CP
    pub location: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &Redacted)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// 63 Patron Information.
#[derive(Clone, PartialEq, Eq)]
pub struct PatronInformation {
    /// Three digits; 000 = unknown.
    pub language: u16,
    pub transaction_date: SipDateTime,
    /// Ten Y/space flags asking for item lists; all off for a card check.
    pub summary: [bool; 10],
    /// AO
    pub institution_id: String,
    /// AA: the card number.
    pub patron_id: String,
    /// AC
    pub terminal_password: Option<String>,
    /// AD: the PIN.
    pub patron_password: Option<String>,
}

impl fmt::Debug for PatronInformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatronInformation")
            .field("institution_id", &self.institution_id)
            .field("patron_id", &Redacted)
            .field(
                "patron_password",
                &self.patron_password.as_ref().map(|_| Redacted),
            )
            .finish_non_exhaustive()
    }
}

/// 64 Patron Information Response. Fields not listed (BZ, CA, CB, item lists, BD, BE, BF,
/// AG, vendor extensions) are read past and dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PatronInformationResponse {
    pub patron_status: PatronStatus,
    pub language: u16,
    pub transaction_date: SipDateTime,
    /// Hold, overdue, charged, fine, recall, unavailable-hold counts; `None` = four blanks.
    pub counts: [Option<u16>; 6],
    /// AO (empty when the ACS left it out).
    pub institution_id: String,
    /// AA: the card number the ACS answers about.
    pub patron_id: String,
    /// AE (empty when left out).
    pub personal_name: String,
    /// BL: the card exists.
    pub valid_patron: Option<bool>,
    /// CQ: the PIN is right.
    pub valid_patron_password: Option<bool>,
    /// PB (extension): birth date, `YYYYMMDD`; empty = unknown.
    pub birth_date: Option<Date>,
    /// AQ (extension here): the patron's home library.
    pub home_library: Option<String>,
    /// AF, repeatable.
    pub screen_messages: Vec<String>,
}

impl fmt::Debug for PatronInformationResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatronInformationResponse")
            .field("patron_status", &self.patron_status)
            .field("institution_id", &self.institution_id)
            .field("patron_id", &Redacted)
            .field("personal_name", &Redacted)
            .field("valid_patron", &self.valid_patron)
            .field("valid_patron_password", &self.valid_patron_password)
            .field("birth_date", &self.birth_date.map(|_| Redacted))
            .field("home_library", &self.home_library)
            // Screen messages often greet the patron by name.
            .field("screen_messages", &self.screen_messages.len())
            .finish_non_exhaustive()
    }
}

/// The 14 patron-status flags of message 64 (and 24), position by position as in the SIP2
/// 2.00 spec. `Y` sets a flag; space (and, tolerated, `N`) leaves it clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PatronStatus(pub [bool; 14]);

impl PatronStatus {
    pub const CHARGE_PRIVILEGES_DENIED: usize = 0;
    pub const RENEWAL_PRIVILEGES_DENIED: usize = 1;
    pub const RECALL_PRIVILEGES_DENIED: usize = 2;
    pub const HOLD_PRIVILEGES_DENIED: usize = 3;
    pub const CARD_REPORTED_LOST: usize = 4;
    pub const TOO_MANY_ITEMS_CHARGED: usize = 5;
    pub const TOO_MANY_ITEMS_OVERDUE: usize = 6;
    pub const TOO_MANY_RENEWALS: usize = 7;
    pub const TOO_MANY_CLAIMS_OF_ITEMS_RETURNED: usize = 8;
    pub const TOO_MANY_ITEMS_LOST: usize = 9;
    pub const EXCESSIVE_OUTSTANDING_FINES: usize = 10;
    pub const EXCESSIVE_OUTSTANDING_FEES: usize = 11;
    pub const RECALL_OVERDUE: usize = 12;
    pub const TOO_MANY_ITEMS_BILLED: usize = 13;

    pub fn charge_privileges_denied(self) -> bool {
        self.0[Self::CHARGE_PRIVILEGES_DENIED]
    }
    pub fn card_reported_lost(self) -> bool {
        self.0[Self::CARD_REPORTED_LOST]
    }
}

/// A SIP2 date-time, `YYYYMMDDZZZZHHMMSS` (ZZZZ: a time zone or four blanks for local time),
/// kept as its 18 ASCII characters: nothing in Portvakt computes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipDateTime(String);

impl SipDateTime {
    /// Local time, zone left blank as the spec asks for local time.
    pub fn from_civil(dt: DateTime) -> Self {
        let year = dt.year().clamp(0, 9999);
        Self(format!(
            "{year:04}{:02}{:02}    {:02}{:02}{:02}",
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ))
    }

    /// Checks the shape: eight digits, four upper-case letters or blanks, six digits.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok = b.len() == 18
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8..12]
                .iter()
                .all(|&c| c == b' ' || c.is_ascii_uppercase())
            && b[12..].iter().all(u8::is_ascii_digit);
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 99 SC Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScStatus {
    /// 0 = ok, 1 = out of paper, 2 = shutting down.
    pub status_code: u8,
    /// Three digits.
    pub max_print_width: u16,
    /// `d.dd`, such as `2.00`.
    pub protocol_version: String,
}

/// 98 ACS Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcsStatus {
    pub online: bool,
    pub checkin_ok: bool,
    pub checkout_ok: bool,
    pub renewal_policy: bool,
    pub status_update_ok: bool,
    pub offline_ok: bool,
    /// Three digits, tenths of a second.
    pub timeout_period: u16,
    /// Three digits; 999 = unlimited.
    pub retries_allowed: u16,
    pub date_time_sync: SipDateTime,
    /// `d.dd`
    pub protocol_version: String,
    /// AO
    pub institution_id: String,
    /// AM
    pub library_name: Option<String>,
    /// BX: sixteen Y/N flags, kept as text.
    pub supported_messages: Option<String>,
    /// AN
    pub terminal_location: Option<String>,
    /// AF
    pub screen_messages: Vec<String>,
}

/// The SIP2 checksum: the two's complement of the 16-bit sum of `bytes` (everything from the
/// message id through the `AZ` itself).
pub fn checksum(bytes: &[u8]) -> u16 {
    bytes
        .iter()
        .fold(0u16, |sum, &b| sum.wrapping_add(u16::from(b)))
        .wrapping_neg()
}

/// Cuts the next frame out of `buf`, without its terminator. Stray CR/LF before a frame (the
/// LF of a CRLF that arrived in the next read) are dropped. `Ok(None)`: read more.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, CodecError> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    buf.drain(..start);
    match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(end) => {
            let frame = buf[..end].to_vec();
            let mut consumed = end + 1;
            if buf[end] == b'\r' && buf.get(consumed) == Some(&b'\n') {
                consumed += 1;
            }
            buf.drain(..consumed);
            Ok(Some(frame))
        }
        None if buf.len() > MAX_FRAME_LEN => Err(CodecError::TooLong),
        None => Ok(None),
    }
}

/// Encodes one frame, ending in CR.
pub fn encode(frame: &Frame, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    let mut w = Writer {
        out: Vec::with_capacity(128),
        encoding,
    };
    w.out.extend_from_slice(frame.message.id().as_bytes());
    match &frame.message {
        Message::Login(m) => {
            w.ascii_char("UID algorithm", m.uid_algorithm)?;
            w.ascii_char("PWD algorithm", m.pwd_algorithm)?;
            w.field("CN", &m.user)?;
            w.field("CO", &m.password)?;
            w.opt("CP", m.location.as_deref())?;
        }
        Message::LoginResponse { ok } => w.out.push(if *ok { b'1' } else { b'0' }),
        Message::PatronInformation(m) => {
            w.digits("language", m.language, 3)?;
            w.out
                .extend_from_slice(m.transaction_date.as_str().as_bytes());
            w.flags(&m.summary);
            w.field("AO", &m.institution_id)?;
            w.field("AA", &m.patron_id)?;
            w.opt("AC", m.terminal_password.as_deref())?;
            w.opt("AD", m.patron_password.as_deref())?;
        }
        Message::PatronInformationResponse(m) => {
            w.flags(&m.patron_status.0);
            w.digits("language", m.language, 3)?;
            w.out
                .extend_from_slice(m.transaction_date.as_str().as_bytes());
            for count in m.counts {
                match count {
                    Some(n) => w.digits("count", n, 4)?,
                    None => w.out.extend_from_slice(b"    "),
                }
            }
            w.field("AO", &m.institution_id)?;
            w.field("AA", &m.patron_id)?;
            w.field("AE", &m.personal_name)?;
            w.opt("BL", m.valid_patron.map(yn))?;
            w.opt("CQ", m.valid_patron_password.map(yn))?;
            if let Some(d) = m.birth_date {
                let year = u16::try_from(d.year())
                    .ok()
                    .filter(|y| *y <= 9999)
                    .ok_or(CodecError::OutOfRange { field: "PB" })?;
                w.field("PB", &format!("{year:04}{:02}{:02}", d.month(), d.day()))?;
            }
            w.opt("AQ", m.home_library.as_deref())?;
            for s in &m.screen_messages {
                w.field("AF", s)?;
            }
        }
        Message::ScStatus(m) => {
            w.digits("status code", u16::from(m.status_code), 1)?;
            w.digits("max print width", m.max_print_width, 3)?;
            w.version(&m.protocol_version)?;
        }
        Message::AcsStatus(m) => {
            for flag in [
                m.online,
                m.checkin_ok,
                m.checkout_ok,
                m.renewal_policy,
                m.status_update_ok,
                m.offline_ok,
            ] {
                w.out.push(if flag { b'Y' } else { b'N' });
            }
            w.digits("timeout period", m.timeout_period, 3)?;
            w.digits("retries allowed", m.retries_allowed, 3)?;
            w.out
                .extend_from_slice(m.date_time_sync.as_str().as_bytes());
            w.version(&m.protocol_version)?;
            w.field("AO", &m.institution_id)?;
            w.opt("AM", m.library_name.as_deref())?;
            w.opt("BX", m.supported_messages.as_deref())?;
            w.opt("AN", m.terminal_location.as_deref())?;
            for s in &m.screen_messages {
                w.field("AF", s)?;
            }
        }
        Message::RequestScResend | Message::RequestAcsResend => {}
    }
    let mut out = w.out;
    if let Some(ed) = frame.error_detection {
        if let Some(seq) = ed.sequence {
            if seq > 9 {
                return Err(CodecError::BadSequence);
            }
            out.extend_from_slice(b"AY");
            out.push(b'0' + seq);
        }
        out.extend_from_slice(b"AZ");
        let sum = checksum(&out);
        out.extend_from_slice(format!("{sum:04X}").as_bytes());
    }
    out.push(b'\r');
    Ok(out)
}

fn yn(b: bool) -> &'static str {
    if b { "Y" } else { "N" }
}

struct Writer {
    out: Vec<u8>,
    encoding: Encoding,
}

impl Writer {
    fn field(&mut self, id: &'static str, value: &str) -> Result<(), CodecError> {
        self.out.extend_from_slice(id.as_bytes());
        self.encoding.put(id, value, &mut self.out)?;
        self.out.push(b'|');
        Ok(())
    }

    fn opt(&mut self, id: &'static str, value: Option<&str>) -> Result<(), CodecError> {
        match value {
            Some(v) => self.field(id, v),
            None => Ok(()),
        }
    }

    fn digits(&mut self, field: &'static str, n: u16, width: usize) -> Result<(), CodecError> {
        let s = format!("{n:0width$}");
        if s.len() != width {
            return Err(CodecError::OutOfRange { field });
        }
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn ascii_char(&mut self, field: &'static str, c: u8) -> Result<(), CodecError> {
        if !c.is_ascii_graphic() || c == b'|' {
            return Err(CodecError::OutOfRange { field });
        }
        self.out.push(c);
        Ok(())
    }

    fn flags(&mut self, flags: &[bool]) {
        self.out
            .extend(flags.iter().map(|&f| if f { b'Y' } else { b' ' }));
    }

    fn version(&mut self, v: &str) -> Result<(), CodecError> {
        if !is_version(v.as_bytes()) {
            return Err(CodecError::OutOfRange {
                field: "protocol version",
            });
        }
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }
}

fn is_version(b: &[u8]) -> bool {
    b.len() == 4
        && b[0].is_ascii_digit()
        && b[1] == b'.'
        && b[2].is_ascii_digit()
        && b[3].is_ascii_digit()
}

/// Decodes one frame; its terminator (CR, CRLF or LF) may be present or already cut off.
/// A present `AZ` checksum is always verified; whether one is required is the caller's call.
pub fn decode(frame: &[u8], encoding: Encoding) -> Result<Frame, CodecError> {
    let frame = frame
        .strip_suffix(b"\r\n")
        .or_else(|| frame.strip_suffix(b"\r"))
        .or_else(|| frame.strip_suffix(b"\n"))
        .unwrap_or(frame);
    if frame.is_empty() {
        return Err(CodecError::Empty);
    }
    if frame.iter().any(|&b| matches!(b, b'\0' | b'\r' | b'\n')) {
        return Err(CodecError::ControlCharacter);
    }
    let (payload, error_detection) = split_trailer(frame)?;
    let [a, b, rest @ ..] = payload else {
        return Err(CodecError::Empty);
    };
    let mut r = Reader {
        rest,
        encoding,
        message: "",
    };
    let message = match [*a, *b] {
        [b'9', b'3'] => {
            r.message = "93";
            let uid_algorithm = r.fixed("UID algorithm", 1)?[0];
            let pwd_algorithm = r.fixed("PWD algorithm", 1)?[0];
            let f = r.fields(&["CN", "CO", "CP"])?;
            let [user, password, location] = f.scalars;
            Message::Login(Login {
                uid_algorithm,
                pwd_algorithm,
                user: r.required("CN", user)?,
                password: r.required("CO", password)?,
                location,
            })
        }
        [b'9', b'4'] => {
            r.message = "94";
            let ok = match r.fixed("ok", 1)? {
                b"1" => true,
                b"0" => false,
                _ => return Err(r.bad("ok")),
            };
            // 94 has no variable fields; tolerate (and ignore) any an ACS adds.
            r.fields(&[])?;
            Message::LoginResponse { ok }
        }
        [b'6', b'3'] => {
            r.message = "63";
            let language = r.number("language", 3)?;
            let transaction_date = r.date_time("transaction date")?;
            let summary = r.flag_array::<10>("summary")?;
            let f = r.fields(&["AO", "AA", "AC", "AD"])?;
            let [ao, aa, ac, ad] = f.scalars;
            Message::PatronInformation(PatronInformation {
                language,
                transaction_date,
                summary,
                institution_id: r.required("AO", ao)?,
                patron_id: r.required("AA", aa)?,
                terminal_password: ac,
                patron_password: ad,
            })
        }
        [b'6', b'4'] => {
            r.message = "64";
            let patron_status = PatronStatus(r.flag_array::<14>("patron status")?);
            let language = r.number("language", 3)?;
            let transaction_date = r.date_time("transaction date")?;
            let mut counts = [None; 6];
            for c in &mut counts {
                let raw = r.fixed("count", 4)?;
                *c = if raw == b"    " {
                    None
                } else {
                    Some(parse_digits(raw).ok_or(r.bad("count"))?)
                };
            }
            let f = r.fields(&["AO", "AA", "AE", "BL", "CQ", "PB", "AQ"])?;
            let [ao, aa, ae, bl, cq, pb, aq] = f.scalars;
            Message::PatronInformationResponse(PatronInformationResponse {
                patron_status,
                language,
                transaction_date,
                counts,
                institution_id: ao.unwrap_or_default(),
                patron_id: r.required("AA", aa)?,
                personal_name: ae.unwrap_or_default(),
                valid_patron: bl.as_deref().map(|v| parse_yn("BL", v)).transpose()?,
                valid_patron_password: cq.as_deref().map(|v| parse_yn("CQ", v)).transpose()?,
                birth_date: pb.as_deref().map(parse_birth_date).transpose()?.flatten(),
                home_library: aq,
                screen_messages: f.screen_messages,
            })
        }
        [b'9', b'9'] => {
            r.message = "99";
            let status_code = match r.fixed("status code", 1)? {
                [c @ b'0'..=b'2'] => c - b'0',
                _ => return Err(r.bad("status code")),
            };
            let max_print_width = r.number("max print width", 3)?;
            let protocol_version = r.version()?;
            r.fields(&[])?;
            Message::ScStatus(ScStatus {
                status_code,
                max_print_width,
                protocol_version,
            })
        }
        [b'9', b'8'] => {
            r.message = "98";
            let flags = r.yn_array::<6>("status flags")?;
            let timeout_period = r.number("timeout period", 3)?;
            let retries_allowed = r.number("retries allowed", 3)?;
            let date_time_sync = r.date_time("date/time sync")?;
            let protocol_version = r.version()?;
            let f = r.fields(&["AO", "AM", "BX", "AN"])?;
            let [ao, am, bx, an] = f.scalars;
            let [
                online,
                checkin_ok,
                checkout_ok,
                renewal_policy,
                status_update_ok,
                offline_ok,
            ] = flags;
            Message::AcsStatus(AcsStatus {
                online,
                checkin_ok,
                checkout_ok,
                renewal_policy,
                status_update_ok,
                offline_ok,
                timeout_period,
                retries_allowed,
                date_time_sync,
                protocol_version,
                institution_id: ao.unwrap_or_default(),
                library_name: am,
                supported_messages: bx,
                terminal_location: an,
                screen_messages: f.screen_messages,
            })
        }
        [b'9', b'6'] => {
            r.message = "96";
            r.fields(&[])?;
            Message::RequestScResend
        }
        [b'9', b'7'] => {
            r.message = "97";
            r.fields(&[])?;
            Message::RequestAcsResend
        }
        id => return Err(CodecError::UnknownMessage(MessageId(id))),
    };
    Ok(Frame {
        message,
        error_detection,
    })
}

/// Splits off `[AY<digit>]AZ<4 hex>` at the end, verifying the checksum.
fn split_trailer(frame: &[u8]) -> Result<(&[u8], Option<ErrorDetection>), CodecError> {
    let Some((before_hex, hex)) = frame.split_last_chunk::<4>() else {
        return Ok((frame, None));
    };
    if !before_hex.ends_with(b"AZ") || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Ok((frame, None));
    }
    let expected = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u16::from_str_radix(h, 16).ok())
        .ok_or(CodecError::BadChecksum)?;
    if checksum(before_hex) != expected {
        return Err(CodecError::BadChecksum);
    }
    let body = &before_hex[..before_hex.len() - 2];
    let (payload, sequence) = match body.split_last_chunk::<3>() {
        Some((payload, [b'A', b'Y', d])) if d.is_ascii_digit() => (payload, Some(d - b'0')),
        _ => (body, None),
    };
    Ok((payload, Some(ErrorDetection { sequence })))
}

fn parse_digits(raw: &[u8]) -> Option<u16> {
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

fn parse_yn(field: &'static str, v: &str) -> Result<bool, CodecError> {
    match v {
        "Y" | "y" => Ok(true),
        "N" | "n" => Ok(false),
        _ => Err(CodecError::BadField { field }),
    }
}

/// `YYYYMMDD`; blank means unknown. Anything else is an error rather than "unknown", so a
/// broken export in the library system shows up instead of silently dropping ages.
fn parse_birth_date(v: &str) -> Result<Option<Date>, CodecError> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let bad = CodecError::BadField { field: "PB" };
    let b = v.as_bytes();
    if b.len() != 8 || !b.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let n = |r: std::ops::Range<usize>| v.get(r).and_then(|s| s.parse::<i16>().ok());
    let (Some(y), Some(m), Some(d)) = (n(0..4), n(4..6), n(6..8)) else {
        return Err(bad);
    };
    let m = i8::try_from(m).map_err(|_| bad.clone())?;
    let d = i8::try_from(d).map_err(|_| bad.clone())?;
    Date::new(y, m, d).map(Some).map_err(|_| bad)
}

struct Reader<'a> {
    rest: &'a [u8],
    encoding: Encoding,
    message: &'static str,
}

/// The variable fields of one message: the wanted scalars in the order asked, plus AF.
struct Fields<const N: usize> {
    scalars: [Option<String>; N],
    screen_messages: Vec<String>,
}

impl<'a> Reader<'a> {
    fn bad(&self, field: &'static str) -> CodecError {
        CodecError::BadFixedField {
            message: self.message,
            field,
        }
    }

    fn fixed(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Truncated {
                message: self.message,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn number(&mut self, field: &'static str, n: usize) -> Result<u16, CodecError> {
        let raw = self.fixed(field, n)?;
        parse_digits(raw).ok_or(self.bad(field))
    }

    fn date_time(&mut self, field: &'static str) -> Result<SipDateTime, CodecError> {
        let raw = self.fixed(field, 18)?;
        std::str::from_utf8(raw)
            .ok()
            .and_then(SipDateTime::parse)
            .ok_or(self.bad(field))
    }

    fn version(&mut self) -> Result<String, CodecError> {
        let raw = self.fixed("protocol version", 4)?;
        if !is_version(raw) {
            return Err(self.bad("protocol version"));
        }
        Ok(raw.iter().map(|&b| char::from(b)).collect())
    }

    fn flag_array<const N: usize>(&mut self, field: &'static str) -> Result<[bool; N], CodecError> {
        let raw = self.fixed(field, N)?;
        let mut out = [false; N];
        for (o, &b) in out.iter_mut().zip(raw) {
            *o = match b {
                b'Y' => true,
                b' ' | b'N' => false,
                _ => return Err(self.bad(field)),
            };
        }
        Ok(out)
    }

    fn yn_array<const N: usize>(&mut self, field: &'static str) -> Result<[bool; N], CodecError> {
        let raw = self.fixed(field, N)?;
        let mut out = [false; N];
        for (o, &b) in out.iter_mut().zip(raw) {
            *o = match b {
                b'Y' => true,
                b'N' => false,
                _ => return Err(self.bad(field)),
            };
        }
        Ok(out)
    }

    fn required(&self, field: &'static str, v: Option<String>) -> Result<String, CodecError> {
        v.ok_or(CodecError::MissingField {
            message: self.message,
            field,
        })
    }

    /// Reads `XX<value>|` fields to the end. Unknown ids are skipped without decoding their
    /// text. The last field may lack its `|`: some library systems leave it off.
    fn fields<const N: usize>(
        &mut self,
        wanted: &[&'static str; N],
    ) -> Result<Fields<N>, CodecError> {
        let mut out = Fields {
            scalars: std::array::from_fn(|_| None),
            screen_messages: Vec::new(),
        };
        while !self.rest.is_empty() {
            let [a, b, tail @ ..] = self.rest else {
                return Err(CodecError::BadFieldId);
            };
            if !a.is_ascii_alphanumeric() || !b.is_ascii_alphanumeric() {
                return Err(CodecError::BadFieldId);
            }
            let id = [*a, *b];
            let end = tail.iter().position(|&c| c == b'|');
            let value = &tail[..end.unwrap_or(tail.len())];
            self.rest = match end {
                Some(e) => &tail[e + 1..],
                None => &[],
            };
            if &id == b"AF" {
                out.screen_messages.push(self.encoding.text("AF", value)?);
                continue;
            }
            let Some(i) = wanted.iter().position(|w| w.as_bytes() == id) else {
                continue;
            };
            let field = wanted[i];
            if out.scalars[i].is_some() {
                return Err(CodecError::DuplicateField { field });
            }
            out.scalars[i] = Some(self.encoding.text(field, value)?);
        }
        Ok(out)
    }
}
