//! Where a function is inside a library file, as offsets in the file (what
//! a uprobe attaches to).
//!
//! CUDA's entry points are exported symbols (`symbol_groups`). Serialization
//! functions are found three ways, because codec libraries are built three
//! ways:
//!
//! * by exact symbol (`_json`'s `encoder_call`, orjson's exported `dumps`,
//!   protobuf's `PyUpb_Message_SerializeToString`);
//! * by symbol pattern, for generated names whose numbering changes
//!   between releases (Cython's `__pyx_pw_…_6Packer_7pack` in msgpack);
//! * through the Python method table, for extensions whose wheels strip
//!   every symbol (pydantic-core is built with Rust and keeps only its
//!   `PyInit`): a method's name string is referenced from a method
//!   definition that also points at the function implementing it, both
//!   as relocated pointers. The function is the pointer into executable
//!   code next to the reference to the name (before it in PyO3's layout,
//!   after it in C's `PyMethodDef`).

use std::collections::{BTreeSet, HashMap};

use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, RelocationFlags,
    SectionKind, SymbolKind, elf,
};
use regex::Regex;

/// How to find a function in a library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locate {
    Symbol(String),
    /// A regular expression matching the whole symbol name.
    SymbolPattern(String),
    /// A Python-visible method or function name (`to_json`).
    Method(String),
}

impl std::fmt::Display for Locate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locate::Symbol(s) => write!(f, "symbol {s}"),
            Locate::SymbolPattern(p) => write!(f, "symbol matching /{p}/"),
            Locate::Method(m) => write!(f, "method {m:?} in the Python method table"),
        }
    }
}

/// Finds the functions `locate` names in the ELF file `data`, as file
/// offsets (sorted, unique), or says why there are none.
pub fn resolve(data: &[u8], locate: &Locate) -> Result<Vec<u64>, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
    let addresses: BTreeSet<u64> = match locate {
        Locate::Symbol(name) => functions(&file, |s| s == name),
        Locate::SymbolPattern(pattern) => {
            let re = Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| format!("bad symbol pattern {pattern:?}: {e}"))?;
            functions(&file, |s| re.is_match(s))
        }
        Locate::Method(name) => method_table(&file, data, name),
    };
    if addresses.is_empty() {
        let hint = match locate {
            Locate::Method(_) => "(not this library, or a release laid out differently)",
            _ => "(stripped?)",
        };
        return Err(format!("no {locate} {hint}"));
    }
    addresses
        .into_iter()
        .map(|a| {
            file_offset(&file, a).ok_or_else(|| format!("address {a:#x} is in no loaded segment"))
        })
        .collect()
}

/// Addresses of defined function symbols whose name passes `wanted`, from
/// both symbol tables.
fn functions(file: &object::File, wanted: impl Fn(&str) -> bool) -> BTreeSet<u64> {
    file.symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && !s.is_undefined() && s.address() != 0)
        .filter(|s| s.name().is_ok_and(&wanted))
        .map(|s| s.address())
        .collect()
}

/// Functions referenced next to a reference to the string `name` (NUL
/// terminated) in the file's relocated pointers.
fn method_table(file: &object::File, data: &[u8], name: &str) -> BTreeSet<u64> {
    // Pointers the dynamic linker fills in: slot address → target address.
    let mut relocated: HashMap<u64, u64> = HashMap::new();
    if let Some(relocations) = file.dynamic_relocations() {
        for (slot, r) in relocations {
            if r.flags()
                == (RelocationFlags::Elf {
                    r_type: elf::R_X86_64_RELATIVE,
                })
            {
                relocated.insert(slot, r.addend() as u64);
            }
        }
    }
    let executable: Vec<(u64, u64)> = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .map(|s| (s.address(), s.address() + s.size()))
        .collect();
    let is_code = |a: u64| executable.iter().any(|(lo, hi)| (*lo..*hi).contains(&a));

    let needle: Vec<u8> = name.bytes().chain([0]).collect();
    let mut names = BTreeSet::new();
    for section in file.sections() {
        if !matches!(
            section.kind(),
            SectionKind::ReadOnlyData | SectionKind::ReadOnlyString
        ) {
            continue;
        }
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        let Some(bytes) = data.get(start as usize..(start + size) as usize) else {
            continue;
        };
        let mut from = 0;
        while let Some(i) = find(&bytes[from..], &needle) {
            names.insert(section.address() + (from + i) as u64);
            from += i + 1;
        }
    }
    let mut found = BTreeSet::new();
    for (slot, target) in &relocated {
        if !names.contains(target) {
            continue;
        }
        // Nearest code pointer within two words either side.
        let near = [-8i64, 8, -16, 16]
            .iter()
            .filter_map(|d| relocated.get(&slot.wrapping_add_signed(*d)))
            .find(|a| is_code(**a));
        if let Some(f) = near {
            found.insert(*f);
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The file offsets of each group of symbol names (an entry point and its
/// variants, such as `cuLaunchKernel` and `cuLaunchKernel_ptsz`), parsing
/// the file once: a driver library is tens of megabytes. A group none of
/// whose names is defined gets no offsets.
pub fn symbol_groups(data: &[u8], groups: &[&[&str]]) -> Result<Vec<Vec<u64>>, String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
    let wanted: HashMap<&str, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (*n, i)))
        .collect();
    let mut found = vec![BTreeSet::new(); groups.len()];
    for s in file.dynamic_symbols().chain(file.symbols()) {
        if s.kind() != SymbolKind::Text || s.is_undefined() || s.address() == 0 {
            continue;
        }
        if let Some(group) = s.name().ok().and_then(|n| wanted.get(n)) {
            found[*group].insert(s.address());
        }
    }
    found
        .into_iter()
        .map(|addresses| {
            addresses
                .into_iter()
                .map(|a| {
                    file_offset(&file, a)
                        .ok_or_else(|| format!("address {a:#x} is in no loaded segment"))
                })
                .collect()
        })
        .collect()
}

/// The file offset of virtual address `address`, through the loadable
/// segment holding it.
fn file_offset(file: &object::File, address: u64) -> Option<u64> {
    file.segments().find_map(|s| {
        let (offset, size) = s.file_range();
        (address >= s.address() && address < s.address() + size)
            .then(|| address - s.address() + offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is an ELF file with symbols.
    fn me() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn exact_and_pattern_symbols_resolve_to_the_same_offset() {
        let data = me();
        let exact = resolve(&data, &Locate::Symbol("main".into())).unwrap();
        let pattern = resolve(&data, &Locate::SymbolPattern("ma[i]n".into())).unwrap();
        assert_eq!(exact, pattern);
        assert_eq!(exact.len(), 1);
    }

    #[test]
    fn symbol_groups_find_each_group_once() {
        let data = me();
        let main = resolve(&data, &Locate::Symbol("main".into())).unwrap();
        let groups =
            symbol_groups(&data, &[&["main", "no_such_alias"], &["no_such_function"]]).unwrap();
        assert_eq!(groups, vec![main, vec![]]);
    }

    #[test]
    fn missing_names_say_what_was_looked_for() {
        let data = me();
        let err = resolve(&data, &Locate::Symbol("no_such_function_here".into())).unwrap_err();
        assert!(err.contains("no_such_function_here"), "{err}");
        let err = resolve(&data, &Locate::SymbolPattern("(".into())).unwrap_err();
        assert!(err.contains("bad symbol pattern"), "{err}");
        assert!(resolve(b"not elf", &Locate::Symbol("x".into())).is_err());
    }
}
