//! The upstream client against a scripted origin: a TCP server that answers each request
//! it reads with the next prepared bytes, counting connections and keeping each request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Client, MAX_HEAD, MAX_HEADERS};
use crate::ProxyError;

/// What the origin does with the next request.
enum Answer {
    /// Writes these bytes and keeps the connection.
    Send(Vec<u8>),
    /// Writes these bytes and closes.
    SendClose(Vec<u8>),
    /// Writes these bytes, then closes after a pause (an idle keep-alive timeout).
    SendCloseLater(Vec<u8>),
    /// Closes without a word.
    Close,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: Mutex<Vec<String>>,
}

impl Seen {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn request(&self, i: usize) -> String {
        self.requests.lock().unwrap()[i].clone()
    }
}

async fn origin(answers: Vec<Answer>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(conn, Arc::clone(&s), Arc::clone(&answers)));
        }
    });
    (addr, seen)
}

async fn serve(mut conn: TcpStream, seen: Arc<Seen>, answers: Arc<Mutex<VecDeque<Answer>>>) {
    let mut buf = Vec::new();
    loop {
        // One request: its head, then a body by Content-Length or chunked to its end.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = head.contains("transfer-encoding: chunked");
        let end = loop {
            let body = &buf[head_end..];
            let done = match length {
                Some(n) => (body.len() >= n).then_some(head_end + n),
                None if chunked => body
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|i| head_end + i + 5),
                None => Some(head_end),
            };
            if let Some(end) = done {
                break end;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let request: Vec<u8> = buf.drain(..end).collect();
        seen.requests
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request).into_owned());
        let answer = answers.lock().unwrap().pop_front();
        match answer {
            Some(Answer::Send(b)) => {
                let _ = conn.write_all(&b).await;
            }
            Some(Answer::SendClose(b)) => {
                let _ = conn.write_all(&b).await;
                return;
            }
            Some(Answer::SendCloseLater(b)) => {
                let _ = conn.write_all(&b).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            Some(Answer::Close) | None => return,
        }
    }
}

fn client() -> Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Client::new(tls, Duration::from_secs(5), Duration::from_secs(90), 16)
}

fn req(method: Method, addr: SocketAddr, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("accept", "text/html")
        .body(body)
        .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Request<Body> {
    req(Method::GET, addr, path, Body::empty())
}

/// Status and whole body, or the body's error.
async fn fetch(
    c: &Client,
    r: Request<Body>,
) -> Result<(StatusCode, http::HeaderMap, Result<Bytes, String>), ProxyError> {
    let resp = c.send(r).await?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    Ok((parts.status, parts.headers, body))
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn one_connection_serves_request_after_request() {
    let (addr, seen) = origin(vec![Answer::Send(ok("first")), Answer::Send(ok("second"))]).await;
    let c = client();
    let (status, _, body) = fetch(&c, get(addr, "/a?x=1")).await.unwrap();
    assert_eq!(
        (status, body.unwrap()),
        (StatusCode::OK, Bytes::from("first"))
    );
    let (_, _, body) = fetch(&c, get(addr, "/b")).await.unwrap();
    assert_eq!(body.unwrap(), "second");
    assert_eq!(seen.connections(), 1);
    // Origin form, Host from the URI, the headers, and no body framing for a GET.
    let first = seen.request(0);
    assert!(
        first.starts_with("GET /a?x=1 HTTP/1.1\r\nhost: 127.0.0.1:"),
        "{first}"
    );
    assert!(first.contains("\r\naccept: text/html\r\n"), "{first}");
    assert!(!first.contains("content-length") && !first.contains("transfer-encoding"));
}

#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_end_where_they_say() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6 \r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (addr, seen) = origin(vec![
        Answer::Send(chunked.to_vec()),
        Answer::Send(ok("again")),
    ])
    .await;
    let c = client();
    let (_, headers, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "hello world");
    assert_eq!(headers["transfer-encoding"], "chunked");
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "again");
    assert_eq!(seen.connections(), 1);
}

#[tokio::test]
async fn a_body_without_length_runs_until_close_and_its_connection_is_not_reused() {
    let (addr, seen) = origin(vec![
        Answer::SendClose(
            b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nto the end".to_vec(),
        ),
        Answer::Send(ok("next")),
    ])
    .await;
    let c = client();
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "to the end");
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "next");
    assert_eq!(seen.connections(), 2);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_their_length_says() {
    let (addr, seen) = origin(vec![
        Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec()),
        Answer::Send(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        Answer::Send(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n".to_vec()),
        Answer::Send(ok("after")),
    ])
    .await;
    let c = client();
    let (status, headers, body) = fetch(&c, req(Method::HEAD, addr, "/", Body::empty()))
        .await
        .unwrap();
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::new()));
    assert_eq!(headers["content-length"], "100");
    let (status, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(
        (status, body.unwrap()),
        (StatusCode::NO_CONTENT, Bytes::new())
    );
    let (status, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(
        (status, body.unwrap()),
        (StatusCode::NOT_MODIFIED, Bytes::new())
    );
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "after");
    assert_eq!(seen.connections(), 1);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_a_switch_of_protocol_is_refused() {
    let (addr, _) = origin(vec![
        Answer::Send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        ),
        Answer::Send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec()),
    ])
    .await;
    let c = client();
    let (status, headers, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::from("ok")));
    assert!(!headers.contains_key("link"));
    let err = fetch(&c, get(addr, "/")).await.unwrap_err();
    assert!(matches!(err, ProxyError::Upstream(_)), "{err}");
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_and_the_connection_is_dropped() {
    let (addr, seen) = origin(vec![
        Answer::Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        Answer::Send(ok("fresh")),
    ])
    .await;
    let c = client();
    let (_, headers, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "hello");
    assert!(!headers.contains_key("content-length"));
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "fresh");
    assert_eq!(seen.connections(), 2);
}

#[tokio::test]
async fn bytes_after_a_body_keep_its_connection_out_of_the_pool() {
    let mut answer = ok("ok");
    answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged");
    let (addr, seen) = origin(vec![Answer::Send(answer), Answer::Send(ok("real"))]).await;
    let c = client();
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "ok");
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "real");
    assert_eq!(seen.connections(), 2);
}

#[tokio::test]
async fn broken_framing_is_an_error_never_a_guess() {
    let big_head = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
    let heads: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok".to_vec(),
        b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok".to_vec(),
        b"HTTP/1.1 2x0 NOPE\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n".to_vec(),
        big_head.into_bytes(),
        format!("HTTP/1.1 200 OK\r\n{many}\r\n").into_bytes(),
    ];
    for head in heads {
        let (addr, _) = origin(vec![Answer::SendClose(head.clone())]).await;
        let err = fetch(&client(), get(addr, "/")).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::Upstream(_)),
            "{}: {err}",
            String::from_utf8_lossy(&head[..head.len().min(60)])
        );
    }
    // Bodies that break off or lie: the body ends with an error.
    let bodies: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly4".to_vec(),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel".to_vec(),
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{}",
            "1".repeat(5000)
        )
        .into_bytes(),
    ];
    for answer in bodies {
        let (addr, _) = origin(vec![Answer::SendClose(answer.clone())]).await;
        let (status, _, body) = fetch(&client(), get(addr, "/")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_err(), "{}", String::from_utf8_lossy(&answer));
    }
}

#[tokio::test]
async fn an_idle_connection_the_origin_closed_is_left_for_a_new_one() {
    let (addr, seen) = origin(vec![
        Answer::SendCloseLater(ok("one")),
        Answer::Send(ok("two")),
        Answer::Send(ok("three")),
    ])
    .await;
    let c = client();
    let (_, _, body) = fetch(&c, get(addr, "/")).await.unwrap();
    assert_eq!(body.unwrap(), "one");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A body that cannot be sent twice: only a connection known to be open will do.
    let post = req(Method::POST, addr, "/form", Body::from("a=1"));
    let (_, _, body) = fetch(&c, post).await.unwrap();
    assert_eq!(body.unwrap(), "two");
    assert_eq!(seen.connections(), 2);
    assert!(
        seen.request(1).ends_with("content-length: 3\r\n\r\na=1"),
        "{}",
        seen.request(1)
    );
}

#[tokio::test]
async fn a_request_without_a_body_is_sent_again_when_a_pooled_connection_drops_it() {
    // The origin takes the second request on the kept connection and closes without an
    // answer, as one does whose keep-alive timer fired at that moment.
    let (addr, seen) = origin(vec![
        Answer::Send(ok("one")),
        Answer::Close,
        Answer::Send(ok("two")),
        Answer::Send(ok("three")),
        Answer::Close,
    ])
    .await;
    let c = client();
    assert_eq!(fetch(&c, get(addr, "/")).await.unwrap().2.unwrap(), "one");
    assert_eq!(fetch(&c, get(addr, "/")).await.unwrap().2.unwrap(), "two");
    assert_eq!(seen.connections(), 2);
    // With a body it is not: the origin may have acted on it.
    assert_eq!(fetch(&c, get(addr, "/")).await.unwrap().2.unwrap(), "three");
    let post = req(Method::POST, addr, "/form", Body::from("a=1"));
    let err = fetch(&c, post).await.unwrap_err();
    assert!(matches!(err, ProxyError::Upstream(_)), "{err}");
    assert_eq!(seen.connections(), 2);
}

#[tokio::test]
async fn request_bodies_are_framed_by_what_is_sent_not_by_what_the_patron_said() {
    let (addr, seen) = origin(vec![
        Answer::Send(ok("a")),
        Answer::Send(ok("b")),
        Answer::Send(ok("c")),
    ])
    .await;
    let c = client();
    let mut known = req(Method::PUT, addr, "/known", Body::from("hello"));
    known
        .headers_mut()
        .insert("content-length", "999".parse().unwrap());
    known
        .headers_mut()
        .insert("transfer-encoding", "gzip".parse().unwrap());
    assert_eq!(fetch(&c, known).await.unwrap().2.unwrap(), "a");
    let sent = seen.request(0);
    assert!(sent.ends_with("content-length: 5\r\n\r\nhello"), "{sent}");
    assert_eq!(sent.matches("content-length").count(), 1, "{sent}");
    assert!(!sent.contains("transfer-encoding"), "{sent}");

    let chunks = Pieces(VecDeque::from([Bytes::from("one "), Bytes::from("two")]));
    let answer = fetch(&c, req(Method::POST, addr, "/stream", Body::new(chunks))).await;
    assert_eq!(answer.unwrap().2.unwrap(), "b");
    let sent = seen.request(1);
    assert!(
        sent.ends_with("transfer-encoding: chunked\r\n\r\n4\r\none \r\n3\r\ntwo\r\n0\r\n\r\n"),
        "{sent}"
    );

    // An empty POST still says it is empty.
    let answer = fetch(&c, req(Method::POST, addr, "/empty", Body::empty())).await;
    assert_eq!(answer.unwrap().2.unwrap(), "c");
    assert!(seen.request(2).ends_with("content-length: 0\r\n\r\n"));
}

/// A body of pieces whose length is not known in advance, as a browser's chunked upload.
struct Pieces(VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }
}

#[tokio::test]
async fn an_origin_that_is_not_there_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = fetch(&client(), get(addr, "/")).await.unwrap_err();
    assert!(matches!(err, ProxyError::Unreachable(_)), "{err}");
}

#[tokio::test]
async fn an_address_that_refuses_is_passed_over_for_the_next() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    let stream = super::connect_any(vec![closed, closed, open])
        .await
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), open);
    let err = super::connect_any(vec![closed, closed]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = super::connect_any(Vec::new()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn an_address_that_does_not_answer_does_not_hold_up_the_next() {
    // A listener whose accept queue is full drops further SYNs: a connect to it hangs, as
    // to an address behind a broken route.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = sock.listen(1).unwrap();
    let silent = full.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(Ok(s)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(silent)).await
    {
        held.push(s);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    // One at a time, the first attempt would wait out the kernel's SYN retries (minutes).
    let stream = tokio::time::timeout(
        Duration::from_secs(20),
        super::connect_any(vec![silent, open]),
    )
    .await
    .expect("the next address was not tried while the first hung")
    .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), open);
    drop(held);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(600))]

    /// Any bytes an origin sends as a head, whole or cut anywhere: a response, "not yet",
    /// or an error; never a panic.
    #[test]
    fn any_head_bytes_parse_or_fail_cleanly(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        prefix in proptest::sample::select(vec![
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 204 x\r\ncontent-length: ",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: ",
        ]),
        head_method in proptest::sample::select(vec![Method::GET, Method::HEAD]),
    ) {
        let mut buf = prefix.to_vec();
        buf.extend_from_slice(&bytes);
        buf.extend_from_slice(b"\r\n\r\n");
        for end in [buf.len(), buf.len() / 2] {
            if let Ok(Some((len, super::Head::Final(mut b)))) = super::parse_head(&buf[..end], &head_method) {
                let head = Bytes::copy_from_slice(&buf[..len]);
                let _ = b.finish(&head);
            }
        }
    }
}
