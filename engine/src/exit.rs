//! The exit-code policy of every mipipe process, in one table: the `mipipe` binary,
//! `mipipe exec-stage` (worker processes and cluster jobs) and `mipipe-torch-worker` exit with
//! these codes, and the launcher reads a worker's code back into an [`ErrorClass`] with the
//! same table.

use crate::outcome::{Outcome, RunSummary};
use crate::stage::ErrorClass;

/// How a mipipe process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for succeeded.
    Success,
    /// A stage's own work failed (a command exited non-zero, bad data).
    StageFailed,
    /// The pipeline is invalid, or the command line is wrong.
    Usage,
    /// The environment failed (disk, permissions, missing library or tool, out of memory).
    Environment,
    /// A bug in mipipe (a panic, an impossible state).
    Internal,
    /// Interrupted (Ctrl-C); nothing partial was cached.
    Interrupted,
}

/// Each exit, its code and the error class it stands for.
const TABLE: [(Exit, u8, Option<ErrorClass>); 6] = [
    (Exit::Success, 0, None),
    (Exit::StageFailed, 1, Some(ErrorClass::Stage)),
    (Exit::Usage, 2, None),
    (Exit::Environment, 3, Some(ErrorClass::Environment)),
    (Exit::Internal, 70, Some(ErrorClass::Internal)),
    (Exit::Interrupted, 130, None),
];

/// The status a Rust program exits with when it panics outside any handler.
const RUST_PANIC: i32 = 101;

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        TABLE
            .iter()
            .find(|(exit, _, _)| *exit == self)
            .map(|(_, code, _)| *code)
            .expect("every exit is in the table")
    }

    /// The exit of a process that failed with an error of this class.
    pub fn of_class(class: ErrorClass) -> Self {
        TABLE
            .iter()
            .find(|(_, _, c)| *c == Some(class))
            .map(|(exit, _, _)| *exit)
            .expect("every class is in the table")
    }

    /// Reads a worker process's exit code back (`None`: not one of ours). A Rust panic's 101
    /// reads as [`Exit::Internal`].
    pub fn from_code(code: i32) -> Option<Self> {
        if code == RUST_PANIC {
            return Some(Self::Internal);
        }
        TABLE
            .iter()
            .find(|(_, c, _)| i32::from(*c) == code)
            .map(|(exit, _, _)| *exit)
    }

    /// The error class of a worker that exited with code `code`: its own failure unless the
    /// table says environment or internal. `None` for success.
    pub fn class_of_worker(code: i32) -> Option<ErrorClass> {
        match Self::from_code(code) {
            Some(Self::Success) => None,
            Some(Self::Environment) => Some(ErrorClass::Environment),
            // A worker that got a job it cannot parse, or panicked, is a mipipe bug.
            Some(Self::Internal | Self::Usage) => Some(ErrorClass::Internal),
            _ => Some(ErrorClass::Stage),
        }
    }

    /// The exit of a run: interrupted, else the worst failure (a stage's own failure first,
    /// since that is what the user fixes, then a mipipe bug, then the environment).
    pub fn of_run(summary: &RunSummary, interrupted: bool) -> Self {
        if interrupted {
            return Self::Interrupted;
        }
        let classes: Vec<ErrorClass> = summary
            .outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Failed { class, .. } => Some(*class),
                _ => None,
            })
            .collect();
        [
            ErrorClass::Stage,
            ErrorClass::Internal,
            ErrorClass::Environment,
        ]
        .into_iter()
        .find(|c| classes.contains(c))
        .map_or(Self::Success, Self::of_class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_its_exit() {
        for (exit, code, class) in TABLE {
            assert_eq!(exit.code(), code);
            assert_eq!(Exit::from_code(i32::from(code)), Some(exit));
            if let Some(class) = class {
                assert_eq!(Exit::of_class(class), exit);
                assert_eq!(Exit::class_of_worker(i32::from(code)), Some(class));
            }
        }
        assert_eq!(Exit::class_of_worker(101), Some(ErrorClass::Internal));
        assert_eq!(Exit::class_of_worker(42), Some(ErrorClass::Stage));
        assert_eq!(Exit::class_of_worker(0), None);
    }
}
