//! Per-socket ordering: at most one send and one receive in flight per socket; the rest wait
//! in FIFO order inside the driver.
//!
//! Why: io_uring does not keep concurrent operations on one stream socket in order. A send
//! that fills the socket buffer is parked on poll and retried (MSG_WAITALL), and a send
//! submitted after it may run in between, so the bytes of two in-flight sends interleave on
//! the wire (observed on this kernel with 1 MiB sends). Queuing behind the socket's in-flight
//! operation keeps stream order without caller bookkeeping; the queue is a linked list through
//! the records themselves, so it allocates nothing per operation.

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
    busy: bool,
    head: Option<u64>,
    tail: Option<u64>,
}

/// The queues of all sockets seen; `next` links live in the slab records.
#[derive(Debug)]
pub(crate) struct Order {
    chains: HashMap<(RawFd, Dir), Chain>,
}

impl Order {
    pub(crate) fn new() -> Order {
        Order { chains: HashMap::with_capacity(16) }
    }

    /// Claims the direction for `user_data`; returns true when it may be submitted now, false
    /// when it was queued (the caller links it: `set_next(old_tail, user_data)`), in which
    /// case the previous tail is returned through `link_after`.
    pub(crate) fn claim(&mut self, key: (RawFd, Dir), user_data: u64) -> Claim {
        let chain = self.chains.entry(key).or_default();
        if !chain.busy {
            chain.busy = true;
            return Claim::Run;
        }
        let prev_tail = chain.tail.replace(user_data);
        if chain.head.is_none() {
            chain.head = Some(user_data);
        }
        Claim::Queued { after: prev_tail }
    }

    /// The operation in flight on `key` got its result: returns the next queued one to submit
    /// (the direction stays busy), or frees the direction. `next_of` follows the record links.
    pub(crate) fn release(
        &mut self,
        key: (RawFd, Dir),
        next_of: impl FnOnce(u64) -> Option<u64>,
    ) -> Option<u64> {
        let chain = self.chains.get_mut(&key)?;
        let Some(head) = chain.head else {
            chain.busy = false;
            return None;
        };
        chain.head = next_of(head);
        if chain.head.is_none() {
            chain.tail = None;
        }
        Some(head)
    }

    /// Removes every queue, returning the heads (the caller walks and frees the lists).
    pub(crate) fn take_all_heads(&mut self) -> Vec<u64> {
        self.chains.drain().filter_map(|(_, c)| c.head).collect()
    }
}

/// Outcome of [`Order::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Submit now.
    Run,
    /// Queued; link it after `after` (None: it is the new head).
    Queued {
        /// The previous tail.
        after: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_per_socket_direction() {
        let mut o = Order::new();
        let key = (5, Dir::Tx);
        let mut next = std::collections::HashMap::new();
        assert_eq!(o.claim(key, 1), Claim::Run);
        assert_eq!(o.claim((5, Dir::Rx), 9), Claim::Run, "directions are independent");
        assert_eq!(o.claim(key, 2), Claim::Queued { after: None });
        assert_eq!(o.claim(key, 3), Claim::Queued { after: Some(2) });
        next.insert(2u64, 3u64);
        assert_eq!(o.release(key, |ud| next.get(&ud).copied()), Some(2));
        assert_eq!(o.release(key, |ud| next.get(&ud).copied()), Some(3));
        assert_eq!(o.release(key, |_| None), None);
        assert_eq!(o.claim(key, 4), Claim::Run, "free again");
    }
}
