//! Owned I/O buffers handed to the ring by value and handed back with the result.
//!
//! A [`Buf`] is either a heap buffer or a slot of the ring's registered-buffer pool
//! ([`BufPool`], one `mmap` registered with IORING_REGISTER_BUFFERS). While an operation is in
//! flight the ring owns the `Buf`, so nothing can touch memory the kernel is reading or writing;
//! the completion returns it. A pool slot goes back to its pool when its `Buf` is dropped.
//!
//! Layout of the bytes: `[0, start)` already consumed, `[start, len)` the payload,
//! `[len, capacity)` free space. A send transmits the payload and advances `start`; a receive or
//! read fills free space and advances `len`.

use std::sync::{Arc, Mutex};

/// An owned buffer: heap memory or a registered pool slot.
#[derive(Debug)]
pub struct Buf {
    storage: Storage,
    start: usize,
    len: usize,
}

#[derive(Debug)]
enum Storage {
    Heap(Vec<u8>),
    Fixed(FixedSlot),
}

/// A slot of a registered pool; returns its index to the pool's free list on drop.
#[derive(Debug)]
struct FixedSlot {
    pool: Arc<PoolShared>,
    index: u16,
}

impl Drop for FixedSlot {
    fn drop(&mut self) {
        // A poisoned lock only means another thread panicked while pushing an index; the
        // free list itself is still a valid Vec, so keep using it.
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(self.index);
    }
}

impl Buf {
    /// A zero-filled heap buffer of `capacity_bytes`, empty (`len() == 0`).
    pub fn with_capacity(capacity_bytes: usize) -> Buf {
        Buf { storage: Storage::Heap(vec![0; capacity_bytes]), start: 0, len: 0 }
    }

    /// A heap buffer whose payload is all of `data`.
    pub fn from_vec(data: Vec<u8>) -> Buf {
        let len = data.len();
        Buf { storage: Storage::Heap(data), start: 0, len }
    }

    /// Total bytes of storage.
    pub fn capacity(&self) -> usize {
        match &self.storage {
            Storage::Heap(v) => v.len(),
            Storage::Fixed(slot) => slot.pool.slot_len_bytes,
        }
    }

    /// End of the payload (bytes filled so far, counted from the start of the storage).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the payload `[start, len)` is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.len
    }

    /// Offset of the first payload byte.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Bytes of free space after the payload.
    pub fn spare_bytes(&self) -> usize {
        self.capacity() - self.len
    }

    /// The payload `[start, len)`.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage_slice()[self.start..self.len]
    }

    /// The payload, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        &mut self.storage_slice_mut()[start..len]
    }

    /// Empties the buffer (start and len back to 0) so it can be refilled.
    pub fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }

    /// Drops `n_bytes` from the front of the payload (clamped to the payload).
    pub fn advance(&mut self, n_bytes: usize) {
        self.start = (self.start + n_bytes).min(self.len);
    }

    /// Marks `n_bytes` more of the free space as payload (clamped to the capacity).
    pub fn extend_filled(&mut self, n_bytes: usize) {
        self.len = (self.len + n_bytes).min(self.capacity());
    }

    /// Appends as much of `data` as fits; returns the number of bytes copied.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.spare_bytes());
        let len = self.len;
        self.storage_slice_mut()[len..len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// The registered-buffer index when this is a pool slot.
    pub fn fixed_index(&self) -> Option<u16> {
        match &self.storage {
            Storage::Heap(_) => None,
            Storage::Fixed(slot) => Some(slot.index),
        }
    }

    /// True when this is a slot of `pool`.
    pub(crate) fn is_slot_of(&self, pool: &BufPool) -> bool {
        match &self.storage {
            Storage::Heap(_) => false,
            Storage::Fixed(slot) => Arc::ptr_eq(&slot.pool, &pool.shared),
        }
    }

    /// The heap storage, when this is a heap buffer (pool slots return `None`).
    pub fn into_vec(self) -> Option<Vec<u8>> {
        match self.storage {
            Storage::Heap(v) => Some(v),
            Storage::Fixed(_) => None,
        }
    }

    fn storage_slice(&self) -> &[u8] {
        match &self.storage {
            Storage::Heap(v) => v,
            // SAFETY: the slot lies inside the pool's live mapping (the Arc keeps it mapped) and
            // this Buf is the slot's only owner, so no other reference aliases it.
            Storage::Fixed(slot) => unsafe {
                std::slice::from_raw_parts(slot.pool.slot_ptr(slot.index), slot.pool.slot_len_bytes)
            },
        }
    }

    fn storage_slice_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Heap(v) => v,
            // SAFETY: as in `storage_slice`; `&mut self` makes the access exclusive.
            Storage::Fixed(slot) => unsafe {
                std::slice::from_raw_parts_mut(
                    slot.pool.slot_ptr(slot.index),
                    slot.pool.slot_len_bytes,
                )
            },
        }
    }

    /// Pointer and length of the payload, for a send SQE.
    pub(crate) fn payload_raw(&mut self) -> (*const u8, usize) {
        let (start, len) = (self.start, self.len);
        let base = self.storage_slice_mut().as_mut_ptr();
        // SAFETY: start <= len <= capacity, so the offset stays inside the storage.
        (unsafe { base.add(start) }.cast_const(), len - start)
    }

    /// Pointer and length of the free space, for a receive / read SQE.
    pub(crate) fn spare_raw(&mut self) -> (*mut u8, usize) {
        let len = self.len;
        let cap = self.capacity();
        let base = self.storage_slice_mut().as_mut_ptr();
        // SAFETY: len <= capacity, so the offset stays inside (or one past) the storage.
        (unsafe { base.add(len) }, cap - len)
    }
}

/// The memory of a registered pool: one anonymous mapping cut into equal slots.
#[derive(Debug)]
pub(crate) struct PoolShared {
    base: *mut u8,
    slot_len_bytes: usize,
    slot_count: usize,
    free: Mutex<Vec<u16>>,
}

// SAFETY: the mapping is plain memory owned by this struct; each slot is handed to one Buf at
// a time through the locked free list, so sharing the struct across threads is sound.
unsafe impl Send for PoolShared {}
// SAFETY: as above; the only shared mutable state is behind the Mutex.
unsafe impl Sync for PoolShared {}

impl PoolShared {
    /// Maps `slot_count` slots of `slot_len_bytes` (a multiple of the page size).
    pub(crate) fn map(slot_count: u16, slot_len_bytes: usize) -> std::io::Result<PoolShared> {
        let total = slot_len_bytes
            .checked_mul(slot_count as usize)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PoolShared {
            base: base.cast(),
            slot_len_bytes,
            slot_count: slot_count as usize,
            free: Mutex::new((0..slot_count).rev().collect()),
        })
    }

    fn slot_ptr(&self, index: u16) -> *mut u8 {
        debug_assert!((index as usize) < self.slot_count);
        // SAFETY: index < slot_count, so the offset is inside the mapping.
        unsafe { self.base.add(index as usize * self.slot_len_bytes) }
    }

    /// One iovec per slot, for IORING_REGISTER_BUFFERS.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.slot_count)
            .map(|i| libc::iovec {
                iov_base: self.slot_ptr(i as u16).cast(),
                iov_len: self.slot_len_bytes,
            })
            .collect()
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `map` created; no slot Buf is alive (each holds
        // an Arc to this struct) and the ring that registered it holds an Arc too.
        unsafe { libc::munmap(self.base.cast(), self.slot_len_bytes * self.slot_count) };
    }
}

/// Handle to the ring's registered-buffer pool; `take` hands out slots as [`Buf`]s.
#[derive(Clone, Debug)]
pub struct BufPool {
    pub(crate) shared: Arc<PoolShared>,
}

impl BufPool {
    /// Takes a free slot (empty payload), or `None` when all slots are in use.
    pub fn take(&self) -> Option<Buf> {
        let index = {
            let mut free = self.shared.free.lock().unwrap_or_else(|e| e.into_inner());
            free.pop()?
        };
        Some(Buf {
            storage: Storage::Fixed(FixedSlot { pool: self.shared.clone(), index }),
            start: 0,
            len: 0,
        })
    }

    /// Bytes per slot.
    pub fn slot_len_bytes(&self) -> usize {
        self.shared.slot_len_bytes
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.shared.slot_count
    }

    /// Slots currently free.
    pub fn free_count(&self) -> usize {
        self.shared.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_and_spare_move_as_documented() {
        let mut buf = Buf::with_capacity(8);
        assert!(buf.is_empty());
        assert_eq!(buf.extend_from_slice(b"abcdefghij"), 8);
        assert_eq!(buf.as_slice(), b"abcdefgh");
        buf.advance(3);
        assert_eq!(buf.as_slice(), b"defgh");
        assert_eq!(buf.spare_bytes(), 0);
        buf.advance(100);
        assert!(buf.is_empty());
        buf.clear();
        assert_eq!(buf.spare_bytes(), 8);
    }

    #[test]
    fn pool_slots_return_on_drop() {
        let pool = BufPool { shared: Arc::new(PoolShared::map(2, 4096).expect("map")) };
        let mut a = pool.take().expect("slot a");
        let b = pool.take().expect("slot b");
        assert!(pool.take().is_none());
        assert_ne!(a.fixed_index(), b.fixed_index());
        a.extend_from_slice(b"hello");
        assert_eq!(a.as_slice(), b"hello");
        drop(a);
        assert_eq!(pool.free_count(), 1);
        let c = pool.take().expect("slot c");
        assert_eq!(c.len(), 0);
        drop((b, c));
        assert_eq!(pool.free_count(), 2);
    }
}
