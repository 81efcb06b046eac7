//! What the tables collect on the way to the cross-checks: every table that was read,
//! with where it was written, and every id written (even in a table with errors).

use jiff::civil::Date;

use crate::model::{Audience, Group, Institution, Location, Service};

use super::toolkit::Loc;

/// Every table read so far, each with where it was written.
#[derive(Default)]
pub(super) struct Raw {
    pub(super) institutions: Vec<(Loc, Institution)>,
    pub(super) groups: Vec<(Loc, Group, Vec<Loc>)>,
    pub(super) services: Vec<(Loc, Service, Option<Loc>)>,
    pub(super) entitlements: Vec<(Loc, RawEntitlement)>,
    pub(super) network_locs: Vec<Vec<Loc>>,
    pub(super) alias_locs: Vec<Vec<Loc>>,
    pub(super) realm_locs: Vec<Vec<Loc>>,
    pub(super) saml_entity_locs: Vec<Option<Loc>>,
    pub(super) oidc_client_locs: Vec<Option<Loc>>,
    /// Ids written in the policy, including those of tables with errors, so that a broken
    /// service does not also make every entitlement of it "unknown".
    pub(super) known_institutions: rustc_hash::FxHashSet<String>,
    pub(super) known_groups: rustc_hash::FxHashSet<String>,
    pub(super) known_services: rustc_hash::FxHashSet<String>,
}

/// An entitlement as written, its references not yet resolved.
pub(super) struct RawEntitlement {
    pub(super) institution: Option<(String, Loc)>,
    pub(super) group: Option<(String, Loc)>,
    pub(super) service: (String, Loc),
    /// `None` when missing or invalid (already reported); references are still checked.
    pub(super) from: Option<Date>,
    pub(super) until: Option<Date>,
    pub(super) enabled: bool,
    pub(super) audience: Option<Audience>,
    pub(super) location: Option<Location>,
    pub(super) location_loc: Option<Loc>,
}
