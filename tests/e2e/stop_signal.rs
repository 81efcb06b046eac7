//! `server::termination` installs its handlers when it is called, not when its future is
//! first polled: a SIGTERM that arrives in between (the gateway has said it is serving,
//! the orchestrator stops it at once) must end in a clean stop, not the signal's default
//! action, which would kill the process before the usage counts are flushed. If the
//! handlers are ever installed too late again, the SIGTERM sent here kills the whole test
//! process, which fails every test loudly.

use std::process::Command;
use std::time::Duration;

#[test]
fn a_sigterm_before_the_first_poll_is_caught() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stop = gateway::server::termination();
        // Not polled yet: the signal comes now.
        let sent = Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), stop)
            .await
            .expect("the stop future resolves on the SIGTERM sent before it was polled");
    });
}
