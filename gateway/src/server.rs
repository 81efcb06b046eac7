//! Listeners and connections: plain TCP or TLS (rustls), HTTP/1.1 and HTTP/2 on each, the
//! public and admin routers, SIGHUP reload and graceful shutdown.
//!
//! The public listener dispatches on the Host header: `public_host` gets the patron pages
//! (`routes::public`); `<label>.<public_host>` is a service host, proxied
//! (`routes::service_host`); any other host gets 404, so the gateway never acts for a host
//! it does not own.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::app::App;
use crate::error::StartError;
use crate::routes;
use crate::web::{Peer, pages};

/// Headers larger than this are refused (hyper answers 431) before any handler runs.
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds a listener, or says which one could not.
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
    hint: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr,
            what,
            hint,
            source,
        })
}

/// A running gateway: its bound addresses and a way to stop it.
#[derive(Debug)]
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    usage: Arc<usage::Usage>,
    flusher: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets open requests finish (up to 10 s), then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        // Every request has finished: what they counted goes to disk (or to Redis, or when
        // Redis is away to `data_dir` for the next start) before we return.
        self.flusher.abort();
        if let Err(e) = self.usage.close().await {
            tracing::error!("usage counts not saved at shutdown: {e}");
        }
    }
}

/// Starts both listeners on already-bound sockets (tests bind port 0).
pub fn start(
    app: Arc<App>,
    public: TcpListener,
    admin: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<Running> {
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let public_router = public_handler(app.clone());
    let admin_router = router_handler(routes::admin(app.clone()));
    let usage = app.usage.clone();
    let flusher = usage.spawn_flusher();
    let tasks = vec![
        tokio::spawn(accept_loop(public, public_router, tls, stopped.clone())),
        tokio::spawn(accept_loop(admin, admin_router, None, stopped.clone())),
        tokio::spawn(reload_on_sighup(app, stopped)),
    ];
    Ok(Running {
        public_addr,
        admin_addr,
        stop,
        tasks,
        usage,
        flusher,
    })
}

/// Runs until `shutdown` resolves (SIGTERM or Ctrl-C in `serve`).
pub async fn run_until(running: Running, shutdown: impl Future<Output = ()>) {
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await;
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: called before the listeners open, a stop that comes
/// right after the gateway announces itself (an orchestrator's, a test's) is a clean stop,
/// never the signal's default action, which would end the process without flushing the
/// usage counts. Must be called inside the runtime.
pub fn termination() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    if let Err(e) = term.as_ref().and(int.as_ref()) {
        tracing::warn!(error = %e, "cannot listen for SIGTERM or SIGINT");
    }
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term.ok()) => {}
            _ = wait(int.ok()) => {}
        }
    }
}

async fn reload_on_sighup(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let app = app.clone();
                let _ = tokio::task::spawn_blocking(move || app.reload()).await;
            }
            _ = stopped.changed() => return,
        }
    }
}

/// What answers a listener's requests. A plain function rather than an axum `Router` at
/// the top: a proxied page view goes from hyper to [`dispatch`] to the service host with
/// no routing layers in between (they were a few per cent of its instructions). It is
/// given the request and the address it came from: as an argument, not as a request
/// extension, which is a map allocated for every request that the proxied path does not
/// need.
type Handler = Arc<dyn Fn(Request<Body>, SocketAddr) -> BoxedAnswer + Send + Sync>;
type BoxedAnswer = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

/// The public listener: [`dispatch`] by host, the login host's pages through their router.
fn public_handler(app: Arc<App>) -> Handler {
    let pages = routes::public(app.clone());
    Arc::new(move |req, peer| dispatch(&app, &pages, req, peer))
}

/// A listener served by one router (the admin listener).
fn router_handler(router: Router) -> Handler {
    Arc::new(move |mut req: Request<Body>, peer| {
        req.extensions_mut().insert(Peer(peer));
        let router = router.clone();
        Box::pin(async move { router.oneshot(req).await.into_response() })
    })
}

/// Which host a request is for, and whether the gateway will touch it at all. Nothing
/// here ever contacts a vendor: a `CONNECT`, an HTTP/1 absolute-form target, or a host the
/// gateway does not own is answered on the spot.
///
/// Decided before any future is made, and only the chosen branch's future is boxed: one
/// future holding both the pages' router and the proxy was over 6 kB, copied into its
/// box on every request.
fn dispatch(app: &Arc<App>, pages: &Router, req: Request<Body>, peer: SocketAddr) -> BoxedAnswer {
    let ready = |r: Response| -> BoxedAnswer { Box::pin(std::future::ready(r)) };
    if req.method() == axum::http::Method::CONNECT {
        return ready(plain(StatusCode::BAD_REQUEST, "CONNECT is not supported\n"));
    }
    // Which of ours it is, worked out while the host is borrowed from the request.
    enum To {
        Pages,
        Service(String),
    }
    let to = match request_host(&req) {
        None => return ready(unknown_host(&req)),
        Some(host) if *host == *app.public_host => Some(To::Pages),
        Some(host) => host
            .strip_suffix(app.public_host.as_str())
            .and_then(|h| h.strip_suffix('.'))
            .filter(|label| !label.is_empty() && !label.contains('.'))
            .map(|label| To::Service(label.to_owned())),
    };
    let mut req = req;
    if req.version() < axum::http::Version::HTTP_2 {
        // HTTP/1 absolute-form ("GET http://host/path") is how a forward proxy is asked;
        // this is not one.
        if req.uri().authority().is_some() {
            return ready(plain(
                StatusCode::BAD_REQUEST,
                "absolute-form request targets are not accepted\n",
            ));
        }
    } else if let Some(pq) = req.uri().path_and_query().cloned() {
        // HTTP/2 always carries the authority; keep only the path for the handlers.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = None;
        parts.authority = None;
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    match to {
        None => ready(unknown_host(&req)),
        Some(To::Pages) => {
            // The pages' handlers take the patron's address as an axum extension.
            req.extensions_mut().insert(Peer(peer));
            let pages = pages.clone();
            Box::pin(async move { pages.oneshot(req).await.into_response() })
        }
        Some(To::Service(label)) => {
            Box::pin(routes::service_host::handle(app.clone(), label, req, peer))
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The request's host, lower case: the `Host` header (HTTP/1.1) or the authority
/// (HTTP/2). An absolute-form target with a different authority is not ours. Borrowed
/// when it is already lower case, as browsers send it.
fn request_host(req: &Request<Body>) -> Option<Cow<'_, str>> {
    fn lower(s: &str) -> Cow<'_, str> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            Cow::Borrowed(s)
        }
    }
    let header_host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(lower);
    let authority = req.uri().authority().map(|a| lower(a.as_str()));
    match (header_host, authority) {
        (Some(h), Some(a)) if h != a => None,
        (Some(h), _) => Some(h),
        (None, a) => a,
    }
}

fn unknown_host(req: &Request<Body>) -> Response {
    let t = pages::language(req.headers(), None);
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", t.not_found),
    )
        .into_response()
}

async fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stopped: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        let stopped = stopped.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = handler(req.map(Body::new), peer);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            match acceptor {
                None => serve_connection(TokioIo::new(stream), service, stopped).await,
                Some(acceptor) => {
                    // A failed or slow handshake just drops the connection.
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        serve_connection(TokioIo::new(tls), service, stopped).await;
                    }
                }
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    // Let open connections finish their requests.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_connection<I, S>(io: I, service: S, mut stopped: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<hyper::body::Incoming>, Response = Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .header_read_timeout(Duration::from_secs(30))
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .timer(hyper_util::rt::TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
