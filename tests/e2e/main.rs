//! Portvakt's end-to-end tests: the gateway from outside, as patrons, vendors, librarians,
//! statisticians and operators meet it, against the real peers it talks to — a SIP2
//! library system (pysip2), an OpenID provider configured like Feide (oidc-provider), a
//! SAML service provider (pysaml2), a real `redis-server`, recording vendor origins, and
//! the `portvakt` binary itself. One test binary: `cargo test -p tests`.
//!
//! The peers are installed by `scripts/setup`; a missing one fails its tests with the
//! command that installs it, never a skip.

// Helpers may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

mod support;

mod cli;
mod demo_federated;
mod federation_e2e;
mod feide_oidc;
mod oidc_rp;
mod proxy_e2e;
mod proxy_forward;
mod replicas_e2e;
mod saml_pysaml2;
mod serve_e2e;
mod sip2_demo;
mod sip2_pysip2;
mod sip2_tls;
mod stop_signal;
mod store_suite;
mod tls_http2;
mod usage_crash;
mod usage_e2e;
mod usage_redis;
mod usage_serve;
