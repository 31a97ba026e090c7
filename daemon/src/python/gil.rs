//! The GIL of each traced Python process: where it is (so the kernel can
//! recognise waits on it) and, sampled from its own state, how much of the
//! time it is held and how often it changes hands.
//!
//! Waits are measured in the kernel (`ebpf/programs/src/gil.rs`). Holding
//! is not an event anything could cheaply probe, so a thread reads each
//! process's `locked` flag and `switch_number` a hundred times a second:
//! held time is the share of samples that found it locked.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use gapscope_ebpf_common::GilRange;

use super::{
    interpreter::{Finder, Interpreter, Unavailable},
    memory,
    offsets::{self, GilPath, Offsets, ThreadId},
};

/// How many rescans (one a second) look for a process's GIL before giving
/// up: right after exec, libpython is not mapped yet.
const MAX_TRIES: u32 = 10;

/// How often the GIL state is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// A Python process whose GIL is traced.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub service: u32,
    pub version: (u8, u8),
    /// The file holding the interpreter (built-in modules live there).
    pub interpreter: std::path::PathBuf,
    pub gil: u64,
    pub offsets: Offsets,
    last_switch: Option<u64>,
}

/// Per-service totals from the samples.
#[derive(Debug, Default, Clone, Copy)]
pub struct GilStats {
    pub held_ns: u64,
    pub switches: u64,
}

type Shared = Arc<Mutex<HashMap<u32, Sampled>>>;

pub struct GilTracker {
    /// `[python] gil` in the configuration; when off, nothing is attached.
    enabled: bool,
    ranges: BpfHashMap<MapData, u32, GilRange>,
    finder: Finder,
    processes: Shared,
    /// Traced processes whose GIL is not traced: service, why, and how
    /// many times it was looked for.
    unavailable: HashMap<u32, (u32, Unavailable, u32)>,
    stats: Arc<Mutex<BTreeMap<u32, GilStats>>>,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

/// Where the GIL of a process running `interp` is.
pub fn locate(pid: u32, interp: &Interpreter) -> Result<(u64, Offsets), Unavailable> {
    let (major, minor) = interp.version;
    let offsets =
        offsets::for_version(major, minor).ok_or(Unavailable::UnsupportedVersion(major, minor))?;
    let gil = match offsets.gil {
        GilPath::InRuntime { runtime_ceval_gil } => interp.runtime_addr + runtime_ceval_gil,
        GilPath::ViaMainInterpreter {
            interpreters_main,
            interp_ceval_gil,
        } => {
            let read = |addr| {
                memory::read_u64(pid, addr).map_err(|e| {
                    Unavailable::Unreadable(format!("cannot read pid {pid}'s memory: {e}"))
                })
            };
            let main = read(interp.runtime_addr + interpreters_main)?;
            if main == 0 {
                return Err(Unavailable::NotYet(
                    "the interpreter is not initialised yet".into(),
                ));
            }
            read(main + interp_ceval_gil)?
        }
    };
    if gil == 0 {
        return Err(Unavailable::NotYet("the GIL is not created yet".into()));
    }
    Ok((gil, offsets))
}

/// How the kernel names the GIL's holder in process `pid` (the
/// `last_holder`, `holder_tid_at`, `pthread_tid_at` of its `GilRange`;
/// the rest zero). 3.9 and 3.10 keep only a `pthread_t`, read as glibc
/// lays out its threads: where the process does not map glibc, holders
/// are not named. Nor in a process of another PID namespace (a
/// container): the ids it keeps are its namespace's, not the ids
/// gapscoped and the kernel's programs use.
fn holder_naming(pid: u32, gil: u64, offsets: &Offsets) -> GilRange {
    let unnamed = GilRange {
        start: 0,
        end: 0,
        mutex: 0,
        switch_mutex: 0,
        last_holder: 0,
        holder_tid_at: 0,
        pthread_tid_at: 0,
    };
    if !same_pid_namespace(pid) {
        log::info!(
            "pid {pid}: GIL holders not named: the process is in another PID namespace, whose thread ids are not gapscoped's"
        );
        return unnamed;
    }
    let (holder_tid_at, pthread_tid_at) = match offsets.thread_id {
        ThreadId::Native {
            tstate_native_thread_id,
        } => (tstate_native_thread_id, 0),
        ThreadId::Pthread { tstate_thread_id } => {
            if !maps_glibc(pid) {
                log::info!(
                    "pid {pid}: GIL holders not named: CPython before 3.11 keeps only a pthread_t, read as glibc's, and this process maps no glibc"
                );
                return unnamed;
            }
            (tstate_thread_id, offsets::GLIBC_PTHREAD_TID)
        }
    };
    GilRange {
        last_holder: gil + offsets.last_holder,
        holder_tid_at,
        pthread_tid_at,
        ..unnamed
    }
}

/// Whether process `pid` numbers its threads as gapscoped does (its PID
/// namespace is gapscoped's). Unreadable: no.
fn same_pid_namespace(pid: u32) -> bool {
    let ns = |path: String| std::fs::read_link(path).ok();
    ns(format!("/proc/{pid}/ns/pid")).is_some_and(|theirs| {
        ns("/proc/self/ns/pid".to_string()).is_some_and(|ours| ours == theirs)
    })
}

/// Whether process `pid` maps glibc's `libc.so.6` (and not musl's loader).
fn maps_glibc(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
        maps.lines().any(|l| l.ends_with("/libc.so.6")) && !maps.contains("ld-musl")
    })
}

impl GilTracker {
    pub fn new(ranges: BpfHashMap<MapData, u32, GilRange>, enabled: bool) -> Self {
        let processes: Shared = Arc::default();
        let stats = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (processes, stats, stop) = (processes.clone(), Arc::clone(&stats), stop.clone());
            std::thread::Builder::new()
                .name("gil-sampler".into())
                .spawn(move || sample_loop(&processes, &stats, &stop))
                .ok()
        };
        Self {
            enabled,
            ranges,
            finder: Finder::default(),
            processes,
            unavailable: HashMap::new(),
            stats,
            stop,
            sampler,
        }
    }

    /// Whether this process's GIL is settled: traced, or known untraceable.
    /// Processes still starting are looked at again on every rescan.
    pub fn knows(&self, tgid: u32) -> bool {
        !self.enabled
            || self
                .unavailable
                .get(&tgid)
                .is_some_and(|(_, why, tries)| !why.retryable() || *tries >= MAX_TRIES)
            || lock(&self.processes).contains_key(&tgid)
    }

    /// Starts tracing the GIL of a traced process, if it runs CPython.
    pub fn attach(&mut self, tgid: u32, service: u32) {
        if !self.enabled {
            return;
        }
        let found = self
            .finder
            .find(tgid)
            .and_then(|interp| locate(tgid, &interp).map(|(gil, o)| (interp, gil, o)));
        match found {
            Ok((interp, gil, offsets)) => {
                let range = GilRange {
                    start: gil,
                    end: gil + offsets.gil_size,
                    mutex: gil + offsets.mutex,
                    switch_mutex: gil + offsets.switch_mutex,
                    ..holder_naming(tgid, gil, &offsets)
                };
                if let Err(e) = self.ranges.insert(tgid, range, 0) {
                    log::warn!("pid {tgid}: cannot register its GIL: {e}");
                    return;
                }
                log::info!(
                    "pid {tgid}: CPython {}.{} ({}), GIL at {gil:#x}",
                    interp.version.0,
                    interp.version.1,
                    interp.path.display()
                );
                self.unavailable.remove(&tgid);
                lock(&self.processes).insert(
                    tgid,
                    Sampled {
                        service,
                        version: interp.version,
                        interpreter: interp.path.clone(),
                        gil,
                        offsets,
                        last_switch: None,
                    },
                );
            }
            Err(why) => {
                let tries = self.unavailable.get(&tgid).map_or(0, |(_, _, n)| *n) + 1;
                if !why.retryable() {
                    log::warn!("pid {tgid}: GIL tracing unavailable: {why}");
                } else if tries >= MAX_TRIES && why != Unavailable::NotPython {
                    log::warn!("pid {tgid}: GIL tracing unavailable after {tries} tries: {why}");
                } else {
                    log::debug!("pid {tgid}: no GIL to trace yet: {why}");
                }
                self.unavailable.insert(tgid, (service, why, tries));
            }
        }
    }

    /// Forgets a process (it exited, or left its service).
    pub fn detach(&mut self, tgid: u32) {
        self.unavailable.remove(&tgid);
        if lock(&self.processes).remove(&tgid).is_some() {
            let _ = self.ranges.remove(&tgid);
        }
    }

    /// (tgid, service, interpreter file) of every traced Python process.
    pub fn python_processes(&self) -> Vec<(u32, u32, std::path::PathBuf)> {
        lock(&self.processes)
            .iter()
            .map(|(tgid, p)| (*tgid, p.service, p.interpreter.clone()))
            .collect()
    }

    /// Traced Python processes per (service, "major.minor").
    pub fn processes(&self) -> BTreeMap<(u32, String), u64> {
        let mut out = BTreeMap::new();
        for p in lock(&self.processes).values() {
            let v = format!("{}.{}", p.version.0, p.version.1);
            *out.entry((p.service, v)).or_default() += 1;
        }
        out
    }

    /// Processes whose GIL is not traced, per (service, reason); processes
    /// that are not Python at all are left out.
    pub fn unavailable(&self) -> BTreeMap<(u32, &'static str), u64> {
        let mut out = BTreeMap::new();
        for (service, why, _) in self.unavailable.values() {
            if *why != Unavailable::NotPython {
                *out.entry((*service, why.label())).or_default() += 1;
            }
        }
        out
    }

    /// Sampled totals per service id.
    pub fn stats(&self) -> BTreeMap<u32, GilStats> {
        lock(&self.stats).clone()
    }
}

impl Drop for GilTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sample_loop(processes: &Shared, stats: &Mutex<BTreeMap<u32, GilStats>>, stop: &AtomicBool) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(SAMPLE_INTERVAL);
        let now = Instant::now();
        let elapsed = now.duration_since(last).as_nanos() as u64;
        last = now;
        let mut procs = lock(processes);
        let mut totals = lock(stats);
        for (pid, p) in procs.iter_mut() {
            // `locked` (int) and `switch_number` (unsigned long) in one read.
            let mut buf = [0u8; 16];
            let start = p.gil + p.offsets.locked;
            if memory::read(*pid, start, &mut buf).is_err() {
                continue;
            }
            let locked = i32::from_ne_bytes(buf[0..4].try_into().unwrap_or_default());
            let at = (p.offsets.switch_number - p.offsets.locked) as usize;
            let switches = u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap_or_default());
            let t = totals.entry(p.service).or_default();
            if locked != 0 {
                t.held_ns += elapsed;
            }
            if let Some(prev) = p.last_switch {
                t.switches += switches.saturating_sub(prev);
            }
            p.last_switch = Some(switches);
        }
    }
}
