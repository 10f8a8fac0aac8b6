//! The one error type of the wire codec.
//!
//! Every variant names the value that was wrong and, where it helps, which field or which
//! page of which region, so that a log line alone tells what the peer (or the caller) sent.

use super::header::FrameType;

/// Everything that can go wrong while encoding, decoding or checking frames.
///
/// Decoding errors mean the stream is corrupt or hostile: the connection should be dropped
/// (the codec has no resynchronisation marker). Encoding errors mean the caller asked for
/// something the protocol cannot carry; the output buffer is left as it was before the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame does not start with [`super::MAGIC`].
    #[error("bad frame magic {got:#010x} (expected {expected:#010x})")]
    BadMagic {
        /// The magic that was read.
        got: u32,
        /// The magic this codec speaks.
        expected: u32,
    },
    /// The frame (or a Hello) names a protocol version this codec does not speak.
    #[error("unsupported protocol version {got} (this side speaks {min}..={max})")]
    UnsupportedVersion {
        /// The version that was read or requested.
        got: u16,
        /// Oldest version accepted.
        min: u16,
        /// Newest version accepted.
        max: u16,
    },
    /// The frame type byte is 0 (`Invalid`) or not a known type.
    #[error("unknown frame type {got}")]
    UnknownFrameType {
        /// The type byte that was read.
        got: u8,
    },
    /// Flag bits are set that the frame type does not define.
    #[error("{frame:?} frame has undefined flag bits {got:#04x}")]
    UnknownFlags {
        /// The frame type.
        frame: FrameType,
        /// All flag bits of the header.
        got: u8,
    },
    /// The payload length is over the configured limit for this frame type.
    #[error("{frame:?} payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLong {
        /// The frame type.
        frame: FrameType,
        /// The announced (or, when encoding, the produced) payload length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The CRC32 of the payload does not match the header.
    #[error(
        "{frame:?} payload CRC mismatch: header says {expected:#010x}, computed {computed:#010x}"
    )]
    CrcMismatch {
        /// The frame type.
        frame: FrameType,
        /// The CRC carried in the header.
        expected: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// Fewer bytes than a field needs.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// Which part was being read.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// Bytes are left over after a complete payload was parsed.
    #[error("{frame:?} payload has {extra} trailing bytes")]
    TrailingBytes {
        /// The frame type.
        frame: FrameType,
        /// How many bytes were left.
        extra: u64,
    },
    /// An enum-like byte field holds a value with no meaning.
    #[error("invalid value {got} for field {field}")]
    InvalidField {
        /// Which field (`"hello.stream"`, `"window.encoding"`, ...).
        field: &'static str,
        /// The value that was read.
        got: u64,
    },
    /// A feature is used that the frame's protocol version does not have.
    #[error("{feature} is not available in protocol version {version}")]
    FeatureNotInVersion {
        /// The feature (`"mixed window"`, `"request id"`).
        feature: &'static str,
        /// The version of the frame.
        version: u16,
    },
    /// The announced page size is not the one this codec moves ([`super::PAGE_SIZE`]).
    #[error("unsupported page size {got} (only {supported})")]
    UnsupportedPageSize {
        /// The page size that was read.
        got: u32,
        /// The only supported page size.
        supported: u32,
    },
    /// A Hello names more regions than the limit.
    #[error("{count} memory regions exceed the limit of {max}")]
    TooManyRegions {
        /// The announced count.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A region is empty, not page aligned, or overlaps / precedes the one before it.
    #[error("region {index} (guest_phys {guest_phys:#x}, {size_bytes} bytes) is invalid: {why}")]
    BadRegion {
        /// Index in the region table.
        index: usize,
        /// Its guest physical address.
        guest_phys: u64,
        /// Its size.
        size_bytes: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An authentication token is longer than the limit.
    #[error("authentication token of {len} bytes exceeds the limit of {max}")]
    AuthTooLong {
        /// The token length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A window (or request) names a region index past the region table.
    #[error("region index {region} out of range ({regions} regions)")]
    RegionOutOfRange {
        /// The index that was named.
        region: u32,
        /// How many regions the table has.
        regions: usize,
    },
    /// A page index is past the end of its region.
    #[error("page {page} out of range for region {region} of {region_pages} pages")]
    PageOutOfRange {
        /// The region.
        region: u32,
        /// The page index within the region.
        page: u64,
        /// Pages in the region.
        region_pages: u64,
    },
    /// A window starts inside a region but runs past its end.
    #[error("window of {count} pages at page {first_page} crosses the end of region {region} ({region_pages} pages)")]
    WindowCrossesRegionEnd {
        /// The region.
        region: u32,
        /// First page of the window.
        first_page: u64,
        /// Pages in the window.
        count: u32,
        /// Pages in the region.
        region_pages: u64,
    },
    /// A window of zero pages.
    #[error("zero-length page window (region {region}, page {first_page})")]
    EmptyWindow {
        /// The region.
        region: u32,
        /// First page.
        first_page: u64,
    },
    /// A window of more pages than the limit.
    #[error("window of {count} pages exceeds the limit of {max}")]
    WindowTooLong {
        /// Pages in the window.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// The caller's page buffer is not a whole number of pages.
    #[error("page buffer of {len_bytes} bytes is not a whole number of pages")]
    NotWholePages {
        /// Length of the buffer.
        len_bytes: usize,
    },
    /// The destination slice does not have the size of the window.
    #[error("destination of {got} bytes does not fit a window needing {expected}")]
    DestinationSize {
        /// count * PAGE_SIZE.
        expected: usize,
        /// The slice length.
        got: usize,
    },
    /// An lz4 block inflated to another size than expected.
    #[error("lz4 data at page {page} inflates to {got} bytes, expected exactly {expected}")]
    Lz4SizeMismatch {
        /// First page (window-relative) the block covers.
        page: u32,
        /// Bytes expected.
        expected: usize,
        /// Bytes produced (a lower bound when the output overflowed).
        got: usize,
    },
    /// An lz4 block is malformed.
    #[error("lz4 data at page {page} is corrupt: {source}")]
    Lz4Corrupt {
        /// First page (window-relative) the block covers.
        page: u32,
        /// What lz4_flex found.
        source: lz4_flex::block::DecompressError,
    },
    /// A mixed window's per-page lz4 block is not smaller than a raw page.
    #[error("lz4 block of {len} bytes at page {page} is not smaller than a page")]
    Lz4PageTooLong {
        /// Window-relative page.
        page: u32,
        /// Compressed length announced.
        len: u64,
    },
    /// A LEB128 number in a dirty set is longer than 10 bytes or overflows u64.
    #[error("malformed varint at byte {offset} of a dirty set")]
    BadVarint {
        /// Offset within the dirty-set body.
        offset: usize,
    },
    /// A dirty set contains a run of zero pages (not canonical, and a sign of corruption).
    #[error("dirty set of region {region} has a zero-length run at page {page}")]
    EmptyDirtyRun {
        /// The region.
        region: u32,
        /// Where the run starts.
        page: u64,
    },
    /// A dirty set (or the caller's bitmap) names a page past its region's end.
    #[error(
        "dirty set of region {region} names page {page}, past the region's {region_pages} pages"
    )]
    DirtyPastRegionEnd {
        /// The region.
        region: u32,
        /// The first page past the end that was named.
        page: u64,
        /// Pages in the region.
        region_pages: u64,
    },
    /// A dirty set announces more pages than its region (or the whole memory) has.
    #[error("dirty set of region {region} announces {pages} pages, the region has {region_pages}")]
    DirtySetLongerThanRegion {
        /// The region.
        region: u32,
        /// Pages announced.
        pages: u64,
        /// Pages in the region.
        region_pages: u64,
    },
    /// The pages in a dirty set's body do not add up to its announced count.
    #[error("dirty set of region {region} announces {announced} pages, body holds {counted}")]
    DirtyCountMismatch {
        /// The region.
        region: u32,
        /// Count in the header of the set.
        announced: u64,
        /// Count found in the runs or bitmap.
        counted: u64,
    },
    /// `FrameReader::commit` was given more bytes than the spare capacity handed out.
    #[error("commit of {n} bytes exceeds the {spare} spare bytes handed out")]
    CommitOverflow {
        /// Bytes committed.
        n: usize,
        /// Spare bytes that were available.
        spare: usize,
    },
    /// A second Hello (or HelloAck) on a connection that already has one.
    #[error("duplicate {frame:?} on an established connection")]
    DuplicateHello {
        /// Hello or HelloAck.
        frame: FrameType,
    },
    /// A frame other than the handshake arrived before the handshake completed.
    #[error("{got:?} frame before the handshake completed (expected {expected:?})")]
    FrameBeforeHello {
        /// The frame that arrived.
        got: FrameType,
        /// What the handshake waits for.
        expected: FrameType,
    },
    /// A frame arrived after the peer rejected the handshake or after DoneAck.
    #[error("{got:?} frame on a connection that is {state}")]
    FrameAfterEnd {
        /// The frame that arrived.
        got: FrameType,
        /// "rejected" or "finished".
        state: &'static str,
    },
    /// A frame arrived on the stream that must not carry it.
    #[error("{got:?} frame is not allowed on the {stream:?} stream")]
    WrongStream {
        /// The frame.
        got: FrameType,
        /// The stream it arrived on.
        stream: super::StreamKind,
    },
    /// A frame's version differs from the one negotiated for the connection.
    #[error("{frame:?} frame has version {got}, the connection negotiated {negotiated}")]
    VersionMismatch {
        /// The frame.
        frame: FrameType,
        /// Version in its header.
        got: u16,
        /// Version of the connection.
        negotiated: u16,
    },
    /// A frame that the receiving side never receives (e.g. a `FaultRequest` at the
    /// destination).
    #[error("{got:?} frame is not expected by the {role}")]
    UnexpectedFrame {
        /// The frame.
        got: FrameType,
        /// "source" or "destination".
        role: &'static str,
    },
    /// A HelloAck answers another session or stream than the Hello that was sent.
    #[error(
        "HelloAck for session {got_session:#x}/{got_stream:?}, expected {session:#x}/{stream:?}"
    )]
    HelloAckMismatch {
        /// Session in the ack.
        got_session: u64,
        /// Stream in the ack.
        got_stream: super::StreamKind,
        /// Session of our Hello.
        session: u64,
        /// Stream of our Hello.
        stream: super::StreamKind,
    },
}
