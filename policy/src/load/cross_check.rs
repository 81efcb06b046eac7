//! The cross-checks, once every table has been read: unique ids, aliases and realms,
//! references between tables, host labels, overlapping networks; then the indexes of the
//! immutable [`Policy`].

use std::collections::BTreeMap;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::ids::InstitutionId;
use crate::model::{
    Access, Entitlement, Grant, Group, InstIdx, Institution, Location, Policy, Service, SvcIdx,
};
use crate::network::NetworkTable;

use super::institution::bare_number;
use super::raw::Raw;
use super::toolkit::{Checker, Loc, suggest_owned};

impl Checker<'_> {
    /// Uniqueness, references and the indexes. Returns the policy when everything resolved;
    /// the caller still refuses it if any error was reported anywhere.
    pub(super) fn cross_check(&mut self, raw: Raw, parse_failed: bool) -> Option<Policy> {
        let Raw {
            institutions: raw_insts,
            groups: raw_groups,
            services: raw_services,
            entitlements: raw_ents,
            network_locs,
            alias_locs,
            realm_locs,
            saml_entity_locs,
            oidc_client_locs,
            known_institutions,
            known_groups,
            known_services,
        } = raw;
        // Report a dangling reference only when it is really unknown, and only when every
        // file parsed (a reference into a file with a syntax error is not the mistake).
        let report_unknown =
            |known: &rustc_hash::FxHashSet<String>, id: &str| !parse_failed && !known.contains(id);

        // Institutions: unique ids, then sorted so indexes follow id order.
        let mut first_seen: BTreeMap<String, Loc> = BTreeMap::new();
        let mut order: Vec<usize> = Vec::new();
        for (i, (loc, inst)) in raw_insts.iter().enumerate() {
            let id = inst.id.as_str().to_owned();
            if let Some(prev) = first_seen.get(&id) {
                let p = self.place(*prev);
                self.error_at(
                    *loc,
                    format!("institution \"{id}\" is defined twice (first at {p})"),
                );
            } else {
                first_seen.insert(id, *loc);
                order.push(i);
            }
        }
        order.sort_by(|a, b| raw_insts[*a].1.id.cmp(&raw_insts[*b].1.id));
        let institutions: Vec<Institution> =
            order.iter().map(|&i| raw_insts[i].1.clone()).collect();

        // Every way to name an institution, each owned by exactly one.
        let mut refs: FxHashMap<String, InstIdx> = FxHashMap::default();
        for (idx, inst) in institutions.iter().enumerate() {
            refs.insert(inst.id.as_str().to_owned(), idx as InstIdx);
        }
        for (idx, inst) in institutions.iter().enumerate() {
            if let Some(number) = bare_number(inst.id.as_str()) {
                refs.entry(number.to_owned()).or_insert(idx as InstIdx);
            }
        }
        for (idx, &ri) in order.iter().enumerate() {
            let inst = &institutions[idx];
            for (alias, loc) in inst.aliases.iter().zip(&alias_locs[ri]) {
                match refs.get(alias.as_str()) {
                    Some(&owner) if owner as usize == idx => {}
                    Some(&owner) => self.error_at(
                        *loc,
                        format!(
                            "institution \"{}\": alias \"{alias}\" is already used by \
                             institution \"{}\"",
                            inst.id, institutions[owner as usize].id
                        ),
                    ),
                    None => {
                        refs.insert(alias.clone(), idx as InstIdx);
                    }
                }
            }
        }

        // Feide realms, each claimed by one institution.
        let mut realms: FxHashMap<String, InstIdx> = FxHashMap::default();
        for (idx, &ri) in order.iter().enumerate() {
            let inst = &institutions[idx];
            for (realm, loc) in inst.feide_realms.iter().zip(&realm_locs[ri]) {
                match realms.get(realm) {
                    Some(&owner) if owner as usize == idx => {}
                    Some(&owner) => self.error_at(
                        *loc,
                        format!(
                            "institution \"{}\": Feide realm \"{realm}\" is already claimed by \
                             institution \"{}\"",
                            inst.id, institutions[owner as usize].id
                        ),
                    ),
                    None => {
                        realms.insert(realm.clone(), idx as InstIdx);
                    }
                }
            }
        }

        // Networks: the lookup table, and a warning where institutions overlap.
        let mut networks = NetworkTable::default();
        let mut spans: Vec<(u128, u128, bool, usize, Loc, IpNet)> = Vec::new();
        for (idx, &ri) in order.iter().enumerate() {
            for (net, loc) in institutions[idx].networks.iter().zip(&network_locs[ri]) {
                networks.insert(*net, idx as InstIdx);
                let (lo, hi, v6) = match net {
                    IpNet::V4(n) => (
                        u128::from(u32::from(n.network())),
                        u128::from(u32::from(n.broadcast())),
                        false,
                    ),
                    IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), true),
                };
                spans.push((lo, hi, v6, idx, *loc, *net));
            }
        }
        spans.sort_by_key(|s| (s.2, s.0, std::cmp::Reverse(s.1)));
        let mut reach: Option<(u128, bool, usize, IpNet)> = None;
        for &(lo, hi, v6, idx, loc, net) in &spans {
            if let Some((end, fam, owner, owner_net)) = reach
                && fam == v6
                && lo <= end
                && owner != idx
            {
                self.warn_at(
                    loc,
                    format!(
                        "institution \"{}\": network {net} overlaps {owner_net} of institution \
                         \"{}\" (the longest prefix wins; on a tie, the smallest id)",
                        institutions[idx].id, institutions[owner].id
                    ),
                );
            }
            match reach {
                Some((end, fam, ..)) if fam == v6 && end >= hi => {}
                _ => reach = Some((hi, v6, idx, net)),
            }
        }

        // Groups.
        let mut groups: Vec<Group> = Vec::new();
        let mut group_index: FxHashMap<String, usize> = FxHashMap::default();
        let mut group_first: FxHashMap<String, Loc> = FxHashMap::default();
        for (loc, group, member_locs) in raw_groups {
            if let Some(prev) = group_first.get(&group.id) {
                let p = self.place(*prev);
                self.error_at(
                    loc,
                    format!("group \"{}\" is defined twice (first at {p})", group.id),
                );
                continue;
            }
            group_first.insert(group.id.clone(), loc);
            let mut seen = Vec::new();
            for (m, mloc) in group.members.iter().zip(&member_locs) {
                if !first_seen.contains_key(m.as_str()) {
                    if report_unknown(&known_institutions, m.as_str()) {
                        let hint = self.reference_hint(m.as_str(), &refs, &institutions);
                        self.error_at(
                            *mloc,
                            format!("group \"{}\": unknown institution \"{m}\"{hint}", group.id),
                        );
                    }
                } else if seen.contains(m) {
                    self.warn_at(
                        *mloc,
                        format!("group \"{}\": \"{m}\" is listed twice", group.id),
                    );
                } else {
                    seen.push(m.clone());
                }
            }
            group_index.insert(group.id.clone(), groups.len());
            groups.push(group);
        }

        // Services: unique ids and federation identifiers.
        let mut svc_first: BTreeMap<String, Loc> = BTreeMap::new();
        let mut entity_first: FxHashMap<String, (Loc, String)> = FxHashMap::default();
        let mut client_first: FxHashMap<String, (Loc, String)> = FxHashMap::default();
        let mut services: Vec<Service> = Vec::new();
        for (i, (loc, svc, id_loc)) in raw_services.into_iter().enumerate() {
            let id = svc.id.as_str().to_owned();
            if let Some(prev) = svc_first.get(&id) {
                let p = self.place(*prev);
                self.error_at(
                    id_loc.unwrap_or(loc),
                    format!("service \"{id}\" is defined twice (first at {p})"),
                );
                continue;
            }
            svc_first.insert(id.clone(), loc);
            let (key, table, seen) = match &svc.access {
                Access::Saml(s) => (s.entity_id.clone(), saml_entity_locs[i], &mut entity_first),
                Access::Oidc(o) => (o.client_id.clone(), oidc_client_locs[i], &mut client_first),
                _ => {
                    services.push(svc);
                    continue;
                }
            };
            let what = if matches!(svc.access, Access::Saml(_)) {
                "SAML entity_id"
            } else {
                "OIDC client_id"
            };
            if let Some((_, other)) = seen.get(&key) {
                let other = other.clone();
                self.error_at(
                    table.unwrap_or(loc),
                    format!(
                        "service \"{id}\": {what} \"{key}\" is already used by service \"{other}\""
                    ),
                );
            } else {
                seen.insert(key, (table.unwrap_or(loc), id));
            }
            services.push(svc);
        }
        services.sort_by(|a, b| a.id.cmp(&b.id));
        let service_index: FxHashMap<String, SvcIdx> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str().to_owned(), i as SvcIdx))
            .collect();

        // Entitlements: references, then one grant per institution and service.
        let mut grants: FxHashMap<(InstIdx, SvcIdx), Vec<Grant>> = FxHashMap::default();
        let mut entitlements = Vec::new();
        let mut entitled_services = vec![false; services.len()];
        for (loc, e) in raw_ents {
            let what = match (&e.institution, &e.group) {
                (Some(i), _) => format!("entitlement {} → {}", i.0, e.service.0),
                (_, Some(g)) => format!("entitlement {} → {}", g.0, e.service.0),
                _ => "entitlement".into(),
            };
            let svc = service_index.get(&e.service.0).copied();
            // Counted even when this entitlement has its own errors: the service has one, so
            // "has no entitlements" would be a second, misleading finding.
            if let Some(si) = svc {
                entitled_services[si as usize] = true;
            }
            if svc.is_none() && report_unknown(&known_services, &e.service.0) {
                let hint = suggest_owned(&e.service.0, known_services.iter())
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                self.error_at(
                    e.service.1,
                    format!("{what}: unknown service \"{}\"{hint}", e.service.0),
                );
            }
            let members: Option<Vec<InstIdx>> = match (&e.institution, &e.group) {
                (Some((id, iloc)), _) => match first_seen.contains_key(id) {
                    true => refs.get(id.as_str()).map(|&i| vec![i]),
                    false => {
                        if report_unknown(&known_institutions, id) {
                            let hint = self.reference_hint(id, &refs, &institutions);
                            self.error_at(
                                *iloc,
                                format!("{what}: unknown institution \"{id}\"{hint}"),
                            );
                        }
                        None
                    }
                },
                (_, Some((gid, gloc))) => match group_index.get(gid) {
                    Some(&g) => Some(
                        groups[g]
                            .members
                            .iter()
                            .filter_map(|m| {
                                first_seen
                                    .contains_key(m.as_str())
                                    .then(|| refs.get(m.as_str()).copied())
                                    .flatten()
                            })
                            .collect(),
                    ),
                    None => {
                        if report_unknown(&known_groups, gid) {
                            let hint = suggest_owned(gid, known_groups.iter())
                                .map(|s| format!(" (did you mean \"{s}\"?)"))
                                .unwrap_or_default();
                            self.error_at(*gloc, format!("{what}: unknown group \"{gid}\"{hint}"));
                        }
                        None
                    }
                },
                _ => None,
            };
            let (Some(si), Some(members), Some(from)) = (svc, members, e.from) else {
                continue;
            };
            let service = &services[si as usize];
            let location = e.location.unwrap_or(service.location);
            if location == Location::Onsite
                && let Some(lloc) = e.location_loc.or(Some(loc))
                && members
                    .iter()
                    .all(|&m| institutions[m as usize].networks.is_empty())
                && e.location.is_some()
            {
                self.warn_at(
                    lloc,
                    format!(
                        "{what}: location = \"onsite\" but no entitled institution has networks"
                    ),
                );
            }
            let grant = Grant {
                from,
                until: e.until,
                enabled: e.enabled,
                audience: e.audience.unwrap_or(service.audience),
                location,
            };
            for m in members {
                grants.entry((m, si)).or_default().push(grant);
            }
            entitlements.push(Entitlement {
                institution: e.institution.map(|i| InstitutionId::new(i.0)),
                group: e.group.map(|g| g.0),
                service: service.id.clone(),
                from,
                until: e.until,
                enabled: e.enabled,
                audience: e.audience,
                location: e.location,
            });
        }
        if !parse_failed {
            for (svc, entitled) in services.iter().zip(&entitled_services) {
                if !entitled && let Some(loc) = svc_first.get(svc.id.as_str()) {
                    self.warn_at(
                        *loc,
                        format!(
                            "service \"{}\" has no entitlements, so nobody can use it",
                            svc.id
                        ),
                    );
                }
            }
        }

        // Host labels of proxied origins: `<service>` and `<service>--<n>`, each naming one
        // origin. A service id that looks like another's derived label would be ambiguous.
        let mut host_labels: FxHashMap<String, (SvcIdx, usize)> = FxHashMap::default();
        for (si, svc) in services.iter().enumerate() {
            if let Access::Proxy(p) = &svc.access {
                for n in 0..=p.hosts.len() {
                    host_labels.insert(
                        crate::model::host_label(svc.id.as_str(), n),
                        (si as SvcIdx, n),
                    );
                }
            }
        }
        for svc in &services {
            let id = svc.id.as_str();
            if let Some(&(owner, n)) = host_labels.get(id)
                && n > 0
                && let Some(loc) = svc_first.get(id)
            {
                self.error_at(
                    *loc,
                    format!(
                        "service \"{id}\": the id is also the host label of origin {n} of service \"{}\" ([service.proxy] hosts); choose another id",
                        services[owner as usize].id
                    ),
                );
            }
        }

        Some(Policy {
            institutions,
            groups,
            services,
            entitlements,
            institution_refs: refs,
            service_index,
            host_labels,
            realms,
            grants,
            networks,
        })
    }

    /// A hint when an institution was named by an alias or number where an id is needed.
    fn reference_hint(
        &self,
        name: &str,
        refs: &FxHashMap<String, InstIdx>,
        institutions: &[Institution],
    ) -> String {
        if let Some(&i) = refs.get(name) {
            return format!(
                " (that is an alias of \"{}\"; use the id here)",
                institutions[i as usize].id
            );
        }
        suggest_owned(name, institutions.iter().map(|i| i.id.as_str()))
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default()
    }
}
