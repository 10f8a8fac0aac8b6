//! Who waited: each network fault's latency is charged to the vCPU whose fault sent the
//! request, so the report can say which vCPU the migration held up, not only how long in all.
//!
//! A fault enters with its vCPU index (or [`wire::FAULT_VCPU_UNKNOWN`]) in `on_fault`; its
//! latency leaves into the per-vCPU table when its page is placed (`mark_present`).

use super::*;

/// A network fault in progress: when its message was read, and the vCPU that raised it
/// ([`wire::FAULT_VCPU_UNKNOWN`] when the VMM could not tell).
#[derive(Debug, Clone, Copy)]
pub(super) struct FaultWait {
    pub started_ns: u64,
    pub vcpu: u32,
}

/// vCPU indices whose blocked time is kept apart; a higher one counts as unattributed, so a
/// VMM's bogus index cannot grow the table.
pub const VCPUS_ATTRIBUTED_MAX: usize = 1024;

impl DestEngine {
    /// Time each vCPU waited on network faults (us), indexed by vCPU: the latency of each
    /// network fault goes to the vCPU whose fault sent the request (a second thread waiting on
    /// the same page adds nothing, as in `vcpu_blocked_ms`). With
    /// [`DestEngine::blocked_us_unattributed`] it sums to the histogram's `sum_us`.
    pub fn blocked_us_per_vcpu(&self) -> &[u64] {
        &self.blocked_us_per_vcpu
    }

    /// Network-fault latencies of threads that were not a known vCPU (us).
    pub fn blocked_us_unattributed(&self) -> u64 {
        self.blocked_us_unattributed
    }

    /// Adds a served fault's latency to the vCPU that waited for it.
    pub(super) fn charge_blocked(&mut self, vcpu: u32, latency_us: u64) {
        let index = vcpu as usize;
        if vcpu == wire::FAULT_VCPU_UNKNOWN || index >= VCPUS_ATTRIBUTED_MAX {
            self.blocked_us_unattributed += latency_us;
            return;
        }
        if self.blocked_us_per_vcpu.len() <= index {
            self.blocked_us_per_vcpu.resize(index + 1, 0);
        }
        self.blocked_us_per_vcpu[index] += latency_us;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{feed, running_postcopy, window_of, Recorder};
    use super::*;

    fn request_vcpu(dest: &mut DestEngine) -> u32 {
        let mut out = Vec::new();
        assert!(dest.poll_urgent(&mut out), "a fault request");
        let (frame, _) = wire::decode_frame(&out, &wire::Limits::default()).expect("frame");
        match frame.body {
            wire::FrameBody::FaultRequest(r) => r.vcpu,
            other => panic!("expected a fault request, got {:?}", other.frame_type()),
        }
    }

    #[test]
    fn each_fault_is_charged_to_the_vcpu_that_raised_it() {
        let mut sink = Recorder::default();
        let mut dest = running_postcopy(&mut sink);
        let page = vec![7u8; PAGE_SIZE];
        // vCPU 1, then a thread the VMM could not name, then vCPU 1 again on a page already
        // asked for (the first request's vCPU keeps the wait).
        dest.on_fault(3, 1, &mut sink).expect("fault");
        assert_eq!(request_vcpu(&mut dest), 1, "the wire names the vCPU");
        dest.on_fault(9, wire::FAULT_VCPU_UNKNOWN, &mut sink).expect("fault");
        assert_eq!(request_vcpu(&mut dest), wire::FAULT_VCPU_UNKNOWN);
        dest.on_fault(9, 1, &mut sink).expect("a second waiter");
        dest.on_fault(12, (VCPUS_ATTRIBUTED_MAX + 5) as u32, &mut sink).expect("fault");
        std::thread::sleep(std::time::Duration::from_millis(2));
        for first in [3, 9, 12] {
            feed(&mut dest, StreamKind::Urgent, &window_of(first, &page), &mut sink);
        }
        let per_vcpu = dest.blocked_us_per_vcpu();
        assert_eq!(per_vcpu.len(), 2, "indexed by vCPU up to the highest seen");
        assert_eq!(per_vcpu[0], 0);
        assert!(per_vcpu[1] >= 2_000, "vCPU 1 waited at least 2 ms: {per_vcpu:?}");
        assert!(dest.blocked_us_unattributed() >= 4_000, "two unattributed waits");
        let total: u64 = per_vcpu.iter().sum::<u64>() + dest.blocked_us_unattributed();
        assert_eq!(total, dest.fault_histogram().sum_us(), "the parts sum to the whole");
        let dist = dest.fault_histogram().pow2_dist();
        assert_eq!(dist.iter().sum::<u64>(), dest.stats().network_faults);
    }
}
