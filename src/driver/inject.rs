//! Fault injection on the real path: `--inject SPEC[,SPEC...]`.
//!
//! A spec names a fault and when it strikes; [`InjectPlan::parse`] turns the option's text into
//! typed specs, and [`InjectPlan::for_side`] (or [`InjectPlan::only_for`]) picks what one host
//! does as a [`SidePlan`]. The event loop ([`super::event_loop`]) runs a side's plan through an
//! [`Injector`]: on every loop turn it fires the timed faults that fell due (disconnects,
//! stalls), and the bulk stream's send path ([`RingStreams::corrupt_bulk_frame`]) flips a byte
//! of one frame. Each injection is logged (`tracing::warn`) and recorded in an [`InjectLog`]
//! the host reads back into its report. A loop without a plan pays one `None` check a turn.
//!
//! ```text
//!  spec   = [side ":"] fault
//!  side   = "src" | "dst"
//!  fault  = "disconnect@" point | "disconnect-bulk@" point | "disconnect-urgent@" point
//!         | "stall@" point ":" MS | "corrupt@" N | "refuse-reconnect" | "fail-load"
//!  point  = ("start" | "switchover" | "resume") ["+" MS]
//! ```

use super::DriverError;
use crate::transport::ring_streams::{RingStreams, StreamError};
use crate::wire::StreamKind;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Specs in one `--inject` value at most.
pub const MAX_SPECS: usize = 32;
/// Largest offset of a point (one hour), in ms.
pub const MAX_OFFSET_MS: u64 = 3_600_000;
/// Longest stall (ten minutes), in ms.
pub const MAX_STALL_MS: u64 = 600_000;

/// Which host a fault is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    /// The source host (`src:`).
    #[serde(rename = "source")]
    Source,
    /// The destination host (`dst:`).
    #[serde(rename = "destination")]
    Dest,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Dest => "destination",
        })
    }
}

/// The instant a point counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The start of this side's event loop.
    Start,
    /// The switch-over: the source's pause (on the destination: when the state arrived, the
    /// first sign of the switch-over it sees).
    Switchover,
    /// The destination's resume (on the source: when the state was queued for sending, the
    /// hand-over, which the resume follows by about a one-way trip).
    Resume,
}

/// A point in time: `anchor + offset_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectAt {
    /// What the offset counts from.
    pub anchor: Anchor,
    /// Milliseconds after the anchor.
    pub offset_ms: u64,
}

/// Which streams a disconnect shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Bulk and urgent.
    Both,
    /// The bulk stream only.
    Bulk,
    /// The urgent stream only.
    Urgent,
}

impl Streams {
    fn kinds(self) -> &'static [StreamKind] {
        match self {
            Streams::Both => &[StreamKind::Bulk, StreamKind::Urgent],
            Streams::Bulk => &[StreamKind::Bulk],
            Streams::Urgent => &[StreamKind::Urgent],
        }
    }
}

/// A fault that strikes at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedFault {
    /// Shut the streams' sockets down both ways (shutdown(2)) at `at`.
    Disconnect {
        /// Which streams.
        streams: Streams,
        /// When.
        at: InjectAt,
    },
    /// This side's loop handles no completion and queues no send for `dur_ms` from `at`.
    Stall {
        /// When it starts.
        at: InjectAt,
        /// How long it lasts.
        dur_ms: u64,
    },
}

impl TimedFault {
    fn at(&self) -> InjectAt {
        match *self {
            TimedFault::Disconnect { at, .. } | TimedFault::Stall { at, .. } => at,
        }
    }
}

/// One fault as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A disconnect or a stall.
    Timed(TimedFault),
    /// Flip a byte in the payload of the `nth` bulk frame with a payload this side sends
    /// (counting from 1), after its CRC was computed.
    Corrupt {
        /// Which frame.
        nth: u64,
    },
    /// This side will not accept or dial a new connection after a disconnect.
    RefuseReconnect,
    /// The destination's VMM refuses the state it is sent (as a state from an incompatible
    /// host would be refused).
    FailLoad,
}

impl Fault {
    /// The sides a fault given without `src:` or `dst:` is for in `hybridmig migrate`:
    /// disconnects and refuse-reconnect both, corrupt and stall the source.
    pub fn default_sides(&self) -> &'static [Side] {
        match self {
            Fault::Timed(TimedFault::Disconnect { .. }) | Fault::RefuseReconnect => {
                &[Side::Source, Side::Dest]
            }
            Fault::Timed(TimedFault::Stall { .. }) | Fault::Corrupt { .. } => &[Side::Source],
            Fault::FailLoad => &[Side::Dest],
        }
    }
}

/// One parsed spec: a fault and, if given, the side it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectSpec {
    /// `src:` or `dst:`, when given.
    pub side: Option<Side>,
    /// The fault.
    pub fault: Fault,
}

impl InjectSpec {
    fn applies_to(&self, side: Side) -> bool {
        match self.side {
            Some(given) => given == side,
            None => self.fault.default_sides().contains(&side),
        }
    }
}

/// A parsed `--inject` value, for both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InjectPlan {
    /// The specs, in the order given.
    pub specs: Vec<InjectSpec>,
}

/// What one host injects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidePlan {
    /// Disconnects and stalls, in the order given.
    pub timed: Vec<TimedFault>,
    /// Corrupt the payload of this bulk frame with a payload (from 1).
    pub corrupt_bulk_frame: Option<u64>,
    /// Set by `refuse-reconnect`: after a disconnect this side must not accept or dial a new
    /// connection. The recovery code reads it; nothing else does.
    pub refuse_reconnect: bool,
    /// Set by `fail-load`: the destination's VMM refuses the state. The host's VM adapter
    /// reads it.
    pub fail_load: bool,
}

impl SidePlan {
    /// True when the plan injects nothing and refuses nothing.
    pub fn is_empty(&self) -> bool {
        self.timed.is_empty()
            && self.corrupt_bulk_frame.is_none()
            && !self.refuse_reconnect
            && !self.fail_load
    }
}

/// A bad `--inject` value: the spec at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// An empty spec (an empty value, or two commas in a row).
    #[error("--inject `{spec}`: an empty spec")]
    Empty {
        /// The whole value.
        spec: String,
    },
    /// Too many specs.
    #[error("--inject `{spec}`: more than {max} specs")]
    TooMany {
        /// The whole value.
        spec: String,
        /// The limit.
        max: usize,
    },
    /// The prefix before `:` is not a side.
    #[error("--inject spec `{spec}`: unknown side `{got}` (src or dst)")]
    UnknownSide {
        /// The spec.
        spec: String,
        /// The prefix.
        got: String,
    },
    /// The fault's name is unknown.
    #[error("--inject spec `{spec}`: unknown fault `{got}` (disconnect, disconnect-bulk, disconnect-urgent, stall, corrupt, refuse-reconnect, fail-load)")]
    UnknownFault {
        /// The spec.
        spec: String,
        /// The name.
        got: String,
    },
    /// A fault that needs `@...` came without it.
    #[error("--inject spec `{spec}`: `{fault}` needs `@` and {needs}")]
    MissingArgument {
        /// The spec.
        spec: String,
        /// The fault's name.
        fault: &'static str,
        /// What must follow the `@`.
        needs: &'static str,
    },
    /// `refuse-reconnect` takes no argument.
    #[error("--inject spec `{spec}`: refuse-reconnect takes no `@` argument")]
    UnexpectedArgument {
        /// The spec.
        spec: String,
    },
    /// The point's anchor is unknown.
    #[error(
        "--inject spec `{spec}`: unknown point `{got}` (start+MS, switchover+MS or resume+MS)"
    )]
    UnknownAnchor {
        /// The spec.
        spec: String,
        /// The anchor given.
        got: String,
    },
    /// A number is missing, malformed or out of range.
    #[error("--inject spec `{spec}`: {what} `{got}` is not a whole number from {min} to {max}")]
    BadNumber {
        /// The spec.
        spec: String,
        /// Which number (`offset`, `stall duration`, `frame number`).
        what: &'static str,
        /// The text given.
        got: String,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A stall without `:MS`.
    #[error("--inject spec `{spec}`: stall needs a duration, as in stall@start+100:50")]
    MissingDuration {
        /// The spec.
        spec: String,
    },
    /// A disconnect with `:MS`.
    #[error("--inject spec `{spec}`: a disconnect takes no duration")]
    UnexpectedDuration {
        /// The spec.
        spec: String,
    },
    /// A second corrupt for a side that has one.
    #[error(
        "--inject spec `{spec}`: the {side} side already corrupts a frame (one corrupt@ per side)"
    )]
    DuplicateCorrupt {
        /// The spec.
        spec: String,
        /// The side.
        side: Side,
    },
    /// A spec for the other host, given to a host that runs alone (`source` or `dest`).
    #[error(
        "--inject spec `{spec}`: it is for the {given} side, and this host is the {this} side"
    )]
    WrongSide {
        /// The spec.
        spec: String,
        /// The side it names.
        given: Side,
        /// This host's side.
        this: Side,
    },
}

impl InjectPlan {
    /// Parses `SPEC[,SPEC...]`.
    pub fn parse(value: &str) -> Result<Self, InjectError> {
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        if items.len() > MAX_SPECS {
            return Err(InjectError::TooMany { spec: value.to_string(), max: MAX_SPECS });
        }
        let mut plan = InjectPlan::default();
        for item in items {
            if item.is_empty() {
                return Err(InjectError::Empty { spec: value.to_string() });
            }
            let spec = parse_spec(item)?;
            plan.check_corrupt(&spec, item)?;
            plan.specs.push(spec);
        }
        Ok(plan)
    }

    /// One corrupt per side: a second would never fire where the first already counts.
    fn check_corrupt(&self, spec: &InjectSpec, text: &str) -> Result<(), InjectError> {
        if !matches!(spec.fault, Fault::Corrupt { .. }) {
            return Ok(());
        }
        for side in [Side::Source, Side::Dest] {
            let taken = self
                .specs
                .iter()
                .any(|s| matches!(s.fault, Fault::Corrupt { .. }) && s.applies_to(side));
            if taken && spec.applies_to(side) {
                return Err(InjectError::DuplicateCorrupt { spec: text.to_string(), side });
            }
        }
        Ok(())
    }

    /// What `side` injects when `hybridmig migrate` runs both hosts: the specs prefixed for
    /// it, and the unprefixed ones whose [`Fault::default_sides`] include it.
    pub fn for_side(&self, side: Side) -> SidePlan {
        side_plan(self.specs.iter().filter(|s| s.applies_to(side)))
    }

    /// What a host that runs alone (`hybridmig source` or `dest`) injects: every spec, which
    /// must not name the other side.
    pub fn only_for(&self, side: Side) -> Result<SidePlan, InjectError> {
        if let Some(other) = self.specs.iter().find(|s| s.side.is_some_and(|g| g != side)) {
            let prefix = if other.side == Some(Side::Source) { "src" } else { "dst" };
            return Err(InjectError::WrongSide {
                spec: format!("{prefix}:{}", render(&other.fault)),
                given: other.side.unwrap_or(side),
                this: side,
            });
        }
        Ok(side_plan(self.specs.iter()))
    }
}

fn side_plan<'a>(specs: impl Iterator<Item = &'a InjectSpec>) -> SidePlan {
    let mut plan = SidePlan::default();
    for spec in specs {
        match spec.fault {
            Fault::Timed(fault) => plan.timed.push(fault),
            Fault::Corrupt { nth } => plan.corrupt_bulk_frame = Some(nth),
            Fault::RefuseReconnect => plan.refuse_reconnect = true,
            Fault::FailLoad => plan.fail_load = true,
        }
    }
    plan
}

fn parse_spec(text: &str) -> Result<InjectSpec, InjectError> {
    let (side, body) = match text.split_once(':') {
        Some((prefix, rest)) if !prefix.contains('@') => {
            let side = match prefix {
                "src" => Side::Source,
                "dst" => Side::Dest,
                got => {
                    let got = got.to_string();
                    return Err(InjectError::UnknownSide { spec: text.to_string(), got });
                }
            };
            (Some(side), rest)
        }
        _ => (None, text),
    };
    let (name, arg) = match body.split_once('@') {
        Some((name, arg)) => (name, Some(arg)),
        None => (body, None),
    };
    let spec = || text.to_string();
    let fault = match name {
        "refuse-reconnect" if arg.is_some() => {
            return Err(InjectError::UnexpectedArgument { spec: spec() })
        }
        "refuse-reconnect" => Fault::RefuseReconnect,
        "fail-load" if arg.is_some() => {
            return Err(InjectError::UnexpectedArgument { spec: spec() })
        }
        "fail-load" => Fault::FailLoad,
        "disconnect" | "disconnect-bulk" | "disconnect-urgent" => {
            let streams = match name {
                "disconnect-bulk" => Streams::Bulk,
                "disconnect-urgent" => Streams::Urgent,
                _ => Streams::Both,
            };
            let fault = if streams == Streams::Both { "disconnect" } else { name_of(streams) };
            let arg = arg.ok_or(InjectError::MissingArgument {
                spec: spec(),
                fault,
                needs: "a point (start+MS, switchover+MS, resume+MS)",
            })?;
            if arg.contains(':') {
                return Err(InjectError::UnexpectedDuration { spec: spec() });
            }
            Fault::Timed(TimedFault::Disconnect { streams, at: parse_point(text, arg)? })
        }
        "stall" => {
            let arg = arg.ok_or(InjectError::MissingArgument {
                spec: spec(),
                fault: "stall",
                needs: "a point and a duration (stall@start+100:50)",
            })?;
            let (point, dur) =
                arg.split_once(':').ok_or(InjectError::MissingDuration { spec: spec() })?;
            let at = parse_point(text, point)?;
            let dur_ms = parse_number(text, "stall duration", dur, 1, MAX_STALL_MS)?;
            Fault::Timed(TimedFault::Stall { at, dur_ms })
        }
        "corrupt" => {
            let arg = arg.ok_or(InjectError::MissingArgument {
                spec: spec(),
                fault: "corrupt",
                needs: "a frame number (corrupt@20)",
            })?;
            Fault::Corrupt { nth: parse_number(text, "frame number", arg, 1, u64::MAX)? }
        }
        got => return Err(InjectError::UnknownFault { spec: spec(), got: got.to_string() }),
    };
    Ok(InjectSpec { side, fault })
}

fn name_of(streams: Streams) -> &'static str {
    match streams {
        Streams::Both => "disconnect",
        Streams::Bulk => "disconnect-bulk",
        Streams::Urgent => "disconnect-urgent",
    }
}

fn parse_point(spec: &str, text: &str) -> Result<InjectAt, InjectError> {
    let (anchor, offset) = match text.split_once('+') {
        Some((anchor, offset)) => (anchor, Some(offset)),
        None => (text, None),
    };
    let anchor = match anchor {
        "start" => Anchor::Start,
        "switchover" => Anchor::Switchover,
        "resume" => Anchor::Resume,
        got => {
            let got = got.to_string();
            return Err(InjectError::UnknownAnchor { spec: spec.to_string(), got });
        }
    };
    let offset_ms = match offset {
        Some(ms) => parse_number(spec, "offset", ms, 0, MAX_OFFSET_MS)?,
        None => 0,
    };
    Ok(InjectAt { anchor, offset_ms })
}

fn parse_number(
    spec: &str,
    what: &'static str,
    text: &str,
    min: u64,
    max: u64,
) -> Result<u64, InjectError> {
    let bad =
        || InjectError::BadNumber { spec: spec.to_string(), what, got: text.to_string(), min, max };
    // Digits only: `u64::from_str` would take a leading `+`.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = text.parse().map_err(|_| bad())?;
    (min..=max).contains(&n).then_some(n).ok_or_else(bad)
}

impl fmt::Display for InjectAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let anchor = match self.anchor {
            Anchor::Start => "start",
            Anchor::Switchover => "switchover",
            Anchor::Resume => "resume",
        };
        write!(f, "{anchor}+{}", self.offset_ms)
    }
}

impl fmt::Display for TimedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimedFault::Disconnect { streams, at } => write!(f, "{}@{at}", name_of(*streams)),
            TimedFault::Stall { at, dur_ms } => write!(f, "stall@{at}:{dur_ms}"),
        }
    }
}

fn render(fault: &Fault) -> String {
    match fault {
        Fault::Timed(t) => t.to_string(),
        Fault::Corrupt { nth } => format!("corrupt@{nth}"),
        Fault::RefuseReconnect => "refuse-reconnect".to_string(),
        Fault::FailLoad => "fail-load".to_string(),
    }
}

/// The plan as an `--inject` value without side prefixes: what a host that runs alone is
/// given (`hybridmig migrate` passes each host its own part this way).
impl fmt::Display for SidePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.timed.iter().map(ToString::to_string).collect();
        if let Some(nth) = self.corrupt_bulk_frame {
            parts.push(render(&Fault::Corrupt { nth }));
        }
        if self.refuse_reconnect {
            parts.push(render(&Fault::RefuseReconnect));
        }
        if self.fail_load {
            parts.push(render(&Fault::FailLoad));
        }
        f.write_str(&parts.join(","))
    }
}

/// One injection that happened, for the side's report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Injected {
    /// The side that injected it.
    pub side: Side,
    /// What was injected, as a spec (`disconnect@start+40`, `corrupt@20 (PageWindow)`).
    pub what: String,
    /// When, in ms from the start of this side's event loop.
    pub at_ms: f64,
}

/// Where the loop records its injections; the host keeps a clone and reads it back, also
/// after the loop failed.
#[derive(Debug, Clone, Default)]
pub struct InjectLog(Arc<Mutex<Vec<Injected>>>);

impl InjectLog {
    fn push(&self, injected: Injected) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(injected);
    }

    /// The injections so far, in order.
    pub fn entries(&self) -> Vec<Injected> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// A side's plan with the log its injections go to: what a driver's options carry.
#[derive(Debug, Clone)]
pub struct Injection {
    /// Which host this is.
    pub side: Side,
    /// What it injects.
    pub plan: SidePlan,
    /// Where the injections are recorded.
    pub log: InjectLog,
}

impl Injection {
    /// `plan` for `side`, with a fresh log.
    pub fn new(side: Side, plan: SidePlan) -> Self {
        Self { side, plan, log: InjectLog::default() }
    }
}

/// The instants a side's points count from (mono ns; `None` until they happened).
#[derive(Debug, Clone, Copy)]
pub struct Anchors {
    /// Start of the loop.
    pub start_ns: u64,
    /// The switch-over, as this side sees it.
    pub switchover_ns: Option<u64>,
    /// The resume, as this side sees it.
    pub resume_ns: Option<u64>,
}

impl Anchors {
    fn due_ns(&self, at: InjectAt) -> Option<u64> {
        let base = match at.anchor {
            Anchor::Start => Some(self.start_ns),
            Anchor::Switchover => self.switchover_ns,
            Anchor::Resume => self.resume_ns,
        }?;
        Some(base.saturating_add(at.offset_ms.saturating_mul(1_000_000)))
    }
}

/// Runs one side's plan inside the event loop.
#[derive(Debug)]
pub struct Injector {
    injection: Injection,
    start_ns: u64,
    /// Per timed fault: fired already.
    fired: Vec<bool>,
    /// The current stall ends here (mono ns; 0 when none).
    stall_until_ns: u64,
}

impl Injector {
    /// Starts `injection` at `start_ns` (the loop's start) and arms its corrupt hook.
    pub fn start(injection: &Injection, start_ns: u64, streams: &mut RingStreams) -> Self {
        if let Some(nth) = injection.plan.corrupt_bulk_frame {
            streams.corrupt_bulk_frame(nth);
        }
        let fired = vec![false; injection.plan.timed.len()];
        Self { injection: injection.clone(), start_ns, fired, stall_until_ns: 0 }
    }

    /// Fires every timed fault due at `now_ns` and records a corruption the send path made;
    /// returns how long this side still stalls (ns; 0 when it does not).
    pub fn turn(
        &mut self,
        now_ns: u64,
        switchover_ns: Option<u64>,
        resume_ns: Option<u64>,
        streams: &mut RingStreams,
    ) -> Result<u64, DriverError> {
        let anchors = Anchors { start_ns: self.start_ns, switchover_ns, resume_ns };
        for i in 0..self.fired.len() {
            let fault = self.injection.plan.timed[i];
            if self.fired[i] || anchors.due_ns(fault.at()).is_none_or(|due| now_ns < due) {
                continue;
            }
            self.fired[i] = true;
            match fault {
                TimedFault::Disconnect { streams: which, .. } => {
                    for &stream in which.kinds() {
                        shut_down(streams, stream)?;
                    }
                }
                TimedFault::Stall { dur_ms, .. } => {
                    let until = now_ns.saturating_add(dur_ms.saturating_mul(1_000_000));
                    self.stall_until_ns = self.stall_until_ns.max(until);
                }
            }
            self.record(fault.to_string(), now_ns);
        }
        if let Some(frame) = streams.take_corrupted() {
            let what = format!("corrupt@{} ({:?})", frame.nth, frame.frame_type);
            self.record(what, frame.at_ns);
        }
        Ok(self.stall_until_ns.saturating_sub(now_ns))
    }

    fn record(&self, what: String, at_ns: u64) {
        let at_ms = at_ns.saturating_sub(self.start_ns) as f64 / 1e6;
        let side = self.injection.side;
        tracing::warn!(%side, at_ms, "injected fault: {what}");
        self.injection.log.push(Injected { side, what, at_ms });
    }
}

/// Shuts `stream` down both ways; a stream with no connection, or one already gone, is left.
fn shut_down(streams: &RingStreams, stream: StreamKind) -> Result<(), DriverError> {
    match streams.shutdown(stream) {
        Ok(()) | Err(StreamError::Detached { .. }) => Ok(()),
        Err(StreamError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOTCONN) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
