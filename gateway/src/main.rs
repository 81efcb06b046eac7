//! The `portvakt` command line: arguments → config → telemetry → server.
fn main() {}
