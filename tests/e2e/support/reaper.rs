//! A server a test keeps in a `static` is never dropped, so its process would outlive the
//! test binary (CI machines collected one `portvakt serve` and one `redis-server` a run).
//! [`reap_when_done`] leaves behind a small shell loop that kills it once this test
//! process has ended. Peers that read their stdin (the SIP2 and Feide peers) end by
//! themselves when the pipe closes and need none of this.

use std::process::{Command, Stdio};

/// Kills process `pid` (SIGTERM) within about half a second after this process ends.
pub fn reap_when_done(pid: u32) {
    let me = std::process::id();
    // Not waited for: it outlives this process by design, and init reaps it.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill {pid} 2>/dev/null"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
