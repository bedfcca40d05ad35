//! Drawing engine events: progress bars on a terminal, plain lines otherwise, JSON for scripts.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mipipe_engine::{Outcome, Reason, Reporter, RunSummary};
use serde_json::json;

use crate::style::Style;

enum Mode {
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
        running: Mutex<HashMap<String, ProgressBar>>,
    },
    Lines,
    Json,
}

/// The binary's reporter.
pub struct TerminalReporter {
    mode: Mode,
    style: Style,
    done: Mutex<(usize, usize)>,
    /// The scheduler stages were submitted to (`Slurm`), for the summary of a detached run.
    scheduler: Mutex<Option<String>>,
}

impl TerminalReporter {
    /// Bars when stderr is a terminal, plain lines otherwise; JSON lines on stdout if asked.
    pub fn new(json: bool, style: Style) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal()
            && std::env::var_os("MIPIPE_NO_PROGRESS").is_none()
        {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {pos}/{len} stages  {elapsed_precise} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            overall.set_prefix("mipipe");
            Mode::Bars {
                multi,
                overall,
                running: Mutex::new(HashMap::new()),
            }
        } else {
            Mode::Lines
        };
        Self {
            mode,
            style,
            done: Mutex::new((0, 0)),
            scheduler: Mutex::new(None),
        }
    }

    fn line(&self, text: &str) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Mode::Lines => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
            }
            Mode::Json => {}
        }
    }

    fn event(&self, value: serde_json::Value) {
        if let Mode::Json = self.mode {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
        }
    }

    fn counter(&self) -> String {
        let done = self.done.lock().expect("poisoned");
        format!("[{}/{}]", done.0, done.1)
    }

    fn tick(&self) {
        self.done.lock().expect("poisoned").0 += 1;
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.inc(1);
        }
    }

    /// Removes the bars before the summary is printed.
    fn finish(&self) {
        if let Mode::Bars {
            overall, running, ..
        } = &self.mode
        {
            for (_, bar) in running.lock().expect("poisoned").drain() {
                bar.finish_and_clear();
            }
            overall.finish_and_clear();
        }
    }
}

fn seconds(d: Duration) -> String {
    if d.as_secs_f64() < 10.0 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{:.0}s", d.as_secs_f64())
    }
}

impl Reporter for TerminalReporter {
    fn on_run_start(&self, total: usize) {
        self.done.lock().expect("poisoned").1 = total;
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.set_length(total as u64);
        }
        self.event(json!({"event": "run_start", "stages": total}));
    }

    fn on_cached(&self, stage: &str, early_cutoff: bool) {
        self.tick();
        self.event(json!({"event": "cached", "stage": stage, "early_cutoff": early_cutoff}));
        if early_cutoff {
            self.line(&format!(
                "{} {} {stage} (upstream output unchanged)",
                self.counter(),
                self.style.dim("cached")
            ));
        }
    }

    fn on_stage_start(&self, stage: &str, reasons: &[Reason]) {
        let why: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        self.event(json!({"event": "start", "stage": stage, "reasons": reasons}));
        match &self.mode {
            Mode::Bars { multi, running, .. } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                        .expect("valid template"),
                );
                bar.set_message(format!("{stage}: {}", why.join("; ")));
                bar.enable_steady_tick(Duration::from_millis(120));
                running
                    .lock()
                    .expect("poisoned")
                    .insert(stage.to_string(), bar);
            }
            Mode::Lines => self.line(&format!(
                "{} start {stage}: {}",
                self.counter(),
                why.join("; ")
            )),
            Mode::Json => {}
        }
    }

    fn on_waiting_for_lock(&self, stage: &str) {
        self.event(json!({"event": "waiting_for_lock", "stage": stage}));
        self.line(&format!(
            "{stage}: waiting for another mipipe process that is running it"
        ));
    }

    fn on_progress(&self, stage: &str, done: u64, total: u64, message: &str) {
        self.event(json!({"event": "progress", "stage": stage, "done": done, "total": total, "message": message}));
        if let Mode::Bars { running, .. } = &self.mode {
            if let Some(bar) = running.lock().expect("poisoned").get(stage) {
                if bar.length() != Some(total) {
                    bar.set_length(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "  {prefix} [{bar:20}] {pos}/{len} {msg} ETA {eta}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(stage.to_string());
                }
                bar.set_position(done);
                bar.set_message(message.to_string());
            }
        }
    }

    fn on_stage_end(&self, stage: &str, outcome: &Outcome, elapsed: Duration) {
        if let Mode::Bars { running, .. } = &self.mode {
            if let Some(bar) = running.lock().expect("poisoned").remove(stage) {
                bar.finish_and_clear();
            }
        }
        self.tick();
        let mut event = serde_json::to_value(outcome).unwrap_or_default();
        event["event"] = json!("end");
        event["stage"] = json!(stage);
        event["seconds"] = json!(elapsed.as_secs_f64());
        self.event(event);
        let counter = self.counter();
        let text = match outcome {
            Outcome::Executed { .. } => format!(
                "{counter} {} {stage} ({})",
                self.style.green("ran"),
                seconds(elapsed)
            ),
            Outcome::Cached { .. } => format!(
                "{counter} {} {stage} (another process ran it)",
                self.style.dim("cached")
            ),
            Outcome::Failed { error, log, .. } => {
                let mut text = format!("{counter} {} {stage}: {error}", self.style.red("FAILED"));
                if let Some(log) = log {
                    text.push_str(&format!("\n         log: {}", log.display()));
                }
                text
            }
            Outcome::Skipped { cause } => format!(
                "{counter} {} {stage}: {cause}",
                self.style.yellow("skipped")
            ),
            Outcome::Cancelled => format!("{counter} {} {stage}", self.style.yellow("cancelled")),
        };
        self.line(&text);
    }

    fn on_submitted(&self, stage: &str, executor: &str, job: &str, log: &std::path::Path) {
        *self.scheduler.lock().expect("poisoned") = Some(executor.to_string());
        self.event(json!({"event": "submitted", "stage": stage, "executor": executor, "job": job, "log": log}));
        self.line(&format!(
            "{} submitted {stage} as {executor} job {job} (log {})",
            self.counter(),
            log.display()
        ));
    }

    fn on_warning(&self, message: &str) {
        self.event(json!({"event": "warning", "message": message}));
        self.line(&format!("{}: {message}", self.style.yellow("warning")));
    }

    fn on_run_end(&self, summary: &RunSummary) {
        self.finish();
        let (executed, cached, failed, skipped) = summary.counts();
        let mut err = std::io::stderr().lock();
        if !summary.submitted.is_empty() {
            let scheduler = self.scheduler.lock().expect("poisoned").clone();
            let scheduler = scheduler.unwrap_or_else(|| "the scheduler".into());
            if let Mode::Json = self.mode {
                let submitted: serde_json::Map<String, serde_json::Value> = summary
                    .submitted
                    .iter()
                    .map(|(stage, job)| (stage.clone(), json!({"job": job.id, "log": job.log})))
                    .collect();
                self.event(
                    json!({"event": "detached", "executor": scheduler, "submitted": submitted}),
                );
            } else {
                let _ = writeln!(
                    err,
                    "{} stage(s) submitted to {scheduler}; `mipipe status` follows them, `mipipe run` records their results",
                    summary.submitted.len()
                );
            }
        }
        if let Mode::Json = self.mode {
            self.event(json!({"event": "summary", "ran": executed, "cached": cached, "failed": failed, "not_run": skipped}));
            return;
        }
        if summary.submitted.is_empty() {
            let mut line = format!("{executed} ran, {cached} cached");
            if failed > 0 {
                line.push_str(&format!(", {failed} failed"));
            }
            if skipped > 0 {
                line.push_str(&format!(", {skipped} not run"));
            }
            let _ = writeln!(err, "{line}");
        }
        for (name, outcome) in &summary.outcomes {
            if let Outcome::Failed {
                error,
                log: Some(log),
                ..
            } = outcome
            {
                let _ = writeln!(err, "\n{} {name}: {error}", self.style.red("FAILED"));
                write_log_tail(&mut err, log, 20);
            }
        }
    }
}

/// The last `lines` lines of a log, indented.
fn write_log_tail(out: &mut impl Write, log: &std::path::Path, lines: usize) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    if start > 0 {
        let _ = writeln!(out, "  ... ({start} earlier lines in {})", log.display());
    }
    for line in &all[start..] {
        let _ = writeln!(out, "  | {line}");
    }
}
