//! The small fixed-size frames: `FaultRequest`, `Done`, `DoneAck` and the generic `Control`.
//!
//! Layouts (big endian):
//! `FaultRequest = region u32, page u64, vcpu u32, [v2: request_id u32]`
//! `Done = pages u64, bytes u64, memory_digest u64`
//! `DoneAck = pages u64, bytes u64, memory_digest u64, verdict u8`
//! `Control = kind u8, seq u64, value u64`

use super::codec::{put_u32, put_u64, Cur};
use super::{FrameType, Region, WireError};

/// `FaultRequest::vcpu` of a fault whose thread is not a known vCPU.
pub const FAULT_VCPU_UNKNOWN: u32 = u32::MAX;

/// The destination asks for the page a vCPU faulted on (urgent stream). The answer is a
/// `PageWindow` with the urgent-answer flag and the same request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultRequest {
    /// Region index.
    pub region: u32,
    /// Page index within the region.
    pub page: u64,
    /// The index of the vCPU that faulted, or [`FAULT_VCPU_UNKNOWN`] when the faulting thread
    /// was not a vCPU the VMM named. Informational: the source answers alike.
    pub vcpu: u32,
    /// Chosen by the destination, echoed in the answer (0 and absent in version 1, where the
    /// answer is matched by page).
    pub request_id: u32,
}

impl FaultRequest {
    /// Checks the page against the region table.
    pub fn validate(&self, regions: &[Region]) -> Result<(), WireError> {
        super::window::validate_range(regions, self.region, self.page, 1)
    }

    pub(crate) fn write_payload(&self, version: u16, out: &mut Vec<u8>) -> Result<(), WireError> {
        if version < 2 && self.request_id != 0 {
            return Err(WireError::FeatureNotInVersion { feature: "request id", version });
        }
        put_u32(out, self.region);
        put_u64(out, self.page);
        put_u32(out, self.vcpu);
        if version >= 2 {
            put_u32(out, self.request_id);
        }
        Ok(())
    }

    pub(crate) fn parse(version: u16, payload: &[u8]) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let region = c.u32("fault.region")?;
        let page = c.u64("fault.page")?;
        let vcpu = c.u32("fault.vcpu")?;
        let request_id = if version >= 2 { c.u32("fault.request_id")? } else { 0 };
        c.finish(FrameType::FaultRequest)?;
        Ok(Self { region, page, vcpu, request_id })
    }
}

/// Counts and digest one side reports at the end of a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Done {
    /// Pages sent (source) or received and placed (destination).
    pub pages: u64,
    /// Payload bytes sent or received on both streams.
    pub bytes: u64,
    /// 64-bit digest of all guest memory (the engines define the function).
    pub memory_digest: u64,
}

impl Done {
    pub(crate) fn write_payload(&self, out: &mut Vec<u8>) {
        put_u64(out, self.pages);
        put_u64(out, self.bytes);
        put_u64(out, self.memory_digest);
    }

    fn read(c: &mut Cur<'_>) -> Result<Self, WireError> {
        Ok(Self {
            pages: c.u64("done.pages")?,
            bytes: c.u64("done.bytes")?,
            memory_digest: c.u64("done.memory_digest")?,
        })
    }

    pub(crate) fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let done = Self::read(&mut c)?;
        c.finish(FrameType::Done)?;
        Ok(done)
    }
}

/// The destination's answer to `Done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DoneAck {
    /// The destination's own counts and digest.
    pub counts: Done,
    /// Whether the destination found everything consistent.
    pub verdict: DoneVerdict,
}

/// The destination's judgement of a finished migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DoneVerdict {
    /// Digests and counts agree; the source may release the VM.
    Match = 1,
    /// The memory digest differs.
    DigestMismatch = 2,
    /// Page counts differ.
    CountMismatch = 3,
}

impl DoneAck {
    pub(crate) fn write_payload(&self, out: &mut Vec<u8>) {
        self.counts.write_payload(out);
        out.push(self.verdict as u8);
    }

    pub(crate) fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let counts = Done::read(&mut c)?;
        let verdict = match c.u8("done_ack.verdict")? {
            1 => DoneVerdict::Match,
            2 => DoneVerdict::DigestMismatch,
            3 => DoneVerdict::CountMismatch,
            got => {
                return Err(WireError::InvalidField { field: "done_ack.verdict", got: got.into() })
            }
        };
        c.finish(FrameType::DoneAck)?;
        Ok(Self { counts, verdict })
    }
}

/// What a [`Control`] frame asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ControlKind {
    /// Stop sending (e.g. the peer is reconnecting); `value` is engine-defined.
    Pause = 1,
    /// After a lost connection, the destination's report is complete: the DirtySet frames
    /// before it named every page missing there; `value` holds the `RESUME_DEST_*` bits.
    Resume = 2,
    /// Everything up to and including `seq` arrived.
    Ack = 3,
    /// Liveness probe; the peer answers `Pong` with the same `seq`.
    Ping = 4,
    /// Answer to `Ping`.
    Pong = 5,
    /// The destination restored the state (from version 3): it holds the paused guest and
    /// waits for `Run`. The source is still authoritative.
    Loaded = 6,
    /// The hand-over (from version 3): the destination resumes the guest. From the moment it
    /// is sent, the source never resumes its own copy.
    Run = 7,
}

/// Bit of a destination's `Resume` value: the guest runs on the destination (the state
/// arrived and it resumed).
pub const RESUME_DEST_RUNNING: u64 = 1;
/// Bit of a destination's `Resume` value: every page is there and its DoneAck went out.
pub const RESUME_DEST_COMPLETE: u64 = 2;

/// Value of a `Loaded` control: the destination could not load the state and will not run
/// the guest (0: loaded).
pub const LOADED_REFUSED: u64 = 1;

/// A generic control frame (pause / resume / ack / ping), for connection recovery and flow
/// control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Control {
    /// What is asked.
    pub kind: ControlKind,
    /// A sequence number (frames, bytes, or rounds: the engine defines it).
    pub seq: u64,
    /// A kind-specific value.
    pub value: u64,
}

impl Control {
    pub(crate) fn write_payload(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        put_u64(out, self.seq);
        put_u64(out, self.value);
    }

    pub(crate) fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let kind = match c.u8("control.kind")? {
            1 => ControlKind::Pause,
            2 => ControlKind::Resume,
            3 => ControlKind::Ack,
            4 => ControlKind::Ping,
            5 => ControlKind::Pong,
            6 => ControlKind::Loaded,
            7 => ControlKind::Run,
            got => return Err(WireError::InvalidField { field: "control.kind", got: got.into() }),
        };
        let seq = c.u64("control.seq")?;
        let value = c.u64("control.value")?;
        c.finish(FrameType::Control)?;
        Ok(Self { kind, seq, value })
    }
}
