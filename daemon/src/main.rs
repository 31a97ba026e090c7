//! The `gapscoped` command: `run` (the daemon, `daemon::run`; the
//! default), `check` (what this host supports and how to fix what it
//! lacks), `check-config`, `explain` (the idle-time report of a running
//! daemon) and the web config's password hashing. `lib.rs` maps the
//! modules.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gapscoped::{
    check,
    config::{self, Config},
    daemon,
    error::{EXIT_USAGE, UsageError},
    web,
};

/// Gapscope's daemon: why is the GPU idle?
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Trace the configured services and serve metrics (the default).
    Run,
    /// Say what this host supports and how to fix what it lacks.
    Check {
        /// Instead, say what gapscoped finds in this process: its
        /// interpreter and its GIL, and why anything is missing.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Validate the configuration file (and the web config it names) and exit.
    CheckConfig,
    /// Why was the GPU idle? The explain report of a running gapscoped:
    /// GPU idle time by cause, the CPU side, kernels and launches per
    /// token, per load-generator phase.
    Explain {
        /// A [[service]] name from the configuration.
        #[arg(required_unless_present = "compare")]
        service: Option<String>,
        /// Two services side by side instead.
        #[arg(long, num_args = 2, value_names = ["SERVICE_A", "SERVICE_B"], conflicts_with = "service")]
        compare: Option<Vec<String>>,
        /// How far back to look (s, m or h).
        #[arg(long, default_value = "60s")]
        window: String,
        /// gapscoped's address; by default daemon.listen from the
        /// configuration file.
        #[arg(long)]
        url: Option<String>,
        /// Print the report's JSON instead.
        #[arg(long)]
        json: bool,
        /// Price of one GPU-hour in US dollars: the report adds what each
        /// cause of idle time loses per hour (by default [explain]
        /// gpu_hour_usd of the running gapscoped).
        #[arg(long, value_name = "USD", value_parser = parse_gpu_hour_usd)]
        gpu_hour_usd: Option<f64>,
        /// Predict what removing these causes together would buy
        /// (comma-separated cause labels: serialization,syscall_sleep;
        /// serialization:CODEC.OP names one serialization function, as
        /// in serialization:json.encode).
        #[arg(long, value_name = "CAUSES", value_parser = parse_what_if)]
        what_if: Option<String>,
    },
    /// Write a Chrome/Perfetto trace of one service from a running
    /// gapscoped: its threads' states, GIL waits, serialization, CUDA
    /// calls, the GPU's kernels and idle gaps by cause, the load
    /// generator's phases. Open it at ui.perfetto.dev.
    Trace {
        /// A [[service]] name from the configuration.
        #[arg(long)]
        service: String,
        /// How far back (s, m or h; at most [timeline] retention_s).
        #[arg(long, default_value = "30s")]
        window: String,
        /// Where to write the trace (JSON).
        #[arg(long)]
        out: std::path::PathBuf,
        /// gapscoped's address; by default daemon.listen from the
        /// configuration file.
        #[arg(long)]
        url: Option<String>,
    },
    /// Read a password from stdin and print its bcrypt hash, for
    /// `basic_auth_users` in the web config.
    HashPassword {
        /// bcrypt cost: each step doubles the work of every login.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=16))]
        cost: u32,
    },
}

fn main() -> ExitCode {
    let mut log =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    log.format_target(false);
    // Under systemd, stderr goes to the journal: a syslog priority prefix
    // gives each line its PRIORITY field (journalctl -p warning), and the
    // journal has its own timestamps.
    if stderr_is_journal() {
        log.format(|buf, record| {
            use std::io::Write as _;
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}", record.args())
        });
    }
    log.init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE as u8 } else { 0 });
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Check { pid: Some(pid) } => {
            return if check::process(pid) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Check { pid: None } => {
            return if check::run() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::CheckConfig => Config::load(&cli.config)
            .and_then(|c| {
                let web = web::Prepared::load(c.daemon.web_config.as_deref())?;
                println!(
                    "{}: OK ({} services)",
                    cli.config.display(),
                    c.services.len()
                );
                if let (Some(web), Some(path)) = (web, &c.daemon.web_config) {
                    println!("{}: OK ({})", path.display(), web.describe());
                }
                Ok(())
            })
            .map_err(anyhow::Error::from),
        Command::HashPassword { cost } => hash_password(cost),
        Command::Explain {
            service,
            compare,
            window,
            url,
            json,
            gpu_hour_usd,
            what_if,
        } => explain_command(
            &cli.config,
            service,
            compare,
            url,
            json,
            &ReportAsk {
                window: &window,
                gpu_hour_usd,
                what_if: what_if.as_deref(),
            },
        ),
        Command::Trace {
            service,
            window,
            out,
            url,
        } => trace_command(&cli.config, &service, &window, &out, url),
        Command::Run => Config::load(&cli.config)
            .map_err(anyhow::Error::from)
            .and_then(|c| daemon::run(c, cli.config.clone())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<UsageError>() {
            Some(usage) => {
                eprintln!("gapscoped: {usage}");
                ExitCode::from(EXIT_USAGE as u8)
            }
            None => {
                eprintln!("gapscoped: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The daemon's address: --url, else daemon.listen from the
/// configuration (the default address when it cannot be read).
fn daemon_url(config_path: &std::path::Path, url: Option<String>) -> String {
    match url {
        Some(u) => u,
        None => match Config::load(config_path) {
            Ok(c) => format!("http://{}", c.daemon.listen),
            Err(_) => format!("http://{}", config::DEFAULT_LISTEN),
        },
    }
}

/// A --window that is a duration, or the usage error saying how to write
/// one.
fn check_window(window: &str) -> Result<(), UsageError> {
    match gapscoped::explain::report::parse_window(window) {
        Some(_) => Ok(()),
        None => Err(UsageError::new(
            format!("--window {window:?} is not a duration"),
            "use seconds, minutes or hours: --window 60s, --window 5m",
        )),
    }
}

fn trace_command(
    config_path: &std::path::Path,
    service: &str,
    window: &str,
    out: &std::path::Path,
    url: Option<String>,
) -> anyhow::Result<()> {
    check_window(window)?;
    let base = daemon_url(config_path, url);
    let text = gapscoped::explain::client::fetch_trace(&base, service, window)?;
    // Written beside the target and renamed: a reader never sees half.
    let partial = out.with_extension("json.partial");
    std::fs::write(&partial, &text)
        .and_then(|()| std::fs::rename(&partial, out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            UsageError::new(
                format!("cannot write {}: {e}", out.display()),
                "pick a --out path in a directory you can write",
            )
        })?;
    eprintln!(
        "wrote {} ({:.1} MB) — open it at https://ui.perfetto.dev or chrome://tracing",
        out.display(),
        text.len() as f64 / 1e6
    );
    Ok(())
}

fn parse_what_if(v: &str) -> Result<String, String> {
    gapscoped::explain::report::parse_what_if(v)
        .map(|_| v.to_string())
        .map_err(|(problem, fix)| format!("{problem} ({fix})"))
}

fn parse_gpu_hour_usd(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .map_err(|_| format!("{v:?} is not a number"))
        .and_then(|usd| config::check_gpu_hour_usd(usd).map_err(str::to_string))
}

/// What `gapscoped explain` asks of the report.
struct ReportAsk<'a> {
    window: &'a str,
    gpu_hour_usd: Option<f64>,
    what_if: Option<&'a str>,
}

fn explain_command(
    config_path: &std::path::Path,
    service: Option<String>,
    compare: Option<Vec<String>>,
    url: Option<String>,
    json: bool,
    ask: &ReportAsk,
) -> anyhow::Result<()> {
    use gapscoped::explain::{client, render};
    let window = ask.window;
    check_window(window)?;
    let base = daemon_url(config_path, url);
    let fetch =
        |name: &str| client::fetch_report(&base, name, window, ask.gpu_hour_usd, ask.what_if);
    match compare {
        Some(pair) => {
            let (a, b) = (fetch(&pair[0])?, fetch(&pair[1])?);
            if json {
                println!("{}", serde_json::json!({ "a": a, "b": b }));
            } else {
                print!("{}", render::compare(&a, &b));
            }
        }
        None => {
            let r = fetch(service.as_deref().unwrap_or_default())?;
            if json {
                println!("{r}");
            } else {
                print!("{}", render::report(&r));
            }
        }
    }
    Ok(())
}

/// Whether stderr is the journal's stream: systemd's `JOURNAL_STREAM`
/// names its device and inode (a child with its stderr elsewhere inherits
/// the variable, not the stream).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    named.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}

fn hash_password(cost: u32) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _};
    if std::io::stdin().is_terminal() {
        eprintln!("password (echoed; pipe it in to keep it out of the terminal):");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(UsageError::new(
            "no password on stdin",
            "pipe one in: printf %s 'secret' | gapscoped hash-password",
        )
        .into());
    }
    println!("{}", bcrypt::hash(password, cost)?);
    Ok(())
}
