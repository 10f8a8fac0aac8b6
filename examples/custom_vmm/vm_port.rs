//! The port hybridmig migrates through: [`MigratableVm`] implemented for this VMM's
//! [`Machine`]. Each method forwards to the machine and wraps its error; the contracts are
//! those of `hybridmig::embed::MigratableVm` (see docs/embedding.md).

use crate::machine::{Machine, MachineError};
use hybridmig::embed::{EmbedError, HostRegion, MigratableVm};
use hybridmig::memory::PageBitmap;
use std::time::Duration;

fn embed_err(op: &'static str) -> impl FnOnce(MachineError) -> EmbedError {
    move |e| EmbedError::Vm { op, source: Box::new(e) }
}

impl MigratableVm for Machine {
    /// Both regions, as `GuestMemoryMmap` mapped them.
    fn regions(&self) -> Vec<HostRegion> {
        self.host_regions()
    }

    /// Re-registers the slots with `KVM_MEM_LOG_DIRTY_PAGES` (KVM write-protects every page,
    /// so every page is armed at once and `arm_dirty_log` keeps its default), then drops
    /// whatever was logged before.
    fn start_dirty_log(&mut self) -> Result<(), EmbedError> {
        self.set_dirty_logging(true).map_err(embed_err("start_dirty_log"))?;
        let mut discard = PageBitmap::new(self.total_pages());
        self.harvest_dirty(&mut discard).map_err(embed_err("start_dirty_log"))
    }

    /// `KVM_GET_DIRTY_LOG` on each slot, translated to the engines' dense page indices.
    fn harvest_dirty(&mut self, out: &mut PageBitmap) -> Result<(), EmbedError> {
        Machine::harvest_dirty(self, out).map_err(embed_err("harvest_dirty"))
    }

    /// Kicks the vCPU out of `KVM_RUN` and waits until it parked.
    fn pause(&mut self) -> Result<Duration, EmbedError> {
        Machine::pause(self).map_err(embed_err("pause"))
    }

    /// Registers and the progress device, in a blob that checks itself.
    fn save_state(&mut self) -> Result<Vec<u8>, EmbedError> {
        Machine::save_state(self).map_err(embed_err("save_state"))
    }

    /// Checks the blob and loads it into the vCPU, which has not run here yet.
    fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError> {
        Machine::restore_state(self, blob).map_err(embed_err("restore_state"))
    }

    /// Destination: starts the vCPU thread. Source, after a cancel before the hand-over: lets
    /// the paused vCPU run on.
    fn resume(&mut self) -> Result<(), EmbedError> {
        self.start_or_resume().map_err(embed_err("resume"))
    }
}
