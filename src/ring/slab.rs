//! Completion records: one per in-flight operation, preallocated, indexed by `user_data`.
//!
//! A record owns the operation's buffer (and its timespec) until the kernel is done with it,
//! which for SEND_ZC means until the notification CQE. `user_data` packs the slot index with a
//! generation counter, so a stray CQE for a recycled slot is recognised and ignored.

use super::buf::Buf;
use io_uring::types::Timespec;
use std::os::fd::RawFd;

/// What an in-flight record is doing (decides how its CQE is interpreted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// IORING_OP_SEND: result advances the payload.
    Send,
    /// IORING_OP_SEND_ZC: result, then a notification CQE frees the buffer.
    SendZc,
    /// IORING_OP_RECV / READ / READ_FIXED: result extends the payload.
    Receive,
    /// IORING_OP_TIMEOUT: -ETIME is the normal outcome.
    Timeout,
    /// The waker's eventfd read; re-armed by the ring, freed only when it fails.
    Wake,
}

/// One in-flight operation.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) tag: u64,
    pub(crate) kind: OpKind,
    pub(crate) fd: RawFd,
    pub(crate) buf: Option<Buf>,
    /// Kept here because the kernel reads it by pointer; the record never moves.
    pub(crate) timespec: Timespec,
    /// The main CQE's result, held while a SEND_ZC waits for its notification.
    pub(crate) result: Option<i32>,
    /// Set when the operation is ordered behind others on its socket ([`super::order`]).
    pub(crate) ordered: Option<super::order::Dir>,
    /// The SQE of a queued (not yet submitted) operation.
    pub(crate) pending: Option<io_uring::squeue::Entry>,
    /// Next queued operation on the same socket direction.
    pub(crate) next: Option<u64>,
    generation: u32,
    in_use: bool,
}

/// Fixed-capacity slab of records; never reallocates, so record addresses are stable.
#[derive(Debug)]
pub(crate) struct Slab {
    records: Box<[Record]>,
    free: Vec<u32>,
}

impl Slab {
    pub(crate) fn new(capacity: u32) -> Slab {
        let records = (0..capacity)
            .map(|_| Record {
                tag: 0,
                kind: OpKind::Send,
                fd: -1,
                buf: None,
                timespec: Timespec::new(),
                result: None,
                ordered: None,
                pending: None,
                next: None,
                generation: 0,
                in_use: false,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Slab { records, free: (0..capacity).rev().collect() }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.records.len() - self.free.len()
    }

    /// Takes a free record; returns its `user_data`, or the buffer back when all are in flight.
    pub(crate) fn insert(
        &mut self,
        tag: u64,
        kind: OpKind,
        fd: RawFd,
        buf: Option<Buf>,
    ) -> Result<u64, Option<Buf>> {
        let Some(index) = self.free.pop() else {
            return Err(buf);
        };
        let rec = &mut self.records[index as usize];
        rec.generation = rec.generation.wrapping_add(1);
        rec.tag = tag;
        rec.kind = kind;
        rec.fd = fd;
        rec.buf = buf;
        rec.result = None;
        rec.ordered = None;
        rec.pending = None;
        rec.next = None;
        rec.in_use = true;
        Ok(((rec.generation as u64) << 32) | index as u64)
    }

    /// The live record a `user_data` designates, if it is still the same operation.
    pub(crate) fn get_mut(&mut self, user_data: u64) -> Option<&mut Record> {
        let index = (user_data & 0xFFFF_FFFF) as usize;
        let generation = (user_data >> 32) as u32;
        let rec = self.records.get_mut(index)?;
        (rec.in_use && rec.generation == generation).then_some(rec)
    }

    /// Frees a record, returning its buffer.
    pub(crate) fn remove(&mut self, user_data: u64) -> Option<Buf> {
        let rec = self.get_mut(user_data)?;
        rec.in_use = false;
        let buf = rec.buf.take();
        self.free.push((user_data & 0xFFFF_FFFF) as u32);
        buf
    }

    /// Leaks every buffer still held (used when the kernel may still own them at drop).
    pub(crate) fn leak_buffers(&mut self) {
        for rec in self.records.iter_mut().filter(|r| r.in_use) {
            if let Some(buf) = rec.buf.take() {
                std::mem::forget(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_user_data_is_rejected_after_reuse() {
        let mut slab = Slab::new(2);
        let a = slab.insert(7, OpKind::Send, 3, None).expect("a");
        let b = slab.insert(8, OpKind::Receive, 4, None).expect("b");
        assert!(slab.insert(9, OpKind::Send, 5, None).is_err());
        assert_eq!(slab.in_flight(), 2);
        slab.remove(a);
        let c = slab.insert(10, OpKind::Timeout, -1, None).expect("c");
        assert_eq!(c & 0xFFFF_FFFF, a & 0xFFFF_FFFF, "slot reused");
        assert!(slab.get_mut(a).is_none(), "old generation is stale");
        assert_eq!(slab.get_mut(c).map(|r| r.tag), Some(10));
        assert_eq!(slab.get_mut(b).map(|r| r.tag), Some(8));
    }
}
