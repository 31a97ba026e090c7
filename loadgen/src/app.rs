//! The `run` and `audit` commands: from a plan to files on disk and a
//! summary on the terminal.

use std::{
    io::{BufWriter, IsTerminal},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use crate::{
    annotate::Annotator,
    audit::{self, Figures},
    cli::{AuditArgs, RunArgs},
    clock::{Clock, precise_timers},
    error::UsageError,
    exporter::{self, Exporter},
    flops::{self, ModelShape},
    http::SideClient,
    live::Live,
    plan::{ModelSpec, TelemetrySource},
    plot,
    prompts::{PromptGen, load_tokenizer},
    request::Client,
    results::{self, Context},
    runner,
    telemetry::Scraper,
    tls::Transport,
};

/// The per-request JSONL's write buffer: a streamed reply's line is a few
/// KiB (its token times), and at thousands of requests a second an 8 KiB
/// buffer made a write call every other request.
const JSONL_BUFFER: usize = 1 << 20;

/// Exit statuses.
pub const EXIT_OK: i32 = 0;
pub const EXIT_REQUEST_ERRORS: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CHECK_FAILED: i32 = 3;
/// Stopped by a signal: 128 + its number (130 SIGINT, 143 SIGTERM, 129
/// SIGHUP), as a shell reports it.
pub const EXIT_SIGNAL_BASE: i32 = 128;

pub fn run(args: &RunArgs) -> Result<i32, UsageError> {
    if args.find_max_goodput {
        return crate::search::run(args);
    }
    run_plan(args, &args.plan()?, args.out.as_deref()).map(|(code, _)| code)
}

/// One run of `plan`, its files in `out` (default
/// loadgen-results/RUN_ID): the exit status and the results.
pub(crate) fn run_plan(
    args: &RunArgs,
    plan: &crate::plan::Plan,
    out: Option<&std::path::Path>,
) -> Result<(i32, results::Results), UsageError> {
    let tokenizer = plan
        .prompts
        .tokenizer
        .as_deref()
        .map(load_tokenizer)
        .transpose()?
        .map(Arc::new);
    let prompts = PromptGen::new(&plan.prompts, plan.output.max_tokens, plan.seed)?;
    let exact_prompts = prompts.exact();
    let prefix_share = prompts.prefix_share(&plan.prompts);
    let model = ModelShape::from_spec(&plan.model)?;
    // What can be refused is refused before the results directory exists.
    let transport = Transport::new(&plan.tls)?;
    let metrics_listener = args
        .metrics_listen
        .as_deref()
        .map(exporter::bind)
        .transpose()?;
    let run_id = format!("{:016x}", rand::random::<u64>());
    let (out, jsonl_path, jsonl) = output_files(out, &run_id)?;
    // Timers to the microsecond on every thread that runs requests.
    precise_timers();
    let runtime = runtime(args.threads)?;
    // The bar only on a terminal; the opening line unless asked for quiet.
    let quiet = args.quiet || !std::io::stderr().is_terminal();
    if !args.quiet {
        eprintln!(
            "gapscope-loadgen: run {run_id} against {}: {} phases, {:.0} s; results in {}",
            plan.endpoint.url,
            plan.phases.len(),
            plan.total().as_secs_f64(),
            out.display()
        );
    }
    if let Some(key) = &plan.endpoint.api_key {
        // Taken from the environment, it is said even when quiet.
        if !args.quiet || key.source == "OPENAI_API_KEY" {
            eprintln!(
                "gapscope-loadgen: authenticating with the bearer token from {}",
                key.source
            );
        }
        if cleartext_off_host(&plan.endpoint.url) {
            eprintln!(
                "gapscope-loadgen: warning: the API key goes in clear text to {} (http:// off this host): use https:// or a tunnel",
                plan.endpoint.url
            );
        }
    }

    if plan.tls.insecure {
        eprintln!(
            "gapscope-loadgen: warning: --insecure: server certificates are not checked; the traffic is encrypted but anyone on the path can pose as the server"
        );
    }
    let (outcome, telemetry, clock, annotations, metrics_server) = runtime.block_on(async {
        let clock = Clock::start();
        let live = Arc::new(Live::default());
        let client = Arc::new(Client::new(
            &transport,
            Arc::new(plan.endpoint.clone()),
            plan.output.fixed,
            tokenizer,
            clock,
            u64::from_str_radix(&run_id, 16).unwrap_or(0),
            live.tokens.clone(),
        ));
        // gapscoped's password goes to gapscoped only.
        let to_gapscoped = SideClient::new(&transport, plan.gapscoped_auth.as_ref());
        let scraper = plan.telemetry.as_ref().map(|t| {
            let client = if t.source == TelemetrySource::Gapscoped {
                to_gapscoped.clone()
            } else {
                SideClient::new(&transport, None)
            };
            Scraper::start(t, clock, client)
        });
        let annotator = plan.gapscoped.as_deref().map(|g| {
            Arc::new(Annotator::new(
                g,
                to_gapscoped.clone(),
                run_id.clone(),
                plan.gapscoped_service.clone(),
                clock,
            ))
        });
        let progress = (!quiet).then(|| progress_bar(plan, live.clone(), clock));
        let exporter = metrics_listener.map(|listener| {
            let e = Arc::new(Exporter::new(plan, &run_id, live.clone()));
            (e.clone(), exporter::serve(e, listener))
        });
        let outcome = runner::run(
            plan,
            client,
            prompts,
            clock,
            live.clone(),
            runner::Outputs {
                annotator: annotator.clone(),
                exporter: exporter.as_ref().map(|(e, _)| e.clone()),
                jsonl: Some(Box::new(BufWriter::with_capacity(JSONL_BUFFER, jsonl))),
            },
        )
        .await;
        // No phase runs any more.
        live.set_phase("");
        if let Some((bar, task)) = progress {
            task.abort();
            bar.finish_and_clear();
        }
        // Let the last annotations go out.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let annotations = annotator.map(|a| {
            (
                a.posted.load(Ordering::Relaxed),
                a.failed.load(Ordering::Relaxed),
                a.requests_unposted.load(Ordering::Relaxed),
            )
        });
        let server = exporter.map(|(_, server)| server);
        (
            outcome,
            scraper.map(Scraper::stop),
            clock,
            annotations,
            server,
        )
    });

    let results = results::build(
        Context {
            plan,
            run_id: run_id.clone(),
            started_unix_ns: clock.origin_unix_ns,
            clock_origin_monotonic_ns: clock.origin_monotonic_ns,
            exact_prompts,
            client_threads: args.threads,
            prefix_share,
            model,
            telemetry,
            requests_jsonl: Some(jsonl_path.display().to_string()),
        },
        &outcome,
    );
    write_outputs(
        &results,
        &outcome,
        annotations,
        &out,
        jsonl_path,
        args.no_plots,
    )?;
    // The results are written: the final counts stay up for the last
    // scrape, unless the run was stopped (a signal ends the wait too).
    if let Some(server) = metrics_server {
        if let Some(s) = args
            .metrics_linger
            .filter(|_| outcome.interrupted.is_none())
        {
            runtime.block_on(linger(Duration::from_secs_f64(s)));
        }
        server.abort();
    }

    Ok((exit_code(&results, &outcome), results))
}

/// Waits `time`, or until SIGINT or SIGTERM.
async fn linger(time: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return tokio::time::sleep(time).await;
    };
    tokio::select! {
        _ = tokio::time::sleep(time) => {}
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// The results directory (`--out`, else `loadgen-results/RUN_ID`), and
/// the per-request JSONL file opened in it.
fn output_files(
    out: Option<&std::path::Path>,
    run_id: &str,
) -> Result<(PathBuf, PathBuf, std::fs::File), UsageError> {
    let out = out.map_or_else(
        || PathBuf::from("loadgen-results").join(run_id),
        PathBuf::from,
    );
    std::fs::create_dir_all(&out).map_err(|e| {
        UsageError::new(
            format!("cannot create {}: {e}", out.display()),
            "give --out a writable directory",
        )
    })?;
    let jsonl_path = out.join("requests.jsonl");
    let jsonl = std::fs::File::create(&jsonl_path).map_err(|e| {
        UsageError::new(
            format!("cannot create {}: {e}", jsonl_path.display()),
            "give --out a writable directory",
        )
    })?;

    Ok((out, jsonl_path, jsonl))
}

/// The async runtime: one thread, or `threads` workers, each with
/// microsecond timers.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, UsageError> {
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .on_thread_start(precise_timers)
            .enable_all()
            .build()
    }
    .map_err(|e| {
        UsageError::new(
            format!("cannot start the async runtime: {e}"),
            "check the system's thread limits",
        )
    })
}

/// results.json, the plots, and the terminal report naming every file.
fn write_outputs(
    results: &results::Results,
    outcome: &runner::RunOutcome,
    annotations: Option<(u64, u64, u64)>,
    out: &std::path::Path,
    jsonl_path: PathBuf,
    no_plots: bool,
) -> Result<(), UsageError> {
    let results_path = out.join("results.json");
    let text = serde_json::to_string_pretty(results).unwrap_or_default();
    std::fs::write(&results_path, text).map_err(|e| {
        UsageError::new(
            format!("cannot write {}: {e}", results_path.display()),
            "give --out a writable directory",
        )
    })?;
    let mut files = vec![results_path, jsonl_path];
    if !no_plots {
        let latencies: Vec<_> = outcome
            .phases
            .iter()
            .zip(&outcome.stats.phases)
            .map(|(r, s)| (r.name.clone(), [&s.ttft, &s.itl_token, &s.e2e]))
            .collect();
        match plot::all(results, &latencies, out) {
            Ok(f) => files.extend(f),
            Err(e) => eprintln!("gapscope-loadgen: plotting failed ({e}); the results are written"),
        }
    }
    let mut report = results.summary();
    if let Some((posted, failed, unposted)) = annotations {
        report.push_str(&format!(
            "phase annotations posted to gapscoped: {posted} ({failed} failed)\n"
        ));
        if unposted > 0 {
            report.push_str(&format!(
                "requests not annotated in gapscoped's traces: {unposted} (over {} waiting for a post, or in posts that failed)\n",
                crate::annotate::MAX_REQUESTS_WAITING
            ));
        }
    }
    for f in &files {
        report.push_str(&format!("wrote {}\n", f.display()));
    }
    out_text(&report);

    Ok(())
}

/// The exit status: a signal's, a failed check's, request errors', or 0;
/// a failed check is said on stderr.
fn exit_code(results: &results::Results, outcome: &runner::RunOutcome) -> i32 {
    let violations = results.run.fixed_length_violations;
    if violations > 0 {
        eprintln!(
            "gapscope-loadgen: FAILED: a fixed output length was asked for and {violations} replies did not have it \
             (the server ignores ignore_eos/min_tokens, or stops early); the throughput figures are not comparable"
        );
    }
    let audit_ok = audit::all_passed(&results.audit);
    if !audit_ok {
        eprintln!(
            "gapscope-loadgen: FAILED: the self-audit found inconsistent figures (see 'audit' lines above)"
        );
    }
    if let Some(signal) = outcome.interrupted {
        EXIT_SIGNAL_BASE + signal
    } else if violations > 0 || !audit_ok {
        EXIT_CHECK_FAILED
    } else if results.had_errors() {
        EXIT_REQUEST_ERRORS
    } else {
        EXIT_OK
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a crash.
pub fn out_text(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn progress_bar(
    plan: &crate::plan::Plan,
    live: Arc<Live>,
    clock: Clock,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let total = plan.total().as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30.cyan/blue}] {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let task = tokio::spawn(async move {
        let mut last = (0u64, clock.now());
        let mut rate = 0.0;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = clock.now();
            let tokens = live.tokens.load(Ordering::Relaxed);
            if now - last.1 >= 1_000_000_000 {
                rate = tokens.saturating_sub(last.0) as f64 / ((now - last.1) as f64 / 1e9);
                last = (tokens, now);
            }
            b.set_position(now / 1_000_000);
            let phase = live.phase.lock().map(|p| p.clone()).unwrap_or_default();
            b.set_message(format!(
                "{phase} | in flight {} | done {} | errors {} | {rate:.0} tok/s",
                live.in_flight.load(Ordering::Relaxed),
                live.completed.load(Ordering::Relaxed),
                live.failed.load(Ordering::Relaxed),
            ));
        }
    });
    (bar, task)
}

/// `audit`: checks published figures against each other and, given the
/// model and GPU, against the MFU their throughput implies.
pub fn audit(args: &AuditArgs) -> Result<i32, UsageError> {
    let mut spec = ModelSpec::default();
    args.mfu.apply(&mut spec);
    let model = ModelShape::from_spec(&spec)?;
    let peak = spec
        .peak_tflops
        .or_else(|| spec.gpu.as_deref().and_then(flops::peak_for).map(|p| p.1));
    let bad = |c: &str, why: &str| {
        UsageError::new(
            format!("--claim {c:?}: {why}"),
            "write NAME:TOKENS_PER_S[:MFU[:TOKENS_PER_J:WATTS]], e.g. bentoml:870:6.8%",
        )
    };
    let mut figures = Vec::new();
    for c in &args.claims {
        let parts: Vec<&str> = c.split(':').collect();
        if parts.len() < 2 || parts.len() == 4 || parts.len() > 5 {
            return Err(bad(c, "wrong number of fields"));
        }
        let num = |s: &str| -> Result<f64, UsageError> {
            match s.strip_suffix('%') {
                Some(p) => p.parse::<f64>().map(|v| v / 100.0),
                None => s.parse(),
            }
            .map_err(|_| bad(c, &format!("{s:?} is not a number")))
        };
        let tokens_per_s = num(parts[1])?;
        let mfu = parts.get(2).map(|s| num(s)).transpose()?;
        let expected = match (&model, peak) {
            (Some(m), Some(p)) => Some(flops::mfu(
                tokens_per_s,
                m.flops_per_token(0.0),
                spec.gpus.unwrap_or(1),
                p,
            )),
            _ => None,
        };
        figures.push(Figures {
            phase: parts[0].to_string(),
            tokens_per_s,
            mfu,
            mfu_expected: expected,
            tokens_per_joule: parts.get(3).map(|s| num(s)).transpose()?,
            avg_power_w: parts.get(4).map(|s| num(s)).transpose()?,
            ..Figures::default()
        });
    }
    let checks = audit::audit(&figures);
    let mut report: String = checks.iter().map(|c| format!("{c}\n")).collect();
    if model.is_none() || peak.is_none() {
        report.push_str("(give --model-config or --params, and --gpu or --peak-tflops, to check each MFU against its throughput)\n");
    }
    out_text(&report);
    Ok(if audit::all_passed(&checks) {
        EXIT_OK
    } else {
        EXIT_CHECK_FAILED
    })
}

/// An `http://` URL whose host is not this machine's loopback: what it
/// sends, an API key included, crosses the network readable.
fn cleartext_off_host(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    let loopback = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    !(loopback || host.eq_ignore_ascii_case("localhost"))
}

#[cfg(test)]
mod cleartext_tests {
    use super::cleartext_off_host;

    #[test]
    fn only_plain_http_off_the_loopback_is_cleartext() {
        assert!(!cleartext_off_host("http://127.0.0.1:8000/v1/completions"));
        assert!(!cleartext_off_host("http://localhost/v1"));
        assert!(!cleartext_off_host("http://[::1]:80/v1"));
        assert!(!cleartext_off_host("https://api.example.com/v1"));
        assert!(cleartext_off_host("http://10.0.0.7:8000/v1/completions"));
        assert!(cleartext_off_host("http://user@gpu-host:8000/v1"));
        assert!(cleartext_off_host("http://[fe80::1]:8000/v1"));
        assert!(cleartext_off_host("http://127.evil.example/v1"));
        assert!(!cleartext_off_host("http://127.0.0.2:9/v1"));
    }
}
