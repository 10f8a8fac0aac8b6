//! `Hello` / `HelloAck`: the first frame each way on both streams.
//!
//! The initiator (source) sends a [`Hello`] with the session id, which stream this connection
//! is, the page size, the guest memory layout, the migration mode and an opaque auth token.
//! The acceptor (destination) answers with a [`HelloAck`]: the version both will use from now
//! on ([`negotiate_version`]) and accept or reject with a reason.
//!
//! The Hello's payload layout is frozen: every version reads and writes it the same way, so an
//! acceptor can always find the session id and stream of a Hello it cannot otherwise take,
//! and answer it with a reject. Header flag [`FLAG_HELLO_RESUME`] marks a Hello that resumes an
//! existing session instead of opening a new one (an acceptor built before the flag refuses
//! the frame as having unknown flags, so a resume never reaches a peer that cannot do it).
//!
//! Payload layout (big endian), identical in versions 1 and 2:
//! `Hello = max_version u16, session u64, stream u8, mode u8, page_size u32,
//!          region_count u16, {guest_phys u64, size_bytes u64} * count, auth_len u16, auth`
//! `HelloAck = version u16, session u64, stream u8, verdict u8, reason u16, auth_len u16, auth`

use super::codec::{put_u16, put_u32, put_u64, Cur};
use super::{
    check_version, FrameType, Limits, WireError, FLAG_HELLO_RESUME, PAGE_SIZE, VERSION_CURRENT,
    VERSION_MIN,
};

/// Which of the two connections of a migration this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StreamKind {
    /// Rounds, working set, background push, state, dirty sets, Done.
    Bulk = 1,
    /// Fault requests and their answers; never queued behind bulk data.
    Urgent = 2,
}

impl StreamKind {
    /// Both kinds, bulk first.
    pub const ALL: [StreamKind; 2] = [StreamKind::Bulk, StreamKind::Urgent];

    /// The byte that names the stream in a Hello.
    pub fn to_wire(self) -> u8 {
        self as u8
    }

    /// Parses a stream byte; unknown values are `None`.
    pub fn from_wire(byte: u8) -> Option<StreamKind> {
        Self::from_u8(byte).ok()
    }

    /// 0 for bulk, 1 for urgent (for per-stream arrays).
    pub fn index(self) -> usize {
        match self {
            StreamKind::Bulk => 0,
            StreamKind::Urgent => 1,
        }
    }

    fn from_u8(got: u8) -> Result<Self, WireError> {
        match got {
            1 => Ok(Self::Bulk),
            2 => Ok(Self::Urgent),
            _ => Err(WireError::InvalidField { field: "hello.stream", got: got.into() }),
        }
    }
}

/// The migration method the session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MigrationMode {
    /// Rounds of dirty pages while the VM runs, then stop-and-copy.
    Precopy = 1,
    /// Switch at once, pages follow on demand and by background push.
    Postcopy = 2,
    /// This project's hybrid (working set with the state, windows on faults, adaptive).
    Hybrid = 3,
    /// The hybrid exactly as Sahni & Varma describe it.
    HybridPaper = 4,
    /// The source chooses, and changes while it runs, between hybrid's live pass, pre-copy's
    /// rounds and post-copy, from what it measures (see `source::auto`).
    Auto = 5,
}

impl MigrationMode {
    /// Every mode, in the order reports list them.
    pub const ALL: [MigrationMode; 5] = [
        MigrationMode::Precopy,
        MigrationMode::Postcopy,
        MigrationMode::Hybrid,
        MigrationMode::HybridPaper,
        MigrationMode::Auto,
    ];

    /// The mode's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Precopy => "precopy",
            Self::Postcopy => "postcopy",
            Self::Hybrid => "hybrid",
            Self::HybridPaper => "hybrid-paper",
            Self::Auto => "auto",
        }
    }

    /// Whether the source needs hybrid's working set before it starts (hybrid, the paper's
    /// hybrid, and auto, which runs hybrid's structure).
    pub fn uses_working_set(self) -> bool {
        matches!(self, Self::Hybrid | Self::HybridPaper | Self::Auto)
    }

    fn from_u8(got: u8) -> Result<Self, WireError> {
        match got {
            1 => Ok(Self::Precopy),
            2 => Ok(Self::Postcopy),
            3 => Ok(Self::Hybrid),
            4 => Ok(Self::HybridPaper),
            5 => Ok(Self::Auto),
            _ => Err(WireError::InvalidField { field: "hello.mode", got: got.into() }),
        }
    }
}

impl std::fmt::Display for MigrationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MigrationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            format!("unknown mode `{s}` (expected precopy, postcopy, hybrid, hybrid-paper or auto)")
        })
    }
}

/// One slot of guest memory. Page indices in windows, requests and dirty sets are relative to
/// the region's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// Guest physical address of the first byte (page aligned).
    pub guest_phys: u64,
    /// Length in bytes (a non-zero multiple of the page size).
    pub size_bytes: u64,
}

impl Region {
    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.size_bytes / PAGE_SIZE as u64
    }
}

/// Checks a region table: each region non-empty, page aligned, and starting after the previous
/// one ends (ascending, no overlap), at most `limits.max_regions` of them.
pub fn check_regions(regions: &[Region], limits: &Limits) -> Result<(), WireError> {
    if regions.len() > usize::from(limits.max_regions) {
        return Err(WireError::TooManyRegions {
            count: regions.len() as u64,
            max: limits.max_regions.into(),
        });
    }
    let page = PAGE_SIZE as u64;
    let mut prev_end = 0u64;
    for (index, r) in regions.iter().enumerate() {
        let bad = |why| WireError::BadRegion {
            index,
            guest_phys: r.guest_phys,
            size_bytes: r.size_bytes,
            why,
        };
        if r.size_bytes == 0 {
            return Err(bad("empty"));
        }
        if r.guest_phys % page != 0 || r.size_bytes % page != 0 {
            return Err(bad("not page aligned"));
        }
        if index > 0 && r.guest_phys < prev_end {
            return Err(bad("overlaps or precedes the previous region"));
        }
        prev_end = r.guest_phys.checked_add(r.size_bytes).ok_or(bad("wraps the address space"))?;
    }
    Ok(())
}

/// First frame on each connection, initiator to acceptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Newest protocol version the sender speaks.
    pub max_version: u16,
    /// Identifies the migration; both streams carry the same id.
    pub session_id: u64,
    /// Which stream this connection is.
    pub stream: StreamKind,
    /// The method the session runs.
    pub mode: MigrationMode,
    /// Page size in bytes; must be [`PAGE_SIZE`].
    pub page_size: u32,
    /// Guest memory layout.
    pub regions: Vec<Region>,
    /// Opaque authentication token (at most `limits.max_auth_bytes`).
    pub auth_token: &'a [u8],
    /// True when the Hello resumes the session `session_id` instead of opening a new one
    /// (sent as header flag [`FLAG_HELLO_RESUME`]).
    pub resume: bool,
}

/// Why an acceptor refused a Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RejectReason {
    /// Authentication failed.
    BadAuth = 1,
    /// No common protocol version.
    Version = 2,
    /// The session id is not known (e.g. an urgent stream without its bulk stream).
    UnknownSession = 3,
    /// The memory layout does not match the destination VM.
    LayoutMismatch = 4,
    /// The destination cannot take a migration now.
    Busy = 5,
    /// The migration mode is not supported.
    Mode = 6,
}

impl RejectReason {
    fn from_u16(got: u16) -> Result<Self, WireError> {
        Ok(match got {
            1 => Self::BadAuth,
            2 => Self::Version,
            3 => Self::UnknownSession,
            4 => Self::LayoutMismatch,
            5 => Self::Busy,
            6 => Self::Mode,
            _ => {
                return Err(WireError::InvalidField { field: "hello_ack.reason", got: got.into() })
            }
        })
    }
}

/// The acceptor's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Go ahead.
    Accept,
    /// Refused; the connection closes after the ack.
    Reject(RejectReason),
}

/// Answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAck<'a> {
    /// Version both sides use from now on.
    pub version: u16,
    /// Echo of the Hello's session id.
    pub session_id: u64,
    /// Echo of the Hello's stream.
    pub stream: StreamKind,
    /// Accept or reject.
    pub verdict: Verdict,
    /// Opaque authentication response (at most `limits.max_auth_bytes`).
    pub auth_token: &'a [u8],
}

/// The version an acceptor picks for a peer whose newest version is `peer_max`.
///
/// Every build speaks its own version and the one before, so the peer speaks
/// `peer_max - 1 ..= peer_max`; the highest version both speak wins, and a peer with no
/// version in common (too old, or two or more versions newer) is refused.
pub fn negotiate_version(peer_max: u16) -> Result<u16, WireError> {
    let highest = peer_max.min(VERSION_CURRENT);
    let lowest = peer_max.saturating_sub(1).max(VERSION_MIN);
    if lowest > highest {
        return Err(WireError::UnsupportedVersion {
            got: peer_max,
            min: VERSION_MIN,
            max: VERSION_CURRENT,
        });
    }
    Ok(highest)
}

fn check_auth(token: &[u8], limits: &Limits) -> Result<(), WireError> {
    if token.len() > usize::from(limits.max_auth_bytes) {
        return Err(WireError::AuthTooLong {
            len: token.len() as u64,
            max: limits.max_auth_bytes.into(),
        });
    }
    Ok(())
}

fn check_page_size(got: u32) -> Result<(), WireError> {
    if got != PAGE_SIZE as u32 {
        return Err(WireError::UnsupportedPageSize { got, supported: PAGE_SIZE as u32 });
    }
    Ok(())
}

impl<'a> Hello<'a> {
    /// Header flags of this Hello.
    pub(crate) fn flags(&self) -> u8 {
        if self.resume {
            FLAG_HELLO_RESUME
        } else {
            0
        }
    }

    pub(crate) fn write_payload(
        &self,
        out: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<(), WireError> {
        check_page_size(self.page_size)?;
        check_regions(&self.regions, limits)?;
        check_auth(self.auth_token, limits)?;
        put_u16(out, self.max_version);
        put_u64(out, self.session_id);
        out.push(self.stream as u8);
        out.push(self.mode as u8);
        put_u32(out, self.page_size);
        // Fits: check_regions bounded the count by a u16 limit.
        put_u16(out, self.regions.len() as u16);
        for r in &self.regions {
            put_u64(out, r.guest_phys);
            put_u64(out, r.size_bytes);
        }
        put_u16(out, self.auth_token.len() as u16);
        out.extend_from_slice(self.auth_token);
        Ok(())
    }

    pub(crate) fn parse(flags: u8, payload: &'a [u8], limits: &Limits) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let max_version = c.u16("hello.max_version")?;
        let session_id = c.u64("hello.session_id")?;
        let stream = StreamKind::from_u8(c.u8("hello.stream")?)?;
        let mode = MigrationMode::from_u8(c.u8("hello.mode")?)?;
        let page_size = c.u32("hello.page_size")?;
        check_page_size(page_size)?;
        let count = c.u16("hello.region_count")?;
        if count > limits.max_regions {
            return Err(WireError::TooManyRegions {
                count: count.into(),
                max: limits.max_regions.into(),
            });
        }
        // Check the bytes are there before allocating for them.
        let table = c.bytes(usize::from(count) * 16, "hello.regions")?;
        let regions: Vec<Region> = table
            .chunks_exact(16)
            .map(|e| {
                let (a, b) = e.split_at(8);
                Region {
                    guest_phys: u64::from_be_bytes(a.try_into().unwrap_or_default()),
                    size_bytes: u64::from_be_bytes(b.try_into().unwrap_or_default()),
                }
            })
            .collect();
        check_regions(&regions, limits)?;
        let auth_token = read_auth(&mut c, limits, "hello.auth")?;
        c.finish(FrameType::Hello)?;
        let resume = flags & FLAG_HELLO_RESUME != 0;
        Ok(Self { max_version, session_id, stream, mode, page_size, regions, auth_token, resume })
    }
}

fn read_auth<'a>(
    c: &mut Cur<'a>,
    limits: &Limits,
    what: &'static str,
) -> Result<&'a [u8], WireError> {
    let len = c.u16(what)?;
    if len > limits.max_auth_bytes {
        return Err(WireError::AuthTooLong { len: len.into(), max: limits.max_auth_bytes.into() });
    }
    c.bytes(usize::from(len), what)
}

impl<'a> HelloAck<'a> {
    pub(crate) fn write_payload(
        &self,
        out: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<(), WireError> {
        check_version(self.version)?;
        check_auth(self.auth_token, limits)?;
        put_u16(out, self.version);
        put_u64(out, self.session_id);
        out.push(self.stream as u8);
        let (verdict, reason) = match self.verdict {
            Verdict::Accept => (1u8, 0u16),
            Verdict::Reject(r) => (2, r as u16),
        };
        out.push(verdict);
        put_u16(out, reason);
        put_u16(out, self.auth_token.len() as u16);
        out.extend_from_slice(self.auth_token);
        Ok(())
    }

    pub(crate) fn parse(payload: &'a [u8], limits: &Limits) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let version = c.u16("hello_ack.version")?;
        check_version(version)?;
        let session_id = c.u64("hello_ack.session_id")?;
        let stream = StreamKind::from_u8(c.u8("hello_ack.stream")?)?;
        let verdict_byte = c.u8("hello_ack.verdict")?;
        let reason = c.u16("hello_ack.reason")?;
        let verdict = match (verdict_byte, reason) {
            (1, 0) => Verdict::Accept,
            (1, r) => {
                return Err(WireError::InvalidField { field: "hello_ack.reason", got: r.into() })
            }
            (2, r) => Verdict::Reject(RejectReason::from_u16(r)?),
            (v, _) => {
                return Err(WireError::InvalidField { field: "hello_ack.verdict", got: v.into() })
            }
        };
        let auth_token = read_auth(&mut c, limits, "hello_ack.auth")?;
        c.finish(FrameType::HelloAck)?;
        Ok(Self { version, session_id, stream, verdict, auth_token })
    }
}

#[cfg(test)]
mod tests {
    use super::MigrationMode;

    #[test]
    fn auto_samples_the_working_set_as_hybrid_does() {
        let sampled: Vec<_> =
            MigrationMode::ALL.into_iter().filter(|m| m.uses_working_set()).collect();
        let hybrids = [MigrationMode::Hybrid, MigrationMode::HybridPaper, MigrationMode::Auto];
        assert_eq!(sampled, hybrids);
        for mode in MigrationMode::ALL {
            assert_eq!(mode.name().parse::<MigrationMode>(), Ok(mode));
        }
    }
}
