//! Portvakt's gateway: the server and the `portvakt` command, built on the workspace's
//! crates (the policy engine, the store, usage counting, the proxy, the identity provider).
//!
//! Data flows downward: `cli` → `start` (config, keys, policy, store → [`app::App`]) →
//! `server` (listeners, dispatch by host) → `routes` (handlers by family) → `web` (pages,
//! refusals, cookies), `counting`, `auth` and the shared state in `app`. Nothing imports
//! back up.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod counting;
pub mod demo;
pub mod error;
pub mod keys;
pub mod rate_limit;
pub mod release_cache;
pub mod routes;
pub mod server;
pub mod start;
pub mod telemetry;
pub mod tls;
pub mod verified_cookies;
pub mod web;
