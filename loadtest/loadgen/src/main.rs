//! `loadgen`: the load generator and the stand-in origin of `loadtest/run.sh`.
//!
//! `closed` and `rate` drive one loopback URL and print one JSON line with the counts and the
//! latency percentiles (microseconds); `origin` serves a fixed page and prints its port;
//! `free-port` prints unused loopback ports for the servers the script starts. Only loopback
//! addresses are accepted as targets.

mod client;
mod hist;
mod origin;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hyper::Uri;
use hyper::header::HeaderValue;

use crate::client::{Mode, Outcome, Target};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest run accepted, so a typo cannot start an hour of load.
const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_CONNECTIONS: usize = 4096;
const MAX_RATE: f64 = 1_000_000.0;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Loopback load generator and origin for Portvakt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Each connection sends requests back to back (maximum throughput).
    Closed(Common),
    /// Open loop: requests at a constant total rate, latency from each one's due time.
    Rate {
        /// Requests per second over all connections.
        #[arg(long)]
        rate: f64,
        #[command(flatten)]
        common: Common,
    },
    /// A minimal fast origin: a fixed ~2 KiB HTML page for every GET. Prints its port.
    Origin {
        /// 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Exit after this long even if nobody stops it.
        #[arg(long, default_value = "2h", value_parser = parse_duration)]
        lifetime: Duration,
    },
    /// Prints `count` unused loopback TCP ports, one a line (all distinct).
    FreePort {
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// `http://127.0.0.1:PORT/path`: loopback only.
    #[arg(long)]
    url: String,
    /// Host header (default: the URL's authority).
    #[arg(long)]
    host: Option<String>,
    /// Cookie header to send with every request.
    #[arg(long)]
    cookie: Option<String>,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Per request; a request that takes longer counts as an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// A name for the run, copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

/// `250ms`, `10s`, `2m`, `1h`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn target(c: &Common) -> Result<Target, BoxError> {
    let uri: Uri = c.url.parse()?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs (TLS is not part of this test)".into());
    }
    let host = uri.host().ok_or("the URL has no host")?;
    let ip: IpAddr = match host {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h.trim_start_matches('[').trim_end_matches(']').parse()?,
    };
    if !ip.is_loopback() {
        return Err(
            format!("{ip} is not a loopback address: this tool targets loopback only").into(),
        );
    }
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let authority = uri.authority().map_or("", |a| a.as_str()).to_owned();
    if c.duration > MAX_DURATION || c.duration.is_zero() {
        return Err(format!("--duration must be above 0 and at most {MAX_DURATION:?}").into());
    }
    if c.connections == 0 || c.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}").into());
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        path,
        host: HeaderValue::from_str(c.host.as_deref().unwrap_or(&authority))?,
        cookie: c.cookie.as_deref().map(HeaderValue::from_str).transpose()?,
        connections: c.connections,
        duration: c.duration,
        timeout: c.timeout,
    })
}

/// Minimal JSON string escaping for the label and URL.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// One flat JSON object: numbers and a few strings, easy to pick apart with grep in a script.
fn report(c: &Common, mode: &str, rate: Option<f64>, o: &Outcome) -> String {
    let t = &o.tally;
    let h = &t.latency;
    let secs = o.elapsed.as_secs_f64();
    let done = t.ok + t.non_2xx;
    let mut fields = vec![
        ("label", json_str(&c.label)),
        ("mode", json_str(mode)),
        ("url", json_str(&c.url)),
        ("connections", c.connections.to_string()),
        ("duration_s", format!("{secs:.3}")),
        (
            "target_rate",
            rate.map_or_else(|| "null".to_owned(), |r| format!("{r:.1}")),
        ),
        ("requests", done.to_string()),
        ("ok", t.ok.to_string()),
        ("non_2xx", t.non_2xx.to_string()),
        ("errors", t.errors.to_string()),
        ("reconnects", t.reconnects.to_string()),
        (
            "bytes_per_response",
            t.body_bytes.checked_div(done).unwrap_or(0).to_string(),
        ),
        (
            "rps",
            format!("{:.1}", if secs > 0.0 { done as f64 / secs } else { 0.0 }),
        ),
        ("mean_us", format!("{:.1}", h.mean() / 1000.0)),
        ("p50_us", us(h.quantile(0.50))),
        ("p90_us", us(h.quantile(0.90))),
        ("p99_us", us(h.quantile(0.99))),
        ("p999_us", us(h.quantile(0.999))),
        ("max_us", us(h.max())),
    ];
    if rate.is_some() {
        fields.push(("send_lag_p99_us", us(t.send_lag.quantile(0.99))));
        fields.push(("send_lag_max_us", us(t.send_lag.max())));
    }
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(","))
}

async fn drive(c: &Common, mode: Mode) -> Result<(), BoxError> {
    let t = target(c)?;
    let (name, rate) = match mode {
        Mode::Closed => ("closed", None),
        Mode::Rate { rate, .. } => ("rate", Some(rate)),
    };
    let outcome = client::run(t, mode).await?;
    println!("{}", report(c, name, rate, &outcome));
    Ok(())
}

fn free_ports(count: usize) -> Result<(), BoxError> {
    if count == 0 || count > 64 {
        return Err("--count must be 1..=64".into());
    }
    // Hold every listener until all are bound, so the ports differ.
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Closed(c) => drive(c, Mode::Closed).await,
        Command::Rate { rate, common } => {
            if !(*rate > 0.0 && *rate <= MAX_RATE) {
                Err(format!("--rate must be above 0 and at most {MAX_RATE}").into())
            } else {
                drive(common, Mode::Rate { rate: *rate }).await
            }
        }
        Command::Origin { port, lifetime } => origin::run(*port, *lifetime).await,
        Command::FreePort { count } => free_ports(*count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    fn common(url: &str) -> Common {
        Common {
            url: url.to_owned(),
            host: None,
            cookie: None,
            connections: 4,
            duration: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
            label: "test".to_owned(),
        }
    }

    #[test]
    fn loopback_only() {
        assert!(target(&common("http://192.0.2.1/")).is_err());
        assert!(target(&common("https://127.0.0.1/")).is_err());
        let t = target(&common("http://127.0.0.1:8080/a?b=1")).unwrap();
        assert_eq!(t.path, "/a?b=1");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert!(target(&common("http://[::1]:8080/")).is_ok());
    }

    /// The origin and both modes, end to end on loopback, briefly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_and_rate_against_the_origin() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        tokio::spawn(origin::run(port, Duration::from_secs(20)));
        let url = format!("http://127.0.0.1:{port}/artikkel/1");
        let mut ready = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ready);

        let c = common(&url);
        let o = client::run(target(&c).unwrap(), Mode::Closed)
            .await
            .unwrap();
        assert!(o.tally.ok > 10, "{o:?}");
        assert_eq!(o.tally.errors + o.tally.non_2xx, 0);
        assert!(o.tally.body_bytes / o.tally.ok > 1900);
        let line = report(&c, "closed", None, &o);
        assert!(
            line.starts_with("{\"label\":\"test\",\"mode\":\"closed\""),
            "{line}"
        );

        let o = client::run(target(&c).unwrap(), Mode::Rate { rate: 200.0 })
            .await
            .unwrap();
        // 200/s for 0.3 s: 60 due times, all before the deadline.
        assert_eq!(o.tally.ok, 60, "{o:?}");
        let line = report(&c, "rate", Some(200.0), &o);
        assert!(line.contains("\"target_rate\":200.0"), "{line}");
    }
}
