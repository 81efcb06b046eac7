//! Portvakt: one key for library patrons and students to the digital content their
//! institution pays for. The library holds the policy engine and the gateway; the
//! `portvakt` binary in `main.rs` wires them to the command line.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod counting;
pub mod demo;
pub mod keys;
pub mod launch;
pub mod pages;
pub mod pipeline;
pub mod server;
pub mod service_host;
pub mod sso;
pub mod telemetry;
pub mod tls;
