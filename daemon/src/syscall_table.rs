//! Syscall numbers → names (from the x86-64 table of the `syscalls` crate,
//! which is generated from the kernel's `syscall_64.tbl`) and → the family
//! that explains a thread blocked inside one.

use gapscope_ebpf_common::{OffCpuReason, SYSCALL_SLOTS};
use syscalls::x86_64::Sysno;

/// The syscall's name, or `unknown_<nr>` for a number the table lacks
/// (a newer kernel than the table).
pub fn name(nr: u32) -> String {
    match Sysno::new(nr as usize) {
        Some(s) => s.name().to_string(),
        None => format!("unknown_{nr}"),
    }
}

/// Why a thread blocked inside syscall `nr` is off CPU.
///
/// `read`/`write` and friends count as file I/O whatever the descriptor is:
/// the number alone cannot tell a socket from a file, and serving stacks do
/// their network I/O with `recvfrom`/`sendto`/`recvmsg`/`sendmsg`.
pub fn family(nr: u32) -> OffCpuReason {
    let Some(s) = Sysno::new(nr as usize) else {
        return OffCpuReason::SyscallOther;
    };
    use Sysno::*;
    match s {
        futex | futex_waitv | futex_wait | futex_wake | futex_requeue | flock | semop
        | semtimedop => OffCpuReason::SyscallFutex,
        poll | ppoll | select | pselect6 | epoll_wait | epoll_pwait | epoll_pwait2 => {
            OffCpuReason::SyscallPoll
        }
        accept | accept4 | connect | recvfrom | recvmsg | recvmmsg | sendto | sendmsg
        | sendmmsg | shutdown => OffCpuReason::SyscallNet,
        read | write | pread64 | pwrite64 | readv | writev | preadv | pwritev | preadv2
        | pwritev2 | open | openat | openat2 | close | fsync | fdatasync | sync_file_range
        | sendfile | splice | tee | copy_file_range | io_getevents | io_pgetevents | getdents64
        | stat | fstat | lstat | newfstatat | statx | fallocate | ftruncate | truncate | mmap
        | munmap | msync => OffCpuReason::SyscallFile,
        nanosleep | clock_nanosleep | pause | rt_sigsuspend | rt_sigtimedwait => {
            OffCpuReason::SyscallSleep
        }
        _ => OffCpuReason::SyscallOther,
    }
}

/// The family of every syscall slot, as the kernel's `SYSCALL_FAMILY` map
/// holds it.
pub fn family_table() -> Vec<u32> {
    (0..SYSCALL_SLOTS).map(|nr| family(nr) as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_x86_64_table() {
        assert_eq!(name(0), "read");
        assert_eq!(name(39), "getpid");
        assert_eq!(name(110), "getppid");
        assert_eq!(name(35), "nanosleep");
        assert_eq!(name(230), "clock_nanosleep");
        assert_eq!(name(202), "futex");
        assert_eq!(name(511), "unknown_511");
    }

    #[test]
    fn families() {
        assert_eq!(family(202), OffCpuReason::SyscallFutex);
        assert_eq!(family(232), OffCpuReason::SyscallPoll); // epoll_wait
        assert_eq!(family(45), OffCpuReason::SyscallNet); // recvfrom
        assert_eq!(family(0), OffCpuReason::SyscallFile); // read
        assert_eq!(family(230), OffCpuReason::SyscallSleep); // clock_nanosleep
        assert_eq!(family(61), OffCpuReason::SyscallOther); // wait4
    }
}
