//! The checked policy model: what `load` builds and `decide` reads.
//!
//! Everything is resolved at load time so that a decision does only hash lookups: group
//! entitlements are expanded to one [`Grant`] per institution, aliases and the bare library
//! number point at their institution, and networks sit in a longest-prefix table.

use std::time::Duration;

use ipnet::IpNet;
use jiff::civil::Date;
use rustc_hash::FxHashMap;
use url::Url;

use super::network::NetworkTable;
use crate::ids::{InstitutionId, ServiceId};
use crate::subject::Affiliation;

/// Index into [`Policy::institutions`].
pub(crate) type InstIdx = u32;
/// Index into [`Policy::services`].
pub(crate) type SvcIdx = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstitutionKind {
    PublicLibrary,
    CountyLibrary,
    School,
    Other,
}

impl InstitutionKind {
    pub const NAMES: [&'static str; 4] = ["public_library", "county_library", "school", "other"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "public_library" => Self::PublicLibrary,
            "county_library" => Self::CountyLibrary,
            "school" => Self::School,
            "other" => Self::Other,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Institution {
    pub id: InstitutionId,
    pub name: String,
    pub kind: InstitutionKind,
    /// Four digits, a statistics dimension.
    pub municipality: Option<String>,
    pub aliases: Vec<String>,
    pub networks: Vec<IpNet>,
    pub walk_in: bool,
    /// Lower case.
    pub feide_realms: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub members: Vec<InstitutionId>,
}

/// A set of affiliations, as a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Audience(u8);

impl Audience {
    pub const DEFAULT: Audience = Audience(1 | 2 | 4);

    pub fn contains(self, a: Affiliation) -> bool {
        self.0 & a.bit() != 0
    }
    pub fn insert(&mut self, a: Affiliation) {
        self.0 |= a.bit();
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Affiliation> {
        Affiliation::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl std::fmt::Debug for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    Anywhere,
    Onsite,
}

/// An attribute a vendor may receive (`docs/policy.md`, Release).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attribute {
    Pseudonym,
    Institution,
    InstitutionName,
    Municipality,
    Affiliation,
    AgeBand,
    /// `age_over_N`, N in 1..=130.
    AgeOver(u8),
}

impl Attribute {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pseudonym" => Self::Pseudonym,
            "institution" => Self::Institution,
            "institution_name" => Self::InstitutionName,
            "municipality" => Self::Municipality,
            "affiliation" => Self::Affiliation,
            "age_band" => Self::AgeBand,
            _ => {
                let n = s.strip_prefix("age_over_")?;
                // No sign, no leading zero: one spelling per attribute.
                if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u8 = n.parse().ok()?;
                if !(1..=130).contains(&n) {
                    return None;
                }
                Self::AgeOver(n)
            }
        })
    }

    pub fn name(self) -> String {
        match self {
            Self::Pseudonym => "pseudonym".into(),
            Self::Institution => "institution".into(),
            Self::InstitutionName => "institution_name".into(),
            Self::Municipality => "municipality".into(),
            Self::Affiliation => "affiliation".into(),
            Self::AgeBand => "age_band".into(),
            Self::AgeOver(n) => format!("age_over_{n}"),
        }
    }
}

/// `rate_per_user`: at most `count` requests per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// `scheme://host[:port]`, no path.
    pub origin: Url,
    /// Other origins of the same vendor, each proxied under its own host label.
    pub hosts: Vec<Url>,
    pub item_paths: Vec<PathPattern>,
    pub search_paths: Vec<PathPattern>,
}

/// A `search_paths` / `item_paths` pattern, taken apart once at load so that matching it
/// on every proxied request is a prefix comparison and, rarely, a walk over a few
/// segments: `*` is one non-empty path segment, `**` any number of segments, anything else
/// literal. The literal part before the first wildcard rejects almost every path at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    /// The pattern up to its first wildcard, without the `/` before it; the whole pattern
    /// when it has none.
    literal: usize,
    /// The segments after `literal` (none for a pattern without wildcards).
    rest: Box<[Segment]>,
    /// A pattern that does not start with `/` matches no request path.
    never: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    One,
    Any,
    Literal(Box<str>),
}

impl PathPattern {
    pub fn new(text: &str) -> Self {
        let literal = text
            .find('*')
            .map_or(text.len(), |i| text[..i].trim_end_matches('/').len());
        let rest = match text[literal..].strip_prefix('/') {
            Some(tail) if literal < text.len() => tail
                .split('/')
                .map(|s| match s {
                    "*" => Segment::One,
                    "**" => Segment::Any,
                    s => Segment::Literal(s.into()),
                })
                .collect(),
            _ => Box::default(),
        };
        Self {
            text: text.to_owned(),
            literal,
            rest,
            never: !text.starts_with('/'),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a request path (no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        if self.never || !path.starts_with('/') {
            return false;
        }
        let Some(tail) = path.strip_prefix(&self.text[..self.literal]) else {
            return false;
        };
        if self.rest.is_empty() {
            return tail.is_empty();
        }
        if tail.is_empty() {
            return self.rest.iter().all(|s| *s == Segment::Any);
        }
        match tail.strip_prefix('/') {
            Some(tail) => segments_match(&self.rest, tail.split('/')),
            None => false,
        }
    }
}

fn segments_match(mut pat: &[Segment], mut segs: std::str::Split<'_, char>) -> bool {
    loop {
        match pat.split_first() {
            None => return segs.next().is_none(),
            Some((Segment::Any, after)) => loop {
                if segments_match(after, segs.clone()) {
                    return true;
                }
                if segs.next().is_none() {
                    return false;
                }
            },
            Some((p, after)) => {
                match (p, segs.next()) {
                    (Segment::One, Some(s)) if !s.is_empty() => {}
                    (Segment::Literal(l), Some(s)) if **l == *s => {}
                    _ => return false,
                }
                pat = after;
            }
        }
    }
}

impl From<&str> for PathPattern {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Clone, Debug)]
pub struct SamlSettings {
    pub entity_id: String,
    pub acs_url: Url,
    pub start_url: Option<String>,
    /// PEM of the vendor's signing certificate, read at load time.
    pub certificate: Option<String>,
}

#[derive(Clone, Debug)]
pub struct OidcSettings {
    pub client_id: String,
    pub redirect_uris: Vec<String>,
    pub start_url: Url,
    /// Lower-case hex SHA-256 of the client secret; `None` for a public (PKCE) client.
    pub client_secret_sha256: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Access {
    Proxy(ProxySettings),
    Saml(SamlSettings),
    Oidc(OidcSettings),
    Link { url: Url },
}

/// The host label of a proxied service's origin number `n` (0: the main origin).
pub fn host_label(service: &str, n: usize) -> String {
    if n == 0 {
        service.to_owned()
    } else {
        format!("{service}--{n}")
    }
}

impl Access {
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Proxy(_) => "proxy",
            Self::Saml(_) => "saml",
            Self::Oidc(_) => "oidc",
            Self::Link { .. } => "link",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Service {
    pub id: ServiceId,
    pub name: String,
    pub vendor: Option<String>,
    pub access: Access,
    /// The emergency brake: `false` stops all access.
    pub enabled: bool,
    pub min_age: Option<u8>,
    pub max_age: Option<u8>,
    pub audience: Audience,
    pub location: Location,
    pub release: Vec<Attribute>,
    /// Services with the same sector share pseudonyms. Defaults to the id.
    pub sector: String,
    /// `None`: the gateway's default.
    pub session_ttl: Option<Duration>,
    pub rate_per_user: Option<Rate>,
}

/// An entitlement as written in the policy (kept for summaries and tooling).
#[derive(Clone, Debug)]
pub struct Entitlement {
    pub institution: Option<InstitutionId>,
    pub group: Option<String>,
    pub service: ServiceId,
    pub from: Date,
    pub until: Option<Date>,
    pub enabled: bool,
    pub audience: Option<Audience>,
    pub location: Option<Location>,
}

/// One entitlement as it applies to one institution, with the service's defaults filled in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grant {
    pub from: Date,
    /// Inclusive; `None` is open-ended.
    pub until: Option<Date>,
    pub enabled: bool,
    pub audience: Audience,
    pub location: Location,
}

impl Grant {
    pub fn holds_on(&self, day: Date) -> bool {
        self.from <= day && self.until.is_none_or(|u| day <= u)
    }
}

/// An immutable, checked policy.
#[derive(Debug)]
pub struct Policy {
    /// Sorted by id.
    pub(crate) institutions: Vec<Institution>,
    pub(crate) groups: Vec<Group>,
    /// Sorted by id.
    pub(crate) services: Vec<Service>,
    pub(crate) entitlements: Vec<Entitlement>,
    /// Id, bare library number and aliases → institution.
    pub(crate) institution_refs: FxHashMap<String, InstIdx>,
    pub(crate) service_index: FxHashMap<String, SvcIdx>,
    /// Host label of a proxied origin → (service, origin number: 0 the main origin, i the
    /// `hosts[i-1]` entry, labelled `<service>--<i>`).
    pub(crate) host_labels: FxHashMap<String, (SvcIdx, usize)>,
    /// Lower-case realm → institution.
    pub(crate) realms: FxHashMap<String, InstIdx>,
    pub(crate) grants: FxHashMap<(InstIdx, SvcIdx), Vec<Grant>>,
    pub(crate) networks: NetworkTable<InstIdx>,
}

/// Counts for `check-policy`'s one-line summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub institutions: usize,
    pub groups: usize,
    pub services: usize,
    pub entitlements: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn n(count: usize, one: &str, many: &str) -> String {
            format!("{count} {}", if count == 1 { one } else { many })
        }
        write!(
            f,
            "{}, {}, {}, {}",
            n(self.institutions, "institution", "institutions"),
            n(self.groups, "group", "groups"),
            n(self.services, "service", "services"),
            n(self.entitlements, "entitlement", "entitlements"),
        )
    }
}

impl Policy {
    pub fn summary(&self) -> Summary {
        Summary {
            institutions: self.institutions.len(),
            groups: self.groups.len(),
            services: self.services.len(),
            entitlements: self.entitlements.len(),
        }
    }

    pub fn institutions(&self) -> &[Institution] {
        &self.institutions
    }
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }
    pub fn services(&self) -> &[Service] {
        &self.services
    }
    pub fn entitlements(&self) -> &[Entitlement] {
        &self.entitlements
    }

    /// An institution by its id, its bare library number or one of its aliases.
    pub fn institution(&self, reference: &str) -> Option<&Institution> {
        self.institution_idx(reference)
            .map(|i| &self.institutions[i as usize])
    }

    pub(crate) fn institution_idx(&self, reference: &str) -> Option<InstIdx> {
        self.institution_refs.get(reference).copied()
    }

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.service_index
            .get(id)
            .map(|&i| &self.services[i as usize])
    }

    /// The proxied service and origin a host label (the part before `.<public_host>`)
    /// stands for: `avis` → avis's origin, `avis--1` → its first `hosts` entry.
    pub fn proxy_origin(&self, label: &str) -> Option<(&Service, &ProxySettings, &Url)> {
        let &(si, n) = self.host_labels.get(label)?;
        let svc = &self.services[si as usize];
        let Access::Proxy(p) = &svc.access else {
            return None;
        };
        let origin = if n == 0 {
            &p.origin
        } else {
            p.hosts.get(n - 1)?
        };
        Some((svc, p, origin))
    }

    /// The institution whose Feide users have this realm (case-insensitive).
    pub fn institution_for_realm(&self, realm: &str) -> Option<&Institution> {
        self.realms
            .get(&realm.to_ascii_lowercase())
            .map(|&i| &self.institutions[i as usize])
    }

    /// The on-site institution for a client address: the longest matching prefix, on a tie
    /// the smallest id.
    pub fn onsite_institution(&self, ip: std::net::IpAddr) -> Option<&Institution> {
        self.networks
            .lookup(ip)
            .map(|i| &self.institutions[i as usize])
    }
}
