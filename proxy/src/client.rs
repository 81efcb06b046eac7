//! The upstream client: pooled connections to the vendors' origins.
//!
//! HTTP/1.1 (over plain TCP or TLS) is spoken here, in the task of the request it serves:
//! the request head and body are written and the response head read by the same future
//! that handles the patron's request, and the response body is read from the socket by the
//! body the server polls ([`UpstreamBody`]). No connection task, no channels between tasks
//! and no wake-ups between them: a proxied page costs one write and one read upstream.
//! When a TLS origin chooses HTTP/2 by ALPN, hyper's HTTP/2 client takes the connection
//! (one per origin, shared by every request to it).
//!
//! What is read from an origin is held to HTTP/1.1's framing rules (RFC 9112 §6): a
//! response to `HEAD`, a 204 or a 304 has no body; `Transfer-Encoding` ending in `chunked`
//! wins over `Content-Length` (and the connection is then not reused); differing
//! `Content-Length`s or an invalid one are an error; otherwise the body runs until the
//! origin closes. Interim answers (100, 102, 103) are skipped; 101 is refused, as no
//! upgrade is ever asked for. Heads are bounded ([`MAX_HEAD`], [`MAX_HEADERS`]), so are
//! chunk-size lines and trailers.
//!
//! Connecting tries an origin's addresses in the resolver's order, each with a head start
//! of [`NEXT_ADDRESS_AFTER`] over the next ([`connect_any`]).
//!
//! A connection goes back to the pool only when its response body was read to the end,
//! nothing came after it, and neither side said `close`. Taking one from the pool checks, without a system call
//! unless the socket has signalled something, that the origin has not closed it; a request
//! without a body that still meets a connection closed under it (before any byte of an
//! answer came back) is sent once more on a new one, as hyper's pool does.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustc_hash::FxHashMap;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ProxyError;

/// The longest response head read (status line and headers).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in one response head.
pub(super) const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) and the most trailer bytes.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// How much is read from the socket at a time.
const READ_SIZE: usize = 16 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Stream = crate::net::ClientStream;

/// An HTTP/1.1 connection and what it has read beyond the last message.
struct Conn {
    stream: Stream,
    buf: BytesMut,
}

impl Conn {
    /// Whether the origin may have closed it or sent something unasked: checked on the
    /// socket's readiness first, which costs nothing when no event came (the usual case
    /// for a live idle connection), and only then with a look at the socket.
    fn still_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let tcp = self.stream.tcp();
        let mut cx = Context::from_waker(Waker::noop());
        if tcp.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        // Pending: nothing there after all (a stale readiness, now cleared). Any byte,
        // the end of the stream or an error: not a connection to send a request on.
        tcp.poll_peek(&mut cx, &mut probe).is_pending()
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_SIZE);
        self.stream.read_buf(&mut self.buf).await
    }
}

/// An idle HTTP/1.1 connection in the pool.
struct Idle {
    conn: Conn,
    since: Instant,
}

/// One origin's connections.
#[derive(Default)]
struct OriginPool {
    idle: Vec<Idle>,
    h2: Option<hyper::client::conn::http2::SendRequest<Body>>,
}

/// The pools, by `https` and the origin's authority. FxHash: the keys are the configured
/// origins, nothing a client chooses.
#[derive(Default)]
struct Pools {
    http: FxHashMap<Box<str>, OriginPool>,
    https: FxHashMap<Box<str>, OriginPool>,
}

impl Pools {
    fn of(&mut self, https: bool) -> &mut FxHashMap<Box<str>, OriginPool> {
        if https {
            &mut self.https
        } else {
            &mut self.http
        }
    }
}

struct Shared {
    pools: Mutex<Pools>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pools> {
        // Pushes and pops only: a panic elsewhere leaves the pools whole.
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkin(&self, https: bool, authority: &str, conn: Conn) {
        let now = Instant::now();
        let mut pools = self.lock();
        let map = pools.of(https);
        let pool = match map.get_mut(authority) {
            Some(p) => p,
            None => map.entry(authority.into()).or_default(),
        };
        // The oldest first: those past their time go now rather than at the next sweep.
        let expired = pool
            .idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.idle_timeout)
            .count();
        pool.idle.drain(..expired);
        if pool.idle.len() < self.max_idle {
            pool.idle.push(Idle { conn, since: now });
        }
    }

    /// The most recently used idle connection that is still open, or the HTTP/2 one.
    fn checkout(&self, https: bool, authority: &str) -> Option<Checkout> {
        let now = Instant::now();
        let mut pools = self.lock();
        let pool = pools.of(https).get_mut(authority)?;
        if let Some(h2) = &pool.h2 {
            if !h2.is_closed() {
                return Some(Checkout::H2(h2.clone()));
            }
            pool.h2 = None;
        }
        while let Some(idle) = pool.idle.pop() {
            if now.duration_since(idle.since) < self.idle_timeout && idle.conn.still_open() {
                return Some(Checkout::H1(idle.conn));
            }
        }
        None
    }

    /// Drops what has been idle too long or was closed by the origin, and empty pools.
    fn sweep(&self) {
        let now = Instant::now();
        let mut guard = self.lock();
        let pools = &mut *guard;
        for map in [&mut pools.http, &mut pools.https] {
            map.retain(|_, pool| {
                pool.idle.retain(|i| {
                    now.duration_since(i.since) < self.idle_timeout && i.conn.still_open()
                });
                if pool.h2.as_ref().is_some_and(|h| h.is_closed()) {
                    pool.h2 = None;
                }
                !pool.idle.is_empty() || pool.h2.is_some()
            });
        }
    }
}

enum Checkout {
    H1(Conn),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// The pooled client. Cheap to clone.
#[derive(Clone)]
pub(super) struct Client {
    shared: Arc<Shared>,
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `tls`: the client configuration; its ALPN list is set here (h2, then http/1.1).
    pub(super) fn new(
        mut tls: rustls::ClientConfig,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let shared = Arc::new(Shared {
            pools: Mutex::new(Pools::default()),
            idle_timeout,
            max_idle,
        });
        // Idle connections an origin closed are let go in the background too, so a pool
        // that is no longer used does not keep their sockets. Built outside a runtime
        // (some tests), there is no sweeper; checkouts and checkins still clean up.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak: Weak<Shared> = Arc::downgrade(&shared);
            let every = (idle_timeout / 2).max(Duration::from_secs(1));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    shared.sweep();
                }
            });
        }
        Self {
            shared,
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
        }
    }

    /// Sends `req` (an absolute `http`/`https` URI) and returns the response head with its
    /// body still to be read. Errors are the caller's to time-bound.
    pub(super) async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (parts, body) = req.into_parts();
        let https = parts.uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let Some(origin) = parts.uri.authority().cloned() else {
            return Err(ProxyError::Internal(
                "upstream URI without authority".into(),
            ));
        };
        let authority = origin.as_str();
        // A request without a body can be sent again when a pooled connection turns out to
        // have been closed under it.
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        let mut fresh_only = false;
        loop {
            let checkout = if fresh_only {
                None
            } else {
                self.shared.checkout(https, authority)
            };
            let (conn, reused) = match checkout {
                Some(Checkout::H2(sender)) => {
                    let body = body.take().unwrap_or_else(Body::empty);
                    return Box::pin(send_h2(sender, Request::from_parts(parts, body))).await;
                }
                Some(Checkout::H1(conn)) => (conn, true),
                // Boxed: connecting (DNS, TLS, an HTTP/2 handshake) is rare and its future
                // large, and every request's future would otherwise carry its size.
                None => match Box::pin(self.connect(https, &parts.uri, authority)).await? {
                    Checkout::H1(conn) => (conn, false),
                    Checkout::H2(sender) => {
                        let body = body.take().unwrap_or_else(Body::empty);
                        return Box::pin(send_h2(sender, Request::from_parts(parts, body))).await;
                    }
                },
            };
            let this_body = if replayable {
                Body::empty()
            } else {
                body.take().unwrap_or_else(Body::empty)
            };
            match exchange(conn, &parts, this_body, replayable).await {
                Ok((head, conn, framing, keep_alive)) => {
                    let mut body = H1Body {
                        conn: Some(conn),
                        framing,
                        keep_alive,
                        back: Some((self.shared.clone(), https, origin.clone())),
                    };
                    if let Framing::Length(0) = framing {
                        // Nothing to read (HEAD, 204, 304, an empty body): the connection
                        // is free now, whether or not the body is ever polled.
                        body.finished();
                    }
                    return Ok(head.map(|()| UpstreamBody::H1(body)));
                }
                Err(Failure::Stale(_)) if reused && replayable => {
                    fresh_only = true;
                }
                Err(Failure::Stale(e) | Failure::Upstream(e)) => {
                    return Err(ProxyError::Upstream(e));
                }
                Err(Failure::Client(e)) => return Err(ProxyError::ClientBody(e)),
            }
        }
    }

    async fn connect(
        &self,
        https: bool,
        uri: &http::Uri,
        authority: &str,
    ) -> Result<Checkout, ProxyError> {
        let host = uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
            connect_any(addrs).await
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ProxyError::Timeout)?
            .map_err(|e| ProxyError::Unreachable(e.into()))?;
        tcp.set_nodelay(true)
            .map_err(|e| ProxyError::Unreachable(e.into()))?;
        if !https {
            return Ok(Checkout::H1(Conn {
                stream: Stream::Plain(tcp),
                buf: BytesMut::new(),
            }));
        }
        let name =
            ServerName::try_from(host.to_owned()).map_err(|e| ProxyError::Unreachable(e.into()))?;
        let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ProxyError::Timeout)?
            .map_err(|e| ProxyError::Unreachable(e.into()))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Ok(Checkout::H1(Conn {
                stream: Stream::Tls(Box::new(tls)),
                buf: BytesMut::new(),
            }));
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ProxyError::Unreachable(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 connection to an origin ended");
            }
        });
        let mut pools = self.shared.lock();
        let map = pools.of(true);
        let pool = match map.get_mut(authority) {
            Some(p) => p,
            None => map.entry(authority.into()).or_default(),
        };
        pool.h2 = Some(sender.clone());
        Ok(Checkout::H2(sender))
    }
}

/// How long an attempt to connect to one of an origin's addresses runs alone before the
/// next address is tried beside it (RFC 8305's "connection attempt delay").
const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(250);

/// Connects to the first of `addrs` that answers, in their order (the resolver's, which
/// puts the preferred family first), the next one started when the one before failed or
/// has not answered within [`NEXT_ADDRESS_AFTER`], the earlier ones still running: an
/// address that swallows packets (a broken IPv6 route) costs a quarter of a second, not
/// the whole connect timeout.
async fn connect_any(addrs: Vec<SocketAddr>) -> io::Result<TcpStream> {
    let mut pending = addrs.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut last = None;
    loop {
        if running.is_empty() {
            let Some(addr) = pending.next() else {
                return Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the origin's name has no address")
                }));
            };
            running.spawn(TcpStream::connect(addr));
        }
        let next = tokio::time::sleep(NEXT_ADDRESS_AFTER);
        tokio::select! {
            done = running.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(e))) => {
                    last = Some(e);
                    // Failed: the next address at once.
                    if let Some(addr) = pending.next() {
                        running.spawn(TcpStream::connect(addr));
                    }
                }
                Some(Err(e)) => last = Some(io::Error::other(e)),
                None => {}
            },
            () = next, if pending.len() > 0 => {
                if let Some(addr) = pending.next() {
                    running.spawn(TcpStream::connect(addr));
                }
            }
        }
    }
}

async fn send_h2(
    mut sender: hyper::client::conn::http2::SendRequest<Body>,
    mut req: Request<Body>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    *req.version_mut() = Version::HTTP_2;
    poll_fn(|cx| sender.poll_ready(cx))
        .await
        .map_err(|e| ProxyError::Upstream(e.into()))?;
    let resp = sender.send_request(req).await.map_err(|e| {
        if e.is_user() {
            ProxyError::ClientBody(e.into())
        } else {
            ProxyError::Upstream(e.into())
        }
    })?;
    Ok(resp.map(UpstreamBody::H2))
}

/// Why an exchange failed.
enum Failure {
    /// The connection was closed or reset before any byte of an answer: on a pooled
    /// connection, most likely closed by the origin while idle.
    Stale(BoxError),
    Upstream(BoxError),
    /// The patron's request body failed.
    Client(BoxError),
}

fn upstream(msg: &'static str) -> Failure {
    Failure::Upstream(msg.into())
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy)]
enum Sending {
    None,
    Length(u64),
    Chunked,
}

/// Writes the request head (and body) and reads the response head.
async fn exchange(
    mut conn: Conn,
    parts: &http::request::Parts,
    mut body: Body,
    replayable: bool,
) -> Result<(Response<()>, Conn, Framing, bool), Failure> {
    let sending = if replayable {
        // Methods that carry a body say how long it is even when it is empty.
        if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            Sending::Length(0)
        } else {
            Sending::None
        }
    } else {
        match body.size_hint().exact() {
            Some(n) => Sending::Length(n),
            None => Sending::Chunked,
        }
    };
    let head = request_head(parts, sending);
    if let Err(e) = write_all(&mut conn.stream, &head).await {
        return Err(Failure::Stale(e.into()));
    }
    if !replayable && let Err(f) = send_body(&mut conn.stream, &mut body, sending).await {
        // An origin may answer (413, 401) and close before it has read an upload: its
        // answer, if one came, is what the patron should see.
        if matches!(f, Failure::Client(_)) {
            return Err(f);
        }
        return match read_head(&mut conn, &parts.method).await {
            Ok((head, framing, _)) => Ok((head, conn, framing, false)),
            Err(_) => Err(f),
        };
    }
    let (head, framing, keep_alive) = read_head(&mut conn, &parts.method).await?;
    Ok((head, conn, framing, keep_alive))
}

async fn write_all(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// The request head: target in origin form, `Host` from the URI's authority, the headers
/// as scrubbed, and framing of our own (any `Content-Length` or `Transfer-Encoding` the
/// patron sent is not copied: the body is framed as it is sent).
fn request_head(parts: &http::request::Parts, sending: Sending) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(parts.uri.authority().map_or("", |a| a.as_str()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        // A HeaderValue holds no CR, LF or NUL: nothing can be injected here.
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match sending {
        Sending::None => {}
        Sending::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Sending::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Streams the patron's body to the origin, frame by frame (backpressure: the next frame
/// is taken only when the last one is written).
async fn send_body(stream: &mut Stream, body: &mut Body, sending: Sending) -> Result<(), Failure> {
    let mut sent = 0u64;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(Failure::Client(e.into())),
        };
        let Ok(data) = frame.into_data() else {
            // Trailers are not forwarded.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        let io = match sending {
            Sending::Length(n) if sent > n => {
                return Err(Failure::Client(
                    "the request body is longer than announced".into(),
                ));
            }
            Sending::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                let mut chunk = Vec::with_capacity(size.len() + data.len() + 2);
                chunk.extend_from_slice(size.as_bytes());
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                stream.write_all(&chunk).await
            }
            _ => stream.write_all(&data).await,
        };
        io.map_err(|e| Failure::Upstream(e.into()))?;
    }
    match sending {
        Sending::Length(n) if sent != n => {
            return Err(Failure::Client(
                "the request body is shorter than announced".into(),
            ));
        }
        Sending::Chunked => stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| Failure::Upstream(e.into()))?,
        _ => {}
    }
    stream
        .flush()
        .await
        .map_err(|e| Failure::Upstream(e.into()))
}

/// Reads and parses the response head, skipping interim (1xx) answers.
async fn read_head(
    conn: &mut Conn,
    method: &Method,
) -> Result<(Response<()>, Framing, bool), Failure> {
    let mut got_any = false;
    loop {
        // Nothing to parse yet (the usual case for a head's first read): read first.
        let parsed = if conn.buf.is_empty() {
            None
        } else {
            parse_head(&conn.buf, method).map_err(upstream)?
        };
        let Some((len, head)) = parsed else {
            if conn.buf.len() >= MAX_HEAD {
                return Err(upstream("the origin's response head is too large"));
            }
            match conn.read_more().await {
                Ok(0) if !got_any => {
                    return Err(Failure::Stale("the origin closed the connection".into()));
                }
                Ok(0) => {
                    return Err(upstream(
                        "the origin closed the connection within the response head",
                    ));
                }
                Ok(_) => got_any = true,
                Err(e) if !got_any => return Err(Failure::Stale(e.into())),
                Err(e) => return Err(Failure::Upstream(e.into())),
            }
            continue;
        };
        let bytes = conn.buf.split_to(len).freeze();
        match head {
            Head::Interim => continue,
            Head::Final(mut builder) => return builder.finish(&bytes),
        }
    }
}

enum Head {
    Interim,
    Final(HeadBuilder),
}

/// Offsets of a parsed head's parts in its bytes, so the header map can share them.
struct HeadBuilder {
    version: Version,
    status: StatusCode,
    headers: Vec<(HeaderName, std::ops::Range<usize>)>,
    no_body: bool,
}

/// `Ok(None)`: the head is not complete yet.
fn parse_head(buf: &[u8], method: &Method) -> Result<Option<(usize, Head)>, &'static str> {
    // Uninitialised slots: filling 128 empty headers for every parse would cost more than
    // the parse.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("the origin sent too many headers"),
        Err(_) => return Err("the origin's response head is malformed"),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| "the origin sent an invalid status")?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("the origin switched protocols, which was never asked for");
    }
    if status.is_informational() {
        return Ok(Some((len, Head::Interim)));
    }
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let mut headers = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| "the origin sent an invalid header name")?;
        // Where the value lies in the head (httparse's slices point into `buf`); an empty
        // value is an empty range.
        let range = if h.value.is_empty() {
            0..0
        } else {
            let start = (h.value.as_ptr() as usize)
                .checked_sub(base)
                .filter(|s| s + h.value.len() <= len)
                .ok_or("the origin's response head is malformed")?;
            start..start + h.value.len()
        };
        headers.push((name, range));
    }
    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    Ok(Some((
        len,
        Head::Final(HeadBuilder {
            version,
            status,
            headers,
            no_body,
        }),
    )))
}

impl HeadBuilder {
    /// The response head over `bytes` (the head's own bytes), its framing and whether the
    /// connection may be reused after it.
    fn finish(&mut self, bytes: &Bytes) -> Result<(Response<()>, Framing, bool), Failure> {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        // Which framing headers came, noted on the way: absent ones cost no lookup.
        let (mut connection, mut te, mut cl) = (false, false, false);
        for (name, range) in self.headers.drain(..) {
            let value = HeaderValue::from_maybe_shared(bytes.slice(range))
                .map_err(|_| upstream("the origin sent an invalid header value"))?;
            connection |= name == header::CONNECTION;
            te |= name == header::TRANSFER_ENCODING;
            cl |= name == header::CONTENT_LENGTH;
            map.append(name, value);
        }
        let mut keep_alive = match (self.version, connection) {
            (Version::HTTP_10, false) => false,
            (_, false) => true,
            (Version::HTTP_10, true) => {
                tokens(&map, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"keep-alive"))
            }
            (_, true) => {
                !tokens(&map, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"close"))
            }
        };
        let framing = if self.no_body {
            Framing::Length(0)
        } else if te {
            // Transfer-Encoding wins over Content-Length, which is then wrong and goes; a
            // message framed both ways is suspect, so the connection is not used again.
            if cl {
                map.remove(header::CONTENT_LENGTH);
                keep_alive = false;
            }
            if tokens(&map, &header::TRANSFER_ENCODING)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            {
                Framing::Chunked(Chunk::Size)
            } else {
                keep_alive = false;
                Framing::Close
            }
        } else if cl {
            let mut length = None;
            for t in tokens(&map, &header::CONTENT_LENGTH) {
                let n = std::str::from_utf8(t)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| upstream("the origin sent an invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(upstream("the origin sent differing Content-Lengths"));
                }
                length = Some(n);
            }
            Framing::Length(length.unwrap_or(0))
        } else {
            keep_alive = false;
            Framing::Close
        };
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = map;
        Ok((resp, framing, keep_alive))
    }
}

/// The comma-separated, trimmed, non-empty items of a header over all its values.
fn tokens<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
    h.get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// How the rest of the response body is delimited.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the origin closes.
    Close,
}

/// Where a chunked body's reader stands.
#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes read so far.
    Trailers(usize),
    Done,
}

/// The origin's response body.
pub(super) enum UpstreamBody {
    H1(H1Body),
    H2(Incoming),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::H1(b) => f.debug_tuple("H1").field(&b.framing).finish(),
            Self::H2(_) => f.write_str("H2"),
        }
    }
}

pub(super) struct H1Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    /// Where the connection goes when the body has been read to its end.
    back: Option<(Arc<Shared>, bool, http::uri::Authority)>,
}

impl H1Body {
    fn finished(&mut self) {
        self.framing = Framing::Length(0);
        if let (true, Some(conn), Some((shared, https, authority))) =
            (self.keep_alive, self.conn.take(), self.back.take())
        {
            // Bytes past the body mean the origin is confused: not reused.
            if conn.buf.is_empty() {
                shared.checkin(https, authority.as_str(), conn);
            }
        }
        self.conn = None;
    }

    fn fail(&mut self, msg: &'static str) -> io::Error {
        self.conn = None;
        self.framing = Framing::Length(0);
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }

    /// The next piece of the body.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Length(0) | Framing::Chunked(Chunk::Done) => {
                    self.finished();
                    return Poll::Ready(None);
                }
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left))
                    if !conn.buf.is_empty() =>
                {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(n).freeze();
                    let rest = left - n as u64;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(rest),
                        _ if rest == 0 => Framing::Chunked(Chunk::DataEnd),
                        _ => Framing::Chunked(Chunk::Data(rest)),
                    };
                    if let Framing::Length(0) = self.framing {
                        self.finished();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::Chunked(state) if !conn.buf.is_empty() => {
                    match self.chunk_control(state) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                _ => {}
            }
            // More bytes are needed.
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.buf.reserve(READ_SIZE);
            let n = match poll_read_some(&mut conn.stream, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    self.framing = Framing::Length(0);
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if n == 0 {
                if let Framing::Close = self.framing {
                    self.conn = None;
                    self.framing = Framing::Length(0);
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(
                    self.fail("the origin closed the connection within the body")
                )));
            }
        }
    }

    /// Consumes a chunk-size line, the CRLF after data, or trailer lines from the buffer.
    /// `Ok(true)`: progress was made; `Ok(false)`: more bytes are needed.
    fn chunk_control(&mut self, state: Chunk) -> io::Result<bool> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        let buf = &conn.buf;
        match state {
            Chunk::Size => {
                let Some(nl) = memchr::memchr(b'\n', buf) else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(self.fail("a chunk-size line from the origin is too long"));
                    }
                    return Ok(false);
                };
                let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
                // Whitespace may come before `;` (RFC 9112 §7.1.1), not before the size.
                let size_part = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii_end();
                let size = (!size_part.is_empty() && size_part.len() <= 16)
                    .then(|| std::str::from_utf8(size_part).ok())
                    .flatten()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                let Some(size) = size else {
                    return Err(self.fail("the origin sent an invalid chunk size"));
                };
                conn.buf.advance(nl + 1);
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
                Ok(true)
            }
            Chunk::DataEnd => {
                let skip = match (buf.first(), buf.get(1)) {
                    (Some(b'\n'), _) => 1,
                    (Some(b'\r'), Some(b'\n')) => 2,
                    (Some(b'\r'), None) => return Ok(false),
                    _ => return Err(self.fail("a chunk from the origin is longer than its size")),
                };
                conn.buf.advance(skip);
                self.framing = Framing::Chunked(Chunk::Size);
                Ok(true)
            }
            Chunk::Trailers(seen) => {
                let Some(nl) = memchr::memchr(b'\n', buf) else {
                    if seen + buf.len() > MAX_TRAILERS {
                        return Err(self.fail("the origin's trailers are too large"));
                    }
                    return Ok(false);
                };
                let empty = buf[..nl]
                    .strip_suffix(b"\r")
                    .unwrap_or(&buf[..nl])
                    .is_empty();
                conn.buf.advance(nl + 1);
                if seen + nl + 1 > MAX_TRAILERS {
                    return Err(self.fail("the origin's trailers are too large"));
                }
                self.framing = Framing::Chunked(if empty {
                    Chunk::Done
                } else {
                    Chunk::Trailers(seen + nl + 1)
                });
                Ok(true)
            }
            Chunk::Data(_) | Chunk::Done => Ok(false),
        }
    }
}

/// One read into `buf`'s spare capacity (tokio's `read_buf`, polled once).
fn poll_read_some(
    stream: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    std::pin::pin!(stream.read_buf(buf)).poll(cx)
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Self::H1(b) => b.poll_data(cx).map(|o| o.map(|r| r.map(Frame::data))),
            Self::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(io::Error::other))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H1(b) => b.conn.is_none() || matches!(b.framing, Framing::Length(0)),
            Self::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::H1(b) => match b.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            Self::H2(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
