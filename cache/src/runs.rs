//! Run records: one folder per attempt of a stage, kept whether it succeeded or failed, with
//! the stage's combined stdout/stderr log.
//!
//! ```text
//! <cache>/runs/v1/<key-hex>/<unix-millis>-<pid>/log
//! <cache>/runs/v1/<key-hex>/<unix-millis>-<pid>/record.json
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::StageKey;
use crate::error::CacheError;
use crate::fsutil::write_atomic;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Outputs stored and the action-cache entry written.
    Succeeded,
    /// The stage reported an error or its process failed.
    Failed,
    /// Stopped by Ctrl-C or cancellation.
    Cancelled,
}

/// What is kept about one attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Format version (1).
    pub version: u32,
    /// The stage name.
    pub stage: String,
    /// The stage key.
    pub key: StageKey,
    /// How it ended.
    pub outcome: RunOutcome,
    /// The error message of a failed attempt.
    pub error: Option<String>,
    /// Start, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Wall-clock duration.
    pub duration_ms: u64,
    /// Where the attempt ran (`local`, or a scheduler's job id).
    pub executor: String,
    /// The `mipipe run` invocation that started it (`<unix-millis>-<pid>`); absent in records
    /// written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Why it ran, in words (`param `lr` changed 0.1 -> 0.01`, `never run`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The largest resident memory of the processes it ran, in bytes; absent for a stage that
    /// ran inside `mipipe` itself without a child process (its memory is not its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// The largest GPU memory its processes held at once, in bytes, as NVML (`nvidia-smi`)
    /// reports it per process, sampled every 250 ms; absent when none of them was seen on a
    /// GPU (or NVML cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_bytes: Option<u64>,
}

/// A run folder that is being written.
#[derive(Clone, Debug)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// The combined stdout/stderr log of the attempt.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes the record (atomically) when the attempt ends.
    pub fn finish(&self, record: &RunRecord) -> Result<(), CacheError> {
        let path = self.dir.join("record.json");
        let bytes = serde_json::to_vec_pretty(record).expect("run records always serialise");
        write_atomic(&path, &bytes).map_err(|e| CacheError::io("writing", &path, e))
    }
}

/// Creates and finds run folders.
#[derive(Clone, Debug)]
pub struct Runs {
    root: PathBuf,
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Runs {
    pub(crate) fn new(cache_root: &Path) -> Self {
        Self {
            root: cache_root.join("runs").join("v1"),
        }
    }

    /// The folder of all runs.
    pub fn runs_root(&self) -> &Path {
        &self.root
    }

    /// Starts a new attempt folder for a key.
    pub fn start(&self, key: &StageKey) -> Result<RunDir, CacheError> {
        let dir = self.root.join(key.to_hex()).join(format!(
            "{:013}-{}",
            now_unix_ms(),
            std::process::id()
        ));
        fs::create_dir_all(&dir).map_err(|e| CacheError::io("creating", &dir, e))?;
        Ok(RunDir { dir })
    }

    /// The newest attempt of a key: its folder and, when it finished, its record.
    pub fn latest(&self, key: &StageKey) -> Option<(PathBuf, Option<RunRecord>)> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.root.join(key.to_hex()))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let dir = dirs.pop()?;
        let record = fs::read(dir.join("record.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Some((dir, record))
    }
}
