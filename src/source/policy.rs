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

/// Bytes per millisecond over the recent past (exponentially weighted).
#[derive(Debug, Clone, Default)]
pub(super) struct RateMeter {
    last_ns: u64,
    ewma_bytes_per_ms: f64,
    acc_bytes: u64,
}

impl RateMeter {
    pub(super) fn record(&mut self, bytes: u64, now_ns: u64) {
        if self.last_ns == 0 {
            self.last_ns = now_ns;
        }
        self.acc_bytes += bytes;
        let elapsed_ms = (now_ns.saturating_sub(self.last_ns)) as f64 / 1e6;
        if elapsed_ms >= 5.0 {
            let sample = self.acc_bytes as f64 / elapsed_ms;
            self.ewma_bytes_per_ms = if self.ewma_bytes_per_ms == 0.0 {
                sample
            } else {
                0.7 * self.ewma_bytes_per_ms + 0.3 * sample
            };
            self.acc_bytes = 0;
            self.last_ns = now_ns;
        }
    }

    pub(super) fn bytes_per_ms(&self) -> f64 {
        self.ewma_bytes_per_ms
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
}
