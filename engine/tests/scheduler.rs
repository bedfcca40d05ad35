//! The scheduler without the binary: a fake stage kind that counts its runs, and a fake remote
//! executor whose jobs run on threads the way a cluster node runs them
//! ([`run_pipeline_stage`] on the shared cache).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mipipe_cache::Cache;
use mipipe_engine::{
    execute, plan, run_pipeline_stage, Executor, LoadOptions, Lockfile, Outcome, OutputSpec,
    Pipeline, PipelineStageJob, Reason, Registry, RemoteExecutor, RemoteJob, RemoteState,
    RunOptions, RunSummary, SilentReporter, Stage, StageContext, StageError, StageStatus,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Params of the fake kind.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EchoParams {
    /// What the stage writes (before its inputs' contents).
    text: String,
    /// Text that changes the key but not the output.
    #[serde(default)]
    note: String,
    /// Fail instead of writing.
    #[serde(default)]
    fail: bool,
    /// Create this workspace file once started...
    #[serde(default)]
    signal: Option<String>,
    /// ...and wait (at most 20 s) for this one before finishing.
    #[serde(default)]
    wait_for: Option<String>,
}

/// Writes `text` and then its inputs' contents to `out`; counts its runs by stage name.
struct Echo {
    runs: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Stage for Echo {
    type Params = EchoParams;
    const KIND: &'static str = "echo";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "test stage";

    fn outputs(_: &EchoParams) -> Vec<OutputSpec> {
        vec![OutputSpec::file("out", "out.txt")]
    }

    fn run(&self, params: &EchoParams, ctx: &StageContext) -> Result<(), StageError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(ctx.stage_name().to_string())
            .or_default() += 1;
        if let Some(name) = &params.signal {
            std::fs::write(ctx.workspace().join(name), "").unwrap();
        }
        if let Some(name) = &params.wait_for {
            let start = Instant::now();
            while !ctx.workspace().join(name).exists() {
                if start.elapsed() > Duration::from_secs(20) {
                    return Err(StageError::failed(format!("`{name}` never appeared")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if params.fail {
            return Err(StageError::failed("asked to fail"));
        }
        let mut text = params.text.clone();
        for paths in ctx.inputs().values() {
            for path in paths {
                text.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
        std::fs::write(ctx.output_path("out")?, text).unwrap();
        Ok(())
    }
}

struct Project {
    dir: tempfile::TempDir,
    runs: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Project {
    fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mipipe.yaml"), yaml).unwrap();
        Self {
            dir,
            runs: Arc::default(),
        }
    }

    fn write(&self, yaml: &str) {
        std::fs::write(self.pipeline_path(), yaml).unwrap();
    }

    fn pipeline_path(&self) -> PathBuf {
        self.dir.path().join("mipipe.yaml")
    }

    fn registry(&self) -> Registry {
        let mut registry = Registry::new();
        registry.register(Echo {
            runs: self.runs.clone(),
        });
        registry
    }

    fn pipeline(&self) -> Pipeline {
        Pipeline::load(
            &self.pipeline_path(),
            &self.registry(),
            &LoadOptions::default(),
        )
        .unwrap()
    }

    fn cache(&self) -> Cache {
        Cache::open(&self.dir.path().join(".mipipe")).unwrap()
    }

    fn runs_of(&self, stage: &str) -> usize {
        self.runs.lock().unwrap().get(stage).copied().unwrap_or(0)
    }

    fn options(&self, pipeline: &Pipeline) -> RunOptions {
        RunOptions {
            jobs: 4,
            gpus: 0,
            keep_going: false,
            forced: BTreeSet::new(),
            selected: (0..pipeline.stages.len()).collect(),
            cancel: Arc::new(AtomicBool::new(false)),
            launcher: None,
            isolate_all: false,
            only: None,
            record_lockfile: true,
            default_executor: Executor::Local,
            remote: None,
            detach: false,
        }
    }

    fn run_with(&self, change: impl FnOnce(&mut RunOptions)) -> RunSummary {
        let pipeline = self.pipeline();
        let mut options = self.options(&pipeline);
        change(&mut options);
        let reporter: Arc<dyn mipipe_engine::Reporter> = Arc::new(SilentReporter);
        execute(
            &pipeline,
            &self.cache(),
            &Lockfile::path_for(&self.pipeline_path()),
            &options,
            &reporter,
        )
    }

    fn run(&self) -> RunSummary {
        self.run_with(|_| {})
    }
}

fn outcome<'a>(summary: &'a RunSummary, stage: &str) -> &'a Outcome {
    &summary
        .outcomes
        .iter()
        .find(|(name, _)| name == stage)
        .unwrap_or_else(|| panic!("no outcome for {stage}: {:?}", summary.outcomes))
        .1
}

const CHAIN: &str = r#"version: 1
stages:
  a:
    kind: echo
    params: {text: "a"}
  b:
    kind: echo
    inputs: {x: a.out}
    params: {text: "b"}
  c:
    kind: echo
    inputs: {x: b.out}
    params: {text: "c"}
"#;

#[test]
fn a_second_run_runs_nothing_and_the_plan_agrees() {
    let project = Project::new(CHAIN);
    let first = project.run();
    assert_eq!(first.counts(), (3, 0, 0, 0), "{:?}", first.outcomes);
    let pipeline = project.pipeline();
    let (lock, _) = Lockfile::read(&Lockfile::path_for(&project.pipeline_path()));
    let all: BTreeSet<usize> = (0..3).collect();
    let planned = plan(&pipeline, &project.cache(), &lock, &all, &BTreeSet::new());
    assert_eq!(planned.to_run(), 0, "{:?}", planned.stages);
    // The plan's keys are the keys the run used: one recipe.
    for (name, status) in &planned.stages {
        let StageStatus::Cached { key: Some(key) } = status else {
            panic!("{name}: {status:?}");
        };
        let Outcome::Executed { key: ran, .. } = outcome(&first, name) else {
            panic!("{name} did not run");
        };
        assert_eq!(key, ran, "{name}");
    }
    let second = project.run();
    assert_eq!(second.counts(), (0, 3, 0, 0));
    assert_eq!(
        [
            project.runs_of("a"),
            project.runs_of("b"),
            project.runs_of("c")
        ],
        [1, 1, 1]
    );
}

#[test]
fn an_upstream_change_that_writes_the_same_bytes_stops_there() {
    let project = Project::new(CHAIN);
    project.run();
    project.write(&CHAIN.replace(r#"{text: "a"}"#, r#"{text: "a", note: "new"}"#));
    let pipeline = project.pipeline();
    let (lock, _) = Lockfile::read(&Lockfile::path_for(&project.pipeline_path()));
    let planned = plan(
        &pipeline,
        &project.cache(),
        &lock,
        &(0..3).collect(),
        &BTreeSet::new(),
    );
    let StageStatus::WillRun { reasons, .. } = &planned.stages[1].1 else {
        panic!("{:?}", planned.stages);
    };
    assert_eq!(
        reasons,
        &[Reason::UpstreamWillRun {
            stages: vec!["a".into()]
        }]
    );
    let summary = project.run();
    assert!(matches!(outcome(&summary, "a"), Outcome::Executed { .. }));
    assert!(matches!(
        outcome(&summary, "b"),
        Outcome::Cached {
            early_cutoff: true,
            ..
        }
    ));
    assert!(matches!(
        outcome(&summary, "c"),
        Outcome::Cached {
            early_cutoff: false,
            ..
        }
    ));
    assert_eq!([project.runs_of("a"), project.runs_of("b")], [2, 1]);
}

const FAILING: &str = r#"version: 1
stages:
  bad:
    kind: echo
    params: {text: "x", fail: true}
  after:
    kind: echo
    inputs: {x: bad.out}
    params: {text: "y"}
  later:
    kind: echo
    inputs: {x: after.out}
    params: {text: "z"}
  independent:
    kind: echo
    params: {text: "i"}
"#;

#[test]
fn a_failure_skips_everything_under_it_naming_it_and_nothing_is_cached() {
    let project = Project::new(FAILING);
    let summary = project.run_with(|o| {
        o.keep_going = true;
        o.jobs = 1;
    });
    assert!(matches!(outcome(&summary, "bad"), Outcome::Failed { .. }));
    for stage in ["after", "later"] {
        let Outcome::Skipped { cause } = outcome(&summary, stage) else {
            panic!("{stage}: {:?}", outcome(&summary, stage));
        };
        assert_eq!(cause, "`bad` failed", "{stage}");
    }
    assert!(matches!(
        outcome(&summary, "independent"),
        Outcome::Executed { .. }
    ));
    assert_eq!(project.runs_of("after"), 0);
    // Failures are never cached: the next run tries again.
    let again = project.run_with(|o| o.keep_going = true);
    assert!(matches!(outcome(&again, "bad"), Outcome::Failed { .. }));
    assert_eq!(project.runs_of("bad"), 2);
    assert_eq!(project.runs_of("independent"), 1);
}

#[test]
fn without_keep_going_a_failure_stops_what_has_not_started() {
    let project = Project::new(FAILING);
    let summary = project.run_with(|o| o.jobs = 1);
    let Outcome::Skipped { cause } = outcome(&summary, "independent") else {
        panic!("{:?}", summary.outcomes);
    };
    assert_eq!(cause, "the run stopped because `bad` failed");
}

/// A remote scheduler whose jobs run on threads, each as a cluster node runs one: it waits for
/// the jobs it depends on, then runs [`run_pipeline_stage`] against the shared cache.
struct ThreadCluster {
    registry: Registry,
    pipeline: PathBuf,
    cache: PathBuf,
    jobs: Arc<Mutex<BTreeMap<String, RemoteState>>>,
    next: AtomicU64,
    /// Every stage submitted, with the ids it was told to wait for.
    submitted: Mutex<Vec<(String, Vec<String>)>>,
    /// Every job id the run cancelled.
    cancelled: Mutex<Vec<String>>,
}

impl ThreadCluster {
    fn new(project: &Project) -> Self {
        Self {
            registry: project.registry(),
            pipeline: project.pipeline_path(),
            cache: project.dir.path().join(".mipipe"),
            jobs: Arc::default(),
            next: AtomicU64::new(1),
            submitted: Mutex::default(),
            cancelled: Mutex::default(),
        }
    }
}

impl RemoteExecutor for ThreadCluster {
    fn name(&self) -> &str {
        "ThreadCluster"
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(20)
    }

    fn submit(
        &self,
        pipeline: &Pipeline,
        _cache: &Cache,
        index: usize,
        after: &[RemoteJob],
    ) -> Result<RemoteJob, StageError> {
        let id = self.next.fetch_add(1, Ordering::SeqCst).to_string();
        let stage = pipeline.stages[index].name.clone();
        let after: Vec<String> = after.iter().map(|j| j.id.clone()).collect();
        self.submitted
            .lock()
            .unwrap()
            .push((stage.clone(), after.clone()));
        self.jobs
            .lock()
            .unwrap()
            .insert(id.clone(), RemoteState::Queued);
        let jobs = self.jobs.clone();
        let registry = self.registry.clone();
        let job = PipelineStageJob {
            version: 1,
            pipeline: self.pipeline.clone(),
            overrides: Vec::new(),
            stage,
            cache_dir: self.cache.clone(),
            jobs: 1,
        };
        let own = id.clone();
        std::thread::spawn(move || {
            let set = |state| jobs.lock().unwrap().insert(own.clone(), state);
            // Like Slurm's `afterok` with `--kill-on-invalid-dep=yes`.
            loop {
                let states = jobs.lock().unwrap().clone();
                let ended =
                    |s: &RemoteState| !matches!(s, RemoteState::Queued | RemoteState::Running);
                let completed =
                    |s: &RemoteState| matches!(s, RemoteState::Ended(w) if w == "COMPLETED");
                let upstream: Vec<&RemoteState> = after.iter().map(|a| &states[a]).collect();
                if upstream.iter().all(|s| completed(s)) {
                    break;
                }
                if upstream.iter().any(|s| ended(s) && !completed(s)) {
                    set(RemoteState::DependencyFailed(
                        "DependencyNeverSatisfied".into(),
                    ));
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            set(RemoteState::Running);
            let reporter: Arc<dyn mipipe_engine::Reporter> = Arc::new(SilentReporter);
            let outcome = run_pipeline_stage(
                &registry,
                &job,
                Arc::new(AtomicBool::new(false)),
                None,
                &reporter,
            );
            let words = match outcome {
                Ok(o) if o.is_success() => "COMPLETED".to_string(),
                _ => "FAILED".to_string(),
            };
            set(RemoteState::Ended(words));
        });
        Ok(RemoteJob {
            id,
            log: PathBuf::from("/dev/null"),
        })
    }

    fn poll(&self, jobs: &[RemoteJob]) -> Result<BTreeMap<String, RemoteState>, StageError> {
        let states = self.jobs.lock().unwrap();
        Ok(jobs
            .iter()
            .map(|j| (j.id.clone(), states[&j.id].clone()))
            .collect())
    }

    fn cancel(&self, jobs: &[RemoteJob]) -> Result<(), StageError> {
        self.cancelled
            .lock()
            .unwrap()
            .extend(jobs.iter().map(|j| j.id.clone()));
        Ok(())
    }
}

fn remote_run(project: &Project, cluster: &Arc<ThreadCluster>) -> RunSummary {
    project.run_with(|o| {
        o.default_executor = Executor::Slurm;
        o.remote = Some(cluster.clone() as Arc<dyn RemoteExecutor>);
    })
}

#[test]
fn remote_jobs_wait_for_their_upstream_jobs_and_the_cache_decides_their_outcome() {
    let project = Project::new(&FAILING.replace("fail: true", "fail: false"));
    let cluster = Arc::new(ThreadCluster::new(&project));
    let summary = remote_run(&project, &cluster);
    assert_eq!(summary.counts(), (4, 0, 0, 0), "{:?}", summary.outcomes);
    let submitted = cluster.submitted.lock().unwrap().clone();
    let after_of = |stage: &str| {
        submitted
            .iter()
            .find(|(s, _)| s == stage)
            .map(|(_, a)| a.len())
            .unwrap()
    };
    // Everything was submitted at once, each job after the job of its producer.
    assert_eq!(submitted.len(), 4);
    assert_eq!(
        [after_of("bad"), after_of("after"), after_of("later")],
        [0, 1, 1]
    );
    // The jobs committed to the shared cache: a local run finds everything there.
    let local = project.run();
    assert_eq!(local.counts(), (0, 4, 0, 0), "{:?}", local.outcomes);
}

#[test]
fn a_failed_remote_job_skips_the_jobs_that_wait_for_it() {
    let project = Project::new(FAILING);
    let cluster = Arc::new(ThreadCluster::new(&project));
    let summary = remote_run(&project, &cluster);
    let Outcome::Failed { error, .. } = outcome(&summary, "bad") else {
        panic!("{:?}", summary.outcomes);
    };
    assert!(error.contains("ended FAILED"), "{error}");
    for stage in ["after", "later"] {
        let Outcome::Skipped { cause } = outcome(&summary, stage) else {
            panic!("{stage}: {:?}", outcome(&summary, stage));
        };
        assert_eq!(cause, "`bad` failed");
    }
    assert!(matches!(
        outcome(&summary, "independent"),
        Outcome::Executed { .. }
    ));
}

#[test]
fn a_local_stage_runs_while_a_remote_job_runs() {
    // Each waits for the other to have started: they finish only if they run at once.
    let project = Project::new(
        r#"version: 1
stages:
  remote:
    kind: echo
    executor: slurm
    params: {text: "r", signal: remote-started, wait_for: local-started}
  local:
    kind: echo
    executor: local
    params: {text: "l", signal: local-started, wait_for: remote-started}
  joined:
    kind: echo
    executor: local
    inputs: {r: remote.out, l: local.out}
    params: {text: "j"}
"#,
    );
    let cluster = Arc::new(ThreadCluster::new(&project));
    let summary = remote_run(&project, &cluster);
    assert_eq!(summary.counts(), (3, 0, 0, 0), "{:?}", summary.outcomes);
    let submitted = cluster.submitted.lock().unwrap().clone();
    assert_eq!(submitted, [("remote".to_string(), Vec::new())]);
    let joined = std::fs::read_to_string(
        project
            .cache()
            .store()
            .materialize(&output_of(&project, "joined"))
            .unwrap(),
    )
    .unwrap();
    assert!(joined.starts_with('j') && joined.contains('r') && joined.contains('l'));
}

fn output_of(project: &Project, stage: &str) -> mipipe_cache::StoredOutput {
    let (lock, _) = Lockfile::read(&Lockfile::path_for(Path::new(&project.pipeline_path())));
    lock.stages[stage].outputs["out"].clone()
}

#[test]
fn ctrl_c_after_a_failure_still_cancels_the_remote_jobs() {
    // `bad` fails at once (new starts stop); then Ctrl-C while the remote `slow` runs.
    let project = Project::new(
        r#"version: 1
stages:
  bad:
    kind: echo
    executor: local
    params: {text: "b", fail: true}
  slow:
    kind: echo
    executor: slurm
    params: {text: "s", signal: slow-started, wait_for: never}
"#,
    );
    let cluster = Arc::new(ThreadCluster::new(&project));
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let started = project.dir.path().join("slow-started");
    let runs = project.runs.clone();
    std::thread::spawn(move || {
        let begun = Instant::now();
        while !(started.exists() && runs.lock().unwrap().contains_key("bad")) {
            if begun.elapsed() > Duration::from_secs(20) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, Ordering::SeqCst);
    });
    let begun = Instant::now();
    let summary = project.run_with(|o| {
        o.default_executor = Executor::Slurm;
        o.remote = Some(cluster.clone() as Arc<dyn RemoteExecutor>);
        o.cancel = cancel.clone();
    });
    assert!(matches!(outcome(&summary, "bad"), Outcome::Failed { .. }));
    assert!(
        matches!(outcome(&summary, "slow"), Outcome::Cancelled),
        "{:?}",
        summary.outcomes
    );
    assert_eq!(cluster.cancelled.lock().unwrap().len(), 1);
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "the run waited for the job"
    );
}
