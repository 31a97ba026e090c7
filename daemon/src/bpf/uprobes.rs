//! Uprobe/uretprobe pairs on library files, shared by the serialization
//! probes and the CUDA API probes.
//!
//! A probe is attached once per library file (device, inode), whichever
//! traced process maps it first, and detached when the last traced process
//! using the file leaves: a hundred workers sharing one libcuda cost one
//! attachment. The programs find the calling process in `TARGETS` like
//! every other program, so untraced users of the file pay one lookup.
//!
//! Slots (a codec function, a CUDA entry point) can be kept within a calls
//! budget: the kernel counts calls per (process, slot), and a slot whose
//! busiest process goes over the budget is attached one second in N. A
//! slot attached while believed within its budget (a new probe, or every
//! probe of a daemon that just restarted) can be looked at sooner
//! (`trip_early`, every hundredth of a second in its first second): a busy
//! process then pays for a hundredth of a second of probing, not for the
//! second or two until the next whole-second look.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};

use super::{Probes, reaper::retire};

/// A library file, by (device, inode).
pub type FileKey = (u64, u64);

/// The (device, inode) of `file` as process `tgid` sees it (its mount
/// namespace), and the path to open it by.
pub fn file_key(tgid: u32, file: &str) -> Result<(FileKey, String), String> {
    let in_root = format!("/proc/{tgid}/root{file}");
    let meta = fs::metadata(&in_root).map_err(|e| format!("{file}: {e}"))?;
    Ok(((meta.dev(), meta.ino()), in_root))
}

/// Where to probe a function that starts at file offset `offset`: past a
/// leading `endbr64` when a register `push` follows it, else at its start.
///
/// The kernel emulates a probed `push` (and `nop`) in the trap, but runs
/// `endbr64`, `mov` or `sub` out of line, single-stepped: a second trap,
/// which on a VM costs far more than the probe. Measured on this project's
/// development VM (kernel 6.18, tracefs uprobes, no program): 21.5 µs a hit
/// on `endbr64`, 0.55 µs on the `push` after it. Libraries built with
/// `-fcf-protection` (Ubuntu's, by default) start every function with
/// `endbr64`. The `push` four bytes on is still run once per call and
/// before the stack moves, so the uretprobe there finds the return address
/// where the kernel looks for it; a function that jumps back to its own
/// prologue `push` would count twice, and compilers do not emit that.
fn probe_site(file: &fs::File, offset: u64) -> (u64, Instruction) {
    use std::os::unix::fs::FileExt as _;
    if !cfg!(target_arch = "x86_64") {
        return (offset, Instruction::Unclassified);
    }
    let mut start = [0u8; 6];
    match file.read_exact_at(&mut start, offset) {
        Ok(()) => {
            let past = past_endbr(&start);
            (offset + past, Instruction::of(&start[past as usize..]))
        }
        Err(_) => (offset, Instruction::Unclassified),
    }
}

/// How many bytes of `code` to step over: 4 for `endbr64` then `push`
/// of a register (`50+r`, or `41 50+r` for r8–r15), else 0.
fn past_endbr(code: &[u8; 6]) -> u64 {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    if code[..4] == ENDBR64 && Instruction::of(&code[4..]) == Instruction::Push {
        4
    } else {
        0
    }
}

/// The x86-64 instruction a probe sits on, as far as its price goes: the
/// kernel emulates a register `push` and a `nop` in the trap; anything
/// else (`endbr64`, `mov`, `sub`, …) it runs out of line, single-stepped.
/// Exported per site (`gapscope_cuda_probe_sites`,
/// `gapscope_serialization_probe_sites`), so an operator sees
/// which probes pay the second trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Instruction {
    Push,
    Nop,
    Other,
    /// Not read (another architecture, or the file could not be read).
    Unclassified,
}

impl Instruction {
    /// What `code` starts with: `50+r` or `41 50+r` is a register push;
    /// `90`, `66 90`, `0f 1f /0` and `66 0f 1f /0` are nops.
    fn of(code: &[u8]) -> Self {
        match code {
            [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..] => Self::Push,
            [0x90, ..] | [0x66, 0x90, ..] | [0x0f, 0x1f, ..] | [0x66, 0x0f, 0x1f, ..] => Self::Nop,
            [] => Self::Unclassified,
            _ => Self::Other,
        }
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Nop => "nop",
            Self::Other => "other",
            Self::Unclassified => "unclassified",
        }
    }
}

struct Link {
    slot: usize,
    enter: UProbeLinkId,
    exit: UProbeLinkId,
}

#[derive(Default)]
struct Attached {
    links: Vec<Link>,
    users: HashSet<u32>,
    /// (slot, site) → the instruction probed there, from the first attach
    /// until the file is forgotten: a slot paused by its budget keeps its
    /// sites in `sites()`.
    sites: HashMap<(usize, u64), Instruction>,
}

/// A slot's sampling: attached every second while every process's calls
/// stay within the budget; above it, attached one second in `every`.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    every: u32,
    /// Seconds since it was last attached.
    idle: u32,
    /// Detached by `trip_early` in the second now running, which counts
    /// as the slot's attached second (`every` is set already).
    cut: bool,
}

impl Sampling {
    fn paused(&self) -> bool {
        self.idle > 0 || self.cut
    }
}

/// How long after its first attachment a slot stays fresh at most (with
/// idle processes, say): the map reads of `trip_early` stop after it.
const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// How long after its first attachment a fresh slot is looked at every
/// hundredth of a second (`trips_soon`); a tenth after that. A busy
/// process goes over a budget of 1,000 calls a second within milliseconds.
const YOUNG_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A slot over budget: what the caller may want to log.
pub struct BudgetChange {
    pub slot: usize,
    pub calls_per_second: u64,
    pub every: u32,
}

pub struct UprobeSet {
    probes: Arc<Mutex<Probes>>,
    /// The (uprobe, uretprobe) program names.
    programs: (&'static str, &'static str),
    /// Calls per second, per process and slot, attached in full.
    budget: u64,
    /// Which slots the budget applies to (the others stay attached).
    budgeted: Vec<bool>,
    sampling: Vec<Sampling>,
    /// The kernel's (tgid << 32 | slot) → calls counts, and their values
    /// when last looked at.
    process_calls: BpfHashMap<MapData, u64, u64>,
    last_process_calls: HashMap<u64, u64>,
    /// When `enforce_budget` last looked, and the slots attached while
    /// believed within the budget that no whole second with calls has
    /// judged yet (`trip_early` looks at those).
    window_start: std::time::Instant,
    fresh: Vec<Option<std::time::Instant>>,
    /// Whether the owner calls `trip_early` (only then are slots fresh).
    trips_early: bool,
    files: HashMap<FileKey, Attached>,
    /// The files each traced process uses.
    uses: HashMap<u32, HashSet<FileKey>>,
}

impl UprobeSet {
    pub fn new(
        probes: Arc<Mutex<Probes>>,
        programs: (&'static str, &'static str),
        budgeted: Vec<bool>,
        budget: u64,
        process_calls: BpfHashMap<MapData, u64, u64>,
    ) -> Self {
        Self {
            probes,
            programs,
            budget: budget.max(1),
            sampling: vec![
                Sampling {
                    every: 1,
                    idle: 0,
                    cut: false
                };
                budgeted.len()
            ],
            window_start: std::time::Instant::now(),
            fresh: vec![None; budgeted.len()],
            trips_early: false,
            budgeted,
            process_calls,
            last_process_calls: HashMap::new(),
            files: HashMap::new(),
            uses: HashMap::new(),
        }
    }

    /// The owner will call `trip_early` between whole-second looks.
    pub fn trip_early_too(mut self) -> Self {
        self.trips_early = true;
        self
    }

    /// Whether `slot` still has to be attached to file `key` for `tgid`.
    /// When it is attached already (or paused by its budget) this records
    /// that `tgid` uses the file and says no.
    pub fn needs(&mut self, tgid: u32, key: FileKey, slot: usize) -> bool {
        // Paused: not attached to any file, a new one included (its
        // sampling ratio would overstate what it missed otherwise).
        let paused = self.sampling[slot].paused();
        let attached = self
            .files
            .get(&key)
            .is_some_and(|a| a.links.iter().any(|l| l.slot == slot));
        if paused || attached {
            self.files.entry(key).or_default().users.insert(tgid);
            self.uses.entry(tgid).or_default().insert(key);
            return false;
        }
        true
    }

    /// Attaches `slot` at each of `offsets` in the file (opened as
    /// `in_root`) with `cookie`, all or none, and records that `tgid` uses
    /// it. No offsets attaches nothing and is not an error.
    pub fn attach(
        &mut self,
        tgid: u32,
        key: FileKey,
        in_root: &str,
        slot: usize,
        offsets: &[u64],
        cookie: u64,
    ) -> Result<(), String> {
        let mut probes = self
            .probes
            .lock()
            .map_err(|_| "probes poisoned".to_string())?;
        let (enter, exit) = probes
            .uprobe_pair(self.programs)
            .ok_or_else(|| format!("programs {:?} missing", self.programs))?;
        let mut links = Vec::new();
        // ((slot, site), instruction) of each link made.
        let mut placed = Vec::with_capacity(offsets.len());
        let file = fs::File::open(in_root).ok();
        for offset in offsets {
            let (site, instruction) = file
                .as_ref()
                .map_or((*offset, Instruction::Unclassified), |f| {
                    probe_site(f, *offset)
                });
            // Two names whose probes would land on one instruction would
            // count each call twice.
            if placed.iter().any(|((_, s), _)| *s == site) {
                continue;
            }
            let point = || UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(site),
                cookie: Some(cookie),
            };
            let attached = enter
                .attach(point(), in_root, UProbeScope::AllProcesses)
                .and_then(
                    |e| match exit.attach(point(), in_root, UProbeScope::AllProcesses) {
                        Ok(x) => Ok((e, x)),
                        Err(err) => {
                            retire(enter.take_link(e));
                            Err(err)
                        }
                    },
                );
            match attached {
                Ok((enter, exit)) => {
                    placed.push(((slot, site), instruction));
                    links.push(Link { slot, enter, exit });
                }
                Err(err) => {
                    for l in links {
                        retire(enter.take_link(l.enter));
                        retire(exit.take_link(l.exit));
                    }
                    let at = if site == *offset {
                        format!("{offset:#x}")
                    } else {
                        format!("{site:#x} (past the endbr64 of the function at {offset:#x})")
                    };
                    return Err(format!("attaching at {at}: {}", with_sources(&err)));
                }
            }
        }
        if self.trips_early
            && !links.is_empty()
            && self.budgeted[slot]
            && self.sampling[slot].every == 1
        {
            self.fresh[slot].get_or_insert_with(std::time::Instant::now);
        }
        let a = self.files.entry(key).or_default();
        a.links.extend(links);
        a.sites.extend(placed);
        a.users.insert(tgid);
        self.uses.entry(tgid).or_default().insert(key);
        Ok(())
    }

    /// Each slot's calls since the last look by its busiest process, from
    /// the kernel's per-process counts; with `seen`, the counts read.
    fn busiest_since_last_look(&self, mut seen: Option<&mut HashMap<u64, u64>>) -> Vec<u64> {
        let mut busiest = vec![0u64; self.sampling.len()];
        for (key, total) in self.process_calls.iter().filter_map(Result::ok) {
            let slot = (key & 0xffff_ffff) as usize;
            let recent =
                total.saturating_sub(self.last_process_calls.get(&key).copied().unwrap_or(0));
            if let Some(b) = busiest.get_mut(slot) {
                *b = (*b).max(recent);
            }
            if let Some(seen) = seen.as_deref_mut() {
                seen.insert(key, total);
            }
        }
        busiest
    }

    /// Each slot's calls in the last second by its busiest process; the
    /// counts become the next second's starting point, and processes that
    /// are gone are forgotten.
    fn busiest_process_calls(&mut self) -> Vec<u64> {
        let mut seen = HashMap::new();
        let busiest = self.busiest_since_last_look(Some(&mut seen));
        let gone: Vec<u64> = seen
            .keys()
            .filter(|key| !self.uses.contains_key(&((*key >> 32) as u32)))
            .copied()
            .collect();
        for key in gone {
            let _ = self.process_calls.remove(&key);
            seen.remove(&key);
        }
        self.last_process_calls = seen;
        busiest
    }

    /// Whether a fresh slot was first attached less than `YOUNG_FOR` ago:
    /// the owner then calls `trip_early` every hundredth of a second.
    pub fn trips_soon(&self) -> bool {
        self.fresh
            .iter()
            .flatten()
            .any(|at| at.elapsed() < YOUNG_FOR)
    }

    /// Between whole-second looks (see `trips_soon`): a fresh slot
    /// (attached while believed within the budget, no second with calls
    /// judged since, first attached at most `FRESH_FOR` ago) whose busiest
    /// process has already made more calls this second than the budget
    /// allows in one is detached now, as the next look would detach it,
    /// its duty cycle set from the rate since it was attached (or since
    /// the second began). The second it is cut short in counts as its
    /// attached second, so the duty cycle and the sampling ratio are as if
    /// the whole-second look had decided; the calls that second did not
    /// see are the one undercount, once. Costs nothing while no slot is
    /// fresh.
    pub fn trip_early(&mut self) -> Vec<BudgetChange> {
        if self.fresh.iter().all(Option::is_none) {
            return Vec::new();
        }
        let calls = self.busiest_since_last_look(None);
        let mut changes = Vec::new();
        for (slot, fresh) in self.fresh.iter_mut().enumerate() {
            let recent = calls.get(slot).copied().unwrap_or(0);
            let Some(attached_at) = *fresh else { continue };
            if recent <= self.budget {
                continue;
            }
            *fresh = None;
            let since = attached_at.max(self.window_start);
            // The rate over what was seen, however short: a busy process
            // tripped after a hundredth of a second is as busy as it
            // looks. (Taking at least a tenth would read it at a tenth of
            // its rate and probe it in full for a whole second again 10 s
            // on; a burst read high pauses the probe for up to a minute,
            // and its sampling ratio says so.)
            let elapsed = since.elapsed().as_secs_f64().max(0.01);
            let per_second = (recent as f64 / elapsed).round() as u64;
            let every = per_second.div_ceil(self.budget).clamp(2, 60) as u32;
            self.sampling[slot] = Sampling {
                every,
                idle: 0,
                cut: true,
            };
            changes.push(BudgetChange {
                slot,
                calls_per_second: per_second,
                every,
            });
        }
        if !changes.is_empty() {
            self.detach_paused();
        }
        changes
    }

    /// Once a second: compares each budgeted slot's calls in the last
    /// second by its busiest process with the budget, and pauses or
    /// resumes the slot. A paused slot is detached from every file; the
    /// caller's next look at the processes attaches resumed ones again.
    ///
    /// Returns whether each slot was attached during the second that just
    /// ended, and the slots whose duty cycle changed.
    pub fn enforce_budget(&mut self) -> (Vec<bool>, Vec<BudgetChange>) {
        let calls = self.busiest_process_calls();
        let mut attached = Vec::with_capacity(self.sampling.len());
        let mut changes = Vec::new();
        for (slot, s) in self.sampling.iter_mut().enumerate() {
            attached.push(s.idle == 0);
            if !self.budgeted[slot] {
                continue;
            }
            if s.cut {
                // Its attached second, cut short: idle from the next.
                s.cut = false;
                s.idle = 1;
                continue;
            }
            let recent = calls.get(slot).copied().unwrap_or(0);
            if s.idle == 0 {
                // Attached this past second: set the duty cycle.
                let every = recent.div_ceil(self.budget).clamp(1, 60) as u32;
                if every != s.every {
                    changes.push(BudgetChange {
                        slot,
                        calls_per_second: recent,
                        every,
                    });
                }
                s.every = every;
                if every > 1 {
                    s.idle = 1;
                }
            } else if s.idle + 1 >= s.every {
                s.idle = 0;
            } else {
                s.idle += 1;
            }
        }
        // A fresh slot stays fresh until a second in which it saw calls
        // has been judged whole: probes attached to an idle process are
        // still fresh when it gets busy.
        for (fresh, recent) in self.fresh.iter_mut().zip(&calls) {
            if *recent > 0 || fresh.is_some_and(|t| t.elapsed() > FRESH_FOR) {
                *fresh = None;
            }
        }
        self.window_start = std::time::Instant::now();
        self.detach_paused();
        (attached, changes)
    }

    /// Detaches every paused slot from every file.
    fn detach_paused(&mut self) {
        let paused: Vec<usize> = (0..self.sampling.len())
            .filter(|i| self.sampling[*i].paused())
            .collect();
        if !paused.is_empty()
            && let Ok(mut probes) = self.probes.lock()
            && let Some((enter, exit)) = probes.uprobe_pair(self.programs)
        {
            for a in self.files.values_mut() {
                let (pause, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut a.links)
                    .into_iter()
                    .partition(|l| paused.contains(&l.slot));
                a.links = keep;
                for l in pause {
                    retire(enter.take_link(l.enter));
                    retire(exit.take_link(l.exit));
                }
            }
        }
    }

    /// The share of calls each slot sees: 1 when probed in full, 1/N when
    /// attached one second in N.
    pub fn sampling_ratios(&self) -> Vec<f64> {
        self.sampling
            .iter()
            .map(|s| 1.0 / f64::from(s.every))
            .collect()
    }

    /// A process left: detach from files no traced process uses any more.
    pub fn forget(&mut self, tgid: u32) {
        let Some(keys) = self.uses.remove(&tgid) else {
            return;
        };
        for key in keys {
            let Some(a) = self.files.get_mut(&key) else {
                continue;
            };
            a.users.remove(&tgid);
            if !a.users.is_empty() {
                continue;
            }
            if let Some(a) = self.files.remove(&key)
                && let Ok(mut probes) = self.probes.lock()
                && let Some((enter, exit)) = probes.uprobe_pair(self.programs)
            {
                for l in a.links {
                    retire(enter.take_link(l.enter));
                    retire(exit.take_link(l.exit));
                }
                log::debug!("detached {:?} from file {key:?}", self.programs);
            }
        }
    }

    /// Files carrying probes now.
    pub fn probed_files(&self) -> usize {
        self.files.values().filter(|a| !a.links.is_empty()).count()
    }

    /// (slot, instruction probed) → sites placed, over every file a traced
    /// process uses: attached now, or paused by the budget.
    pub fn sites(&self) -> std::collections::BTreeMap<(usize, Instruction), usize> {
        let mut out = std::collections::BTreeMap::new();
        for ((slot, _), instruction) in self.files.values().flat_map(|a| &a.sites) {
            *out.entry((*slot, *instruction)).or_default() += 1;
        }
        out
    }
}

/// An error and its sources, one after another: aya's attach errors keep
/// the errno in the source.
fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{Instruction, past_endbr};

    #[test]
    fn the_probed_instruction_is_named_by_its_first_bytes() {
        use Instruction::{Nop, Other, Push, Unclassified};
        for (code, expected) in [
            (&[0x55, 0x48][..], Push),              // push %rbp
            (&[0x41, 0x57][..], Push),              // push %r15
            (&[0x90][..], Nop),                     // nop
            (&[0x66, 0x90][..], Nop),               // xchg %ax,%ax
            (&[0x0f, 0x1f, 0x44, 0x00][..], Nop),   // nopl 0(%rax,%rax)
            (&[0x66, 0x0f, 0x1f, 0x44][..], Nop),   // nopw 0(%rax,%rax)
            (&[0xf3, 0x0f, 0x1e, 0xfa][..], Other), // endbr64
            (&[0x48, 0x89, 0xf8][..], Other),       // mov %rdi,%rax
            (&[0x48, 0x83, 0xec][..], Other),       // sub $..,%rsp
            (&[0x41, 0x89][..], Other),             // a REX prefix, not a push
            (&[0x41][..], Other),
            (&[][..], Unclassified),
        ] {
            assert_eq!(Instruction::of(code), expected, "{code:02x?}");
        }
    }

    #[test]
    fn a_probe_steps_over_endbr64_only_onto_a_push() {
        let endbr = [0xf3, 0x0f, 0x1e, 0xfa];
        let with = |next: [u8; 2]| [endbr[0], endbr[1], endbr[2], endbr[3], next[0], next[1]];
        // push %rbp, push %rbx, push %r15: emulated by the kernel.
        assert_eq!(past_endbr(&with([0x55, 0x48])), 4);
        assert_eq!(past_endbr(&with([0x53, 0x48])), 4);
        assert_eq!(past_endbr(&with([0x41, 0x57])), 4);
        // sub $8,%rsp and mov %rdi,%rax: single-stepped wherever the probe
        // is, and the stack moves; a REX prefix that is not a push.
        assert_eq!(past_endbr(&with([0x48, 0x83])), 0);
        assert_eq!(past_endbr(&with([0x48, 0x89])), 0);
        assert_eq!(past_endbr(&with([0x41, 0x89])), 0);
        // No endbr64: the start, whatever follows.
        assert_eq!(past_endbr(&[0x55, 0x48, 0x89, 0xe5, 0x53, 0x48]), 0);
        assert_eq!(past_endbr(&[0xf3, 0x0f, 0x1e, 0xfb, 0x55, 0x48]), 0);
    }
}
