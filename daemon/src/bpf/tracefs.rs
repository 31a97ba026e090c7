//! tracefs: classic tracepoints are attached by the id tracefs gives them,
//! and the programs read their records at fixed offsets that must match
//! this kernel's format files.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use gapscope_ebpf_common::tp_offsets;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs mount point, if tracefs is mounted.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is missing
/// (containers and minimal VMs often lack the mount).
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    if let Some(p) = find() {
        return Ok(p);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid C strings; mount(2) reads them only.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "tracefs is not mounted and mounting it failed ({}); fix: mount -t tracefs nodev /sys/kernel/tracing",
            std::io::Error::last_os_error()
        );
    }
    log::info!("mounted tracefs at /sys/kernel/tracing");
    find().context("tracefs mounted but /sys/kernel/tracing/events is missing")
}

/// Offset and size of `field` in a tracepoint's format file.
pub fn field_layout(
    tracefs: &Path,
    category: &str,
    event: &str,
    field: &str,
) -> anyhow::Result<(usize, usize)> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_field(&text, field)
        .with_context(|| format!("field {field} not found in {}", path.display()))
}

fn parse_field(format: &str, field: &str) -> Option<(usize, usize)> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        let num = |key: &str| -> Option<usize> {
            rest.split(';')
                .find_map(|kv| kv.trim().strip_prefix(key))?
                .trim()
                .parse()
                .ok()
        };
        Some((num("offset:")?, num("size:")?))
    })
}

/// Checks every record offset the programs rely on against this kernel.
pub fn verify_offsets(tracefs: &Path) -> anyhow::Result<()> {
    for (category, event, field, offset, size) in tp_offsets::ALL {
        let (got_offset, got_size) = field_layout(tracefs, category, event, field)?;
        if (got_offset, got_size) != (offset, size) {
            bail!(
                "{category}:{event} field {field} is at offset {got_offset} size {got_size} on this kernel, \
                 but the BPF programs were built for offset {offset} size {size}; \
                 fix: update ebpf/common/src/lib.rs (tp_offsets) and rebuild"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_lines() {
        let f = "\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                 \tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;\n";
        assert_eq!(parse_field(f, "prev_state"), Some((32, 8)));
        assert_eq!(parse_field(f, "prev_comm"), Some((8, 16)));
        assert_eq!(parse_field(f, "next_pid"), None);
    }
}
