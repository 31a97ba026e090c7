//! One clock for the whole run: CLOCK_MONOTONIC nanoseconds, the clock
//! gapscoped's eBPF timestamps use, so a request's times can be laid next
//! to the daemon's intervals without conversion. Times in records are
//! offsets from the run's start; the start itself is recorded too.

pub(crate) use gapscope_clock::monotonic_ns;

/// Wall-clock time now, in ns since the Unix epoch.
pub(crate) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The run's clock: nanoseconds since the run started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub origin_monotonic_ns: u64,
    pub origin_unix_ns: u64,
}

impl Clock {
    pub(crate) fn start() -> Self {
        Self {
            origin_monotonic_ns: monotonic_ns(),
            origin_unix_ns: unix_ns(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        monotonic_ns().saturating_sub(self.origin_monotonic_ns)
    }
}

/// Makes this thread's timers fire within a microsecond of their deadline
/// instead of after the default 50 µs of slack.
pub(crate) fn precise_timers() {
    // SAFETY: prctl with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
}

/// How long before a deadline `PreciseTimer` stops sleeping and starts
/// yielding.
const SPIN_NS: u64 = 100_000;

/// An absolute-time timer with microsecond precision inside the async
/// runtime: a timerfd in the runtime's epoll set. Tokio's own timer works
/// in milliseconds, which would be most of an open-loop send's lag; a
/// separate sleeping thread would have to wake the runtime, which costs a
/// context switch and, on a single core, a preemption.
pub(crate) struct PreciseTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    clock: Clock,
}

impl PreciseTimer {
    pub(crate) fn new(clock: Clock) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd is owned from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: the timer owns its fd for as long as the AsyncFd lives.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)?
        };
        Ok(Self { fd, clock })
    }

    /// Waits until run time `at_ns` (at once when it has passed): the
    /// timerfd wakes the runtime `SPIN_NS` early, and the rest is spent
    /// yielding to other tasks until the moment comes. Waking an idle CPU
    /// (worse, an idle virtual CPU) takes tens to hundreds of
    /// microseconds; this way that delay is not the send's.
    pub(crate) async fn sleep_until(&mut self, at_ns: u64) -> std::io::Result<()> {
        let target = self.clock.origin_monotonic_ns + at_ns;
        if target > monotonic_ns() + SPIN_NS {
            self.wait_fd(target - SPIN_NS).await?;
        }
        while monotonic_ns() < target {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn wait_fd(&mut self, target: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (target / 1_000_000_000) as libc::time_t,
                tv_nsec: (target % 1_000_000_000) as libc::c_long,
            },
        };
        let fd = self.fd.get_ref().as_raw_fd();
        // SAFETY: a valid timerfd and itimerspec.
        if unsafe {
            libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer.
            let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}
