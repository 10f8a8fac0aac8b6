//! KVM dirty-log pieces that kvm-ioctls lacks: manual re-protection
//! (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`) and `KVM_CLEAR_DIRTY_LOG`.
//!
//! Why they matter: with the legacy log, turning logging on write-protects every page KVM has
//! mapped, at once, all of it before a live migration can send its first page
//! (docs/kernel-facts.md has the cost). With the capability enabled
//! with `KVM_DIRTY_LOG_INITIALLY_SET`, turning logging on protects nothing: every page starts
//! with its dirty bit set, and a page is write-protected only when its bit is cleared with
//! `KVM_CLEAR_DIRTY_LOG`. A migration then re-protects memory block by block, just before it
//! reads each block, and the cost spreads over the transfer (as QEMU does).
//!
//! In this mode `KVM_GET_DIRTY_LOG` only copies the bitmap out; it neither clears bits nor
//! re-protects pages. Kernel documentation: `Documentation/virt/kvm/api.rst`, sections
//! "KVM_CLEAR_DIRTY_LOG" and "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2".

use std::os::raw::c_ulong;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap, KVMIO,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

const _: () = assert!(std::mem::size_of::<kvm_clear_dirty_log>() == 24);

/// Enables manual re-protection with initially-set bitmaps on `vm`, if KVM offers both.
/// Returns whether it is on. Must be called before dirty logging is first turned on.
pub(super) fn enable_manual_protect(vm: &VmFd) -> bool {
    let want = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
    let have = vm.check_extension_raw(c_ulong::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2));
    if have <= 0 || (have as u32 & want) != want {
        return false;
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [u64::from(want), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).is_ok()
}

/// `KVM_CLEAR_DIRTY_LOG`: clears the dirty bits of slot `slot` selected by `bitmap` (bit `i`
/// is page `first_page + i` of the slot) and write-protects those pages, so that their next
/// write is logged again. `first_page` must be a multiple of 64, and `num_pages` too unless
/// the range ends at the slot's end; `bitmap` must hold at least `num_pages` bits.
pub(super) fn clear_dirty_log(
    vm: &VmFd,
    slot: u32,
    first_page: u64,
    num_pages: u32,
    bitmap: &[u64],
) -> std::io::Result<()> {
    assert!(bitmap.len() * 64 >= num_pages as usize, "bitmap shorter than the range");
    let arg = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page,
        __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bitmap.as_ptr() as *mut std::os::raw::c_void,
        },
    };
    // SAFETY: `arg` is a valid kvm_clear_dirty_log whose bitmap pointer covers `num_pages`
    // bits (asserted above) and outlives the call; KVM only reads the bitmap.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
