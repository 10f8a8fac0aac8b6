//! The VMM's error type: one variant per failing call, naming the vCPU, slot, port or RIP.

use kvm_ioctls::Error as KvmError;

use super::config::ConfigError;
use super::devices::DeviceError;
use super::guest::asm::AsmError;
use super::memory::MemoryError;
use super::state::StateError;

/// Why a vCPU thread stopped with an error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VcpuFault {
    /// The guest triple-faulted (there is no IDT, so any exception ends here).
    #[error("guest shutdown (triple fault) at rip {rip:#x}")]
    Shutdown {
        /// Guest RIP after the fault (as KVM reports it).
        rip: u64,
    },
    /// The guest touched a port without a device, or misused the control device.
    #[error("port I/O at rip {rip:#x}: {source}")]
    Port {
        /// Guest RIP.
        rip: u64,
        /// The device model's complaint.
        source: DeviceError,
    },
    /// The guest touched unmapped guest physical memory (an MMIO exit).
    #[error("MMIO {dir} at guest physical {addr:#x} (rip {rip:#x})")]
    Mmio {
        /// "read" or "write".
        dir: &'static str,
        /// Guest physical address.
        addr: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// KVM could not enter the guest.
    #[error("VM entry failed: hardware reason {reason:#x} (rip {rip:#x})")]
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// Any other exit reason.
    #[error("unexpected exit {exit} at rip {rip:#x}")]
    UnexpectedExit {
        /// Debug text of the exit.
        exit: String,
        /// Guest RIP.
        rip: u64,
    },
    /// KVM_RUN returned an error other than EINTR/EAGAIN.
    #[error("KVM_RUN failed: errno {errno}")]
    Run {
        /// The errno.
        errno: i32,
    },
}

impl VcpuFault {
    /// The same fault with its RIP filled in (exits are classified before RIP is read).
    pub(crate) fn with_rip(mut self, at: u64) -> VcpuFault {
        match &mut self {
            VcpuFault::Shutdown { rip }
            | VcpuFault::Mmio { rip, .. }
            | VcpuFault::FailEntry { rip, .. }
            | VcpuFault::UnexpectedExit { rip, .. } => *rip = at,
            VcpuFault::Port { .. } | VcpuFault::Run { .. } => {}
        }
        self
    }
}

/// Errors of the VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// Guest memory could not be set up or a range is outside it.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest program could not be assembled.
    #[error(transparent)]
    Asm(#[from] AsmError),
    /// The guest program is larger than its place in the system region.
    #[error("guest code is {len_bytes} bytes, at most {max_bytes} fit")]
    CodeTooLarge {
        /// Program size.
        len_bytes: u64,
        /// Room in the layout.
        max_bytes: u64,
    },
    /// Opening /dev/kvm failed.
    #[error("opening /dev/kvm failed: {0}")]
    OpenKvm(#[source] KvmError),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(#[source] KvmError),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} (flags {flags:#x}) failed: {source}")]
    SetMemoryRegion {
        /// Slot.
        slot: u32,
        /// Flags passed.
        flags: u32,
        /// errno.
        source: KvmError,
    },
    /// KVM_CREATE_VCPU failed.
    #[error("KVM_CREATE_VCPU {vcpu} failed: {source}")]
    CreateVcpu {
        /// vCPU index.
        vcpu: u32,
        /// errno.
        source: KvmError,
    },
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    GetCpuid(#[source] KvmError),
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2 on vCPU {vcpu} failed: {source}")]
    SetCpuid {
        /// vCPU index.
        vcpu: u32,
        /// errno.
        source: KvmError,
    },
    /// KVM_GET_TSC_KHZ failed or reported a TSC too slow for pacing.
    #[error("vCPU {vcpu}: TSC frequency unusable ({khz} kHz): {detail}")]
    TscKhz {
        /// vCPU index.
        vcpu: u32,
        /// Reported frequency (0 when the ioctl failed).
        khz: u32,
        /// What went wrong.
        detail: String,
    },
    /// Setting the initial registers failed.
    #[error("setting initial {what} of vCPU {vcpu} failed: {source}")]
    InitRegs {
        /// "regs" or "sregs".
        what: &'static str,
        /// vCPU index.
        vcpu: u32,
        /// errno.
        source: KvmError,
    },
    /// Registering the kick signal handler failed.
    #[error("registering the vCPU kick signal handler failed: {0}")]
    Signal(String),
    /// Spawning a vCPU thread failed.
    #[error("spawning the thread of vCPU {vcpu} failed: {source}")]
    Spawn {
        /// vCPU index.
        vcpu: u32,
        /// OS error.
        source: std::io::Error,
    },
    /// A vCPU stopped with an error.
    #[error("vCPU {vcpu}: {fault}")]
    Vcpu {
        /// vCPU index.
        vcpu: u32,
        /// What happened.
        fault: VcpuFault,
    },
    /// The call needs a VM in another run state.
    #[error("{op} needs {needs}, but the VM is {actual}")]
    WrongRunState {
        /// The operation.
        op: &'static str,
        /// What it needs.
        needs: &'static str,
        /// What it found.
        actual: &'static str,
    },
    /// vCPUs did not acknowledge a pause in time.
    #[error("vCPU {vcpu} did not acknowledge the pause within {waited_ms} ms")]
    PauseTimeout {
        /// The first vCPU still running.
        vcpu: u32,
        /// How long we waited.
        waited_ms: u64,
    },
    /// Capturing or restoring vCPU state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// KVM_GET_DIRTY_LOG failed.
    #[error("KVM_GET_DIRTY_LOG for slot {slot} failed: {source}")]
    DirtyLog {
        /// Slot.
        slot: u32,
        /// errno.
        source: KvmError,
    },
    /// KVM_CLEAR_DIRTY_LOG (re-protecting pages for the dirty log) failed.
    #[error("KVM_CLEAR_DIRTY_LOG for slot {slot}, pages {first_page}+{pages}, failed: {source}")]
    ClearDirtyLog {
        /// Slot.
        slot: u32,
        /// First page of the range, slot-relative.
        first_page: u64,
        /// Pages in the range.
        pages: u32,
        /// OS error.
        source: std::io::Error,
    },
    /// Reading /proc/self/pagemap for untouched pages failed.
    #[error("/proc/self/pagemap for guest pages {first_page}+{pages}: {source}")]
    Pagemap {
        /// First global page asked about.
        first_page: u64,
        /// Pages asked about.
        pages: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// A dirty bitmap does not cover guest RAM.
    #[error("dirty bitmap has {have_pages} pages, guest RAM has {need_pages}")]
    BitmapSize {
        /// Pages in the bitmap.
        have_pages: u64,
        /// Pages of guest RAM.
        need_pages: u64,
    },
}
