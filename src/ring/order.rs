//! Per-socket ordering of sends (and of receives): operations on one socket direction run as
//! one linked chain at a time; operations arriving meanwhile wait in FIFO order in the driver.
//!
//! Why: io_uring does not keep independent operations on one stream socket in order. A send
//! that fills the socket buffer is parked on poll and retried (MSG_WAITALL), and a send
//! submitted after it may run in between, so the bytes of two in-flight sends interleave on
//! the wire (observed on this kernel with 1 MiB sends). A chain linked with IOSQE_IO_LINK runs
//! strictly one after the other inside the kernel, so several sends can still be in flight
//! without a user-space round trip between them. The queue is a linked list through the
//! records themselves, so it allocates nothing per operation.

use std::collections::HashMap;
use std::os::fd::RawFd;

/// Which direction of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dir {
    /// Sends.
    Tx,
    /// Receives.
    Rx,
}

#[derive(Debug, Default)]
struct Chain {
    /// Operations of the current chain not yet completed.
    in_flight: u32,
    head: Option<u64>,
    tail: Option<u64>,
    queued: u32,
}

/// The queues of all sockets seen; `next` links live in the slab records.
#[derive(Debug)]
pub(crate) struct Order {
    chains: HashMap<(RawFd, Dir), Chain>,
    max_chain: u32,
}

/// Outcome of [`Order::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Submit now (a chain of one).
    Run,
    /// Queued; link it after `after` (None: it is the new head).
    Queued {
        /// The previous tail.
        after: Option<u64>,
    },
}

/// A batch to submit as one IO_LINK chain: `count` records starting at `first`, following the
/// records' `next` links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) first: u64,
    pub(crate) count: u32,
}

impl Order {
    /// `max_chain` bounds a chain of sends (it must fit the submission queue in one go).
    pub(crate) fn new(max_chain: u32) -> Order {
        Order { chains: HashMap::with_capacity(16), max_chain: max_chain.max(1) }
    }

    /// Claims the direction for `user_data`.
    pub(crate) fn claim(&mut self, key: (RawFd, Dir), user_data: u64) -> Claim {
        let chain = self.chains.entry(key).or_default();
        if chain.in_flight == 0 && chain.head.is_none() {
            chain.in_flight = 1;
            return Claim::Run;
        }
        let prev_tail = chain.tail.replace(user_data);
        if chain.head.is_none() {
            chain.head = Some(user_data);
        }
        chain.queued += 1;
        Claim::Queued { after: prev_tail }
    }

    /// One operation of the running chain got its result. When the chain is done, returns the
    /// next batch (up to `max_chain` queued operations, which become the running chain).
    /// `skip` walks `n` links from a record (the caller's view of the `next` pointers).
    pub(crate) fn release(
        &mut self,
        key: (RawFd, Dir),
        skip: impl FnOnce(u64, u32) -> Option<u64>,
    ) -> Option<Batch> {
        let chain = self.chains.get_mut(&key)?;
        chain.in_flight = chain.in_flight.saturating_sub(1);
        if chain.in_flight > 0 {
            return None;
        }
        let first = chain.head?;
        // Receives never chain: a short read counts as a failed link and would cancel the
        // rest of the chain, and short reads are normal on sockets.
        let max = if key.1 == Dir::Rx { 1 } else { self.max_chain };
        let count = chain.queued.min(max);
        chain.queued -= count;
        chain.head = skip(first, count);
        if chain.head.is_none() {
            chain.tail = None;
        }
        chain.in_flight = count;
        Some(Batch { first, count })
    }

    /// Removes the operations of `key` still waiting for their turn (none of them reached the
    /// kernel) and returns the head of their list; the running chain is left to finish.
    pub(crate) fn take_queued(&mut self, key: (RawFd, Dir)) -> Option<u64> {
        let chain = self.chains.get_mut(&key)?;
        chain.queued = 0;
        chain.tail = None;
        chain.head.take()
    }

    /// Removes every queue, returning the heads (the caller walks and frees the lists).
    pub(crate) fn take_all_heads(&mut self) -> Vec<u64> {
        self.chains.drain().filter_map(|(_, c)| c.head).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn skip(next: &HashMap<u64, u64>, from: u64, n: u32) -> Option<u64> {
        let mut cur = Some(from);
        for _ in 0..n {
            cur = cur.and_then(|c| next.get(&c).copied());
        }
        cur
    }

    #[test]
    fn fifo_batches_per_socket_direction() {
        let mut o = Order::new(2);
        let key = (5, Dir::Tx);
        let next: HashMap<u64, u64> = [(2, 3), (3, 4)].into_iter().collect();
        assert_eq!(o.claim(key, 1), Claim::Run);
        assert_eq!(o.claim((5, Dir::Rx), 9), Claim::Run, "directions are independent");
        assert_eq!(o.claim(key, 2), Claim::Queued { after: None });
        assert_eq!(o.claim(key, 3), Claim::Queued { after: Some(2) });
        assert_eq!(o.claim(key, 4), Claim::Queued { after: Some(3) });
        // 1 completes: 2 and 3 go as one chain (max 2), 4 waits.
        assert_eq!(o.release(key, |f, n| skip(&next, f, n)), Some(Batch { first: 2, count: 2 }));
        assert_eq!(o.release(key, |f, n| skip(&next, f, n)), None, "3 still running");
        assert_eq!(o.release(key, |f, n| skip(&next, f, n)), Some(Batch { first: 4, count: 1 }));
        assert_eq!(o.release(key, |_, _| None), None);
        assert_eq!(o.claim(key, 6), Claim::Run, "free again");
        let rx = (5, Dir::Rx);
        assert_eq!(o.claim(rx, 20), Claim::Queued { after: None });
        assert_eq!(o.claim(rx, 21), Claim::Queued { after: Some(20) });
        let rx_next: HashMap<u64, u64> = [(20, 21)].into_iter().collect();
        assert_eq!(
            o.release(rx, |f, n| skip(&rx_next, f, n)),
            Some(Batch { first: 20, count: 1 }),
            "receives run one at a time"
        );
    }
}
