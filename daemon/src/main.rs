use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gapscoped::{
    check,
    config::{self, Config},
    daemon,
    error::{EXIT_USAGE, UsageError},
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
    /// Validate the configuration file and exit.
    CheckConfig,
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
            .map(|c| {
                println!(
                    "{}: OK ({} services)",
                    cli.config.display(),
                    c.services.len()
                );
            })
            .map_err(anyhow::Error::from),
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
