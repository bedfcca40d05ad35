//! Running a child process the way every stage process runs: in its own process group, with the
//! job's environment, waited for in short polls so that cancellation reaches it: SIGTERM to the
//! whole group, then SIGKILL once [`KILL_GRACE`] has passed. The worker launcher and the
//! `command` kind both run their children through [`run_child`].

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a cancelled child's group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

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
/// true, the group gets SIGTERM, and SIGKILL after [`KILL_GRACE`].
pub fn run_child(
    command: &mut Command,
    env: &[(String, String)],
    cancel: &AtomicBool,
    mut on_poll: impl FnMut(),
) -> Result<ExitStatus, ChildError> {
    let own: Vec<std::ffi::OsString> = command.get_envs().map(|(k, _)| k.to_owned()).collect();
    for (k, v) in env {
        if !own.iter().any(|o| o == k.as_str()) {
            command.env(k, v);
        }
    }
    let mut child = command
        .process_group(0)
        .spawn()
        .map_err(ChildError::Start)?;
    let group = child.id() as libc::pid_t;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    let mut terminated_at: Option<Instant> = None;
    loop {
        match receiver.recv_timeout(POLL) {
            Ok(status) => {
                on_poll();
                return status.map_err(ChildError::Wait);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                on_poll();
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

/// An exit status in words: `exited with status 2`, `was killed by signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".to_string(),
    }
}
