//! What the end-to-end tests share: the binary under test, and the peers and tools they
//! start (a recording origin, a real Redis, the SIP2 library system, a small HTTP client,
//! the privacy search).

pub mod federation;
pub mod http;
pub mod origin;
pub mod privacy;
pub mod reaper;
pub mod redis;
pub mod sip2_peer;

/// The `portvakt` binary, as Cargo built it for these tests (`tests/portvakt.rs`: the
/// gateway's own entry point).
pub const PORTVAKT: &str = env!("CARGO_BIN_EXE_portvakt-under-test");
