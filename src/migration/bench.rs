//! `hybridmig bench`: a matrix of local migrations, summarised in `report.json`, `report.md`
//! and SVG plots.
//!
//! A [`BenchSpec`] (from defaults, `--quick`, a JSON file and command-line flags) names the
//! modes, workloads, memory sizes, link profiles and repetitions. [`run_bench`] makes each
//! (workload, memory) pair's unmigrated reference run (digest and timeline) once, runs every
//! cell `reps` times through [`migrate_local`], and writes the files into the output
//! directory; [`summary`] renders the markdown and the plots. A link profile other than `loopback` is a `bench-env/netns` profile,
//! brought up before its cells and down at the end.

pub mod summary;

use super::reference::{run_reference, ReferenceRun};
use super::report::MigrationReport;
use super::{migrate_local, LocalMigration, MigrationError};
use crate::source::{CompressionPolicy, LivePass};
use crate::vm::{parse_size, VmConfig, WorkloadKind, WorkloadSpec};
use crate::wire::MigrationMode;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The profile that runs both hosts on loopback, without network namespaces.
pub const LOOPBACK: &str = "loopback";
/// Source namespace name used with `bench-env/netns`.
pub const SRC_NS: &str = "hm-src";
/// Destination namespace name used with `bench-env/netns`.
pub const DST_NS: &str = "hm-dst";

/// Errors of a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A field of the spec is unusable.
    #[error("bench spec: {field}: {detail}")]
    Spec {
        /// Which field.
        field: &'static str,
        /// Why.
        detail: String,
    },
    /// The unmigrated reference run of a (workload, memory) pair failed.
    #[error("reference run of {workload} {mem_mib} MiB: {source}")]
    Reference {
        /// Workload name.
        workload: String,
        /// Memory, MiB.
        mem_mib: u64,
        /// What failed.
        source: MigrationError,
    },
    /// `bench-env/netns` failed.
    #[error("bench-env/netns {action} {profile}: {detail}")]
    Netns {
        /// `up` or `down`.
        action: &'static str,
        /// The link profile.
        profile: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// A file could not be written or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `report.json` or the spec file could not be (de)serialised.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A plot failed.
    #[error(transparent)]
    Plot(#[from] crate::metrics::plot::PlotError),
}

/// What to run. Lists are names as on the command line; [`BenchSpec::matrix`] checks them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchSpec {
    /// Migration modes (`precopy`, `postcopy`, `hybrid`, `hybrid-paper`).
    pub modes: Vec<String>,
    /// Workloads (`hotcold`, `scan`, ...).
    pub workloads: Vec<String>,
    /// Memory sizes (`256M`, `1G`).
    pub mems: Vec<String>,
    /// Link profiles: `loopback` or a `bench-env/netns` profile.
    pub profiles: Vec<String>,
    /// Runs per cell.
    pub reps: u32,
    /// Guest ops per run.
    pub ops: u64,
    /// Pace cap, ops/s per vCPU (`None`: unpaced).
    pub pace: Option<u64>,
    /// Guest run time before the migration, ms.
    pub migrate_after_ms: u64,
    /// Fault window, pages.
    pub window_pages: u32,
    /// lz4 policy: `auto`, `on` or `off`.
    pub compression: String,
    /// Adapt the fault window to the access pattern (`--adaptive-window`).
    pub adaptive_window: bool,
    /// hotcold: fraction of ops that go to the hot set.
    pub hot_frac: f64,
    /// hotcold: fraction of ops that are writes.
    pub write_frac: f64,
    /// Hybrid's live pass: `all` or `ws`.
    pub live_pass: String,
    /// Post-copy and hybrid: hold the push this long after the state is sent (0: at once).
    pub push_delay_ms: u64,
    /// Workload seed.
    pub seed: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// A migration is given up after this long without progress (no page moved, no guest op),
    /// s; there is no limit on its total time.
    pub timeout_s: u64,
    /// Path of `bench-env/netns` (default: found from the working directory or the crate).
    pub netns_script: Option<String>,
    /// Encrypt every frame (false: authentication only, as `--no-encrypt`).
    pub encrypt: bool,
}

impl Default for BenchSpec {
    /// 3 modes, hotcold, 256 MiB, loopback, 3 reps of a 6 s paced guest.
    fn default() -> Self {
        BenchSpec {
            modes: ["precopy", "postcopy", "hybrid"].map(String::from).to_vec(),
            workloads: vec!["hotcold".into()],
            mems: vec!["256M".into()],
            profiles: vec![LOOPBACK.into()],
            reps: 3,
            ops: 600_000,
            pace: Some(100_000),
            migrate_after_ms: 2000,
            window_pages: 16,
            compression: "auto".into(),
            adaptive_window: false,
            hot_frac: 0.95,
            write_frac: 0.2,
            live_pass: "all".into(),
            push_delay_ms: 0,
            seed: 1,
            vcpus: 1,
            timeout_s: 300,
            netns_script: None,
            encrypt: true,
        }
    }
}

impl BenchSpec {
    /// The `--quick` matrix: 3 modes x hotcold x 256 MiB x loopback x 3 reps of a 4 s guest
    /// paced at 100 k ops/s, so the guest runs while it migrates (about a minute on 2 cores).
    pub fn quick() -> Self {
        BenchSpec { ops: 400_000, migrate_after_ms: 1000, ..BenchSpec::default() }
    }

    /// Overlays the fields present in a JSON object (a `--config` file) on `self`.
    pub fn overlay_json(&self, text: &str) -> Result<BenchSpec, BenchError> {
        let mut base = serde_json::to_value(self)?;
        let patch: serde_json::Value = serde_json::from_str(text)?;
        let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) else {
            return Err(BenchError::Spec {
                field: "config",
                detail: "the file must hold one JSON object".into(),
            });
        };
        for (k, v) in p {
            b.insert(k.clone(), v.clone());
        }
        Ok(serde_json::from_value(base)?)
    }

    /// The checked matrix.
    pub fn matrix(&self) -> Result<Matrix, BenchError> {
        let spec_err = |field, detail: String| BenchError::Spec { field, detail };
        let modes = parse_list(&self.modes, "modes", |s| s.parse::<MigrationMode>())?;
        let workloads = parse_list(&self.workloads, "workloads", |s| {
            s.parse::<WorkloadKind>().map_err(|e| e.to_string())
        })?;
        let mems = parse_list(&self.mems, "mems", |s| parse_size(s).map_err(|e| e.to_string()))?;
        if self.profiles.is_empty() {
            return Err(spec_err("profiles", "empty".into()));
        }
        if self.reps == 0 || self.ops == 0 {
            return Err(spec_err("reps/ops", "must be at least 1".into()));
        }
        let compression = match self.compression.as_str() {
            "auto" => CompressionPolicy::Auto,
            "on" => CompressionPolicy::On,
            "off" => CompressionPolicy::Off,
            other => return Err(spec_err("compression", format!("`{other}` (auto, on, off)"))),
        };
        let live_pass = self.live_pass.parse().map_err(|e| spec_err("live_pass", e))?;
        Ok(Matrix { modes, workloads, mems, compression, live_pass })
    }

    /// Number of migrations the spec asks for.
    pub fn run_count(&self) -> usize {
        self.modes.len()
            * self.workloads.len()
            * self.mems.len()
            * self.profiles.len()
            * self.reps as usize
    }

    fn vm_config(&self, kind: WorkloadKind, mem_bytes: u64) -> VmConfig {
        let mut workload = WorkloadSpec::new(kind, self.seed);
        workload.ops = Some(self.ops);
        workload.pace_ops_per_sec = self.pace;
        workload.hot_frac = self.hot_frac;
        workload.write_frac = self.write_frac;
        VmConfig { mem_bytes, vcpus: self.vcpus, workload }
    }
}

fn parse_list<T, E: std::fmt::Display>(
    names: &[String],
    field: &'static str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, BenchError> {
    if names.is_empty() {
        return Err(BenchError::Spec { field, detail: "empty".into() });
    }
    names
        .iter()
        .map(|n| parse(n).map_err(|e| BenchError::Spec { field, detail: e.to_string() }))
        .collect()
}

/// A spec's lists, parsed.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Modes.
    pub modes: Vec<MigrationMode>,
    /// Workloads.
    pub workloads: Vec<WorkloadKind>,
    /// Memory sizes, bytes.
    pub mems: Vec<u64>,
    /// lz4 policy.
    pub compression: CompressionPolicy,
    /// Hybrid's live pass.
    pub live_pass: LivePass,
}

/// One migration of the matrix: its cell keys and its report (or why there is none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRun {
    /// Link profile.
    pub profile: String,
    /// Workload name.
    pub workload: String,
    /// Workload memory, bytes.
    pub mem_bytes: u64,
    /// Mode name.
    pub mode: String,
    /// Repetition, from 0.
    pub rep: u32,
    /// The report says `verified` (false when the run failed).
    pub verified: bool,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// The full report of a finished run.
    pub report: Option<MigrationReport>,
}

/// The machine the benchmark ran on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineInfo {
    /// CPUs available to this process.
    pub nproc: usize,
    /// `MemTotal` of /proc/meminfo, MiB.
    pub mem_total_mib: u64,
    /// First `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// /proc/version.
    pub kernel: String,
    /// `kernel.sched_rt_runtime_us` (-1: RT throttling off), which decides whether a busy
    /// event loop stalls for tens of milliseconds (see `ring::rt_runtime_us`).
    #[serde(default)]
    pub rt_runtime_us: Option<i64>,
}

impl MachineInfo {
    /// Reads /proc; fields it cannot read stay empty or 0.
    pub fn read() -> MachineInfo {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let meminfo = read("/proc/meminfo");
        let mem_kib = field(&meminfo, "MemTotal")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        MachineInfo {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            mem_total_mib: mem_kib / 1024,
            cpu_model: field(&read("/proc/cpuinfo"), "model name"),
            kernel: read("/proc/version").trim().to_string(),
            rt_runtime_us: crate::ring::rt_runtime_us(),
        }
    }
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    /// The command line that ran the benchmark.
    pub command: String,
    /// The machine.
    pub machine: MachineInfo,
    /// The spec after every overlay.
    pub spec: BenchSpec,
    /// Every run, in the order they ran.
    pub runs: Vec<BenchRun>,
}

impl BenchResults {
    /// True if every run finished and was verified.
    pub fn all_verified(&self) -> bool {
        self.runs.iter().all(|r| r.verified)
    }
}

/// Runs the matrix and writes `report.json` (after every run, so a crash keeps what ran),
/// `report.md`, `throughput.svg`, `fault_cdf.svg` and `bars.svg` into `out_dir`.
pub fn run_bench(
    spec: &BenchSpec,
    command: &str,
    out_dir: &Path,
    progress: bool,
) -> Result<BenchResults, BenchError> {
    let matrix = spec.matrix()?;
    std::fs::create_dir_all(out_dir).map_err(|source| BenchError::Io {
        what: "creating",
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut results = BenchResults {
        command: command.to_string(),
        machine: MachineInfo::read(),
        spec: spec.clone(),
        runs: Vec::new(),
    };
    let bar = Bar::new(spec.run_count() as u64, progress);
    let script = netns_script(spec);
    let mut bed = NetnsBed { script, up: false };
    // One unmigrated run per (workload, memory), shared by every profile: its digest, and its
    // timeline to score each run's slowdown against.
    let mut references: Vec<((WorkloadKind, u64), ReferenceRun)> = Vec::new();
    for profile in &spec.profiles {
        let netns = profile != LOOPBACK;
        if netns {
            bed.up(profile)?;
        }
        for &kind in &matrix.workloads {
            for &mem_bytes in &matrix.mems {
                let cfg = spec.vm_config(kind, mem_bytes);
                bar.message(&format!(
                    "{profile} {} {} MiB: reference run",
                    kind.name(),
                    mem_bytes >> 20
                ));
                let reference = match references.iter().position(|r| r.0 == (kind, mem_bytes)) {
                    Some(i) => references[i].1.clone(),
                    None => {
                        let run = reference_run(&cfg)?;
                        references.push(((kind, mem_bytes), run.clone()));
                        run
                    }
                };
                for rep in 0..spec.reps {
                    for &mode in &matrix.modes {
                        bar.message(&format!(
                            "{profile} {} {} MiB {mode} rep {rep}",
                            kind.name(),
                            mem_bytes >> 20
                        ));
                        let m = LocalMigration {
                            cfg: cfg.clone(),
                            mode,
                            migrate_after_ms: spec.migrate_after_ms,
                            window_pages: spec.window_pages,
                            adaptive_window: spec.adaptive_window,
                            compression: matrix.compression,
                            live_pass: matrix.live_pass,
                            push_delay_ms: spec.push_delay_ms,
                            src_netns: netns.then(|| SRC_NS.to_string()),
                            dst_netns: netns.then(|| DST_NS.to_string()),
                            listen: None,
                            expected_digest: Some(reference.digest),
                            reference_timeline: Some(reference.timeline.clone()),
                            progress: super::phases::ProgressOutput::Off,
                            progress_timeout: Duration::from_secs(spec.timeout_s),
                            recover_timeout: Some(Duration::from_secs(60)),
                            liveness: Some(crate::transport::tcp::DEFAULT_LIVENESS),
                            inject: None,
                            encrypt: spec.encrypt,
                        };
                        let run = one_run(&m, profile, rep);
                        bar.finished(&run);
                        results.runs.push(run);
                        write_json(out_dir, &results)?;
                    }
                }
            }
        }
    }
    bed.down()?;
    bar.done();
    write_json(out_dir, &results)?;
    summary::write_markdown(out_dir, &results)?;
    summary::write_plots(out_dir, &results)?;
    Ok(results)
}

fn one_run(m: &LocalMigration, profile: &str, rep: u32) -> BenchRun {
    let outcome = migrate_local(m);
    let (verified, error, report) = match outcome {
        // A cancelled run kept the guest safe on the source, but nothing was migrated.
        Ok(r) if r.outcome == super::Outcome::Cancelled => {
            let why = format!("cancelled: {}", r.cancel_reason.as_deref().unwrap_or("?"));
            (false, Some(why), Some(r))
        }
        Ok(r) => (r.verified, None, Some(r)),
        Err(e) => (false, Some(e.to_string()), None),
    };
    BenchRun {
        profile: profile.to_string(),
        workload: m.cfg.workload.kind.name().to_string(),
        mem_bytes: m.cfg.mem_bytes,
        mode: m.mode.name().to_string(),
        rep,
        verified,
        error,
        report,
    }
}

/// An unmigrated run (see [`run_reference`]).
fn reference_run(cfg: &VmConfig) -> Result<ReferenceRun, BenchError> {
    run_reference(cfg).map_err(|source| BenchError::Reference {
        workload: cfg.workload.kind.name().to_string(),
        mem_mib: cfg.mem_bytes >> 20,
        source,
    })
}

fn write_json(out_dir: &Path, results: &BenchResults) -> Result<(), BenchError> {
    let path = out_dir.join("report.json");
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(&path, text).map_err(|source| BenchError::Io { what: "writing", path, source })
}

fn netns_script(spec: &BenchSpec) -> PathBuf {
    if let Some(p) = &spec.netns_script {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("bench-env/netns");
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-env/netns")
}

/// The network-namespace bed; brought down on drop if still up (so an error path cleans up).
struct NetnsBed {
    script: PathBuf,
    up: bool,
}

impl NetnsBed {
    fn call(&self, action: &'static str, profile: &str) -> Result<(), BenchError> {
        let mut cmd = Command::new(&self.script);
        cmd.arg(action).env("HM_SRC_NS", SRC_NS).env("HM_DST_NS", DST_NS);
        // The delay-line profiles run this very binary as their forwarder.
        if let (None, Ok(me)) = (std::env::var_os("HM_BIN"), std::env::current_exe()) {
            cmd.env("HM_BIN", me);
        }
        if action == "up" {
            cmd.arg(profile);
        }
        let out = cmd.output().map_err(|source| BenchError::Io {
            what: "running",
            path: self.script.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        Err(BenchError::Netns {
            action,
            profile: profile.to_string(),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }

    fn up(&mut self, profile: &str) -> Result<(), BenchError> {
        // Set first: a half-built bed must be torn down too.
        self.up = true;
        self.call("up", profile)
    }

    fn down(&mut self) -> Result<(), BenchError> {
        if !self.up {
            return Ok(());
        }
        self.up = false;
        self.call("down", "")
    }
}

impl Drop for NetnsBed {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// The run counter: an indicatif bar with ETA on a terminal, one stderr line per run otherwise.
struct Bar {
    pb: Option<indicatif::ProgressBar>,
    total: u64,
    done: std::cell::Cell<u64>,
}

impl Bar {
    fn new(total: u64, show: bool) -> Bar {
        let pb = show.then(|| {
            let pb = indicatif::ProgressBar::new(total);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "[{bar:30}] {pos}/{len} runs, {elapsed} elapsed, ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb.enable_steady_tick(Duration::from_millis(500));
            pb
        });
        Bar { pb, total, done: std::cell::Cell::new(0) }
    }

    fn message(&self, msg: &str) {
        if let Some(pb) = &self.pb {
            pb.set_message(msg.to_string());
        }
    }

    fn finished(&self, run: &BenchRun) {
        self.done.set(self.done.get() + 1);
        let line = match (&run.report, &run.error) {
            (Some(r), _) => r.summary_line(),
            (None, Some(e)) => format!("FAILED: {e}"),
            (None, None) => "no report".into(),
        };
        let line = format!("run {}/{} [{}]: {line}", self.done.get(), self.total, run.profile);
        match &self.pb {
            Some(pb) => {
                pb.println(line);
                pb.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    fn done(&self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_matrix_parses_and_counts() {
        let s = BenchSpec::quick();
        let m = s.matrix().expect("quick spec is valid");
        assert_eq!(m.modes.len(), 3);
        assert_eq!(m.mems, vec![256 << 20]);
        assert_eq!(s.run_count(), 9);
    }

    #[test]
    fn overlay_replaces_only_given_fields() {
        let s = BenchSpec::default()
            .overlay_json(r#"{"modes": ["hybrid"], "reps": 1, "pace": null}"#)
            .expect("overlay");
        assert_eq!(s.modes, vec!["hybrid".to_string()]);
        assert_eq!(s.reps, 1);
        assert_eq!(s.pace, None);
        assert_eq!(s.ops, BenchSpec::default().ops);
        assert!(BenchSpec::default().overlay_json(r#"{"nonsense": 1}"#).is_err());
        assert!(BenchSpec::default().overlay_json("[1]").is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        let s = BenchSpec { modes: vec!["teleport".into()], ..BenchSpec::default() };
        assert!(matches!(s.matrix(), Err(BenchError::Spec { field: "modes", .. })));
        let s = BenchSpec { mems: vec!["lots".into()], ..BenchSpec::default() };
        assert!(matches!(s.matrix(), Err(BenchError::Spec { field: "mems", .. })));
        let s = BenchSpec { compression: "maybe".into(), ..BenchSpec::default() };
        assert!(s.matrix().is_err());
    }

    #[test]
    fn machine_info_reads_proc() {
        let m = MachineInfo::read();
        assert!(m.nproc >= 1);
        assert!(m.mem_total_mib > 0);
        assert!(m.kernel.starts_with("Linux"));
        assert!(m.rt_runtime_us.is_some(), "kernel.sched_rt_runtime_us not read");
    }
}
