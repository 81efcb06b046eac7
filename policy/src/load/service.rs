//! `[[service]]`: id, name, access mode and its sub-table (`proxy`, `saml`, `oidc`,
//! `link`), the limits (age, audience, location, rate), release and session lifetime.

use std::time::Duration;

use toml::de::DeValue;
use url::Url;

use crate::ids::ServiceId;
use crate::model::{
    Access, Attribute, Audience, Location, OidcSettings, PathPattern, ProxySettings, Rate,
    SamlSettings, Service,
};

use super::raw::Raw;
use super::toolkit::{Checker, Loc, Table, parse_duration, quoted_list};

const SERVICE_KEYS: &[&str] = &[
    "id",
    "name",
    "vendor",
    "access",
    "enabled",
    "min_age",
    "max_age",
    "audience",
    "location",
    "release",
    "sector",
    "session_ttl",
    "rate_per_user",
    "proxy",
    "saml",
    "oidc",
    "link",
];
const ACCESS_MODES: &[&str] = &["proxy", "saml", "oidc", "link"];

impl Checker<'_> {
    pub(super) fn service(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let id = self.req_str(t, "id");
        if let Some((id, _)) = &id {
            t.what = format!("service \"{id}\"");
            raw.known_services.insert(id.clone());
        }
        self.unknown_keys(t, SERVICE_KEYS);
        if let Some((id, loc)) = &id
            && !is_service_slug(id)
        {
            self.error_at(
                *loc,
                format!(
                    "{}: a service id is 1–40 of a-z, 0-9 and -, not starting or ending \
                     with - (it is also a host name label)",
                    t.what
                ),
            );
        }
        let name = self.req_str(t, "name");
        let vendor = self.opt_str(t, "vendor").map(|v| v.0);
        let enabled = self.opt_bool(t, "enabled").unwrap_or(true);
        let min_age = self.opt_int(t, "min_age", 0..131);
        let max_age = self.opt_int(t, "max_age", 0..131);
        if let (Some((min, _)), Some((max, loc))) = (min_age, max_age)
            && min > max
        {
            self.error_at(loc, format!("{}: min_age {min} > max_age {max}", t.what));
        }
        let audience = self.audience(t, "audience");
        let location = self.location(t);
        let release = self.release(t);
        let sector = self.opt_str(t, "sector");
        if let Some((s, loc)) = &sector
            && s.trim().is_empty()
        {
            self.error_at(*loc, format!("{}: \"sector\" must not be empty", t.what));
        }
        let session_ttl = self.opt_str(t, "session_ttl").and_then(|(s, loc)| {
            let d = parse_duration(&s);
            if d.is_none() {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"session_ttl\" must be a duration such as \"30m\", \"8h\" or \
                         \"2d\", found \"{s}\"",
                        t.what
                    ),
                );
            }
            d
        });
        let rate = self.opt_str(t, "rate_per_user").and_then(|(s, loc)| {
            let r = parse_rate(&s);
            if r.is_none() {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"rate_per_user\" must be \"N/s\", \"N/min\" or \"N/h\" with N \
                         at least 1, found \"{s}\"",
                        t.what
                    ),
                );
            }
            r
        });
        let access = if t.get("access").is_none() {
            self.missing(t, "access");
            None
        } else {
            self.opt_enum(t, "access", ACCESS_MODES, |s| {
                ACCESS_MODES.iter().find(|m| **m == s).copied()
            })
        };
        // A settings table of another mode is a mistake: it would be silently ignored.
        for mode in ACCESS_MODES {
            if Some(*mode) != access
                && let Some((k, _)) = t.map.get_key_value(*mode)
                && access.is_some()
            {
                self.error(
                    t.file,
                    k.span(),
                    format!(
                        "{}: [service.{mode}] does not apply to access = \"{}\"",
                        t.what,
                        access.unwrap_or_default()
                    ),
                );
            }
        }
        let mut entity_loc = None;
        let mut client_loc = None;
        let access = access.and_then(|mode| {
            let Some(v) = t.get(mode) else {
                self.missing(t, mode);
                return None;
            };
            let DeValue::Table(map) = v.get_ref() else {
                self.wrong_type(t, mode, v, "a table");
                return None;
            };
            let sub = Table {
                file: t.file,
                span: v.span(),
                map,
                what: format!("{} [service.{mode}]", t.what),
            };
            match mode {
                "proxy" => self.proxy(&sub).map(Access::Proxy),
                "saml" => self.saml(&sub, &mut entity_loc).map(Access::Saml),
                "oidc" => self.oidc(&sub, &mut client_loc).map(Access::Oidc),
                _ => self.link(&sub),
            }
        });
        let (Some((id, _)), Some((name, _)), Some(access)) = (id, name, access) else {
            return;
        };
        let (Some(release), Some(audience)) = (release, audience.or(Some(Audience::DEFAULT)))
        else {
            return;
        };
        let id_loc = t.get("id").map(|v| Loc {
            file: t.file,
            offset: v.span().start,
        });
        raw.services.push((
            t.loc(),
            Service {
                sector: sector.map_or_else(|| id.clone(), |s| s.0),
                id: ServiceId::new(id),
                name,
                vendor,
                access,
                enabled,
                min_age: min_age.map(|(n, _)| n as u8),
                max_age: max_age.map(|(n, _)| n as u8),
                audience,
                location: location.unwrap_or(Location::Anywhere),
                release,
                session_ttl,
                rate_per_user: rate,
            },
            id_loc,
        ));
        raw.saml_entity_locs.push(entity_loc);
        raw.oidc_client_locs.push(client_loc);
    }

    pub(super) fn release(&mut self, t: &Table<'_, '_>) -> Option<Vec<Attribute>> {
        let Some(items) = self.opt_str_array(t, "release") else {
            return if t.get("release").is_some() {
                None
            } else {
                Some(vec![Attribute::Pseudonym, Attribute::Institution])
            };
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (s, loc) in items {
            match Attribute::parse(&s) {
                Some(a) if out.contains(&a) => {
                    self.warn_at(loc, format!("{}: \"{s}\" is released twice", t.what));
                }
                Some(a) => out.push(a),
                None => {
                    ok = false;
                    self.error_at(
                        loc,
                        format!(
                            "{}: \"{s}\" cannot be released (use {}, or age_over_N with N \
                             from 1 to 130)",
                            t.what,
                            quoted_list(&[
                                "pseudonym",
                                "institution",
                                "institution_name",
                                "municipality",
                                "affiliation",
                                "age_band"
                            ])
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn url(&mut self, t: &Table<'_, '_>, key: &str, s: &str, loc: Loc) -> Option<Url> {
        match Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"{key}\" must be an absolute http:// or https:// URL, found \"{s}\"",
                        t.what
                    ),
                );
                None
            }
        }
    }

    pub(super) fn origin(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        s: &str,
        loc: Loc,
    ) -> Option<Url> {
        let u = self.url(t, key, s, loc)?;
        let has_path = u.path() != "/" || s.trim_end_matches('/').matches('/').count() > 2;
        if has_path || u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
            self.error_at(
                loc,
                format!(
                    "{}: an origin is scheme, host and optional port only (no path, query, \
                     fragment or user), found \"{s}\"",
                    t.what
                ),
            );
            return None;
        }
        Some(u)
    }

    pub(super) fn proxy(&mut self, t: &Table<'_, '_>) -> Option<ProxySettings> {
        self.unknown_keys(t, &["origin", "hosts", "item_paths", "search_paths"]);
        let origin = self
            .req_str(t, "origin")
            .and_then(|(s, loc)| self.origin(t, "origin", &s, loc));
        let mut hosts = Vec::new();
        let mut ok = true;
        for (s, loc) in self.opt_str_array(t, "hosts").unwrap_or_default() {
            match self.origin(t, "hosts", &s, loc) {
                Some(u)
                    if origin.as_ref().is_some_and(|o| o.origin() == u.origin())
                        || hosts.iter().any(|h: &Url| h.origin() == u.origin()) =>
                {
                    self.error_at(loc, format!("{}: origin \"{s}\" is listed twice", t.what));
                    ok = false;
                }
                Some(u) => hosts.push(u),
                None => ok = false,
            }
        }
        let item_paths = self.globs(t, "item_paths");
        let search_paths = self.globs(t, "search_paths");
        Some(ProxySettings {
            origin: origin?,
            hosts: ok.then_some(hosts)?,
            item_paths: item_paths?,
            search_paths: search_paths?,
        })
    }

    pub(super) fn globs(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Vec<PathPattern>> {
        let items = self.opt_str_array(t, key);
        if items.is_none() && t.get(key).is_some() {
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (s, loc) in items.unwrap_or_default() {
            if let Err(why) = check_glob(&s) {
                ok = false;
                self.error_at(loc, format!("{}: \"{key}\" pattern \"{s}\": {why}", t.what));
            } else {
                out.push(PathPattern::new(&s));
            }
        }
        ok.then_some(out)
    }

    pub(super) fn saml(
        &mut self,
        t: &Table<'_, '_>,
        entity_loc: &mut Option<Loc>,
    ) -> Option<SamlSettings> {
        self.unknown_keys(t, &["entity_id", "acs_url", "start_url", "certificate"]);
        let entity = self.req_str(t, "entity_id");
        *entity_loc = entity.as_ref().map(|e| e.1);
        let acs = self.req_str(t, "acs_url").and_then(|(s, loc)| {
            let u = self.url(t, "acs_url", &s, loc)?;
            if u.scheme() == "http" && !is_loopback_host(&u) {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"acs_url\" must use https (http only on loopback), found \"{s}\"",
                        t.what
                    ),
                );
                return None;
            }
            Some(u)
        });
        let start = self.opt_str(t, "start_url");
        let start_ok = match &start {
            Some((s, loc)) => self.url(t, "start_url", s, *loc).is_some(),
            None => true,
        };
        let certificate = match self.opt_str(t, "certificate") {
            None => Some(None),
            Some((path, loc)) => self.certificate(t, &path, loc).map(Some),
        };
        Some(SamlSettings {
            entity_id: entity?.0,
            acs_url: acs?,
            start_url: if start_ok { start.map(|s| s.0) } else { None? },
            certificate: certificate?,
        })
    }

    pub(super) fn certificate(
        &mut self,
        t: &Table<'_, '_>,
        path: &str,
        loc: Loc,
    ) -> Option<String> {
        let Some(base) = self.base else {
            self.error_at(
                loc,
                format!(
                    "{}: certificate files can only be read from a policy directory",
                    t.what
                ),
            );
            return None;
        };
        let full = base.join(path);
        match std::fs::read_to_string(&full) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                self.error_at(
                    loc,
                    format!("{}: {} is not a PEM certificate", t.what, full.display()),
                );
                None
            }
            Err(e) => {
                self.error_at(
                    loc,
                    format!("{}: cannot read {}: {e}", t.what, full.display()),
                );
                None
            }
        }
    }

    pub(super) fn oidc(
        &mut self,
        t: &Table<'_, '_>,
        client_loc: &mut Option<Loc>,
    ) -> Option<OidcSettings> {
        self.unknown_keys(
            t,
            &[
                "client_id",
                "redirect_uris",
                "start_url",
                "client_secret_sha256",
                "public",
            ],
        );
        let client = self.req_str(t, "client_id");
        *client_loc = client.as_ref().map(|c| c.1);
        let uris = if t.get("redirect_uris").is_none() {
            self.missing(t, "redirect_uris");
            None
        } else {
            self.opt_str_array(t, "redirect_uris")
        };
        let mut redirect_uris = Vec::new();
        let mut ok = uris.is_some();
        for (s, loc) in uris.unwrap_or_default() {
            match Url::parse(&s) {
                Ok(u) if u.fragment().is_none() && u.has_host() => redirect_uris.push(s),
                _ => {
                    ok = false;
                    self.error_at(
                        loc,
                        format!(
                            "{}: redirect URI \"{s}\" must be an absolute URL without a fragment",
                            t.what
                        ),
                    );
                }
            }
        }
        if ok && redirect_uris.is_empty() {
            ok = false;
            self.error_at(
                t.loc(),
                format!("{}: \"redirect_uris\" must list at least one URI", t.what),
            );
        }
        let start = self
            .req_str(t, "start_url")
            .and_then(|(s, loc)| self.url(t, "start_url", &s, loc));
        let secret = self.opt_str(t, "client_secret_sha256");
        let public = self.opt_bool(t, "public");
        let secret = match (secret, public) {
            (Some(_), Some(true)) => {
                self.error_at(
                    t.loc(),
                    format!(
                        "{}: give either \"client_secret_sha256\" or public = true, not both",
                        t.what
                    ),
                );
                None
            }
            (Some((s, loc)), _) => {
                if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Some(Some(s.to_ascii_lowercase()))
                } else {
                    self.error_at(
                        loc,
                        format!(
                            "{}: \"client_secret_sha256\" must be 64 hex digits (the SHA-256 \
                             of the secret, not the secret)",
                            t.what
                        ),
                    );
                    None
                }
            }
            (None, Some(true)) => Some(None),
            (None, _) => {
                self.error_at(
                    t.loc(),
                    format!(
                        "{}: a client needs \"client_secret_sha256\", or public = true (PKCE)",
                        t.what
                    ),
                );
                None
            }
        };
        Some(OidcSettings {
            client_id: client?.0,
            redirect_uris: ok.then_some(redirect_uris)?,
            start_url: start?,
            client_secret_sha256: secret?,
        })
    }

    pub(super) fn link(&mut self, t: &Table<'_, '_>) -> Option<Access> {
        self.unknown_keys(t, &["url"]);
        let url = self
            .req_str(t, "url")
            .and_then(|(s, loc)| self.url(t, "url", &s, loc))?;
        Some(Access::Link { url })
    }
}

pub(super) fn is_service_slug(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=40).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(inner)
}

pub(super) fn is_loopback_host(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

/// `*` matches one path segment and `**` any number, so each must be a whole segment.
pub(super) fn check_glob(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("a path pattern starts with /");
    }
    for seg in p.split('/').skip(1) {
        if seg.contains('*') && seg != "*" && seg != "**" {
            return Err("* and ** must stand alone as a whole path segment");
        }
    }
    Ok(())
}

pub(super) fn parse_rate(s: &str) -> Option<Rate> {
    let (n, per) = s.trim().split_once('/')?;
    let count: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(Rate { count, per })
}
