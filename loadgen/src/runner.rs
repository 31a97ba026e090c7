//! Running the phases, one after the other, on schedule.
//!
//! * Open loop: a timerfd in the runtime wakes it at each precomputed send
//!   time (absolute, microsecond precision) and the request goes at once —
//!   or, with `max_concurrency`, queues for a free slot and reports its
//!   queueing time. The schedule never compresses: a late client shows as
//!   send lag, not as a burst.
//! * Silence: nothing is sent (requests still in flight from the phase
//!   before finish on their own).
//! * Closed loop: `concurrency` workers, each sending its next request as
//!   soon as the previous reply is complete, until the phase ends.
//!
//! Finished requests go through one channel to the collector, which adds
//! them to the statistics and writes them to the per-request JSONL, so
//! nothing is kept per request once it is done. Ctrl-C cancels what is in
//! flight (recorded as `cancelled`) and ends the run at that moment.

use rand::{SeedableRng, rngs::StdRng};
use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Semaphore, mpsc, watch};

use crate::{
    annotate::Annotator,
    arrivals,
    clock::{Clock, PreciseTimer},
    exporter::Exporter,
    live::Live,
    plan::{Arrival, Phase, PhaseKind, Plan, ThinkTime},
    prompts::{Ask, Conversation, PromptGen},
    record::{ErrorKind, RequestRecord},
    request::{Client, Planned},
    stats::RunStats,
};

/// What happened in one phase, beyond the statistics.
#[derive(Debug, Clone)]
pub(crate) struct PhaseRun {
    pub name: String,
    pub kind: PhaseKind,
    pub end_ns: u64,
    /// Open loop: requests the schedule held.
    pub scheduled: u64,
    pub target_rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub max_concurrency: Option<usize>,
    pub max_in_flight: usize,
    /// CPU the whole client process used while the phase ran (every
    /// thread: workers, the prompt builder, the collector).
    pub client_cpu_ns: u64,
}

/// CPU this process has used (CLOCK_PROCESS_CPUTIME_ID), in ns.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl PhaseRun {
    fn new(phase: &Phase, end_ns: u64) -> Self {
        Self {
            name: phase.name.clone(),
            kind: phase.kind,
            end_ns,
            scheduled: 0,
            target_rate: phase.rate,
            concurrency: phase.concurrency,
            max_concurrency: phase.max_concurrency,
            max_in_flight: 0,
            client_cpu_ns: 0,
        }
    }
}

pub(crate) struct RunOutcome {
    pub stats: RunStats,
    pub phases: Vec<PhaseRun>,
    /// Stopped early by this signal (SIGINT, SIGTERM or SIGHUP).
    pub interrupted: Option<i32>,
    /// When the last request finished (run clock).
    pub last_done_ns: u64,
    /// Multi-turn runs: how the conversations ended.
    pub conversations: Option<ConversationCounts>,
}

/// How a run's conversations ended (`turns` > 1).
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ConversationCounts {
    pub started: u64,
    /// Every turn answered.
    pub completed: u64,
    /// A turn was due after the end of the phase that started the
    /// conversation (or the run stopped): the rest were not sent.
    pub cut_at_phase_end: u64,
    /// A turn failed: a user without an answer does not go on.
    pub ended_by_error: u64,
}

/// Atomic counterparts of `ConversationCounts`.
#[derive(Default)]
struct ConversationCounters {
    started: AtomicU64,
    completed: AtomicU64,
    cut: AtomicU64,
    failed: AtomicU64,
}

/// Everything the phases share.
struct Shared {
    client: Arc<Client>,
    asks: tokio::sync::Mutex<Asks>,
    records: mpsc::UnboundedSender<RequestRecord>,
    cancel: watch::Receiver<bool>,
    live: Arc<Live>,
    clock: Clock,
    seq: AtomicU64,
    /// Per phase: the most requests in flight at once while it ran.
    max_in_flight: Vec<AtomicUsize>,
    /// Think time between a conversation's turns, and the seed its draws
    /// start from.
    think: ThinkTime,
    seed: u64,
    conversations: ConversationCounters,
}

/// How a conversation ended, for the closed-loop worker that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conversed {
    /// Every turn sent (or one failed and the user gave up).
    Done,
    /// The server could not be reached: back off before the next.
    Refused,
    /// Its next turn fell past the phase's end: its user is still
    /// thinking, so the worker starts nothing new either.
    Cut,
}

/// What one request's send came to, for the conversation it is part of.
struct Sent {
    /// The server could not be reached at all.
    refused: bool,
    ok: bool,
    /// Stopped by Ctrl-C or SIGTERM, not failed.
    cancelled: bool,
    /// The reply's answer text, kept for a conversation's next turn.
    reply: Option<String>,
}

impl Shared {
    async fn next_conversation(&self) -> Option<Conversation> {
        let mut asks = self.asks.lock().await;
        if let Some(c) = asks.batch.next() {
            return Some(c);
        }
        asks.batch = asks.rx.recv().await?.into_iter();
        asks.batch.next()
    }

    /// Runs a conversation: its first turn now (due at `scheduled_ns`),
    /// each later one a think time after the reply before it, carrying the
    /// conversation so far. No turn starts after `end` (the phase's) or a
    /// stop; a failed turn ends it. With `slots` (an open loop's cap) each
    /// turn holds a slot while it is in flight, never while its user
    /// thinks; the first turn's wait for one is its queueing.
    async fn converse(
        self: Arc<Self>,
        phase_index: usize,
        phase: &str,
        end: u64,
        scheduled_ns: Option<u64>,
        conversation: Conversation,
        slots: Option<Arc<Semaphore>>,
    ) -> Conversed {
        let slot = || async {
            match &slots {
                Some(sem) => sem.clone().acquire_owned().await.ok(),
                None => None,
            }
        };
        // A single request is a conversation of one turn, not counted as
        // one.
        let multi = conversation
            .turns
            .first()
            .is_some_and(|t| t.conversation.is_some());
        let counts = &self.conversations;
        let count = |n: &AtomicU64| {
            if multi {
                n.fetch_add(1, Ordering::Relaxed);
            }
        };
        count(&counts.started);
        let mut history: Vec<(String, String)> = Vec::new();
        let mut cancel = self.cancel.clone();
        for (k, mut ask) in conversation.turns.into_iter().enumerate() {
            let id = ask.conversation.map_or(0, |(c, _)| c);
            if k > 0 {
                let mut rng = StdRng::seed_from_u64(self.seed ^ id.rotate_left(20) ^ k as u64);
                let think = Duration::from_secs_f64(self.think.sample(&mut rng));
                let due = self.clock.now() + think.as_nanos() as u64;
                if due >= end || *cancel.borrow() {
                    count(&counts.cut);
                    return Conversed::Cut;
                }
                tokio::select! {
                    _ = tokio::time::sleep(think) => {}
                    _ = cancel.changed() => {
                        count(&counts.cut);
                        return Conversed::Cut;
                    }
                }
            }
            let prompt = ask.prompt.clone();
            ask.history.clone_from(&history);
            if !history.is_empty()
                && let Some(tok) = self.client.tokenizer()
            {
                // The whole conversation, counted off the event loop.
                let text = ask.full_prompt();
                ask.prompt_tokens =
                    tokio::task::spawn_blocking(move || crate::prompts::count_tokens(&tok, &text))
                        .await
                        .ok()
                        .flatten();
            }
            let _permit = slot().await;
            let (scheduled, queued) = if k == 0 {
                let queued = slots
                    .is_some()
                    .then(|| self.clock.now().saturating_sub(scheduled_ns.unwrap_or(0)));
                (scheduled_ns, queued)
            } else {
                (None, None)
            };
            let sent = self
                .clone()
                .send(phase_index, phase.into(), scheduled, ask, queued)
                .await;
            if sent.cancelled {
                count(&counts.cut);
                return Conversed::Cut;
            }
            if !sent.ok {
                count(&counts.failed);
                return if sent.refused {
                    Conversed::Refused
                } else {
                    Conversed::Done
                };
            }
            history.push((prompt, sent.reply.unwrap_or_default()));
        }
        count(&counts.completed);
        Conversed::Done
    }

    /// Sends one request and hands its record to the collector.
    async fn send(
        self: Arc<Self>,
        phase_index: usize,
        phase: String,
        scheduled_ns: Option<u64>,
        ask: Ask,
        queue_ns: Option<u64>,
    ) -> Sent {
        let now = self.live.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight[phase_index].fetch_max(now, Ordering::SeqCst);
        let p = Planned {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            phase_index,
            phase,
            scheduled_ns,
            ask,
        };
        let mut rec = self.client.send(p, queue_ns, self.cancel.clone()).await;
        self.live.in_flight.fetch_sub(1, Ordering::SeqCst);
        if rec.ok() {
            self.live.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.live.failed.fetch_add(1, Ordering::Relaxed);
        }
        let refused = rec
            .error
            .as_ref()
            .is_some_and(|e| e.kind == ErrorKind::Connect);
        let sent = Sent {
            refused,
            cancelled: rec
                .error
                .as_ref()
                .is_some_and(|e| e.kind == ErrorKind::Cancelled),
            ok: rec.ok(),
            reply: rec.reply.take(),
        };
        let _ = self.records.send(rec);
        sent
    }
}

/// How often the output tokens counted so far are posted to gapscoped:
/// each phase's tokens reach the daemon at least once a second.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A closed-loop worker whose server refuses connections waits before
/// its next try: from `BACKOFF_MIN` doubling to `BACKOFF_MAX`, with jitter
/// (half to all of the step), and back to none after a success.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where a run reports besides its outcome: phase annotations to
/// gapscoped, its live metrics, and one JSONL line per request.
pub(crate) struct Outputs {
    pub annotator: Option<Arc<Annotator>>,
    pub exporter: Option<Arc<Exporter>>,
    pub jsonl: Option<Box<dyn Write + Send>>,
}

/// Runs every phase of `plan`.
pub(crate) async fn run(
    plan: &Plan,
    client: Arc<Client>,
    prompts: PromptGen,
    clock: Clock,
    live: Arc<Live>,
    outputs: Outputs,
) -> RunOutcome {
    let Outputs {
        annotator,
        exporter,
        jsonl,
    } = outputs;
    let windows = phase_windows(plan, &clock);
    let stats = RunStats::new(&windows, plan.slo.clone());
    let (asks, prompt_thread) = spawn_prompts(prompts);

    let (rec_tx, rec_rx) = mpsc::unbounded_channel::<RequestRecord>();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        client,
        asks: tokio::sync::Mutex::new(asks),
        records: rec_tx,
        cancel: cancel_rx,
        live: live.clone(),
        clock,
        seq: AtomicU64::new(0),
        max_in_flight: plan.phases.iter().map(|_| AtomicUsize::new(0)).collect(),
        think: plan.prompts.think_time,
        seed: plan.seed,
        conversations: ConversationCounters::default(),
    });

    // The collector: statistics and JSONL, one record at a time.
    let collector = tokio::spawn(collect(stats, rec_rx, exporter, jsonl, annotator.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    // Token counts between the phase annotations, so per-token figures in
    // Prometheus have a denominator within a long phase too.
    let progress = annotator
        .clone()
        .map(|a| tokio::spawn(a.progress_every(PROGRESS_EVERY, live.clone())));
    let mut interrupted = None;
    let mut runs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut signals = StopSignals::new();
    let mut ctrl_c = std::pin::pin!(signals.next());
    let annotate = |phase: &Phase, event: &str| {
        let tokens = live.tokens.load(Ordering::Relaxed);
        if let Some(a) = &annotator {
            a.post(&phase.name, Some(phase.kind), event, tokens);
        }
    };
    for (index, phase) in plan.phases.iter().enumerate() {
        let (start, end) = windows[index];
        sleep_until(&clock, start).await;
        live.set_phase(&phase.name);
        annotate(phase, "start");
        let mut run = PhaseRun::new(phase, end);
        let cpu_at_start = process_cpu_ns();
        let work = run_phase(
            &shared,
            index,
            phase,
            (start, end),
            plan.seed.wrapping_add(index as u64),
            &stop,
            &mut tasks,
            &mut run,
        );
        tokio::select! {
            _ = work => {}
            signal = &mut ctrl_c => {
                interrupted = Some(signal);
                stop.store(true, Ordering::SeqCst);
                let _ = cancel_tx.send(true);
                run.end_ns = clock.now().max(start);
                eprintln!(
                    "\ngapscope-loadgen: {}; writing what was measured so far",
                    signal_name(signal)
                );
            }
        }
        run.max_in_flight = shared.max_in_flight[index].load(Ordering::SeqCst);
        run.client_cpu_ns = process_cpu_ns().saturating_sub(cpu_at_start);
        annotate(phase, "end");
        runs.push(run);
        if interrupted.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(p) = progress {
        p.abort();
    }
    // Replies still streaming finish, up to the request timeout; Ctrl-C
    // cancels them.
    if interrupted.is_none() {
        interrupted = drain(&mut tasks, &mut ctrl_c, &cancel_tx).await;
    } else {
        while tasks.join_next().await.is_some() {}
    }
    let conversations = (plan.prompts.turns > 1).then(|| {
        let c = &shared.conversations;
        ConversationCounts {
            started: c.started.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            cut_at_phase_end: c.cut.load(Ordering::Relaxed),
            ended_by_error: c.failed.load(Ordering::Relaxed),
        }
    });
    drop(shared);
    let (mut stats, last_done_ns) = collector
        .await
        .unwrap_or_else(|_| (RunStats::new(&[], plan.slo.clone()), 0));
    // Requests that finished after the last post.
    if let (Some(a), Some(last)) = (&annotator, runs.last()) {
        a.flush_requests(&last.name, live.tokens.load(Ordering::Relaxed));
    }
    // An interrupted phase's window ends at the interruption; phases never
    // started are left out.
    stats.phases.truncate(runs.len());
    for (p, r) in stats.phases.iter_mut().zip(&runs) {
        p.end_ns = r.end_ns;
        p.max_in_flight = r.max_in_flight;
    }
    if let Some(t) = prompt_thread {
        // The prompt thread ends when its channel closes (dropped above).
        let _ = t.join();
    }
    RunOutcome {
        stats,
        phases: runs,
        interrupted,
        last_done_ns,
        conversations,
    }
}

/// Waits for the replies still streaming; a signal meanwhile cancels them
/// (and is returned).
async fn drain(
    tasks: &mut tokio::task::JoinSet<()>,
    signal: &mut (impl std::future::Future<Output = i32> + Unpin),
    cancel: &watch::Sender<bool>,
) -> Option<i32> {
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => None,
        signal = signal => {
            eprintln!("\ngapscope-loadgen: {}; cancelling the replies still streaming", signal_name(signal));
            let _ = cancel.send(true);
            while tasks.join_next().await.is_some() {}
            Some(signal)
        }
    }
}

/// Conversations made ahead of need, and the batch being handed out.
struct Asks {
    rx: mpsc::Receiver<Vec<Conversation>>,
    batch: std::vec::IntoIter<Conversation>,
}

/// Most conversations the prompt thread hands over at once: one wake-up
/// of it (a futex call and two context switches) per batch, not per
/// request, which at thousands of requests a second was a few percent of
/// the client's CPU.
const ASK_BATCH: usize = 16;

/// Prompts are made ahead of need on a thread of their own, in batches
/// (1, 2, 4, … up to `ASK_BATCH`, so the first is ready at once); it ends
/// when the receiver is dropped.
fn spawn_prompts(mut prompts: PromptGen) -> (Asks, Option<std::thread::JoinHandle<()>>) {
    let (ask_tx, ask_rx) = mpsc::channel::<Vec<Conversation>>(16);
    let thread = std::thread::Builder::new()
        .name("prompts".into())
        .spawn(move || {
            // Background work: niced, so the runtime's thread, woken by a
            // send time, takes the core from a batch being made (a
            // client pinned to one core keeps its send lag).
            // SAFETY: setpriority on this thread's own id; a higher nice
            // value needs no privilege.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
            }
            let mut size = 1;
            loop {
                let batch = (0..size).map(|_| prompts.next_conversation()).collect();
                if ask_tx.blocking_send(batch).is_err() {
                    break;
                }
                size = (size * 2).min(ASK_BATCH);
            }
        })
        .ok();
    let asks = Asks {
        rx: ask_rx,
        batch: Vec::new().into_iter(),
    };
    (asks, thread)
}

/// Phase windows on the run's clock, back to back from a short lead-in.
fn phase_windows(plan: &Plan, clock: &Clock) -> Vec<(u64, u64)> {
    let lead = 100_000_000u64;
    let mut windows = Vec::new();
    let mut t = clock.now() + lead;
    for p in &plan.phases {
        let d = plan.duration(p).as_nanos() as u64;
        windows.push((t, t + d));
        t += d;
    }
    windows
}

/// Takes every finished request into the statistics and the JSONL (which
/// stops, saying so once, when it cannot be written); returns the
/// statistics and when the last request finished.
async fn collect(
    mut stats: RunStats,
    mut records: mpsc::UnboundedReceiver<RequestRecord>,
    exporter: Option<Arc<Exporter>>,
    mut jsonl: Option<Box<dyn Write + Send>>,
    annotator: Option<Arc<Annotator>>,
) -> (RunStats, u64) {
    let mut last_done = 0u64;
    let mut line = Vec::new();
    while let Some(rec) = records.recv().await {
        stats.add(&rec);
        if let Some(e) = &exporter {
            e.record(&rec);
        }
        if let Some(a) = &annotator {
            a.request_done(&rec);
        }
        last_done = last_done.max(rec.done_ns);
        if let Some(w) = jsonl.as_mut() {
            line.clear();
            let written = rec
                .write_jsonl(&mut line)
                .map_err(std::io::Error::from)
                .and_then(|()| w.write_all(&line));
            if written.is_err() {
                eprintln!(
                    "gapscope-loadgen: cannot write the per-request JSONL any more; the run goes on"
                );
                jsonl = None;
            }
        }
    }
    if let Some(w) = jsonl.as_mut()
        && let Err(e) = w.flush()
    {
        eprintln!(
            "gapscope-loadgen: the per-request JSONL's last records could not be written ({e}); the statistics and results.json have every request"
        );
    }
    (stats, last_done)
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    shared: &Arc<Shared>,
    index: usize,
    phase: &Phase,
    (start, end): (u64, u64),
    seed: u64,
    stop: &Arc<AtomicBool>,
    tasks: &mut tokio::task::JoinSet<()>,
    run: &mut PhaseRun,
) {
    let clock = shared.clock;
    match phase.kind {
        PhaseKind::Silence => sleep_until(&clock, end).await,
        PhaseKind::OpenLoop => {
            let offsets = arrivals::schedule(
                phase.arrival.unwrap_or(Arrival::Poisson),
                phase.rate.unwrap_or(1.0),
                phase.burstiness.unwrap_or(1.0),
                end - start,
                seed,
            );
            run.scheduled = offsets.len() as u64;
            let mut timer = match PreciseTimer::new(clock) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!(
                        "gapscope-loadgen: no timerfd ({e}); phase {} sends nothing",
                        phase.name
                    );
                    return;
                }
            };
            let slots = phase.max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
            for off in offsets {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // The prompt is fetched before the wait, so the send
                // itself is all that happens when the time comes.
                let Some(conversation) = shared.next_conversation().await else {
                    break;
                };
                let due = start + off;
                if timer.sleep_until(due).await.is_err() {
                    sleep_until(&clock, due).await;
                }
                let s = shared.clone();
                let name = phase.name.clone();
                let slots = slots.clone();
                tasks.spawn(async move {
                    s.converse(index, &name, end, Some(due), conversation, slots)
                        .await;
                });
            }
            sleep_until(&clock, end).await;
        }
        PhaseKind::ClosedLoop => {
            // Workers live in the run's task set, so a reply still
            // streaming when the phase ends (or is interrupted) is
            // recorded, not dropped.
            for _ in 0..phase.concurrency.unwrap_or(1) {
                let s = shared.clone();
                let name = phase.name.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    let mut backoff = Duration::ZERO;
                    while s.clock.now() < end && !stop.load(Ordering::SeqCst) {
                        let Some(conversation) = s.next_conversation().await else {
                            break;
                        };
                        let ended = s
                            .clone()
                            .converse(index, &name, end, None, conversation, None)
                            .await;
                        if ended == Conversed::Cut {
                            break;
                        }
                        if ended == Conversed::Refused {
                            backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                            let jittered = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                            let left = end.saturating_sub(s.clock.now());
                            let mut cancel = s.cancel.clone();
                            tokio::select! {
                                _ = tokio::time::sleep(jittered.min(Duration::from_nanos(left))) => {}
                                _ = cancel.changed() => break,
                            }
                        } else {
                            backoff = Duration::ZERO;
                        }
                    }
                });
            }
            sleep_until(&clock, end).await;
        }
    }
}

/// SIGINT (Ctrl-C), SIGTERM (a supervisor, `timeout`) and SIGHUP (the
/// terminal went away) all stop the run the same way: what is in flight
/// is cancelled and everything measured is written. Each is caught from
/// the start of the run, so none kills the process half-way.
struct StopSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            // Under `nohup` SIGHUP is ignored, and stays so.
            hup: (!ignored(libc::SIGHUP))
                .then(|| signal(SignalKind::hangup()).ok())
                .flatten(),
        }
    }

    /// The first of them to arrive.
    async fn next(&mut self) -> i32 {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            if let Some(s) = s
                && s.recv().await.is_some()
            {
                return;
            }
            std::future::pending::<()>().await;
        }
        tokio::select! {
            _ = one(&mut self.int) => libc::SIGINT,
            _ = one(&mut self.term) => libc::SIGTERM,
            _ = one(&mut self.hup) => libc::SIGHUP,
        }
    }
}

/// Whether the process was started with `signal` ignored.
fn ignored(signal: i32) -> bool {
    // SAFETY: a zeroed sigaction is valid to be written; a null new action
    // only reads the current one.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "interrupted (SIGINT)",
        libc::SIGTERM => "terminated (SIGTERM)",
        libc::SIGHUP => "hung up (SIGHUP)",
        _ => "stopped by a signal",
    }
}

/// Sleeps on the runtime until run time `at` (millisecond precision is
/// enough for phase boundaries; sends use the dispatcher thread).
async fn sleep_until(clock: &Clock, at: u64) {
    let now = clock.now();
    if at > now {
        tokio::time::sleep(Duration::from_nanos(at - now)).await;
    }
}
