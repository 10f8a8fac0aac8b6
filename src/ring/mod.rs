//! The io_uring driver: one [`Ring`] per event-loop thread.
//!
//! Operations enter as calls ([`Ring::send`], [`Ring::recv`], [`Ring::read`],
//! [`Ring::timeout`], the [`Waker`]'s eventfd read) that take an owned [`Buf`] and an opaque
//! `tag` chosen by the caller. Each becomes an SQE whose `user_data` points at a preallocated
//! completion record that owns the buffer while the kernel may touch it. Results leave through
//! [`Ring::completions`] as [`Completion`]s carrying the tag, the result and the buffer back.
//!
//! Why the `io-uring` crate and not `tokio-uring`: tokio-uring is unmaintained, pinned to
//! io-uring 0.6, has no TCP SEND_ZC and does not let us put our own SQEs (userfaultfd reads,
//! timers) on its ring. The driver here is small: a slab of records, a queue of ready
//! completions, and the per-connection SEND_ZC decision ([`SendMode`]).
//!
//! Registered buffers ([`Ring::register_buffers`]) serve page windows: SEND_ZC passes their
//! `buf_index` (no page pinning per send), receives into them use READ_FIXED; plain SEND has
//! no fixed variant in io-uring 0.7 and simply uses their address.
//!
//! Stream order: io_uring does not keep concurrent operations on one stream socket in order,
//! so the driver runs one send and one receive per socket at a time and queues the rest
//! (see `order.rs`).
//!
//! Nothing allocates per operation on the hot path: the slab and the ready queue are sized at
//! construction; a full submission queue is flushed and the push retried.

mod buf;
mod ops;
mod order;
mod setup;
mod slab;
mod waker;
mod zc;

pub use buf::{Buf, BufPool};
pub use ops::Rejected;
pub use setup::RingError;
pub use waker::Waker;
pub use zc::{SendMode, SendPolicy, PROBE_COPIED_NOTIFS, PROBE_NOTIFS};

use io_uring::{cqueue, squeue, types, IoUring};
use order::{Dir, Order};
use slab::{OpKind, Slab};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use zc::ZcTable;

/// `IORING_SEND_ZC_REPORT_USAGE`: ask notifications to say whether the kernel copied.
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED` in a notification's `res`.
const IORING_NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN;

/// `user_data` of internal cancel requests (matches no slab slot).
const CANCEL_USER_DATA: u64 = u64::MAX;

/// One finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The caller's tag, as given when the operation was submitted.
    pub tag: u64,
    /// Bytes transferred (sends, receives, reads), the eventfd count (wakes), or 0 (an expired
    /// timeout). An error is the negated errno of the CQE.
    pub result: io::Result<usize>,
    /// The buffer, handed back: for a send its payload was advanced by the bytes sent, for a
    /// receive / read its payload was extended by the bytes received.
    pub buf: Option<Buf>,
}

/// Counters for reports: where the event loop's time went and what it did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Time blocked inside `io_uring_enter` waiting for completions.
    pub wait_ns: u64,
    /// Time between waits (the caller processing completions and preparing work).
    pub process_ns: u64,
    /// SQEs pushed.
    pub sqes: u64,
    /// CQEs reaped (including SEND_ZC notifications).
    pub cqes: u64,
    /// Times a full submission queue forced a flush.
    pub sq_full_flushes: u64,
    /// SEND_ZC notifications seen.
    pub zc_notifs: u64,
    /// ... of which the kernel reported it had copied the data anyway.
    pub zc_copied: u64,
    /// CQEs whose `user_data` matched no live record (should stay 0).
    pub stray_cqes: u64,
}

/// Gives the calling event-loop thread real-time priority (SCHED_FIFO 1) when the process may,
/// and returns whether it did. A fault answer waits for whichever thread is on the CPU: with
/// vCPU threads busy on a 2-core host, a normal-priority loop thread wakes a scheduler slice
/// (milliseconds) late. Threads it spawns later do not inherit the priority
/// (SCHED_RESET_ON_FORK), and the kernel's RT throttling keeps a busy loop from starving the
/// machine. That throttling has a price, logged once per process (see [`rt_runtime_us`]).
pub fn prioritize_this_thread() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised param.
    let ret = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if ret == 0 {
        static NOTED: std::sync::Once = std::sync::Once::new();
        NOTED.call_once(note_rt_throttling);
    }
    ret == 0
}

/// `kernel.sched_rt_runtime_us`: how much of each second (`sched_rt_period_us`, 1 s by
/// default) real-time threads may use one CPU before the kernel stops them for the rest of
/// it; -1 turns the throttling off. `None` when it cannot be read.
pub fn rt_runtime_us() -> Option<i64> {
    std::fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us").ok()?.trim().parse().ok()
}

/// A real-time loop that keeps one CPU busy is stopped for the rest of each throttling period,
/// which shows as a long fault tail (docs/kernel-facts.md has the figures). Benchmarks that
/// want the tail turn it off for their duration (`bench-env/rt-throttle off`); a VMM decides
/// for its own host.
fn note_rt_throttling() {
    if let Some(us) = rt_runtime_us().filter(|&us| us >= 0) {
        tracing::info!(
            sched_rt_runtime_us = us,
            "RT throttling is on: an event loop that keeps a CPU busy for that long in a second \
             stalls for the rest of it (`bench-env/rt-throttle off` lifts it)"
        );
    }
}

/// An io_uring instance with its completion records; use from one thread.
pub struct Ring {
    // Declared first so it is dropped last among the fields that matter: see `Drop`.
    uring: IoUring,
    slab: Slab,
    ready: VecDeque<Completion>,
    zc: ZcTable,
    order: Order,
    pool: Option<BufPool>,
    waker: Option<waker::Armed>,
    stats: RingStats,
    last_wait_end: Instant,
    probe: setup::Opcodes,
}

// The engines build a ring on one thread and may move it to its event-loop thread; wakers and
// buffers travel between threads.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_clone<T: Send + Clone>() {}
    send::<Ring>();
    send::<Buf>();
    send::<Completion>();
    send_clone::<Waker>();
    send_clone::<BufPool>();
};

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.slab.in_flight())
            .field("ready", &self.ready.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// The ring's descriptor polls readable while completions wait to be reaped, which lets a
/// caller with a poll loop of its own know when to turn the event loop again.
impl std::os::fd::AsFd for Ring {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to `self.uring`, which outlives the borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.uring.as_raw_fd()) }
    }
}

impl Ring {
    /// A ring with `entries` SQ slots and room for `2 * entries` operations in flight.
    ///
    /// Set-up failures name the likely cause (`kernel.io_uring_disabled`, seccomp, memlock,
    /// a missing opcode).
    pub fn new(entries: u32) -> Result<Ring, RingError> {
        Ring::with_capacity(entries, entries.saturating_mul(2))
    }

    /// Like [`Ring::new`] with an explicit bound on operations in flight.
    pub fn with_capacity(entries: u32, max_in_flight: u32) -> Result<Ring, RingError> {
        let max_in_flight = max_in_flight.max(2);
        let uring = setup::build(entries, max_in_flight)?;
        let probe = setup::probe(&uring)?;
        Ok(Ring {
            uring,
            slab: Slab::new(max_in_flight),
            ready: VecDeque::with_capacity(max_in_flight as usize + 1),
            zc: ZcTable::new(probe.send_zc),
            order: Order::new((entries / 2).max(1)),
            pool: None,
            waker: None,
            stats: RingStats::default(),
            last_wait_end: Instant::now(),
            probe,
        })
    }

    /// Whether the kernel supports IORING_OP_SEND_ZC.
    pub fn send_zc_supported(&self) -> bool {
        self.probe.send_zc
    }

    /// Operations submitted and not yet completed (a SEND_ZC counts until its notification).
    pub fn in_flight(&self) -> usize {
        self.slab.in_flight()
    }

    /// How many more operations can be submitted before [`RingError::Full`].
    pub fn free_slots(&self) -> usize {
        self.slab.capacity() - self.slab.in_flight()
    }

    /// The counters so far.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Submits queued SQEs without waiting.
    pub fn submit(&mut self) -> Result<usize, RingError> {
        self.submit_and_wait(0, None)
    }

    /// Submits queued SQEs, waits until at least `min_complete` CQEs arrived or `timeout`
    /// passed (`None`: no bound; ignored when `min_complete` is 0), then moves finished
    /// operations to the ready queue. Returns how many completions are ready. A timeout or a
    /// signal is not an error. Note that one operation may take two CQEs (SEND_ZC).
    pub fn submit_and_wait(
        &mut self,
        min_complete: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, RingError> {
        let started = Instant::now();
        self.stats.process_ns += nanos(started.duration_since(self.last_wait_end));
        let res = match timeout {
            Some(t) if min_complete > 0 => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(min_complete, &args)
            }
            _ => self.uring.submitter().submit_and_wait(min_complete),
        };
        self.last_wait_end = Instant::now();
        self.stats.wait_ns += nanos(self.last_wait_end.duration_since(started));
        match res {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {
            }
            Err(source) => return Err(RingError::Enter { source }),
        }
        self.reap()?;
        Ok(self.ready.len())
    }

    /// Drains the ready completions (oldest first).
    pub fn completions(&mut self) -> impl Iterator<Item = Completion> + '_ {
        self.ready.drain(..)
    }

    /// Takes one ready completion.
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    /// Takes the oldest ready completion whose tag satisfies `wanted`, leaving the others in
    /// order. With [`Ring::submit`] (which also reaps without waiting), an event loop in the
    /// middle of long work picks out urgent completions (a fault, a fault request) first.
    pub fn take_completion(&mut self, wanted: impl Fn(u64) -> bool) -> Option<Completion> {
        let at = self.ready.iter().position(|c| wanted(c.tag))?;
        self.ready.remove(at)
    }

    /// Moves CQEs into records, and finished records into the ready queue.
    fn reap(&mut self) -> Result<(), RingError> {
        let mut rearm_wake = false;
        loop {
            let Some(cqe) = self.uring.completion().next() else {
                break;
            };
            self.stats.cqes += 1;
            rearm_wake |= self.on_cqe(&cqe);
        }
        if rearm_wake {
            self.arm_wake()?;
        }
        Ok(())
    }

    /// Handles one CQE; returns true when the waker's read must be re-armed.
    fn on_cqe(&mut self, cqe: &cqueue::Entry) -> bool {
        let user_data = cqe.user_data();
        if user_data == CANCEL_USER_DATA {
            return false;
        }
        let Some(rec) = self.slab.get_mut(user_data) else {
            self.stats.stray_cqes += 1;
            return false;
        };
        let (res, flags) = (cqe.result(), cqe.flags());
        if cqueue::notif(flags) {
            let copied = res & IORING_NOTIF_USAGE_ZC_COPIED != 0;
            let fd = rec.fd;
            self.stats.zc_notifs += 1;
            self.stats.zc_copied += u64::from(copied);
            self.zc.note(fd, copied);
            let Some(main_res) = rec.result else {
                // Notification before the result: impossible per the ABI; keep waiting.
                return false;
            };
            self.finish(user_data, main_res);
            return false;
        }
        let ordered = rec.ordered.map(|dir| (rec.fd, dir));
        let rearm = self.on_result(user_data, res, flags);
        if let Some(key) = ordered {
            self.advance_order(key);
        }
        rearm
    }

    /// Handles the main (non-notification) CQE of a record.
    fn on_result(&mut self, user_data: u64, res: i32, flags: u32) -> bool {
        let Some(rec) = self.slab.get_mut(user_data) else {
            return false;
        };
        match rec.kind {
            OpKind::SendZc if cqueue::more(flags) => {
                rec.result = Some(res);
                false
            }
            OpKind::Wake => {
                let active = self.waker.as_ref().is_some_and(|a| a.is_active());
                if res < 0 || !active {
                    // Cancelled (ring closing), disarmed, or a broken eventfd: stop re-arming.
                    self.slab.remove(user_data);
                    if let Some(armed) = self.waker.as_mut() {
                        armed.disarm();
                    }
                    return false;
                }
                let tag = rec.tag;
                self.ready.push_back(Completion {
                    tag,
                    result: cqe_result(res, OpKind::Wake),
                    buf: None,
                });
                true
            }
            _ => {
                self.finish(user_data, res);
                false
            }
        }
    }

    /// An operation of a socket direction's running chain got its result: when the chain is
    /// done, submit the queued operations as the next IO_LINK chain.
    fn advance_order(&mut self, key: (RawFd, Dir)) {
        let slab = &mut self.slab;
        let skip = |from: u64, n: u32| {
            let mut cursor = Some(from);
            for _ in 0..n {
                cursor = cursor.and_then(|ud| slab.get_mut(ud).and_then(|r| r.next));
            }
            cursor
        };
        let Some(batch) = self.order.release(key, skip) else {
            return;
        };
        // The whole chain must enter the SQ in one submission: a chain cut by a flush would
        // end early and its tail would run unordered.
        let free = {
            let sq = self.uring.submission();
            sq.capacity() - sq.len()
        };
        if free < batch.count as usize {
            if let Err(e) = self.uring.submit() {
                tracing::warn!(error = %e, "flush before a send chain failed");
            }
        }
        let mut cursor = Some(batch.first);
        let mut failed = 0;
        for i in 0..batch.count {
            let Some(ud) = cursor else { break };
            let Some(rec) = self.slab.get_mut(ud) else { break };
            cursor = rec.next.take();
            let Some(entry) = rec.pending.take() else {
                continue;
            };
            let last = i + 1 == batch.count;
            let entry = if last { entry } else { entry.flags(squeue::Flags::IO_LINK) };
            // A push fails only when io_uring_enter itself fails (the ring is unusable);
            // the operation completes with EIO and leaves the chain's count.
            if let Err(e) = self.push(&entry) {
                tracing::warn!(error = %e, "queued socket operation could not be submitted");
                self.finish(ud, -libc::EIO);
                failed += 1;
            }
        }
        for _ in 0..failed {
            self.advance_order(key);
        }
    }

    /// Frees the record and queues its completion with the buffer adjusted to the result.
    fn finish(&mut self, user_data: u64, res: i32) {
        let Some(rec) = self.slab.get_mut(user_data) else {
            return;
        };
        let (tag, kind) = (rec.tag, rec.kind);
        let mut buf = self.slab.remove(user_data);
        let result = cqe_result(res, kind);
        if let (Ok(n), Some(b)) = (&result, buf.as_mut()) {
            match kind {
                OpKind::Send | OpKind::SendZc => b.advance(*n),
                OpKind::Receive => b.extend_filled(*n),
                _ => {}
            }
        }
        self.ready.push_back(Completion { tag, result, buf });
    }

    /// Pushes one SQE, flushing the submission queue when it is full.
    fn push(&mut self, entry: &squeue::Entry) -> Result<(), RingError> {
        for _ in 0..8 {
            // SAFETY: every pointer in `entry` refers to memory owned by a live slab record
            // (buffer, timespec) or by the ring itself (waker buffer), and stays valid until
            // the record is freed after its final CQE.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                self.stats.sqes += 1;
                return Ok(());
            }
            self.stats.sq_full_flushes += 1;
            match self.uring.submit() {
                Ok(_) => {}
                // CQ overflow: the kernel wants completions reaped before it takes more.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap()?,
                Err(source) => return Err(RingError::Enter { source }),
            }
        }
        Err(RingError::SubmissionQueueStuck)
    }

    fn arm_wake(&mut self) -> Result<(), RingError> {
        let Some(armed) = self.waker.as_mut().filter(|a| a.is_active()) else {
            return Ok(());
        };
        let entry = armed.read_entry();
        self.push(&entry)
    }
}

/// Converts a CQE result into bytes or an OS error; an expired timeout is success.
fn cqe_result(res: i32, kind: OpKind) -> io::Result<usize> {
    if res >= 0 {
        return Ok(res as usize);
    }
    if kind == OpKind::Timeout && res == -libc::ETIME {
        return Ok(0);
    }
    Err(io::Error::from_raw_os_error(-res))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Drop for Ring {
    /// Cancels what is in flight and waits (bounded) for the kernel to let go of the buffers;
    /// buffers of operations that did not finish in time are leaked rather than freed under
    /// the kernel's feet.
    fn drop(&mut self) {
        if let Some(armed) = self.waker.as_mut() {
            armed.disarm();
        }
        // Queued operations never reached the kernel: free them directly.
        for head in self.order.take_all_heads() {
            let mut cursor = Some(head);
            for _ in 0..self.slab.capacity() {
                let Some(ud) = cursor else { break };
                cursor = self.slab.get_mut(ud).and_then(|r| r.next);
                self.slab.remove(ud);
            }
        }
        if self.slab.in_flight() > 0 {
            let cancel = io_uring::opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(CANCEL_USER_DATA);
            let _ = self.push(&cancel);
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.slab.in_flight() > 0 && Instant::now() < deadline {
                if self.submit_and_wait(1, Some(Duration::from_millis(50))).is_err() {
                    break;
                }
                self.ready.clear();
            }
            if self.slab.in_flight() > 0 {
                self.slab.leak_buffers();
                if let Some(armed) = self.waker.take() {
                    std::mem::forget(armed);
                }
            }
        }
    }
}
