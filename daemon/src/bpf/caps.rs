//! The capabilities this process holds, read from /proc/self/status.

/// Capability numbers from linux/capability.h.
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set as a bit mask.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has(cap: u32) -> bool {
    effective() & (1 << cap) != 0
}

/// Loading and attaching tracing programs needs CAP_BPF + CAP_PERFMON, or
/// CAP_SYS_ADMIN on kernels before 5.8.
pub fn can_trace() -> bool {
    (has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN)
}

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SETPCAP: u32 = 8;
/// The highest capability number this code knows (CAP_CHECKPOINT_RESTORE).
const CAP_LAST: u32 = 40;

/// What gapscoped still needs once its programs are loaded: attaching
/// uprobes to processes that start later (CAP_BPF, CAP_PERFMON, and
/// CAP_SYS_ADMIN: without it the kernel refuses `perf_event_open` for a
/// uprobe with EACCES — seen on 6.18 by the CUDA tests when this set
/// lacked it), reading those processes' maps and memory (CAP_SYS_PTRACE)
/// and opening the libraries they map from directories other users own
/// (CAP_DAC_READ_SEARCH). Everything else root holds goes: writing files
/// it does not own, signals, network administration, changing identity.
pub fn kept_after_attach() -> u64 {
    1 << CAP_BPF
        | 1 << CAP_PERFMON
        | 1 << CAP_SYS_ADMIN
        | 1 << CAP_SYS_PTRACE
        | 1 << CAP_DAC_READ_SEARCH
}

/// Drops every capability outside `keep` from this thread's effective,
/// permitted and inheritable sets, clears the ambient set, removes the
/// rest from the bounding set where CAP_SETPCAP allows, and sets
/// no_new_privs. Capabilities are per thread in Linux: call it before
/// any other thread is started, so they all inherit the reduced sets.
/// Returns the effective set afterwards.
pub fn drop_all_but(keep: u64) -> std::io::Result<u64> {
    if has(CAP_SETPCAP) {
        for cap in 0..=CAP_LAST {
            if keep & (1 << cap) == 0 {
                // EINVAL for capabilities this kernel does not know.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            }
        }
    }
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if cleared != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let mask = (keep >> (32 * i)) as u32;
        d.effective &= mask;
        d.permitted &= mask;
        d.inheritable = 0;
    }
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(effective())
}

/// Names of the capabilities in a mask, for the log.
pub fn names(mask: u64) -> String {
    const NAMES: [(u32, &str); 7] = [
        (0, "CAP_CHOWN"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        (CAP_SETPCAP, "CAP_SETPCAP"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_BPF, "CAP_BPF"),
    ];
    let mut out: Vec<String> = Vec::new();
    for cap in 0..64 {
        if mask & (1 << cap) != 0 {
            match NAMES.iter().find(|(n, _)| *n == cap) {
                Some((_, name)) => out.push((*name).to_string()),
                None => out.push(format!("cap{cap}")),
            }
        }
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(" ")
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown_capabilities() {
        assert_eq!(names(0), "none");
        assert_eq!(
            names(1 << CAP_BPF | 1 << CAP_SYS_PTRACE | 1 << 0 | 1 << 1),
            "CAP_CHOWN cap1 CAP_SYS_PTRACE CAP_BPF"
        );
    }
}
