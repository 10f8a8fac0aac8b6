//! The VM: guest memory as rust-vmm's `GuestMemoryMmap`, one KVM memory slot per region, one
//! vCPU in 32-bit protected mode with flat segments, and the progress device.
//!
//! A source (or reference) machine is loaded with the program and started; a destination
//! machine is only mapped: its memory stays untouched until the migration fills it, and its
//! vCPU starts from the state the source saved.

use crate::guest::{GuestSpec, CODE_GPA, PAGE_BYTES, PARAMS_GPA};
use crate::state::{self, CpuState, ProgressDevice, StateError};
use crate::vcpu::{VcpuError, VcpuThread};
use hybridmig::embed::HostRegion;
use hybridmig::memory::PageBitmap;
use kvm_bindings::{
    kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::time::Duration;
use thiserror::Error;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// Errors of the VM.
#[derive(Debug, Error)]
pub enum MachineError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: errno {errno}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The errno.
        errno: i32,
    },
    /// Mapping guest memory failed.
    #[error("mapping guest memory: {0}")]
    Memory(#[from] vm_memory::mmap::FromRangesError),
    /// Writing the program or its parameters into guest memory failed.
    #[error("loading the guest at {gpa:#x}: {source}")]
    Load {
        /// Where.
        gpa: u64,
        /// vm-memory's error.
        source: vm_memory::GuestMemoryError,
    },
    /// The vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The state blob was refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// An operation that needs a running (or not yet started) vCPU came at the wrong time.
    #[error("{op}: the vCPU is {state}")]
    VcpuState {
        /// The operation.
        op: &'static str,
        /// What the vCPU is.
        state: &'static str,
    },
    /// The state was refused on purpose (`--refuse-state`), as a VMM refuses a state from an
    /// incompatible host.
    #[error("the state was refused on purpose (--refuse-state)")]
    RefusedOnPurpose,
    /// The guest did not halt in time.
    #[error("the guest did not finish within {waited_ms} ms")]
    NotFinished {
        /// How long it was waited for.
        waited_ms: u64,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |e| MachineError::Kvm { what, errno: e.errno() }
}

/// The vCPU: not started yet (its fd and device state here), or running on its thread.
enum Vcpu {
    Ready(VcpuFd, ProgressDevice),
    Running(VcpuThread),
    /// Only while it moves from one to the other.
    Moving,
}

/// How long a pause may take before it is an error.
const PAUSE_LIMIT: Duration = Duration::from_secs(5);

/// One guest.
pub struct Machine {
    // Field order is drop order: the vCPU thread is stopped before the memory is unmapped.
    vcpu: Vcpu,
    vm: VmFd,
    memory: GuestMemoryMmap,
    spec: GuestSpec,
    dirty_logging: bool,
    refuse_state: bool,
}

impl Machine {
    /// Maps the guest's memory (anonymous, private, untouched) and creates the VM and its
    /// vCPU.
    pub fn new(spec: GuestSpec) -> Result<Self, MachineError> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let ranges: Vec<(GuestAddress, usize)> =
            spec.regions().iter().map(|&(gpa, len)| (GuestAddress(gpa), len as usize)).collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges)?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        let machine = Self {
            vcpu: Vcpu::Ready(vcpu, ProgressDevice::default()),
            vm,
            memory,
            spec,
            dirty_logging: false,
            refuse_state: false,
        };
        machine.set_slots(0)?;
        Ok(machine)
    }

    /// (Re-)registers region `i` as KVM slot `i`, with `flags`.
    fn set_slots(&self, flags: u32) -> Result<(), MachineError> {
        for (slot, region) in self.memory.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|source| MachineError::Load { gpa: region.start_addr().0, source })?;
            let mem = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the slot's host range is a mapping `self.memory` owns, which lives as
            // long as the VM (it is dropped after `vm`, see the field order).
            unsafe { self.vm.set_user_memory_region(mem) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// The regions for the migration engines, in guest-physical order.
    pub fn host_regions(&self) -> Vec<HostRegion> {
        self.memory
            .iter()
            .filter_map(|region| {
                let host = region.get_host_address(MemoryRegionAddress(0)).ok()?;
                // SAFETY: `self.memory` maps the region from creation until the machine is
                // dropped, and the machine outlives every engine built from these regions
                // (they are built and dropped inside one migration call that borrows it).
                Some(unsafe { HostRegion::new(region.start_addr().0, region.len(), host as usize) })
            })
            .collect()
    }

    /// Pages of guest memory in all.
    pub fn total_pages(&self) -> u64 {
        self.memory.iter().map(|r| r.len() / PAGE_BYTES).sum()
    }

    /// Writes the program and its parameters and sets the entry registers: a fresh guest.
    pub fn load_program(&mut self) -> Result<(), MachineError> {
        let Vcpu::Ready(vcpu, _) = &self.vcpu else {
            return Err(MachineError::VcpuState { op: "load the program", state: "running" });
        };
        let put = |gpa: u64, bytes: &[u8]| {
            self.memory
                .write_slice(bytes, GuestAddress(gpa))
                .map_err(|source| MachineError::Load { gpa, source })
        };
        put(CODE_GPA, &crate::guest::program())?;
        put(PARAMS_GPA, &self.spec.params())?;
        let mut cpu = CpuState {
            regs: vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
        };
        flat_protected_mode(&mut cpu);
        cpu.write(vcpu)?;
        Ok(())
    }

    /// Starts the vCPU, or lets a paused one run on.
    pub fn start_or_resume(&mut self) -> Result<(), MachineError> {
        match std::mem::replace(&mut self.vcpu, Vcpu::Moving) {
            Vcpu::Ready(fd, device) => {
                self.vcpu = Vcpu::Running(VcpuThread::start(fd, device, self.spec.min_pass)?)
            }
            Vcpu::Running(thread) => {
                thread.resume();
                self.vcpu = Vcpu::Running(thread);
            }
            Vcpu::Moving => return Err(MachineError::VcpuState { op: "start", state: "lost" }),
        }
        Ok(())
    }

    /// Stops the vCPU; returns how long it took.
    pub fn pause(&mut self) -> Result<Duration, MachineError> {
        match &self.vcpu {
            Vcpu::Running(thread) => Ok(thread.pause(PAUSE_LIMIT)?),
            Vcpu::Ready(..) | Vcpu::Moving => Ok(Duration::ZERO),
        }
    }

    /// The state blob of a paused (or halted) guest.
    pub fn save_state(&self) -> Result<Vec<u8>, MachineError> {
        let Vcpu::Running(thread) = &self.vcpu else {
            return Err(MachineError::VcpuState { op: "save the state", state: "not started" });
        };
        let (cpu, device) = thread
            .snapshot()
            .ok_or(MachineError::VcpuState { op: "save the state", state: "still running" })?;
        Ok(state::encode(&cpu, &device))
    }

    /// Makes `restore_state` refuse every blob: a drill of the cancelled hand-over.
    pub fn refuse_states(&mut self) {
        self.refuse_state = true;
    }

    /// Loads a state blob into a vCPU that has not started.
    pub fn restore_state(&mut self, blob: &[u8]) -> Result<(), MachineError> {
        if self.refuse_state {
            return Err(MachineError::RefusedOnPurpose);
        }
        let Vcpu::Ready(vcpu, device) = &mut self.vcpu else {
            return Err(MachineError::VcpuState { op: "restore the state", state: "running" });
        };
        let (cpu, restored) = state::decode(blob)?;
        cpu.write(vcpu)?;
        *device = restored;
        Ok(())
    }

    /// Turns KVM's dirty log on or off for every slot.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), MachineError> {
        self.set_slots(if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 })?;
        self.dirty_logging = on;
        Ok(())
    }

    /// ORs the pages written since the last call into `out` (dense page indices: slot by
    /// slot, each slot's pages after the previous slot's), and clears KVM's log.
    pub fn harvest_dirty(&mut self, out: &mut PageBitmap) -> Result<(), MachineError> {
        if !self.dirty_logging {
            return Ok(());
        }
        let mut first_page = 0u64;
        for (slot, region) in self.memory.iter().enumerate() {
            let words = self
                .vm
                .get_dirty_log(slot as u32, region.len() as usize)
                .map_err(kvm_err("KVM_GET_DIRTY_LOG"))?;
            out.or_words(first_page, &words);
            first_page += region.len() / PAGE_BYTES;
        }
        Ok(())
    }

    /// Waits up to `limit` for the guest to halt; returns the progress device's final state.
    pub fn wait_finished(&self, limit: Duration) -> Result<ProgressDevice, MachineError> {
        let Vcpu::Running(thread) = &self.vcpu else {
            return Err(MachineError::VcpuState { op: "wait for the guest", state: "not started" });
        };
        match thread.wait_ended(limit) {
            Some(Ok(())) => Ok(thread.device()),
            Some(Err(e)) => Err(e.into()),
            None => Err(MachineError::NotFinished { waited_ms: limit.as_millis() as u64 }),
        }
    }

    /// The progress device as the guest left it so far (the number of passes done).
    pub fn progress(&self) -> ProgressDevice {
        match &self.vcpu {
            Vcpu::Ready(_, device) => *device,
            Vcpu::Running(thread) => thread.device(),
            Vcpu::Moving => ProgressDevice::default(),
        }
    }

    /// The library's memory digest of the whole guest memory: what the migration's Done
    /// frame compares, computed here over the same pages. Reads every page: on a destination,
    /// only once the migration placed them all.
    pub fn digest(&self) -> u64 {
        let crcs: Vec<u32> = self
            .host_regions()
            .iter()
            .flat_map(|r| {
                // SAFETY: the region is mapped for the machine's life (see `host_regions`),
                // and the vCPU has halted, so nothing writes it while it is read.
                let bytes = unsafe {
                    std::slice::from_raw_parts(r.host_addr() as *const u8, r.size_bytes as usize)
                };
                bytes.chunks_exact(PAGE_BYTES as usize).map(crc32fast::hash).collect::<Vec<_>>()
            })
            .collect();
        hybridmig::ports::memory_digest(&crcs)
    }

    /// The 32-bit word at guest-physical `gpa` (for spot checks of a finished guest).
    pub fn read_u32(&self, gpa: u64) -> Option<u32> {
        self.memory.read_obj::<u32>(GuestAddress(gpa)).ok()
    }
}

/// Flat 4 GiB code and data segments, protection on, paging off, entry at the program.
fn flat_protected_mode(cpu: &mut CpuState) {
    const CR0_PE: u64 = 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_PG: u64 = 1 << 31;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment { selector: 0x10, type_: 0x3, ..code }; // read/write, accessed
    let s = &mut cpu.sregs;
    s.cs = code;
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.cr0 = (s.cr0 & !CR0_PG) | CR0_PE | CR0_ET;
    cpu.regs = kvm_bindings::kvm_regs { rip: CODE_GPA, rflags: 0x2, ..Default::default() };
}
