//! A running hash of a simulated migration's event trace.
//!
//! Every event the simulation driver sees (a delivery, a fault, the resume, the end) is folded
//! in as a few words. Two runs from the same seed must give the same hash; a difference means
//! something in the run depends on more than its seed (a clock read, a hash-map order, an
//! uninitialised buffer), which would make a failing seed impossible to replay.

/// FNV-1a over 64-bit words: stable across builds, platforms and Rust releases (std's
/// `DefaultHasher` promises none of that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHash {
    state: u64,
    events: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// What happened, as the first word of a trace event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum TraceKind {
    /// Bytes delivered: side, stream, length, CRC32 of the bytes.
    Deliver = 1,
    /// A destination vCPU touched a missing page: the page.
    Fault = 2,
    /// The destination resumed the guest.
    Resume = 3,
    /// Both ends finished.
    Finished = 4,
    /// A planted fault fired: what it dropped.
    Planted = 5,
    /// The connection dropped.
    Disconnect = 6,
    /// A new connection replaced it.
    Reconnect = 7,
}

impl Default for TraceHash {
    fn default() -> Self {
        Self { state: FNV_OFFSET, events: 0 }
    }
}

impl TraceHash {
    /// Folds one event, at virtual time `at_us`, with its words.
    pub fn event(&mut self, kind: TraceKind, at_us: u64, words: &[u64]) {
        self.events += 1;
        self.word(kind as u64);
        self.word(at_us);
        for &w in words {
            self.word(w);
        }
    }

    fn word(&mut self, w: u64) {
        for byte in w.to_le_bytes() {
            self.state ^= u64::from(byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.state
    }

    /// Events folded so far.
    pub fn events(&self) -> u64 {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_time_and_content_all_change_the_hash() {
        let mut a = TraceHash::default();
        a.event(TraceKind::Fault, 10, &[1]);
        a.event(TraceKind::Resume, 20, &[]);
        let mut b = TraceHash::default();
        b.event(TraceKind::Resume, 20, &[]);
        b.event(TraceKind::Fault, 10, &[1]);
        assert_ne!(a.value(), b.value());
        let mut c = TraceHash::default();
        c.event(TraceKind::Fault, 11, &[1]);
        c.event(TraceKind::Resume, 20, &[]);
        assert_ne!(a.value(), c.value());
        let mut d = TraceHash::default();
        d.event(TraceKind::Fault, 10, &[1]);
        d.event(TraceKind::Resume, 20, &[]);
        assert_eq!(a, d);
    }
}
