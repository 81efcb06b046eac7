//! `[[entitlement]]`: an institution or a group, a service, a period, and the
//! institution's own brake and overrides.

use super::raw::{Raw, RawEntitlement};
use super::toolkit::{Checker, Loc, Table};

const ENTITLEMENT_KEYS: &[&str] = &[
    "institution",
    "group",
    "service",
    "from",
    "until",
    "enabled",
    "audience",
    "location",
];

impl Checker<'_> {
    pub(super) fn entitlement(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let institution = self.opt_str(t, "institution");
        let group = self.opt_str(t, "group");
        let service = self.opt_str(t, "service");
        if t.get("service").is_none() {
            self.missing(t, "service");
        }
        t.what = match (&institution, &group, &service) {
            (Some(i), None, Some(s)) => format!("entitlement {} → {}", i.0, s.0),
            (None, Some(g), Some(s)) => format!("entitlement {} → {}", g.0, s.0),
            _ => "entitlement".into(),
        };
        self.unknown_keys(t, ENTITLEMENT_KEYS);
        match (&institution, &group) {
            (Some(_), Some(_)) => self.error_at(
                t.loc(),
                format!(
                    "{}: give exactly one of \"institution\" and \"group\", not both",
                    t.what
                ),
            ),
            (None, None) if t.get("institution").is_none() && t.get("group").is_none() => self
                .error_at(
                    t.loc(),
                    format!("{}: missing \"institution\" or \"group\"", t.what),
                ),
            _ => {}
        }
        let from = if t.get("from").is_none() {
            self.missing(t, "from");
            None
        } else {
            self.opt_date(t, "from")
        };
        let until = self.opt_date(t, "until");
        if let (Some(f), Some(u)) = (from, until)
            && f > u
        {
            let loc = Loc {
                file: t.file,
                offset: t.get("until").map_or(t.span.start, |v| v.span().start),
            };
            self.error_at(loc, format!("{}: from {f} > until {u}", t.what));
        }
        let enabled = self.opt_bool(t, "enabled").unwrap_or(true);
        let audience = self.audience(t, "audience");
        let location = self.location(t);
        let location_loc = t.get("location").map(|v| Loc {
            file: t.file,
            offset: v.span().start,
        });
        let Some(service) = service else {
            return;
        };
        if institution.is_some() == group.is_some() {
            return;
        }
        raw.entitlements.push((
            t.loc(),
            RawEntitlement {
                institution,
                group,
                service,
                from,
                until,
                enabled,
                audience,
                location,
                location_loc,
            },
        ));
    }
}
