//! The response body on its way back: [`Relay`] passes each frame of the origin's body on
//! as it arrives, and for HTML first decodes it ([`Decoder`]: gzip, deflate, br) and feeds
//! it through a streaming lol_html rewriter, sending whatever that has emitted so far.
//! Nothing waits for the whole page, so memory per response stays bounded by the chunk
//! size and lol_html's own limit.
//!
//! Rewritten: absolute and protocol-relative links to the service's own origins in `href`,
//! `src`, `action`, `formaction`, `poster`, `data`, `srcset`/`imagesrcset` (each candidate),
//! `url(…)` in `style` attributes, and `<meta http-equiv=refresh content>`. Not rewritten:
//! URLs inside `<script>` and `<style>` text, and ones spelt with character references.

use std::borrow::Cow;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use lol_html::errors::RewritingError;
use lol_html::send::{Element, ElementContentHandlers, HtmlRewriter, Settings};
use lol_html::{AsciiCompatibleEncoding, HandlerResult, MemorySettings, OutputSink, Selector};
use tokio::time::{Instant, Sleep};

use super::headers::{Coding, HtmlPlan, Plan};
use super::hosts::HostMap;
use super::{Forward, ProxyError};

/// lol_html's working memory for one page: it buffers only an unfinished tag or an
/// attribute value, so this is far above any real page's need, and bounds a hostile one.
const REWRITER_MEMORY: usize = 4 * 1024 * 1024;

/// The response body the browser gets.
pub(super) struct Relay {
    inner: Incoming,
    html: Option<Box<HtmlStream>>,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
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
    pub(super) fn new(inner: Incoming, plan: Plan, f: &Forward<'_>) -> Self {
        let html = plan.html.map(|p| {
            Box::new(HtmlStream::new(
                &p,
                Arc::clone(f.hosts),
                f.service.to_owned(),
            ))
        });
        Self {
            inner,
            html,
            idle: f.timeouts.body_idle,
            timer: None,
            done: false,
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
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

    fn is_end_stream(&self) -> bool {
        self.done || (self.html.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.html {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// Where lol_html writes: a buffer the relay empties after every chunk.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl OutputSink for Sink {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(chunk);
    }
}

/// Decoding and rewriting of one HTML body.
pub(super) struct HtmlStream {
    decoder: Decoder,
    /// `None` once lol_html gave up (its memory limit): the rest passes through as decoded.
    rewriter: Option<HtmlRewriter<'static, Sink>>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl HtmlStream {
    pub(super) fn new(plan: &HtmlPlan, hosts: Arc<HostMap>, service: String) -> Self {
        Self::with_settings(plan, settings(plan, &hosts, &service))
    }

    fn with_settings(plan: &HtmlPlan, settings: Settings<'static, 'static>) -> Self {
        let out = Arc::new(Mutex::new(Vec::new()));
        let rewriter = HtmlRewriter::new(settings, Sink(Arc::clone(&out)));
        Self {
            decoder: Decoder::new(plan.coding),
            rewriter: Some(rewriter),
            out,
        }
    }

    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(
            &mut *self.out.lock().unwrap_or_else(PoisonError::into_inner),
        ))
    }

    pub(super) fn push(&mut self, data: &[u8]) -> Result<Bytes, ProxyError> {
        let decoded = self.decoder.decode(data).map_err(ProxyError::Decode)?;
        // Room for the page and a little growth, so the sink does not grow step by step.
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(decoded.len() + decoded.len() / 8);
        self.rewrite(&decoded)?;
        Ok(self.take())
    }

    pub(super) fn finish(&mut self) -> Result<Bytes, ProxyError> {
        let rest = self.decoder.finish().map_err(ProxyError::Decode)?;
        self.rewrite(&rest)?;
        if let Some(r) = self.rewriter.take() {
            r.end().map_err(|e| ProxyError::Rewrite(e.to_string()))?;
        }
        Ok(self.take())
    }

    fn rewrite(&mut self, decoded: &[u8]) -> Result<(), ProxyError> {
        if decoded.is_empty() {
            return Ok(());
        }
        let Some(r) = self.rewriter.as_mut() else {
            self.out
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(decoded);
            return Ok(());
        };
        match r.write(decoded) {
            Ok(()) => Ok(()),
            // With graceful bail-out the sink already has every byte so far, unchanged
            // past the point of failure; the rest of the page goes through as it is.
            Err(RewritingError::MemoryLimitExceeded(_)) => {
                tracing::warn!("HTML rewriter memory limit reached; rest of page unrewritten");
                self.rewriter = None;
                Ok(())
            }
            Err(e) => {
                self.rewriter = None;
                Err(ProxyError::Rewrite(e.to_string()))
            }
        }
    }
}

fn settings(plan: &HtmlPlan, hosts: &Arc<HostMap>, service: &str) -> Settings<'static, 'static> {
    let s = base_settings(plan);
    let Some(all) = all_elements() else {
        tracing::error!("the rewriter's selector does not parse");
        return s;
    };
    let (hosts, service) = (Arc::clone(hosts), service.to_owned());
    s.append_element_content_handler((
        Cow::Borrowed(all),
        ElementContentHandlers::default()
            .element(move |el: &mut Element<'_, '_>| rewrite_element(&hosts, &service, el)),
    ))
}

fn base_settings(plan: &HtmlPlan) -> Settings<'static, 'static> {
    let s = Settings::new_send()
        // Non-strict: on markup lol_html finds ambiguous it carries on rather than failing
        // the page; at worst a link there stays unrewritten.
        .with_strict(false)
        .with_memory_settings(
            MemorySettings::new()
                .with_max_allowed_memory_usage(REWRITER_MEMORY)
                .with_graceful_bail_out_on_memory_limit_exceeded(true),
        );
    match plan.charset.and_then(AsciiCompatibleEncoding::new) {
        Some(e) => s.with_encoding(e),
        None => s.with_adjust_charset_on_meta_tag(true),
    }
}

/// A whole body through [`HtmlStream`], chunk by chunk: for tests and the benchmark.
pub(super) fn rewrite_body(
    plan: &HtmlPlan,
    hosts: &Arc<HostMap>,
    service: &str,
    chunks: &[&[u8]],
) -> Result<Vec<u8>, ProxyError> {
    collect(
        HtmlStream::new(plan, Arc::clone(hosts), service.to_owned()),
        chunks,
    )
}

fn collect(mut stream: HtmlStream, chunks: &[&[u8]]) -> Result<Vec<u8>, ProxyError> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&stream.push(c)?);
    }
    out.extend_from_slice(&stream.finish()?);
    Ok(out)
}

/// The rewriter as it was before one handler for all elements (a `[attr]` selector and
/// handler per attribute, `meta[http-equiv][content]` for refresh, selectors parsed per
/// page): kept only as the reference the tests compare the single handler with, on pages
/// where the two could part (foreign content, templates, odd spellings). Not compiled into
/// the gateway.
#[cfg(test)]
pub(super) fn rewrite_body_per_selector(
    plan: &HtmlPlan,
    hosts: &Arc<HostMap>,
    service: &str,
    chunks: &[&[u8]],
) -> Result<Vec<u8>, ProxyError> {
    use std::sync::OnceLock;
    type Rewrite = fn(&HostMap, &str, &str) -> Option<String>;
    // Parsed once per process, as they were.
    static SELECTORS: OnceLock<Option<Vec<(&'static str, &'static Selector)>>> = OnceLock::new();
    let selectors = SELECTORS
        .get_or_init(|| {
            [
                "href",
                "src",
                "action",
                "formaction",
                "poster",
                "data",
                "srcset",
                "imagesrcset",
                "style",
            ]
            .into_iter()
            .map(|a| {
                let s: Selector = format!("[{a}]").parse().ok()?;
                Some((a, &*Box::leak(Box::new(s))))
            })
            .chain(std::iter::once(
                "meta[http-equiv][content]"
                    .parse::<Selector>()
                    .ok()
                    .map(|s| ("meta", &*Box::leak(Box::new(s)))),
            ))
            .collect()
        })
        .as_ref()
        .ok_or_else(|| ProxyError::Rewrite("a reference selector does not parse".into()))?;
    let mut s = base_settings(plan);
    for &(attr, selector) in selectors {
        let (hosts, service) = (Arc::clone(hosts), service.to_owned());
        let rewrite: Rewrite = match attr {
            "srcset" | "imagesrcset" => rewrite_srcset,
            "style" => rewrite_css_urls,
            _ => |h, svc, v| h.rewrite_link(svc, v),
        };
        let handler = move |el: &mut Element<'_, '_>| {
            if attr == "meta" {
                let refresh = el
                    .get_attribute("http-equiv")
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("refresh"));
                if let Some(new) = el
                    .get_attribute("content")
                    .filter(|_| refresh)
                    .and_then(|v| super::headers::rewrite_refresh(&hosts, &service, &v))
                {
                    el.set_attribute("content", &new)?;
                }
            } else if let Some(new) = el
                .get_attribute(attr)
                .and_then(|v| rewrite(&hosts, &service, &v))
            {
                el.set_attribute(attr, &new)?;
            }
            Ok(())
        };
        s = s.append_element_content_handler((
            Cow::Borrowed(selector),
            ElementContentHandlers::default().element(handler),
        ));
    }
    collect(HtmlStream::with_settings(plan, s), chunks)
}

/// `*`, parsed once per process. One handler for every element, looking at its attributes
/// by name, costs far less than one `[attr]` selector per rewritten attribute: lol_html
/// matches each selector on every start tag and calls each matching handler separately.
/// Leaked once on purpose to give lol_html the `'static` borrow it wants.
fn all_elements() -> Option<&'static Selector> {
    use std::sync::OnceLock;
    static ALL: OnceLock<Option<&'static Selector>> = OnceLock::new();
    *ALL.get_or_init(|| {
        "*".parse::<Selector>()
            .ok()
            .map(|s| &*Box::leak(Box::new(s)))
    })
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
/// seen once: HTML keeps the first of two same-named attributes, as `set_attribute` does.
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

fn rewrite_element(hosts: &HostMap, service: &str, el: &mut Element<'_, '_>) -> HandlerResult {
    let attributes = el.attributes();
    if attributes.is_empty() {
        return Ok(());
    }
    let mut seen = 0u16;
    let mut refresh = false;
    let mut content = None;
    // Rarely more than one per element; a Vec allocates only when something changes.
    let mut changes: Vec<(&'static str, String)> = Vec::new();
    for attr in attributes {
        let name = attr.name();
        let Some(i) = ATTRIBUTES.iter().position(|(n, _)| *n == name) else {
            continue;
        };
        if seen & (1 << i) != 0 {
            continue;
        }
        seen |= 1 << i;
        let (name, kind) = ATTRIBUTES[i];
        let value = attr.value();
        let new = match kind {
            Kind::Link => hosts.rewrite_link(service, &value),
            Kind::Srcset => rewrite_srcset(hosts, service, &value),
            Kind::Css => rewrite_css_urls(hosts, service, &value),
            Kind::HttpEquiv => {
                refresh = value.trim().eq_ignore_ascii_case("refresh");
                None
            }
            Kind::Content => {
                content = Some(value);
                None
            }
        };
        if let Some(new) = new {
            changes.push((name, new));
        }
    }
    if refresh
        && let Some(new) = content
            .and_then(|v| super::headers::rewrite_refresh(hosts, service, &v))
            .filter(|_| el.tag_name() == "meta")
    {
        changes.push(("content", new));
    }
    for (name, value) in changes {
        el.set_attribute(name, &value)?;
    }
    Ok(())
}

/// Each candidate URL of a `srcset` (`url [descriptor], url [descriptor]`). Following the
/// HTML parsing rules: a URL runs to whitespace, and trailing commas end the candidate.
pub(super) fn rewrite_srcset(hosts: &HostMap, service: &str, value: &str) -> Option<String> {
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
        match hosts.rewrite_link(service, url) {
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
pub(super) fn rewrite_css_urls(hosts: &HostMap, service: &str, css: &str) -> Option<String> {
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
        match hosts.rewrite_link(service, url) {
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
