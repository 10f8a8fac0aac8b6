//! One host's half of a migration with the built-in VMM: the source host runs the guest,
//! tracks its working set and migrates it; the destination host receives it and runs it to
//! the end of its ops.

use super::controlled::{self, cancel_taken, dial_target};
use super::progress::{wait_guest_finished, FinishingGuest};
use super::report::{DestReport, SourceReport};
use super::MigrationError;
use crate::control::{Control, MigrationStatus};
use crate::dest::driver::{run_dest_recovering, DestDriverOptions};
use crate::driver::inject::{Injection, Side, SidePlan};
use crate::driver::recovery::Recovery;
use crate::metrics::{mono_ns, ProgressTimeline};
use crate::ports::MigratableVm;
use crate::secure::SecureConfig;
use crate::session::{wire_regions, AcceptorConfig, Offer, SessionIntent};
use crate::source::driver::{run_source_recovering, SourceDriverOptions};
use crate::source::workingset::{WorkingSetSampler, SAMPLE_WINDOW};
use crate::source::{CompressionPolicy, LivePass, SourceConfig, SourceEngine};
use crate::transport::tcp;
use crate::vm::{Vm, VmConfig};
use crate::wire::MigrationMode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::vm::KvmGuest;

/// How the source host runs.
#[derive(Debug, Clone)]
pub struct SourceHostOptions {
    /// The guest.
    pub cfg: VmConfig,
    /// Where the destination listens.
    pub connect: SocketAddr,
    /// Migration mode.
    pub mode: MigrationMode,
    /// Guest run time before the migration starts.
    pub migrate_after_ms: u64,
    /// Fault window in pages.
    pub window_pages: u32,
    /// Adapt the fault window to the access pattern.
    pub adaptive_window: bool,
    /// lz4 policy.
    pub compression: CompressionPolicy,
    /// Hybrid: what crosses before the pause.
    pub live_pass: LivePass,
    /// Post-copy and hybrid: hold the background push this long after the state is sent.
    pub push_delay_ms: u64,
    /// Session id of the two connections.
    pub session_id: u64,
    /// Print `PROGRESS` lines on stderr for a parent's progress bar and liveness watch.
    pub progress_lines: bool,
    /// How long a silent peer may go unnoticed on either stream (`None`: the kernel's
    /// defaults); see [`tcp::TcpOptions::liveness`].
    pub liveness: Option<Duration>,
    /// The driver fails after this long without progress (no byte moved, no frame).
    pub progress_timeout: Duration,
    /// How long a lost connection may take to be replaced (`None`: it ends the migration).
    pub recover_timeout: Option<Duration>,
    /// Faults to inject (`--inject`); `None` in a real migration.
    pub inject: Option<SidePlan>,
    /// The control channel ([`crate::control`]): status, cancel, a new address to recover to.
    pub control: Option<Arc<Control>>,
    /// Authentication and encryption of every connection (`None`: none, library use only).
    pub security: Option<SecureConfig>,
}

/// A `PROGRESS` line on stderr: phase, pages sent or placed, pages in all, guest ops, bytes
/// sent or received. A parent (`hybridmig migrate`) shows the phases from it and treats a
/// change in it as progress.
fn progress_line(phase: &str, pages: u64, total: u64, ops: u64, bytes: u64) {
    eprintln!("PROGRESS {phase} {pages} {total} {ops} {bytes}");
}

/// Period of `PROGRESS` lines.
const PROGRESS_LINE_NS: u64 = 100_000_000;

/// Progress sampling period.
const SAMPLE: Duration = Duration::from_millis(10);

/// Pages (global indices, in layout order) of the VM's own structures: the system region (code,
/// GDT, stacks, parameters) and, when there is one, the page-table region after the data.
/// Every guest access walks the page tables and KVM sets their Accessed and Dirty bits, so
/// these pages are as hot as any and go stale as fast; the Accessed-bit tracker samples only
/// data pages, so they are put at the head of the working set: re-sent first in the downtime,
/// not left to fault (a fault on a page-table page stalls the vCPU inside KVM's page walk).
fn structure_pages(vm: &Vm) -> Vec<u64> {
    let regions = vm.regions();
    let total = vm.total_pages();
    let mut pages: Vec<u64> = regions.first().map_or(0..0, |r| 0..r.pages()).collect();
    if regions.len() > 2 {
        if let Some(last) = regions.last() {
            pages.extend(total - last.pages()..total);
        }
    }
    pages
}

/// Runs the guest, migrates it, and returns the source's report. The source VM is paused at
/// the switch-over and, once handed over, never resumed; it is dropped once the destination
/// confirmed.
///
/// A failure before the hand-over ([`SourceEngine::handed_over`]) cancels the migration: the
/// guest is resumed if the switch-over had paused it, runs to the end of its ops here, and the
/// report says `outcome: cancelled` with its digest. A failure after the hand-over is an
/// error: the destination may be running the guest.
///
/// With a control channel, an operator's cancel is taken before the hand-over the same way,
/// and the final status (completed, cancelled, failed) is published there at the end.
pub fn run_source_host(opts: &SourceHostOptions) -> Result<SourceReport, MigrationError> {
    let control = opts.control.as_deref();
    let result = source_host(opts, control);
    controlled::source_ended(control, result)
}

fn source_host(
    opts: &SourceHostOptions,
    control: Option<&Control>,
) -> Result<SourceReport, MigrationError> {
    let mut vm = Vm::new(&opts.cfg)?;
    let mut report = SourceReport { mode: opts.mode.to_string(), ..SourceReport::default() };
    vm.start()?;
    let cfg = match warm_up(&mut vm, opts, &mut report) {
        Ok(cfg) => cfg,
        Err(error @ MigrationError::OperatorCancelled { .. }) => {
            return super::cancel::cancel_source(&mut vm, report, &error);
        }
        Err(error) => return Err(error),
    };
    let injection = opts.inject.clone().map(|plan| Injection::new(Side::Source, plan));
    let mut handed_over = false;
    let result = migrate_guest(&mut vm, opts, cfg, &mut report, &injection, &mut handed_over);
    report.injected = injection.map(|i| i.log.entries()).unwrap_or_default();
    report.peak_rss_bytes = peak_rss_bytes();
    report.cpu_ms = process_cpu_ms();
    match result {
        Ok(()) => Ok(report),
        Err(error) if !handed_over => {
            if let Some(control) = control {
                control.finish(MigrationStatus::Cancelled, Some(error.to_string()));
            }
            super::cancel::cancel_source(&mut vm, report, &error)
        }
        Err(error) => Err(error),
    }
}

/// The guest's run before the migration: its undisturbed rate, and (hybrid modes) its working
/// set from the Accessed-bit tracker. Returns the engine's configuration.
fn warm_up(
    vm: &mut Vm,
    opts: &SourceHostOptions,
    report: &mut SourceReport,
) -> Result<SourceConfig, MigrationError> {
    let pages = vm.total_pages();
    // The library's estimator, on the built-in VMM's Accessed bits.
    let mut sampler = WorkingSetSampler::new(pages, SAMPLE_WINDOW);
    let started = mono_ns();
    let migrate_at = started + opts.migrate_after_ms * 1_000_000;
    // Track the working set over the last 90% of the pre-migration run; the first 10% gives
    // the guest's undisturbed rate (each sample stops the guest briefly and re-faults the
    // pages it touches).
    let track_from = started + opts.migrate_after_ms * 100_000;
    let tracks = opts.mode.uses_working_set();
    let mut last_progress = 0u64;
    while mono_ns() < migrate_at {
        if cancel_taken(opts.control.as_deref()) {
            return Err(MigrationError::OperatorCancelled { before: "the migration started" });
        }
        std::thread::sleep(SAMPLE);
        let now = mono_ns();
        report.timeline.record(now, vm.ops_done());
        if opts.progress_lines && now - last_progress > PROGRESS_LINE_NS {
            last_progress = now;
            progress_line("Before", 0, pages, vm.ops_done(), 0);
        }
        if tracks && now >= track_from {
            sampler.poll(&mut KvmGuest::new(vm), now).map_err(crate::source::SourceError::from)?;
        }
    }
    report.ws_sample_pause_ms = sampler.stopped().as_secs_f64() * 1e3;
    report.baseline_ops_per_sec = report.timeline.ops_between(started, track_from.min(migrate_at))
        * 1e9
        / (track_from.min(migrate_at) - started).max(1) as f64;
    report.ws_windows = sampler.windows();
    report.write_hot_pages = vm.write_hot_pages().len() as u64;

    let mut cfg = SourceConfig::new(opts.mode, opts.session_id);
    cfg.window_pages = opts.window_pages;
    cfg.adaptive_window = opts.adaptive_window;
    cfg.compression = opts.compression;
    cfg.live_pass = opts.live_pass;
    cfg.push_delay_ms = opts.push_delay_ms;
    cfg.true_hot_set = vm.hot_pages();
    if tracks {
        let structures = structure_pages(vm);
        let estimate = sampler.estimate((pages / 4).saturating_sub(structures.len() as u64));
        cfg.working_set = structures.into_iter().chain(estimate).collect();
    }
    Ok(cfg)
}

/// Connects, migrates, and fills the report; `handed_over` says, also on failure, whether the
/// destination may already run the guest.
fn migrate_guest(
    vm: &mut Vm,
    opts: &SourceHostOptions,
    cfg: SourceConfig,
    report: &mut SourceReport,
    injection: &Option<Injection>,
    handed_over: &mut bool,
) -> Result<(), MigrationError> {
    let mut guest = KvmGuest::new(vm);
    let offer = Offer::new(opts.session_id, opts.mode, wire_regions(&guest.regions()));
    let tcp_options = tcp::TcpOptions {
        liveness: opts.liveness,
        security: opts.security.clone(),
        ..tcp::TcpOptions::default()
    };
    // Dialled until it opens (a Hello that loss holds up past the destination's handshake time
    // is dropped there), within the recovery time; a refusal ends it at once.
    let first_dial = opts.recover_timeout.unwrap_or(Duration::ZERO).max(FIRST_DIAL_MIN);
    let control = opts.control.as_deref();
    let pair = controlled::first_dial(control, opts.connect, &offer, &tcp_options, first_dial)?;
    report.encrypted = pair.encrypted();
    // A resume carries the session's ticket, so the destination knows it for this session's.
    let resume = Offer { intent: SessionIntent::Resume, ticket: pair.ticket, ..offer };
    let mut engine = SourceEngine::new(cfg, &pair.session, &guest)?;
    let mut timeline = std::mem::take(&mut report.timeline);
    let ops_source = OpsReader::new(&guest);
    let progress_lines = opts.progress_lines;
    let mut last_progress = 0u64;
    // A phase change is shown at once, however short the phase.
    let mut last_phase = None;
    let driver_opts = SourceDriverOptions {
        progress_timeout: opts.progress_timeout,
        inject: injection.clone(),
        control: opts.control.clone(),
        ..Default::default()
    };
    // The last progress line's figures, for the lines a recovery prints.
    let shown = std::cell::Cell::new((0u64, 0u64, 0u64, 0u64));
    // Each slice dials the operator's address once `migrate-recover` gave one.
    let mut redial = |timeout| {
        if progress_lines {
            let (pages, total, ops, bytes) = shown.get();
            progress_line("Recovering", pages, total, ops, bytes);
        }
        tcp::redial(dial_target(control, opts.connect), &resume, &tcp_options, timeout)
    };
    let recovery =
        opts.recover_timeout.map(|timeout| Recovery { reconnect: Box::new(&mut redial), timeout });
    let mut on_tick = |e: &SourceEngine| {
        let now = mono_ns();
        if e.stats().pause_ns == 0 {
            timeline.record(now, ops_source.ops());
        }
        let phase = Some(e.phase());
        if progress_lines && (now - last_progress > PROGRESS_LINE_NS || phase != last_phase) {
            last_progress = now;
            let ops = ops_source.ops();
            let (pages, total) = (e.pages_sent(), e.layout().total_pages());
            let bytes = e.stats().bytes_bulk + e.stats().bytes_urgent;
            shown.set((pages, total, ops, bytes));
            progress_line(&format!("{:?}", e.phase()), pages, total, ops, bytes);
            last_phase = phase;
        }
    };
    let result =
        run_source_recovering(&mut engine, &mut guest, &pair, &driver_opts, &mut on_tick, recovery);
    *handed_over = engine.handed_over();
    report.timeline = timeline;
    let stats = match result {
        Ok(stats) => stats,
        Err(error) => {
            report.stats = engine.stats().clone();
            return Err(error.into());
        }
    };
    report.ops_at_pause = ops_source.ops();
    report.stats = stats;
    report.ops_at_release = guest.vm.ops_done();
    Ok(())
}

/// Reads the guest's op counters from memory without borrowing the VM (the driver holds it).
struct OpsReader {
    addrs: Vec<usize>,
}

impl OpsReader {
    fn new(guest: &KvmGuest<'_>) -> Self {
        Self { addrs: guest.vm.progress_counter_addrs() }
    }

    /// Global page indices of the counters (the destination reads them only once present,
    /// or the read would fault into its own userfaultfd).
    fn pages(&self, guest: &KvmGuest<'_>) -> Vec<u64> {
        let regions = guest.regions();
        let Ok(layout) = crate::ports::layout_of(&regions) else { return Vec::new() };
        self.addrs
            .iter()
            .filter_map(|&a| crate::ports::page_of_host_addr(&regions, &layout, a))
            .collect()
    }

    fn ops(&self) -> u64 {
        self.addrs
            .iter()
            // SAFETY: each address is an 8-aligned counter inside the VM's system region, which
            // stays mapped while the VM lives (longer than this reader); a volatile read of a
            // u64 the guest updates is what the VMM's own sampler does.
            .map(|&a| unsafe { std::ptr::read_volatile(a as *const u64) })
            .sum()
    }
}

/// How the destination host runs.
#[derive(Debug, Clone)]
pub struct DestHostOptions {
    /// The guest's configuration (must give the source's memory layout).
    pub cfg: VmConfig,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// How long to wait for the source to connect (connections that cannot join a session
    /// are dropped meanwhile and do not end the wait).
    pub accept_timeout: Duration,
    /// Time each connection has to send its whole Hello.
    pub handshake_timeout: Duration,
    /// How long a silent peer may go unnoticed on either stream (`None`: the kernel's
    /// defaults).
    pub liveness: Option<Duration>,
    /// The driver fails after this long without progress, and so does the wait for the guest
    /// to finish its ops after the migration (its ops counter standing still); a guest that
    /// keeps moving is waited for however long it takes.
    pub progress_timeout: Duration,
    /// How long a lost connection may take to be replaced (`None`: it ends the migration).
    pub recover_timeout: Option<Duration>,
    /// Print `PROGRESS` lines on stderr for a parent's liveness watch.
    pub progress_lines: bool,
    /// Faults to inject (`--inject`); `None` in a real migration.
    pub inject: Option<SidePlan>,
    /// The control channel ([`crate::control`]): status, cancel, a new address to listen on.
    pub control: Option<Arc<Control>>,
    /// Authentication and encryption of every connection (`None`: none, library use only).
    pub security: Option<SecureConfig>,
}

/// Receives the guest, runs it to the end of its ops, returns the destination's report.
/// `on_listening` gets the bound address before the first accept. A migration that fails
/// before the guest was allowed to run here is cancelled: everything is freed and the report
/// says `outcome: cancelled`.
///
/// With a control channel, an operator's cancel is taken until the guest runs here, a
/// `migrate-recover` moves the listener to its address, and the final status is published.
pub fn run_dest_host(
    opts: &DestHostOptions,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<DestReport, MigrationError> {
    let control = opts.control.as_deref();
    let result = dest_host(opts, control, on_listening);
    controlled::dest_ended(control, result)
}

fn dest_host(
    opts: &DestHostOptions,
    control: Option<&Control>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<DestReport, MigrationError> {
    let mut vm = Vm::new_incoming(&opts.cfg)?;
    let accept = AcceptorConfig::new(wire_regions(&KvmGuest::new(&mut vm).regions()));
    let tcp_options = tcp::TcpOptions {
        liveness: opts.liveness,
        handshake_timeout: opts.handshake_timeout,
        security: opts.security.clone(),
        ..tcp::TcpOptions::default()
    };
    let mut listener = tcp::PairListener::bind(opts.listen, tcp_options.clone(), accept.clone())?;
    on_listening(
        listener
            .local_addr()
            .map_err(|source| MigrationError::Io { what: "listener address", source })?,
    );
    let next = controlled::relisten_on_recover(control, &tcp_options, &accept);
    let first = controlled::first_pair(control, &mut listener, &next, opts.accept_timeout)?;
    let Some(pair) = first else {
        let error = MigrationError::OperatorCancelled { before: "the source connected" };
        return Ok(super::cancel::cancelled_dest(DestReport::default(), &error));
    };
    let mut report = DestReport { encrypted: pair.encrypted(), ..DestReport::default() };
    let mut timeline = ProgressTimeline::default();
    let mut guest = KvmGuest::new(&mut vm);
    if opts.inject.as_ref().is_some_and(|plan| plan.fail_load) {
        guest = guest.refusing_state();
    }
    let ops_source = OpsReader::new(&guest);
    let counter_pages = ops_source.pages(&guest);
    let injection = opts.inject.clone().map(|plan| Injection::new(Side::Dest, plan));
    let driver_opts = DestDriverOptions {
        progress_timeout: opts.progress_timeout,
        inject: injection.clone(),
        control: opts.control.clone(),
        ..Default::default()
    };
    let mut last_progress = 0u64;
    // A phase change is shown at once, however short the phase.
    let mut last_phase = None;
    let session_id = pair.session.session_id;
    // A listener `migrate-recover` bound replaces this one between two slices.
    let mut reaccept = |timeout| {
        controlled::swap_in(&mut listener, &next);
        listener.accept_session(session_id, timeout)
    };
    let recovery = opts
        .recover_timeout
        .map(|timeout| Recovery { reconnect: Box::new(&mut reaccept), timeout });
    let mut on_tick = |e: &crate::dest::DestEngine| {
        let running =
            matches!(e.phase(), crate::dest::DestPhase::Running | crate::dest::DestPhase::Complete);
        let counters_here = running && counter_pages.iter().all(|&p| e.is_present(p));
        let now = mono_ns();
        if counters_here {
            timeline.record(now, ops_source.ops());
        }
        let phase = Some(e.phase());
        if opts.progress_lines && (now - last_progress > PROGRESS_LINE_NS || phase != last_phase) {
            last_progress = now;
            let ops = if counters_here { ops_source.ops() } else { 0 };
            let (pages, total) = (e.stats().pages_placed, e.layout().total_pages());
            let bytes = e.stats().bytes_bulk + e.stats().bytes_urgent;
            progress_line(&format!("{:?}", e.phase()), pages, total, ops, bytes);
            last_phase = phase;
        }
    };
    let result = run_dest_recovering(&mut guest, &pair, &driver_opts, &mut on_tick, recovery);
    report.injected = injection.map(|i| i.log.entries()).unwrap_or_default();
    report.run = match result {
        Ok(run) => run,
        // The guest never ran here: the source still has it. Free everything and say so.
        Err(error) if !vm.is_started() => {
            drop(pair);
            return Ok(super::cancel::cancelled_dest(report, &error));
        }
        Err(error) => return Err(error.into()),
    };
    // Completed: the guest is whole here and runs on to the end of its ops.
    if let Some(control) = control {
        control.finish(MigrationStatus::Completed, None);
    }
    let total = vm.total_pages();
    let received = report.run.stats.bytes_bulk + report.run.stats.bytes_urgent;
    let mut finishing = FinishingVm(&mut vm);
    let digest =
        wait_guest_finished(&mut finishing, opts.progress_timeout, SAMPLE, &mut |now, ops| {
            timeline.record(now, ops);
            if opts.progress_lines && now - last_progress > PROGRESS_LINE_NS {
                last_progress = now;
                progress_line("Finishing", total, total, ops, received);
            }
        })?;
    report.guest_digest = Some(digest);
    report.guest_finished_ns = mono_ns();
    timeline.record(mono_ns(), vm.ops_done());
    report.timeline = timeline;
    report.peak_rss_bytes = peak_rss_bytes();
    report.cpu_ms = process_cpu_ms();
    Ok(report)
}

/// The least time the source gives its first connection (redialled within it).
const FIRST_DIAL_MIN: Duration = Duration::from_secs(10);

/// This process's peak resident memory (VmHWM in /proc/self/status), 0 if unreadable.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// CPU time this process used so far, user and system, all threads (ms); 0 if unreadable.
fn process_cpu_ms() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call's duration.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// The destination's guest, running to the end of its ops.
struct FinishingVm<'a>(&'a mut Vm);

impl FinishingGuest for FinishingVm<'_> {
    fn wait_finished(&mut self, wait: Duration) -> Result<Option<u64>, MigrationError> {
        Ok(self.0.wait_finished(wait)?)
    }

    fn ops_done(&self) -> u64 {
        self.0.ops_done()
    }
}
