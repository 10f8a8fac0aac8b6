//! Many seeded migrations: a seed picks the mode, the guest's shape and the link's faults,
//! [`super::run`] runs it, and [`SimOutcome::check`] judges it.
//!
//! `hybridmig sim --seeds N [--from S]` is a thin wrapper over [`run_seeds`]. A failing seed
//! is reported with the one command that replays it; the same seed always builds the same
//! [`SimRun`], and the same run gives the same trace hash.

use super::{run_traced, Plant, SimGuestSpec, SimOutcome, SimRun, SimRunError};
use crate::source::LivePass;
use crate::transport::sim::{SimFaults, SimRng};
use crate::wire::MigrationMode;

/// How one seed's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedVerdict {
    /// Finished, exact, every check held.
    Exact,
    /// A corrupted frame reached an engine's own decoder, which refused it (the run stops
    /// there), and nothing corrupt was used. Frames the reader's CRC refuses break the
    /// connection instead, and the run recovers.
    CorruptionCaught,
    /// A check failed or the run errored: the text says which.
    Failed(String),
}

/// One seed's result.
#[derive(Debug, Clone)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The mode it ran.
    pub mode: MigrationMode,
    /// The hash of the run's event trace, up to its end or its error.
    pub trace_hash: u64,
    /// How it ended.
    pub verdict: SeedVerdict,
    /// New connections after a lost one.
    pub recoveries: u64,
    /// Frames refused by the reader's CRC (each broke its connection).
    pub frames_refused: u64,
    /// Fault requests asked again on bulk.
    pub fault_retries: u64,
    /// Times the source's bulk windows stopped at its unacknowledged-page cap.
    pub unacked_cap_stalls: u64,
}

impl SeedResult {
    /// True unless the verdict is a failure.
    pub fn passed(&self) -> bool {
        !matches!(self.verdict, SeedVerdict::Failed(_))
    }
}

/// What a batch of seeds gave.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that passed.
    pub passed: u64,
    /// The failures, in seed order.
    pub failures: Vec<SeedResult>,
    /// Runs in which a corrupted frame was caught.
    pub corruption_caught: u64,
    /// Recoveries (new connections after a lost one) over all runs.
    pub recoveries: u64,
    /// Runs with at least two recoveries.
    pub multi_recovery_runs: u64,
    /// Fault requests asked again on bulk, over all runs.
    pub fault_retries: u64,
    /// Runs in which the source's bulk windows stopped at its unacknowledged-page cap.
    pub cap_stall_runs: u64,
    /// The trace hash when exactly one seed ran.
    pub trace_hash: Option<u64>,
}

/// Builds the run seed `seed` stands for: every mode, several guest shapes and link faults
/// (delay, loss as retransmission delay, reordering across the streams, a stall, corruption).
pub fn spec_for_seed(seed: u64) -> SimRun {
    let mut rng = SimRng::new(seed ^ 0x5eed_5eed_5eed_5eed);
    let mode = MigrationMode::ALL[rng.range_inclusive(0, 3) as usize];
    // Auto takes half of hybrid's seeds (without another draw, so every other seed replays
    // as it did before auto existed).
    let mode =
        if mode == MigrationMode::Hybrid && seed % 2 == 1 { MigrationMode::Auto } else { mode };
    let guest = guest_for(&mut rng);
    let steps_before = rng.range_inclusive(500, 4_000);
    let steps_total = steps_before + rng.range_inclusive(6_000, 20_000);
    let live_pass = if rng.chance(0.25) { LivePass::WorkingSet } else { LivePass::All };
    let place_chunk_pages = [0, 1, 4][rng.range_inclusive(0, 2) as usize];
    let stall_us = rng
        .chance(0.2)
        .then(|| (rng.range_inclusive(5_000, 60_000), rng.range_inclusive(1_000, 20_000)));
    SimRun {
        mode,
        guest,
        steps_before,
        steps_total,
        faults: faults_for(&mut rng),
        seed,
        live_pass,
        place_chunk_pages,
        stall_us,
        plant: None,
        // From the seed, not the generator, so that every other choice stays as it was.
        tight_unacked_cap: seed % 2 == 0,
    }
}

fn guest_for(rng: &mut SimRng) -> SimGuestSpec {
    const SHAPES: [&[u64]; 4] = [&[64, 448], &[512], &[16, 200, 296], &[96, 160, 64]];
    let region_pages = SHAPES[rng.range_inclusive(0, 3) as usize].to_vec();
    let last = *region_pages.last().unwrap_or(&64);
    SimGuestSpec {
        hot_pages: rng.range_inclusive(8, 64).min(last),
        hot_frac: [0.5, 0.8, 0.9, 0.97][rng.range_inclusive(0, 3) as usize],
        write_frac: [0.02, 0.3, 0.6][rng.range_inclusive(0, 2) as usize],
        seed: rng.next_u64(),
        deferred_protect: rng.chance(0.5),
        region_pages,
    }
}

fn faults_for(rng: &mut SimRng) -> SimFaults {
    let mut f = SimFaults::default();
    if rng.chance(0.7) {
        let lo = rng.range_inclusive(0, 200);
        f.delay_us = (lo, lo + rng.range_inclusive(0, 400));
    }
    if rng.chance(0.4) {
        f.loss_probability = [0.005, 0.02, 0.05][rng.range_inclusive(0, 2) as usize];
        f.retransmit_delay_us = rng.range_inclusive(1_000, 5_000);
    }
    if rng.chance(0.4) {
        f.reorder_probability = [0.05, 0.1, 0.2][rng.range_inclusive(0, 2) as usize];
        f.reorder_extra_us = rng.range_inclusive(100, 1_000);
    }
    if rng.chance(0.1) {
        f.corrupt_byte_probability = [5e-7, 2e-6, 5e-6][rng.range_inclusive(0, 2) as usize];
    }
    // Lost connections, recovered: at a random send (several per run at the higher rates, so
    // some fall during a recovery), or at a set time.
    if rng.chance(0.3) {
        f.disconnect_probability = [2e-4, 1e-3, 4e-3][rng.range_inclusive(0, 2) as usize];
    }
    if rng.chance(0.15) {
        f.disconnect_at_us = Some(rng.range_inclusive(1_000, 80_000));
    }
    f
}

/// Runs seed `seed`, with an optional planted fault, and judges it.
pub fn run_seed(seed: u64, plant: Option<Plant>) -> SeedResult {
    let mut spec = SimRun { plant, ..spec_for_seed(seed) };
    if plant.is_some() {
        // A recovery re-sends every unacknowledged window and would rightly repair the planted
        // loss: a planted run keeps its link up (a corrupted frame may still break it).
        spec.faults.disconnect_probability = 0.0;
        spec.faults.disconnect_at_us = None;
    }
    let corrupting = spec.faults.corrupt_byte_probability > 0.0;
    let (trace_hash, result) = run_traced(&spec);
    let recoveries = result.as_ref().map_or(0, |o| o.recoveries);
    let caught = result.as_ref().map_or(0, |o| o.frames_refused);
    let fault_retries = result.as_ref().map_or(0, |o| o.fault_retries);
    let unacked_cap_stalls = result.as_ref().map_or(0, |o| o.unacked_cap_stalls);
    let verdict = match result {
        Ok(outcome) => judge(&outcome),
        Err(e) if corrupting && caught_by_codec(&e) => SeedVerdict::CorruptionCaught,
        Err(e) => SeedVerdict::Failed(e.to_string()),
    };
    SeedResult {
        seed,
        mode: spec.mode,
        trace_hash,
        verdict,
        recoveries,
        frames_refused: caught,
        fault_retries,
        unacked_cap_stalls,
    }
}

fn judge(outcome: &SimOutcome) -> SeedVerdict {
    match outcome.check() {
        Ok(()) => SeedVerdict::Exact,
        Err(e) => SeedVerdict::Failed(e.to_string()),
    }
}

/// True when the run stopped because a decoder refused a frame (a CRC, a length, a type).
fn caught_by_codec(e: &SimRunError) -> bool {
    use crate::dest::DestError;
    use crate::source::SourceError;
    matches!(
        e,
        SimRunError::Wire { .. }
            | SimRunError::Source(SourceError::Wire(_))
            | SimRunError::Dest(DestError::Wire(_))
    )
}

/// Runs seeds `from..from + count`, calling `progress` after each.
pub fn run_seeds(
    from: u64,
    count: u64,
    plant: Option<Plant>,
    mut progress: impl FnMut(&SeedResult),
) -> SeedReport {
    let mut report = SeedReport { seeds: count, ..SeedReport::default() };
    for seed in from..from.saturating_add(count) {
        let result = run_seed(seed, plant);
        progress(&result);
        if result.verdict == SeedVerdict::CorruptionCaught || result.frames_refused > 0 {
            report.corruption_caught += 1;
        }
        report.recoveries += result.recoveries;
        report.fault_retries += result.fault_retries;
        report.cap_stall_runs += u64::from(result.unacked_cap_stalls > 0);
        report.multi_recovery_runs += u64::from(result.recoveries >= 2);
        if count == 1 {
            report.trace_hash = Some(result.trace_hash);
        }
        if result.passed() {
            report.passed += 1;
        } else {
            report.failures.push(result);
        }
    }
    report
}

/// The command line that replays one seed.
pub fn replay_command(seed: u64, plant: Option<Plant>) -> String {
    let plant = match plant {
        Some(Plant::DropPageWindow { nth }) => format!(" --drop-window {nth}"),
        None => String::new(),
    };
    format!("hybridmig sim --from {seed} --seeds 1{plant}")
}
