//! The agent inside the serving process: `InitializeInjection` (CUDA calls
//! it when `CUDA_INJECTION64_PATH` names this library) loads CUPTI, puts
//! its timestamps on CLOCK_MONOTONIC, enables the activity kinds Gapscope
//! reads, and hands every completed buffer's records to the transport.
//!
//! Whatever goes wrong, the host process carries on: every entry point
//! from C catches panics, a refusal anywhere makes the agent stand down
//! with one line on stderr, and no call into it waits on gapscoped.

use std::{
    collections::HashMap,
    ffi::{CStr, c_int, c_void},
    panic::catch_unwind,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU8, Ordering},
    },
    time::Duration,
};

use gapscope_cupti_sys::{Activity, decode, layout::supported};
use gapscope_wire::{ClockMode, Hello, Record};

use crate::{
    cupti_api::{
        Api, CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED, CUPTI_SUCCESS, FLUSH_FORCED,
        THREAD_ID_SYSTEM,
    },
    transport::{Transport, TransportConfig},
};

/// Where gapscoped listens unless `GAPSCOPE_SOCKET` says otherwise (the
/// daemon's `[inject] socket` default).
pub const DEFAULT_SOCKET: &str = "/run/gapscope/inject.sock";
/// Bytes per activity buffer handed to CUPTI.
const BUFFER_SIZE: usize = 8 << 20;
/// How often buffers are flushed to gapscoped.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How long the exit handler waits for the last records to be written.
const EXIT_FLUSH_WAIT: Duration = Duration::from_millis(500);
/// The activity kinds enabled: concurrent kernels, memcpy, memset,
/// synchronization, runtime and driver API, overhead.
const KINDS: [u32; 7] = [10, 1, 2, 38, 5, 4, 17];

struct Agent {
    api: Api,
    transport: Transport,
    /// `ClockMode` as u8, and the offset added in `Offset` mode.
    clock: AtomicU8,
    offset_ns: AtomicI64,
    /// Context id → device, from kernel records (synchronization records
    /// carry only the context).
    contexts: Mutex<HashMap<u32, u32>>,
    /// API records' thread ids are gettid() values (CUPTI took
    /// `THREAD_ID_SYSTEM`); else they are pthread handles and are not sent.
    system_thread_ids: bool,
    pid: u32,
}

static AGENT: OnceLock<Agent> = OnceLock::new();

use gapscope_clock::monotonic_ns;

/// CUPTI's timestamp callback: CLOCK_MONOTONIC, the clock of every other
/// event in Gapscope.
unsafe extern "C" fn timestamp() -> u64 {
    monotonic_ns()
}

/// The offset from CUPTI's clock to CLOCK_MONOTONIC: CUPTI's clock read
/// between two CLOCK_MONOTONIC reads, the tightest of 16 brackets.
fn measure_offset(api: &Api) -> i64 {
    let mut best = (u64::MAX, 0i64);
    for _ in 0..16 {
        let mut cupti = 0u64;
        let before = monotonic_ns();
        // SAFETY: a valid out pointer.
        let ok = unsafe { (api.get_timestamp)(&mut cupti) } == CUPTI_SUCCESS;
        let after = monotonic_ns();
        if ok && after - before < best.0 {
            best = (
                after - before,
                (before / 2 + after / 2) as i64 - cupti as i64,
            );
        }
    }
    best.1
}

/// Puts CUPTI's timestamps on CLOCK_MONOTONIC: its callback when CUPTI
/// takes it (whether it honours it shows in the records: `Agent::drain`),
/// else a measured offset.
fn choose_clock(api: &Api) -> (ClockMode, i64) {
    if let Some(register) = api.register_timestamp
        // SAFETY: a valid function pointer for the process's lifetime.
        && unsafe { register(Some(timestamp)) } == CUPTI_SUCCESS
    {
        return (ClockMode::Callback, 0);
    }
    (ClockMode::Offset, measure_offset(api))
}

/// How far from now a record in callback mode may end before its clock is
/// taken for not being CLOCK_MONOTONIC.
const CLOCK_SANITY_NS: u64 = 60_000_000_000;

unsafe extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max: *mut usize) {
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid out pointers from CUPTI; 8-byte alignment as CUPTI asks.
    unsafe {
        if libc::posix_memalign(&mut p, 8, BUFFER_SIZE) != 0 {
            p = std::ptr::null_mut();
        }
        *buffer = p as *mut u8;
        *size = if p.is_null() { 0 } else { BUFFER_SIZE };
        *max = 0;
    }
}

unsafe extern "C" fn buffer_completed(
    context: *mut c_void,
    stream: u32,
    buffer: *mut u8,
    _size: usize,
    valid: usize,
) {
    let _ = catch_unwind(|| {
        if let Some(a) = AGENT.get() {
            a.drain(context, stream, buffer, valid);
        }
    });
    // SAFETY: allocated by buffer_requested with posix_memalign.
    unsafe { libc::free(buffer as *mut c_void) };
}

impl Agent {
    /// Decodes a completed buffer and hands its records over.
    fn drain(&self, context: *mut c_void, stream: u32, buffer: *mut u8, valid: usize) {
        if buffer.is_null() || std::process::id() != self.pid {
            return;
        }
        let mut out: Vec<Record> = Vec::new();
        let mut record: *mut u8 = std::ptr::null_mut();
        let offset = self.offset_ns.load(Ordering::Relaxed);
        let callback = self.clock.load(Ordering::Relaxed) == ClockMode::Callback as u8;
        let now = monotonic_ns();
        let mut off_clock = 0u64;
        let mut incomplete = 0u64;
        let mut contexts = self
            .contexts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            // SAFETY: the buffer CUPTI completed, and its valid size.
            if unsafe { (self.api.get_next_record)(buffer, valid, &mut record) } != CUPTI_SUCCESS {
                break;
            }
            let available = (buffer as usize + valid).saturating_sub(record as usize);
            // SAFETY: `record` points inside the valid part of the buffer.
            let bytes = unsafe { std::slice::from_raw_parts(record, available.min(256)) };
            let Ok(activity) = decode(bytes) else {
                continue;
            };
            // Both zero: still running when a forced flush took it (at
            // exit), lost. Start zero alone: the zero-timestamp bug of some
            // releases with the callback; far from now: the callback
            // ignored.
            let (start, end) = activity.span();
            if start == 0 && end == 0 {
                incomplete += 1;
                continue;
            }
            if start == 0 || (callback && end.abs_diff(now) > CLOCK_SANITY_NS) {
                off_clock += u64::from(callback);
                continue;
            }
            let mut name = 0;
            if let Activity::Kernel {
                device,
                context,
                name_ptr,
                ..
            } = activity
            {
                contexts.insert(context, device);
                if name_ptr != 0 {
                    // SAFETY: CUPTI's NUL-terminated name, alive with the buffer.
                    let text = unsafe { CStr::from_ptr(name_ptr as *const std::ffi::c_char) };
                    name = self.transport.intern(&text.to_string_lossy());
                }
            }
            if let Some(mut r) = activity.to_wire(offset, name, |c| contexts.get(&c).copied()) {
                if !self.system_thread_ids {
                    r.thread = 0;
                }
                out.push(r);
            }
        }
        drop(contexts);
        let mut dropped = 0usize;
        // SAFETY: the context and stream CUPTI passed, a valid out pointer.
        if unsafe { (self.api.dropped_records)(context, stream, &mut dropped) } == CUPTI_SUCCESS {
            self.transport.report_dropped(dropped as u64);
        }
        self.transport.send_records(out);
        self.transport.report_dropped(incomplete);
        if off_clock > 0 {
            self.transport.report_dropped(off_clock);
            self.leave_callback_clock();
        }
    }

    /// Some CUPTI releases take the timestamp callback and then write
    /// zeros, or ignore it: go back to CUPTI's clock plus a measured
    /// offset (once; the records on the unknown clock were dropped).
    fn leave_callback_clock(&self) {
        if self.clock.swap(ClockMode::Offset as u8, Ordering::Relaxed) != ClockMode::Callback as u8
        {
            return;
        }
        if let Some(register) = self.api.register_timestamp {
            // SAFETY: unregistering our callback.
            unsafe { register(None) };
        }
        self.offset_ns
            .store(measure_offset(&self.api), Ordering::Relaxed);
        eprintln!(
            "gapscope-inject: CUPTI's records were not on CLOCK_MONOTONIC with the timestamp callback (zero or far-off timestamps); using its own clock and a measured offset instead"
        );
    }
}

unsafe extern "C" fn no_callback(_: *mut c_void, _: c_int, _: u32, _: *const c_void) {}

extern "C" fn flush_at_exit() {
    let _ = catch_unwind(|| {
        if let Some(a) = AGENT.get()
            && std::process::id() == a.pid
        {
            // SAFETY: a loaded CUPTI function.
            unsafe { (a.api.flush_all)(FLUSH_FORCED) };
            // The transport thread dies with the process: let the last
            // records out first, within a bound (a stalled daemon costs
            // the exit at most this).
            a.transport.flush(EXIT_FLUSH_WAIT);
            // What a fault cost, said once, at the end.
            let stats = a.transport.stats();
            let dropped = stats.records_dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                eprintln!(
                    "gapscope-inject: at exit: {} GPU records sent to gapscoped, {dropped} dropped, {} still waiting; at most {} bytes waited for its socket",
                    stats.records_sent.load(Ordering::Relaxed),
                    stats.records_buffered.load(Ordering::Relaxed)
                        + stats.records_queued.load(Ordering::Relaxed),
                    stats.peak_buffered_bytes.load(Ordering::Relaxed)
                );
            }
        }
    });
}

/// Finding the process's devices from the flush thread: tried each flush
/// until the driver answers (it does once `cuInit` has returned), for
/// `DEVICE_TRIES` flushes at most, then said once on stderr.
#[derive(Default)]
struct DeviceLookup {
    tries: u32,
    done: bool,
}

/// Flushes (10 s) the device lookup is tried for.
const DEVICE_TRIES: u32 = 100;

impl DeviceLookup {
    fn try_once(&mut self, transport: &Transport) {
        if self.done {
            return;
        }
        self.tries += 1;
        let why = match catch_unwind(crate::devices::query) {
            Ok(Ok(d)) if !d.is_empty() => {
                self.done = transport.send_devices(d);
                return;
            }
            Ok(Ok(_)) => "the driver lists no device".to_string(),
            Ok(Err(why)) => why,
            Err(_) => "an internal error".to_string(),
        };
        if self.tries >= DEVICE_TRIES {
            self.done = true;
            eprintln!(
                "gapscope-inject: GPU UUIDs unknown ({why}): gapscoped cannot price this process's devices on a host with several GPUs"
            );
        }
    }
}

/// Sets everything up, or says why not.
pub fn initialize() -> Result<String, String> {
    if std::env::var("GAPSCOPE_INJECT").is_ok_and(|v| v == "0" || v == "off") {
        return Err("turned off by GAPSCOPE_INJECT".into());
    }
    let api = Api::load()?;
    let mut version = 0u32;
    // SAFETY: a valid out pointer.
    let r = unsafe { (api.get_version)(&mut version) };
    if r != CUPTI_SUCCESS {
        return Err(format!(
            "cuptiGetVersion ({}): {}",
            api.path,
            api.describe(r)
        ));
    }
    if !supported(version) {
        return Err(format!(
            "CUPTI API version {version} ({}) is not one whose record layout Gapscope checked (CUDA 12.0-12.9, 13.0-13.5)",
            api.path
        ));
    }
    let mut subscriber: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid pointers; the callback does nothing.
    match unsafe { (api.subscribe)(&mut subscriber, Some(no_callback), std::ptr::null_mut()) } {
        CUPTI_SUCCESS => {
            // SAFETY: the handle just returned.
            unsafe { (api.unsubscribe)(subscriber) };
        }
        CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED => {
            return Err(
                "another CUPTI subscriber (a profiler such as Nsight or the PyTorch profiler) is attached"
                    .into(),
            );
        }
        r => return Err(format!("cuptiSubscribe: {}", api.describe(r))),
    }
    let (clock, offset_ns) = choose_clock(&api);
    // Thread ids the kernel knows, so gapscoped can join a launch to the
    // launching thread's states.
    let system_thread_ids = api
        .set_thread_id_type
        // SAFETY: a loaded CUPTI function.
        .is_some_and(|set| unsafe { set(THREAD_ID_SYSTEM) } == CUPTI_SUCCESS);
    let socket = std::env::var("GAPSCOPE_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.into());
    let transport = Transport::start(
        TransportConfig::new(&socket),
        Hello {
            pid: std::process::id(),
            cuda_version: 0,
            cupti_version: version,
            clock,
            clock_offset_ns: offset_ns,
            agent: concat!("gapscope-inject ", env!("CARGO_PKG_VERSION")).into(),
        },
    )
    .map_err(|e| format!("cannot start the transport thread: {e}"))?;
    let agent = Agent {
        api,
        transport,
        clock: AtomicU8::new(clock as u8),
        offset_ns: AtomicI64::new(offset_ns),
        contexts: Mutex::new(HashMap::new()),
        system_thread_ids,
        pid: std::process::id(),
    };
    let agent = AGENT.get_or_init(|| agent);
    // SAFETY: functions that live as long as the process.
    let r =
        unsafe { (agent.api.register_callbacks)(Some(buffer_requested), Some(buffer_completed)) };
    if r != CUPTI_SUCCESS {
        return Err(format!(
            "cuptiActivityRegisterCallbacks: {}",
            agent.api.describe(r)
        ));
    }
    let mut refused = Vec::new();
    for kind in KINDS {
        // SAFETY: a loaded CUPTI function.
        let r = unsafe { (agent.api.enable)(kind) };
        if r != CUPTI_SUCCESS {
            refused.push(format!("kind {kind}: {}", agent.api.describe(r)));
        }
    }
    std::thread::Builder::new()
        .name("gapscope-flush".into())
        .spawn(|| {
            let mut devices = DeviceLookup::default();
            loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(a) = AGENT.get() else { return };
                if std::process::id() != a.pid {
                    return;
                }
                devices.try_once(&a.transport);
                let flush = a.api.flush_all;
                // SAFETY: a loaded CUPTI function.
                let _ = catch_unwind(|| unsafe { flush(0) });
            }
        })
        .map_err(|e| format!("cannot start the flush thread: {e}"))?;
    // SAFETY: a function that lives as long as the process.
    unsafe { libc::atexit(flush_at_exit) };
    let clock_text = match clock {
        ClockMode::Callback => "CLOCK_MONOTONIC through CUPTI's timestamp callback".to_string(),
        ClockMode::Offset => format!("CUPTI's clock + {offset_ns} ns (measured offset)"),
    };
    let mut said = format!(
        "active: CUPTI {version} from {}, timestamps on {clock_text}, sending to {socket}",
        agent.api.path
    );
    if !refused.is_empty() {
        said.push_str(&format!("; not enabled: {}", refused.join(", ")));
    }
    Ok(said)
}
