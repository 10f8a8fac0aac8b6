//! The built-in VMM's adapter to the engines: [`KvmGuest`] implements the VM trait of
//! [`crate::embed`] over a [`Vm`], next to the VMM it adapts.

use super::{DirtyBitmap, Vm, VmState};
use crate::memory::PageBitmap;
use crate::ports::{EmbedError, HostRegion, MigratableVm};
use std::time::Duration;

/// The built-in VMM seen through the engines' narrow interface.
pub struct KvmGuest<'a> {
    pub(crate) vm: &'a mut Vm,
    /// Refuse every state (the `fail-load` injection).
    refuse_state: bool,
}

impl std::fmt::Debug for KvmGuest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmGuest").finish_non_exhaustive()
    }
}

impl<'a> KvmGuest<'a> {
    /// Wraps `vm`.
    pub fn new(vm: &'a mut Vm) -> Self {
        Self { vm, refuse_state: false }
    }

    /// The VM, given back.
    pub fn into_inner(self) -> &'a mut Vm {
        self.vm
    }

    /// Refuses every state it is asked to restore, as a VMM refuses a state from an
    /// incompatible host: for drills of the cancelled hand-over (`--inject fail-load`).
    pub fn refusing_state(mut self) -> Self {
        self.refuse_state = true;
        self
    }
}

fn vm_err(op: &'static str) -> impl FnOnce(crate::vm::VmError) -> EmbedError {
    move |e| EmbedError::Vm { op, source: Box::new(e) }
}

impl MigratableVm for KvmGuest<'_> {
    fn regions(&self) -> Vec<HostRegion> {
        self.vm
            .regions()
            .iter()
            // SAFETY: the built-in VMM maps each region once, at creation, and unmaps it only
            // when the VM is dropped, which outlives every engine this adapter feeds.
            .map(|r| unsafe { HostRegion::new(r.guest_phys, r.len() as u64, r.as_ptr() as usize) })
            .collect()
    }

    fn start_dirty_log(&mut self) -> Result<(), EmbedError> {
        self.vm.set_dirty_logging(true).map_err(vm_err("start_dirty_log"))?;
        // Drop whatever was logged before this instant.
        let mut discard = DirtyBitmap::new(self.vm.total_pages());
        self.vm.harvest_dirty(&mut discard).map_err(vm_err("harvest_dirty"))
    }

    fn harvest_dirty(&mut self, out: &mut PageBitmap) -> Result<(), EmbedError> {
        // The built-in VMM's regions are contiguous from guest-physical 0, so its page
        // numbers (gpa / 4096) are the engines' dense indices.
        self.vm.harvest_dirty(out).map_err(vm_err("harvest_dirty"))
    }

    fn arm_dirty_log(&mut self, first: u64, count: u64) -> Result<(), EmbedError> {
        self.vm.arm_dirty_log(first, count).map_err(vm_err("arm_dirty_log"))
    }

    fn arm_dirty_log_pages(&mut self, pages: &PageBitmap) -> Result<(), EmbedError> {
        self.vm.arm_dirty_log_pages(pages).map_err(vm_err("arm_dirty_log_pages"))
    }

    fn untouched_pages(
        &self,
        first: u64,
        count: u64,
        out: &mut PageBitmap,
    ) -> Result<bool, EmbedError> {
        self.vm
            .untouched_pages(first, count, |page| {
                out.set(page);
            })
            .map_err(vm_err("untouched_pages"))
    }

    /// The page tables' Accessed bits (data pages only; the guest is stopped briefly).
    fn sample_accessed(&mut self, out: &mut PageBitmap) -> Result<Option<Duration>, EmbedError> {
        self.vm.harvest_accessed(out).map(Some).map_err(vm_err("sample_accessed"))
    }

    fn pause(&mut self) -> Result<Duration, EmbedError> {
        self.vm.pause().map_err(vm_err("pause"))
    }

    fn save_state(&mut self) -> Result<Vec<u8>, EmbedError> {
        Ok(self.vm.save_state().map_err(vm_err("save_state"))?.to_blob())
    }

    fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError> {
        if self.refuse_state {
            tracing::warn!("injected: fail-load, the state is refused");
            return Err(EmbedError::Vm {
                op: "restore_state",
                source: "the state was refused (injected fail-load)".into(),
            });
        }
        let state = VmState::from_blob(blob)
            .map_err(|e| EmbedError::Vm { op: "restore_state", source: Box::new(e) })?;
        self.vm.restore_state(&state).map_err(vm_err("restore_state"))
    }

    fn vcpu_of_thread(&self, thread_id: u32) -> Option<u32> {
        self.vm.vcpu_of_thread(thread_id)
    }

    /// Starts a new guest's vCPUs, or restarts those a switch-over paused (a cancelled
    /// migration's source guest runs on); harmless on a running guest.
    fn resume(&mut self) -> Result<(), EmbedError> {
        if self.vm.is_started() {
            return self.vm.resume().map_err(vm_err("resume"));
        }
        self.vm.start().map_err(vm_err("resume"))
    }
}
