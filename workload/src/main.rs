//! Workloads whose syscalls are known exactly, so tests can compare what
//! gapscoped reports with ground truth.
//!
//! ```text
//! gapscope-workload syscalls [--getppid N] [--nanosleep M] [--sleep-us U] [--children fork|exec|both|threads] [--no-wait] [--tag T]
//! gapscope-workload spin --getppid N [--wait] [--tag T]
//! gapscope-workload pace --rate R --seconds S [--threads N] [--tick-ms T] [--execs E] [--wait] [--tag T]
//! ```
//!
//! Unless `--no-wait` is given, the workload prints `ready <pid>` and waits
//! for a line on stdin before it starts, so the test can make sure the
//! daemon traces it first; it prints `done` when finished and then waits
//! for stdin to close. `--tag` is ignored: tests match on it. Before
//! `done` it prints `asleep_ns <n>`: the time spent in nanosleep by its own
//! clock, `asleep_each_ns <n> <n> …`: each sleep's, and `sleeps
//! <start>:<end>:<voluntary>:<involuntary> …`: each sleep's window on
//! CLOCK_MONOTONIC (the clock of BPF's `bpf_ktime_get_ns`) with the
//! thread's voluntary and involuntary context switches during it, from
//! `getrusage(RUSAGE_THREAD)`: the kernel's own word on whether the sleep
//! blocked (a vCPU stolen by the hypervisor, or a preemption through the
//! whole sleep, lets the timer expire before the thread ever blocks).
//!
//! `spin` prints `ns_per_call <f64>` measured around a tight getppid loop
//! (the overhead benchmark); with `--wait` it first waits for "go" like
//! `syscalls` does.
//!
//! `pace` (the scale benchmark) spreads R getppid calls a second over N
//! threads, each waking every T ms (default 1) to make its share, for S
//! seconds; with `--execs E` another thread also runs E short-lived
//! `/bin/true` processes a second (fork + exec + exit). It prints `calls
//! <n>` and `execs <n>` and exits.

use std::{
    io::{BufRead as _, Write as _},
    time::{Duration, Instant},
};

#[derive(Default)]
struct Args {
    getppid: u64,
    nanosleep: u64,
    sleep_us: u64,
    children: Option<String>,
    no_wait: bool,
    wait: bool,
    rate: f64,
    seconds: f64,
    threads: u64,
    tick_ms: u64,
    execs: f64,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        sleep_us: 1000,
        threads: 1,
        tick_ms: 1,
        ..Default::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--getppid" => a.getppid = value()?.parse().map_err(|e| format!("--getppid: {e}"))?,
            "--nanosleep" => {
                a.nanosleep = value()?.parse().map_err(|e| format!("--nanosleep: {e}"))?;
            }
            "--sleep-us" => {
                a.sleep_us = value()?.parse().map_err(|e| format!("--sleep-us: {e}"))?;
            }
            "--children" => a.children = Some(value()?),
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--tick-ms" => a.tick_ms = value()?.parse().map_err(|e| format!("--tick-ms: {e}"))?,
            "--execs" => a.execs = value()?.parse().map_err(|e| format!("--execs: {e}"))?,
            "--tag" => {
                value()?;
            }
            "--no-wait" => a.no_wait = true,
            "--wait" => a.wait = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn getppid_n(n: u64) {
    for _ in 0..n {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// One sleep as the workload saw it.
struct Sleep {
    /// Its length by the workload's own clock.
    took: Duration,
    /// CLOCK_MONOTONIC just before and just after the syscall.
    start_ns: u64,
    end_ns: u64,
    /// The thread's voluntary and involuntary context switches during it.
    voluntary: i64,
    involuntary: i64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The calling thread's (voluntary, involuntary) context switches so far.
fn context_switches() -> (i64, i64) {
    // SAFETY: getrusage fills a zeroed rusage.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
    (r.ru_nvcsw, r.ru_nivcsw)
}

/// Sleeps `n` times and returns each sleep as the workload saw it. Timer
/// slack is cut to 1 ns so each sleep lasts what was asked.
fn nanosleep_n(n: u64, us: u64) -> Vec<Sleep> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let mut sleeps = Vec::with_capacity(n as usize);
    let ts = libc::timespec {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_nsec: ((us % 1_000_000) * 1000) as libc::c_long,
    };
    for _ in 0..n {
        let switches = context_switches();
        let start_ns = monotonic_ns();
        let start = Instant::now();
        // The nanosleep syscall itself (glibc's nanosleep() would use
        // clock_nanosleep).
        // SAFETY: valid timespec; a null remainder pointer is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        let took = start.elapsed();
        let end_ns = monotonic_ns();
        let after = context_switches();
        sleeps.push(Sleep {
            took,
            start_ns,
            end_ns,
            voluntary: after.0 - switches.0,
            involuntary: after.1 - switches.1,
        });
    }
    sleeps
}

fn wait_for_go() {
    println!("ready {}", std::process::id());
    std::io::stdout().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok();
}

/// `pace`: R calls a second over N threads for S seconds, and E execs a
/// second; (calls made, execs run).
fn pace(a: &Args) -> (u64, u64) {
    let start = Instant::now();
    let seconds = Duration::from_secs_f64(a.seconds);
    let tick = Duration::from_millis(a.tick_ms.max(1));
    let per_thread_tick = a.rate / a.threads.max(1) as f64 * tick.as_secs_f64();
    let callers: Vec<_> = (0..a.threads)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut made, mut owed, mut next) = (0u64, 0.0f64, Instant::now());
                while start.elapsed() < seconds {
                    owed += per_thread_tick;
                    let n = owed as u64;
                    owed -= n as f64;
                    getppid_n(n);
                    made += n;
                    next += tick;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                made
            })
        })
        .collect();
    let execs = (a.execs > 0.0).then(|| {
        let every = Duration::from_secs_f64(1.0 / a.execs);
        std::thread::spawn(move || {
            let (mut n, mut next) = (0u64, Instant::now());
            while start.elapsed() < seconds {
                if std::process::Command::new("/bin/true").status().is_ok() {
                    n += 1;
                }
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            n
        })
    });
    let calls = callers.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    (calls, execs.map_or(0, |h| h.join().unwrap_or(0)))
}

/// Runs `getppid` N times in each of four new threads.
fn threads(n: u64) {
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || getppid_n(n)))
        .collect();
    for h in handles {
        h.join().ok();
    }
}

/// Runs `getppid` N times in a forked child, an exec'd child, or both.
fn children(kind: &str, n: u64) -> Result<(), String> {
    if kind == "threads" {
        threads(n);
        return Ok(());
    }
    let fork_child = matches!(kind, "fork" | "both");
    let exec_child = matches!(kind, "exec" | "both");
    if !fork_child && !exec_child {
        return Err(format!(
            "--children {kind}: use fork, exec, both or threads"
        ));
    }
    let mut pids = Vec::new();
    if fork_child {
        // SAFETY: the child only makes raw syscalls and _exits.
        match unsafe { libc::fork() } {
            0 => {
                getppid_n(n);
                unsafe { libc::_exit(0) };
            }
            pid if pid > 0 => pids.push(pid),
            _ => return Err("fork failed".into()),
        }
    }
    if exec_child {
        let status = std::process::Command::new("/proc/self/exe")
            .args(["syscalls", "--no-wait", "--getppid", &n.to_string()])
            .status()
            .map_err(|e| format!("exec child: {e}"))?;
        if !status.success() {
            return Err(format!("exec child failed: {status}"));
        }
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = argv.split_first() else {
        return Err("usage: gapscope-workload syscalls|spin|pace [flags]".into());
    };
    let a = parse(rest)?;
    match mode.as_str() {
        "syscalls" => {
            if !a.no_wait {
                wait_for_go();
            }
            match &a.children {
                Some(kind) => children(kind, a.getppid)?,
                None => {
                    getppid_n(a.getppid);
                    let sleeps = nanosleep_n(a.nanosleep, a.sleep_us);
                    let total: Duration = sleeps.iter().map(|s| s.took).sum();
                    println!("asleep_ns {}", total.as_nanos());
                    let each: Vec<String> = sleeps
                        .iter()
                        .map(|s| s.took.as_nanos().to_string())
                        .collect();
                    println!("asleep_each_ns {}", each.join(" "));
                    let windows: Vec<String> = sleeps
                        .iter()
                        .map(|s| {
                            format!(
                                "{}:{}:{}:{}",
                                s.start_ns, s.end_ns, s.voluntary, s.involuntary
                            )
                        })
                        .collect();
                    println!("sleeps {}", windows.join(" "));
                }
            }
            if !a.no_wait {
                println!("done");
                std::io::stdout().flush().ok();
                // Stay alive until the test closes stdin.
                let mut sink = String::new();
                while std::io::stdin().lock().read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            }
            Ok(())
        }
        "spin" => {
            if a.wait {
                wait_for_go();
            }
            let start = Instant::now();
            getppid_n(a.getppid);
            let ns = start.elapsed().as_nanos() as f64 / a.getppid.max(1) as f64;
            println!("ns_per_call {ns:.1}");
            Ok(())
        }
        "pace" => {
            if a.wait {
                wait_for_go();
            }
            let (calls, execs) = pace(&a);
            println!("calls {calls}");
            println!("execs {execs}");
            Ok(())
        }
        other => Err(format!("unknown mode {other}; use syscalls, spin or pace")),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("gapscope-workload: {e}");
        std::process::exit(2);
    }
}
