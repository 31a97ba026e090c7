//! What the matchers need to know about a process, read from /proc.

use std::{fs, path::PathBuf};

/// A process as the matchers see it.
#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    pub tgid: u32,
    /// Target of /proc/PID/exe (" (deleted)" removed); None when unreadable
    /// (kernel threads, or a process that already exited).
    pub exe: Option<PathBuf>,
    /// Arguments joined with single spaces.
    pub cmdline: String,
    /// The cgroup v2 path from /proc/PID/cgroup ("0::/system.slice/x.service").
    pub cgroup: Option<String>,
}

impl ProcessInfo {
    /// Reads a process; None when it is gone or is a kernel thread.
    pub fn read(tgid: u32) -> Option<Self> {
        let dir = PathBuf::from(format!("/proc/{tgid}"));
        let raw = fs::read(dir.join("cmdline")).ok()?;
        // Kernel threads have an empty command line: never a serving process.
        if raw.is_empty() {
            return None;
        }
        let cmdline = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a))
            .collect::<Vec<_>>()
            .join(" ");
        let exe = fs::read_link(dir.join("exe")).ok().map(|p| {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(stripped) => PathBuf::from(stripped),
                None => p,
            }
        });
        let cgroup = fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            });
        Some(Self {
            tgid,
            exe,
            cmdline,
            cgroup,
        })
    }
}

/// Every tgid currently in /proc.
pub fn all_tgids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether a tgid is still alive (a zombie counts as gone).
pub fn is_alive(tgid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{tgid}/stat")) {
        // The state follows the last ')' (the command name may contain one).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}
