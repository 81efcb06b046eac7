//! What survives when the process that counts is killed: a child (this test binary run
//! again as the `usage_crash::child` test, with the data directory in an environment
//! variable) counts one proxied request a millisecond with a 100 ms flush interval and
//! prints its running total; the parent kills it with SIGKILL or SIGTERM and reads back
//! what is on disk.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use policy::AgeBand;
use policy::subject::Affiliation;
use store::{Clock, SystemClock};
use usage::{Counted, Event, Metric, Period, Query, RequestKind, Usage};

const DIR_VAR: &str = "PORTVAKT_USAGE_CHILD_DIR";
const KEY: &[u8] = b"usage-crash-test-key-0123456789abcdef";
const FLUSH: Duration = Duration::from_millis(100);

fn event() -> Event<'static> {
    Event::Request {
        who: Counted {
            institution: "NO-2390700",
            service: "avis",
            affiliation: Affiliation::Patron,
            age_band: AgeBand::B20To44,
            person: None,
        },
        bytes: 10,
        kind: RequestKind::Plain,
    }
}

/// The child: does nothing unless run by the tests below.
#[test]
fn child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let usage = Usage::open(Some(Path::new(&dir)), FLUSH, Arc::new(SystemClock), KEY)
            .expect("usage opens");
        let _flusher = usage.spawn_flusher();
        let count = Arc::new(Mutex::new(0u64));
        {
            let (usage, count) = (usage.clone(), count.clone());
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                term.recv().await;
                // Stop counting, then the clean stop's last flush.
                let n = count.lock().unwrap_or_else(PoisonError::into_inner);
                usage.flush().expect("final flush");
                println!("final {}", *n);
                std::process::exit(0);
            });
        }
        loop {
            {
                let mut n = count.lock().unwrap_or_else(PoisonError::into_inner);
                usage.record(event());
                *n += 1;
                println!("{}", *n);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

struct Child {
    proc: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    last: u64,
}

fn start(dir: &Path) -> Child {
    let mut proc = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "usage_crash::child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = proc.stdout.take().expect("stdout");
    Child {
        proc,
        lines: BufReader::new(stdout).lines(),
        last: 0,
    }
}

impl Child {
    /// Reads the running total until it reaches `n`.
    fn until(&mut self, n: u64) {
        while self.last < n {
            let line = self
                .lines
                .next()
                .expect("child still counting")
                .expect("line");
            if let Ok(v) = line.trim().parse() {
                self.last = v;
            }
        }
    }
    /// Reads to the end; the last total printed, and the `final` line if any.
    fn rest(&mut self) -> Option<u64> {
        let mut fin = None;
        for line in self.lines.by_ref() {
            let line = line.expect("line");
            if let Some(f) = line.strip_prefix("final ") {
                fin = f.trim().parse().ok();
            } else if let Ok(v) = line.trim().parse() {
                self.last = v;
            }
        }
        fin
    }
}

fn persisted(dir: &Path) -> u64 {
    let clock = Arc::new(SystemClock);
    let today = policy::oslo_today(clock.now());
    let usage = Usage::open(Some(dir), FLUSH, clock, KEY).expect("reopens");
    let q = Query {
        from: today.yesterday().expect("day"),
        to: today.tomorrow().expect("day"),
        period: Period::Total,
        by_affiliation: false,
        by_age_band: false,
        institutions: None,
        services: None,
        metrics: Some(vec![(Metric::Requests, None)]),
        k_anonymity: 1,
    };
    let rows = usage.query(&q).expect("query");
    rows.rows.iter().filter_map(|r| r.value).sum()
}

#[test]
fn sigkill_loses_at_most_the_flush_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = start(dir.path());
    child.until(1500);
    child.proc.kill().expect("SIGKILL");
    child.proc.wait().expect("reaped");
    child.rest();
    let printed = child.last;
    let kept = persisted(dir.path());
    // At most one event recorded but not yet printed when the signal came.
    assert!(kept <= printed + 1, "kept {kept} of {printed}");
    // One request a millisecond at most: 100 ms of interval, plus the flush itself and
    // scheduling slack, is well under 300.
    assert!(
        printed - kept.min(printed) < 300,
        "kept {kept} of {printed}: lost more than a flush interval"
    );
}

#[test]
fn sigterm_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = start(dir.path());
    child.until(300);
    let pid = child.proc.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let fin = child.rest().expect("the child reports its final count");
    assert!(child.proc.wait().expect("exits").success());
    assert_eq!(persisted(dir.path()), fin);
}
