//! Whole frames: [`decode_frame`] turns bytes into a borrowed [`Frame`], [`encode_frame`]
//! appends one to a `Vec<u8>`. Page windows built from guest pages use
//! [`super::encode_page_window`] and dirty sets from bitmaps [`super::encode_dirty_set`]
//! instead; `encode_frame` re-emits already-encoded ones.

use super::header::{begin_frame, finish_frame, parse_header, HeaderInfo, HEADER_LEN};
use super::{
    check_version, Control, DirtySetRef, Done, DoneAck, FaultRequest, FrameType, Hello, HelloAck,
    Limits, PageWindowRef, WireError,
};

/// A decoded frame: its version and its typed body, borrowing from the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Protocol version the frame was encoded in.
    pub version: u16,
    /// The typed content.
    pub body: FrameBody<'a>,
}

/// The typed content of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameBody<'a> {
    /// Connection opening.
    Hello(Hello<'a>),
    /// Answer to Hello.
    HelloAck(HelloAck<'a>),
    /// Pages of one region.
    PageWindow(PageWindowRef<'a>),
    /// The VMM's state blob (opaque here; at most `limits.max_vmstate_bytes`).
    VmState(&'a [u8]),
    /// Stale or missing pages of one region.
    DirtySet(DirtySetRef<'a>),
    /// A network page fault.
    FaultRequest(FaultRequest),
    /// Source finished.
    Done(Done),
    /// Destination's verdict.
    DoneAck(DoneAck),
    /// Pause / resume / ack / ping.
    Control(Control),
}

impl FrameBody<'_> {
    /// The frame type of this body.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::HelloAck(_) => FrameType::HelloAck,
            Self::PageWindow(_) => FrameType::PageWindow,
            Self::VmState(_) => FrameType::VmState,
            Self::DirtySet(_) => FrameType::DirtySet,
            Self::FaultRequest(_) => FrameType::FaultRequest,
            Self::Done(_) => FrameType::Done,
            Self::DoneAck(_) => FrameType::DoneAck,
            Self::Control(_) => FrameType::Control,
        }
    }
}

impl Frame<'_> {
    /// The frame type.
    pub fn frame_type(&self) -> FrameType {
        self.body.frame_type()
    }
}

/// Decodes the frame at the start of `bytes`: header checks, CRC, then the payload. Returns the
/// frame and the bytes it took. Incomplete input is `Truncated` (a streaming caller should use
/// [`super::FrameReader`], which waits for more bytes instead).
pub fn decode_frame<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(Frame<'a>, usize), WireError> {
    let header = parse_header(bytes, limits)?;
    let total = HEADER_LEN + header.payload_len as usize;
    if bytes.len() < total {
        return Err(WireError::Truncated {
            what: "payload",
            need: header.payload_len.into(),
            have: (bytes.len() - HEADER_LEN) as u64,
        });
    }
    let frame = decode_payload(&header, &bytes[HEADER_LEN..total], limits)?;
    Ok((frame, total))
}

/// Checks the CRC of `payload` against `header` and parses it.
pub(crate) fn decode_payload<'a>(
    header: &HeaderInfo,
    payload: &'a [u8],
    limits: &Limits,
) -> Result<Frame<'a>, WireError> {
    let computed = crc32fast::hash(payload);
    if computed != header.payload_crc {
        return Err(WireError::CrcMismatch {
            frame: header.frame_type,
            expected: header.payload_crc,
            computed,
        });
    }
    let v = header.version;
    let body = match header.frame_type {
        FrameType::Hello => FrameBody::Hello(Hello::parse(header.flags, payload, limits)?),
        FrameType::HelloAck => FrameBody::HelloAck(HelloAck::parse(payload, limits)?),
        FrameType::PageWindow => {
            FrameBody::PageWindow(PageWindowRef::parse(v, header.flags, payload, limits)?)
        }
        // The header check already capped the length at max_vmstate_bytes.
        FrameType::VmState => FrameBody::VmState(payload),
        FrameType::DirtySet => FrameBody::DirtySet(DirtySetRef::parse(payload)?),
        FrameType::FaultRequest => FrameBody::FaultRequest(FaultRequest::parse(v, payload)?),
        FrameType::Done => FrameBody::Done(Done::parse(payload)?),
        FrameType::DoneAck => FrameBody::DoneAck(DoneAck::parse(payload)?),
        FrameType::Control => FrameBody::Control(Control::parse(payload)?),
        FrameType::Invalid => return Err(WireError::UnknownFrameType { got: 0 }),
    };
    Ok(Frame { version: v, body })
}

/// Appends `body` as one frame of protocol `version` to `out` and returns the bytes appended.
/// On error `out` is left as it was.
pub fn encode_frame(
    out: &mut Vec<u8>,
    version: u16,
    body: &FrameBody<'_>,
    limits: &Limits,
) -> Result<usize, WireError> {
    check_version(version)?;
    let start = begin_frame(out);
    let mut flags = 0;
    let written = match body {
        FrameBody::Hello(h) => {
            flags = h.flags();
            h.write_payload(out, limits)
        }
        FrameBody::HelloAck(a) => a.write_payload(out, limits),
        FrameBody::PageWindow(w) => {
            flags = w.flags();
            w.write_payload(version, out, limits)
        }
        FrameBody::VmState(blob) => {
            out.extend_from_slice(blob);
            Ok(())
        }
        FrameBody::DirtySet(d) => {
            d.write_payload(out);
            Ok(())
        }
        FrameBody::FaultRequest(f) => f.write_payload(version, out),
        FrameBody::Done(d) => {
            d.write_payload(out);
            Ok(())
        }
        FrameBody::DoneAck(d) => {
            d.write_payload(out);
            Ok(())
        }
        FrameBody::Control(c) => {
            c.write_payload(out);
            Ok(())
        }
    };
    if let Err(e) = written {
        out.truncate(start);
        return Err(e);
    }
    finish_frame(out, start, version, body.frame_type(), flags, limits)
}
