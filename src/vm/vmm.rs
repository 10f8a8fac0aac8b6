//! The [`Vm`]: a KVM VM with its guest memory, vCPU threads and devices.
//!
//! Built by [`Vm::new`] (memory initialised, ready to start) or [`Vm::new_incoming`] (memory
//! mapped but untouched, for a migration to fill). The migration engines drive it through
//! pause/resume, state save/restore, dirty logging and the memory regions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::config::VmConfig;
use super::devices::{ControlVcpu, Devices};
use super::dirtylog;
use super::error::VmError;
use super::guest::digest::combine_digests;
use super::guest::{asm, fill, params};
use super::layout::{params_gpa, Layout, CODE_GPA, CODE_MAX_BYTES, DATA_GPA, PAGE_BYTES};
use super::memory::{locate, GuestRegion};
use super::pagemap::Pagemap;
use super::setup;
use super::state::{self, VmState};
use super::vcpu::{self, Control, Kick, VcpuRun, VcpuThread, Want};
use crate::memory::PageBitmap as DirtyBitmap;

/// How long `pause` waits for the vCPUs before giving up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lowest TSC rate that keeps the guest's pacing division in range (see `guest::asm`).
const MIN_PACING_TSC_HZ: u64 = 1 << 29;

/// A small KVM virtual machine running one of the guest workloads.
pub struct Vm {
    cfg: VmConfig,
    layout: Layout,
    ctl: Arc<Control>,
    kicks: Vec<Arc<Kick>>,
    vcpu_fds: Vec<Arc<Mutex<VcpuFd>>>,
    threads: Vec<Option<JoinHandle<()>>>,
    devices: Arc<Mutex<Devices>>,
    vmm_dirty: Mutex<DirtyBitmap>,
    msr_list: Vec<u32>,
    dirty_logging: bool,
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with initially-set bitmaps is on (see `dirtylog`).
    manual_protect: bool,
    /// With manual protection: pages write-protected for the log since it was turned on.
    armed: DirtyBitmap,
    /// `/proc/self/pagemap`, for pages never touched; None where it cannot be opened.
    pagemap: Option<Pagemap>,
    started: bool,
    vm: VmFd,
    _kvm: Kvm,
    // Last: the mappings must outlive the VM fd and the vCPU threads.
    regions: Vec<GuestRegion>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("cfg", &self.cfg).field("started", &self.started).finish()
    }
}

impl Vm {
    /// A VM with its memory initialised (page tables, code, parameters, pre-filled data),
    /// vCPUs created with their entry state, not yet running.
    pub fn new(cfg: &VmConfig) -> Result<Vm, VmError> {
        let mut vm = Vm::create(cfg)?;
        let tsc_hz = vm.tsc_hz()?;
        vm.init_memory(tsc_hz)?;
        for (i, fd) in vm.vcpu_fds.iter().enumerate() {
            setup::set_initial_state(&lock(fd), i as u32)?;
        }
        Ok(vm)
    }

    /// A VM for an incoming migration: same layout, memory mapped but never touched by the
    /// VMM (it will be registered with userfaultfd and filled by the migration), vCPUs created
    /// with CPUID set, not running, state not set.
    pub fn new_incoming(cfg: &VmConfig) -> Result<Vm, VmError> {
        Vm::create(cfg)
    }

    fn create(cfg: &VmConfig) -> Result<Vm, VmError> {
        cfg.validate()?;
        vcpu::install_kick_handler()?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(VmError::CreateVm)?;
        state::check_xsave_size(&vm)?;
        // Before any slot logs: the capability changes how logging starts.
        let manual_protect = dirtylog::enable_manual_protect(&vm);
        let layout = Layout::new(cfg);
        let regions = layout.slots.iter().map(GuestRegion::map).collect::<Result<Vec<_>, _>>()?;
        for r in &regions {
            register_slot(&vm, r, 0)?;
        }
        let cpuid = setup::supported_cpuid(&kvm)?;
        let mut vcpu_fds = Vec::new();
        let mut kicks = Vec::new();
        for i in 0..cfg.vcpus {
            let mut fd = vm
                .create_vcpu(u64::from(i))
                .map_err(|source| VmError::CreateVcpu { vcpu: i, source })?;
            setup::set_cpuid(&fd, i, &cpuid)?;
            kicks.push(Arc::new(Kick::new(&mut fd)));
            vcpu_fds.push(Arc::new(Mutex::new(fd)));
        }
        // Probe on a vCPU that has not run; the result is cached per process.
        let msr_list = state::saveable_msrs(&kvm, &lock(&vcpu_fds[0]));
        Ok(Vm {
            cfg: cfg.clone(),
            ctl: Arc::new(Control::new(cfg.vcpus)),
            kicks,
            threads: (0..cfg.vcpus).map(|_| None).collect(),
            vcpu_fds,
            devices: Arc::new(Mutex::new(Devices::new(cfg.vcpus))),
            vmm_dirty: Mutex::new(DirtyBitmap::new(layout.total_pages())),
            armed: DirtyBitmap::new(layout.total_pages()),
            layout,
            msr_list,
            dirty_logging: false,
            manual_protect,
            pagemap: Pagemap::open().ok(),
            started: false,
            vm,
            _kvm: kvm,
            regions,
        })
    }

    fn tsc_hz(&self) -> Result<u64, VmError> {
        let khz = lock(&self.vcpu_fds[0]).get_tsc_khz();
        let paced = self.cfg.workload.pace_ops_per_sec.is_some();
        match khz {
            Ok(k) if !paced || u64::from(k) * 1000 >= MIN_PACING_TSC_HZ => Ok(u64::from(k) * 1000),
            Ok(k) => Err(VmError::TscKhz { vcpu: 0, khz: k, detail: "too slow for pacing".into() }),
            Err(_) if !paced => Ok(1),
            Err(e) => Err(VmError::TscKhz { vcpu: 0, khz: 0, detail: e.to_string() }),
        }
    }

    fn init_memory(&mut self, tsc_hz: u64) -> Result<(), VmError> {
        let code = asm::program(self.cfg.workload.kind, CODE_GPA)?;
        if code.len() as u64 > CODE_MAX_BYTES {
            return Err(VmError::CodeTooLarge {
                len_bytes: code.len() as u64,
                max_bytes: CODE_MAX_BYTES,
            });
        }
        // SAFETY: no vCPU has run and no other reference to the system region exists.
        let sys = unsafe { self.regions[0].as_mut_slice() };
        setup::write_tables(sys, &self.layout);
        if let Some(pt) = self.regions.last() {
            // SAFETY: as above; the page-table region is the last slot.
            setup::write_data_page_tables(unsafe { pt.as_mut_slice() }, &self.layout);
        }
        sys[CODE_GPA as usize..CODE_GPA as usize + code.len()].copy_from_slice(&code);
        for (i, slice) in self.layout.slices.iter().enumerate() {
            let page = params::encode(&self.cfg, slice, i as u32, tsc_hz);
            let at = params_gpa(i as u32) as usize;
            sys[at..at + page.len()].copy_from_slice(&page);
        }
        if self.cfg.workload.kind.host_prefilled() {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            for r in self.data_regions() {
                // SAFETY: as above, for each data region in turn.
                let mem = unsafe { r.as_mut_slice() };
                fill::fill_range(self.cfg.workload.seed, r.first_page(), mem, threads);
            }
        }
        Ok(())
    }

    /// The data regions (not the system region, not the page-table region).
    fn data_regions(&self) -> &[GuestRegion] {
        &self.regions[1..self.regions.len() - 1]
    }

    /// ORs into `out` the data pages (gpa / 4096) the guest touched, read or written, since the
    /// last call, from the Accessed bits of its page tables; clears the bits and drops KVM's
    /// mappings so the next touch sets them again. Pauses a running VM for the duration;
    /// returns how long the guest was stopped.
    pub fn harvest_accessed(&mut self, out: &mut DirtyBitmap) -> Result<Duration, VmError> {
        let started = std::time::Instant::now();
        let running = self.started && !self.is_held();
        if running {
            self.pause()?;
        }
        let first_data_page = DATA_GPA / PAGE_BYTES;
        let data_pages = self.cfg.mem_bytes / PAGE_BYTES;
        if let Some(pt) = self.regions.last() {
            // SAFETY: every vCPU is stopped, so nothing else writes the page tables now.
            let bytes = unsafe { pt.as_mut_slice() };
            let mut own = lock(&self.vmm_dirty);
            for (k, entry) in bytes.chunks_exact_mut(8).take(data_pages as usize).enumerate() {
                let pte = u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]));
                if pte & setup::PTE_ACCESSED != 0 {
                    out.set(first_data_page + k as u64);
                    entry.copy_from_slice(&(pte & !setup::PTE_ACCESSED).to_le_bytes());
                    // A VMM write into guest memory: a migration must see the page as dirty.
                    own.set(pt.first_page() + (k * 8 / PAGE_BYTES as usize) as u64);
                }
            }
        }
        self.zap_data_mappings()?;
        if running {
            self.resume()?;
        }
        Ok(started.elapsed())
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// The guest physical layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Guest RAM regions (system region first), in guest physical order.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    /// Total guest pages (system + data); the size a [`DirtyBitmap`] for this VM needs.
    pub fn total_pages(&self) -> u64 {
        self.layout.total_pages()
    }

    /// Spawns the vCPU threads (vCPUs restored as finished stay stopped).
    pub fn start(&mut self) -> Result<(), VmError> {
        if self.started {
            return Err(self.wrong_state("start", "a VM not yet started"));
        }
        self.started = true;
        for i in 0..self.cfg.vcpus {
            let mut st = self.ctl.lock();
            if st.vcpus[i as usize] != VcpuRun::NotStarted {
                continue;
            }
            st.vcpus[i as usize] = VcpuRun::Running;
            drop(st);
            let t = VcpuThread {
                index: i,
                fd: self.vcpu_fds[i as usize].clone(),
                kick: self.kicks[i as usize].clone(),
                ctl: self.ctl.clone(),
                devices: self.devices.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || t.run())
                .map_err(|source| VmError::Spawn { vcpu: i, source })?;
            self.threads[i as usize] = Some(h);
        }
        Ok(())
    }

    /// The vCPU whose thread has kernel id `tid` (as userfaultfd names a faulting thread).
    pub fn vcpu_of_thread(&self, tid: u32) -> Option<u32> {
        self.kicks.iter().position(|k| k.runs_on(tid)).map(|i| i as u32)
    }

    /// Whether [`Vm::start`] has run (the vCPUs exist and run unless paused or finished).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Pauses every vCPU (each completes its pending I/O first); returns the pause latency:
    /// from the request to the last vCPU's acknowledgement.
    pub fn pause(&mut self) -> Result<Duration, VmError> {
        if !self.started {
            return Err(self.wrong_state("pause", "a started VM"));
        }
        vcpu::pause_all(&self.ctl, &self.kicks, PAUSE_TIMEOUT)
    }

    /// Resumes paused vCPUs.
    pub fn resume(&mut self) -> Result<(), VmError> {
        if !self.started {
            return Err(self.wrong_state("resume", "a started VM"));
        }
        vcpu::resume_all(&self.ctl, &self.kicks);
        Ok(())
    }

    /// Whether every vCPU is quiet (paused, finished, failed or never started).
    pub fn is_quiet(&self) -> bool {
        self.ctl.lock().vcpus.iter().all(VcpuRun::is_quiet)
    }

    /// Whether every vCPU is quiet and will stay so until the next `resume`: a vCPU still
    /// marked Paused after a resume is about to run again, so it does not count.
    fn is_held(&self) -> bool {
        let st = self.ctl.lock();
        st.vcpus.iter().all(VcpuRun::is_quiet)
            && (st.want == Want::Pause || !st.vcpus.contains(&VcpuRun::Paused))
    }

    /// Captures vCPU and device state; only while paused, finished or not started.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        if !self.is_held() {
            return Err(VmError::WrongRunState {
                op: "save_state",
                needs: "paused, finished or not-started vCPUs",
                actual: "running",
            });
        }
        let mut vcpus = Vec::with_capacity(self.vcpu_fds.len());
        for (i, fd) in self.vcpu_fds.iter().enumerate() {
            vcpus.push(state::capture_vcpu(&lock(fd), i as u32, &self.msr_list)?);
        }
        let devices = lock(&self.devices).save();
        Ok(VmState { mem_bytes: self.cfg.mem_bytes, vcpus, devices })
    }

    /// Restores vCPU and device state; only before `start`. Memory must already hold the
    /// source's contents (or be registered with userfaultfd to fetch them).
    pub fn restore_state(&mut self, s: &VmState) -> Result<(), VmError> {
        if self.started {
            return Err(self.wrong_state("restore_state", "a VM not yet started"));
        }
        let check = |what, blob: u64, vm: u64| {
            if blob == vm {
                Ok(())
            } else {
                Err(state::StateError::Mismatch { what, blob, vm })
            }
        };
        check("vcpus", s.vcpus.len() as u64, u64::from(self.cfg.vcpus))?;
        check("mem_bytes", s.mem_bytes, self.cfg.mem_bytes)?;
        check("control devices", s.devices.control.len() as u64, u64::from(self.cfg.vcpus))?;
        for (i, (fd, v)) in self.vcpu_fds.iter().zip(&s.vcpus).enumerate() {
            state::restore_vcpu(&lock(fd), i as u32, v)?;
        }
        lock(&self.devices).restore(&s.devices);
        let mut st = self.ctl.lock();
        for (run, c) in st.vcpus.iter_mut().zip(&s.devices.control) {
            *run = match (c.done, c.digest) {
                (true, Some(d)) => VcpuRun::Finished(d),
                _ => VcpuRun::NotStarted,
            };
        }
        Ok(())
    }

    /// Turns KVM dirty logging on or off on every slot.
    ///
    /// With manual protection ([`Vm::manual_dirty_protect`]) turning it on protects nothing:
    /// a page's writes are reported only once [`Vm::arm_dirty_log`] has named it. Without it,
    /// KVM write-protects every mapped page now and every page counts as armed.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), VmError> {
        let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        for r in &self.regions {
            register_slot(&self.vm, r, flags)?;
        }
        self.dirty_logging = on;
        self.armed.clear_all();
        Ok(())
    }

    /// Whether dirty logging defers write protection to [`Vm::arm_dirty_log`]
    /// (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with initially-set bitmaps).
    pub fn manual_dirty_protect(&self) -> bool {
        self.manual_protect
    }

    /// Write-protects pages `first..first + count` (global) for the dirty log, those not armed
    /// yet, so that their next write shows in [`Vm::harvest_dirty`]. A page armed before keeps
    /// its dirty bit: clearing it again would lose a write not yet harvested. Does nothing
    /// without manual protection (every page is armed when logging starts) or with logging off.
    pub fn arm_dirty_log(&mut self, first: u64, count: u64) -> Result<(), VmError> {
        let end = first.saturating_add(count);
        self.arm_where(first, end, |word_first| span_bits(first, end, word_first))
    }

    /// As [`Vm::arm_dirty_log`], for the pages set in `pages`: one KVM_CLEAR_DIRTY_LOG per
    /// slot however scattered they are. KVM's work grows with the pages armed, so arming a
    /// working set this way costs a fraction of arming all of memory.
    pub fn arm_dirty_log_pages(&mut self, pages: &DirtyBitmap) -> Result<(), VmError> {
        self.arm_where(0, u64::MAX, |word_first| pages.bits_at(word_first))
    }

    /// Arms, slot by slot, the pages of global range `first..end` whose bits `wanted(p)` gives
    /// for the 64 global pages from `p` (the range KVM gets is trimmed to the words that hold
    /// any). Only the slot words that overlap the range are looked at: a block of 2,048 pages
    /// is 32 words, not the 4,096 of a 1 GiB slot.
    fn arm_where(
        &mut self,
        first: u64,
        end: u64,
        wanted: impl Fn(u64) -> u64,
    ) -> Result<(), VmError> {
        if !self.manual_protect || !self.dirty_logging {
            return Ok(());
        }
        for r in &self.regions {
            let (base, pages) = (r.first_page(), r.pages());
            let (lo_page, hi_page) = (first.max(base), end.min(base + pages));
            if lo_page >= hi_page {
                continue;
            }
            // Slot-relative words; KVM takes ranges that start on a multiple of 64 pages.
            let word0 = (lo_page - base) / 64;
            let mask: Vec<u64> = (word0 * 64..hi_page - base)
                .step_by(64)
                .map(|k| wanted(base + k) & span_bits(0, pages, k) & !self.armed.bits_at(base + k))
                .collect();
            let Some(lo) = mask.iter().position(|&w| w != 0) else {
                continue;
            };
            let hi = mask.iter().rposition(|&w| w != 0).unwrap_or(lo) + 1;
            let start = (word0 + lo as u64) * 64;
            let count = (((word0 + hi as u64) * 64).min(pages) - start) as u32;
            dirtylog::clear_dirty_log(&self.vm, r.slot, start, count, &mask[lo..hi]).map_err(
                |source| VmError::ClearDirtyLog {
                    slot: r.slot,
                    first_page: start,
                    pages: count,
                    source,
                },
            )?;
            self.armed.or_words(base + start, &mask[lo..hi]);
        }
        Ok(())
    }

    /// Calls `mark(page)` for every global page in `first..first + count` that this process
    /// never touched (it reads as zero; see [`Pagemap`]); false when pagemap is unavailable.
    /// A page may be written right after it was reported: arm it for the dirty log first.
    pub fn untouched_pages(
        &self,
        first: u64,
        count: u64,
        mut mark: impl FnMut(u64),
    ) -> Result<bool, VmError> {
        let Some(pagemap) = &self.pagemap else {
            return Ok(false);
        };
        for r in &self.regions {
            let base = r.first_page();
            let (lo, hi) = (first.max(base), first.saturating_add(count).min(base + r.pages()));
            if lo >= hi {
                continue;
            }
            let addr = r.as_ptr() as usize + ((lo - base) * PAGE_BYTES) as usize;
            pagemap
                .untouched(addr, hi - lo, |i| mark(lo + i))
                .map_err(|source| VmError::Pagemap { first_page: lo, pages: hi - lo, source })?;
        }
        Ok(true)
    }

    /// Drops KVM's cached mappings of the data slots (delete and re-add each slot), so that
    /// the next guest access to every data page walks the guest page tables again and sets
    /// their Accessed bits. The VM must be paused: between the two ioctls the range has no slot.
    pub fn zap_data_mappings(&mut self) -> Result<(), VmError> {
        if self.started && !self.is_held() {
            return Err(self.wrong_state("zap_data_mappings", "paused"));
        }
        let flags = if self.dirty_logging { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        for r in self.data_regions() {
            register_slot_sized(&self.vm, r, 0, 0)?;
            register_slot(&self.vm, r, flags)?;
        }
        Ok(())
    }

    /// ORs into `out` the pages KVM logged as dirty since the last harvest (clearing KVM's
    /// log) and the pages the VMM itself wrote (clearing that set too). With manual
    /// protection only armed pages are reported (see [`Vm::arm_dirty_log`]).
    pub fn harvest_dirty(&mut self, out: &mut DirtyBitmap) -> Result<(), VmError> {
        if out.len() < self.total_pages() {
            return Err(VmError::BitmapSize {
                have_pages: out.len(),
                need_pages: self.total_pages(),
            });
        }
        if self.dirty_logging {
            for r in &self.regions {
                let mut words = self
                    .vm
                    .get_dirty_log(r.slot, r.len())
                    .map_err(|source| VmError::DirtyLog { slot: r.slot, source })?;
                if self.manual_protect {
                    // The bits of pages never armed are still the initial ones; the pages
                    // reported are cleared and so re-protected for their next write.
                    for (i, word) in words.iter_mut().enumerate() {
                        *word &= self.armed.bits_at(r.first_page() + 64 * i as u64);
                    }
                    if words.iter().any(|&w| w != 0) {
                        let pages = r.pages() as u32;
                        dirtylog::clear_dirty_log(&self.vm, r.slot, 0, pages, &words).map_err(
                            |source| VmError::ClearDirtyLog {
                                slot: r.slot,
                                first_page: 0,
                                pages,
                                source,
                            },
                        )?;
                    }
                }
                out.or_words(r.first_page(), &words);
            }
        }
        let mut own = lock(&self.vmm_dirty);
        out.union_with(&own);
        own.clear_all();
        Ok(())
    }

    /// Writes `bytes` at guest physical `gpa` from the VMM, recording the pages as dirty.
    pub fn write_guest(&self, gpa: u64, bytes: &[u8]) -> Result<(), VmError> {
        let (r, at) = locate(&self.regions, gpa, bytes.len() as u64)?;
        // SAFETY: `locate` checked that [at, at + len) is inside the region's mapping; guest
        // memory is plain bytes, so a racing vCPU can at worst see a torn value.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), r.as_ptr().add(at), bytes.len());
        }
        let mut own = lock(&self.vmm_dirty);
        let first = gpa / PAGE_BYTES;
        let last = (gpa + bytes.len().max(1) as u64 - 1) / PAGE_BYTES;
        for p in first..=last {
            own.set(p);
        }
        Ok(())
    }

    /// Reads an 8-byte little-endian word of guest memory atomically (it may be changing).
    pub fn read_guest_u64(&self, gpa: u64) -> Result<u64, VmError> {
        let (r, at) = locate(&self.regions, gpa & !7, 8)?;
        // SAFETY: the 8 aligned bytes are inside the mapping (checked by `locate`; regions
        // start page-aligned), and the guest writes them with aligned 8-byte stores, so an
        // atomic view is sound.
        let word = unsafe { AtomicU64::from_ptr(r.as_ptr().add(at).cast::<u64>()) };
        Ok(word.load(Ordering::Relaxed))
    }

    /// Ops done by each vCPU, sampled from guest memory. On an incoming VM this reads the
    /// system region, which must have been placed first.
    pub fn ops_per_vcpu(&self) -> Vec<u64> {
        (0..self.cfg.vcpus)
            .map(|i| self.read_guest_u64(params_gpa(i) + params::off::OPS as u64).unwrap_or(0))
            .collect()
    }

    /// Host addresses of the per-vCPU op counters, for samplers that run while another
    /// thread holds the VM (the migration drivers). Each is an aligned u64 in guest memory.
    pub fn progress_counter_addrs(&self) -> Vec<usize> {
        (0..self.cfg.vcpus)
            .filter_map(|i| {
                let gpa = params_gpa(i) + params::off::OPS as u64;
                let r = self.regions.iter().find(|r| r.contains(gpa))?;
                Some(r.as_ptr() as usize + (gpa - r.guest_phys) as usize)
            })
            .collect()
    }

    /// Sum of [`Vm::ops_per_vcpu`].
    pub fn ops_done(&self) -> u64 {
        self.ops_per_vcpu().iter().sum()
    }

    /// The accumulator and digest the guest of vCPU `index` stored before reporting.
    pub fn guest_result(&self, index: u32) -> Result<(u64, u64), VmError> {
        let base = params_gpa(index);
        Ok((
            self.read_guest_u64(base + params::off::RESULT_ACC as u64)?,
            self.read_guest_u64(base + params::off::RESULT_DIGEST as u64)?,
        ))
    }

    /// Run state of every vCPU.
    pub fn vcpu_states(&self) -> Vec<VcpuRun> {
        self.ctl.lock().vcpus.clone()
    }

    /// Control-device state of vCPU `index` (phase, digest).
    pub fn control(&self, index: u32) -> Option<ControlVcpu> {
        lock(&self.devices).control(index)
    }

    /// Serial console output so far.
    pub fn serial_output(&self) -> Vec<u8> {
        lock(&self.devices).serial_output().to_vec()
    }

    /// Waits until every vCPU finished (returns the VM digest), one failed (error), or the
    /// timeout passed (`None`).
    pub fn wait_finished(&mut self, timeout: Duration) -> Result<Option<u64>, VmError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.ctl.lock();
        loop {
            if let Some((i, VcpuRun::Failed(f))) =
                st.vcpus.iter().enumerate().find(|(_, r)| matches!(r, VcpuRun::Failed(_)))
            {
                return Err(VmError::Vcpu { vcpu: i as u32, fault: f.clone() });
            }
            if let Some(d) = digests(&st.vcpus) {
                return Ok(Some(combine_digests(&d)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            st = self
                .ctl
                .cv
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Whether every vCPU reported its digest.
    pub fn is_finished(&self) -> bool {
        digests(&self.ctl.lock().vcpus).is_some()
    }

    /// Guest page numbers of the true hot set (hotcold; empty for other workloads).
    pub fn hot_pages(&self) -> Vec<u64> {
        self.layout
            .slices
            .iter()
            .flat_map(|s| (s.first_page + s.hot_start)..(s.first_page + s.hot_start + s.hot_pages))
            .collect()
    }

    /// Guest page numbers of the write-hot subset of the hot set.
    pub fn write_hot_pages(&self) -> Vec<u64> {
        self.layout
            .slices
            .iter()
            .flat_map(|s| {
                (s.first_page + s.hot_start)..(s.first_page + s.hot_start + s.write_hot_pages)
            })
            .collect()
    }

    /// Guest page numbers of all workload data (every vCPU's slice).
    pub fn workload_pages(&self) -> std::ops::Range<u64> {
        let first = DATA_GPA / PAGE_BYTES;
        first..first + self.cfg.mem_bytes / PAGE_BYTES
    }

    fn wrong_state(&self, op: &'static str, needs: &'static str) -> VmError {
        let actual = if self.started { "started" } else { "not started" };
        VmError::WrongRunState { op, needs, actual }
    }
}

fn digests(v: &[VcpuRun]) -> Option<Vec<u64>> {
    v.iter().map(|r| if let VcpuRun::Finished(d) = r { Some(*d) } else { None }).collect()
}

impl Drop for Vm {
    fn drop(&mut self) {
        {
            let mut st = self.ctl.lock();
            st.want = Want::Stop;
            for (k, run) in self.kicks.iter().zip(&st.vcpus) {
                k.request_pause(*run == VcpuRun::Running);
            }
            self.ctl.cv.notify_all();
        }
        for (i, t) in self.threads.iter_mut().enumerate() {
            let Some(h) = t.take() else { continue };
            // Re-kick until the thread leaves: it may have been about to enter KVM_RUN.
            while !h.is_finished() {
                let st = self.ctl.lock();
                if st.vcpus[i] == VcpuRun::Running {
                    self.kicks[i].request_pause(true);
                }
                drop(st);
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = h.join();
        }
    }
}

fn register_slot(vm: &VmFd, r: &GuestRegion, flags: u32) -> Result<(), VmError> {
    register_slot_sized(vm, r, r.size_bytes, flags)
}

/// KVM_SET_USER_MEMORY_REGION for `r`'s slot with `size_bytes` (0 deletes the slot).
fn register_slot_sized(
    vm: &VmFd,
    r: &GuestRegion,
    size_bytes: u64,
    flags: u32,
) -> Result<(), VmError> {
    let region = kvm_userspace_memory_region {
        slot: r.slot,
        flags,
        guest_phys_addr: r.guest_phys,
        memory_size: size_bytes,
        userspace_addr: r.as_ptr() as u64,
    };
    // SAFETY: the host range is a live mapping of exactly `size_bytes` owned by the Vm, which
    // keeps it mapped until after the VM fd is closed (field order) and the threads are joined.
    unsafe { vm.set_user_memory_region(region) }.map_err(|source| VmError::SetMemoryRegion {
        slot: r.slot,
        flags,
        source,
    })
}

/// The bits of `lo..hi` within the 64 pages from `word_first` (bit `i` is page
/// `word_first + i`).
fn span_bits(lo: u64, hi: u64, word_first: u64) -> u64 {
    let from = lo.saturating_sub(word_first).min(64);
    let to = hi.saturating_sub(word_first).min(64);
    if from >= to {
        return 0;
    }
    let high = if to == 64 { u64::MAX } else { (1u64 << to) - 1 };
    high & !((1u64 << from) - 1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::span_bits;

    #[test]
    fn span_bits_covers_exactly_the_range() {
        assert_eq!(span_bits(0, 64, 0), u64::MAX);
        assert_eq!(span_bits(3, 5, 0), 0b11000);
        assert_eq!(span_bits(60, 70, 64), 0b11_1111);
        assert_eq!(span_bits(60, 70, 0), 0xf << 60);
        assert_eq!(span_bits(10, 20, 128), 0, "range before the word");
        assert_eq!(span_bits(200, 300, 64), 0, "range after the word");
    }
}
