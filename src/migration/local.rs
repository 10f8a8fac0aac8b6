//! `hybridmig migrate`: a local migration between two processes on this machine.
//!
//! 1. An unmigrated reference run of the same workload gives `digest_expected`.
//! 2. A destination process (`hybridmig dest`) listens on an ephemeral loopback port (or, in a
//!    network namespace, on that namespace's address) and says where on its first stdout line.
//! 3. A source process (`hybridmig source`) starts the guest, migrates it after
//!    `migrate_after_ms`, and reports.
//! 4. The two JSON reports merge into one [`MigrationReport`]. A host that cancelled the
//!    migration exits with [`EXIT_CANCELLED`] and still prints its report; a cancel before the
//!    hand-over leaves the guest on the source, and the merged report says so.
//!
//! There is no deadline on the whole run: both children print `PROGRESS` lines (pages moved,
//! guest ops), and the run is given up only when neither line changed for the progress
//! timeout (plus a margin, so a child's own typed error about what stalled comes first).

use super::phases::{HostProgress, PhaseDisplay, ProgressOutput};
use super::report::{hex, DestReport, MigrationReport, Outcome, SourceReport};
use super::{MigrationError, EXIT_CANCELLED};
use crate::driver::inject::{InjectPlan, Side};
use crate::metrics::ProgressTimeline;
use crate::source::{CompressionPolicy, LivePass};
use crate::vm::VmConfig;
use crate::wire::MigrationMode;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long the destination may take to exit once the source has cancelled.
const DEST_AFTER_CANCEL: Duration = Duration::from_secs(10);

/// What `hybridmig migrate` was asked to do.
#[derive(Debug, Clone)]
pub struct LocalMigration {
    /// The guest.
    pub cfg: VmConfig,
    /// Migration mode.
    pub mode: MigrationMode,
    /// Guest run time before the migration.
    pub migrate_after_ms: u64,
    /// Fault window in pages.
    pub window_pages: u32,
    /// Adapt the fault window to the access pattern.
    pub adaptive_window: bool,
    /// lz4 policy name (`auto`, `on`, `off`).
    pub compression: CompressionPolicy,
    /// Hybrid: what crosses before the pause.
    pub live_pass: LivePass,
    /// Post-copy and hybrid: hold the background push this long after the state is sent.
    pub push_delay_ms: u64,
    /// Network namespace of the source process.
    pub src_netns: Option<String>,
    /// Network namespace of the destination process.
    pub dst_netns: Option<String>,
    /// Address the destination listens on; `None` picks one (see
    /// [`super::netns::dest_listen_addr`]).
    pub listen: Option<String>,
    /// A known digest of the unmigrated run (skips the reference run).
    pub expected_digest: Option<u64>,
    /// With `expected_digest`: the reference run's timeline, to score `degradation_pct`
    /// against (`None`: the report has no `degradation_pct`, only its warm-up fallback).
    pub reference_timeline: Option<ProgressTimeline>,
    /// Where each phase's progress is shown (stderr only).
    pub progress: ProgressOutput,
    /// Both hosts fail after this long without progress, and the run is given up when
    /// neither host showed progress for this long (there is no limit on total time).
    pub progress_timeout: Duration,
    /// How long a lost connection may take to be replaced (`None`: it ends the migration).
    pub recover_timeout: Option<Duration>,
    /// How long a silent peer may go unnoticed on either stream (`None`: the kernel's
    /// defaults).
    pub liveness: Option<Duration>,
    /// Faults to inject (`--inject`); each host gets its side's part.
    pub inject: Option<InjectPlan>,
    /// Encrypt every frame (false: `--no-encrypt`, authentication only). Both hosts get an
    /// ephemeral key made for this run either way.
    pub encrypt: bool,
}

/// The parent waits this much longer than the children's progress timeout, so that a stalled
/// child reports what stalled before the parent gives it up.
const PARENT_PROGRESS_MARGIN: Duration = Duration::from_secs(10);

/// The destination waits for the source this long beyond the source's run before the
/// migration (the source's start, its guest's set-up).
const ACCEPT_SLACK_S: u64 = 120;

/// The command-line arguments that recreate `cfg` in a child process.
pub fn config_args(cfg: &VmConfig) -> Vec<String> {
    let w = &cfg.workload;
    let mut args = vec![
        "--workload".into(),
        w.kind.name().into(),
        "--mem".into(),
        format!("{}M", cfg.mem_bytes >> 20),
        "--vcpus".into(),
        cfg.vcpus.to_string(),
        "--seed".into(),
        w.seed.to_string(),
        "--hot-mib".into(),
        w.hot_mib.to_string(),
        "--hot-frac".into(),
        w.hot_frac.to_string(),
        "--write-frac".into(),
        w.write_frac.to_string(),
    ];
    if let Some(ops) = w.ops {
        args.extend(["--ops".into(), ops.to_string()]);
    }
    if let Some(pace) = w.pace_ops_per_sec {
        args.extend(["--pace".into(), pace.to_string()]);
    }
    args
}

fn compression_name(c: CompressionPolicy) -> &'static str {
    match c {
        CompressionPolicy::Off => "off",
        CompressionPolicy::On => "on",
        CompressionPolicy::Auto => "auto",
    }
}

fn spawn(netns: Option<&str>, args: &[String]) -> Result<Child, MigrationError> {
    let exe = std::env::current_exe()
        .map_err(|source| MigrationError::Io { what: "current_exe", source })?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().map_err(|source| MigrationError::Io { what: "spawning a host process", source })
}

/// The digest an unmigrated run of `cfg` ends at (see [`super::run_reference`]).
pub fn unmigrated_digest(cfg: &VmConfig) -> Result<u64, MigrationError> {
    Ok(super::run_reference(cfg)?.digest)
}

/// [`unmigrated_digest`], telling `on_ops` the ops done as the run goes.
pub fn unmigrated_digest_with(
    cfg: &VmConfig,
    on_ops: &mut dyn FnMut(u64),
) -> Result<u64, MigrationError> {
    Ok(super::reference::run_reference_with(cfg, on_ops)?.digest)
}

/// Runs the whole local migration and returns the merged report.
pub fn migrate_local(m: &LocalMigration) -> Result<MigrationReport, MigrationError> {
    if m.cfg.workload.ops.is_none() {
        return Err(MigrationError::NeedsOps);
    }
    // Before the reference run, so a missing namespace fails at once.
    let listen = super::netns::dest_listen_addr(
        m.listen.as_deref(),
        m.src_netns.as_deref(),
        m.dst_netns.as_deref(),
    )?;
    let ops_total = m.cfg.workload.ops.unwrap_or(0);
    let display = PhaseDisplay::new(m.progress, ops_total, m.migrate_after_ms);
    let display = Arc::new(Mutex::new(display));
    let result = migrate_shown(m, listen, &display);
    lock(&display).finish();
    result
}

/// [`migrate_local`] past its checks, showing its progress on `display`.
fn migrate_shown(
    m: &LocalMigration,
    listen: std::net::SocketAddr,
    display: &Shared,
) -> Result<MigrationReport, MigrationError> {
    if m.expected_digest.is_none() {
        lock(display).reference(crate::metrics::mono_ns(), 0);
    }
    let (expected, reference) = match m.expected_digest {
        Some(d) => (d, m.reference_timeline.clone()),
        None => {
            let run = super::reference::run_reference_with(&m.cfg, &mut |ops| {
                lock(display).reference(crate::metrics::mono_ns(), ops);
            })?;
            (run.digest, Some(run.timeline))
        }
    };
    let session_id = crate::metrics::mono_ns() ^ u64::from(std::process::id()) << 32;
    // Removed when this function returns, whatever happens to the two hosts.
    let key = EphemeralKey::create()?;
    let key_args = key.args(m.encrypt);
    let mut dest_args: Vec<String> = vec![
        "dest".into(),
        "--listen".into(),
        listen.to_string(),
        "--accept-timeout-s".into(),
        (m.migrate_after_ms / 1000 + ACCEPT_SLACK_S).to_string(),
        "--progress-lines".into(),
        "--json".into(),
    ];
    dest_args.extend(time_args(m));
    dest_args.extend(key_args.iter().cloned());
    dest_args.extend(config_args(&m.cfg));
    dest_args.extend(inject_args(m.inject.as_ref(), Side::Dest));
    let mut dest = Guard(spawn(m.dst_netns.as_deref(), &dest_args)?);
    let mut dest_out = BufReader::new(
        dest.0.stdout.take().ok_or(MigrationError::ChildOutput { host: "destination" })?,
    );
    let addr = read_listening(&mut dest_out)?;
    let mut src_args: Vec<String> = vec![
        "source".into(),
        "--connect".into(),
        addr,
        "--mode".into(),
        m.mode.to_string(),
        "--migrate-after-ms".into(),
        m.migrate_after_ms.to_string(),
        "--window".into(),
        m.window_pages.to_string(),
        "--compress".into(),
        compression_name(m.compression).into(),
        "--live-pass".into(),
        m.live_pass.to_string(),
        "--push-delay-ms".into(),
        m.push_delay_ms.to_string(),
        "--session".into(),
        session_id.to_string(),
        "--progress-lines".into(),
        "--json".into(),
    ];
    src_args.extend(time_args(m));
    src_args.extend(key_args.iter().cloned());
    if m.adaptive_window {
        src_args.push("--adaptive-window".into());
    }
    src_args.extend(config_args(&m.cfg));
    src_args.extend(inject_args(m.inject.as_ref(), Side::Source));
    let mut source = Guard(spawn(m.src_netns.as_deref(), &src_args)?);
    let watch = ProgressSeen::new(m.progress_timeout + PARENT_PROGRESS_MARGIN);
    let src_err = forward_stderr(source.0.stderr.take(), display, "source", watch.clone());
    let dst_err = forward_stderr(dest.0.stderr.take(), display, "destination", watch.clone());
    let src_out = source_stdout(&mut source.0)?;
    let src_exit = wait_host(&mut source, "source", &watch, src_out, src_err)?;
    let src: SourceReport = parse_report(&src_exit, "source")?;
    let cancelled = src.outcome == Outcome::Cancelled;
    // After a cancel the destination has nothing left to wait for, so it gets little time.
    let after_cancel = ProgressSeen::new(DEST_AFTER_CANCEL);
    let dst_watch = if cancelled { &after_cancel } else { &watch };
    let dst_exit = wait_host(&mut dest, "destination", dst_watch, read_all(dest_out), dst_err);
    let (mut report, dst) = if cancelled {
        // The destination never ran the guest; its report says why it stopped, if it could.
        let dst = dst_exit.and_then(|exit| parse_report::<DestReport>(&exit, "destination"));
        let mut report = MigrationReport::merge_cancelled(&src, dst.as_ref().ok(), expected);
        if let Err(e) = &dst {
            report.dest_cancel_reason = Some(e.to_string());
        }
        (report, dst.ok())
    } else {
        let dst: DestReport = parse_report(&dst_exit?, "destination")?;
        let sent = [dst.run.sent_bulk, dst.run.sent_urgent];
        (MigrationReport::merge(&src, &dst, expected, sent), Some(dst))
    };
    let w = &m.cfg.workload;
    if let Some(reference) = &reference {
        let paced = w.pace_ops_per_sec.map(|p| (p * u64::from(m.cfg.vcpus)) as f64);
        report.score_against_reference(&src, dst.as_ref(), reference, paced);
    }
    report.workload = w.kind.name().to_string();
    report.mem_bytes = m.cfg.mem_bytes;
    report.vcpus = m.cfg.vcpus;
    // The destination lists vCPUs up to the highest that faulted; one per vCPU reads better.
    let per_vcpu = &mut report.vcpu_blocked_ms_per_vcpu;
    if report.outcome == Outcome::Completed && per_vcpu.len() < m.cfg.vcpus as usize {
        per_vcpu.resize(m.cfg.vcpus as usize, 0.0);
    }
    report.ops = w.ops.unwrap_or(0);
    report.pace = w.pace_ops_per_sec.unwrap_or(0);
    report.digest_expected = hex(expected);
    Ok(report)
}

/// A key made for one local migration: a fresh key in a mode-0600 file of the temporary
/// directory, named on the hosts' command lines by its path only, and removed on drop.
struct EphemeralKey {
    path: std::path::PathBuf,
}

impl EphemeralKey {
    fn create() -> Result<EphemeralKey, MigrationError> {
        let key = crate::secure::Psk::generate()?;
        // A name nobody can guess ahead, so nobody can place a file there first.
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(crate::secure::KeyError::Random)?;
        let name = format!("hybridmig-{}-{:016x}.key", std::process::id(), u64::from_le_bytes(tag));
        let path = std::env::temp_dir().join(name);
        crate::secure::write_key_file(&path, &key, false)?;
        Ok(EphemeralKey { path })
    }

    /// The hosts' arguments: the key file, and `--no-encrypt` unless `encrypt`.
    fn args(&self, encrypt: bool) -> Vec<String> {
        let mut args = vec!["--key-file".to_string(), self.path.display().to_string()];
        if !encrypt {
            args.push("--no-encrypt".into());
        }
        args
    }
}

impl Drop for EphemeralKey {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the run's key file");
        }
    }
}

/// The options both hosts take about time: liveness and the progress timeout.
fn time_args(m: &LocalMigration) -> Vec<String> {
    let liveness_ms = m.liveness.map_or(0, |l| l.as_millis().max(1) as u64);
    vec![
        "--liveness-ms".into(),
        liveness_ms.to_string(),
        "--progress-timeout-s".into(),
        m.progress_timeout.as_secs().max(1).to_string(),
        "--recover-timeout-s".into(),
        m.recover_timeout.map_or(0, |t| t.as_secs().max(1)).to_string(),
    ]
}

/// When either host last showed progress: a `PROGRESS` line that differs from its previous
/// one (pages moved, guest ops, phase).
#[derive(Clone)]
struct ProgressSeen {
    last_progress_ns: Arc<AtomicU64>,
    limit: Duration,
}

impl ProgressSeen {
    fn new(limit: Duration) -> Self {
        Self { last_progress_ns: Arc::new(AtomicU64::new(crate::metrics::mono_ns())), limit }
    }

    fn progressed(&self) {
        self.last_progress_ns.store(crate::metrics::mono_ns(), Ordering::Relaxed);
    }

    /// Seconds without progress, once more than the limit.
    fn stalled_s(&self) -> Option<u64> {
        let last = self.last_progress_ns.load(Ordering::Relaxed);
        let idle = Duration::from_nanos(crate::metrics::mono_ns().saturating_sub(last));
        (idle > self.limit).then_some(idle.as_secs())
    }
}

/// Kills the child if the migration is abandoned (error or no progress).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn read_listening(out: &mut impl BufRead) -> Result<String, MigrationError> {
    let mut line = String::new();
    out.read_line(&mut line).map_err(|source| MigrationError::Io {
        what: "reading the destination's address",
        source,
    })?;
    line.trim().strip_prefix("LISTENING ").map(str::to_string).ok_or_else(|| {
        MigrationError::BadReport {
            host: "destination",
            detail: format!("expected `LISTENING <addr>`, got `{}`", line.trim()),
        }
    })
}

fn source_stdout(child: &mut Child) -> Result<std::thread::JoinHandle<String>, MigrationError> {
    let out = child.stdout.take().ok_or(MigrationError::ChildOutput { host: "source" })?;
    Ok(read_all(BufReader::new(out)))
}

fn read_all<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The progress display, shared by the reference run and both hosts' stderr forwarders.
type Shared = Arc<Mutex<PhaseDisplay>>;

/// A poisoned lock only means a forwarder panicked mid-line; the display is still whole.
fn lock(display: &Shared) -> MutexGuard<'_, PhaseDisplay> {
    display.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwards a child's stderr; `PROGRESS` lines count as progress when they change, and go to
/// the phase display.
fn forward_stderr(
    err: Option<std::process::ChildStderr>,
    display: &Shared,
    host: &'static str,
    watch: ProgressSeen,
) -> std::thread::JoinHandle<String> {
    let display = display.clone();
    std::thread::spawn(move || {
        let Some(err) = err else { return String::new() };
        let (mut tail, mut last_progress) = (String::new(), String::new());
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let Some(rest) = line.strip_prefix("PROGRESS ") else {
                lock(&display).passthrough(&format!("[{host}] {line}"));
                tail.push_str(&line);
                tail.push('\n');
                continue;
            };
            if rest != last_progress {
                watch.progressed();
                last_progress = rest.to_string();
            }
            if let Some(progress) = HostProgress::parse(rest) {
                let now = crate::metrics::mono_ns();
                lock(&display).host(host == "source", now, &progress);
            }
        }
        tail
    })
}

/// How a host process ended: its exit status and what it printed.
struct HostExit {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for a host process to end (or the deadline to pass).
fn wait_host(
    child: &mut Guard,
    host: &'static str,
    watch: &ProgressSeen,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
) -> Result<HostExit, MigrationError> {
    let status = loop {
        if let Some(status) = child
            .0
            .try_wait()
            .map_err(|source| MigrationError::Io { what: "waiting for a host", source })?
        {
            break status;
        }
        if let Some(idle_s) = watch.stalled_s() {
            return Err(MigrationError::HostNoProgress { host, idle_s });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(HostExit { status, stdout, stderr })
}

/// The host's JSON report: it exited with success or [`EXIT_CANCELLED`] (a cancelled
/// migration's host still reports); any other status is a failure named by its last line.
fn parse_report<T: serde::de::DeserializeOwned>(
    exit: &HostExit,
    host: &'static str,
) -> Result<T, MigrationError> {
    if !exit.status.success() && exit.status.code() != Some(EXIT_CANCELLED) {
        let last = exit.stderr.lines().last().unwrap_or("").to_string();
        let status = exit.status.to_string();
        return Err(MigrationError::HostFailed { host, status, detail: last });
    }
    let json = exit
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or(MigrationError::BadReport { host, detail: "no JSON report on stdout".into() })?;
    serde_json::from_str(json)
        .map_err(|e| MigrationError::BadReport { host, detail: e.to_string() })
}

/// `--inject VALUE` for the host on `side`, when the plan gives it anything to do.
fn inject_args(plan: Option<&InjectPlan>, side: Side) -> Vec<String> {
    match plan.map(|p| p.for_side(side)) {
        Some(part) if !part.is_empty() => vec!["--inject".into(), part.to_string()],
        _ => Vec::new(),
    }
}
