//! The fixed 16-byte frame header, the frame-type enum, and the size limits.
//!
//! Encoders reserve a header with [`begin_frame`], append the payload, and seal it with
//! [`finish_frame`] (length and CRC filled in afterwards, so the payload is written once).
//! Decoders call [`parse_header`] on the first [`HEADER_LEN`] bytes of a frame.

use zerocopy::byteorder::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::WireError;

/// First four bytes of every frame: ASCII "HMIG".
pub const MAGIC: u32 = 0x484D_4947;
/// The newest protocol version this codec speaks (N).
pub const VERSION_CURRENT: u16 = 3;
/// The oldest protocol version this codec still speaks (N-1).
pub const VERSION_MIN: u16 = 2;
/// The first version whose switch-over hands the guest over with its own `Run` command, after
/// the destination answered `Loaded` (before it, the destination resumed on the VmState).
pub const VERSION_HAND_OVER: u16 = 3;
/// Bytes in the frame header.
pub const HEADER_LEN: usize = 16;

/// Header flag of a `PageWindow` that answers a `FaultRequest` (it travels on the urgent stream
/// and the destination should wake the faulting vCPU first).
pub const FLAG_URGENT_ANSWER: u8 = 0x01;

/// Header flag of a `Hello` that resumes an existing session (post-copy recovery) instead of
/// opening a new one.
pub const FLAG_HELLO_RESUME: u8 = 0x02;

/// The frame header as it lies on the wire (network byte order, no padding).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FrameHeader {
    /// [`MAGIC`].
    pub magic: U32,
    /// Protocol version the payload is encoded in.
    pub version: U16,
    /// A [`FrameType`] discriminant.
    pub frame_type: u8,
    /// Per-type flags ([`FLAG_URGENT_ANSWER`]); undefined bits must be zero.
    pub flags: u8,
    /// Bytes of payload after the header.
    pub payload_len: U32,
    /// CRC32 (IEEE, crc32fast) of the payload bytes.
    pub payload_crc: U32,
}

const _: () = assert!(core::mem::size_of::<FrameHeader>() == HEADER_LEN);

/// What a frame carries. `Invalid = 0` so that a zeroed or garbage type byte fails at parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Never valid on the wire.
    Invalid = 0,
    /// Opens a connection: session, stream, memory layout, mode, auth.
    Hello = 1,
    /// Answers a Hello: chosen version, accept or reject.
    HelloAck = 2,
    /// A run of pages of one region.
    PageWindow = 3,
    /// The VMM's opaque CPU and device state blob.
    VmState = 4,
    /// Pages of one region that are stale or missing on the destination.
    DirtySet = 5,
    /// The destination asks for a page a vCPU faulted on.
    FaultRequest = 6,
    /// The source has sent everything: counts and a memory digest.
    Done = 7,
    /// The destination's counts, digest and verdict.
    DoneAck = 8,
    /// Generic control (pause, resume, ack of a sequence number, ping).
    Control = 9,
}

impl FrameType {
    /// Maps a type byte to a frame type; 0 and unknown bytes are errors.
    pub fn from_u8(got: u8) -> Result<Self, WireError> {
        Ok(match got {
            1 => Self::Hello,
            2 => Self::HelloAck,
            3 => Self::PageWindow,
            4 => Self::VmState,
            5 => Self::DirtySet,
            6 => Self::FaultRequest,
            7 => Self::Done,
            8 => Self::DoneAck,
            9 => Self::Control,
            _ => return Err(WireError::UnknownFrameType { got }),
        })
    }

    /// Flag bits this frame type defines.
    pub fn allowed_flags(self) -> u8 {
        match self {
            Self::PageWindow => FLAG_URGENT_ANSWER,
            Self::Hello => FLAG_HELLO_RESUME,
            _ => 0,
        }
    }
}

/// Explicit size limits. Every length read from the wire is checked against these before any
/// buffer grows for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Upper bound on any payload (all per-type limits are also clamped to it).
    pub max_payload_bytes: u32,
    /// Pages in one `PageWindow` (at most [`super::WINDOW_PAGES_CAP`]).
    pub max_window_pages: u32,
    /// Regions in a Hello's memory layout.
    pub max_regions: u16,
    /// Bytes of an authentication token.
    pub max_auth_bytes: u16,
    /// Bytes of a `VmState` blob.
    pub max_vmstate_bytes: u32,
    /// Payload bytes of a `DirtySet`.
    pub max_dirtyset_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 32 << 20,
            max_window_pages: 256,
            max_regions: 64,
            max_auth_bytes: 1024,
            max_vmstate_bytes: 16 << 20,
            max_dirtyset_bytes: 4 << 20,
        }
    }
}

/// Fixed bytes of a `PageWindow` payload before its body (v2: with request id).
pub(crate) const WINDOW_FIXED_BYTES: u64 = 4 + 8 + 4 + 1 + 4;

impl Limits {
    /// Pages per window actually enforced (the configured value, capped by the page mask size).
    pub fn window_pages(&self) -> u32 {
        self.max_window_pages.min(super::WINDOW_PAGES_CAP)
    }

    /// Largest payload a frame of this type may announce.
    pub fn max_payload_for(&self, frame: FrameType) -> u64 {
        let page = super::PAGE_SIZE as u64;
        let pages = u64::from(self.window_pages());
        let per_type = match frame {
            // Worst case is a mixed window of raw pages: fixed part, map, pages.
            FrameType::PageWindow => WINDOW_FIXED_BYTES + pages.div_ceil(4) + pages * page,
            FrameType::VmState => u64::from(self.max_vmstate_bytes),
            FrameType::DirtySet => u64::from(self.max_dirtyset_bytes),
            FrameType::Hello | FrameType::HelloAck => {
                64 + 16 * u64::from(self.max_regions) + u64::from(self.max_auth_bytes)
            }
            FrameType::FaultRequest | FrameType::Done | FrameType::DoneAck | FrameType::Control => {
                64
            }
            FrameType::Invalid => 0,
        };
        per_type.min(u64::from(self.max_payload_bytes))
    }
}

/// A parsed and checked header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Protocol version of the payload.
    pub version: u16,
    /// Frame type.
    pub frame_type: FrameType,
    /// Flags (only defined bits can be set).
    pub flags: u8,
    /// Payload bytes following the header.
    pub payload_len: u32,
    /// CRC32 of the payload.
    pub payload_crc: u32,
}

/// Checks that `version` is one this codec speaks.
pub fn check_version(version: u16) -> Result<(), WireError> {
    if (VERSION_MIN..=VERSION_CURRENT).contains(&version) {
        Ok(())
    } else {
        Err(WireError::UnsupportedVersion { got: version, min: VERSION_MIN, max: VERSION_CURRENT })
    }
}

/// Parses and checks the header at the start of `bytes` (magic, version, type, flags, and the
/// payload length against `limits`). The payload itself is not looked at.
pub fn parse_header(bytes: &[u8], limits: &Limits) -> Result<HeaderInfo, WireError> {
    let (raw, _) = FrameHeader::ref_from_prefix(bytes).map_err(|_| WireError::Truncated {
        what: "frame header",
        need: HEADER_LEN as u64,
        have: bytes.len() as u64,
    })?;
    let magic = raw.magic.get();
    if magic != MAGIC {
        return Err(WireError::BadMagic { got: magic, expected: MAGIC });
    }
    let version = raw.version.get();
    check_version(version)?;
    let frame_type = FrameType::from_u8(raw.frame_type)?;
    if raw.flags & !frame_type.allowed_flags() != 0 {
        return Err(WireError::UnknownFlags { frame: frame_type, got: raw.flags });
    }
    let payload_len = raw.payload_len.get();
    let max = limits.max_payload_for(frame_type);
    if u64::from(payload_len) > max {
        return Err(WireError::PayloadTooLong { frame: frame_type, len: payload_len.into(), max });
    }
    Ok(HeaderInfo {
        version,
        frame_type,
        flags: raw.flags,
        payload_len,
        payload_crc: raw.payload_crc.get(),
    })
}

/// Appends a header placeholder to `out` and returns the frame's start offset.
pub(crate) fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    start
}

/// Fills in the header of the frame that starts at `start` (everything after its header is the
/// payload). On a limit violation the frame is removed from `out` again.
pub(crate) fn finish_frame(
    out: &mut Vec<u8>,
    start: usize,
    version: u16,
    frame_type: FrameType,
    flags: u8,
    limits: &Limits,
) -> Result<usize, WireError> {
    let payload_start = start + HEADER_LEN;
    let len = out.len().saturating_sub(payload_start) as u64;
    let max = limits.max_payload_for(frame_type);
    if len > max {
        out.truncate(start);
        return Err(WireError::PayloadTooLong { frame: frame_type, len, max });
    }
    let crc = crc32fast::hash(&out[payload_start..]);
    let header = FrameHeader {
        magic: U32::new(MAGIC),
        version: U16::new(version),
        frame_type: frame_type as u8,
        flags,
        // Cannot truncate: len <= max <= max_payload_bytes, a u32.
        payload_len: U32::new(len as u32),
        payload_crc: U32::new(crc),
    };
    out[start..payload_start].copy_from_slice(header.as_bytes());
    Ok(out.len() - start)
}
