//! The decision: a pure, synchronous function of the policy, a subject, a service, the
//! client's address and the instant (`docs/policy.md`, "The decision").
//!
//! It allocates nothing on the common path: candidates are walked in place, every lookup
//! is a hash probe on ids resolved at load time, and "today" is one time-zone conversion.

use std::net::IpAddr;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::model::{InstIdx, Location, Policy, Service, SvcIdx};
use crate::ids::{InstitutionId, ServiceId};
use crate::subject::{Affiliation, Subject};

/// Days are calendar days in Europe/Oslo, whatever the machine's zone. The zone rules are
/// compiled in, so a container without tzdata decides the same way.
static OSLO: TimeZone = jiff::tz::get!("Europe/Oslo");

/// The Europe/Oslo time zone.
pub fn oslo() -> &'static TimeZone {
    &OSLO
}

/// The calendar day in Europe/Oslo at an instant.
pub fn oslo_today(now: Timestamp) -> Date {
    OSLO.to_datetime(now).date()
}

/// Why access was refused. The names are part of the contract (logs, metrics, JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyReason {
    UnknownService,
    ServiceSuspended,
    NotSubscribed,
    OutsidePeriod,
    EntitlementSuspended,
    OnsiteOnly,
    AudienceNotAllowed,
    AgeBelowMin,
    AgeAboveMax,
    AgeUnverified,
    /// Not from `decide`: the per-person rate limit of a running session.
    RateLimited,
}

impl DenyReason {
    pub const ALL: [DenyReason; 11] = [
        Self::UnknownService,
        Self::ServiceSuspended,
        Self::NotSubscribed,
        Self::OutsidePeriod,
        Self::EntitlementSuspended,
        Self::OnsiteOnly,
        Self::AudienceNotAllowed,
        Self::AgeBelowMin,
        Self::AgeAboveMax,
        Self::AgeUnverified,
        Self::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownService => "unknown_service",
            Self::ServiceSuspended => "service_suspended",
            Self::NotSubscribed => "not_subscribed",
            Self::OutsidePeriod => "outside_period",
            Self::EntitlementSuspended => "entitlement_suspended",
            Self::OnsiteOnly => "onsite_only",
            Self::AudienceNotAllowed => "audience_not_allowed",
            Self::AgeBelowMin => "age_below_min",
            Self::AgeAboveMax => "age_above_max",
            Self::AgeUnverified => "age_unverified",
            Self::RateLimited => "rate_limited",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::UnknownService => 404,
            Self::RateLimited => 429,
            _ => 403,
        }
    }

    /// The COUNTER metric a denial counts as, if any.
    pub fn counter_metric(self) -> Option<&'static str> {
        match self {
            Self::UnknownService => None,
            Self::RateLimited => Some("Limit_Exceeded"),
            _ => Some("No_License"),
        }
    }

    /// What the patron reads, in bokmål: why, and what they can do.
    pub fn message_nb(self) -> &'static str {
        match self {
            Self::UnknownService => {
                "Vi finner ikke denne tjenesten. Sjekk lenken, eller gå til startsiden."
            }
            Self::ServiceSuspended => "Tjenesten er midlertidig stengt. Prøv igjen senere.",
            Self::NotSubscribed => {
                "Biblioteket ditt abonnerer ikke på denne tjenesten. Spør biblioteket ditt om den."
            }
            Self::OutsidePeriod => {
                "Biblioteket ditt har ikke tilgang til denne tjenesten nå: avtalen er utløpt eller har ikke begynt ennå."
            }
            Self::EntitlementSuspended => {
                "Biblioteket ditt har stengt tilgangen til denne tjenesten for en periode. Spør biblioteket ditt."
            }
            Self::OnsiteOnly => {
                "Denne tjenesten er bare tilgjengelig på biblioteket. Bruk den på en av bibliotekets maskiner eller på bibliotekets nett."
            }
            Self::AudienceNotAllowed => {
                "Denne tjenesten er ikke for din brukergruppe. Den kan være bare for elever, ansatte eller lånere."
            }
            Self::AgeBelowMin => "Du er for ung for denne tjenesten. Den har en aldersgrense.",
            Self::AgeAboveMax => "Denne tjenesten er for yngre brukere.",
            Self::AgeUnverified => {
                "Denne tjenesten har en aldersgrense, og vi vet ikke alderen din. Be biblioteket registrere fødselsdatoen din."
            }
            Self::RateLimited => {
                "Du har brukt tjenesten svært mye på kort tid. Vent litt og prøv igjen."
            }
        }
    }

    /// The same in English.
    pub fn message_en(self) -> &'static str {
        match self {
            Self::UnknownService => {
                "We cannot find this service. Check the link, or go to the start page."
            }
            Self::ServiceSuspended => "This service is temporarily closed. Please try again later.",
            Self::NotSubscribed => {
                "Your library does not subscribe to this service. Ask your library about it."
            }
            Self::OutsidePeriod => {
                "Your library does not have access to this service right now: the agreement has ended or has not started yet."
            }
            Self::EntitlementSuspended => {
                "Your library has paused access to this service. Ask your library."
            }
            Self::OnsiteOnly => {
                "This service is only available at the library. Use it on a library computer or the library's network."
            }
            Self::AudienceNotAllowed => {
                "This service is not for your user group. It may be for students, staff or library patrons only."
            }
            Self::AgeBelowMin => "You are too young for this service. It has an age limit.",
            Self::AgeAboveMax => "This service is for younger users.",
            Self::AgeUnverified => {
                "This service has an age limit and we do not know your age. Ask your library to register your date of birth."
            }
            Self::RateLimited => {
                "You have used this service very heavily in a short time. Wait a little and try again."
            }
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stages a candidate goes through, in order. A deny reports the reason of the
/// candidate that got furthest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Subscription = 1,
    Location = 2,
    Audience = 3,
    Age = 4,
}

/// Access through exactly one institution, which is credited in the statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permit {
    pub service: ServiceId,
    pub institution: InstitutionId,
    /// The permit's institution is the one whose network the client is on.
    pub onsite: bool,
    /// The day the decision was made for (Europe/Oslo); release uses the same day.
    pub day: Date,
    pub(crate) inst_idx: InstIdx,
    pub(crate) svc_idx: SvcIdx,
}

impl Permit {
    /// The credited institution's position in the policy the permit was decided under: a
    /// cheap identity for caches keyed by permit (only meaningful with that same policy).
    pub fn institution_index(&self) -> u32 {
        self.inst_idx
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Permit(Permit),
    Deny(DenyReason),
}

impl Decision {
    pub fn is_permit(&self) -> bool {
        matches!(self, Self::Permit(_))
    }
    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Self::Deny(r) => Some(*r),
            Self::Permit(_) => None,
        }
    }
}

/// The decision of `docs/policy.md`: permit through exactly one institution, or deny with exactly
/// one reason.
pub fn decide(
    policy: &Policy,
    subject: &Subject,
    service: &str,
    client_ip: Option<IpAddr>,
    now: Timestamp,
) -> Decision {
    let Some(&si) = policy.service_index.get(service) else {
        return Decision::Deny(DenyReason::UnknownService);
    };
    let svc = &policy.services[si as usize];
    if !svc.enabled {
        return Decision::Deny(DenyReason::ServiceSuspended);
    }
    let today = oslo_today(now);
    let onsite = client_ip.and_then(|ip| policy.networks.lookup(ip));

    let mut best: Option<(Stage, DenyReason)> = None;
    let mut consider = |cand: InstIdx| -> Option<Decision> {
        match check(policy, svc, si, subject, cand, onsite, today) {
            Ok(()) => Some(Decision::Permit(Permit {
                service: svc.id.clone(),
                institution: policy.institutions[cand as usize].id.clone(),
                onsite: onsite == Some(cand),
                day: today,
                inst_idx: cand,
                svc_idx: si,
            })),
            Err(failure) => {
                // Strictly later only: on a tie the earliest candidate's reason stands.
                if best.is_none_or(|b| failure.0 > b.0) {
                    best = Some(failure);
                }
                None
            }
        }
    };

    if subject.affiliation == Affiliation::WalkIn {
        if let Some(o) = onsite
            && policy.institutions[o as usize].walk_in
            && let Some(permit) = consider(o)
        {
            return permit;
        }
    } else {
        if let Some(o) = onsite
            && let Some(permit) = consider(o)
        {
            return permit;
        }
        for (n, reference) in subject.institutions.iter().enumerate() {
            let Some(cand) = policy.institution_idx(reference.as_str()) else {
                continue;
            };
            let repeated = onsite == Some(cand)
                || subject.institutions[..n]
                    .iter()
                    .any(|r| policy.institution_idx(r.as_str()) == Some(cand));
            if !repeated && let Some(permit) = consider(cand) {
                return permit;
            }
        }
    }
    Decision::Deny(best.map_or(DenyReason::NotSubscribed, |b| b.1))
}

/// One candidate through the four stages.
fn check(
    policy: &Policy,
    svc: &Service,
    si: SvcIdx,
    subject: &Subject,
    cand: InstIdx,
    onsite: Option<InstIdx>,
    today: Date,
) -> Result<(), (Stage, DenyReason)> {
    // 1. Subscription.
    let Some(grants) = policy.grants.get(&(cand, si)) else {
        return Err((Stage::Subscription, DenyReason::NotSubscribed));
    };
    let mut holds_today = false;
    let mut reached = Stage::Subscription;
    for g in grants.iter().filter(|g| g.holds_on(today)) {
        holds_today = true;
        if !g.enabled {
            continue;
        }
        // Each active entitlement brings its own overrides; the candidate passes stages 2
        // and 3 if any one entitlement lets it through both.
        if g.location == Location::Onsite && onsite != Some(cand) {
            reached = reached.max(Stage::Location);
            continue;
        }
        if !g.audience.contains(subject.affiliation) {
            reached = Stage::Audience;
            continue;
        }
        reached = Stage::Age;
        break;
    }
    match reached {
        Stage::Subscription if !holds_today => {
            return Err((Stage::Subscription, DenyReason::OutsidePeriod));
        }
        Stage::Subscription => {
            return Err((Stage::Subscription, DenyReason::EntitlementSuspended));
        }
        Stage::Location => return Err((Stage::Location, DenyReason::OnsiteOnly)),
        Stage::Audience => return Err((Stage::Audience, DenyReason::AudienceNotAllowed)),
        Stage::Age => {}
    }

    // 4. Age, only for services with a limit.
    if svc.min_age.is_none() && svc.max_age.is_none() {
        return Ok(());
    }
    let fail = |r| Err((Stage::Age, r));
    let Some(age) = subject.age.range_on(today) else {
        return fail(DenyReason::AgeUnverified);
    };
    if let Some(min) = svc.min_age.map(i32::from) {
        if age.high < min {
            return fail(DenyReason::AgeBelowMin);
        }
        if age.low < min {
            return fail(DenyReason::AgeUnverified);
        }
    }
    if let Some(max) = svc.max_age.map(i32::from) {
        if age.low > max {
            return fail(DenyReason::AgeAboveMax);
        }
        if age.high > max {
            return fail(DenyReason::AgeUnverified);
        }
    }
    Ok(())
}
