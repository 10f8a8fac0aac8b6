//! The source's adaptive policies, each fed by what the engine measures: the fault window
//! (from where faults fall), lz4 on or off (from probe windows and the link rate), and the
//! link rate itself.

/// Smallest adaptive fault window (pages).
const WINDOW_MIN_PAGES: u32 = 4;
/// Largest adaptive fault window (pages): the protocol's window limit.
const WINDOW_MAX_PAGES: u32 = 256;

/// The fault window size, adapted to the guest's access pattern (after CRIU's lazy-pages
/// daemon, which grows its transfer while faults are quiet and shrinks it on each fault): a
/// fault just past the previous window means the guest walks memory in order, so the next
/// answer doubles; a fault elsewhere means random access, so it halves.
#[derive(Debug, Clone)]
pub struct AdaptiveWindow {
    pages: u32,
    next_expected: Option<u64>,
}

impl AdaptiveWindow {
    /// A window starting at `pages`.
    pub fn new(pages: u32) -> Self {
        Self { pages: pages.clamp(WINDOW_MIN_PAGES, WINDOW_MAX_PAGES), next_expected: None }
    }

    /// The window for a fault on `page`, updated by where it fell.
    pub fn on_fault(&mut self, page: u64) -> u32 {
        if let Some(expected) = self.next_expected {
            // In order: at or just past the end of what the last answer covered.
            let sequential = page >= expected.saturating_sub(u64::from(self.pages))
                && page < expected + u64::from(self.pages);
            self.pages = if sequential {
                (self.pages * 2).min(WINDOW_MAX_PAGES)
            } else {
                (self.pages / 2).max(WINDOW_MIN_PAGES)
            };
        }
        // window_around puts a quarter of the window before the page.
        self.next_expected = Some(page + u64::from(self.pages - self.pages / 4));
        self.pages
    }
}

/// Whether lz4 moves guest bytes at least 10% faster than the raw link: the source
/// compresses while the link sends, so its rate is the slower of the compressor (counted at
/// half its probed rate, see `pick_compression`) and the link divided by the ratio.
pub(super) fn lz4_worth(link_bytes_per_ms: f64, lz4_bytes_per_ms: f64, ratio: f64) -> bool {
    let with_lz4 = (lz4_bytes_per_ms / 2.0).min(link_bytes_per_ms / ratio.max(0.01));
    with_lz4 > 1.1 * link_bytes_per_ms
}

/// Windows between two lz4 probes of the auto compression policy.
const LZ4_PROBE_EVERY: u64 = 32;

/// Measurements of lz4 on the guest's own pages, from probe windows.
#[derive(Debug, Clone, Default)]
pub(super) struct Lz4Probe {
    windows: u64,
    /// Non-zero input bytes compressed per ms of compressor time (EWMA).
    bytes_per_ms: f64,
    /// Output bytes per input byte (EWMA).
    ratio: f64,
}

impl Lz4Probe {
    /// Counts a window; true when this one is to be a probe.
    pub(super) fn due(&mut self) -> bool {
        self.windows += 1;
        self.windows % LZ4_PROBE_EVERY == 1
    }

    pub(super) fn record(&mut self, input_bytes: u64, output_bytes: u64, elapsed_ns: u64) {
        if input_bytes == 0 {
            return; // all-zero window: says nothing about the compressor
        }
        let rate = input_bytes as f64 / (elapsed_ns.max(1) as f64 / 1e6);
        let ratio = output_bytes as f64 / input_bytes as f64;
        let first = self.bytes_per_ms == 0.0;
        self.bytes_per_ms = if first { rate } else { 0.8 * self.bytes_per_ms + 0.2 * rate };
        self.ratio = if first { ratio } else { 0.8 * self.ratio + 0.2 * ratio };
    }

    /// (compressor rate in input bytes per ms, ratio), once a probe measured them.
    pub(super) fn estimate(&self) -> Option<(f64, f64)> {
        (self.bytes_per_ms > 0.0).then_some((self.bytes_per_ms, self.ratio))
    }
}

/// Spans (of [`RateMeter`], 5 ms or more each) of one turn of an lz4 trial: lz4 on, or off.
const LZ4_TURN_SPANS: u32 = 12;
/// Spans at the start of a turn that count for neither side: the sockets' buffers (several MB
/// between the two ends) still hold what the other side sent, and the link is draining that.
const LZ4_SETTLE_SPANS: u32 = 8;
/// Turns each side of a trial gets before its verdict (they alternate).
const LZ4_TURNS_PER_SIDE: u32 = 2;
/// Spans a trial may last; one whose sides did not both fill by then is lost (lz4 off).
const LZ4_TRIAL_MAX_SPANS: u64 = 200;
/// Spans lz4 stays off after it lost a trial (about 2 s).
const LZ4_VETO_SPANS: u64 = 400;
/// Spans before the first trial: the first few fill the socket's send buffer at the CPU's
/// rate, not the link's.
const LZ4_TRIAL_AFTER_SPANS: u64 = 16;

/// One side of an lz4 trial: the spans measured with lz4 on, or with it off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct TrialSide {
    guest_bytes: f64,
    elapsed_ms: f64,
    spans: u32,
}

impl TrialSide {
    fn add(&mut self, span: Span) {
        self.guest_bytes += span.guest_bytes as f64;
        self.elapsed_ms += span.elapsed_ms;
        self.spans += 1;
    }

    /// Non-zero guest bytes moved per ms on this side.
    pub(super) fn guest_bytes_per_ms(&self) -> f64 {
        self.guest_bytes / self.elapsed_ms.max(1e-9)
    }
}

/// The check on the lz4 choice. The rates only predict that lz4 pays: where the limit is the
/// pages rather than the link's bytes (a destination busy placing them, as over loopback on a
/// slow day), compressing moves no more guest memory and costs the source's CPU. So lz4, once
/// predicted, runs as a trial that alternates turns of lz4 and raw and sorts the measured
/// spans by which was in force (leaving out the first spans of each turn): lz4 stays on only
/// when its side moved at least 10% more non-zero guest bytes per ms. Alternating, not
/// before-and-after, because the rate drifts by itself (a post-copy's faults thin out as the
/// guest's hot pages arrive).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) enum Lz4Check {
    /// Not tried since the prediction last turned it off.
    #[default]
    Untried,
    /// Measuring since span `from_span`; `lz4_now` is the side in force, for `turn_spans`
    /// spans so far.
    Trial { from_span: u64, lz4_now: bool, turn_spans: u32, lz4: TrialSide, raw: TrialSide },
    /// Won its trial; on while the prediction holds.
    Confirmed,
    /// Lost its trial; off until span `until_span`.
    Vetoed { until_span: u64 },
}

impl Lz4Check {
    /// A measured span, sorted into its trial side by whether lz4 was in force (`lz4_on`).
    pub(super) fn on_span(&mut self, span: Span, lz4_on: bool) {
        if let Lz4Check::Trial { lz4_now, turn_spans, lz4, raw, .. } = self {
            *turn_spans += 1;
            if *turn_spans > LZ4_SETTLE_SPANS && lz4_on == *lz4_now {
                if lz4_on { lz4 } else { raw }.add(span);
            }
        }
    }

    /// Whether lz4 is to be on, given the rates' prediction, at span `now`.
    pub(super) fn decide(&mut self, predicted: bool, now: u64) -> bool {
        match *self {
            Lz4Check::Vetoed { until_span } if now < until_span => false,
            _ if !predicted || now < LZ4_TRIAL_AFTER_SPANS => {
                *self = Lz4Check::Untried;
                false
            }
            Lz4Check::Untried | Lz4Check::Vetoed { .. } => {
                let (lz4, raw) = (TrialSide::default(), TrialSide::default());
                *self = Lz4Check::Trial { from_span: now, lz4_now: true, turn_spans: 0, lz4, raw };
                true
            }
            Lz4Check::Trial { from_span, lz4_now, turn_spans, lz4, raw } => {
                let side_spans = LZ4_TURNS_PER_SIDE * (LZ4_TURN_SPANS - LZ4_SETTLE_SPANS);
                let filled = lz4.spans >= side_spans && raw.spans >= side_spans;
                if !filled && now < from_span + LZ4_TRIAL_MAX_SPANS {
                    if turn_spans < LZ4_TURN_SPANS {
                        return lz4_now;
                    }
                    let lz4_now = !lz4_now;
                    *self = Lz4Check::Trial { from_span, lz4_now, turn_spans: 0, lz4, raw };
                    return lz4_now;
                }
                let won = filled && lz4.guest_bytes_per_ms() >= 1.1 * raw.guest_bytes_per_ms();
                tracing::info!(
                    lz4_guest_bytes_per_ms = lz4.guest_bytes_per_ms(),
                    raw_guest_bytes_per_ms = raw.guest_bytes_per_ms(),
                    lz4_spans = lz4.spans,
                    raw_spans = raw.spans,
                    won,
                    "source: lz4 trial ended"
                );
                *self = if won {
                    Lz4Check::Confirmed
                } else {
                    Lz4Check::Vetoed { until_span: now + LZ4_VETO_SPANS }
                };
                won
            }
            Lz4Check::Confirmed => true,
        }
    }
}

/// One measuring span of [`RateMeter`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    /// Non-zero guest bytes sent in it.
    pub(super) guest_bytes: u64,
    /// Its length.
    pub(super) elapsed_ms: f64,
}

/// Share of a measuring span that the loop must spend waiting for a bulk send buffer (every
/// one in the kernel) for the span to count as *link-bound*: the path beyond the loop, not the
/// loop, set its rate.
const LINK_BOUND_SHARE: f64 = 0.2;

/// Bytes per millisecond over the recent past (exponentially weighted), and what the link can
/// carry.
///
/// The two differ where the sending loop is the limit. On loopback and veth the sending thread
/// also delivers the packets, so its output rate measures the CPU; compressing there adds work
/// to the bottleneck. Fed the output rate as if it were the link's, the lz4 policy turned lz4
/// on over loopback on a slow day (the compressor beat the CPU-bound "link"), and then the
/// time spent compressing made the output rate look slower still, which kept it on for a large
/// share of a post-copy's pages over loopback. So the link's rate is learned only
/// from spans in which the loop waited on the link, and it is never below what the loop pushes
/// through it now (a spell of waiting on a slow receiver must not stand for the link later).
#[derive(Debug, Clone, Default)]
pub(super) struct RateMeter {
    last_ns: u64,
    ewma_bytes_per_ms: f64,
    acc_bytes: u64,
    /// Time in the current span the loop spent waiting with every bulk buffer in the kernel.
    acc_wait_ns: u64,
    /// What the link carried in link-bound spans (EWMA); 0 until one was seen.
    link_bytes_per_ms: f64,
    /// Non-zero guest bytes behind the wire bytes of the current span.
    acc_guest_bytes: u64,
    /// Spans measured so far (the clock of [`Lz4Check`]).
    spans: u64,
}

impl RateMeter {
    /// `bytes` left on the wire at `now_ns`, carrying `guest_bytes` of non-zero guest pages;
    /// the span it closed, if it closed one.
    pub(super) fn record(&mut self, bytes: u64, guest_bytes: u64, now_ns: u64) -> Option<Span> {
        if self.last_ns == 0 {
            self.last_ns = now_ns;
        }
        self.acc_bytes += bytes;
        self.acc_guest_bytes += guest_bytes;
        let elapsed_ns = now_ns.saturating_sub(self.last_ns);
        let elapsed_ms = elapsed_ns as f64 / 1e6;
        if elapsed_ms >= 5.0 {
            let sample = self.acc_bytes as f64 / elapsed_ms;
            self.ewma_bytes_per_ms = ewma(self.ewma_bytes_per_ms, sample, 0.3);
            if self.acc_wait_ns as f64 >= LINK_BOUND_SHARE * elapsed_ns as f64 {
                self.link_bytes_per_ms = ewma(self.link_bytes_per_ms, sample, 0.3);
            }
            let span = Span { guest_bytes: self.acc_guest_bytes, elapsed_ms };
            self.spans += 1;
            self.acc_guest_bytes = 0;
            self.acc_bytes = 0;
            self.acc_wait_ns = 0;
            self.last_ns = now_ns;
            return Some(span);
        }
        None
    }

    /// The loop waited `ns` for a bulk send buffer while every one was in the kernel.
    pub(super) fn on_link_wait(&mut self, ns: u64) {
        self.acc_wait_ns += ns;
    }

    /// What the loop pushed out, link-bound or not.
    pub(super) fn bytes_per_ms(&self) -> f64 {
        self.ewma_bytes_per_ms
    }

    /// Spans measured so far.
    pub(super) fn spans(&self) -> u64 {
        self.spans
    }

    /// What the link carries, once the loop has waited on it: `None` while the loop itself was
    /// always the limit.
    pub(super) fn link_bytes_per_ms(&self) -> Option<f64> {
        (self.link_bytes_per_ms > 0.0).then(|| self.link_bytes_per_ms.max(self.ewma_bytes_per_ms))
    }
}

/// An exponentially weighted mean that starts at its first sample.
fn ewma(mean: f64, sample: f64, weight: f64) -> f64 {
    if mean == 0.0 {
        sample
    } else {
        (1.0 - weight) * mean + weight * sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_window_grows_on_sequential_and_shrinks_on_random_faults() {
        let mut w = AdaptiveWindow::new(16);
        let mut page = 1000;
        let mut sizes = Vec::new();
        for _ in 0..6 {
            let n = w.on_fault(page);
            sizes.push(n);
            page += u64::from(n - n / 4); // the next fault is just past the answer
        }
        assert_eq!(sizes, vec![16, 32, 64, 128, 256, 256]);
        let jumps: Vec<u32> =
            [5u64, 900_000, 12, 400_000, 77].iter().map(|&p| w.on_fault(p)).collect();
        assert_eq!(jumps, vec![128, 64, 32, 16, 8]);
        assert_eq!(w.on_fault(3_000_000), WINDOW_MIN_PAGES);
        assert_eq!(w.on_fault(9), WINDOW_MIN_PAGES);
    }

    #[test]
    fn lz4_is_worth_it_only_on_a_slow_link_with_compressible_pages() {
        // 1 Gbit/s, text-like pages (ratio 0.4), a 2 GB/s compressor: on.
        assert!(lz4_worth(125_000.0, 2_000_000.0, 0.4));
        // The same pages over loopback at 1.5 GB/s: half the compressor is slower than raw.
        assert!(!lz4_worth(1_500_000.0, 2_000_000.0, 0.4));
        // Random pages (lz4 gives nothing back) on the slow link: off.
        assert!(!lz4_worth(125_000.0, 2_000_000.0, 1.0));
    }

    #[test]
    fn lz4_probe_averages_rate_and_ratio_and_skips_zero_windows() {
        let mut p = Lz4Probe::default();
        assert!(p.due(), "the first window is a probe");
        assert!((0..LZ4_PROBE_EVERY - 1).all(|_| !p.due()));
        assert!(p.due());
        assert_eq!(p.estimate(), None);
        p.record(0, 10, 1_000); // all-zero window: no information
        assert_eq!(p.estimate(), None);
        p.record(65_536, 16_384, 32_768_000); // 64 KiB in 32.768 ms: 2,000 B/ms, ratio 0.25
        let (rate, ratio) = p.estimate().expect("measured");
        assert!((rate - 2_000.0).abs() < 1e-6 && (ratio - 0.25).abs() < 1e-9);
        p.record(65_536, 65_536, 16_384_000); // 4,000 B/ms, ratio 1.0
        let (rate, ratio) = p.estimate().expect("measured");
        assert!((rate - 2_400.0).abs() < 1e-6 && (ratio - 0.4).abs() < 1e-9);
    }

    /// Spans of 10 ms carrying `bytes` each, the loop waiting `wait_ms` of each on the link.
    fn spans(meter: &mut RateMeter, from_ms: u64, count: u64, bytes: u64, wait_ms: u64) -> u64 {
        for i in 1..=count {
            meter.on_link_wait(wait_ms * 1_000_000);
            meter.record(bytes, bytes, (from_ms + 10 * i) * 1_000_000);
        }
        from_ms + 10 * count
    }

    #[test]
    fn link_rate_is_learned_only_while_the_loop_waits_on_the_link() {
        let mut m = RateMeter::default();
        // The first send starts the clock; then a CPU-bound loop (loopback): 8 MB per 10 ms,
        // never a wait for a buffer.
        m.record(0, 0, 1_000_000);
        let t = spans(&mut m, 1, 5, 8_000_000, 0);
        assert!((m.bytes_per_ms() - 800_000.0).abs() < 1.0);
        assert_eq!(m.link_bytes_per_ms(), None, "the loop was the limit: no link rate");
        // A wait of 1 ms in 10 (under the share) still says nothing about the link.
        let t = spans(&mut m, t, 3, 8_000_000, 1);
        assert_eq!(m.link_bytes_per_ms(), None);
        // One link-bound span (a slow receiver): learned, but not below the output rate.
        let t = spans(&mut m, t, 1, 1_250_000, 8);
        let output = m.bytes_per_ms();
        assert!((m.link_bytes_per_ms().expect("learned") - output).abs() < 1.0);
        // A link of 1 Gbit/s with the loop mostly waiting on it: both rates settle there.
        spans(&mut m, t, 30, 1_250_000, 8);
        assert!((m.link_bytes_per_ms().expect("learned") - 125_000.0).abs() < 100.0);
        assert!((m.bytes_per_ms() - 125_000.0).abs() < 100.0);
    }

    /// A trial over spans of 10 ms, asked for its decision after each span, whose lz4 side
    /// moves `lz4_guest` and raw side `raw_guest` guest bytes a span; the last decision.
    fn run_trial(
        c: &mut Lz4Check,
        now: &mut u64,
        spans: u64,
        lz4_guest: u64,
        raw_guest: u64,
    ) -> bool {
        let mut on = c.decide(true, *now);
        for _ in 0..spans {
            let guest_bytes = if on { lz4_guest } else { raw_guest };
            c.on_span(Span { guest_bytes, elapsed_ms: 10.0 }, on);
            *now += 1;
            on = c.decide(true, *now);
        }
        on
    }

    #[test]
    fn lz4_stays_on_only_when_its_side_of_the_trial_moved_more_guest_memory() {
        let mut c = Lz4Check::default();
        assert!(!c.decide(true, LZ4_TRIAL_AFTER_SPANS - 1), "too early: the send buffer fills");
        assert!(!c.decide(false, LZ4_TRIAL_AFTER_SPANS), "not predicted");
        // A whole trial: both sides' turns, each side's spans after the settling ones.
        let trial = u64::from(2 * LZ4_TURNS_PER_SIDE * LZ4_TURN_SPANS);
        // lz4 moves 2% more guest memory than raw (the pages, not the bytes, are the limit):
        // it loses its trial and stays off through the veto, even while still predicted.
        let mut now = LZ4_TRIAL_AFTER_SPANS;
        let on = run_trial(&mut c, &mut now, trial, 1_020_000, 1_000_000);
        assert!(!on && matches!(c, Lz4Check::Vetoed { .. }), "{c:?}");
        assert!(!c.decide(true, now + LZ4_VETO_SPANS - 1));
        // After the veto a new trial: lz4 doubles the guest rate and is confirmed.
        now += LZ4_VETO_SPANS;
        assert!(run_trial(&mut c, &mut now, trial, 2_000_000, 1_000_000));
        assert_eq!(c, Lz4Check::Confirmed);
        assert!(c.decide(true, now + 1));
        // The prediction turning off turns lz4 off.
        assert!(!c.decide(false, now + 2));
        assert_eq!(c, Lz4Check::Untried);
        // A trial whose raw side never fills (no spans measured) ends lost, not endless.
        assert!(c.decide(true, now + 3));
        assert!(!c.decide(true, now + 3 + LZ4_TRIAL_MAX_SPANS));
        assert!(matches!(c, Lz4Check::Vetoed { .. }));
    }
}
