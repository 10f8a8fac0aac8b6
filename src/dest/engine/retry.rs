//! Asking again: a fault request not answered within a few fault latencies is sent again on
//! the bulk stream. That is another TCP connection, so a request or answer that TCP is
//! retransmitting on the urgent stream (200 ms at the least) holds up nothing; the source
//! answers a request from bulk on bulk, and placement is idempotent (a page already present
//! only wakes its waiters).

use super::*;

/// Wait before asking again until a fault has been answered here.
const RETRY_FIRST_NS: u64 = 5_000_000;
/// Bounds on the wait, whatever the measured latency.
const RETRY_MIN_NS: u64 = 2_000_000;
const RETRY_MAX_NS: u64 = 50_000_000;
/// The wait is this many typical answer times.
const RETRY_LATENCIES: u64 = 4;
/// Asks per page at most; past them the connection's liveness decides.
const RETRIES_PER_PAGE: u32 = 8;

/// When each waiting page was last asked for again, and how long answers take.
#[derive(Debug, Default)]
pub(super) struct Retries {
    /// Page -> (last ask, asks so far), for pages asked again.
    asked: HashMap<u64, (u64, u32)>,
    /// Smoothed answer time of faults (ns; 0 before the first).
    latency_ewma_ns: u64,
    /// Pages due, reused between polls.
    due: Vec<u64>,
}

impl Retries {
    fn retry_after_ns(&self) -> u64 {
        if self.latency_ewma_ns == 0 {
            return RETRY_FIRST_NS;
        }
        (self.latency_ewma_ns * RETRY_LATENCIES).clamp(RETRY_MIN_NS, RETRY_MAX_NS)
    }

    /// A fault on `page` was answered after `latency_ns`.
    pub(super) fn answered(&mut self, page: u64, latency_ns: u64) {
        if self.asked.remove(&page).is_some() {
            // An answer that needed asking again measures the loss, not the link's round trip:
            // counting it would stretch the next wait toward TCP's own retransmission time.
            return;
        }
        self.latency_ewma_ns = if self.latency_ewma_ns == 0 {
            latency_ns
        } else {
            (self.latency_ewma_ns * 7 + latency_ns) / 8
        };
    }

    /// Forgets every retry (a new connection asks for every waiting page again anyway).
    pub(super) fn restart(&mut self, now_ns: u64) {
        for entry in self.asked.values_mut() {
            *entry = (now_ns, entry.1);
        }
    }
}

impl DestEngine {
    /// True while a vCPU waits for a page from the network.
    pub fn faults_waiting(&self) -> bool {
        !self.fault_waits.is_empty()
    }

    /// Asks again, on bulk, for every page whose fault has waited past the retry time since it
    /// was last asked for. Call it often (the drivers' schedule does, each time it sends).
    pub fn poll_retries(&mut self) {
        if self.phase != DestPhase::Running || self.fault_waits.is_empty() {
            return;
        }
        let now_ns = self.clock.now_ns();
        let wait_ns = self.retries.retry_after_ns();
        let mut due = std::mem::take(&mut self.retries.due);
        due.clear();
        for (&page, wait) in &self.fault_waits {
            let started_ns = wait.started_ns;
            let (last_ns, asks) = self.retries.asked.get(&page).copied().unwrap_or((started_ns, 0));
            if asks < RETRIES_PER_PAGE && now_ns.saturating_sub(last_ns) >= wait_ns {
                due.push(page);
            }
        }
        // The same order every time (a map's order is not): the simulator replays by seed.
        due.sort_unstable();
        for &page in &due {
            let Some(request) = self.fault_request_for(page) else {
                continue;
            };
            // Not queued twice: one still waiting for the bulk stream asks already.
            if self.queue_retry(request) {
                let entry = self.retries.asked.entry(page).or_insert((now_ns, 0));
                *entry = (now_ns, entry.1 + 1);
                self.stats.fault_retries += 1;
            }
        }
        self.retries.due = due;
    }
}
