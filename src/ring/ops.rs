//! Submitting operations: each call moves its buffer into a completion record and pushes one
//! SQE whose `user_data` names that record.

use super::buf::{Buf, BufPool, PoolShared};
use super::order::{Claim, Dir};
use super::slab::OpKind;
use super::waker::{Armed, Waker};
use super::zc::{SendMode, SendPolicy};
use super::{Ring, RingError, IORING_SEND_ZC_REPORT_USAGE};
use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// An operation the ring refused, with its buffer handed back.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: RingError,
    /// The buffer, untouched.
    pub buf: Buf,
}

/// Flags of every socket send: complete the whole payload (io_uring retries short sends on
/// stream sockets) and never raise SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_WAITALL | libc::MSG_NOSIGNAL;

/// "Current file position": the semantics of read(2) for files, ignored by sockets/eventfd/uffd.
const CUR_POS: u64 = u64::MAX;

impl Ring {
    /// Sends the payload of `buf` on the connected socket `fd`; completes when all of it was
    /// sent (or on error). Uses SEND_ZC or plain send according to the connection's
    /// [`SendMode`]; with SEND_ZC the completion (and the buffer) comes back only after the
    /// kernel's notification, when the buffer is really free. Sends on one socket go out in
    /// call order: while one is in flight the next waits in the driver (io_uring would
    /// otherwise interleave their bytes).
    pub fn send(&mut self, fd: RawFd, mut buf: Buf, tag: u64) -> Result<(), Rejected> {
        let (ptr, len) = buf.payload_raw();
        let Ok(len32) = u32::try_from(len) else {
            return Err(Rejected { error: RingError::TooLong { fd, len_bytes: len }, buf });
        };
        if let Err(error) = self.check_fixed(&buf) {
            return Err(Rejected { error, buf });
        }
        let mode = self.zc.mode(fd);
        let (kind, entry) = match mode {
            SendMode::Plain => (
                OpKind::Send,
                opcode::Send::new(types::Fd(fd), ptr, len32).flags(SEND_FLAGS).build(),
            ),
            SendMode::Probing | SendMode::ZeroCopy => (
                OpKind::SendZc,
                opcode::SendZc::new(types::Fd(fd), ptr, len32)
                    .flags(SEND_FLAGS)
                    .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                    .buf_index(buf.fixed_index())
                    .build(),
            ),
        };
        self.submit_with_buf(fd, buf, tag, kind, entry, Some(Dir::Tx))
    }

    /// Receives into the free space of `buf` from socket `fd` (whatever is available, at most
    /// the free space; 0 bytes means the peer closed). A pool slot uses READ_FIXED. Receives on
    /// one socket run one at a time in call order, so bytes land in the buffers in order.
    pub fn recv(&mut self, fd: RawFd, buf: Buf, tag: u64) -> Result<(), Rejected> {
        self.receive(fd, buf, tag, true)
    }

    /// Reads into the free space of `buf` from any fd (the O_NONBLOCK userfaultfd, a pipe, an
    /// eventfd): io_uring polls a non-blocking fd that has nothing yet and retries, so the
    /// completion arrives when data does. A pool slot uses READ_FIXED.
    pub fn read(&mut self, fd: RawFd, buf: Buf, tag: u64) -> Result<(), Rejected> {
        self.receive(fd, buf, tag, false)
    }

    fn receive(&mut self, fd: RawFd, mut buf: Buf, tag: u64, socket: bool) -> Result<(), Rejected> {
        let (ptr, len) = buf.spare_raw();
        let Ok(len32) = u32::try_from(len) else {
            return Err(Rejected { error: RingError::TooLong { fd, len_bytes: len }, buf });
        };
        if let Err(error) = self.check_fixed(&buf) {
            return Err(Rejected { error, buf });
        }
        let entry = match buf.fixed_index() {
            Some(index) => {
                opcode::ReadFixed::new(types::Fd(fd), ptr, len32, index).offset(CUR_POS).build()
            }
            None if socket => opcode::Recv::new(types::Fd(fd), ptr, len32).build(),
            None => opcode::Read::new(types::Fd(fd), ptr, len32).offset(CUR_POS).build(),
        };
        let ordered = socket.then_some(Dir::Rx);
        self.submit_with_buf(fd, buf, tag, OpKind::Receive, entry, ordered)
    }

    /// A relative timeout: completes with `Ok(0)` after `after`.
    pub fn timeout(&mut self, after: Duration, tag: u64) -> Result<(), RingError> {
        let capacity = self.slab.capacity();
        let user_data = self
            .slab
            .insert(tag, OpKind::Timeout, -1, None)
            .map_err(|_| RingError::Full { capacity, tag })?;
        let Some(rec) = self.slab.get_mut(user_data) else {
            return Err(RingError::Full { capacity, tag });
        };
        rec.timespec = types::Timespec::from(after);
        let entry = opcode::Timeout::new(&rec.timespec).build().user_data(user_data);
        self.push(&entry).inspect_err(|_| {
            self.slab.remove(user_data);
        })
    }

    /// The ring's [`Waker`]: every wake from any thread yields a completion with `tag` (the tag
    /// of the first call; later calls return another handle to the same eventfd).
    pub fn waker(&mut self, tag: u64) -> Result<Waker, RingError> {
        if let Some(armed) = self.waker.as_ref().filter(|a| a.is_active()) {
            return Ok(armed.handle());
        }
        let mut armed = Armed::new().map_err(|source| RingError::Eventfd { source })?;
        let capacity = self.slab.capacity();
        let user_data = self
            .slab
            .insert(tag, OpKind::Wake, -1, None)
            .map_err(|_| RingError::Full { capacity, tag })?;
        armed.activate(user_data);
        let handle = armed.handle();
        self.waker = Some(armed);
        if let Err(e) = self.arm_wake() {
            self.slab.remove(user_data);
            self.waker = None;
            return Err(e);
        }
        Ok(handle)
    }

    /// Maps and registers (IORING_REGISTER_BUFFERS) a pool of `slot_count` buffers of
    /// `slot_len_bytes` each, for page windows. One pool per ring.
    pub fn register_buffers(
        &mut self,
        slot_count: u16,
        slot_len_bytes: usize,
    ) -> Result<BufPool, RingError> {
        if self.pool.is_some() {
            return Err(RingError::PoolExists);
        }
        let err = |source| RingError::RegisterBuffers { slot_count, slot_len_bytes, source };
        let shared = Arc::new(PoolShared::map(slot_count, slot_len_bytes).map_err(err)?);
        let iovecs = shared.iovecs();
        // SAFETY: each iovec covers a slot of the pool mapping, which stays mapped while the
        // ring (which keeps an Arc to it) is alive, i.e. as long as the registration.
        unsafe { self.uring.submitter().register_buffers(&iovecs) }.map_err(err)?;
        let pool = BufPool { shared };
        self.pool = Some(pool.clone());
        Ok(pool)
    }

    /// Overrides the SEND_ZC choice for `fd` (resets what was learnt).
    pub fn set_send_policy(&mut self, fd: RawFd, policy: SendPolicy) {
        self.zc.set_policy(fd, policy);
    }

    /// The current send mode of `fd` (`None` before its first send or policy).
    pub fn send_mode(&self, fd: RawFd) -> Option<SendMode> {
        self.zc.peek(fd)
    }

    /// Forgets what was learnt about `fd` (call when the socket is closed: fds are reused).
    pub fn forget_fd(&mut self, fd: RawFd) {
        self.zc.forget(fd);
    }

    /// Cancels every operation on `fd`: those still queued behind a running one complete at
    /// once with `ECANCELED` (their buffers come back in the completions), and the kernel is
    /// asked to cancel the rest, whose completions arrive as usual. Their buffers stay in
    /// their records until then, so nothing is freed while the kernel may still touch it.
    pub fn cancel_fd(&mut self, fd: RawFd) -> Result<(), RingError> {
        for dir in [Dir::Tx, Dir::Rx] {
            let mut cursor = self.order.take_queued((fd, dir));
            for _ in 0..self.slab.capacity() {
                let Some(ud) = cursor else { break };
                let Some(rec) = self.slab.get_mut(ud) else { break };
                cursor = rec.next.take();
                let tag = rec.tag;
                let buf = self.slab.remove(ud);
                let result = Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
                self.ready.push_back(super::Completion { tag, result, buf });
            }
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(super::CANCEL_USER_DATA);
        self.push(&cancel)
    }

    fn check_fixed(&self, buf: &Buf) -> Result<(), RingError> {
        match (buf.fixed_index(), self.pool.as_ref()) {
            (None, _) => Ok(()),
            (Some(_), Some(pool)) if buf.is_slot_of(pool) => Ok(()),
            (Some(index), _) => Err(RingError::NotRegistered { index }),
        }
    }

    fn submit_with_buf(
        &mut self,
        fd: RawFd,
        buf: Buf,
        tag: u64,
        kind: OpKind,
        entry: squeue::Entry,
        ordered: Option<Dir>,
    ) -> Result<(), Rejected> {
        let capacity = self.slab.capacity();
        let user_data = match self.slab.insert(tag, kind, fd, Some(buf)) {
            Ok(user_data) => user_data,
            Err(Some(buf)) => {
                return Err(Rejected { error: RingError::Full { capacity, tag }, buf })
            }
            // insert hands back exactly the buffer it was given.
            Err(None) => return Ok(()),
        };
        let entry = entry.user_data(user_data);
        if let Some(dir) = ordered {
            if let Claim::Queued { after } = self.order.claim((fd, dir), user_data) {
                if let Some(rec) = self.slab.get_mut(user_data) {
                    rec.ordered = Some(dir);
                    rec.pending = Some(entry);
                }
                if let Some(prev) = after.and_then(|p| self.slab.get_mut(p)) {
                    prev.next = Some(user_data);
                }
                return Ok(());
            }
            if let Some(rec) = self.slab.get_mut(user_data) {
                rec.ordered = Some(dir);
            }
        }
        if let Err(error) = self.push(&entry) {
            if let Some(dir) = ordered {
                self.advance_order((fd, dir));
            }
            let buf = self.slab.remove(user_data);
            return match buf {
                Some(buf) => Err(Rejected { error, buf }),
                None => Ok(()),
            };
        }
        Ok(())
    }
}
