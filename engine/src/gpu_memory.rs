//! GPU memory of a stage's processes, as NVIDIA's management library (NVML, what `nvidia-smi`
//! reads) reports it per process, summed over the processes of one process group.
//!
//! [`crate::run_child`] samples its child's group with [`group_bytes`] every
//! [`SAMPLE_EVERY`] and keeps the largest sum, which the run record stores as the stage's peak
//! GPU memory. The figure is what the driver has handed the process: the CUDA context and
//! everything PyTorch's caching allocator reserved, not only live tensors, and it is sampled,
//! so a spike shorter than the interval can be missed.
//!
//! `libnvidia-ml.so.1` comes with the NVIDIA driver; it is opened at the first sample and never
//! linked, so machines without a GPU pay one failed `dlopen`. The sum is `None` (and the record
//! has no GPU figure) when the library is missing, when no device or process is visible, or
//! when NVML's process ids are not this machine's (a container without the host's process
//! namespace): a process is counted only if `/proc` shows it in our group or descended from the
//! group's leader.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;
use std::time::Duration;

/// How often a running child's group is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// `nvmlReturn_t` values used here.
const NVML_SUCCESS: c_int = 0;
const NVML_ERROR_INSUFFICIENT_SIZE: c_int = 7;
/// `usedGpuMemory` when the driver cannot say (for example a process on a MIG instance).
const NVML_VALUE_NOT_AVAILABLE: u64 = u64::MAX;

/// `nvmlProcessInfo_v2_t`, the layout `nvmlDeviceGetComputeRunningProcesses_v2` and `_v3` fill.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

type Device = *mut c_void;
type GetProcesses = unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> c_int;

/// The opened library: one handle per device and the per-process query.
struct Nvml {
    devices: Vec<Device>,
    get_processes: GetProcesses,
}

// SAFETY: NVML is thread-safe (its documentation says every call may be made from any thread);
// device handles are opaque pointers owned by the library, valid until `nvmlShutdown`, which
// is never called.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

static NVML: OnceLock<Option<Nvml>> = OnceLock::new();

/// Looks up `name` in the library `handle`.
///
/// # Safety
/// `handle` is a live `dlopen` handle and `T` the function's true type.
unsafe fn symbol<T: Copy>(handle: *mut c_void, name: &CStr) -> Option<T> {
    let address = libc::dlsym(handle, name.as_ptr());
    (!address.is_null()).then(|| std::mem::transmute_copy::<*mut c_void, T>(&address))
}

fn open() -> Option<Nvml> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the type NVML's
    // header gives it, and the library stays loaded for the life of the process.
    unsafe {
        let handle = libc::dlopen(
            c"libnvidia-ml.so.1".as_ptr() as *const c_char,
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        );
        if handle.is_null() {
            return None;
        }
        let init: unsafe extern "C" fn() -> c_int = symbol(handle, c"nvmlInit_v2")?;
        let count: unsafe extern "C" fn(*mut c_uint) -> c_int =
            symbol(handle, c"nvmlDeviceGetCount_v2")?;
        let by_index: unsafe extern "C" fn(c_uint, *mut Device) -> c_int =
            symbol(handle, c"nvmlDeviceGetHandleByIndex_v2")?;
        let get_processes: GetProcesses =
            symbol(handle, c"nvmlDeviceGetComputeRunningProcesses_v3")
                .or_else(|| symbol(handle, c"nvmlDeviceGetComputeRunningProcesses_v2"))?;
        if init() != NVML_SUCCESS {
            return None;
        }
        let mut n: c_uint = 0;
        if count(&mut n) != NVML_SUCCESS || n == 0 {
            return None;
        }
        let devices: Vec<Device> = (0..n)
            .filter_map(|i| {
                let mut device: Device = std::ptr::null_mut();
                (by_index(i, &mut device) == NVML_SUCCESS).then_some(device)
            })
            .collect();
        (!devices.is_empty()).then_some(Nvml {
            devices,
            get_processes,
        })
    }
}

impl Nvml {
    /// Every compute process on every device, with the memory the driver gives it there.
    fn processes(&self) -> Vec<ProcessInfo> {
        let mut all = Vec::new();
        for &device in &self.devices {
            let mut buffer = vec![ProcessInfo::default(); 64];
            loop {
                let mut n = buffer.len() as c_uint;
                // SAFETY: `buffer` holds `n` writable entries of the layout NVML fills.
                let status = unsafe { (self.get_processes)(device, &mut n, buffer.as_mut_ptr()) };
                match status {
                    NVML_SUCCESS => {
                        all.extend_from_slice(&buffer[..(n as usize).min(buffer.len())]);
                        break;
                    }
                    // More processes than room: NVML said how many; a few more may start.
                    NVML_ERROR_INSUFFICIENT_SIZE if (n as usize) >= buffer.len() => {
                        buffer = vec![ProcessInfo::default(); n as usize + 16];
                    }
                    _ => break,
                }
            }
        }
        all
    }
}

/// The parent and the process group of `pid`, from `/proc/PID/stat` (the fourth and fifth
/// fields, after the command name in parentheses, which may itself hold spaces and parentheses).
fn parent_and_group(pid: u32) -> Option<(u32, libc::pid_t)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // state, ppid, pgrp
    let mut fields = after_name.split_whitespace().skip(1);
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((parent, group))
}

/// Whether `pid` is in the group `group`, whose leader [`crate::run_child`] started, or
/// descends from that leader through processes that moved to groups of their own (a stage's
/// command run under `--isolate` by a worker in its own group).
fn belongs_to(pid: u32, group: libc::pid_t) -> bool {
    let mut at = pid;
    // A chain of parents ends at init; the bound guards against a cycle read mid-change.
    for _ in 0..4096 {
        let Some((parent, pgrp)) = parent_and_group(at) else {
            return false;
        };
        if pgrp == group || at as libc::pid_t == group {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        at = parent;
    }
    false
}

/// The GPU memory, in bytes, that the driver reports for the processes of process group
/// `group` and their descendants, summed over processes and devices; `None` when NVML is not
/// there or none of those processes uses a GPU.
pub fn group_bytes(group: libc::pid_t) -> Option<u64> {
    let nvml = NVML.get_or_init(open).as_ref()?;
    sum_for_group(&nvml.processes(), |pid| belongs_to(pid, group))
}

/// The memory of the processes `belongs` accepts.
fn sum_for_group(processes: &[ProcessInfo], belongs: impl Fn(u32) -> bool) -> Option<u64> {
    let used: Vec<u64> = processes
        .iter()
        .filter(|p| p.used_gpu_memory != NVML_VALUE_NOT_AVAILABLE)
        .filter(|p| belongs(p.pid))
        .map(|p| p.used_gpu_memory)
        .collect();
    (!used.is_empty()).then(|| used.iter().sum())
}

/// The peak of a child's sampled GPU memory.
#[derive(Debug)]
pub(crate) struct GpuSampler {
    group: libc::pid_t,
    last: Option<std::time::Instant>,
    peak: Option<u64>,
}

impl GpuSampler {
    pub(crate) fn new(group: libc::pid_t) -> Self {
        Self {
            group,
            last: None,
            peak: None,
        }
    }

    /// Samples the group if [`SAMPLE_EVERY`] has passed since the last sample.
    pub(crate) fn poll(&mut self) {
        if self.last.is_some_and(|at| at.elapsed() < SAMPLE_EVERY) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        if let Some(bytes) = group_bytes(self.group) {
            self.peak = Some(self.peak.map_or(bytes, |p| p.max(bytes)));
        }
    }

    /// The largest sample, if any process of the group was seen on a GPU.
    pub(crate) fn peak(&self) -> Option<u64> {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_group_of(pid: u32) -> Option<libc::pid_t> {
        parent_and_group(pid).map(|(_, group)| group)
    }

    #[test]
    fn the_process_group_is_read_from_proc_even_with_odd_command_names() {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpgrp has no preconditions.
        let own = unsafe { libc::getpgrp() };
        assert_eq!(process_group_of(std::process::id()), Some(own));
        assert_eq!(process_group_of(u32::MAX), None);
        // A command name with spaces and a `)` (the kernel keeps its first 15 bytes), in a
        // group of its own.
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("a b) 1 2 3");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let mut child = std::process::Command::new(&program)
            .arg("5")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = process_group_of(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(group, Some(child.id() as libc::pid_t));
        assert_ne!(group, Some(own));
    }

    #[test]
    fn a_descendant_in_a_group_of_its_own_still_belongs_to_the_stage() {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        // The leader starts a grandchild in a new session (so a new group) and prints its pid.
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 5 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(leader.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        // `setsid` may still be turning into `sleep`; its group settles at once.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let group = leader.id() as libc::pid_t;
        let (in_leader_group, belongs) = (
            process_group_of(grandchild) == Some(group),
            belongs_to(grandchild, group),
        );
        let _ = std::process::Command::new("kill")
            .arg(grandchild.to_string())
            .status();
        leader.kill().unwrap();
        leader.wait().unwrap();
        assert!(!in_leader_group, "setsid gave it a group of its own");
        assert!(belongs, "but it descends from the stage's process");
        assert!(
            !belongs_to(std::process::id(), group),
            "its parent does not belong"
        );
    }

    #[test]
    fn only_the_groups_processes_with_known_memory_are_summed() {
        let process = |pid, used| ProcessInfo {
            pid,
            used_gpu_memory: used,
            ..ProcessInfo::default()
        };
        let processes = [
            process(10, 1 << 30),
            process(11, 1 << 20),
            process(12, 5 << 30),
            process(13, NVML_VALUE_NOT_AVAILABLE),
        ];
        let group_of = |pid: u32| match pid {
            10 | 11 | 13 => Some(7),
            12 => Some(8),
            _ => None,
        };
        let sum = |group| sum_for_group(&processes, |pid| group_of(pid) == Some(group));
        assert_eq!(sum(7), Some((1 << 30) + (1 << 20)));
        assert_eq!(sum(8), Some(5 << 30));
        assert_eq!(sum(9), None);
    }

    #[test]
    fn the_struct_has_nvmls_layout() {
        // unsigned int, (padding), unsigned long long, unsigned int, unsigned int
        assert_eq!(std::mem::size_of::<ProcessInfo>(), 24);
        assert_eq!(std::mem::offset_of!(ProcessInfo, used_gpu_memory), 8);
    }
}
