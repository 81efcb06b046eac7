//! Starts `tests/peers/sip2_acs.py` (pysip2) on a free loopback port. A missing pysip2
//! fails the test with the install command.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The python ACS; killed when dropped (and it exits by itself when its stdin closes).
pub struct Sip2Peer {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sip2Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_sip2_peer(patrons_json: &str, args: &[&str]) -> Sip2Peer {
    let dir = tempfile::tempdir().unwrap();
    let patrons = dir.path().join("patrons.json");
    std::fs::File::create(&patrons)
        .unwrap()
        .write_all(patrons_json.as_bytes())
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/sip2_acs.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&patrons)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 for the SIP2 peer: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "the pysip2 peer did not start (first line {line:?}); \
             it needs `pip install -r tests/peers/requirements.txt` (pysip2==0.1.0)"
        )
    });
    Sip2Peer {
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    }
}
