//! A generated national-size policy, for benchmarks and load tests: about 800
//! institutions in 11 county groups plus a national group, 150 services of every access
//! mode, about 50 000 entitlements, and networks on every institution. Deterministic for a
//! given seed, written as TOML so that loading is measured too.

use std::fmt::Write;

/// Sizes of the generated policy.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub institutions: usize,
    pub services: usize,
    /// Direct entitlements per institution (group entitlements come on top).
    pub direct_per_institution: usize,
}

impl Size {
    /// About 800 institutions, 150 services, 50 000 entitlements.
    pub const NATIONAL: Size = Size {
        institutions: 800,
        services: 150,
        direct_per_institution: 62,
    };
}

/// A small, fast xorshift generator: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The id of generated institution `i`: libraries `NO-2…`, every eighth a school `NO-3…`.
pub fn institution_id(i: usize) -> String {
    let first = if i % 8 == 7 { 3 } else { 2 };
    format!("NO-{first}{:04}{:02}", 3000 + i / 100, i % 100)
}

/// The IPv4 on-site network of generated institution `i` (a /24 in 10.0.0.0/8).
pub fn institution_ipv4(i: usize) -> [u8; 4] {
    [10, (i / 256) as u8, (i % 256) as u8, 0]
}

pub fn service_id(s: usize) -> String {
    format!("svc-{s:03}")
}

/// Files `(name, text)`: institutions, groups, services and entitlements.
pub fn national(seed: u64, size: Size) -> Vec<(String, String)> {
    let mut rng = Rng(seed | 1);
    let mut inst = String::new();
    for i in 0..size.institutions {
        let [a, b, c, _] = institution_ipv4(i);
        let school = i % 8 == 7;
        let _ = writeln!(
            inst,
            "[[institution]]\nid = \"{}\"\nname = \"Bibliotek {i}\"\nkind = \"{}\"\n\
             municipality = \"{:04}\"\naliases = [\"sip-{i}\"]\n\
             networks = [\"{a}.{b}.{c}.0/24\", \"2001:db8:{i:x}::/48\"]\nwalk_in = {}\n{}",
            institution_id(i),
            if school { "school" } else { "public_library" },
            3000 + i / 100,
            i % 3 == 0,
            if school {
                format!("feide_realms = [\"skole{i}.example.no\"]\n")
            } else {
                String::new()
            },
        );
    }

    let counties = 11;
    let mut groups = String::new();
    for g in 0..counties {
        let members: Vec<String> = (0..size.institutions)
            .filter(|i| i % counties == g)
            .map(|i| format!("\"{}\"", institution_id(i)))
            .collect();
        let _ = writeln!(
            groups,
            "[[group]]\nid = \"county-{g}\"\nname = \"Fylke {g}\"\nmembers = [{}]\n",
            members.join(", ")
        );
    }
    let all: Vec<String> = (0..size.institutions)
        .map(|i| format!("\"{}\"", institution_id(i)))
        .collect();
    let _ = writeln!(
        groups,
        "[[group]]\nid = \"national\"\nname = \"Nasjonal avtale\"\nmembers = [{}]\n",
        all.join(", ")
    );

    let mut services = String::new();
    for s in 0..size.services {
        let id = service_id(s);
        let access = match s % 4 {
            0 => format!(
                "access = \"proxy\"\n[service.proxy]\norigin = \"https://{id}.vendor.example\"\n\
                 item_paths = [\"/item/**\"]\nsearch_paths = [\"/search\"]\n"
            ),
            1 => format!(
                "access = \"saml\"\n[service.saml]\nentity_id = \"https://{id}.vendor.example/sp\"\n\
                 acs_url = \"https://{id}.vendor.example/acs\"\n"
            ),
            2 => format!(
                "access = \"oidc\"\n[service.oidc]\nclient_id = \"{id}\"\n\
                 redirect_uris = [\"https://{id}.vendor.example/cb\"]\n\
                 start_url = \"https://{id}.vendor.example/\"\npublic = true\n"
            ),
            _ => format!(
                "access = \"link\"\n[service.link]\nurl = \"https://{id}.vendor.example/\"\n"
            ),
        };
        let extra = match s % 10 {
            3 => "min_age = 15\n",
            4 => "min_age = 18\nrelease = [\"pseudonym\", \"institution\", \"age_over_18\"]\n",
            5 => "location = \"onsite\"\naudience = [\"patron\", \"walk_in\"]\n",
            6 => "audience = [\"student\", \"staff\"]\n",
            _ => "",
        };
        // Top-level keys must come before the [service.<mode>] sub-table.
        let _ = writeln!(
            services,
            "[[service]]\nid = \"{id}\"\nname = \"Tjeneste {s}\"\n{extra}{access}"
        );
    }

    let mut ents = String::new();
    for g in 0..counties {
        for k in 0..30 {
            let s = (g * 7 + k * 5) % size.services;
            let _ = writeln!(
                ents,
                "[[entitlement]]\ngroup = \"county-{g}\"\nservice = \"{}\"\nfrom = 2024-01-01\n",
                service_id(s)
            );
        }
    }
    for s in (0..size.services).step_by(2) {
        let _ = writeln!(
            ents,
            "[[entitlement]]\ngroup = \"national\"\nservice = \"{}\"\nfrom = 2023-01-01\n",
            service_id(s)
        );
    }
    for i in 0..size.institutions {
        let start = rng.below(size.services);
        for k in 0..size.direct_per_institution.min(size.services) {
            let s = (start + k * 7) % size.services;
            let (from, until) = match rng.below(10) {
                0 => ("2020-01-01", Some("2022-12-31")),
                1 => ("2030-01-01", None),
                _ => ("2024-01-01", None),
            };
            let _ = write!(
                ents,
                "[[entitlement]]\ninstitution = \"{}\"\nservice = \"{}\"\nfrom = {from}\n",
                institution_id(i),
                service_id(s)
            );
            if let Some(u) = until {
                let _ = writeln!(ents, "until = {u}");
            }
            if rng.below(20) == 0 {
                let _ = writeln!(ents, "enabled = false");
            }
            ents.push('\n');
        }
    }

    vec![
        ("entitlements.toml".into(), ents),
        ("groups.toml".into(), groups),
        ("institutions.toml".into(), inst),
        ("services.toml".into(), services),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_generated_policy_loads_clean() {
        let size = Size {
            institutions: 40,
            services: 12,
            direct_per_institution: 5,
        };
        let (policy, warnings) = crate::load_files(national(7, size)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(policy.summary().institutions, 40);
        assert_eq!(policy.summary().services, 12);
        assert_eq!(policy.summary().groups, 12);
    }
}
