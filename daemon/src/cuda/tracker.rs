//! Finds the CUDA libraries each traced process maps, probes their entry
//! points once per file, keeps the launch probes within their overhead
//! budget and turns what the sampled probes saw into launch estimates.
//!
//! The estimate: a second the probe was attached adds what it saw; a
//! second it was paused adds what the last attached second saw. The
//! counter so grows every second (Prometheus' `rate()` stays smooth, with
//! no sawtooth every N seconds) and is corrected each time the probe is
//! attached again. A launch-bound thread launches more slowly while it is
//! probed, so there the estimate runs low by about the probes' share of
//! its time (bench/cuda_probe_cost measures it).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap};
use gapscope_ebpf_common::{Log2Hist, cuda_cookie};

use super::{ENTRY_POINTS, Library};
use crate::{
    bpf::{
        Probes,
        uprobes::{FileKey, Instruction, UprobeSet, file_key},
    },
    locate::symbol_groups,
};

/// The probe programs, loaded by `bpf::attach_all`.
pub const PROGRAMS: (&str, &str) = (
    gapscope_ebpf_common::names::program::CUDA_ENTER,
    gapscope_ebpf_common::names::program::CUDA_EXIT,
);

/// Seconds a process counts as new: its mappings are read every second
/// until it maps both CUDA libraries.
const YOUNG_TICKS: u64 = 30;
/// Seconds between reads of an older process's mappings.
const RESCAN_EVERY: u64 = 10;

/// A traced process as the tracker knows it.
struct Process {
    service: u32,
    /// The CUDA library files it maps.
    files: BTreeSet<(Library, String)>,
    first_tick: u64,
    next_scan: u64,
}

/// One (service, slot) of the kernel's call statistics, merged over CPUs.
pub struct SlotCalls {
    pub service: u32,
    pub slot: usize,
    pub hist: Log2Hist,
    /// Launch slots: calls estimated from the sampled counts (equal to
    /// `hist.count` while the slot is probed in full).
    pub estimated: f64,
}

pub struct CudaTracker {
    uprobes: UprobeSet,
    /// Launches per second, per process and entry point, probed in full.
    budget: u64,
    /// `cuda_key(service, slot)` → call durations, per CPU.
    calls: PerCpuHashMap<MapData, u32, Log2Hist>,
    /// Each library file's offsets per slot: read once per (device, inode).
    resolved: HashMap<FileKey, Result<Vec<Vec<u64>>, String>>,
    /// Traced processes looked at, and the CUDA libraries they map.
    processes: HashMap<u32, Process>,
    /// Seconds since start (`tick`s).
    ticks: u64,
    /// Traced processes whose CUDA library cannot be probed, and why.
    unavailable: HashMap<u32, (u32, BTreeMap<Library, String>)>,
    /// Launch estimates per `cuda_key`, the counts last read, and the
    /// launches seen in the last second the probe was attached.
    estimated: HashMap<u32, f64>,
    last_counts: HashMap<u32, u64>,
    last_attached_second: HashMap<u32, u64>,
}

impl CudaTracker {
    pub fn new(
        probes: Arc<Mutex<Probes>>,
        budget: u64,
        process_calls: BpfHashMap<MapData, u64, u64>,
        calls: PerCpuHashMap<MapData, u32, Log2Hist>,
    ) -> Self {
        let budgeted = ENTRY_POINTS
            .iter()
            .map(super::entry_points::EntryPoint::budgeted)
            .collect();
        Self {
            uprobes: UprobeSet::new(probes, PROGRAMS, budgeted, budget, process_calls),
            budget,
            calls,
            resolved: HashMap::new(),
            processes: HashMap::new(),
            ticks: 0,
            unavailable: HashMap::new(),
            estimated: HashMap::new(),
            last_counts: HashMap::new(),
            last_attached_second: HashMap::new(),
        }
    }

    /// Probes the CUDA libraries a traced process maps. Its mappings are
    /// read every second while it is new and lacks one of the libraries
    /// (CUDA is often loaded on first use, well after the process started,
    /// and the runtime and the driver at different times: a read between
    /// the two would leave the second unprobed for `RESCAN_EVERY`), then every
    /// `RESCAN_EVERY` seconds: a serving process maps thousands of files,
    /// and reading them all every second for every worker adds up. The
    /// files already found are probed again every second, so entry points
    /// the budget paused come back on time.
    pub fn scan(&mut self, tgid: u32, service: u32) {
        let tick = self.ticks;
        let p = self.processes.entry(tgid).or_insert(Process {
            service,
            files: BTreeSet::new(),
            first_tick: tick,
            next_scan: tick,
        });
        p.service = service;
        if tick >= p.next_scan {
            let Ok(maps) = fs::read_to_string(format!("/proc/{tgid}/maps")) else {
                return;
            };
            p.files = maps
                .lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .flat_map(|path| {
                    Library::ALL
                        .into_iter()
                        .filter(|l| l.is(path))
                        .map(|l| (l, path.to_string()))
                })
                .collect();
            let young = tick - p.first_tick < YOUNG_TICKS;
            p.next_scan = tick
                + if young
                    && p.files
                        .iter()
                        .map(|(l, _)| l)
                        .collect::<BTreeSet<_>>()
                        .len()
                        < Library::ALL.len()
                {
                    1
                } else {
                    RESCAN_EVERY
                };
        }
        let files = p.files.clone();
        if files.is_empty() {
            return;
        }
        let mut missing = BTreeMap::new();
        for (library, path) in &files {
            if let Err(why) = self.probe(tgid, *library, path) {
                missing.insert(*library, why);
            }
        }
        let before = self.unavailable.get(&tgid).map(|(_, m)| m);
        for (library, why) in &missing {
            if before.and_then(|m| m.get(library)) != Some(why) {
                log::warn!("pid {tgid}: cannot probe CUDA {} API: {why}", library.api());
            }
        }
        if missing.is_empty() {
            self.unavailable.remove(&tgid);
        } else {
            self.unavailable.insert(tgid, (service, missing));
        }
    }

    /// Attaches every slot of `library` found in `path` that is not
    /// attached (or paused) yet.
    fn probe(&mut self, tgid: u32, library: Library, path: &str) -> Result<(), String> {
        let (key, in_root) = file_key(tgid, path)?;
        let slots: Vec<usize> = (0..ENTRY_POINTS.len())
            .filter(|s| ENTRY_POINTS[*s].library == library)
            .collect();
        let mut wanted: Vec<usize> = Vec::new();
        for slot in &slots {
            if self.uprobes.needs(tgid, key, *slot) {
                wanted.push(*slot);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let offsets = self
            .resolved
            .entry(key)
            .or_insert_with(|| {
                let data =
                    crate::mapped::Mapped::open(&in_root).map_err(|e| format!("{path}: {e}"))?;
                let groups: Vec<&[&str]> = ENTRY_POINTS.iter().map(|e| e.symbols).collect();
                symbol_groups(&data, &groups).map_err(|e| format!("{path}: {e}"))
            })
            .clone()?;
        if slots.iter().all(|s| offsets[*s].is_empty()) {
            return Err(format!(
                "{path} exports none of the {} entry points (a stripped or wrapped library?); \
                 CUPTI deep mode still sees its kernels",
                library.api()
            ));
        }
        let mut attached = Vec::new();
        for slot in wanted {
            let entry = &ENTRY_POINTS[slot];
            self.uprobes
                .attach(
                    tgid,
                    key,
                    &in_root,
                    slot,
                    &offsets[slot],
                    entry.cookie(slot),
                )
                .map_err(|e| format!("{path} ({}): {e}", entry.name))?;
            if !offsets[slot].is_empty() {
                attached.push(entry.name);
            }
        }
        if !attached.is_empty() {
            log::info!(
                "probing CUDA {} API at {path}: {}",
                library.api(),
                attached.join(", ")
            );
        }
        Ok(())
    }

    /// Once a second: keeps the launch probes within the budget and adds
    /// the last second to the launch estimates.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let (attached, changes) = self.uprobes.enforce_budget();
        for c in changes {
            log::info!(
                "{}: {} launches/s in one process against a budget of {}: probing one second in {} (counts are estimates)",
                ENTRY_POINTS[c.slot].name,
                c.calls_per_second,
                self.budget,
                c.every
            );
        }
        for (key, count) in self.counts() {
            let slot = (u64::from(key) & cuda_cookie::SLOT_MASK) as usize;
            if !ENTRY_POINTS
                .get(slot)
                .is_some_and(super::entry_points::EntryPoint::budgeted)
            {
                continue;
            }
            let seen = count.saturating_sub(self.last_counts.insert(key, count).unwrap_or(0));
            let unseen = if attached.get(slot).copied().unwrap_or(true) {
                self.last_attached_second.insert(key, seen);
                0
            } else {
                self.last_attached_second.get(&key).copied().unwrap_or(0)
            };
            *self.estimated.entry(key).or_default() += (seen + unseen) as f64;
        }
    }

    /// Calls per `cuda_key`, summed over CPUs.
    fn counts(&self) -> Vec<(u32, u64)> {
        self.calls
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().map(|h| h.count).sum()))
            .collect()
    }

    /// Every (service, slot) with calls, sorted.
    pub fn slot_calls(&self) -> Vec<SlotCalls> {
        let mut out: Vec<SlotCalls> = Vec::new();
        for (key, per_cpu) in self.calls.iter().filter_map(Result::ok) {
            let mut hist = Log2Hist::ZERO;
            for h in per_cpu.iter() {
                hist.merge(h);
            }
            let slot = (u64::from(key) & cuda_cookie::SLOT_MASK) as usize;
            // Calls made since the last tick are not in the estimate yet:
            // add them as seen, so the estimate never trails the count.
            let since = hist
                .count
                .saturating_sub(self.last_counts.get(&key).copied().unwrap_or(0));
            out.push(SlotCalls {
                service: key >> 8,
                slot,
                estimated: self.estimated.get(&key).copied().unwrap_or(0.0) + since as f64,
                hist,
            });
        }
        out.sort_by_key(|c| (c.service, c.slot));
        out
    }

    /// The share of launches each slot sees (1: counted in full).
    pub fn sampling_ratios(&self) -> Vec<f64> {
        self.uprobes.sampling_ratios()
    }

    /// (slot, instruction probed) → probe sites, attached or paused.
    pub fn probe_sites(&self) -> BTreeMap<(usize, Instruction), usize> {
        self.uprobes.sites()
    }

    /// (service, library) → traced processes mapping it.
    pub fn processes(&self) -> BTreeMap<(u32, Library), u64> {
        let mut out = BTreeMap::new();
        for p in self.processes.values() {
            let libraries: BTreeSet<Library> = p.files.iter().map(|(l, _)| *l).collect();
            for l in libraries {
                *out.entry((p.service, l)).or_default() += 1;
            }
        }
        out
    }

    /// (service, library) → processes whose library cannot be probed.
    pub fn unavailable(&self) -> BTreeMap<(u32, Library), u64> {
        let mut out = BTreeMap::new();
        for (service, missing) in self.unavailable.values() {
            for l in missing.keys() {
                *out.entry((*service, *l)).or_default() += 1;
            }
        }
        out
    }

    /// Library files carrying CUDA probes.
    pub fn probed_files(&self) -> usize {
        self.uprobes.probed_files()
    }

    /// A process left (or exec'd): detach from files nobody traced uses.
    pub fn forget(&mut self, tgid: u32) {
        self.processes.remove(&tgid);
        self.unavailable.remove(&tgid);
        self.uprobes.forget(tgid);
    }
}
