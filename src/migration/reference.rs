//! The unmigrated reference run: the same guest, run to the end of its ops in this process,
//! gives the digest a migration must reach (`digest_expected`) and the timeline of its
//! progress, against which the migrated guest's slowdown is scored at the same op positions
//! ([`crate::metrics::score_at_op_positions`]).

use super::progress::{wait_guest_finished, FinishingGuest, DEFAULT_PROGRESS_TIMEOUT};
use super::MigrationError;
use crate::metrics::{mono_ns, BoundedTimeline, ProgressTimeline};
use crate::vm::{Vm, VmConfig};
use std::time::Duration;

/// Period of the reference run's progress samples: finer than the hosts' 10 ms, so the
/// reference side adds little to the interpolation error of a score.
const SAMPLE: Duration = Duration::from_millis(2);
/// Samples kept at most (16 bytes each), whatever the run's length.
const SAMPLES_MAX: usize = 8192;

/// What an unmigrated run of a guest gives.
#[derive(Debug, Clone)]
pub struct ReferenceRun {
    /// The guest's digest at the end of its ops.
    pub digest: u64,
    /// Its progress, (mono ns, cumulative ops), from its start to its last op.
    pub timeline: ProgressTimeline,
}

/// Runs `cfg` unmigrated and unpaced to the end of its ops. The pace changes when ops happen,
/// never what they do, so the digest is the paced guest's too; a paced guest's score holds it
/// to its pace instead (see [`crate::metrics::OpSpanScore::paced_floor_ms`]).
pub fn run_reference(cfg: &VmConfig) -> Result<ReferenceRun, MigrationError> {
    run_reference_with(cfg, &mut |_| {})
}

/// [`run_reference`], telling `on_ops` the ops done as the run goes (for a progress display).
pub fn run_reference_with(
    cfg: &VmConfig,
    on_ops: &mut dyn FnMut(u64),
) -> Result<ReferenceRun, MigrationError> {
    let mut unpaced = cfg.clone();
    unpaced.workload.pace_ops_per_sec = None;
    let mut vm = Vm::new(&unpaced)?;
    vm.start()?;
    let mut samples = BoundedTimeline::new(SAMPLES_MAX, SAMPLE.as_nanos() as u64);
    samples.record(mono_ns(), vm.ops_done(), true);
    let mut guest = Reference(&mut vm);
    let digest =
        wait_guest_finished(&mut guest, DEFAULT_PROGRESS_TIMEOUT, SAMPLE, &mut |t, ops| {
            samples.record(t, ops, false);
            on_ops(ops);
        })
        .map_err(|error| match error {
            MigrationError::GuestNoProgress { .. } => MigrationError::ReferenceUnfinished,
            other => other,
        })?;
    samples.record(mono_ns(), vm.ops_done(), true);
    Ok(ReferenceRun { digest, timeline: samples.into_timeline() })
}

/// The reference guest, waited for like the destination's.
struct Reference<'a>(&'a mut Vm);

impl FinishingGuest for Reference<'_> {
    fn wait_finished(&mut self, wait: Duration) -> Result<Option<u64>, MigrationError> {
        Ok(self.0.wait_finished(wait)?)
    }

    fn ops_done(&self) -> u64 {
        self.0.ops_done()
    }
}
