//! The policy engine: which institutions exist, what they subscribe to, who may use each
//! service, and what a vendor may learn. The format and the decision rules are described in
//! `docs/policy.md`.
//!
//! Data flows one way: `load` reads a directory of TOML files into spanned values, checks
//! every rule and collects every error (with file:line:col) before building anything, and
//! only a policy without errors becomes an immutable [`Policy`], indexed for the hot path.
//! `eval::decide` is a pure, synchronous function of the policy, a subject, a service, the
//! client's address and the instant; `release` turns a permit into the attributes a vendor
//! receives. A reload builds a new `Policy` and swaps an `Arc`: nothing is ever half-applied.

pub mod ids;
pub mod pseudonym;
pub mod subject;

mod eval;
mod load;
mod model;
mod network;
pub mod release;
pub mod synthetic;

pub use eval::{Decision, DenyReason, Permit, Stage, decide, oslo, oslo_today};
pub use load::{Diagnostic, LoadError, Severity, load_dir, load_files, parse_date, parse_duration};
pub use model::{
    Access, Attribute, Audience, Entitlement, Group, Institution, InstitutionKind, Location,
    OidcSettings, PathPattern, Policy, ProxySettings, Rate, SamlSettings, Service, Summary,
};
pub use release::{AgeBand, Release, release};

#[cfg(test)]
mod tests;
