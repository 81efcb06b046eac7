//! A recording origin: a vendor's web server on `127.0.0.1:0` that keeps every byte it
//! receives, so a test can assert what never reached it (the patron's address, the
//! gateway's cookies, forged attributes). Each connection's request head is read first; a
//! few paths are answered with raw bytes no well-behaved server sends (a reset mid-body, a
//! malformed response), and everything else is served by hyper, one request a connection.
//!
//! Use from a test module with `use crate::support::origin;`.
//!
//! Paths: `/page.html` (links to itself, to the peer origin set by [`Origin::set_peer`] and
//! to a foreign site), `/page.gz.html`, `/page.deflate.html`, `/page.rawdeflate.html`,
//! `/page.br.html` (the same page encoded), `/redirect`, `/redirect-foreign`, `/cookie`
//! (Set-Cookie with Domain and Secure, a Refresh header), `/big` and `/big.html` (32 MiB in
//! 16 KiB chunks, produced only as fast as they are read), `/slow` (10 s before the head),
//! `/slow-body` (a head, a chunk, then nothing), `/upload` (counts body bytes as they
//! arrive), `/reset` (a connection reset mid-body), `/malformed`; anything else: 200 "ok".

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// A multi-threaded runtime with `workers` threads, for the origin and a test's client
/// (end-to-end tests run the gateway as its own process and drive it from here).
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub const BIG_CHUNK: usize = 16 * 1024;
pub const BIG_CHUNKS: usize = 2048;

/// One request as hyper parsed it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct State {
    /// Every byte read from every connection, in arrival order per read.
    raw: Mutex<Vec<u8>>,
    requests: Mutex<Vec<Recorded>>,
    /// How many raw-path requests came in (they are not in `requests`).
    raw_requests: AtomicUsize,
    /// The other origin of the same vendor, linked from the page.
    peer: Mutex<String>,
    own: String,
    /// Chunks of `/big` or `/big.html` produced so far.
    big_sent: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<State>,
    upload: watch::Receiver<usize>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let state = Arc::new(State {
            own: url.clone(),
            ..State::default()
        });
        let (upload_tx, upload) = watch::channel(0usize);
        let upload_tx = Arc::new(upload_tx);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, up) = (Arc::clone(&st), Arc::clone(&upload_tx));
                tokio::spawn(async move { connection(stream, st, up).await });
            }
        });
        Origin {
            addr,
            url,
            state,
            upload,
        }
    }

    pub fn set_peer(&self, url: &str) {
        *self.state.peer.lock().unwrap() = url.to_owned();
    }

    /// Everything received so far, as text (lossy), for "never reached the origin" checks.
    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.state.raw.lock().unwrap()).into_owned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The last request hyper parsed for this path.
    pub fn last(&self, path: &str) -> Recorded {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.target.split('?').next() == Some(path))
            .unwrap_or_else(|| panic!("no request for {path} reached the origin"))
    }

    /// Requests of any kind that reached it (parsed or raw).
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len() + self.state.raw_requests.load(Ordering::SeqCst)
    }

    pub fn big_chunks_sent(&self) -> usize {
        self.state.big_sent.load(Ordering::SeqCst)
    }

    /// Waits until `/upload` has received at least `n` body bytes.
    pub async fn uploaded_at_least(&self, n: usize) {
        let mut rx = self.upload.clone();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|got| *got >= n))
            .await
            .expect("upload bytes did not arrive in time")
            .unwrap();
    }
}

/// The page: links to the origin itself (absolute, protocol-relative, relative), to the
/// peer origin, and to a foreign site, in every attribute the proxy rewrites.
fn page(st: &State) -> String {
    let own = &st.own;
    let own_host = own.trim_start_matches("http://");
    let peer = st.peer.lock().unwrap().clone();
    format!(
        r#"<!doctype html><html><head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="30; url={own}/refreshed">
<link rel="stylesheet" href="{peer}/style.css">
</head><body>
<p>Nyheter på norsk: æøå</p>
<a id="self" href="{own}/article/1?x=1&amp;y=2">self</a>
<a id="proto" href="//{own_host}/proto">proto</a>
<a id="rel" href="/relative">rel</a>
<img id="cdn" src="{peer}/img.png" srcset="{peer}/a.png 1x, {own}/b.png 2x, https://foreign.example/c.png 3x">
<a id="foreign" href="https://foreign.example/page">foreign</a>
<form id="form" action="{own}/search"><button formaction="{own}/alt">go</button></form>
<video poster="{peer}/poster.jpg" src="{peer}/v.mp4"></video>
<object data="{own}/obj.pdf"></object>
<div style="background: url('{peer}/bg.png'); border-image: url(https://foreign.example/b.png)">x</div>
<script>var api = "{own}/api";</script>
</body></html>
"#
    )
}

async fn connection(stream: TcpStream, st: Arc<State>, upload: Arc<watch::Sender<usize>>) {
    let mut conn = Conn {
        stream,
        prefix: Vec::new(),
        pos: 0,
        state: Arc::clone(&st),
    };
    // Read the head ourselves, to pick raw or hyper; hyper then re-reads it from `prefix`.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    match path.as_str() {
        "/reset" => {
            st.raw_requests.fetch_add(1, Ordering::SeqCst);
            let mut s = conn.stream;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n",
                )
                .await;
            let _ = s.write_all(&[b'x'; 4096]).await;
            let _ = s.flush().await;
            // Linger 0: close sends RST, not FIN, as a crashed or cut-off server would.
            // (Deprecated because a non-zero linger blocks on drop; zero does not.)
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
        "/malformed" => {
            st.raw_requests.fetch_add(1, Ordering::SeqCst);
            let mut s = conn.stream;
            let _ = s
                .write_all(b"HTTP/1.1 2x0 NOPE\r\nContent-Length: banana\r\n\0\0\r\n\r\nwhat")
                .await;
            let _ = s.shutdown().await;
        }
        _ => {
            conn.prefix = head;
            let svc = hyper::service::service_fn(move |req| {
                let (st, up) = (Arc::clone(&st), Arc::clone(&upload));
                async move { Ok::<_, Infallible>(respond(req, st, up).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn respond(
    req: Request<Incoming>,
    st: Arc<State>,
    upload: Arc<watch::Sender<usize>>,
) -> Response<Body> {
    st.requests.lock().unwrap().push(Recorded {
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let own = st.own.clone();
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/page.html" => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header("etag", "\"v1\"")
            .body(full(page(&st)))
            .unwrap(),
        "/page.gz.html" | "/page.deflate.html" | "/page.rawdeflate.html" | "/page.br.html" => {
            let plain = page(&st).into_bytes();
            let (coding, bytes) = match path.as_str() {
                "/page.gz.html" => {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    e.write_all(&plain).unwrap();
                    ("gzip", e.finish().unwrap())
                }
                "/page.deflate.html" => {
                    let mut e =
                        flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                    e.write_all(&plain).unwrap();
                    ("deflate", e.finish().unwrap())
                }
                "/page.rawdeflate.html" => {
                    let mut e = flate2::write::DeflateEncoder::new(
                        Vec::new(),
                        flate2::Compression::default(),
                    );
                    e.write_all(&plain).unwrap();
                    ("deflate", e.finish().unwrap())
                }
                _ => {
                    let mut out = Vec::new();
                    {
                        let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                        e.write_all(&plain).unwrap();
                    }
                    ("br", out)
                }
            };
            // Sent in small pieces, so the decoder meets chunk boundaries mid-stream.
            let pieces: Vec<Result<Frame<Bytes>, Infallible>> = bytes
                .chunks(97)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("content-encoding", coding)
                .header("content-length", bytes.len())
                .header("etag", "\"v1-enc\"")
                .body(BodyExt::boxed(channel_body(pieces)))
                .unwrap()
        }
        "/redirect" => Response::builder()
            .status(302)
            .header("location", format!("{own}/landing?from=redirect"))
            .body(full(""))
            .unwrap(),
        "/redirect-foreign" => Response::builder()
            .status(302)
            .header("location", "https://foreign.example/elsewhere")
            .body(full(""))
            .unwrap(),
        "/cookie" => Response::builder()
            .header(
                "set-cookie",
                "vendor_sid=abc123; Domain=127.0.0.1; Path=/; Secure; HttpOnly; SameSite=None",
            )
            .header("set-cookie", "prefs=dark; Path=/; Max-Age=3600")
            .header("set-cookie", "portvakt_session=planted; Path=/")
            .header("refresh", format!("5; url={own}/after"))
            .header("content-location", format!("{own}/cookie"))
            .body(full("cookies"))
            .unwrap(),
        "/big" | "/big.html" => {
            let is_html = path == "/big.html";
            // A channel of one: the next chunk is produced only when the last was taken,
            // so `big_sent` shows how far the reader has pulled.
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            let st2 = Arc::clone(&st);
            tokio::spawn(async move {
                for i in 0..BIG_CHUNKS {
                    let chunk = if is_html {
                        let mut s = String::with_capacity(BIG_CHUNK);
                        while s.len() + 64 < BIG_CHUNK {
                            s.push_str(&format!("<a href=\"{own}/item/{i}\">item</a>\n"));
                        }
                        while s.len() < BIG_CHUNK {
                            s.push(' ');
                        }
                        Bytes::from(s)
                    } else {
                        Bytes::from(vec![b'a' + (i % 26) as u8; BIG_CHUNK])
                    };
                    if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                        return;
                    }
                    st2.big_sent.fetch_add(1, Ordering::SeqCst);
                }
            });
            let ct = if is_html {
                "text/html"
            } else {
                "application/octet-stream"
            };
            Response::builder()
                .header("content-type", ct)
                .body(BodyExt::boxed(ChannelBody(rx)))
                .unwrap()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Response::new(full("finally"))
        }
        "/slow-body" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first part"))))
                    .await;
                // Hold the sender open without sending: the body stalls.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(tx);
            });
            Response::builder()
                .header("content-type", "text/plain")
                .body(BodyExt::boxed(ChannelBody(rx)))
                .unwrap()
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                    upload.send_replace(total);
                }
            }
            Response::new(full(format!("received {total}")))
        }
        _ => Response::new(full("ok")),
    }
}

fn channel_body(items: Vec<Result<Frame<Bytes>, Infallible>>) -> ChannelBody {
    let (tx, rx) = mpsc::channel(items.len().max(1));
    for i in items {
        let _ = tx.try_send(i);
    }
    ChannelBody(rx)
}

/// A body fed frame by frame through a channel.
pub struct ChannelBody(pub mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

/// The connection as hyper sees it: first the head we already read, then the socket;
/// every byte read from the socket is recorded.
struct Conn {
    stream: TcpStream,
    prefix: Vec<u8>,
    pos: usize,
    state: Arc<State>,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = buf.filled()[before..].to_vec();
            self.state.raw.lock().unwrap().extend_from_slice(&new);
        }
        res
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
