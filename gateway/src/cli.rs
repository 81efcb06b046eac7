//! The `portvakt` command line: arguments → the command. The offline commands,
//! `check-policy` and `decide`, write to the given streams and return the process exit
//! code, so tests can run them without spawning a process; `serve` and `demo` go through
//! `start`.
//!
//! Usage errors and operator mistakes are one clear line on stderr and exit code 1 (2 is
//! reserved for `decide`'s "deny"), never a panic or a backtrace.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;
use serde::ser::SerializeMap;

use policy::ids::{InstitutionId, SubjectKey};
use policy::pseudonym::PseudonymKey;
use policy::subject::{Affiliation, Age, Subject};

use crate::error::StartError;
use policy::{self, Decision, Policy, Release, release::Value};

/// Exit codes of `decide`.
pub const EXIT_PERMIT: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_DENY: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "portvakt",
    version,
    about = "One key to the library's digital content"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on loopback in one process: the gateway on the demo policy, a demo
    /// library system speaking SIP2, demo cards. Prints what to open.
    Demo {
        /// Port of the public listener (127.0.0.1).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port of the admin listener (127.0.0.1).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// Run on this policy directory instead of the bundled demo county's.
        #[arg(long, value_name = "DIR")]
        policy: Option<PathBuf>,
    },
    /// The gateway.
    Serve {
        /// The config file [default: ./portvakt.toml; if that is missing, all defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Key material.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate a policy directory: a summary, or every error with file:line:col.
    CheckPolicy {
        /// The policy directory (every *.toml file directly in it).
        dir: PathBuf,
    },
    /// One decision, printed as one JSON object. Exit 0 permit, 2 deny, 1 error.
    Decide {
        #[arg(long, value_name = "DIR")]
        policy: PathBuf,
        #[arg(long, value_name = "ID")]
        service: String,
        /// patron, student, staff or walk_in.
        #[arg(long, default_value = "patron", value_parser = parse_affiliation)]
        affiliation: Affiliation,
        /// The subject's institutions, home institution first (repeatable).
        #[arg(long = "institution", value_name = "ID")]
        institutions: Vec<String>,
        #[arg(long, value_name = "YYYY-MM-DD", conflicts_with = "birth_year")]
        birth_date: Option<String>,
        #[arg(long, value_name = "YYYY", value_parser = clap::value_parser!(i16).range(1800..=9999))]
        birth_year: Option<i16>,
        /// The client's IP address (for on-site access).
        #[arg(long, value_name = "ADDR")]
        ip: Option<String>,
        /// A date (YYYY-MM-DD) or an RFC 3339 instant; default now.
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
        /// The subject key, to show the pseudonym (e.g. card:NO-2390700:12345).
        #[arg(long, value_name = "KEY")]
        subject: Option<String>,
        #[arg(long, value_name = "FILE")]
        pseudonym_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Creates the pseudonym key, session key, and the signing key and certificate for
    /// SAML and OIDC, with file modes 0600.
    Generate {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn parse_affiliation(s: &str) -> Result<Affiliation, String> {
    Affiliation::parse(s).ok_or_else(|| "use patron, student, staff or walk_in".to_owned())
}

/// The `portvakt` command: parses the arguments, runs the command, and returns its exit
/// code. The binary's `main` is this and nothing else.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => return usage_error(e),
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let code = match args.command {
        Command::Demo {
            port,
            admin_port,
            policy,
        } => run_async(crate::start::demo(port, admin_port, policy)),
        Command::Serve { config } => run_async(crate::start::serve(config)),
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => match crate::keys::generate(&out) {
            Ok(made) => {
                for (what, path) in [
                    ("pseudonym key", &made.pseudonym_key),
                    ("session key", &made.session_key),
                    ("signing key", &made.signing_key),
                    ("signing certificate", &made.signing_cert),
                ] {
                    println!("{what}: {}", path.display());
                }
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Command::CheckPolicy { dir } => check_policy(&dir, &mut out, &mut err),
        Command::Decide {
            policy,
            service,
            affiliation,
            institutions,
            birth_date,
            birth_year,
            ip,
            at,
            subject,
            pseudonym_key_file,
        } => decide(
            &DecideArgs {
                policy_dir: &policy,
                service: &service,
                affiliation,
                institutions,
                birth_date: birth_date.as_deref(),
                birth_year,
                ip: ip.as_deref(),
                at: at.as_deref(),
                subject: subject.as_deref(),
                pseudonym_key_file: pseudonym_key_file.as_deref(),
            },
            &mut out,
            &mut err,
        ),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Runs a server command on a multi-threaded runtime. A start-up error that says where
/// each mistake is (a config or a policy) is printed as its lines; any other as one
/// `error: …` line.
fn run_async(fut: impl std::future::Future<Output = Result<(), StartError>>) -> i32 {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)
        .and_then(|runtime| runtime.block_on(fut));
    match result {
        Ok(()) => 0,
        Err(e) if e.is_located() => {
            eprintln!("{e}");
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Help and version go to stdout with exit 0; anything else is one line on stderr, exit 1.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        print!("{e}");
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        eprint!("{e}");
        return ExitCode::from(1);
    }
    // clap spreads one mistake over several lines; keep what comes before "Usage:".
    let rendered = e.to_string();
    let words: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = if words.is_empty() {
        "error: invalid arguments".to_owned()
    } else {
        words.join(" ")
    };
    eprintln!("{line} (see portvakt --help)");
    ExitCode::from(1)
}

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

/// Renders a decision as the JSON object `docs/policy.md` describes, with its exit code.
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
