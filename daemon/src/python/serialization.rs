//! Serialization probes: a uprobe/uretprobe pair on the C function that
//! does the work of each codec, attached once per library file (device,
//! inode) whichever traced process maps it first, and detached when the
//! last traced process using it leaves.
//!
//! Built in: json (`_json`: `encoder_call` for dumps, `scanner_call` for
//! loads) and pickle (`_pickle`: `_pickle_dumps`, `_pickle_loads`), whose
//! extension module may be a shared object (`lib-dynload/_json…so`) or
//! linked into the interpreter; orjson (`dumps`, `loads`), msgpack
//! (Cython's `Packer.pack` and `unpackb` wrappers), protobuf's upb backend
//! (`SerializeToString`, `ParseFromString`) and pydantic-core
//! (`SchemaSerializer.to_json` and `pydantic_core.to_json`,
//! `SchemaValidator.validate_json`, found through the method table because
//! its wheels keep no symbols). `locate.rs` says how each is found. The
//! stdlib functions are local symbols, so a stripped interpreter
//! (Debian's) cannot be probed: that is reported per codec.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::Path,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use gapscope_ebpf_common::MAX_SER_PROBES;

use crate::bpf::{
    Probes,
    uprobes::{FileKey, UprobeSet, file_key},
};
pub use crate::locate::{Locate, resolve};
use crate::mapped::Mapped;

/// One function to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub codec: String,
    pub op: String,
    /// The end of the library's path up to its ABI tag: `_json.` matches
    /// `…/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so`,
    /// `orjson/orjson.` matches `…/site-packages/orjson/orjson.cpython-…so`.
    pub module: String,
    pub locate: Locate,
    /// The module's init function, which an interpreter exports when the
    /// module is built in (stripped or not); None for other libraries.
    pub builtin_init: Option<String>,
}

impl ProbeSpec {
    /// A stdlib module, which may be built into the interpreter.
    fn stdlib(codec: &str, op: &str, module: &str, symbol: &str) -> Self {
        Self {
            builtin_init: Some(format!("PyInit_{}", module.trim_end_matches('.'))),
            ..Self::library(codec, op, module, Locate::Symbol(symbol.into()))
        }
    }

    /// A function in a library of its own (a third-party wheel).
    fn library(codec: &str, op: &str, module: &str, locate: Locate) -> Self {
        Self {
            codec: codec.into(),
            op: op.into(),
            module: module.into(),
            locate,
            builtin_init: None,
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
                p.strip_suffix(" (deleted)").unwrap_or(p).contains(".so")
                    && p.split('/').count() > 1
                    && p.contains(&format!("/{}", self.module))
            });
        match module {
            Some(m) => (m.to_string(), true),
            None => (interpreter.to_string_lossy().into_owned(), false),
        }
    }
}

/// The built-in probes: the stdlib's C accelerators and the common
/// third-party codecs.
pub fn default_specs() -> Vec<ProbeSpec> {
    use Locate::{Method, Symbol, SymbolPattern};
    vec![
        ProbeSpec::stdlib("json", "encode", "_json.", "encoder_call"),
        ProbeSpec::stdlib("json", "decode", "_json.", "scanner_call"),
        ProbeSpec::stdlib("pickle", "encode", "_pickle.", "_pickle_dumps"),
        ProbeSpec::stdlib("pickle", "decode", "_pickle.", "_pickle_loads"),
        ProbeSpec::library("orjson", "encode", "orjson/orjson.", Symbol("dumps".into())),
        ProbeSpec::library("orjson", "decode", "orjson/orjson.", Symbol("loads".into())),
        // `packb` is `Packer(...).pack(o)`; the inner `_pack` recurses.
        ProbeSpec::library(
            "msgpack",
            "encode",
            "msgpack/_cmsgpack.",
            SymbolPattern(r"__pyx_pw_7msgpack_9_cmsgpack_6Packer_\d+pack".into()),
        ),
        ProbeSpec::library(
            "msgpack",
            "decode",
            "msgpack/_cmsgpack.",
            SymbolPattern(r"__pyx_pw_7msgpack_9_cmsgpack_\d+unpackb".into()),
        ),
        ProbeSpec::library(
            "protobuf",
            "encode",
            "_upb/_message.",
            Symbol("PyUpb_Message_SerializeToString".into()),
        ),
        ProbeSpec::library(
            "protobuf",
            "decode",
            "_upb/_message.",
            Symbol("PyUpb_Message_ParseFromString".into()),
        ),
        ProbeSpec::library(
            "pydantic",
            "encode",
            "pydantic_core/_pydantic_core.",
            Method("to_json".into()),
        ),
        ProbeSpec::library(
            "pydantic",
            "decode",
            "pydantic_core/_pydantic_core.",
            Method("validate_json".into()),
        ),
    ]
}

/// Most probes at once, built-in and user-defined together; a probe's
/// index is its attach cookie.
pub const MAX_PROBES: usize = MAX_SER_PROBES as usize;

/// The probe programs, loaded by `bpf::attach_all`.
pub const PROGRAMS: (&str, &str) = (
    gapscope_ebpf_common::names::program::SER_ENTER,
    gapscope_ebpf_common::names::program::SER_EXIT,
);

pub struct SerializationTracker {
    /// What to probe: the built-in specs, then the configured ones.
    specs: Arc<[ProbeSpec]>,
    /// The attachments, one slot per spec, every one within the budget.
    uprobes: UprobeSet,
    /// Calls per second per process and probe probed in full.
    budget: u64,
    /// (service, codec) → why it cannot be probed, per process.
    unavailable: HashMap<u32, (u32, BTreeMap<String, String>)>,
    /// Where each probe's functions are in a file: files are read once,
    /// not every scan.
    resolved: HashMap<(FileKey, usize), Result<Vec<u64>, String>>,
    /// Whether a file has a symbol (a built-in module's init function).
    symbols: HashMap<(FileKey, String), bool>,
}

impl SerializationTracker {
    pub fn new(
        probes: Arc<Mutex<Probes>>,
        specs: Arc<[ProbeSpec]>,
        budget: u64,
        process_calls: BpfHashMap<MapData, u64, u64>,
    ) -> Self {
        let uprobes = UprobeSet::new(
            probes,
            PROGRAMS,
            vec![true; specs.len()],
            budget,
            process_calls,
        )
        .trip_early_too();
        Self {
            specs,
            uprobes,
            budget,
            unavailable: HashMap::new(),
            resolved: HashMap::new(),
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
        // Every probe's functions found first (reading and parsing the
        // files takes milliseconds each), then all attached at once: a
        // busy process pays for full probing only from its probe's
        // attachment to the next look at the budget (`trip_early`), not
        // through the parsing of every other file.
        let mut files = HashMap::new();
        let mut ready = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let (file, module) = spec.file(&maps, interpreter);
            match self.locate(tgid, index, &file, &mut files) {
                Ok(Some(found)) => ready.push((index, file, module, found)),
                Ok(None) => {}
                Err(why) => self.note_missing(tgid, spec, &file, module, why, &mut missing),
            }
        }
        drop(files);
        for (index, file, module, (key, in_root, offsets)) in ready {
            let spec = &specs[index];
            if let Err(e) = self
                .uprobes
                .attach(tgid, key, &in_root, index, &offsets, index as u64)
            {
                let why = format!("{file} ({}): {e}", spec.locate);
                self.note_missing(tgid, spec, &file, module, why, &mut missing);
                continue;
            }
            log::info!(
                "probing {} {} at {file}: {} ({} function{})",
                spec.codec,
                spec.op,
                spec.locate,
                offsets.len(),
                if offsets.len() == 1 { "" } else { "s" }
            );
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

    /// Records why probe `spec` is missing in `tgid`, where that matters:
    /// a module not imported yet is not an error; one built into a
    /// stripped interpreter is.
    fn note_missing(
        &mut self,
        tgid: u32,
        spec: &ProbeSpec,
        file: &str,
        module: bool,
        why: String,
        missing: &mut BTreeMap<String, String>,
    ) {
        let built_in = !module
            && spec
                .builtin_init
                .as_deref()
                .is_some_and(|init| self.has_symbol(tgid, file, init));
        if module || built_in {
            missing.insert(spec.codec.clone(), why);
        }
    }

    /// Where probe `index`'s functions are in `file`, unless it is
    /// attached there already (or paused by its sampling; then `tgid` is
    /// recorded as using it): the file's key, the path to attach through
    /// and the offsets. `files` holds the files read in this scan, each
    /// read once whatever the number of probes in it.
    #[allow(clippy::type_complexity)]
    fn locate(
        &mut self,
        tgid: u32,
        index: usize,
        file: &str,
        files: &mut HashMap<FileKey, Result<Mapped, String>>,
    ) -> Result<Option<(FileKey, String, Vec<u64>)>, String> {
        let (key, in_root) = file_key(tgid, file)?;
        if !self.uprobes.needs(tgid, key, index) {
            return Ok(None);
        }
        let spec = &self.specs[index];
        let offsets = self
            .resolved
            .entry((key, index))
            .or_insert_with(|| {
                let data = files
                    .entry(key)
                    .or_insert_with(|| Mapped::open(&in_root).map_err(|e| format!("{file}: {e}")))
                    .as_ref()
                    .map_err(Clone::clone)?;
                resolve(data, &spec.locate)
            })
            .clone()
            .map_err(|why| {
                let fix = match spec.builtin_init {
                    Some(_) => {
                        "install the interpreter's debug symbols or use a build that keeps them"
                    }
                    None => "set a [[python.probe]] for this release's function",
                };
                format!("{file}: {why}: {fix}")
            })?;
        Ok(Some((key, in_root, offsets)))
    }

    /// Once a second: keeps every probe within the budget (see
    /// `UprobeSet::enforce_budget`).
    pub fn enforce_budget(&mut self) {
        let (_, changes) = self.uprobes.enforce_budget();
        self.log_changes(changes);
    }

    /// Between the seconds: pauses a probe attached since the last second
    /// that is already over budget (see `UprobeSet::trip_early`), so a
    /// busy process pays for a hundredth of a second of probing when a
    /// probe is new or the daemon has restarted, not for a second or two.
    pub fn trip_early(&mut self) {
        let changes = self.uprobes.trip_early();
        self.log_changes(changes);
    }

    /// Whether `trip_early` is wanted every hundredth of a second now.
    pub fn trips_soon(&self) -> bool {
        self.uprobes.trips_soon()
    }

    fn log_changes(&self, changes: Vec<crate::bpf::uprobes::BudgetChange>) {
        for c in changes {
            let spec = &self.specs[c.slot];
            log::info!(
                "{} {}: {} calls/s in one process against a budget of {}: probing one second in {}",
                spec.codec,
                spec.op,
                c.calls_per_second,
                self.budget,
                c.every
            );
        }
    }

    /// The share of calls each probe sees: 1 when probed in full, 1/N when
    /// attached one second in N.
    pub fn sampling_ratios(&self) -> Vec<f64> {
        self.uprobes.sampling_ratios()
    }

    /// (probe, instruction probed) → probe sites, attached or paused.
    pub fn probe_sites(
        &self,
    ) -> std::collections::BTreeMap<(usize, crate::bpf::uprobes::Instruction), usize> {
        self.uprobes.sites()
    }

    /// A process left: detach from files no traced process uses any more.
    pub fn forget(&mut self, tgid: u32) {
        self.unavailable.remove(&tgid);
        self.uprobes.forget(tgid);
    }

    /// Files probed now.
    pub fn probed_files(&self) -> usize {
        self.uprobes.probed_files()
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

    /// Each probe's (codec, op), by index: how the kernel's probe
    /// numbers are named in metrics and reports.
    pub fn names(&self) -> Vec<(String, String)> {
        self.specs
            .iter()
            .map(|s| (s.codec.clone(), s.op.clone()))
            .collect()
    }

    /// What is probed, in cookie order.
    pub fn specs(&self) -> Arc<[ProbeSpec]> {
        self.specs.clone()
    }
}

impl SerializationTracker {
    /// `file_has_symbol`, cached per (device, inode): files are read once.
    fn has_symbol(&mut self, tgid: u32, file: &str, symbol: &str) -> bool {
        let Ok((key, _)) = file_key(tgid, file) else {
            return false;
        };
        let key = (key, symbol.to_string());
        *self
            .symbols
            .entry(key)
            .or_insert_with(|| file_has_symbol(tgid, file, symbol))
    }
}

/// Whether `file` (as process `tgid` sees it) has `symbol` in its symbol
/// tables.
pub fn file_has_symbol(tgid: u32, file: &str, symbol: &str) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    let Ok(data) = Mapped::open(format!("/proc/{tgid}/root{file}")) else {
        return false;
    };
    let Ok(elf) = object::File::parse(&*data) else {
        return false;
    };
    elf.symbols()
        .chain(elf.dynamic_symbols())
        .any(|s| s.name() == Ok(symbol))
}
