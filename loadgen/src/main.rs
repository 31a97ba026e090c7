//! gapscope-loadgen: see `lib.rs` for the map of modules.

use clap::Parser as _;
use gapscope_loadgen::{
    app,
    cli::{Cli, Command},
    compare,
};

/// mimalloc rather than glibc's allocator: a request's life allocates and
/// frees small blocks by the hundred (hyper's, the record's), where
/// glibc's consolidation and chunk unlinking cost a tenth of the client's
/// CPU at C=50.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        None => app::run(&cli.run),
        Some(Command::Run(args)) => app::run(args),
        Some(Command::Audit(args)) => app::audit(args),
        Some(Command::Compare(args)) => {
            let labels = match args.labels.split_once(',') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => ("A".into(), "B".into()),
            };
            compare::markdown(
                &args.a,
                &args.b,
                &compare::Options {
                    labels,
                    phase: args.phase.as_deref(),
                    gpu_hour_usd: args.gpu_hour_usd,
                    daily_tokens: args.daily_tokens,
                    plots: args.plots.as_deref(),
                },
            )
            .map(|table| {
                app::out_text(&table);
                app::EXIT_OK
            })
        }
    };
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("gapscope-loadgen: {e}");
            std::process::exit(app::EXIT_USAGE);
        }
    }
}
