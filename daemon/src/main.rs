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
    /// Read a password from stdin and print its bcrypt hash, for
    /// `basic_auth_users` in the web config.
    HashPassword {
        /// bcrypt cost: each step doubles the work of every login.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=16))]
        cost: u32,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
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
        Command::Run => Config::load(&cli.config)
            .map_err(anyhow::Error::from)
            .and_then(daemon::run),
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

fn hash_password(cost: u32) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};
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
