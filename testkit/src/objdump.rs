//! Where a uprobe on a function lands, read with objdump (binutils), apart
//! from gapscoped's own reading of the bytes: the truth for
//! `gapscope_cuda_probe_sites` and `gapscope_serialization_probe_sites`.

use std::{path::Path, process::Command};

/// A function's start address and the class gapscoped must report for a
/// probe on it: `push` (a register push, or `endbr64` then a push, which
/// the probe steps over), `nop`, `other`; `unclassified` off x86-64. None
/// when objdump does not list `symbol` in `file`.
pub fn probed_instruction(file: &Path, symbol: &str) -> Option<(u64, &'static str)> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--disassemble={symbol}"))
        .arg(file)
        .output()
        .expect("running objdump (binutils; scripts/setup.sh installs it)");
    let listing = String::from_utf8_lossy(&out.stdout);
    // "0000000000001139 <name>:" then "    1139:\tendbr64" lines.
    let mut lines = listing.lines();
    let header = format!(" <{symbol}>:");
    let address = lines.by_ref().find_map(|l| l.strip_suffix(&header))?;
    let address = u64::from_str_radix(address.trim(), 16).ok()?;
    // Each instruction as (mnemonic, operands).
    let code: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(":\t"))
        .map(|(_, code)| {
            let code = code.trim();
            code.split_once(char::is_whitespace)
                .map_or((code, ""), |(m, rest)| (m, rest.trim()))
        })
        .take(2)
        .collect();
    // A push of a register (`push %rbp`), not of an immediate or memory.
    let register_push = |(m, operands): &(&str, &str)| *m == "push" && operands.starts_with("%r");
    let class = if !cfg!(target_arch = "x86_64") {
        "unclassified"
    } else {
        match code.as_slice() {
            [("endbr64", _), second, ..] if register_push(second) => "push",
            [first, ..] if register_push(first) => "push",
            [(m, _), ..] if m.starts_with("nop") => "nop",
            [("xchg", "%ax,%ax"), ..] => "nop",
            _ => "other",
        }
    };
    Some((address, class))
}
