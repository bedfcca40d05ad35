//! Integration tests: they drive the real `mipipe` binary on temporary projects.

mod cache_maintenance;
mod concurrency;
mod converters;
mod data_stages;
mod dependency_rules;
mod diagnostics;
mod execution;
mod incremental;
mod interruption;
mod mutation;
mod pipeline_features;
mod report_stages;
mod slurm;
mod study;
mod torch_stages;
mod user_data;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary project folder with helpers to write files and run mipipe in it.
pub struct Project {
    dir: tempfile::TempDir,
}

/// What one mipipe invocation printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Stage names by outcome word in plain-line output (`ran`, `FAILED`, `skipped`, ...).
    pub fn stages_with(&self, word: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .stderr
            .lines()
            .filter(|line| line.starts_with('['))
            .filter_map(|line| {
                let rest = line.split_once("] ")?.1;
                let rest = rest.strip_prefix(word)?.strip_prefix(' ')?;
                let name = rest.split([' ', ':']).next()?;
                Some(name.to_string())
            })
            .collect();
        names.sort();
        names
    }
}

pub fn mipipe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mipipe"))
}

/// The worker executable must sit next to the `mipipe` under test (`scripts/test.sh` builds
/// the workspace first).
pub fn require_torch_worker() {
    let worker = crate::mipipe_bin().with_file_name("mipipe-torch-worker");
    assert!(
        worker.is_file(),
        "`{}` is missing: run `cargo build --workspace` (scripts/test.sh does) before the tests",
        worker.display()
    );
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, text: &str) -> &Self {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path().join(relative))
            .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
    }

    /// A `mipipe` command in the project folder, with plain output.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(mipipe_bin());
        command
            .args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("MIPIPE_NO_PROGRESS", "1")
            .env_remove("MIPIPE_CACHE_DIR")
            .env_remove("CUDA_VISIBLE_DEVICES");
        command
    }

    pub fn mipipe(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("mipipe runs"))
    }

    /// The parsed `mipipe.lock`.
    pub fn lock(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("mipipe.lock")).expect("the lockfile is JSON")
    }

    /// The action-cache entry of a stage's current key (from the lockfile).
    pub fn action_entry(&self, stage: &str) -> PathBuf {
        let lock = self.lock();
        let key = lock["stages"][stage]["key"]
            .as_str()
            .expect("stage in lockfile");
        self.path()
            .join(format!(".mipipe/actions/v1/{}/{key}.json", &key[..2]))
    }

    /// The object file (or, for a directory output, the tree folder) of one output of a stage
    /// (from the lockfile).
    pub fn output_object(&self, stage: &str, output: &str) -> PathBuf {
        let lock = self.lock();
        let entry = &lock["stages"][stage]["outputs"][output];
        let digest = entry["digest"].as_str().expect("output in lockfile");
        if entry["kind"] == "dir" {
            return self.path().join(format!(".mipipe/trees/v1/{digest}"));
        }
        self.path().join(format!(
            ".mipipe/objects/v1/{}/{}",
            &digest[..2],
            &digest[2..]
        ))
    }

    /// Runs `mipipe cache verify` and panics unless it finds the cache clean.
    #[track_caller]
    pub fn assert_cache_clean(&self) {
        let verify = self.mipipe(&["cache", "verify"]);
        verify.expect_code(0);
        assert!(
            verify.stdout.contains("cache is clean"),
            "{}",
            verify.stdout
        );
    }

    /// Lines of a file that stages append to, to count executions.
    pub fn count_lines(&self, relative: &str, needle: &str) -> usize {
        std::fs::read_to_string(self.path().join(relative))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == needle)
            .count()
    }
}

/// Whether `program --version` runs. A missing tool makes the calling test skip (after saying
/// so), unless the environment variable `require` is set, as `scripts/test.sh` sets it for
/// every tool it installs: then the test fails.
fn tool_available(program: &str, require: &str) -> bool {
    let available = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os(require).is_none(),
            "{require} is set but {program} is missing"
        );
        eprintln!("skipped: no {program} here (scripts/test.sh installs it)");
    }
    available
}

/// Compiles each of `tables` (paths relative to the project) with pdflatex inside a minimal
/// article (booktabs, graphicx), as a paper would `\input` it, and checks that none is wider
/// than the text. Returns false (after saying so) when pdflatex is
/// missing and `MIPIPE_REQUIRE_PDFLATEX` is unset; panics with pdflatex's log on a failure.
pub fn compile_latex(project: &Project, tables: &[&str]) -> bool {
    if !tool_available("pdflatex", "MIPIPE_REQUIRE_PDFLATEX") {
        return false;
    }
    for table in tables {
        project.write(
            "doc.tex",
            &format!(
                "\\documentclass{{article}}\n\\usepackage{{booktabs}}\n\\usepackage{{graphicx}}\n\\begin{{document}}\n\\input{{{table}}}\n\\end{{document}}\n"
            ),
        );
        let out = Command::new("pdflatex")
            .args(["-interaction=nonstopmode", "-halt-on-error", "doc.tex"])
            .current_dir(project.path())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{table} does not compile:\n{log}");
        // A table wider than the text runs into the margin: pdflatex reports it, quietly.
        assert!(
            !log.contains("Overfull \\hbox"),
            "{table} is wider than the page:\n{log}"
        );
    }
    true
}

/// The Python with pyarrow that `scripts/test.sh` sets up; `None` (the test skips) when it is
/// not set, unless `MIPIPE_REQUIRE_PYTHON` says it must be.
pub fn python_with_pyarrow() -> Option<std::ffi::OsString> {
    let python = std::env::var_os("MIPIPE_TEST_PYTHON");
    if python.is_none() {
        assert!(
            std::env::var_os("MIPIPE_REQUIRE_PYTHON").is_none(),
            "scripts/test.sh sets MIPIPE_TEST_PYTHON to a Python with pyarrow"
        );
        eprintln!("skipped: MIPIPE_TEST_PYTHON (a Python with pyarrow) is not set");
    }
    python
}

/// Runs Debian's headless Chromium on a page of the project with `args` (`--dump-dom`,
/// `--screenshot=PATH`), with the flags a closed network needs, and returns its stdout. `None`
/// (after saying so) when Chromium is missing and `MIPIPE_REQUIRE_CHROMIUM` is unset.
pub fn headless_chromium(project: &Project, page: &str, args: &[&str]) -> Option<String> {
    if !tool_available("chromium", "MIPIPE_REQUIRE_CHROMIUM") {
        return None;
    }
    let profile = project.path().join("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1400",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}/{page}", project.path().display()))
        .current_dir(project.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
