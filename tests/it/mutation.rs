//! A bounded mutation run on pipeline loading (the CI stand-in for a fuzzer): thousands of
//! deterministic mutations of the shipped and the invalid pipelines go through `mipipe dag`
//! under a memory cap. None may crash (a panic is exit 70, a signal is no exit code), and every
//! rejection must be a diagnostic that points into the file.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::Project;

/// Mutations per seed file.
const PER_FILE: usize = 100;
/// Address-space cap of each `mipipe` (an alias bomb or a huge matrix would pass it).
const MEMORY_CAP: u64 = 1 << 30;

/// xorshift64*: the same mutations on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Pieces of pipeline syntax a mutation may insert.
const TOKENS: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "  ",
    "${",
    "${vars.",
    "${params.x}",
    "*",
    "&a ",
    "*a",
    "matrix: {x: [1, 2]}",
    "inputs: {x: a.o}",
    "kind: command",
    "\"",
    "'",
    "#",
    "~",
    "1e999",
    "99999999999999999999",
    ".nan",
    "true",
    "[*]",
    "[x=1]",
    ".o",
    "stages:",
    "version: 1",
    "---\n",
    "? ",
    "!!str ",
    "|\n",
    ">\n",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(chars.len() + 1);
        match rng.below(5) {
            // Delete a run.
            0 if !chars.is_empty() => {
                let at = at.min(chars.len() - 1);
                let end = (at + 1 + rng.below(20)).min(chars.len());
                chars.drain(at..end);
            }
            // Duplicate a run (repeated keys, stages, lines).
            1 if !chars.is_empty() => {
                let at = at.min(chars.len() - 1);
                let end = (at + 1 + rng.below(80)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                let to = rng.below(chars.len() + 1);
                chars.splice(to..to, copy);
            }
            // Truncate.
            2 => chars.truncate(at),
            // Replace a character with a printable one.
            3 if at < chars.len() => chars[at] = (b' ' + rng.below(95) as u8) as char,
            // Insert a token.
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())];
                chars.splice(at..at, token.chars());
            }
        }
    }
    chars.into_iter().collect()
}

fn seed_files() -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "results") {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("pipelines"), &mut files);
    walk(&root.join("tests/invalid"), &mut files);
    files.sort();
    files
}

#[test]
fn mutated_pipelines_never_crash_and_every_rejection_points_into_the_file() {
    let files = seed_files();
    assert!(files.len() >= 20, "{files:?}");
    let project = Project::new();
    let mut tried = 0;
    let mut rejected = 0;
    // Distinct problems (their first line) reported without a location or a help line.
    let mut unhelpful: std::collections::BTreeMap<String, String> = Default::default();
    for (n, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
        for _ in 0..PER_FILE {
            let mutated = mutate(&text, &mut rng);
            project.write("mipipe.yaml", &mutated);
            let mut command = Command::new(crate::mipipe_bin());
            command
                .arg("dag")
                .current_dir(project.path())
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0);
            // SAFETY: the closure runs in the child before exec and only calls setrlimit,
            // which is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    let cap = libc::rlimit {
                        rlim_cur: MEMORY_CAP,
                        rlim_max: MEMORY_CAP,
                    };
                    libc::setrlimit(libc::RLIMIT_AS, &cap);
                    Ok(())
                });
            }
            let output = command.output().unwrap();
            tried += 1;
            let stderr = String::from_utf8_lossy(&output.stderr);
            let show = || format!("{} mutation:\n{mutated}\n---\n{stderr}", file.display());
            match output.status.code() {
                Some(0) => {}
                Some(2) => {
                    rejected += 1;
                    if !(stderr.contains("╭─[") && stderr.contains("help:")) {
                        let problem = stderr
                            .lines()
                            .find(|l| l.trim_start().starts_with('×'))
                            .unwrap_or_default()
                            .trim()
                            .to_string();
                        unhelpful.entry(problem).or_insert_with(show);
                    }
                }
                other => panic!("exit {other:?}: {}", show()),
            }
        }
    }
    assert!(
        unhelpful.is_empty(),
        "{} kinds of rejection without a location or a help line:\n{}",
        unhelpful.len(),
        unhelpful
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );
    eprintln!("{tried} mutated pipelines, {rejected} rejected with a diagnostic, none crashed");
    assert!(rejected > tried / 4, "the mutations barely break anything");
}
