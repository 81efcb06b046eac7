//! Logs and metrics. Metric and label names are constants here; label values are bounded
//! (institution, service, reason, outcome), never a person. Client addresses in logs are
//! cut to /24 (IPv4) or /48 (IPv6) by [`log_ip`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::LogFormat;

pub const DECISIONS: &str = "portvakt_decisions_total";
pub const LOGINS: &str = "portvakt_logins_total";
pub const POLICY_RELOADS: &str = "portvakt_policy_reloads_total";
pub const POLICY_LOADED: &str = "portvakt_policy_loaded_timestamp_seconds";
/// Failed operations on the shared store (Redis): unreachable, timed out or refused.
pub const STORE_ERRORS: &str = "portvakt_store_errors_total";
/// Proxied requests served from a replica's session cache while the store was down.
pub const STORE_STALE_SESSIONS: &str = "portvakt_store_stale_sessions_total";
/// Usage counts dropped because Redis was away and the buffer full; `what` is `cells` or
/// `persons`.
pub const USAGE_DROPPED: &str = "portvakt_usage_dropped_total";
/// Usage cells waiting in this replica's buffer for Redis.
pub const USAGE_BUFFERED: &str = "portvakt_usage_buffered_cells";
/// 1 when the store answered the last readiness check, else 0.
pub const STORE_UP: &str = "portvakt_store_up";

/// Starts logging to stderr. `RUST_LOG` narrows or widens it (default `info`).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a collected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests, demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A client address as it may appear in a log line: the network, never the host.
pub fn log_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => log_ip(IpAddr::V4(v4)),
            None => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
        },
    }
}

/// Counters and gauges in Prometheus text format. Small and lock-based: updates happen
/// per login and per decision, not per proxied byte.
/// A metric name and its label pairs.
type SeriesKey = (&'static str, Vec<(&'static str, String)>);

#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<SeriesKey, f64>>,
}

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1.0);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        if let Ok(mut s) = self.series.lock() {
            *s.entry(key).or_insert(0.0) += v;
        }
    }

    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], v: f64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        if let Ok(mut s) = self.series.lock() {
            s.insert(key, v);
        }
    }

    /// The current value of one series (tests and readiness).
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.series
            .lock()
            .ok()
            .and_then(|s| s.get(&key).copied())
            .unwrap_or(0.0)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(series) = self.series.lock() else {
            return out;
        };
        let mut last = "";
        for ((name, labels), v) in series.iter() {
            if *name != last {
                let kind = if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                };
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last = name;
            }
            out.push_str(name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let _ = write!(out, "{k}=\"{v}\"");
                }
                out.push('}');
            }
            let _ = writeln!(out, " {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_addresses_are_networks() {
        assert_eq!(log_ip("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            log_ip("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1::/48"
        );
        assert_eq!(
            log_ip("::ffff:198.51.100.7".parse().unwrap()),
            "198.51.100.0/24"
        );
    }

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        m.inc(LOGINS, &[("institution", "NO-2390700"), ("outcome", "ok")]);
        m.inc(LOGINS, &[("institution", "NO-2390700"), ("outcome", "ok")]);
        m.set(POLICY_LOADED, &[], 5.0);
        let text = m.render();
        assert!(text.contains("# TYPE portvakt_logins_total counter\n"));
        assert!(
            text.contains("portvakt_logins_total{institution=\"NO-2390700\",outcome=\"ok\"} 2\n")
        );
        assert!(text.contains("portvakt_policy_loaded_timestamp_seconds 5\n"));
    }
}
