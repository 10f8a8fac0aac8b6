//! A seeded simulator of the bulk and urgent streams between two endpoints, in one process.
//!
//! Bytes enter with [`SimNet::send`] (from a [`Side`], on a [`StreamKind`]) and leave as
//! [`SimEvent::Deliver`] from [`SimNet::next_event`], which advances a virtual clock to the
//! event's time: nothing sleeps. Within one stream and direction delivery is in order, as TCP
//! guarantees: a "lost" segment is retransmitted after a timeout and delays everything queued
//! behind it. The two streams are independent, so urgent data can overtake bulk data. Faults
//! ([`SimFaults`]): per-segment delay, loss with retransmission delay, extra hold-back of a
//! segment (reordering across streams), disconnects (by probability per send, at a time, or
//! after a byte count), and bit flips in delivered bytes (which the frame CRC must catch).
//!
//! After a drop, [`SimNet::reconnect`] opens a new connection for both streams (what was in
//! flight on the old one is lost), so a recovery can be simulated too.
//!
//! Every run is a function of its seed. [`run_seeded`] prints `SIM SEED=<n>` when the run
//! panics, and [`SEED_ENV`] (`HYBRIDMIG_SIM_SEED`) replays that seed.

mod rng;

pub use rng::SimRng;

use super::StreamKind;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Environment variable that forces the seed of [`seed_for_run`] / [`run_seeded`].
pub const SEED_ENV: &str = "HYBRIDMIG_SIM_SEED";

/// One end of the simulated link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The migration source.
    Source,
    /// The migration destination.
    Dest,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Source => Side::Dest,
            Side::Dest => Side::Source,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Source => 0,
            Side::Dest => 1,
        }
    }
}

/// Fault model of the link. [`SimFaults::default`] is a perfect link with zero delay.
#[derive(Clone, Debug, PartialEq)]
pub struct SimFaults {
    /// One-way delay of a segment, uniform in this inclusive range (microseconds).
    pub delay_us: (u64, u64),
    /// Probability that a segment is lost (and retransmitted, possibly lost again).
    pub loss_probability: f64,
    /// Delay each loss adds before the retransmission arrives.
    pub retransmit_delay_us: u64,
    /// Probability that a segment is held back, letting the other stream overtake.
    pub reorder_probability: f64,
    /// How long a held-back segment waits.
    pub reorder_extra_us: u64,
    /// Probability, per send, that the connection drops right then.
    pub disconnect_probability: f64,
    /// Drop the connection at this virtual time.
    pub disconnect_at_us: Option<u64>,
    /// Drop the connection once this many bytes (both streams, both ways) were sent on it.
    pub disconnect_after_bytes: Option<u64>,
    /// Probability that a delivered byte has one bit flipped.
    pub corrupt_byte_probability: f64,
}

impl Default for SimFaults {
    fn default() -> SimFaults {
        SimFaults {
            delay_us: (0, 0),
            loss_probability: 0.0,
            retransmit_delay_us: 200_000,
            reorder_probability: 0.0,
            reorder_extra_us: 0,
            disconnect_probability: 0.0,
            disconnect_at_us: None,
            disconnect_after_bytes: None,
            corrupt_byte_probability: 0.0,
        }
    }
}

/// Why the simulated connection dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The per-send disconnect probability fired.
    Random,
    /// `disconnect_at_us` was reached.
    AtTime,
    /// `disconnect_after_bytes` was reached.
    AfterBytes,
}

/// Something the simulated network did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimEvent {
    /// Bytes arrive at `to` on `stream`.
    Deliver {
        /// Receiving side.
        to: Side,
        /// Which stream.
        stream: StreamKind,
        /// The bytes (possibly corrupted).
        bytes: Vec<u8>,
    },
    /// Both streams dropped; data still in flight is lost.
    Disconnected {
        /// Why.
        cause: DisconnectCause,
        /// Bytes sent over the link up to the drop.
        bytes_sent: u64,
    },
}

/// The link refused a send.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    /// The connection has dropped (or is dropping); the engine must reconnect.
    #[error("simulated connection is down ({cause:?}); {len_bytes} bytes not sent")]
    Disconnected {
        /// Why it dropped.
        cause: DisconnectCause,
        /// Bytes of the refused send.
        len_bytes: usize,
    },
    /// A reconnect was asked for while the connection is up.
    #[error("simulated connection is up: nothing to reconnect")]
    StillConnected,
}

/// Counters of what the simulator did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Sends accepted.
    pub segments_sent: u64,
    /// Bytes accepted.
    pub bytes_sent: u64,
    /// Losses (each costs one retransmission delay).
    pub losses: u64,
    /// Segments held back for reordering.
    pub held_back: u64,
    /// Segments delivered.
    pub segments_delivered: u64,
    /// Bytes delivered.
    pub bytes_delivered: u64,
    /// Bytes that had a bit flipped.
    pub bytes_corrupted: u64,
    /// Segments dropped because the link went down first.
    pub segments_dropped: u64,
    /// Reconnections after a drop.
    pub reconnects: u64,
}

#[derive(Debug)]
struct Scheduled {
    time_us: u64,
    seq: u64,
    event: SimEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time_us, self.seq) == (other.time_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed so the BinaryHeap (a max-heap) pops the earliest event; `seq` breaks ties in
    // send order, which keeps equal-time deliveries of one stream in order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time_us, other.seq).cmp(&(self.time_us, self.seq))
    }
}

/// The simulated pair of streams between [`Side::Source`] and [`Side::Dest`].
#[derive(Debug)]
pub struct SimNet {
    seed: u64,
    rng: SimRng,
    faults: SimFaults,
    now_us: u64,
    next_seq: u64,
    queue: BinaryHeap<Scheduled>,
    /// Latest delivery time per (sender side, stream): later segments never arrive earlier.
    tail_us: [[u64; 2]; 2],
    /// Set once a drop is decided; sends fail from then on.
    down: Option<DisconnectCause>,
    /// `stats.bytes_sent` when the current connection opened.
    bytes_at_connect: u64,
    stats: SimStats,
}

impl SimNet {
    /// A link with the given fault model, fully determined by `seed`.
    pub fn new(seed: u64, faults: SimFaults) -> SimNet {
        let mut net = SimNet {
            seed,
            rng: SimRng::new(seed),
            faults,
            now_us: 0,
            next_seq: 0,
            queue: BinaryHeap::new(),
            tail_us: [[0; 2]; 2],
            down: None,
            bytes_at_connect: 0,
            stats: SimStats::default(),
        };
        if let Some(at_us) = net.faults.disconnect_at_us {
            net.schedule_disconnect(at_us, DisconnectCause::AtTime);
        }
        net
    }

    /// The seed this link was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual clock.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// True once the link dropped (or a drop is scheduled by a send).
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// Time of the next event, if any.
    pub fn peek_time_us(&self) -> Option<u64> {
        self.queue.peek().map(|s| s.time_us)
    }

    /// Advances the clock to `time_us` if no event comes earlier (for engine timers); returns
    /// the new time. The clock never goes backwards.
    pub fn advance_to(&mut self, time_us: u64) -> u64 {
        let limit = self.peek_time_us().unwrap_or(u64::MAX);
        self.now_us = self.now_us.max(time_us.min(limit));
        self.now_us
    }

    /// Queues `bytes` from `from` to its peer on `stream`.
    pub fn send(&mut self, from: Side, stream: StreamKind, bytes: &[u8]) -> Result<(), SimError> {
        if let Some(cause) = self.down {
            return Err(SimError::Disconnected { cause, len_bytes: bytes.len() });
        }
        let cut = if self.rng.chance(self.faults.disconnect_probability) {
            Some(DisconnectCause::Random)
        } else {
            self.faults
                .disconnect_after_bytes
                .filter(|limit| self.connection_bytes() + bytes.len() as u64 > *limit)
                .map(|_| DisconnectCause::AfterBytes)
        };
        if let Some(cause) = cut {
            self.schedule_disconnect(self.now_us, cause);
            return Err(SimError::Disconnected { cause, len_bytes: bytes.len() });
        }
        let arrival_us = self.arrival_time(from, stream);
        self.stats.segments_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.push(arrival_us, SimEvent::Deliver { to: from.peer(), stream, bytes: bytes.to_vec() });
        Ok(())
    }

    /// Bytes sent on the current connection.
    fn connection_bytes(&self) -> u64 {
        self.stats.bytes_sent - self.bytes_at_connect
    }

    /// Drops the connection now, as a side that found it broken (a frame that failed its CRC)
    /// would: what is in flight is lost, and sends fail until [`SimNet::reconnect`].
    pub fn break_now(&mut self) {
        if self.down.is_none() {
            self.down = Some(DisconnectCause::Random);
            self.stats.segments_dropped += self.queue.len() as u64;
            self.queue.retain(|s| {
                matches!(s.event, SimEvent::Disconnected { cause: DisconnectCause::AtTime, .. })
            });
        }
    }

    /// Opens a new connection for both streams after a drop: whatever was still in flight on
    /// the old one is lost (as a pending drop is), and sends work again from now on, in order
    /// within each stream. A time-based drop still ahead stays scheduled. Uses no randomness,
    /// so a seed replays the same sequence across reconnects.
    pub fn reconnect(&mut self) -> Result<(), SimError> {
        if self.down.is_none() {
            return Err(SimError::StillConnected);
        }
        let now_us = self.now_us;
        let lost =
            self.queue.iter().filter(|s| matches!(s.event, SimEvent::Deliver { .. })).count();
        self.queue.retain(|s| {
            s.time_us > now_us
                && matches!(s.event, SimEvent::Disconnected { cause: DisconnectCause::AtTime, .. })
        });
        self.stats.segments_dropped += lost as u64;
        self.down = None;
        self.tail_us = [[now_us; 2]; 2];
        self.bytes_at_connect = self.stats.bytes_sent;
        self.stats.reconnects += 1;
        Ok(())
    }

    /// Delay, losses and hold-back of one segment, then TCP ordering within its stream.
    fn arrival_time(&mut self, from: Side, stream: StreamKind) -> u64 {
        let (lo, hi) = self.faults.delay_us;
        let mut at_us = self.now_us + self.rng.range_inclusive(lo, hi);
        // Each loss costs a retransmission timeout; the retransmission may be lost too
        // (bounded, as a real TCP would give up and reset).
        for _ in 0..8 {
            if !self.rng.chance(self.faults.loss_probability) {
                break;
            }
            self.stats.losses += 1;
            at_us += self.faults.retransmit_delay_us;
        }
        if self.rng.chance(self.faults.reorder_probability) {
            self.stats.held_back += 1;
            at_us += self.faults.reorder_extra_us;
        }
        let tail = &mut self.tail_us[from.index()][stream.index()];
        *tail = (*tail).max(at_us);
        *tail
    }

    fn schedule_disconnect(&mut self, at_us: u64, cause: DisconnectCause) {
        if cause != DisconnectCause::AtTime {
            self.down = Some(cause);
        }
        let bytes_sent = self.stats.bytes_sent;
        self.push(at_us, SimEvent::Disconnected { cause, bytes_sent });
    }

    fn push(&mut self, time_us: u64, event: SimEvent) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Scheduled { time_us, seq, event });
    }

    /// The next event in virtual time (advancing the clock to it), or `None` when idle.
    /// After a disconnect, everything still in flight is dropped.
    pub fn next_event(&mut self) -> Option<(u64, SimEvent)> {
        let Scheduled { time_us, event, .. } = self.queue.pop()?;
        self.now_us = self.now_us.max(time_us);
        match event {
            SimEvent::Deliver { to, stream, mut bytes } => {
                self.corrupt(&mut bytes);
                self.stats.segments_delivered += 1;
                self.stats.bytes_delivered += bytes.len() as u64;
                Some((self.now_us, SimEvent::Deliver { to, stream, bytes }))
            }
            SimEvent::Disconnected { cause, .. } => {
                self.down = Some(cause);
                self.stats.segments_dropped += self.queue.len() as u64;
                self.queue.clear();
                let bytes_sent = self.stats.bytes_sent;
                Some((self.now_us, SimEvent::Disconnected { cause, bytes_sent }))
            }
        }
    }

    /// The earliest segment for `to` on `stream` due by `now_us`, taken ahead of other
    /// streams' segments (as a receiver that serves one socket first does). None when there is
    /// none, or when a drop comes first.
    pub fn take_due(&mut self, to: Side, stream: StreamKind, now_us: u64) -> Option<Vec<u8>> {
        let mut passed = Vec::new();
        let mut found = None;
        while let Some(top) = self.queue.peek() {
            if top.time_us > now_us {
                break;
            }
            let Some(next) = self.queue.pop() else { break };
            match &next.event {
                SimEvent::Deliver { to: t, stream: s, .. } if (*t, *s) == (to, stream) => {
                    found = Some(next);
                    break;
                }
                SimEvent::Deliver { .. } => passed.push(next),
                SimEvent::Disconnected { .. } => {
                    passed.push(next);
                    break;
                }
            }
        }
        self.queue.extend(passed);
        let Scheduled { time_us, event: SimEvent::Deliver { mut bytes, .. }, .. } = found? else {
            return None;
        };
        self.now_us = self.now_us.max(time_us);
        self.corrupt(&mut bytes);
        self.stats.segments_delivered += 1;
        self.stats.bytes_delivered += bytes.len() as u64;
        Some(bytes)
    }

    /// Flips one random bit in each byte chosen with `corrupt_byte_probability`.
    fn corrupt(&mut self, bytes: &mut [u8]) {
        let p = self.faults.corrupt_byte_probability;
        if p <= 0.0 {
            return;
        }
        let mut i = self.rng.geometric_gap(p);
        while let Some(byte) = usize::try_from(i).ok().and_then(|i| bytes.get_mut(i)) {
            *byte ^= 1 << (self.rng.next_u64() % 8);
            self.stats.bytes_corrupted += 1;
            i = i.saturating_add(1).saturating_add(self.rng.geometric_gap(p));
        }
    }
}

/// The seed for a run: [`SEED_ENV`] if set (replay), otherwise fresh from the clock.
pub fn seed_for_run() -> u64 {
    if let Some(seed) = std::env::var(SEED_ENV).ok().and_then(|s| parse_seed(&s)) {
        return seed;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    SimRng::new(nanos ^ u64::from(std::process::id())).next_u64()
}

/// Parses a decimal or `0x`-prefixed hexadecimal seed.
pub fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Runs `body` with a seed from [`seed_for_run`]; if it panics, prints `SIM SEED=<seed>` (and
/// how to replay it) before letting the panic continue.
pub fn run_seeded<T>(name: &str, body: impl FnOnce(u64) -> T) -> T {
    let seed = seed_for_run();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(seed))) {
        Ok(v) => v,
        Err(panic) => {
            eprintln!("SIM SEED={seed} ({name} failed; replay with {SEED_ENV}={seed})");
            std::panic::resume_unwind(panic)
        }
    }
}
