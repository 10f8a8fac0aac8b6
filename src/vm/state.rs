//! vCPU state capture and restore, and the [`VmState`] value the migration sends.
//!
//! State leaves a paused VM through `Vm::save_state` (which calls [`capture_vcpu`] per vCPU and
//! adds the device state), crosses as a blob ([`super::blob`]), and enters a fresh VM through
//! `Vm::restore_state` ([`restore_vcpu`]). There is no in-kernel irqchip (the guest never takes
//! an interrupt), so there is no LAPIC, IOAPIC, PIC or PIT state to move.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Cap, Error as KvmError, Kvm, VcpuFd};
use zerocopy::IntoBytes;

use super::devices::DeviceState;

/// Size of the legacy KVM_GET_XSAVE area, bytes.
pub const XSAVE_BYTES: usize = 4096;

/// Errors of state capture, restore and blob decoding.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM_GET_* ioctl failed.
    #[error("KVM_GET_{what} on vCPU {vcpu} failed: {source}")]
    Get {
        /// Which state ("REGS", "MSRS", ...).
        what: &'static str,
        /// vCPU index.
        vcpu: u32,
        /// errno.
        source: KvmError,
    },
    /// A KVM_SET_* ioctl failed.
    #[error("KVM_SET_{what} on vCPU {vcpu} failed: {source}")]
    Set {
        /// Which state.
        what: &'static str,
        /// vCPU index.
        vcpu: u32,
        /// errno.
        source: KvmError,
    },
    /// KVM_SET_MSRS stopped early.
    #[error("KVM_SET_MSRS on vCPU {vcpu} set {done} of {total} MSRs; MSR {index:#x} was refused")]
    MsrsPartial {
        /// vCPU index.
        vcpu: u32,
        /// MSRs set.
        done: usize,
        /// MSRs given.
        total: usize,
        /// The first refused MSR.
        index: u32,
    },
    /// The host's xsave area exceeds the legacy 4 KiB KVM_GET_XSAVE buffer (AMX hosts).
    #[error("host xsave area is {size_bytes} bytes; only {XSAVE_BYTES} are supported")]
    XsaveTooLarge {
        /// KVM_CAP_XSAVE2 size.
        size_bytes: usize,
    },
    /// The blob belongs to a differently shaped VM.
    #[error("state is for {what} = {blob}, this VM has {vm}")]
    Mismatch {
        /// Which property.
        what: &'static str,
        /// Value in the blob.
        blob: u64,
        /// Value of this VM.
        vm: u64,
    },
    /// The blob is larger than the cap.
    #[error("state blob is {len_bytes} bytes, the cap is {max_bytes}")]
    TooLarge {
        /// Blob length.
        len_bytes: usize,
        /// The cap.
        max_bytes: usize,
    },
    /// The blob ends before a field.
    #[error("state blob truncated in {field}: needs {need_bytes} bytes, {have_bytes} left")]
    Truncated {
        /// Which field.
        field: &'static str,
        /// Bytes needed.
        need_bytes: usize,
        /// Bytes available.
        have_bytes: usize,
    },
    /// The blob does not start with the magic.
    #[error("state blob has bad magic {found:02x?}")]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// The blob's version is not supported.
    #[error("state blob version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the blob.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The payload checksum does not match.
    #[error("state blob CRC mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    Crc {
        /// CRC in the header.
        expected: u32,
        /// CRC of the payload.
        actual: u32,
    },
    /// The header's payload length disagrees with the blob.
    #[error("state blob header says {header_bytes} payload bytes, blob has {actual_bytes}")]
    PayloadLength {
        /// Length in the header.
        header_bytes: u64,
        /// Length present.
        actual_bytes: usize,
    },
    /// A field has the wrong size for its type.
    #[error("state field {field} is {len_bytes} bytes, expected {expected_bytes}")]
    FieldSize {
        /// Which field.
        field: &'static str,
        /// Size in the blob.
        len_bytes: usize,
        /// Size of the type.
        expected_bytes: usize,
    },
    /// A count is above its limit.
    #[error("state field {field} count {count} exceeds {max}")]
    TooMany {
        /// Which field.
        field: &'static str,
        /// Count in the blob.
        count: u64,
        /// Limit.
        max: u64,
    },
    /// Bytes follow the last field.
    #[error("state blob has {extra_bytes} unexpected bytes after the last field")]
    Trailing {
        /// Extra bytes.
        extra_bytes: usize,
    },
}

/// Everything one vCPU needs to continue.
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuState {
    /// General purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// The KVM_GET_XSAVE area (x87, SSE, AVX, ... state), [`XSAVE_BYTES`] bytes.
    pub xsave: Vec<u8>,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Pending exceptions, NMI and interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Multiprocessing state.
    pub mp_state: kvm_mp_state,
    /// MSRs (index, value), from the filtered KVM MSR index list; includes IA32_TSC.
    pub msrs: Vec<(u32, u64)>,
    /// TSC frequency, kHz (0 if unknown).
    pub tsc_khz: u32,
}

/// The state of a whole VM: vCPUs and devices (memory travels separately).
#[derive(Debug, Clone, PartialEq)]
pub struct VmState {
    /// Workload memory of the VM, bytes (checked against the restoring VM).
    pub mem_bytes: u64,
    /// Per-vCPU state, in vCPU order.
    pub vcpus: Vec<VcpuState>,
    /// Serial and control device state.
    pub devices: DeviceState,
}

/// Fails if the host's xsave area does not fit the legacy buffer.
pub fn check_xsave_size(vm: &kvm_ioctls::VmFd) -> Result<(), StateError> {
    let size = vm.check_extension_int(Cap::Xsave2);
    if size > XSAVE_BYTES as i32 {
        return Err(StateError::XsaveTooLarge { size_bytes: size as usize });
    }
    Ok(())
}

static SAVEABLE_MSRS: OnceLock<Vec<u32>> = OnceLock::new();

/// The MSRs that both read and write back on this host, found once per process by probing a
/// fresh vCPU (it must be called before the vCPU first runs). KVM's index list includes MSRs
/// that exist only with features the CPUID hides or that refuse host writes; probing avoids a
/// hand-kept deny list that would differ between bare-metal KVM and PVM. Measured here
/// (kvm_pvm, Linux 6.18): 40 MSRs listed, 39 round-trip; MSR_KVM_ASYNC_PF_INT (0x4b564d06)
/// refuses the write-back of its reset value 0 (KVM rejects vectors below 32).
pub fn saveable_msrs(kvm: &Kvm, probe: &VcpuFd) -> Vec<u32> {
    SAVEABLE_MSRS
        .get_or_init(|| {
            let Ok(list) = kvm.get_msr_index_list() else { return Vec::new() };
            list.as_slice().iter().copied().filter(|&i| msr_round_trips(probe, i)).collect()
        })
        .clone()
}

fn msr_round_trips(vcpu: &VcpuFd, index: u32) -> bool {
    let Ok(mut m) = Msrs::from_entries(&[kvm_msr_entry { index, ..Default::default() }]) else {
        return false;
    };
    matches!(vcpu.get_msrs(&mut m), Ok(1)) && matches!(vcpu.set_msrs(&m), Ok(1))
}

/// Reads a vCPU's state. The vCPU must not be inside KVM_RUN, and a pending I/O exit must have
/// been completed (the pause path re-enters KVM_RUN with `immediate_exit` set for that).
///
/// Order: MP_STATE first (with an in-kernel LAPIC, KVM_GET_MP_STATE processes pending INIT/SIPI
/// and can change other state; kept first so the order stays right if an irqchip is added);
/// VCPU_EVENTS last, so that it reflects anything the earlier reads settled.
pub fn capture_vcpu(vcpu: &VcpuFd, index: u32, msr_list: &[u32]) -> Result<VcpuState, StateError> {
    let get = |what| move |source| StateError::Get { what, vcpu: index, source };
    let mp_state = vcpu.get_mp_state().map_err(get("MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(get("REGS"))?;
    let sregs = vcpu.get_sregs().map_err(get("SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(get("XSAVE"))?.region.as_bytes().to_vec();
    let xcrs = vcpu.get_xcrs().map_err(get("XCRS"))?;
    let debugregs = vcpu.get_debug_regs().map_err(get("DEBUGREGS"))?;
    let msrs = read_msrs(vcpu, index, msr_list)?;
    let tsc_khz = vcpu.get_tsc_khz().unwrap_or(0);
    let events = vcpu.get_vcpu_events().map_err(get("VCPU_EVENTS"))?;
    Ok(VcpuState { regs, sregs, xsave, xcrs, debugregs, events, mp_state, msrs, tsc_khz })
}

fn read_msrs(vcpu: &VcpuFd, index: u32, list: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let mut out = Vec::with_capacity(list.len());
    for chunk in list.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> =
            chunk.iter().map(|&i| kvm_msr_entry { index: i, ..Default::default() }).collect();
        let get = |source| StateError::Get { what: "MSRS", vcpu: index, source };
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| get(KvmError::new(libc::E2BIG)))?;
        let n = vcpu.get_msrs(&mut msrs).map_err(get)?;
        if n != entries.len() {
            return Err(get(KvmError::new(libc::EIO)));
        }
        out.extend(msrs.as_slice().iter().map(|e| (e.index, e.data)));
    }
    Ok(out)
}

/// Writes a vCPU's state into a vCPU that has not run since creation (CPUID already set).
///
/// Order, and why. This order is the one tests/vm_exact.rs verifies (exact digests after
/// restore into a fresh VM on this host's kvm_pvm module); the reasons follow KVM's API text
/// and Firecracker's notes. Alternatives were not all tried.
/// 1. MP_STATE first: it only says runnable/halted here, but with an irqchip KVM_SET_LAPIC and
///    MP_STATE interact, and first is the order that works in both cases.
/// 2. TSC_KHZ before MSRs, so the IA32_TSC write below is scaled at the restored frequency
///    (skipped when equal; a host that cannot scale leaves the guest at the host rate).
/// 3. REGS before SREGS and before VCPU_EVENTS: KVM_SET_REGS clears any pending exception,
///    which VCPU_EVENTS then restores.
/// 4. SREGS before MSRs: SREGS rewrites EFER and the APIC base; MSRs written before would be
///    checked against the wrong mode (and EFER would be overwritten).
/// 5. XSAVE, then XCRS: KVM checks the xsave header against the XCR0 that CPUID allows, not
///    the current XCR0, so XCRS need not come first; this is Firecracker's order.
/// 6. DEBUGREGS, then MSRs (which include IA32_TSC: the guest TSC continues from the saved
///    value, so a paused interval is invisible to the guest's pacing).
/// 7. VCPU_EVENTS last: it must see the final regs/sregs, and earlier SETs may clear events.
pub fn restore_vcpu(vcpu: &VcpuFd, index: u32, s: &VcpuState) -> Result<(), StateError> {
    let set = |what| move |source| StateError::Set { what, vcpu: index, source };
    vcpu.set_mp_state(s.mp_state).map_err(set("MP_STATE"))?;
    if s.tsc_khz != 0 && vcpu.get_tsc_khz().ok() != Some(s.tsc_khz) {
        // A failure only means the guest TSC runs at the host rate; the workloads use the TSC
        // for pacing only, so exactness does not depend on it.
        let _ = vcpu.set_tsc_khz(s.tsc_khz);
    }
    vcpu.set_regs(&s.regs).map_err(set("REGS"))?;
    vcpu.set_sregs(&s.sregs).map_err(set("SREGS"))?;
    let mut xsave = kvm_xsave::default();
    if s.xsave.len() != XSAVE_BYTES {
        return Err(StateError::FieldSize {
            field: "xsave",
            len_bytes: s.xsave.len(),
            expected_bytes: XSAVE_BYTES,
        });
    }
    xsave.region.as_mut_bytes().copy_from_slice(&s.xsave);
    // SAFETY: `xsave` is a full 4096-byte kvm_xsave and the VM was checked (check_xsave_size)
    // to need no more than that, so the kernel reads only inside the struct.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(set("XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(set("XCRS"))?;
    vcpu.set_debug_regs(&s.debugregs).map_err(set("DEBUGREGS"))?;
    write_msrs(vcpu, index, &s.msrs)?;
    vcpu.set_vcpu_events(&s.events).map_err(set("VCPU_EVENTS"))
}

fn write_msrs(vcpu: &VcpuFd, index: u32, msrs: &[(u32, u64)]) -> Result<(), StateError> {
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&(i, data)| kvm_msr_entry { index: i, data, ..Default::default() })
            .collect();
        let set = |source| StateError::Set { what: "MSRS", vcpu: index, source };
        let m = Msrs::from_entries(&entries).map_err(|_| set(KvmError::new(libc::E2BIG)))?;
        let done = vcpu.set_msrs(&m).map_err(set)?;
        if done != entries.len() {
            return Err(StateError::MsrsPartial {
                vcpu: index,
                done,
                total: entries.len(),
                index: entries.get(done).map_or(0, |e| e.index),
            });
        }
    }
    Ok(())
}
