//! The response body on its way back: [`Relay`] passes each frame of the origin's body on
//! as it arrives, and for HTML first decodes it ([`Decoder`]: gzip, deflate, br) and feeds
//! it through the streaming [`Scanner`], which finds each start tag, sending whatever is
//! done so far. Nothing waits for the whole page, so memory per response stays bounded by
//! the chunk size and the scanner's limit for one cut-off tag.
//!
//! Rewritten: absolute and protocol-relative links to the service's own origins in `href`,
//! `src`, `action`, `formaction`, `poster`, `data`, `srcset`/`imagesrcset` (each candidate),
//! `url(…)` in `style` attributes, and `<meta http-equiv=refresh content>`. Not rewritten:
//! URLs inside `<script>` and `<style>` text, and ones spelt with character references.

use std::borrow::Cow;
use std::io::{self, Write};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::client::UpstreamBody;
use super::headers::{Coding, HtmlPlan, Plan};
use super::hosts::{HostMap, Links, ServiceLinks};
use super::scan::{Scanner, StartTag};
use super::{Forward, ProxyError};

#[cfg(test)]
pub(super) mod oracle;

/// The longest construct (in practice a tag with a huge `data:` URL) kept waiting for its
/// end across chunks: far above any real page's need, and a bound for a hostile one. Past
/// it the rest of the page passes through unrewritten.
const REWRITER_MEMORY: usize = 4 * 1024 * 1024;

/// The response body the browser gets.
pub(super) struct Relay {
    inner: UpstreamBody,
    html: Option<Box<HtmlStream>>,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
    /// A failure held back for one poll: see [`Relay::poll_frame`].
    failed: Option<ProxyError>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("rewriting", &self.html.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub(super) fn new(inner: UpstreamBody, plan: Plan, f: &Forward<'_>) -> Self {
        let html = plan
            .html
            .map(|p| Box::new(HtmlStream::new(&p, f.hosts.links_of(f.service))));
        Self {
            inner,
            html,
            idle: f.timeouts.body_idle,
            timer: None,
            done: false,
            failed: None,
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    if let Some(idle) = this.idle {
                        let timer = this
                            .timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                        if timer.as_mut().poll(cx).is_ready() {
                            this.done = true;
                            return Poll::Ready(Some(Err(ProxyError::Timeout)));
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(idle), Some(timer)) = (this.idle, this.timer.as_mut()) {
                        timer.as_mut().reset(Instant::now() + idle);
                    }
                    let Some(html) = this.html.as_mut() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    // Trailers of the encoded body say nothing true about the rewritten one.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match html.push(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ProxyError::UpstreamBody(e))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let Some(html) = this.html.as_mut() else {
                        return Poll::Ready(None);
                    };
                    return match html.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
            }
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = ProxyError;

    /// The next piece of the body. A failure (the origin's body breaking off, a stall, a
    /// body that does not decode) is reported one poll late: the server writing the body
    /// on flushes what it has when the body is pending but drops it unsent when the body
    /// fails, so what came just before a failure (even the response head) would never
    /// reach the browser.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match this.poll_next(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && (self.done || (self.html.is_none() && self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        match self.html {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// Decoding and rewriting of one HTML body.
pub(super) struct HtmlStream {
    decoder: Decoder,
    scanner: Scanner,
    /// The service's origins; `None` (a service without any) leaves the page as it is.
    links: Option<ServiceLinks>,
    /// `false` for a page in an encoding that does not spell markup in ASCII (UTF-16):
    /// it passes through as it is.
    rewrite: bool,
    warned: bool,
    /// The changes to the tag being rewritten, kept between tags so that rewriting
    /// allocates only while a page's largest tag is new.
    changes: Changes,
}

/// Which attributes of a tag get which new values (`values[range]`).
#[derive(Default)]
struct Changes {
    at: Vec<(usize, Range<usize>)>,
    values: Vec<u8>,
}

impl Changes {
    /// Room for a usual tag's changes, made at the page's first change (a page that
    /// changes nothing allocates nothing), so that the buffers do not grow step by step.
    fn make_room(&mut self) {
        if self.values.capacity() == 0 {
            self.values.reserve(256);
            self.at.reserve(4);
        }
    }

    fn push(&mut self, attr: usize, value: &[u8]) {
        self.make_room();
        let start = self.values.len();
        self.values.extend_from_slice(value);
        self.at.push((attr, start..self.values.len()));
    }

    fn of(&self, attr: usize) -> Option<&[u8]> {
        self.at
            .iter()
            .find(|(a, _)| *a == attr)
            .map(|(_, r)| &self.values[r.clone()])
    }
}

impl HtmlStream {
    pub(super) fn new(plan: &HtmlPlan, links: Option<ServiceLinks>) -> Self {
        Self {
            decoder: Decoder::new(plan.coding),
            scanner: Scanner::new(REWRITER_MEMORY),
            links,
            rewrite: plan.charset.is_none_or(|e| e.is_ascii_compatible()),
            warned: false,
            changes: Changes::default(),
        }
    }

    pub(super) fn push(&mut self, data: &[u8]) -> Result<Bytes, ProxyError> {
        let decoded = self.decoder.decode(data).map_err(ProxyError::Decode)?;
        // Room for the page and a little growth, so the output does not grow step by step.
        let mut out = Vec::with_capacity(decoded.len() + decoded.len() / 8);
        self.rewrite(&decoded, &mut out);
        Ok(Bytes::from(out))
    }

    pub(super) fn finish(&mut self) -> Result<Bytes, ProxyError> {
        let rest = self.decoder.finish().map_err(ProxyError::Decode)?;
        let mut out = Vec::with_capacity(rest.len());
        self.rewrite(&rest, &mut out);
        self.scanner.finish(&mut out);
        Ok(Bytes::from(out))
    }

    fn rewrite(&mut self, decoded: &[u8], out: &mut Vec<u8>) {
        if !self.rewrite {
            out.extend_from_slice(decoded);
            return;
        }
        let Some(links) = self.links.as_ref().map(ServiceLinks::links) else {
            out.extend_from_slice(decoded);
            return;
        };
        let changes = &mut self.changes;
        self.scanner.push(decoded, out, &mut |tag, to| {
            rewrite_tag(links, tag, to, changes)
        });
        if self.scanner.gave_up() && !self.warned {
            self.warned = true;
            tracing::warn!("HTML rewriter memory limit reached; rest of page unrewritten");
        }
    }
}

/// A whole body through [`HtmlStream`], chunk by chunk: for tests and the benchmark.
pub(super) fn rewrite_body(
    plan: &HtmlPlan,
    hosts: &Arc<HostMap>,
    service: &str,
    chunks: &[&[u8]],
) -> Result<Vec<u8>, ProxyError> {
    let mut stream = HtmlStream::new(plan, hosts.links_of(service));
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&stream.push(c)?);
    }
    out.extend_from_slice(&stream.finish()?);
    Ok(out)
}

/// What is done with an attribute's value, by its (lowercase) name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One URL: `href`, `src`, `action`, `formaction`, `poster`, `data`.
    Link,
    /// Candidates, each with a URL: `srcset`, `imagesrcset`.
    Srcset,
    /// `url(…)` in CSS: `style`.
    Css,
    /// `<meta http-equiv=refresh content=…>`, both attributes.
    HttpEquiv,
    Content,
}

/// The attributes the rewriter reads, with a bit each so that a repeated attribute is
/// seen once: HTML keeps the first of two same-named attributes.
const ATTRIBUTES: &[(&str, Kind)] = &[
    ("href", Kind::Link),
    ("src", Kind::Link),
    ("action", Kind::Link),
    ("formaction", Kind::Link),
    ("poster", Kind::Link),
    ("data", Kind::Link),
    ("srcset", Kind::Srcset),
    ("imagesrcset", Kind::Srcset),
    ("style", Kind::Css),
    ("http-equiv", Kind::HttpEquiv),
    ("content", Kind::Content),
];

/// An attribute value as text: as it is when it is UTF-8 (the usual case), else each
/// byte as the character of that number. Rewriting keeps everything after the
/// authority as it was, and [`from_text`] turns such text back into the same bytes, so a
/// page in windows-1252 or ISO-8859-1 keeps its bytes.
fn as_text(v: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(v) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(v.iter().map(|&b| char::from(b)).collect()),
    }
}

/// Whether a URL attribute's value, leading whitespace aside, begins like `//…` or
/// `http…` (any case): the only links [`Links::rewrite`] can change.
fn may_be_absolute(v: &[u8]) -> bool {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0x0B);
    match start.map(|i| &v[i..]) {
        Some([b'/', b'/', ..]) => true,
        // Non-ASCII: `Links::rewrite` decides (it trims Unicode whitespace too).
        Some([b, ..]) if *b >= 0x80 => true,
        Some([h, t, ..]) => h.eq_ignore_ascii_case(&b'h') && t.eq_ignore_ascii_case(&b't'),
        _ => false,
    }
}

fn from_text(original: &[u8], new: String) -> Option<Vec<u8>> {
    if std::str::from_utf8(original).is_ok() {
        return Some(new.into_bytes());
    }
    new.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

/// Rewrites one start tag's links; writes the new tag to `out` and says so, or leaves it.
/// A changed tag is written as lol_html writes one: `<name`, each attribute as it was or,
/// when changed, as `name="value"` (a `"` in it as `&quot;`), then `>` or ` />`.
fn rewrite_tag(
    links: Links<'_>,
    tag: &StartTag<'_>,
    out: &mut Vec<u8>,
    changes: &mut Changes,
) -> bool {
    if tag.attrs.is_empty() {
        return false;
    }
    let mut seen = 0u16;
    let mut refresh = false;
    let mut content = None;
    changes.at.clear();
    changes.values.clear();
    for (n, attr) in tag.attrs.iter().enumerate() {
        let name = tag.bytes(&attr.name);
        // Most attributes (`class`, `id`, `rel`, …) are none of ours: a length outside
        // 3..=11 or an unknown first letter says so at once.
        if !matches!(name.len(), 3..=11)
            || !matches!(
                name[0].to_ascii_lowercase(),
                b'h' | b's' | b'a' | b'f' | b'p' | b'd' | b'i' | b'c'
            )
        {
            continue;
        }
        let Some(i) = ATTRIBUTES
            .iter()
            .position(|(a, _)| a.len() == name.len() && a.as_bytes().eq_ignore_ascii_case(name))
        else {
            continue;
        };
        if seen & (1 << i) != 0 {
            continue;
        }
        seen |= 1 << i;
        let Some(value) = attr.value.as_ref().map(|v| tag.bytes(v)) else {
            continue;
        };
        let kind = ATTRIBUTES[i].1;
        let new = match kind {
            // Only an absolute or protocol-relative link can name an origin: most values
            // are told apart by their first bytes, without a look at the rest.
            Kind::Link if !may_be_absolute(value) => None,
            Kind::Link => match links.rewrite_prefix(value) {
                // The usual case by bytes, with no detour through text and back.
                Some((len, new)) => {
                    changes.make_room();
                    let start = changes.values.len();
                    changes.values.extend_from_slice(new.as_bytes());
                    changes.values.extend_from_slice(&value[len..]);
                    changes.at.push((n, start..changes.values.len()));
                    continue;
                }
                None => links.rewrite(&as_text(value)),
            },
            Kind::Srcset => srcset_links(links, &as_text(value)),
            Kind::Css => css_links(links, &as_text(value)),
            Kind::HttpEquiv => {
                refresh = as_text(value).trim().eq_ignore_ascii_case("refresh");
                None
            }
            Kind::Content => {
                content = Some((n, value));
                None
            }
        };
        if let Some(new) = new.and_then(|new| from_text(value, new)) {
            changes.push(n, &new);
        }
    }
    if refresh
        && tag.bytes(&tag.name).eq_ignore_ascii_case(b"meta")
        && let Some((n, value)) = content
        && let Some(new) = super::headers::refresh_links(links, &as_text(value))
            .and_then(|new| from_text(value, new))
    {
        changes.push(n, &new);
    }
    if changes.at.is_empty() {
        return false;
    }
    // At most the tag as it was, the new values and their quotes.
    let source = tag
        .attrs
        .last()
        .map_or(tag.name.end, |a| a.end)
        .saturating_sub(tag.name.start);
    out.reserve(source + changes.values.len() + 8 * changes.at.len() + 8);
    out.push(b'<');
    out.extend_from_slice(tag.bytes(&tag.name));
    for (n, attr) in tag.attrs.iter().enumerate() {
        out.push(b' ');
        match changes.of(n) {
            Some(new) => {
                out.extend_from_slice(tag.bytes(&attr.name));
                out.extend_from_slice(b"=\"");
                let mut rest = new;
                while let Some(q) = crate::text::find_byte(b'"', rest) {
                    out.extend_from_slice(&rest[..q]);
                    out.extend_from_slice(b"&quot;");
                    rest = &rest[q + 1..];
                }
                out.extend_from_slice(rest);
                out.push(b'"');
            }
            None => out.extend_from_slice(&tag.buf[attr.name.start..attr.end]),
        }
    }
    out.extend_from_slice(if tag.self_closing { b" />" } else { b">" });
    true
}

/// Each candidate URL of a `srcset` (`url [descriptor], url [descriptor]`). Following the
/// HTML parsing rules: a URL runs to whitespace, and trailing commas end the candidate.
#[cfg(test)]
pub(super) fn rewrite_srcset(hosts: &HostMap, service: &str, value: &str) -> Option<String> {
    srcset_links(hosts.links(service)?, value)
}

fn srcset_links(links: Links<'_>, value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len() + 32);
    let mut changed = false;
    let mut rest = value;
    loop {
        let skip = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',')
                .len();
        out.push_str(&rest[..skip]);
        rest = &rest[skip..];
        if rest.is_empty() {
            break;
        }
        let url_end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let raw_url = &rest[..url_end];
        let url = raw_url.trim_end_matches(',');
        match links.rewrite(url) {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(url),
        }
        out.push_str(&raw_url[url.len()..]);
        rest = &rest[url_end..];
        if url.len() == raw_url.len() {
            // Descriptors run to the next comma.
            let desc_end = rest.find(',').unwrap_or(rest.len());
            out.push_str(&rest[..desc_end]);
            rest = &rest[desc_end..];
        }
    }
    changed.then_some(out)
}

/// `url(…)` in CSS text (a `style` attribute), quoted or not.
#[cfg(test)]
pub(super) fn rewrite_css_urls(hosts: &HostMap, service: &str, css: &str) -> Option<String> {
    css_links(hosts.links(service)?, css)
}

fn css_links(links: Links<'_>, css: &str) -> Option<String> {
    let mut out = String::with_capacity(css.len() + 32);
    let mut changed = false;
    let mut rest = css;
    while let Some(at) = find_ci(rest, "url(") {
        let open = at + 4;
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        let inner_ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..inner_ws]);
        rest = &rest[inner_ws..];
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'');
        let (url, after) = match quote {
            Some(q) => {
                out.push(q);
                let body = &rest[1..];
                let end = body.find(q).unwrap_or(body.len());
                (&body[..end], &body[end..])
            }
            None => {
                let end = rest.find(')').unwrap_or(rest.len());
                let url = rest[..end].trim_end();
                (url, &rest[url.len()..])
            }
        };
        match links.rewrite(url) {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    changed.then_some(out)
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Push-style decoders: compressed bytes in, whatever they decode to out, chunk by chunk.
enum Decoder {
    Identity,
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    /// `deflate` should be zlib-wrapped, but some servers send raw deflate: the first two
    /// bytes tell which, so they are held until both have arrived.
    DeflateSniff(Vec<u8>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
}

/// Buffer size of the brotli writer; output is drained after every chunk anyway.
const BROTLI_BUFFER: usize = 16 * 1024;

impl Decoder {
    fn new(coding: Coding) -> Self {
        match coding {
            Coding::Identity => Self::Identity,
            Coding::Gzip => Self::Gzip(flate2::write::MultiGzDecoder::new(Vec::new())),
            Coding::Deflate => Self::DeflateSniff(Vec::new()),
            Coding::Brotli => Self::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
            ))),
        }
    }

    /// An identity body is passed through as it is, not copied.
    fn decode<'a>(&mut self, data: &'a [u8]) -> io::Result<Cow<'a, [u8]>> {
        let owned = match self {
            Self::Identity => return Ok(Cow::Borrowed(data)),
            Self::Gzip(d) => {
                d.write_all(data)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
            Self::Zlib(d) => {
                d.write_all(data)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
            Self::RawDeflate(d) => {
                d.write_all(data)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
            Self::DeflateSniff(held) => {
                held.extend_from_slice(data);
                if held.len() < 2 {
                    return Ok(Cow::Borrowed(&[]));
                }
                let held = std::mem::take(held);
                // RFC 1950: CM = 8 in the low nibble, and the header is a multiple of 31.
                let zlib =
                    held[0] & 0x0f == 8 && (u16::from(held[0]) << 8 | u16::from(held[1])) % 31 == 0;
                *self = if zlib {
                    Self::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
                } else {
                    Self::RawDeflate(flate2::write::DeflateDecoder::new(Vec::new()))
                };
                self.decode(&held)?.into_owned()
            }
            Self::Brotli(d) => {
                d.write_all(data)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
        };
        Ok(Cow::Owned(owned))
    }

    fn finish(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Self::Identity => Ok(Vec::new()),
            Self::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Zlib(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::RawDeflate(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::DeflateSniff(held) if held.is_empty() => Ok(Vec::new()),
            Self::DeflateSniff(_) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "deflate body of one byte",
            )),
            Self::Brotli(d) => {
                d.close()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}
