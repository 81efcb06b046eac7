//! The `portvakt` command line: arguments → config → telemetry → server.
//!
//! Usage errors and operator mistakes are one clear line on stderr and exit code 1 (2 is
//! reserved for `decide`'s "deny"), never a panic or a backtrace.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::cli;
use policy::subject::Affiliation;

/// mimalloc rather than the system allocator: a proxied request allocates and frees many
/// small buffers (headers, the rewriter's tokens, body chunks), and glibc's malloc and free
/// were about a sixth of the instructions per request in the load test's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// The policy directory to run on.
        #[arg(long, value_name = "DIR", default_value = "demo/policy")]
        policy: PathBuf,
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

fn main() -> ExitCode {
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
        } => run_async(gateway::launch::demo(port, admin_port, policy)),
        Command::Serve { config } => run_async(gateway::launch::serve(config)),
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => match gateway::keys::generate(&out) {
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
        Command::CheckPolicy { dir } => cli::check_policy(&dir, &mut out, &mut err),
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
        } => cli::decide(
            &cli::DecideArgs {
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

/// Runs a server command on a multi-threaded runtime; its error is one line on stderr.
fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => 0,
        Err(e) if e.contains(": error: ") => {
            // Already in `FILE:LINE:COL: error: …` form, one line per mistake.
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
