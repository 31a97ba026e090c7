//! Which CPython a process runs, found in what it actually maps: a shared
//! `libpython3.X.so` (pyenv, conda, most venvs) or a `python3.X` executable
//! with the interpreter linked in (Debian's system Python). Both export
//! `_PyRuntime` as a dynamic symbol, stripped or not, and that one symbol
//! is all the GIL tracing needs.

use std::{
    collections::HashMap,
    fmt, fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectKind, ObjectSegment as _, ObjectSymbol as _};

/// A traced process's interpreter.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub version: (u8, u8),
    /// The file that holds the interpreter (libpython or the executable).
    pub path: PathBuf,
    /// Address of `_PyRuntime` in the process.
    pub runtime_addr: u64,
}

/// Why a process's GIL cannot be traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No CPython mapped (yet): not an error.
    NotPython,
    /// A free-threaded (`t`) build has no GIL to wait for.
    FreeThreaded(u8, u8),
    /// A version whose layout this build does not know.
    UnsupportedVersion(u8, u8),
    /// The interpreter file lacks `_PyRuntime` or cannot be read.
    NoRuntime(String),
    /// The interpreter is still starting (its GIL does not exist yet).
    NotYet(String),
    /// The process's maps or memory cannot be read.
    Unreadable(String),
}

impl Unavailable {
    /// Whether a later look may succeed: right after exec the dynamic
    /// loader has not mapped libpython yet, and the interpreter creates its
    /// GIL a moment later still.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::NotPython | Self::NotYet(_))
    }

    /// The `reason` label value.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotPython => "not_python",
            Self::FreeThreaded(..) => "free_threaded",
            Self::UnsupportedVersion(..) => "unsupported_version",
            Self::NoRuntime(_) => "no_runtime_symbol",
            Self::NotYet(_) => "starting",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPython => write!(f, "no CPython interpreter is mapped"),
            Self::FreeThreaded(a, b) => write!(
                f,
                "CPython {a}.{b} free-threaded build: it has no GIL, so there are no GIL waits to trace"
            ),
            Self::UnsupportedVersion(a, b) => write!(
                f,
                "CPython {a}.{b} is not supported (3.9 to 3.13 are); GIL tracing is off for it"
            ),
            Self::NoRuntime(why) => write!(
                f,
                "{why}; GIL tracing needs the interpreter's exported _PyRuntime symbol"
            ),
            Self::NotYet(why) => write!(f, "{why}"),
            Self::Unreadable(why) => write!(
                f,
                "{why}; reading another user's process needs CAP_SYS_PTRACE (run gapscoped as root or grant it)"
            ),
        }
    }
}

/// What one interpreter file says about itself, cached per (device, inode).
#[derive(Debug, Clone, Copy)]
struct ElfFacts {
    /// Position-dependent executable: symbol addresses are absolute.
    absolute: bool,
    /// The first loadable segment's address (page-aligned).
    first_load: u64,
    /// `_PyRuntime`'s symbol value.
    runtime: u64,
}

/// Finds interpreters, parsing each interpreter file once.
#[derive(Default)]
pub struct Finder {
    facts: HashMap<(u64, u64), Result<ElfFacts, String>>,
}

struct Mapping {
    start: u64,
    offset: u64,
    path: String,
}

fn mappings(pid: u32) -> Result<Vec<Mapping>, Unavailable> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| Unavailable::Unreadable(format!("cannot read /proc/{pid}/maps: {e}")))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let _perms = f.next()?;
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let _dev = f.next()?;
            let _inode = f.next()?;
            let path = f.collect::<Vec<_>>().join(" ");
            let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
            path.starts_with('/').then_some(Mapping {
                start,
                offset,
                path,
            })
        })
        .collect())
}

/// (major, minor, free-threaded) from `libpython3.12.so.1.0`,
/// `libpython3.13t.so`, `python3.11`, `python3.13t`.
fn version_from_name(name: &str) -> Option<(u8, u8, bool)> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let (major, rest) = rest.split_once('.')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    let free_threaded = after.starts_with('t');
    let is_lib = name.starts_with("libpython");
    let tail = after.strip_prefix('t').unwrap_or(after);
    let well_formed = if is_lib {
        tail.starts_with(".so")
    } else {
        tail.is_empty()
    };
    if !well_formed || digits.is_empty() {
        return None;
    }
    Some((major.parse().ok()?, digits.parse().ok()?, free_threaded))
}

impl Finder {
    /// The interpreter process `pid` runs.
    pub fn find(&mut self, pid: u32) -> Result<Interpreter, Unavailable> {
        let maps = mappings(pid)?;
        let file_name = |p: &str| Path::new(p).file_name()?.to_str().map(str::to_string);
        // A mapped libpython wins: the executable then only starts it.
        let candidate = maps
            .iter()
            .find_map(|m| {
                let name = file_name(&m.path)?;
                name.starts_with("libpython")
                    .then(|| version_from_name(&name).map(|v| (m.path.clone(), v)))
                    .flatten()
            })
            .or_else(|| {
                let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                let exe = exe.to_str()?.trim_end_matches(" (deleted)").to_string();
                version_from_name(&file_name(&exe)?).map(|v| (exe, v))
            });
        let Some((path, (major, minor, free_threaded))) = candidate else {
            return Err(Unavailable::NotPython);
        };
        if free_threaded {
            return Err(Unavailable::FreeThreaded(major, minor));
        }
        if super::offsets::for_version(major, minor).is_none() {
            return Err(Unavailable::UnsupportedVersion(major, minor));
        }
        // Read the file as the process sees it (containers have their own root).
        let in_root = format!("/proc/{pid}/root{path}");
        let facts = match self.facts_for(Path::new(&in_root)) {
            // An executable without the interpreter in it loads libpython
            // once the dynamic loader runs: look again later.
            Err(Unavailable::NoRuntime(why)) if !path.contains("libpython") => {
                return Err(Unavailable::NotYet(why));
            }
            other => other?,
        };
        let runtime_addr = if facts.absolute {
            facts.runtime
        } else {
            let base = maps
                .iter()
                .filter(|m| m.path == path && m.offset == 0)
                .map(|m| m.start)
                .min()
                .ok_or_else(|| {
                    Unavailable::NoRuntime(format!("{path} has no mapping at file offset 0"))
                })?;
            base - facts.first_load + facts.runtime
        };
        Ok(Interpreter {
            version: (major, minor),
            path: PathBuf::from(path),
            runtime_addr,
        })
    }

    fn facts_for(&mut self, file: &Path) -> Result<ElfFacts, Unavailable> {
        let meta = fs::metadata(file)
            .map_err(|e| Unavailable::NoRuntime(format!("cannot stat {}: {e}", file.display())))?;
        let key = (meta.dev(), meta.ino());
        self.facts
            .entry(key)
            .or_insert_with(|| parse_elf(file))
            .clone()
            .map_err(Unavailable::NoRuntime)
    }
}

fn parse_elf(file: &Path) -> Result<ElfFacts, String> {
    let data = crate::mapped::Mapped::open(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let elf = object::File::parse(&*data)
        .map_err(|e| format!("{} is not a readable ELF file: {e}", file.display()))?;
    let runtime = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok("_PyRuntime"))
        .map(|s| s.address())
        .ok_or_else(|| format!("{} exports no _PyRuntime", file.display()))?;
    let first_load = elf.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
    Ok(ElfFacts {
        absolute: elf.kind() == ObjectKind::Executable,
        first_load,
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::version_from_name;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            version_from_name("libpython3.11.so.1.0"),
            Some((3, 11, false))
        );
        assert_eq!(version_from_name("libpython3.9.so"), Some((3, 9, false)));
        assert_eq!(
            version_from_name("libpython3.13t.so.1.0"),
            Some((3, 13, true))
        );
        assert_eq!(version_from_name("python3.11"), Some((3, 11, false)));
        assert_eq!(version_from_name("python3.13t"), Some((3, 13, true)));
        assert_eq!(version_from_name("python3"), None);
        assert_eq!(version_from_name("python3.11-config"), None);
        assert_eq!(version_from_name("libpython3.11.a"), None);
    }
}
