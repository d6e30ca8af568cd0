//! The GPU handle: one wgpu device, chosen as the CLI chooses it (backend and adapter name, or
//! the `PLUMB_BACKEND` / `PLUMB_ADAPTER` / `PLUMB_KERNELS` environment variables).

use crate::ffi::{guard, opt_str_arg, out_arg, put, put_string, ref_arg, PlumbStatus};
use plumb_rs::{Gpu, GpuOptions};
use std::ffi::c_char;

/// An open GPU device. Thread-safe: it may be shared by several models on several threads.
pub struct PlumbGpu {
    pub(crate) gpu: Gpu,
}

/// Open a GPU. `backend` ("vulkan", "metal", "dx12", "gl") and `adapter` (part of the adapter's
/// name, case-insensitive) may be NULL: then `PLUMB_BACKEND` and `PLUMB_ADAPTER` decide, as for
/// the `plumb` CLI, and otherwise the best adapter found. Free with `plumb_gpu_free`.
///
/// # Safety
/// Strings are NULL or NUL-terminated; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn plumb_gpu_open(backend: *const c_char, adapter: *const c_char, out: *mut *mut PlumbGpu) -> PlumbStatus {
    guard("plumb_gpu_open", || {
        let out = out_arg(out, "out")?;
        put(out, std::ptr::null_mut());
        let mut opts = GpuOptions::from_env()?;
        if let Some(b) = opt_str_arg(backend, "backend")? {
            opts.backend = Some(b.to_string());
        }
        if let Some(a) = opt_str_arg(adapter, "adapter")? {
            opts.adapter = Some(a.to_string());
        }
        let gpu = Gpu::with_options(&opts)?;
        put(out, Box::into_raw(Box::new(PlumbGpu { gpu })));
        Ok(())
    })
}

/// The adapter's description (name, backend, device type) as a new string for
/// `plumb_string_free`.
///
/// # Safety
/// `gpu` comes from `plumb_gpu_open`; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn plumb_gpu_describe(gpu: *const PlumbGpu, out: *mut *mut c_char) -> PlumbStatus {
    guard("plumb_gpu_describe", || {
        let out = out_arg(out, "out")?;
        let g = ref_arg(gpu, "gpu")?;
        put_string(out, &g.gpu.adapter().to_string());
        Ok(())
    })
}

/// Free a GPU handle (NULL is ignored). Models loaded on it keep the device alive until they
/// are freed too, so the order of the two frees does not matter.
///
/// # Safety
/// `gpu` comes from `plumb_gpu_open`, is not used afterwards and is not freed twice.
#[no_mangle]
pub unsafe extern "C" fn plumb_gpu_free(gpu: *mut PlumbGpu) {
    if !gpu.is_null() {
        // SAFETY: made by Box::into_raw in plumb_gpu_open (contract above).
        drop(unsafe { Box::from_raw(gpu) });
    }
}

