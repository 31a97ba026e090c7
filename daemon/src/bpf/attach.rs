//! Turning the embedded object into attached programs and typed maps.

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{Program, RawTracePoint, TracePoint, UProbe},
};
use gapscope_ebpf_common::{
    GilRange, LONG_INTERVAL_GLOBAL, Log2Hist, OffCpuStats, SyscallKey, ThreadState,
    USER_GENERATION_MAP,
    names::{map, program},
};

use super::{Hook, OBJECT, PROGRAMS, raise_memlock, stats::StatsSwitch, tracefs};
use crate::syscall_table;

/// The uprobe programs, loaded at start and attached per library file
/// later (serialization, CUDA).
const UPROBE_PROGRAMS: [&str; 4] = program::UPROBES;

/// The loaded, attached programs. Dropping this detaches and unloads them.
pub struct Probes {
    ebpf: Ebpf,
    /// The kernel's BPF run-time statistics (`bpf::stats` switches them).
    pub stats: StatsSwitch,
    /// Whether `detach_all` ran.
    detached: bool,
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}

impl Probes {
    /// Detaches and unloads every program of ours, once (shutdown calls it
    /// first; dropping calls it again for nothing). Detaching a tracepoint
    /// program waits for an RCU grace period (tens of milliseconds); one
    /// after the other, eight of them took ~0.4 s. Detaching them all at
    /// once keeps shutdown well inside a second.
    pub fn detach_all(&mut self) {
        if std::mem::replace(&mut self.detached, true) {
            return;
        }
        std::thread::scope(|scope| {
            for (name, program) in self.ebpf.programs_mut() {
                let ours = PROGRAMS.iter().any(|(attached, _)| *attached == name)
                    || UPROBE_PROGRAMS.contains(&name);
                if !ours {
                    continue;
                }
                scope.spawn(move || {
                    let result = match program {
                        Program::TracePoint(p) => p.unload(),
                        Program::RawTracePoint(p) => p.unload(),
                        Program::UProbe(p) => p.unload(),
                        _ => Ok(()),
                    };
                    if let Err(e) = result {
                        log::warn!("detaching {name}: {e}");
                    }
                });
            }
        });
    }
}

/// One program's cumulative run statistics.
pub struct ProgramStats {
    pub name: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
    /// Times the kernel skipped the program because the CPU was already
    /// inside BPF (`None` before Linux 5.12, or for a program not loaded).
    pub misses: Option<u64>,
}

/// A program's `recursion_misses` from `BPF_OBJ_GET_INFO_BY_FD` (aya does
/// not expose it). The kernel runs one BPF program at a time per CPU for
/// tracepoints and kprobes, and a BPF map syscall holds the CPU's slot too,
/// even while its thread is preempted: an event that fires meanwhile (a
/// context switch, a wakeup) runs no program and is counted here. Linux
/// 6.7 and later count misses of classic tracepoints; raw tracepoints and
/// uprobes since 5.12.
fn recursion_misses(program: &Program) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya_obj::generated::{bpf_cmd, bpf_prog_info};

    let fd = program.fd().ok()?.as_fd().as_raw_fd();
    // SAFETY: all-zero is a valid bpf_prog_info (integers and pointers).
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // The OBJ_GET_INFO_BY_FD member of union bpf_attr.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: the attribute points at a buffer of the length it states;
    // the kernel writes at most that much.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    // An older kernel fills less: the field is there only when its
    // bytes were written.
    let needed = std::mem::offset_of!(bpf_prog_info, recursion_misses) + 8;
    (rc == 0 && attr.info_len as usize >= needed).then_some(info.recursion_misses)
}

impl Probes {
    /// A uprobe/uretprobe pair by name (loaded, not attached:
    /// `bpf::uprobes` attaches them per library file).
    pub fn uprobe_pair(
        &mut self,
        (enter_name, exit_name): (&str, &str),
    ) -> Option<(&mut UProbe, &mut UProbe)> {
        let (mut enter, mut exit) = (None, None);
        for (name, program) in self.ebpf.programs_mut() {
            if name == enter_name {
                enter = Some(program);
            } else if name == exit_name {
                exit = Some(program);
            }
        }
        Some((enter?.try_into().ok()?, exit?.try_into().ok()?))
    }

    /// Run time and count of every attached program, as measured while the
    /// statistics were on (`bpf::stats`).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        PROGRAMS
            .iter()
            .map(|(name, _)| *name)
            .chain(UPROBE_PROGRAMS.iter().copied())
            .filter_map(|name| {
                let program = self.ebpf.program(name)?;
                let info = program.info().ok()?;
                Some(ProgramStats {
                    name,
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                    misses: recursion_misses(program),
                })
            })
            .collect()
    }
}

/// The maps the metrics are read from.
pub struct KernelMaps {
    /// Read only to report how many threads are tracked.
    pub threads: HashMap<MapData, u32, ThreadState>,
    pub syscalls: PerCpuHashMap<MapData, SyscallKey, Log2Hist>,
    pub offcpu: PerCpuArray<MapData, OffCpuStats>,
    pub gil_wait: PerCpuArray<MapData, Log2Hist>,
    pub ser_calls: PerCpuArray<MapData, Log2Hist>,
    pub counters: PerCpuArray<MapData, u64>,
}

/// Everything `attach_all` produces.
pub struct Attached {
    pub probes: Probes,
    pub maps: KernelMaps,
    /// tgid → service id, owned by `discovery::Targets`.
    pub targets: HashMap<MapData, u32, u32>,
    /// The programs' `USER_GENERATION` (see
    /// `gapscope_ebpf_common::TargetCache`).
    pub generation: Array<MapData, u64>,
    /// Process events from the kernel.
    pub events: RingBuf<MapData>,
    /// Long stalls from the kernel (`timeline`).
    pub intervals: RingBuf<MapData>,
    /// (tgid << 32 | probe) → serialization calls, owned by
    /// `python::serialization` for the per-process budget.
    pub ser_process_calls: HashMap<MapData, u64, u64>,
    /// (tgid << 32 | slot) → CUDA launches, owned by `cuda` for the
    /// launch budget.
    pub cuda_process_calls: HashMap<MapData, u64, u64>,
    /// `cuda_key(service, slot)` → CUDA call durations, read by `cuda`
    /// (launch estimates) and the metrics.
    pub cuda_calls: PerCpuHashMap<MapData, u32, Log2Hist>,
    /// tgid → GIL address range, owned by `python::GilTracker`.
    pub gil_ranges: HashMap<MapData, u32, GilRange>,
}

/// Loads the object, fills the syscall family table and attaches every
/// program.
pub fn attach_all(min_interval_ns: u64) -> anyhow::Result<Attached> {
    raise_memlock();
    let tracefs = tracefs::ensure_mounted()?;
    tracefs::verify_offsets(&tracefs)?;

    let mut ebpf = EbpfLoader::new()
        .override_global(LONG_INTERVAL_GLOBAL, &min_interval_ns, true)
        .load(OBJECT)
        .context("loading the BPF object into the kernel")?;

    let mut family: Array<_, u32> = Array::try_from(take(&mut ebpf, map::SYSCALL_FAMILY)?)?;
    for (nr, fam) in syscall_table::family_table().into_iter().enumerate() {
        family.set(nr as u32, fam, 0)?;
    }

    for (name, hook) in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?;
        match hook {
            Hook::Tracepoint(category, event) => {
                let tp: &mut TracePoint = program.try_into()?;
                tp.load().with_context(|| format!("loading {name}"))?;
                tp.attach(category, event)
                    .with_context(|| format!("attaching {name} to {category}:{event}"))?;
            }
            Hook::RawTracepoint(tp_name) => {
                let tp: &mut RawTracePoint = program.try_into()?;
                tp.load().with_context(|| format!("loading {name}"))?;
                tp.attach(tp_name)
                    .with_context(|| format!("attaching {name} to raw tracepoint {tp_name}"))?;
            }
        }
        let id = ebpf
            .program(name)
            .and_then(|p| p.info().ok())
            .map(|i| i.id());
        log::info!("attached {name} (BPF program id {})", id.unwrap_or(0));
    }

    for name in UPROBE_PROGRAMS {
        let program: &mut UProbe = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
    }

    let maps = KernelMaps {
        threads: HashMap::try_from(take(&mut ebpf, map::THREADS)?)?,
        syscalls: PerCpuHashMap::try_from(take(&mut ebpf, map::SYSCALLS)?)?,
        offcpu: PerCpuArray::try_from(take(&mut ebpf, map::OFFCPU)?)?,
        gil_wait: PerCpuArray::try_from(take(&mut ebpf, map::GIL_WAIT)?)?,
        ser_calls: PerCpuArray::try_from(take(&mut ebpf, map::SER_CALLS)?)?,
        counters: PerCpuArray::try_from(take(&mut ebpf, map::COUNTERS)?)?,
    };
    Ok(Attached {
        maps,
        targets: HashMap::try_from(take(&mut ebpf, map::TARGETS)?)?,
        generation: Array::try_from(take(&mut ebpf, USER_GENERATION_MAP)?)?,
        events: RingBuf::try_from(take(&mut ebpf, map::PROC_EVENTS)?)?,
        intervals: RingBuf::try_from(take(&mut ebpf, map::TIMELINE)?)?,
        ser_process_calls: HashMap::try_from(take(&mut ebpf, map::SER_PROCESS_CALLS)?)?,
        cuda_process_calls: HashMap::try_from(take(&mut ebpf, map::CUDA_PROCESS_CALLS)?)?,
        cuda_calls: PerCpuHashMap::try_from(take(&mut ebpf, map::CUDA_CALLS)?)?,
        gil_ranges: HashMap::try_from(take(&mut ebpf, map::GIL_RANGES)?)?,
        probes: Probes {
            ebpf,
            stats: StatsSwitch::default(),
            detached: false,
        },
    })
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
}
