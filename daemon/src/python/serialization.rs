//! Serialization probes: a uprobe/uretprobe pair on the C function that
//! does the work of each codec, attached once per library file (device,
//! inode) whichever traced process maps it first, and detached when the
//! last traced process using it leaves.
//!
//! json (`_json`: `encoder_call` for dumps, `scanner_call` for loads) and
//! pickle (`_pickle`: `_pickle_dumps`, `_pickle_loads`) are built in; the
//! extension module may be a shared object (`lib-dynload/_json…so`) or
//! linked into the interpreter. Their functions are local symbols, so a
//! stripped build (Debian's) cannot be probed: that is reported per codec.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex},
};

use aya::programs::uprobe::{UProbeAttachPoint, UProbeLinkId, UProbeScope};
use gapscope_ebpf_common::MAX_SER_PROBES;

use crate::bpf::Probes;

/// One function to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub codec: String,
    pub op: String,
    /// Start of the library's file name (`_json.` matches
    /// `_json.cpython-311-x86_64-linux-gnu.so`).
    pub module: String,
    pub symbol: String,
    /// The module's init function, which an interpreter exports when the
    /// module is built in (stripped or not); None for other libraries.
    pub builtin_init: Option<String>,
}

impl ProbeSpec {
    fn builtin(codec: &str, op: &str, module: &str, symbol: &str, init: &str) -> Self {
        Self {
            codec: codec.into(),
            op: op.into(),
            module: module.into(),
            symbol: symbol.into(),
            builtin_init: Some(init.into()),
        }
    }
}

impl ProbeSpec {
    /// The file to probe in a process whose `/proc/PID/maps` is `maps`: the
    /// module as a mapped shared object (second value true), or else the
    /// interpreter, where a built-in module lives.
    pub fn file(&self, maps: &str, interpreter: &Path) -> (String, bool) {
        let module = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| {
                Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(self.module.as_str()) && n.contains(".so"))
            });
        match module {
            Some(m) => (m.to_string(), true),
            None => (interpreter.to_string_lossy().into_owned(), false),
        }
    }
}

/// The built-in probes: json and pickle's C accelerators.
pub fn default_specs() -> Vec<ProbeSpec> {
    vec![
        ProbeSpec::builtin("json", "encode", "_json.", "encoder_call", "PyInit__json"),
        ProbeSpec::builtin("json", "decode", "_json.", "scanner_call", "PyInit__json"),
        ProbeSpec::builtin(
            "pickle",
            "encode",
            "_pickle.",
            "_pickle_dumps",
            "PyInit__pickle",
        ),
        ProbeSpec::builtin(
            "pickle",
            "decode",
            "_pickle.",
            "_pickle_loads",
            "PyInit__pickle",
        ),
    ]
}

/// Most probes at once, built-in and user-defined together; a probe's
/// index is its attach cookie.
pub const MAX_PROBES: usize = MAX_SER_PROBES as usize;

type FileKey = (u64, u64);

struct Attached {
    links: Vec<(usize, UProbeLinkId, UProbeLinkId)>,
    users: HashSet<u32>,
}

/// A probe's sampling: attached every second while its calls stay within
/// the budget; above it, attached one second in `every`.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    every: u32,
    /// Seconds since it was last attached.
    idle: u32,
    /// Calls counted when last looked at (all services together).
    last_calls: u64,
}

pub struct SerializationTracker {
    probes: Arc<Mutex<Probes>>,
    /// What to probe: the built-in specs, then the configured ones.
    specs: Arc<[ProbeSpec]>,
    /// Calls per second per probe above which it is sampled.
    budget: u64,
    sampling: Vec<Sampling>,
    /// Files probed, by (device, inode).
    files: HashMap<FileKey, Attached>,
    /// The files each traced process uses.
    uses: HashMap<u32, HashSet<FileKey>>,
    /// (service, codec) → why it cannot be probed, per process.
    unavailable: HashMap<u32, (u32, BTreeMap<String, String>)>,
    /// Whether a file has a symbol: files are read once, not every scan.
    symbols: HashMap<(FileKey, String), bool>,
}

impl SerializationTracker {
    pub fn new(probes: Arc<Mutex<Probes>>, specs: Arc<[ProbeSpec]>, budget: u64) -> Self {
        let sampling = vec![
            Sampling {
                every: 1,
                idle: 0,
                last_calls: 0,
            };
            specs.len()
        ];
        Self {
            probes,
            specs,
            budget,
            sampling,
            files: HashMap::new(),
            uses: HashMap::new(),
            unavailable: HashMap::new(),
            symbols: HashMap::new(),
        }
    }

    /// Looks at what a traced Python process maps and probes any codec
    /// module it has loaded since the last look. `interpreter` is the file
    /// holding the interpreter (built-in modules live there).
    pub fn scan(&mut self, tgid: u32, service: u32, interpreter: &Path) {
        let Ok(maps) = fs::read_to_string(format!("/proc/{tgid}/maps")) else {
            return;
        };
        let mut missing = BTreeMap::new();
        let specs = self.specs.clone();
        for (index, spec) in specs.iter().enumerate() {
            let (file, module) = spec.file(&maps, interpreter);
            if let Err(why) = self.probe(tgid, index, &file) {
                // A module not imported yet is not an error; one built
                // into a stripped interpreter is.
                let built_in = !module
                    && spec
                        .builtin_init
                        .as_deref()
                        .is_some_and(|init| self.has_symbol(tgid, &file, init));
                if module || built_in {
                    missing.insert(spec.codec.clone(), why);
                }
            }
        }
        let before = self.unavailable.get(&tgid).map(|(_, m)| m);
        for (codec, why) in &missing {
            if before.and_then(|m| m.get(codec)) != Some(why) {
                log::warn!("pid {tgid}: cannot probe {codec}: {why}");
            }
        }
        if missing.is_empty() {
            self.unavailable.remove(&tgid);
        } else {
            self.unavailable.insert(tgid, (service, missing));
        }
    }

    /// Attaches probe `index` to `file` unless it already is (or is
    /// paused by its sampling), and records that `tgid` uses it.
    fn probe(&mut self, tgid: u32, index: usize, file: &str) -> Result<(), String> {
        let in_root = format!("/proc/{tgid}/root{file}");
        let meta = fs::metadata(&in_root).map_err(|e| format!("{file}: {e}"))?;
        let key = (meta.dev(), meta.ino());
        let paused = self.sampling[index].idle > 0;
        if let Some(a) = self.files.get_mut(&key)
            && (paused || a.links.iter().any(|(i, _, _)| *i == index))
        {
            a.users.insert(tgid);
            self.uses.entry(tgid).or_default().insert(key);
            return Ok(());
        }
        let spec = self.specs[index].clone();
        if !self.has_symbol(tgid, file, &spec.symbol) {
            return Err(format!(
                "{} has no symbol {} (stripped?): install the interpreter's debug symbols or use a build that keeps them",
                file, spec.symbol
            ));
        }
        let mut probes = self
            .probes
            .lock()
            .map_err(|_| "probes poisoned".to_string())?;
        let (enter, exit) = probes
            .serialization_programs()
            .ok_or("serialization programs missing")?;
        let point = || UProbeAttachPoint {
            location: spec.symbol.as_str().into(),
            cookie: Some(index as u64),
        };
        let enter_link = enter
            .attach(point(), &in_root, UProbeScope::AllProcesses)
            .map_err(|e| format!("attaching to {}:{}: {e}", file, spec.symbol))?;
        let exit_link = match exit.attach(point(), &in_root, UProbeScope::AllProcesses) {
            Ok(l) => l,
            Err(e) => {
                let _ = enter.detach(enter_link);
                return Err(format!("attaching to {}:{}: {e}", file, spec.symbol));
            }
        };
        log::info!(
            "probing {} {} at {}:{}",
            spec.codec,
            spec.op,
            file,
            spec.symbol
        );
        let a = self.files.entry(key).or_insert_with(|| Attached {
            links: Vec::new(),
            users: HashSet::new(),
        });
        a.links.push((index, enter_link, exit_link));
        a.users.insert(tgid);
        self.uses.entry(tgid).or_default().insert(key);
        Ok(())
    }

    /// Once a second: compares each probe's calls in the last second
    /// (`calls[i]`, all services together, as the kernel counted them) with
    /// the budget, and pauses or resumes it. A paused probe is detached
    /// from every file; resuming lets the next `scan` attach it again.
    pub fn enforce_budget(&mut self, calls: &[u64]) {
        for (index, s) in self.sampling.iter_mut().enumerate() {
            let total = calls.get(index).copied().unwrap_or(0);
            let recent = total.saturating_sub(s.last_calls);
            s.last_calls = total;
            if s.idle == 0 {
                // Attached this past second: set the duty cycle.
                let every = recent.div_ceil(self.budget).clamp(1, 60) as u32;
                if every != s.every {
                    log::info!(
                        "{} {}: {recent} calls/s against a budget of {}: probing one second in {every}",
                        self.specs[index].codec,
                        self.specs[index].op,
                        self.budget
                    );
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
        let paused: Vec<usize> = (0..self.specs.len())
            .filter(|i| self.sampling[*i].idle > 0)
            .collect();
        if paused.is_empty() {
            return;
        }
        let Ok(mut probes) = self.probes.lock() else {
            return;
        };
        let Some((enter, exit)) = probes.serialization_programs() else {
            return;
        };
        for a in self.files.values_mut() {
            let (pause, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut a.links)
                .into_iter()
                .partition(|(index, _, _)| paused.contains(index));
            a.links = keep;
            for (_, e, x) in pause {
                let _ = enter.detach(e);
                let _ = exit.detach(x);
            }
        }
    }

    /// The share of calls each probe sees: 1 when probed in full, 1/N when
    /// attached one second in N.
    pub fn sampling_ratios(&self) -> Vec<f64> {
        self.sampling.iter().map(|s| 1.0 / s.every as f64).collect()
    }

    /// A process left: detach from files no traced process uses any more.
    pub fn forget(&mut self, tgid: u32) {
        self.unavailable.remove(&tgid);
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
                && let Some((enter, exit)) = probes.serialization_programs()
            {
                for (_, e, x) in a.links {
                    let _ = enter.detach(e);
                    let _ = exit.detach(x);
                }
                log::debug!("detached serialization probes from file {key:?}");
            }
        }
    }

    /// Files probed now.
    pub fn probed_files(&self) -> usize {
        self.files.len()
    }

    /// (service, codec) → processes whose codec cannot be probed.
    pub fn unavailable(&self) -> BTreeMap<(u32, String), u64> {
        let mut out = BTreeMap::new();
        for (service, missing) in self.unavailable.values() {
            for codec in missing.keys() {
                *out.entry((*service, codec.clone())).or_default() += 1;
            }
        }
        out
    }

    /// What is probed, in cookie order.
    pub fn specs(&self) -> Arc<[ProbeSpec]> {
        self.specs.clone()
    }
}

impl SerializationTracker {
    /// `file_has_symbol`, cached per (device, inode): files are read once.
    fn has_symbol(&mut self, tgid: u32, file: &str, symbol: &str) -> bool {
        let Ok(meta) = fs::metadata(format!("/proc/{tgid}/root{file}")) else {
            return false;
        };
        let key = ((meta.dev(), meta.ino()), symbol.to_string());
        *self
            .symbols
            .entry(key)
            .or_insert_with(|| file_has_symbol(tgid, file, symbol))
    }
}

/// Whether `file` (as process `tgid` sees it) has `symbol` in its symbol
/// tables.
pub fn file_has_symbol(tgid: u32, file: &str, symbol: &str) -> bool {
    use object::{Object, ObjectSymbol};
    let Ok(data) = fs::read(format!("/proc/{tgid}/root{file}")) else {
        return false;
    };
    let Ok(elf) = object::File::parse(&*data) else {
        return false;
    };
    elf.symbols()
        .chain(elf.dynamic_symbols())
        .any(|s| s.name() == Ok(symbol))
}
