//! `[[institution]]`: id (ISIL), name, kind, municipality, aliases, on-site networks,
//! walk-in, Feide realms; and the warnings about Norwegian library numbers.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::ids::InstitutionId;
use crate::model::{Institution, InstitutionKind};

use super::raw::Raw;
use super::toolkit::{Checker, Loc, Table};

const INSTITUTION_KEYS: &[&str] = &[
    "id",
    "name",
    "kind",
    "municipality",
    "aliases",
    "networks",
    "walk_in",
    "feide_realms",
];

impl Checker<'_> {
    pub(super) fn institution(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let id = self.req_str(t, "id");
        if let Some((id, _)) = &id {
            t.what = format!("institution \"{id}\"");
            raw.known_institutions.insert(id.clone());
        }
        self.unknown_keys(t, INSTITUTION_KEYS);
        if let Some((id, loc)) = &id
            && let Err(why) = check_isil(id)
        {
            self.error_at(*loc, format!("{}: {why}", t.what));
        }
        let name = self.req_str(t, "name");
        let kind = if t.get("kind").is_none() {
            self.missing(t, "kind");
            None
        } else {
            self.opt_enum(t, "kind", &InstitutionKind::NAMES, InstitutionKind::parse)
        };
        let municipality = self.opt_str(t, "municipality");
        if let Some((m, loc)) = &municipality
            && !(m.len() == 4 && m.bytes().all(|b| b.is_ascii_digit()))
        {
            self.error_at(
                *loc,
                format!(
                    "{}: \"municipality\" must be a 4-digit municipality number, found \"{m}\"",
                    t.what
                ),
            );
        }
        if let (Some((id, loc)), Some(kind)) = (&id, kind) {
            self.norwegian_number_warnings(&t.what, id, *loc, kind, municipality.as_ref());
        }
        let aliases = self.opt_str_array(t, "aliases").unwrap_or_default();
        let walk_in = self.opt_bool(t, "walk_in").unwrap_or(false);
        let mut networks = Vec::new();
        let mut network_locs = Vec::new();
        for (s, loc) in self.opt_str_array(t, "networks").unwrap_or_default() {
            match parse_network(&s) {
                Ok(net) => {
                    networks.push(net);
                    network_locs.push(loc);
                }
                Err(why) => self.error_at(loc, format!("{}: {why}", t.what)),
            }
        }
        if walk_in && networks.is_empty() {
            self.warn_at(
                t.loc(),
                format!(
                    "{}: walk_in = true has no effect without \"networks\"",
                    t.what
                ),
            );
        }
        let mut realms = Vec::new();
        let mut realm_locs = Vec::new();
        for (s, loc) in self.opt_str_array(t, "feide_realms").unwrap_or_default() {
            let realm = s.trim().to_ascii_lowercase();
            if realm.is_empty()
                || realm.contains(['@', '/', ' '])
                || !realm.contains('.')
                || realm.starts_with('.')
                || realm.ends_with('.')
            {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"{s}\" is not a Feide realm (a domain such as \"skole.no\", \
                         the part after @ of a Feide user id)",
                        t.what
                    ),
                );
                continue;
            }
            realms.push(realm);
            realm_locs.push(loc);
        }
        let (Some((id, _)), Some((name, _)), Some(kind)) = (id, name, kind) else {
            return;
        };
        let (alias_names, alias_locs): (Vec<_>, Vec<_>) = aliases.into_iter().unzip();
        raw.institutions.push((
            t.loc(),
            Institution {
                id: InstitutionId::new(id),
                name,
                kind,
                municipality: municipality.map(|m| m.0),
                aliases: alias_names,
                networks,
                walk_in,
                feide_realms: realms,
            },
        ));
        raw.network_locs.push(network_locs);
        raw.alias_locs.push(alias_locs);
        raw.realm_locs.push(realm_locs);
    }

    /// Hints for Norwegian library numbers: they are not errors, since ISIL allows any
    /// suffix, but a mismatch is almost always a typo.
    pub(super) fn norwegian_number_warnings(
        &mut self,
        what: &str,
        id: &str,
        loc: Loc,
        kind: InstitutionKind,
        municipality: Option<&(String, Loc)>,
    ) {
        let Some(number) = id.strip_prefix("NO-") else {
            return;
        };
        if !(number.len() == 7 && number.bytes().all(|b| b.is_ascii_digit())) {
            self.warn_at(
                loc,
                format!("{what}: Norwegian ids are \"NO-\" and the 7-digit library number"),
            );
            return;
        }
        let expected = match kind {
            InstitutionKind::PublicLibrary | InstitutionKind::CountyLibrary => Some('2'),
            InstitutionKind::School => None,
            InstitutionKind::Other => None,
        };
        if let Some(first) = expected
            && !number.starts_with(first)
        {
            self.warn_at(
                loc,
                format!("{what}: library numbers of public and county libraries start with 2"),
            );
        }
        if kind == InstitutionKind::School && !(number.starts_with('3') || number.starts_with('4'))
        {
            self.warn_at(
                loc,
                format!("{what}: school library numbers start with 3 or 4"),
            );
        }
        if let Some((m, mloc)) = municipality
            && m.len() == 4
            && number.get(1..5) != Some(m.as_str())
        {
            self.warn_at(
                *mloc,
                format!(
                    "{what}: municipality {m} differs from digits 2–5 of the library number ({})",
                    number.get(1..5).unwrap_or("")
                ),
            );
        }
    }
}

/// ISIL: two upper-case letters, `-`, then 1–11 of `A-Z a-z 0-9 : / -`.
pub(super) fn check_isil(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    let ok = b.len() >= 4
        && b.len() <= 14
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_uppercase()
        && b[2] == b'-'
        && b[3..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'/' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{id}\" is not an ISIL (two upper-case letters, -, then 1–11 of A-Z a-z 0-9 : / -, \
             such as \"NO-2390700\")"
        ))
    }
}

/// The 7-digit library number of a Norwegian ISIL.
pub(crate) fn bare_number(id: &str) -> Option<&str> {
    id.strip_prefix("NO-")
        .filter(|n| n.len() == 7 && n.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn parse_network(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!("\"{s}\" is not a network (write a CIDR such as \"192.0.2.0/24\" or an address)")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "network \"{s}\" has host bits set (did you mean \"{}\"?)",
            net.trunc()
        ));
    }
    Ok(net)
}
