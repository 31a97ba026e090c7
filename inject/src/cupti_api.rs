//! The CUPTI functions the agent calls, looked up in the very libcupti the
//! process maps (or `GAPSCOPE_CUPTI_PATH`, or by soname), with dlopen and
//! dlsym. cudarc's loader tries the sonames of the CUDA release it was
//! built for, so a build for 12.x would not find a CUDA 13 process's
//! `libcupti.so.13`; ten functions do not need a binding crate.

use std::ffi::{CStr, CString, c_char, c_int, c_void};

pub type CUptiResult = c_int;
pub const CUPTI_SUCCESS: CUptiResult = 0;
pub const CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED: CUptiResult = 39;

pub type RequestFn = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
pub type CompleteFn = unsafe extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);
pub type TimestampFn = unsafe extern "C" fn() -> u64;
pub type CallbackFn = unsafe extern "C" fn(*mut c_void, c_int, u32, *const c_void);

/// `CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM`: thread ids as gettid().
pub const THREAD_ID_SYSTEM: u32 = 1;
/// `cuptiActivityFlushAll` flag: flush incomplete buffers too.
pub const FLUSH_FORCED: u32 = 1;

pub struct Api {
    pub get_version: unsafe extern "C" fn(*mut u32) -> CUptiResult,
    pub register_callbacks:
        unsafe extern "C" fn(Option<RequestFn>, Option<CompleteFn>) -> CUptiResult,
    pub enable: unsafe extern "C" fn(u32) -> CUptiResult,
    pub flush_all: unsafe extern "C" fn(u32) -> CUptiResult,
    pub get_next_record: unsafe extern "C" fn(*mut u8, usize, *mut *mut u8) -> CUptiResult,
    pub get_timestamp: unsafe extern "C" fn(*mut u64) -> CUptiResult,
    pub dropped_records: unsafe extern "C" fn(*mut c_void, u32, *mut usize) -> CUptiResult,
    pub subscribe:
        unsafe extern "C" fn(*mut *mut c_void, Option<CallbackFn>, *mut c_void) -> CUptiResult,
    pub unsubscribe: unsafe extern "C" fn(*mut c_void) -> CUptiResult,
    /// Absent from older releases.
    pub register_timestamp: Option<unsafe extern "C" fn(Option<TimestampFn>) -> CUptiResult>,
    pub result_string: Option<unsafe extern "C" fn(CUptiResult, *mut *const c_char) -> CUptiResult>,
    /// `cuptiSetThreadIdType`: API records carry gettid() instead of
    /// pthread_self() after `THREAD_ID_SYSTEM`.
    pub set_thread_id_type: Option<unsafe extern "C" fn(u32) -> CUptiResult>,
    /// Where it was loaded from, for the log.
    pub path: String,
}

/// The file of a library this process maps whose name starts with
/// `soname_prefix` (`libcupti.so`), if any.
pub(crate) fn mapped_library(soname_prefix: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(soname_prefix))
        })
        .map(str::to_string)
}

fn open(path: &str) -> Option<*mut c_void> {
    let c = CString::new(path).ok()?;
    // SAFETY: a valid C string; RTLD_NOLOAD is not used, so a library not
    // yet loaded is loaded (its constructors run, as CUDA would do).
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    (!h.is_null()).then_some(h)
}

/// # Safety
/// `T` must be the function pointer type of `name`.
pub(crate) unsafe fn sym<T: Copy>(handle: *mut c_void, name: &CStr) -> Option<T> {
    // SAFETY: a valid handle and C string.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller names the right type; a function pointer is
    // pointer-sized.
    Some(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl Api {
    pub fn load() -> Result<Api, String> {
        // An empty GAPSCOPE_CUPTI_PATH is no path: dlopen("") would hand
        // back the main program, which has no CUPTI in it.
        let candidates: Vec<String> = std::env::var("GAPSCOPE_CUPTI_PATH")
            .ok()
            .filter(|p| !p.is_empty())
            .into_iter()
            .chain(mapped_library("libcupti.so"))
            .chain(["libcupti.so.13", "libcupti.so.12", "libcupti.so"].map(String::from))
            .collect();
        let (handle, path) = candidates
            .iter()
            .find_map(|p| open(p).map(|h| (h, p.clone())))
            .ok_or_else(|| {
                format!(
                    "no libcupti found (tried {}): set GAPSCOPE_CUPTI_PATH to the libcupti.so of this process's CUDA",
                    candidates.join(", ")
                )
            })?;
        macro_rules! need {
            ($name:literal) => {
                // SAFETY: the type is the one the CUPTI headers declare.
                unsafe { sym(handle, $name) }
                    .ok_or_else(|| format!("{path} lacks {}", $name.to_string_lossy()))?
            };
        }
        Ok(Api {
            get_version: need!(c"cuptiGetVersion"),
            register_callbacks: need!(c"cuptiActivityRegisterCallbacks"),
            enable: need!(c"cuptiActivityEnable"),
            flush_all: need!(c"cuptiActivityFlushAll"),
            get_next_record: need!(c"cuptiActivityGetNextRecord"),
            get_timestamp: need!(c"cuptiGetTimestamp"),
            dropped_records: need!(c"cuptiActivityGetNumDroppedRecords"),
            subscribe: need!(c"cuptiSubscribe"),
            unsubscribe: need!(c"cuptiUnsubscribe"),
            // SAFETY: as above.
            register_timestamp: unsafe { sym(handle, c"cuptiActivityRegisterTimestampCallback") },
            // SAFETY: as above.
            result_string: unsafe { sym(handle, c"cuptiGetResultString") },
            // SAFETY: as above.
            set_thread_id_type: unsafe { sym(handle, c"cuptiSetThreadIdType") },
            path,
        })
    }

    /// CUPTI's words for a result code.
    pub fn describe(&self, r: CUptiResult) -> String {
        let mut s: *const c_char = std::ptr::null();
        if let Some(f) = self.result_string
            // SAFETY: a valid out pointer.
            && unsafe { f(r, &mut s) } == CUPTI_SUCCESS
            && !s.is_null()
        {
            // SAFETY: CUPTI returns a static C string.
            return unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
        }
        format!("CUPTI error {r}")
    }
}
