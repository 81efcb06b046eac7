//! Where the request path meets usage counting: who an event is credited to, and a
//! response body that counts the bytes a proxied request sends back.
//!
//! What is counted where (`docs/statistics.md` has it for statisticians):
//!
//! - `logins`: a successful card or Feide login, credited to the institution the patron
//!   logged in at (the library chosen on the form; the school of the Feide realm), with the
//!   person for `unique_users`.
//! - `login_failures`: a card login that fails (wrong card or PIN, blocked or lost card,
//!   too many tries, a library system that does not answer), credited to the library
//!   chosen on the form, affiliation `patron`. A failed Feide login names no institution
//!   we could trust, so it is counted in the `portvakt_logins_total` metric only.
//! - `accesses`: a permitted entry link or federated login to a vendor, credited to the
//!   permit's institution, with the person (walk-ins are not persons: they have no
//!   identity to count).
//! - `denials`: every deny decision, by reason, credited to the institution on whose
//!   network the client is, else the patron's home institution. A denial that can be
//!   credited to no institution (an unknown service, a stranger off-site) is counted in
//!   the metrics only, so reports never hold an institution called "-".
//! - `requests`, `bytes`, `searches`, `item_requests`, `unique_item_requests`: every proxied
//!   request that reached the vendor, credited to the permit's institution; `bytes` are the
//!   response body bytes actually sent to the browser (a download broken off counts what
//!   went). Only a successful response (200–299 or 304) counts as a search or an item
//!   request, as COUNTER asks; the double-click rule and per-session uniqueness are the
//!   usage module's.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use http_body::{Frame, SizeHint};
use jiff::civil::Date;
use policy::ids::InstitutionId;
use policy::subject::{Affiliation, Subject};
use policy::{AgeBand, DenyReason, Permit, Policy};
use usage::{Counted, Event, PersonToken, RequestKind, Usage};

use crate::app::App;
use crate::telemetry;
use crate::web::{Refusal, Texts};

fn today(app: &App) -> Date {
    policy::oslo_today(app.clock.now())
}

fn person(app: &App, subject: &Subject) -> Option<PersonToken> {
    (subject.affiliation != Affiliation::WalkIn).then(|| app.usage.person(&subject.key))
}

/// A login attempt's outcome in the metrics (`portvakt_logins_total`), by institution
/// (`-` when none can be trusted, as for a failed Feide login).
pub fn login_outcome(app: &App, institution: &str, outcome: &str) {
    app.metrics.inc(
        telemetry::LOGINS,
        &[("institution", institution), ("outcome", outcome)],
    );
}

/// A successful login at `institution`.
pub fn login(app: &App, institution: &str, subject: &Subject) {
    app.usage.record(Event::Login(Counted {
        institution,
        service: "-",
        affiliation: subject.affiliation,
        age_band: AgeBand::of(subject.age, today(app)),
        person: person(app, subject),
    }));
}

/// A failed card login at `institution` (the library chosen on the form).
pub fn login_failure(app: &App, institution: &str) {
    app.usage.record(Event::LoginFailure(Counted {
        institution,
        service: "-",
        affiliation: Affiliation::Patron,
        age_band: AgeBand::Unknown,
        person: None,
    }));
}

/// A permitted entry (entry link, SAML or OIDC login at a vendor), in usage and metrics.
pub fn permitted(app: &App, permit: &Permit, subject: &Subject) {
    app.usage.record(Event::Access(Counted {
        institution: permit.institution.as_str(),
        service: permit.service.as_str(),
        affiliation: subject.affiliation,
        age_band: AgeBand::of(subject.age, permit.day),
        person: person(app, subject),
    }));
    app.metrics.inc(
        telemetry::DECISIONS,
        &[
            ("service", permit.service.as_str()),
            ("institution", permit.institution.as_str()),
            ("decision", "permit"),
            ("reason", ""),
        ],
    );
}

/// The institution a denial is credited to: the one whose network the client is on,
/// else the patron's home institution, else `-` (not counted in usage).
pub fn credited(policy: &Policy, ip: IpAddr, subject: &Subject) -> String {
    policy.onsite_institution(ip).map_or_else(
        || {
            subject
                .institutions
                .first()
                .map_or_else(|| "-".to_owned(), |i| i.to_string())
        },
        |i| i.id.to_string(),
    )
}

/// A denial, in the metrics and in usage when an institution can be credited (`who` gives
/// the affiliation and age band there). `service` is `-` for an unknown service;
/// `institution` `-` when no institution can be credited, which is then not counted in
/// usage (see the module docs).
pub fn denial(
    app: &App,
    service: &str,
    institution: &str,
    who: Option<&Subject>,
    reason: DenyReason,
) {
    // Unknown services are not counted per service: the label would be unbounded.
    let service = if reason == DenyReason::UnknownService {
        "-"
    } else {
        service
    };
    app.metrics.inc(
        telemetry::DECISIONS,
        &[
            ("service", service),
            ("institution", institution),
            ("decision", "deny"),
            ("reason", reason.as_str()),
        ],
    );
    if institution == "-" || institution.is_empty() {
        return;
    }
    let (affiliation, age_band) = match who {
        Some(s) => (s.affiliation, AgeBand::of(s.age, today(app))),
        None => (Affiliation::WalkIn, AgeBand::Unknown),
    };
    app.usage.record(Event::Denial {
        who: Counted {
            institution,
            service,
            affiliation,
            age_band,
            person: None,
        },
        reason,
    });
}

/// A denial counted ([`denial`]), and the refusal the patron gets for it: the deny page
/// with the status of the reason, or JSON when asked.
pub fn deny(
    app: &App,
    t: &'static Texts,
    headers: &HeaderMap,
    service: &str,
    institution: &str,
    who: Option<&Subject>,
    reason: DenyReason,
) -> Refusal {
    denial(app, service, institution, who, reason);
    Refusal::denied(t, reason, headers)
}

/// Whether a request path matches a `search_paths` / `item_paths` pattern: `*` is one
/// (non-empty) path segment, `**` any number of segments, anything else literal. The
/// proxy matches the patterns the policy took apart at load ([`PathPattern`]); this is
/// for one-off checks.
///
/// [`PathPattern`]: policy::PathPattern
pub fn path_matches(pattern: &str, path: &str) -> bool {
    policy::PathPattern::new(pattern).matches(path)
}

/// What a proxied request is for COUNTER, by the service's patterns. Only the path is
/// matched; a search is told apart from another by its path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Search(String),
    Item(String),
}

pub fn kind_of(proxy: &policy::ProxySettings, path_and_query: &str) -> Kind {
    let path =
        proxy::text::split_once_ascii(path_and_query, b'?').map_or(path_and_query, |(p, _)| p);
    if proxy.item_paths.iter().any(|p| p.matches(path)) {
        Kind::Item(path.to_owned())
    } else if proxy.search_paths.iter().any(|p| p.matches(path)) {
        Kind::Search(path_and_query.to_owned())
    } else {
        Kind::Plain
    }
}

/// One proxied request, counted when its response body is done (or dropped).
#[derive(Debug)]
pub struct PendingRequest {
    pub usage: Arc<Usage>,
    pub institution: InstitutionId,
    pub service: policy::ids::ServiceId,
    pub affiliation: Affiliation,
    pub age_band: AgeBand,
    /// The session id: the double-click rule and uniqueness are per session.
    pub session: String,
    pub kind: Kind,
}

impl PendingRequest {
    fn record(&self, bytes: u64) {
        let kind = match &self.kind {
            Kind::Plain => RequestKind::Plain,
            Kind::Search(key) => RequestKind::Search {
                session: &self.session,
                key,
            },
            Kind::Item(item) => RequestKind::Item {
                session: &self.session,
                item,
            },
        };
        self.usage.record(Event::Request {
            who: Counted {
                institution: self.institution.as_str(),
                service: self.service.as_str(),
                affiliation: self.affiliation,
                age_band: self.age_band,
                person: None,
            },
            bytes,
            kind,
        });
    }
}

/// Wraps a proxied response so its request is counted with the bytes that went out.
pub fn count_response(
    mut pending: PendingRequest,
    resp: axum::response::Response,
) -> axum::response::Response {
    let status = resp.status();
    if !(status.is_success() || status == StatusCode::NOT_MODIFIED) {
        pending.kind = Kind::Plain;
    }
    resp.map(|body| {
        Body::new(CountingBody {
            inner: body,
            bytes: 0,
            pending: Some(pending),
        })
    })
}

struct CountingBody {
    inner: Body,
    bytes: u64,
    pending: Option<PendingRequest>,
}

impl CountingBody {
    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record(self.bytes);
        }
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        assert!(path_matches("/artikkel/*", "/artikkel/1"));
        assert!(!path_matches("/artikkel/*", "/artikkel/"));
        assert!(!path_matches("/artikkel/*", "/artikkel/1/bilde"));
        assert!(!path_matches("/artikkel/*", "/artikkelx/1"));
        assert!(path_matches("/item/**", "/item"));
        assert!(path_matches("/item/**", "/item/a/b/c"));
        assert!(path_matches("/**/pdf", "/a/b/pdf"));
        assert!(!path_matches("/**/pdf", "/a/b/pdf/x"));
        assert!(path_matches("/search", "/search"));
        assert!(!path_matches("/search", "/search/"));
        assert!(!path_matches("/search", "search"));
        assert!(path_matches("/*/les/*", "/bok/les/42"));
    }

    /// The straightforward reading of the pattern rules, which the compiled
    /// [`policy::PathPattern`] must agree with.
    fn reference(pattern: &str, path: &str) -> bool {
        fn walk(pat: &[&str], segs: &[&str]) -> bool {
            match pat.split_first() {
                None => segs.is_empty(),
                Some((&"**", after)) => (0..=segs.len()).any(|i| walk(after, &segs[i..])),
                Some((p, after)) => match segs.split_first() {
                    Some((s, rest)) if (*p == "*" && !s.is_empty()) || p == s => walk(after, rest),
                    _ => false,
                },
            }
        }
        let (Some(pattern), Some(path)) = (pattern.strip_prefix('/'), path.strip_prefix('/'))
        else {
            return false;
        };
        let pat: Vec<&str> = pattern.split('/').collect();
        let segs: Vec<&str> = path.split('/').collect();
        walk(&pat, &segs)
    }

    proptest::proptest! {
        #[test]
        fn compiled_patterns_agree_with_the_rules(
            pat in proptest::collection::vec(
                proptest::prop_oneof!["\\*", "\\*\\*", "[ab]{0,2}"], 0..5),
            path in proptest::collection::vec("[ab]{0,2}", 0..6),
            slash in proptest::bool::ANY,
        ) {
            let pattern = format!("/{}", pat.join("/"));
            let path = format!("{}{}", if slash { "/" } else { "" }, path.join("/"));
            proptest::prop_assert_eq!(
                path_matches(&pattern, &path),
                reference(&pattern, &path),
                "pattern {} path {}", pattern, path
            );
        }
    }

    #[test]
    fn kind_prefers_item_and_keeps_the_query_of_a_search() {
        let proxy = policy::ProxySettings {
            origin: url::Url::parse("http://127.0.0.1:9").unwrap(),
            hosts: Vec::new(),
            item_paths: vec!["/artikkel/*".into()],
            search_paths: vec!["/sok".into()],
        };
        assert_eq!(
            kind_of(&proxy, "/artikkel/7?utm=x"),
            Kind::Item("/artikkel/7".into())
        );
        assert_eq!(
            kind_of(&proxy, "/sok?q=ibsen"),
            Kind::Search("/sok?q=ibsen".into())
        );
        assert_eq!(kind_of(&proxy, "/"), Kind::Plain);
    }
}
