//! Running a child process the way every stage process runs: in its own process group, with the
//! job's environment, waited for in short polls so that cancellation reaches it: SIGTERM to the
//! whole group, then SIGKILL once [`KILL_GRACE`] has passed. The worker launcher and the
//! `command` kind both run their children through [`run_child`].
//!
//! A child also dies with its parent: it gets SIGTERM when the process that started it dies,
//! even by SIGKILL (Linux's parent-death signal). A worker (`mipipe exec-stage`) treats that as
//! Ctrl-C and stops its own children the same way; the `command` kind runs its shell under
//! [`SUPERVISOR`], which passes the signal on to the whole group, so no stage command outlives
//! the run that started it.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::gpu_memory::GpuSampler;

/// How long a cancelled child's group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// A `sh` script that runs `"$@"` in the background of its process group and waits for it; on
/// SIGTERM (cancellation, or the parent-death signal of [`run_child`]) it sends SIGTERM to the
/// whole group, gives it [`KILL_GRACE`] to end, then SIGKILLs the group. Exits with the
/// command's status. Usage: `sh -c SUPERVISOR sh COMMAND ARGS...`.
pub const SUPERVISOR: &str = r#"trap 'trap "" TERM; kill -TERM 0 2>/dev/null; n=0; while kill -0 "$c" 2>/dev/null && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n+1)); done; kill -KILL 0' TERM
"$@" &
c=$!
wait "$c"
"#;

/// How a child ended.
#[derive(Clone, Copy, Debug)]
pub struct ChildExit {
    /// Its exit status.
    pub status: ExitStatus,
    /// The largest resident set of the child or any descendant it waited for, in bytes
    /// (`ru_maxrss` of `wait4`).
    pub peak_rss_bytes: u64,
    /// The largest GPU memory its process group held at once, sampled through NVML
    /// ([`crate::gpu_memory`]); `None` when no process of the group was seen on a GPU.
    pub peak_gpu_bytes: Option<u64>,
}

/// The largest peak memory, resident and on GPUs, among the processes a stage ran, as they end.
#[derive(Debug, Default)]
pub struct PeakMemory {
    rss: AtomicU64,
    gpu: AtomicU64,
}

impl PeakMemory {
    /// Records one process's peaks (keeps the largest of each).
    pub fn record(&self, exit: &ChildExit) {
        self.rss.fetch_max(exit.peak_rss_bytes, Ordering::Relaxed);
        if let Some(gpu) = exit.peak_gpu_bytes {
            self.gpu.fetch_max(gpu, Ordering::Relaxed);
        }
    }

    /// The largest resident set recorded, if any process was measured.
    pub fn rss_bytes(&self) -> Option<u64> {
        Some(self.rss.load(Ordering::Relaxed)).filter(|b| *b > 0)
    }

    /// The largest GPU memory recorded, if any process was seen on a GPU.
    pub fn gpu_bytes(&self) -> Option<u64> {
        Some(self.gpu.load(Ordering::Relaxed)).filter(|b| *b > 0)
    }
}

/// How often the child is polled (and `on_poll` called).
const POLL: Duration = Duration::from_millis(50);

/// Why a child's exit status is not known.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// It could not be started.
    #[error("cannot start it: {0}")]
    Start(std::io::Error),
    /// Waiting for it failed.
    #[error("lost track of it: {0}")]
    Wait(std::io::Error),
}

/// Starts `command` in a process group of its own with `env` added (a variable the command
/// sets itself keeps its value), and waits for it, calling
/// `on_poll` every 50 ms and once more at the end (to forward progress). When `cancel` becomes
/// true, the group gets SIGTERM, and SIGKILL after [`KILL_GRACE`]. Returns the exit status, the
/// child's peak resident memory and the peak GPU memory of its group (sampled meanwhile).
pub fn run_child(
    command: &mut Command,
    env: &[(String, String)],
    cancel: &AtomicBool,
    mut on_poll: impl FnMut(),
) -> Result<ChildExit, ChildError> {
    let own: Vec<std::ffi::OsString> = command.get_envs().map(|(k, _)| k.to_owned()).collect();
    for (k, v) in env {
        if !own.iter().any(|o| o == k.as_str()) {
            command.env(k, v);
        }
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            // The parent may have died before the signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = command
        .process_group(0)
        .spawn()
        .map_err(ChildError::Start)?;
    let group = child.id() as libc::pid_t;
    // Dropping a `Child` neither waits for nor kills it; the thread reaps it with `wait4`, which
    // also reports its resource usage.
    drop(child);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(wait_for(group));
    });
    let mut terminated_at: Option<Instant> = None;
    let mut gpu = GpuSampler::new(group);
    loop {
        match receiver.recv_timeout(POLL) {
            Ok(status) => {
                on_poll();
                return status
                    .map(|exit| ChildExit {
                        peak_gpu_bytes: gpu.peak(),
                        ..exit
                    })
                    .map_err(ChildError::Wait);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                on_poll();
                gpu.poll();
                if !cancel.load(Ordering::Relaxed) {
                    continue;
                }
                match terminated_at {
                    None => {
                        // SAFETY: signalling the process group of our own child.
                        unsafe { libc::kill(-group, libc::SIGTERM) };
                        terminated_at = Some(Instant::now());
                    }
                    Some(at) if at.elapsed() > KILL_GRACE => {
                        // SAFETY: as above.
                        unsafe { libc::kill(-group, libc::SIGKILL) };
                    }
                    Some(_) => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ChildError::Wait(std::io::Error::other(
                    "the waiting thread ended",
                )))
            }
        }
    }
}

/// Waits for the child `pid` and returns its exit status and peak resident memory.
fn wait_for(pid: libc::pid_t) -> std::io::Result<ChildExit> {
    use std::os::unix::process::ExitStatusExt;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain data; an all-zero value is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            return Ok(ChildExit {
                status: ExitStatus::from_raw(status),
                // Linux reports kilobytes.
                peak_rss_bytes: (usage.ru_maxrss.max(0) as u64) * 1024,
                peak_gpu_bytes: None,
            });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// An exit status in words: `exited with status 2`, `was killed by signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".to_string(),
    }
}
