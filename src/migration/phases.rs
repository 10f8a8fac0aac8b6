//! What `hybridmig migrate` shows on stderr while it runs: the reference run, each phase of
//! the migration with the bytes sent, the bytes left, the rate and an ETA, and the guest
//! finishing on the destination.
//!
//! On a terminal one line is redrawn in place, at most [`TERMINAL_REFRESH`] apart, and each
//! phase keeps its last line when the next begins; elsewhere (a pipe, a log file) a plain line
//! is printed at each phase change and every [`LINE_EVERY`]. stdout is never written.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

/// Shortest time between two redraws on a terminal.
pub const TERMINAL_REFRESH: Duration = Duration::from_millis(250);
/// Time between two plain lines within one phase.
pub const LINE_EVERY: Duration = Duration::from_secs(2);
/// Span of the samples the rate is measured over.
const RATE_SPAN: Duration = Duration::from_secs(2);
/// Samples kept for the rate at most.
const RATE_SAMPLES: usize = 64;
/// Bytes of one guest page.
const PAGE_BYTES: u64 = 4096;

/// Where the progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressOutput {
    /// Nowhere.
    Off,
    /// Plain lines: one per phase change, and one every [`LINE_EVERY`].
    Lines,
    /// One line redrawn in place on a terminal.
    Terminal,
}

/// One `PROGRESS` line of a host: `PROGRESS phase pages total_pages ops [bytes]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProgress {
    /// The engine's phase (`Rounds`, `Push`, ...), or `Before`, `Recovering`, `Finishing`.
    pub phase: String,
    /// Pages sent (source) or placed (destination).
    pub pages: u64,
    /// Pages of guest memory.
    pub total_pages: u64,
    /// The guest's ops so far on that host.
    pub ops: u64,
    /// Bytes sent (source) or received (destination) on both streams; 0 from an older host.
    pub bytes: u64,
}

impl HostProgress {
    /// Parses what follows `PROGRESS ` on a host's stderr line.
    pub fn parse(rest: &str) -> Option<Self> {
        let mut parts = rest.split_whitespace();
        let phase = parts.next()?.to_string();
        let mut number = || parts.next().and_then(|n| n.parse::<u64>().ok());
        let (pages, total_pages, ops) = (number()?, number()?, number()?);
        Some(Self { phase, pages, total_pages, ops, bytes: number().unwrap_or(0) })
    }
}

/// What a phase counts its progress in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Ops,
    Bytes,
}

/// A rate over the last [`RATE_SPAN`] of samples.
#[derive(Debug, Default)]
struct Rate {
    samples: VecDeque<(u64, u64)>,
}

impl Rate {
    fn add(&mut self, now_ns: u64, value: u64) {
        // A count that went back is another count (the reference run's ops, then the guest's).
        if self.samples.back().is_some_and(|&(_, last)| value < last) {
            self.samples.clear();
        }
        if self.samples.len() == RATE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ns, value));
        let span_ns = RATE_SPAN.as_nanos() as u64;
        while self.samples.len() > 2
            && self.samples.front().is_some_and(|&(t, _)| now_ns.saturating_sub(t) > span_ns)
        {
            self.samples.pop_front();
        }
    }

    /// Per second; None until two samples apart in time.
    fn per_s(&self) -> Option<f64> {
        let (&(t0, v0), &(t1, v1)) = (self.samples.front()?, self.samples.back()?);
        (t1 > t0).then(|| v1.saturating_sub(v0) as f64 * 1e9 / (t1 - t0) as f64)
    }
}

/// The progress display of one `migrate`.
pub struct PhaseDisplay {
    output: ProgressOutput,
    /// Where lines go: stderr, or a test's buffer.
    sink: Box<dyn Write + Send>,
    ops_total: u64,
    migrate_after_ms: u64,
    phase: Option<String>,
    measure: Option<Measure>,
    rate: Rate,
    last_shown_ns: u64,
    before_since_ns: u64,
    /// A terminal line is drawn and not ended yet.
    open_line: bool,
    /// The current phase's latest line, when it was not shown: shown as the phase ends.
    unshown: Option<String>,
}

impl PhaseDisplay {
    /// A display on stderr for a guest of `ops_total` ops, migrated `migrate_after_ms` after it
    /// starts.
    pub fn new(output: ProgressOutput, ops_total: u64, migrate_after_ms: u64) -> Self {
        Self::to(Box::new(std::io::stderr()), output, ops_total, migrate_after_ms)
    }

    /// [`Self::new`] writing to `sink`.
    pub fn to(
        sink: Box<dyn Write + Send>,
        output: ProgressOutput,
        ops_total: u64,
        migrate_after_ms: u64,
    ) -> Self {
        Self {
            output,
            sink,
            ops_total,
            migrate_after_ms,
            phase: None,
            measure: None,
            rate: Rate::default(),
            last_shown_ns: 0,
            before_since_ns: 0,
            open_line: false,
            unshown: None,
        }
    }

    /// The unmigrated reference run has done `ops` of its ops.
    pub fn reference(&mut self, now_ns: u64, ops: u64) {
        let line = self.ops_line("reference run (unmigrated, for the digest)", now_ns, ops, None);
        self.show("Reference", now_ns, line);
    }

    /// A host's `PROGRESS` line: the source's phases, and the destination's `Finishing`.
    pub fn host(&mut self, source: bool, now_ns: u64, p: &HostProgress) {
        let line = match (source, p.phase.as_str()) {
            (true, "Before") => {
                if self.phase.as_deref() != Some("Before") {
                    self.before_since_ns = now_ns;
                }
                let left_ms = self
                    .migrate_after_ms
                    .saturating_sub(now_ns.saturating_sub(self.before_since_ns) / 1_000_000);
                let eta = Some(Duration::from_millis(left_ms));
                self.ops_line("guest runs on the source, before the migration", now_ns, p.ops, eta)
            }
            (true, "Finished") | (false, "Before") => return,
            (true, phase) => self.bytes_line(label(phase), now_ns, p),
            (false, "Finishing") => {
                let line = self.ops_line(label("Finishing"), now_ns, p.ops, None);
                format!("{line} | received {}", bytes(p.bytes))
            }
            (false, _) => return,
        };
        self.show(&p.phase, now_ns, line);
    }

    /// A line of a host's own output, shown between progress lines.
    pub fn passthrough(&mut self, line: &str) {
        self.end_line();
        // Best effort: a closed stderr only loses the line.
        let _ = writeln!(self.sink, "{line}");
    }

    /// Ends the display: the last phase's latest line is shown and kept.
    pub fn finish(&mut self) {
        if let Some(line) = self.unshown.take() {
            self.print(&line, false);
        }
        self.end_line();
    }

    fn end_line(&mut self) {
        if self.open_line {
            let _ = writeln!(self.sink);
            self.open_line = false;
        }
    }

    fn measured(&mut self, measure: Measure, now_ns: u64, value: u64) -> Option<f64> {
        if self.measure != Some(measure) {
            self.rate = Rate::default();
            self.measure = Some(measure);
        }
        self.rate.add(now_ns, value);
        self.rate.per_s()
    }

    fn ops_line(&mut self, what: &str, now_ns: u64, ops: u64, eta: Option<Duration>) -> String {
        let rate = self.measured(Measure::Ops, now_ns, ops);
        let left = self.ops_total.saturating_sub(ops);
        let eta = eta.or_else(|| eta_of(left, rate));
        format!(
            "{what} | ops {} of {} | rate {} ops/s | eta {}",
            count(ops),
            count(self.ops_total),
            rate.map_or("-".into(), |r| count(r as u64)),
            eta.map_or("-".into(), seconds),
        )
    }

    fn bytes_line(&mut self, what: &str, now_ns: u64, p: &HostProgress) -> String {
        let rate = self.measured(Measure::Bytes, now_ns, p.bytes);
        let left = p.total_pages.saturating_sub(p.pages) * PAGE_BYTES;
        format!(
            "{what} | sent {} | remaining {} | rate {}/s | eta {}",
            bytes(p.bytes),
            bytes(left),
            rate.map_or("-".into(), |r| bytes(r as u64)),
            eta_of(left, rate).map_or("-".into(), seconds),
        )
    }

    /// Shows `line` for `phase` if it is due: at once for a new phase (after the last line
    /// of the phase before), else on the output's period.
    fn show(&mut self, phase: &str, now_ns: u64, line: String) {
        let changed = self.phase.as_deref() != Some(phase);
        let period = match self.output {
            ProgressOutput::Off => return,
            ProgressOutput::Lines => LINE_EVERY,
            ProgressOutput::Terminal => TERMINAL_REFRESH,
        };
        if !changed && now_ns.saturating_sub(self.last_shown_ns) < period.as_nanos() as u64 {
            self.unshown = Some(line);
            return;
        }
        if let Some(last) = self.unshown.take().filter(|_| changed) {
            self.print(&last, false);
        }
        self.last_shown_ns = now_ns;
        self.phase = Some(phase.to_string());
        self.print(&line, changed);
    }

    /// Prints a line: a new one, or on a terminal over the one drawn (unless `new_phase`).
    fn print(&mut self, line: &str, new_phase: bool) {
        let err = &mut self.sink;
        // Best effort: a closed stderr only loses the display.
        let _ = match self.output {
            ProgressOutput::Off => return,
            ProgressOutput::Terminal if new_phase && self.open_line => {
                write!(err, "\n{line}").and_then(|()| err.flush())
            }
            ProgressOutput::Terminal => write!(err, "\r\x1b[2K{line}").and_then(|()| err.flush()),
            ProgressOutput::Lines => writeln!(err, "{line}"),
        };
        self.open_line = self.output == ProgressOutput::Terminal;
    }
}

impl std::fmt::Debug for PhaseDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseDisplay")
            .field("output", &self.output)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// A person's name for a phase.
fn label(phase: &str) -> &str {
    match phase {
        "Setup" => "setting up",
        "Rounds" => "pre-copy rounds",
        "WorkingSet" => "working set (hybrid's live pass)",
        "SwitchOver" => "switch-over (guest paused)",
        "Push" => "push (guest runs on the destination)",
        "AwaitDoneAck" => "confirming the digests",
        "Recovering" => "recovering a lost connection",
        "Finishing" => "guest finishing on the destination",
        other => other,
    }
}

fn eta_of(left: u64, rate_per_s: Option<f64>) -> Option<Duration> {
    if left == 0 {
        return Some(Duration::ZERO);
    }
    let rate = rate_per_s.filter(|&r| r > 0.0)?;
    Some(Duration::from_secs_f64((left as f64 / rate).min(1e6)))
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_progress_line_parses_with_or_without_bytes() {
        let p = HostProgress::parse("Push 10 100 7 40960").expect("parse");
        assert_eq!(
            (p.phase.as_str(), p.pages, p.total_pages, p.ops, p.bytes),
            ("Push", 10, 100, 7, 40960)
        );
        assert_eq!(HostProgress::parse("Push 10 100 7").expect("old").bytes, 0);
        assert!(HostProgress::parse("Push 10 x 7").is_none());
    }

    #[test]
    fn lines_show_bytes_left_a_rate_and_an_eta() {
        let (mut d, _) = display(ProgressOutput::Off);
        let p = |pages, bytes| HostProgress {
            phase: "Push".into(),
            pages,
            total_pages: 100,
            ops: 0,
            bytes,
        };
        d.bytes_line("push", 0, &p(0, 0));
        let line = d.bytes_line("push", 1000 * MS, &p(50, 50 * 4096));
        assert!(line.contains("sent 200.0 KiB"), "{line}");
        assert!(line.contains("remaining 200.0 KiB"), "{line}");
        assert!(line.contains("rate 200.0 KiB/s"), "{line}");
        assert!(line.contains("eta 1.0 s"), "{line}");
    }

    /// A buffer the display writes to, readable by the test.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("buffer")).into_owned()
        }
    }

    fn display(output: ProgressOutput) -> (PhaseDisplay, Shared) {
        let sink = Shared::default();
        (PhaseDisplay::to(Box::new(sink.clone()), output, 1000, 500), sink)
    }

    #[test]
    fn a_terminal_redraws_in_place_and_keeps_each_phase_last_line() {
        let (mut d, out) = display(ProgressOutput::Terminal);
        d.show("Rounds", 0, "r1".into());
        d.show("Rounds", 300 * MS, "r2".into());
        d.show("Rounds", 400 * MS, "r3".into());
        d.show("Push", 500 * MS, "p1".into());
        d.passthrough("[source] a log line");
        d.show("Push", 900 * MS, "p2".into());
        d.finish();
        let redraw = "\r\x1b[2K";
        let expected =
            format!("{redraw}r1{redraw}r2{redraw}r3\np1\n[source] a log line\n{redraw}p2\n");
        assert_eq!(out.text(), expected);
    }

    #[test]
    fn only_a_phase_change_or_the_period_shows_a_line() {
        let (mut d, out) = display(ProgressOutput::Lines);
        d.show("Rounds", 0, "a".into());
        assert_eq!(d.last_shown_ns, 0);
        d.show("Rounds", 100 * MS, "b".into());
        assert_eq!(d.last_shown_ns, 0, "within the period");
        assert_eq!(d.unshown.as_deref(), Some("b"), "kept for the phase's end");
        d.show("Push", 200 * MS, "c".into());
        assert_eq!(d.last_shown_ns, 200 * MS, "a new phase shows at once");
        assert_eq!(d.unshown, None, "the last line of the phase before was shown first");
        d.show("Push", 2300 * MS, "d".into());
        assert_eq!(d.last_shown_ns, 2300 * MS, "the period passed");
        assert_eq!(out.text(), "a\nb\nc\nd\n");
    }
}
