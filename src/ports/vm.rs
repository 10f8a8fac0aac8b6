//! The VM port: the narrow interface between the migration engines and a VMM.
//!
//! The engines never reach into a VMM's internals: they see guest memory as a list of regions
//! mapped in this process, and five operations (dirty tracking, pause, state save, state
//! restore, resume). A custom VMM implements [`MigratableVm`] to be migrated by hybridmig; the
//! built-in VMM (module `vm`, default features) is one implementation.

use crate::memory::{Layout, MemoryError, PageBitmap};
use std::time::Duration;

/// Errors a VMM reports through [`MigratableVm`].
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A VMM operation failed.
    #[error("VMM operation `{op}` failed: {source}")]
    Vm {
        /// The operation (`pause`, `save_state`, ...).
        op: &'static str,
        /// The VMM's own error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The VMM's regions do not form a valid layout.
    #[error("guest memory layout: {0}")]
    Layout(#[from] MemoryError),
}

/// One region of guest memory, mapped in this process.
///
/// The engines read guest memory through the address it carries, so one can only be made
/// with [`HostRegion::new`], whose contract says how long that address must stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRegion {
    /// Guest-physical start address.
    pub guest_phys: u64,
    /// Size in bytes (page-aligned).
    pub size_bytes: u64,
    host_addr: usize,
}

impl HostRegion {
    /// A region of `size_bytes` at guest-physical `guest_phys`, mapped at `host_addr`.
    ///
    /// # Safety
    /// `host_addr..host_addr + size_bytes` must be a readable and writable mapping of this
    /// process, page-aligned, that stays mapped for as long as any engine, sink or
    /// [`GuestPages`] built from this region exists. Other threads (vCPUs) may write it at any
    /// time; the engines tolerate torn reads (the dirty log re-sends such pages), but no Rust
    /// reference to the memory may be held elsewhere across engine calls.
    pub unsafe fn new(guest_phys: u64, size_bytes: u64, host_addr: usize) -> Self {
        Self { guest_phys, size_bytes, host_addr }
    }

    /// Address of the region's first byte in this process.
    pub fn host_addr(&self) -> usize {
        self.host_addr
    }
}

/// Read access to guest memory for the source engine: the guest-memory port.
///
/// Built from the VM's regions, whose [`HostRegion::new`] contract keeps them mapped, so a
/// read needs no `unsafe` at the call site.
#[derive(Debug, Clone)]
pub struct GuestPages {
    regions: Vec<HostRegion>,
    layout: Layout,
}

impl GuestPages {
    /// Guest memory as the VM's regions map it.
    pub fn new(regions: Vec<HostRegion>) -> Result<Self, EmbedError> {
        let layout = layout_of(&regions)?;
        Ok(Self { regions, layout })
    }

    /// The dense page layout of the regions.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The regions.
    pub fn regions(&self) -> &[HostRegion] {
        &self.regions
    }

    /// The bytes of pages `first..first + count`, which must lie in one region; `None` when
    /// they do not. vCPUs may write the bytes while the caller reads them (see
    /// [`HostRegion::new`]).
    pub fn pages(&self, first: u64, count: u32) -> Option<&[u8]> {
        if self.layout.pages_left_in_region(first) < u64::from(count) {
            return None;
        }
        let addr = host_addr_of(&self.regions, &self.layout, first)?;
        // SAFETY: the run lies inside one region (checked against the layout above), and
        // HostRegion::new's contract keeps that region mapped while `self` lives, which
        // outlives the returned slice. Concurrent vCPU writes can tear a read; the dirty log
        // reports such a page and it is sent again.
        Some(unsafe {
            std::slice::from_raw_parts(addr as *const u8, count as usize * crate::memory::PAGE_SIZE)
        })
    }
}

/// What the engines need from a VMM.
///
/// On the source: `regions`, `start_dirty_log`, `harvest_dirty`, `pause`, `save_state`.
/// On the destination: `regions` (mapped but untouched until the engine fills them),
/// `restore_state` and `resume`. A source VM stays paused after `pause` once the destination
/// may run the guest ([`crate::source::SourceEngine::handed_over`]), so the guest never runs
/// twice; only a migration cancelled before that point `resume`s it on the source.
pub trait MigratableVm {
    /// The guest memory regions, in guest-physical order; stable for the VM's life.
    fn regions(&self) -> Vec<HostRegion>;
    /// Turns dirty logging on for every region (and clears what was logged before). From
    /// now on a write to an *armed* page shows in the next harvest. A VMM that write-protects
    /// all memory here has every page armed at once; one that defers protection (KVM's manual
    /// protect with initially-set bitmaps) arms pages in [`MigratableVm::arm_dirty_log`].
    fn start_dirty_log(&mut self) -> Result<(), EmbedError>;
    /// ORs the armed pages written since the last harvest into `out` (global page indices of
    /// [`layout_of`]), including the VMM's own writes into guest memory, and clears the log.
    fn harvest_dirty(&mut self, out: &mut PageBitmap) -> Result<(), EmbedError>;
    /// Arms pages `first..first + count`: a write to them from now on shows in the next
    /// harvest. The source arms every page before it first reads it (or asks whether it was
    /// ever touched) while the guest runs, so a page that was never armed has no copy on the
    /// destination for a write to make stale. Optional: the default suits a VMM whose
    /// `start_dirty_log` arms everything.
    fn arm_dirty_log(&mut self, first: u64, count: u64) -> Result<(), EmbedError> {
        let _ = (first, count);
        Ok(())
    }
    /// Arms the pages set in `pages` (see [`MigratableVm::arm_dirty_log`]). The default arms
    /// them run by run; the built-in VMM clears KVM's log once per slot with `pages` as the
    /// mask, so a scattered set costs one call per slot.
    fn arm_dirty_log_pages(&mut self, pages: &PageBitmap) -> Result<(), EmbedError> {
        let mut page = 0;
        while let Some(first) = pages.next_set(page) {
            let end = pages.next_unset(first).unwrap_or(pages.len());
            self.arm_dirty_log(first, end - first)?;
            page = end;
        }
        Ok(())
    }
    /// Stops every vCPU; returns how long the pause took.
    fn pause(&mut self) -> Result<Duration, EmbedError>;
    /// The vCPU and device state as an opaque, self-checking blob (VM paused).
    fn save_state(&mut self) -> Result<Vec<u8>, EmbedError>;
    /// Restores a blob made by `save_state` (destination, before `resume`).
    fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError>;
    /// Starts (or restarts) the vCPUs: on the destination after `restore_state`; on the
    /// source after a cancel before the hand-over, where it must restart a guest `pause`
    /// stopped and leave a running one as it is.
    fn resume(&mut self) -> Result<(), EmbedError>;
    /// Sets in `out` the pages of `first..first + count` known to read as zero without
    /// reading them (never touched private anonymous memory, for example), and returns
    /// whether it could tell. Optional: the default knows nothing and the source then reads
    /// the pages to find the zero ones. While the guest runs the source arms the pages first,
    /// so a page written after this answer is still caught.
    fn untouched_pages(
        &self,
        first: u64,
        count: u64,
        out: &mut PageBitmap,
    ) -> Result<bool, EmbedError> {
        let _ = (first, count, out);
        Ok(false)
    }
    /// The index of the vCPU that runs on kernel thread `thread_id` (a tid as `gettid`
    /// returns it, and as userfaultfd reports the faulting thread), or `None` for a thread
    /// that is not one of this VM's vCPUs. The destination calls it for every fault message,
    /// to charge the fault's wait to its vCPU (`vcpu_blocked_ms_per_vcpu`) and name it in the
    /// fault request. Optional: the default knows no thread, and every fault is then counted
    /// as unattributed.
    fn vcpu_of_thread(&self, thread_id: u32) -> Option<u32> {
        let _ = thread_id;
        None
    }
    /// ORs into `out` the pages the guest touched, read or written, since the last call
    /// (global page indices of [`layout_of`]), and returns how long the guest was stopped for
    /// it; `None` when the VMM cannot tell. Optional: hybrid's working set then comes from
    /// dirty-log windows, which see writes only ([`crate::source::workingset`]).
    fn sample_accessed(&mut self, out: &mut PageBitmap) -> Result<Option<Duration>, EmbedError> {
        let _ = out;
        Ok(None)
    }
}

/// Forwards every call, so a caller can hand over `&mut vm` or a boxed VM and keep its own.
macro_rules! forward_migratable_vm {
    ($($ty:ty),*) => {$(
        impl<T: MigratableVm + ?Sized> MigratableVm for $ty {
            fn regions(&self) -> Vec<HostRegion> {
                (**self).regions()
            }
            fn start_dirty_log(&mut self) -> Result<(), EmbedError> {
                (**self).start_dirty_log()
            }
            fn harvest_dirty(&mut self, out: &mut PageBitmap) -> Result<(), EmbedError> {
                (**self).harvest_dirty(out)
            }
            fn arm_dirty_log(&mut self, first: u64, count: u64) -> Result<(), EmbedError> {
                (**self).arm_dirty_log(first, count)
            }
            fn arm_dirty_log_pages(&mut self, pages: &PageBitmap) -> Result<(), EmbedError> {
                (**self).arm_dirty_log_pages(pages)
            }
            fn pause(&mut self) -> Result<Duration, EmbedError> {
                (**self).pause()
            }
            fn save_state(&mut self) -> Result<Vec<u8>, EmbedError> {
                (**self).save_state()
            }
            fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError> {
                (**self).restore_state(blob)
            }
            fn resume(&mut self) -> Result<(), EmbedError> {
                (**self).resume()
            }
            fn untouched_pages(
                &self,
                first: u64,
                count: u64,
                out: &mut PageBitmap,
            ) -> Result<bool, EmbedError> {
                (**self).untouched_pages(first, count, out)
            }
            fn vcpu_of_thread(&self, thread_id: u32) -> Option<u32> {
                (**self).vcpu_of_thread(thread_id)
            }
            fn sample_accessed(
                &mut self,
                out: &mut PageBitmap,
            ) -> Result<Option<Duration>, EmbedError> {
                (**self).sample_accessed(out)
            }
        }
    )*};
}
forward_migratable_vm!(&mut T, Box<T>);

/// The destination's VM port: where received pages go, and the two effects the switch-over
/// has on the VM. The destination engine calls it itself, as the source engine calls
/// [`MigratableVm`] to pause and save, so both engines act on their VM the same way and a
/// simulated run goes through the same calls as a real one.
pub trait DestVm: super::PageSink {
    /// Loads the state blob the source saved (before [`DestVm::resume`]).
    fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError>;
    /// Starts the vCPUs here: from now on a missing page they touch is a network fault.
    fn resume(&mut self) -> Result<(), EmbedError>;
}

/// The dense page layout of a VM's regions.
pub fn layout_of(regions: &[HostRegion]) -> Result<Layout, EmbedError> {
    let spans: Vec<(u64, u64)> = regions.iter().map(|r| (r.guest_phys, r.size_bytes)).collect();
    Ok(Layout::new(&spans)?)
}

/// Host address of global page `page`, given the regions and their layout.
pub fn host_addr_of(regions: &[HostRegion], layout: &Layout, page: u64) -> Option<usize> {
    let (region, offset) = layout.locate(page)?;
    let base = regions.get(region as usize)?.host_addr;
    Some(base + offset as usize * crate::memory::PAGE_SIZE)
}

/// Global page index of a host address inside one of the regions.
pub fn page_of_host_addr(regions: &[HostRegion], layout: &Layout, addr: usize) -> Option<u64> {
    regions.iter().zip(layout.regions()).find_map(|(r, span)| {
        let offset = addr.checked_sub(r.host_addr)?;
        (offset < r.size_bytes as usize)
            .then(|| span.first_page + (offset / crate::memory::PAGE_SIZE) as u64)
    })
}
