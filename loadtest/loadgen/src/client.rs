//! The generator: N keep-alive HTTP/1.1 connections to one loopback address.
//!
//! - closed loop: each connection sends its next request as soon as the previous response
//!   has been read in full; latency is from send to the last byte of the body.
//! - open loop at a constant rate: request i is due at `t0 + i/rate` and goes to connection
//!   `i mod N`; latency is measured from the time it was due, not from when it could be sent,
//!   so a stalled server is charged for the requests it held up (no coordinated omission).
//!   Due times come from a pacer thread (tokio's timers have millisecond resolution); how late
//!   an idle connection started a request after its due time, the generator's own lateness,
//!   is reported as `send_lag`.
//!
//! All connections are opened before the clock starts. Every loop ends at the deadline; each
//! request has a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{COOKIE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::BoxError;
use crate::hist::Histogram;

/// What to send and how.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub host: HeaderValue,
    pub cookie: Option<HeaderValue>,
    pub connections: usize,
    pub duration: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Closed,
    /// Requests per second over all connections.
    Rate {
        rate: f64,
    },
}

/// One connection's tally; merged at the end.
#[derive(Debug, Default)]
pub struct Tally {
    pub latency: Histogram,
    /// Open loop only: how late the generator sent a request on an idle connection.
    pub send_lag: Histogram,
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub reconnects: u64,
    pub body_bytes: u64,
}

impl Tally {
    fn merge(&mut self, o: &Self) {
        self.latency.merge(&o.latency);
        self.send_lag.merge(&o.send_lag);
        self.ok += o.ok;
        self.non_2xx += o.non_2xx;
        self.errors += o.errors;
        self.reconnects += o.reconnects;
        self.body_bytes += o.body_bytes;
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub tally: Tally,
    pub elapsed: Duration,
}

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends when the sender is dropped or the server closes the connection.
    tokio::spawn(conn);
    Ok(sender)
}

/// One request on `sender`, body read in full. `Ok(Some(status))`, or `Err` when the
/// connection is unusable.
async fn one(target: &Target, sender: &mut Sender) -> Result<(u16, u64), BoxError> {
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = target.path.parse()?;
    let h = req.headers_mut();
    h.insert(HOST, target.host.clone());
    h.insert(USER_AGENT, HeaderValue::from_static("portvakt-loadgen"));
    if let Some(c) = &target.cookie {
        h.insert(COOKIE, c.clone());
    }
    let work = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>((status, body.len() as u64))
    };
    tokio::time::timeout(target.timeout, work).await?
}

/// Sends one request, reconnecting first if the connection is gone; records the outcome
/// against `start` (the send time, or the due time in open loop).
async fn request(
    target: &Target,
    sender: &mut Option<Sender>,
    tally: &mut Tally,
    start: Instant,
    deadline: Instant,
) {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        if sender.take().is_some() {
            tally.reconnects += 1;
        }
        match tokio::time::timeout(target.timeout, connect(target.addr)).await {
            Ok(Ok(s)) => *sender = Some(s),
            _ => {
                tally.errors += 1;
                // Do not hammer a refusing server: a short pause, never past the deadline.
                tokio::time::sleep_until(
                    (Instant::now() + Duration::from_millis(10))
                        .min(deadline)
                        .into(),
                )
                .await;
                return;
            }
        }
    }
    let Some(s) = sender.as_mut() else {
        return;
    };
    match one(target, s).await {
        Ok((status, bytes)) => {
            let took = start.elapsed();
            tally
                .latency
                .record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            tally.body_bytes += bytes;
            if (200..300).contains(&status) {
                tally.ok += 1;
            } else {
                tally.non_2xx += 1;
            }
        }
        Err(_) => {
            tally.errors += 1;
            *sender = None;
        }
    }
}

async fn closed_loop(target: Arc<Target>, mut sender: Option<Sender>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        request(&target, &mut sender, &mut tally, Instant::now(), deadline).await;
    }
    tally
}

/// Open loop, one connection: sends each request it is handed, and measures from its due
/// time. A due time that arrives while the previous request is still out waits in the
/// channel: that wait is the server's doing and counts in its latency.
async fn open_loop(
    target: Arc<Target>,
    mut sender: Option<Sender>,
    mut due_times: mpsc::UnboundedReceiver<Instant>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    // Ends when the pacer has handed out every due time before the deadline.
    loop {
        let due = match due_times.try_recv() {
            Ok(due) => due,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Idle: how late the pacer and the runtime woke us is the generator's own lag.
                let Some(due) = due_times.recv().await else {
                    break;
                };
                let lag = Instant::now().saturating_duration_since(due);
                tally
                    .send_lag
                    .record(u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX));
                due
            }
        };
        request(&target, &mut sender, &mut tally, due, deadline).await;
    }
    tally
}

/// The pacer, on its own thread: request i is due at `t0 + i/rate` and goes to connection
/// `i mod N`. `std::thread::sleep` wakes within tens of microseconds, where tokio's timers
/// round up to the next millisecond, and a sleeping pacer leaves the CPU to the rest.
fn pace(lanes: Vec<mpsc::UnboundedSender<Instant>>, t0: Instant, deadline: Instant, rate: f64) {
    let n = lanes.len() as u64;
    // Bounded: the due times grow with i and the loop ends at the deadline.
    for i in 0_u64.. {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        if due >= deadline {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let lane = usize::try_from(i % n).unwrap_or(0);
        if let Some(tx) = lanes.get(lane) {
            // A closed channel means that connection's task is gone; the others go on.
            let _ = tx.send(due);
        }
    }
}

pub async fn run(target: Target, mode: Mode) -> Result<Outcome, BoxError> {
    let target = Arc::new(target);
    // Open every connection first, so the clock measures requests, not handshakes.
    let mut opening = JoinSet::new();
    for _ in 0..target.connections {
        let addr = target.addr;
        let timeout = target.timeout;
        opening.spawn(async move { tokio::time::timeout(timeout, connect(addr)).await });
    }
    let mut senders = Vec::with_capacity(target.connections);
    while let Some(r) = opening.join_next().await {
        match r {
            Ok(Ok(Ok(s))) => senders.push(Some(s)),
            Ok(Ok(Err(e))) => return Err(format!("connecting to {}: {e}", target.addr).into()),
            Ok(Err(_)) => return Err(format!("connecting to {}: timed out", target.addr).into()),
            Err(e) => return Err(e.into()),
        }
    }

    let t0 = Instant::now() + Duration::from_millis(5);
    let deadline = t0 + target.duration;
    let mut running = JoinSet::new();
    let mut lanes = Vec::new();
    for sender in senders {
        let target = Arc::clone(&target);
        match mode {
            Mode::Closed => {
                running.spawn(async move {
                    tokio::time::sleep_until(t0.into()).await;
                    closed_loop(target, sender, deadline).await
                });
            }
            Mode::Rate { .. } => {
                let (tx, rx) = mpsc::unbounded_channel();
                lanes.push(tx);
                running.spawn(open_loop(target, sender, rx, deadline));
            }
        }
    }
    let pacer = match mode {
        Mode::Rate { rate } => Some(std::thread::spawn(move || {
            pace(lanes, t0, deadline, rate);
        })),
        Mode::Closed => None,
    };
    let mut tally = Tally::default();
    while let Some(r) = running.join_next().await {
        tally.merge(&r?);
    }
    let elapsed = Instant::now().saturating_duration_since(t0);
    if let Some(p) = pacer {
        p.join().map_err(|_| "the pacer thread failed")?;
    }
    Ok(Outcome { tally, elapsed })
}
