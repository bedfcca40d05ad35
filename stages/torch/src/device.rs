//! Where tensors live: `device: auto | cpu | cuda[:N]`, and loading libtorch's CUDA library.
//!
//! The linker's `--as-needed` drops `libtorch_cuda.so` from the worker (no symbol of it is
//! referenced), so without help libtorch never sees a GPU. The worker opens it at run time when
//! it is next to `libtorch_cpu.so` (the rpath's folder): the same binary trains on the CPU here
//! and on CUDA where a CUDA libtorch and a GPU exist.

use std::sync::OnceLock;

use mipipe_engine::StageError;
use mipipe_stage_torch_types::Device;

/// Opens `libtorch_cuda.so` once; the error is the dynamic loader's (it names the library that
/// is missing, e.g. `libcublas.so.13: cannot open shared object file`).
pub fn load_cuda_library() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: dlopen with a NUL-terminated name; the handle is kept for the process's
            // life; dlerror's message is copied before any other loader call.
            unsafe {
                let handle = libc::dlopen(
                    c"libtorch_cuda.so".as_ptr(),
                    libc::RTLD_NOW | libc::RTLD_GLOBAL,
                );
                if handle.is_null() {
                    let message = libc::dlerror();
                    return Err(if message.is_null() {
                        "libtorch_cuda.so could not be opened".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(message)
                            .to_string_lossy()
                            .into_owned()
                    });
                }
            }
            Ok(())
        })
        .clone()
}

/// The tch device for a `device` param, and a note for the log when `auto` falls back to the
/// CPU although a CUDA libtorch is installed. `cuda[:N]` that cannot be had is an environment
/// error (exit 3) naming why: the library the loader could not find, or the devices seen.
pub fn resolve(device: Device) -> Result<(tch::Device, Option<String>), StageError> {
    let library = load_cuda_library();
    let cuda = library.is_ok() && tch::Cuda::is_available();
    let devices = if cuda { tch::Cuda::device_count() } else { 0 };
    match device {
        Device::Cpu => Ok((tch::Device::Cpu, None)),
        Device::Auto if cuda => Ok((tch::Device::Cuda(0), None)),
        Device::Auto => Ok((
            tch::Device::Cpu,
            library.err().map(|e| format!("CUDA is not used: {e}")),
        )),
        Device::Cuda(n) if cuda && (n as i64) < devices => Ok((tch::Device::Cuda(n), None)),
        Device::Cuda(n) => Err(StageError::environment(match library {
            Err(e) => format!(
                "`device: cuda:{n}` but libtorch's CUDA library cannot be loaded: {e}; on a GPU machine `bash scripts/setup-libtorch.sh` installs what it needs (or use `device: auto` or `cpu`)"
            ),
            Ok(()) => format!(
                "`device: cuda:{n}` but this process sees {devices} CUDA device(s) (CUDA_VISIBLE_DEVICES={}); use `device: auto` or `cpu`",
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
            ),
        })),
    }
}

/// How a device is written in facts and checkpoints: `cpu`, `cuda:0`.
pub fn name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
        _ => "cpu".into(),
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
