//! Where tensors live: `device: auto | cpu | cuda[:N]`, and loading libtorch's CUDA library.
//!
//! The linker's `--as-needed` drops `libtorch_cuda.so` from the worker (no symbol of it is
//! referenced), so without help libtorch never sees a GPU. The worker opens it at run time when
//! it is next to `libtorch_cpu.so` (the rpath's folder): the same binary trains on the CPU here
//! and on CUDA where a CUDA libtorch and a GPU exist.

use std::sync::OnceLock;

use mipipe_engine::StageError;
use mipipe_stage_torch_types::Device;

/// Opens `libtorch_cuda.so` once, if it can be found; returns whether it is loaded.
pub fn load_cuda_library() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        // SAFETY: dlopen with a NUL-terminated name; the handle is kept for the process's life.
        let handle = unsafe {
            libc::dlopen(
                c"libtorch_cuda.so".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_GLOBAL,
            )
        };
        !handle.is_null()
    })
}

/// The tch device for a `device` param.
pub fn resolve(device: Device) -> Result<tch::Device, StageError> {
    let cuda = load_cuda_library() && tch::Cuda::is_available();
    match device {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Auto if cuda => Ok(tch::Device::Cuda(0)),
        Device::Auto => Ok(tch::Device::Cpu),
        Device::Cuda(n) if cuda && (n as i64) < tch::Cuda::device_count() => {
            Ok(tch::Device::Cuda(n))
        }
        Device::Cuda(n) => Err(StageError::environment(format!(
            "`device: cuda:{n}` but this process sees {} CUDA device(s) (libtorch_cuda {}); use `device: auto` or `cpu`",
            if cuda { tch::Cuda::device_count() } else { 0 },
            if load_cuda_library() { "loaded" } else { "not found" }
        ))),
    }
}

/// Sizes libtorch's CPU thread pool from the CPU slots the engine granted (`MIPIPE_THREADS`).
pub fn set_threads(env: &[(String, String)]) {
    let granted = env
        .iter()
        .find(|(k, _)| k == "MIPIPE_THREADS")
        .and_then(|(_, v)| v.parse::<i32>().ok())
        .filter(|n| *n > 0);
    if let Some(n) = granted {
        tch::set_num_threads(n);
    }
}
