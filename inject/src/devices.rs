//! Which GPU each CUDA device index of this process is: the UUIDs the
//! driver the process loaded gives for its ordinals (those within
//! `CUDA_VISIBLE_DEVICES`, the indexes CUPTI's records carry), so that
//! gapscoped can find the same GPU in NVML, whose indexes differ.
//!
//! Asked from the agent's flush thread, never from CUDA's own calls into
//! the agent: `InitializeInjection` runs inside `cuInit`, before the
//! driver answers.

use std::ffi::{CString, c_int, c_void};

use gapscope_wire::{Device, MAX_DEVICES};

use crate::cupti_api::{mapped_library, sym};

type CuResult = c_int;
const CUDA_SUCCESS: CuResult = 0;

/// The loaded libcuda, by its soname or else by the file the process
/// maps (never loading one: RTLD_NOLOAD).
fn loaded_driver() -> Result<(*mut c_void, String), String> {
    let noload = |name: &str| {
        let c = CString::new(name).ok()?;
        // SAFETY: a valid C string; RTLD_NOLOAD only finds a loaded copy.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        (!h.is_null()).then_some(h)
    };
    if let Some(h) = noload("libcuda.so.1") {
        return Ok((h, "libcuda.so.1".into()));
    }
    let path = mapped_library("libcuda.so").ok_or("the process maps no libcuda")?;
    noload(&path)
        .map(|h| (h, path.clone()))
        .ok_or_else(|| format!("{path} is mapped but not loaded"))
}

/// The process's CUDA devices, or why they cannot be known (yet).
pub fn query() -> Result<Vec<Device>, String> {
    let (handle, path) = loaded_driver()?;
    type Count = unsafe extern "C" fn(*mut c_int) -> CuResult;
    type Get = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
    type Uuid = unsafe extern "C" fn(*mut [u8; 16], c_int) -> CuResult;
    // SAFETY: the types the CUDA headers declare (CUdevice is an int,
    // CUuuid 16 bytes).
    let found = unsafe {
        (
            sym::<Count>(handle, c"cuDeviceGetCount"),
            sym::<Get>(handle, c"cuDeviceGet"),
            sym::<Uuid>(handle, c"cuDeviceGetUuid_v2").or_else(|| sym(handle, c"cuDeviceGetUuid")),
        )
    };
    // SAFETY: the handle from dlopen above (a reference it added).
    unsafe { libc::dlclose(handle) };
    let (Some(count), Some(get), Some(uuid)) = found else {
        return Err(format!(
            "{path} lacks cuDeviceGetCount, cuDeviceGet or cuDeviceGetUuid"
        ));
    };
    let mut n: c_int = 0;
    // SAFETY: a valid out pointer.
    let r = unsafe { count(&mut n) };
    if r != CUDA_SUCCESS {
        return Err(format!("cuDeviceGetCount: CUDA error {r}"));
    }
    let mut out = Vec::new();
    for ordinal in 0..n.clamp(0, c_int::from(MAX_DEVICES)) {
        let mut dev: c_int = 0;
        let mut bytes = [0u8; 16];
        // SAFETY: valid out pointers.
        let r = unsafe { get(&mut dev, ordinal) };
        if r != CUDA_SUCCESS {
            return Err(format!("cuDeviceGet({ordinal}): CUDA error {r}"));
        }
        // SAFETY: as above.
        let r = unsafe { uuid(&mut bytes, dev) };
        if r != CUDA_SUCCESS {
            return Err(format!("cuDeviceGetUuid({ordinal}): CUDA error {r}"));
        }
        out.push(Device {
            index: ordinal as u8,
            uuid: bytes,
        });
    }
    Ok(out)
}
