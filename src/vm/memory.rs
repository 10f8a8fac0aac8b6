//! Guest RAM: one anonymous mapping per KVM slot.
//!
//! Regions are created from the [`super::layout::Layout`] and handed to KVM by the VM. The
//! migration engines read and fill them through [`GuestRegion::as_ptr`] (or the slice helpers
//! while the vCPUs are paused).

use std::ptr::NonNull;

use super::layout::{SlotLayout, PAGE_BYTES};

/// Errors of guest memory set-up and access.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of a region failed.
    #[error("mmap of {size_bytes} bytes for slot {slot} failed: {source}")]
    Mmap {
        /// KVM slot.
        slot: u32,
        /// Requested length.
        size_bytes: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// A guest physical range is not inside one region.
    #[error("guest range {gpa:#x}+{len_bytes} is not inside guest RAM")]
    OutOfRange {
        /// First guest physical address.
        gpa: u64,
        /// Length, bytes.
        len_bytes: u64,
    },
}

/// One KVM memory slot and its host mapping.
#[derive(Debug)]
pub struct GuestRegion {
    /// KVM slot number.
    pub slot: u32,
    /// First guest physical address.
    pub guest_phys: u64,
    /// Length, bytes (a multiple of 4 KiB).
    pub size_bytes: u64,
    host: NonNull<u8>,
}

// SAFETY: the mapping is plain memory owned by this value; concurrent access is governed by the
// documented rules of the accessors (raw pointer users synchronise themselves).
unsafe impl Send for GuestRegion {}
// SAFETY: as above; shared access only hands out raw pointers or requires paused vCPUs.
unsafe impl Sync for GuestRegion {}

impl GuestRegion {
    /// Maps `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE` memory for `slot`.
    pub(crate) fn map(slot: &SlotLayout) -> Result<GuestRegion, MemoryError> {
        let len = usize::try_from(slot.size_bytes).map_err(|_| MemoryError::Mmap {
            slot: slot.slot,
            size_bytes: slot.size_bytes,
            source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
        })?;
        // SAFETY: anonymous mapping with no address hint; the result is checked below and owned
        // by the returned value, which unmaps it on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemoryError::Mmap {
                slot: slot.slot,
                size_bytes: slot.size_bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        let host = NonNull::new(p.cast::<u8>()).ok_or_else(|| MemoryError::Mmap {
            slot: slot.slot,
            size_bytes: slot.size_bytes,
            source: std::io::Error::from_raw_os_error(libc::EFAULT),
        })?;
        Ok(GuestRegion {
            slot: slot.slot,
            guest_phys: slot.guest_phys,
            size_bytes: slot.size_bytes,
            host,
        })
    }

    /// Host address of the first byte. Valid while the `Vm` lives; the guest may write it
    /// concurrently while vCPUs run.
    pub fn as_ptr(&self) -> *mut u8 {
        self.host.as_ptr()
    }

    /// Length, bytes, as `usize`.
    pub fn len(&self) -> usize {
        // Checked to fit in `map`.
        self.size_bytes as usize
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// First guest page number (guest_phys / 4096).
    pub fn first_page(&self) -> u64 {
        self.guest_phys / PAGE_BYTES
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.size_bytes / PAGE_BYTES
    }

    /// Whether guest physical address `gpa` is inside this region.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.guest_phys && gpa - self.guest_phys < self.size_bytes
    }

    /// The region's bytes.
    ///
    /// # Safety
    /// No vCPU may run and nothing else may write the region while the slice lives (pause the
    /// VM first). On an incoming VM registered with userfaultfd, reading a missing page blocks
    /// until the page is placed.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes long and lives as long as `self`; the caller
        // guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.host.as_ptr(), self.len()) }
    }

    /// The region's bytes, writable.
    ///
    /// # Safety
    /// As [`GuestRegion::as_slice`], and no other reference to the region may exist. Writes made
    /// through it after `Vm::new` are not in the VMM dirty set; use `Vm::write_guest` for that.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: as above, and the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.host.as_ptr(), self.len()) }
    }
}

impl Drop for GuestRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map` with this length and is not used after drop.
        unsafe {
            libc::munmap(self.host.as_ptr().cast(), self.len());
        }
    }
}

/// Finds the region holding `[gpa, gpa + len_bytes)` and the offset into it.
pub(crate) fn locate(
    regions: &[GuestRegion],
    gpa: u64,
    len_bytes: u64,
) -> Result<(&GuestRegion, usize), MemoryError> {
    regions
        .iter()
        .find(|r| r.contains(gpa) && gpa - r.guest_phys + len_bytes <= r.size_bytes)
        .map(|r| (r, (gpa - r.guest_phys) as usize))
        .ok_or(MemoryError::OutOfRange { gpa, len_bytes })
}
