//! The offline commands: `check-policy` and `decide`. They write to the given streams and
//! return the process exit code, so tests can run them without spawning a process.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;
use serde::ser::SerializeMap;

use policy::ids::{InstitutionId, SubjectKey};
use policy::pseudonym::PseudonymKey;
use policy::subject::{Affiliation, Age, Subject};
use policy::{self, Decision, Policy, Release, release::Value};

/// Exit codes of `decide`.
pub const EXIT_PERMIT: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_DENY: i32 = 2;

/// `portvakt check-policy DIR`: exit 0 and a one-line summary on stdout (warnings on
/// stderr), or exit 1 and every diagnostic, then `N errors`, on stderr.
pub fn check_policy(dir: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match policy::load_dir(dir) {
        Ok((policy, warnings)) => {
            for w in &warnings {
                let _ = writeln!(err, "{w}");
            }
            let _ = writeln!(out, "ok: {}", policy.summary());
            0
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            1
        }
    }
}

/// The subject and circumstances of one `decide` run.
#[derive(Debug)]
pub struct DecideArgs<'a> {
    pub policy_dir: &'a Path,
    pub service: &'a str,
    pub affiliation: Affiliation,
    pub institutions: Vec<String>,
    pub birth_date: Option<&'a str>,
    pub birth_year: Option<i16>,
    pub ip: Option<&'a str>,
    pub at: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub pseudonym_key_file: Option<&'a Path>,
}

/// `portvakt decide`: one JSON object on stdout; exit 0 permit, 2 deny, 1 error (one line
/// on stderr).
pub fn decide(args: &DecideArgs<'_>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match run_decide(args, err) {
        Ok((json, code)) => {
            let _ = writeln!(out, "{json}");
            code
        }
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            EXIT_ERROR
        }
    }
}

fn run_decide(args: &DecideArgs<'_>, err: &mut dyn Write) -> Result<(String, i32), String> {
    let now = match args.at {
        None => Timestamp::now(),
        Some(s) => parse_at(s)?,
    };
    let ip = args
        .ip
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("--ip: \"{s}\" is not an IP address"))
        })
        .transpose()?;
    let age = match (args.birth_date, args.birth_year) {
        (Some(d), _) => Age::BirthDate(
            d.parse::<Date>()
                .ok()
                .filter(|_| d.len() == 10)
                .ok_or_else(|| format!("--birth-date: \"{d}\" is not a date (YYYY-MM-DD)"))?,
        ),
        (None, Some(y)) => Age::BirthYear(y),
        (None, None) => Age::Unknown,
    };
    let key = args
        .pseudonym_key_file
        .map(|path| {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the pseudonym key {}: {e}", path.display()))?;
            PseudonymKey::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))
        })
        .transpose()?;

    let (policy, _warnings) = policy::load_dir(args.policy_dir).map_err(|e| {
        let n = e.error_count();
        format!(
            "the policy in {} has {n} {}; run `portvakt check-policy {}` to see {}",
            args.policy_dir.display(),
            if n == 1 { "error" } else { "errors" },
            args.policy_dir.display(),
            if n == 1 { "it" } else { "them" },
        )
    })?;
    for i in &args.institutions {
        if policy.institution(i).is_none() {
            let _ = writeln!(
                err,
                "warning: --institution \"{i}\" is not in the policy and is skipped"
            );
        }
    }

    let subject = Subject {
        key: SubjectKey::new(args.subject.unwrap_or("")),
        affiliation: args.affiliation,
        institutions: args
            .institutions
            .iter()
            .map(|s| InstitutionId::new(s.as_str()))
            .collect(),
        age,
    };
    let decision = policy::decide(&policy, &subject, args.service, ip, now);
    // Without a subject key there is no person to make a pseudonym for.
    let key = key.filter(|_| args.subject.is_some());
    Ok(render(
        &policy,
        &subject,
        args.service,
        &decision,
        key.as_ref(),
    ))
}

/// Renders a decision as the JSON object of interfaces.md, with its exit code.
pub fn render(
    policy: &Policy,
    subject: &Subject,
    service: &str,
    decision: &Decision,
    key: Option<&PseudonymKey>,
) -> (String, i32) {
    #[derive(Serialize)]
    struct PermitJson<'a> {
        decision: &'static str,
        service: &'a str,
        institution: &'a str,
        onsite: bool,
        release: ReleaseJson<'a>,
    }
    #[derive(Serialize)]
    struct DenyJson<'a> {
        decision: &'static str,
        service: &'a str,
        reason: &'static str,
        message: &'static str,
        message_en: &'static str,
    }
    let (json, code) = match decision {
        Decision::Permit(p) => {
            let released = policy::release(policy, p, subject, key);
            (
                serde_json::to_string(&PermitJson {
                    decision: "permit",
                    service: p.service.as_str(),
                    institution: p.institution.as_str(),
                    onsite: p.onsite,
                    release: ReleaseJson(&released),
                }),
                EXIT_PERMIT,
            )
        }
        Decision::Deny(r) => (
            serde_json::to_string(&DenyJson {
                decision: "deny",
                service,
                reason: r.as_str(),
                message: r.message_nb(),
                message_en: r.message_en(),
            }),
            EXIT_DENY,
        ),
    };
    match json {
        Ok(s) => (s, code),
        Err(e) => (format!("{{\"error\":\"{e}\"}}"), EXIT_ERROR),
    }
}

/// The released attributes as a JSON object, in the service's `release` order.
struct ReleaseJson<'a>(&'a Release);

impl Serialize for ReleaseJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.attributes.len()))?;
        for (attr, value) in &self.0.attributes {
            match value {
                Value::Text(t) => map.serialize_entry(&attr.name(), t)?,
                Value::Bool(b) => map.serialize_entry(&attr.name(), b)?,
            }
        }
        map.end()
    }
}

/// `--at`: a date (noon in Europe/Oslo, safely inside that day) or an RFC 3339 instant.
fn parse_at(s: &str) -> Result<Timestamp, String> {
    if s.len() == 10
        && let Ok(d) = s.parse::<Date>()
    {
        return policy::oslo()
            .to_timestamp(d.at(12, 0, 0, 0))
            .map_err(|e| format!("--at: {e}"));
    }
    s.parse::<Timestamp>().map_err(|_| {
        format!("--at: \"{s}\" is neither a date (YYYY-MM-DD) nor an RFC 3339 instant")
    })
}
