//! The sans-IO wire protocol: frames that carry a migration between two hosts.
//!
//! Nothing here touches a socket. Encoders append complete frames to a caller's `Vec<u8>`
//! ([`encode_frame`], [`encode_page_window`], [`encode_dirty_set`]); decoders read byte slices,
//! either one frame at a time ([`decode_frame`]) or from a stream ([`FrameReader`], which a
//! driver fills with received bytes). Decoded frames borrow the receive buffer; page windows
//! inflate straight into the caller's destination ([`PageWindowRef::decode_into`]).
//!
//! Every frame is a 16-byte [`FrameHeader`] (magic "HMIG", version, type, flags, payload
//! length, CRC32 of the payload; network byte order) followed by the payload. All lengths are
//! checked against [`Limits`] before anything is allocated for them.
//!
//! # Exchange
//!
//! Two TCP connections per migration, opened by the source. The session layer
//! (`crate::session`) runs the Hello exchange and checks the order of the frames after it.
//!
//! ```text
//!  source                                   destination
//!    |== bulk ================================|
//!    |-- Hello{session, Bulk, layout, mode} ->|
//!    |<- HelloAck{version, Accept} -----------|
//!    |== urgent ==============================|
//!    |-- Hello{session, Urgent, ...} -------->|
//!    |<- HelloAck{version, Accept} -----------|
//!    |                                        |
//!    |-- PageWindow* (bulk: rounds, push) --->|
//!    |-- DirtySet* (bulk, at switch-over) --->|
//!    |-- VmState (bulk) --------------------->|
//!    |<- FaultRequest{id} (urgent) -----------|  a vCPU touched a missing page
//!    |-- PageWindow{id, urgent} (urgent) ---->|  the page and its neighbours
//!    |-- Done{counts, digest} (bulk) -------->|
//!    |<- DoneAck{counts, digest, verdict} ----|
//!    |<-> Control{Pause|Resume|Ack|Ping} -----|  either stream, for recovery
//! ```
//!
//! # Versions
//!
//! Version 2 is current and version 1 is still accepted. Version 1 has no mixed windows (a
//! window is all raw, one lz4 block, or all zero) and no request ids (in `PageWindow` and
//! `FaultRequest`). Any other version is [`WireError::UnsupportedVersion`].

mod codec;
mod control;
mod dirty;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod hello;
mod pages;
mod reader;
mod window;

pub use control::{
    Control, ControlKind, Done, DoneAck, DoneVerdict, FaultRequest, FAULT_VCPU_UNKNOWN,
    LOADED_REFUSED, RESUME_DEST_COMPLETE, RESUME_DEST_RUNNING,
};
pub use dirty::{encode_dirty_set, DirtyFormat, DirtyRuns, DirtySetRef, DirtyStats, PageRun};
pub use error::WireError;
pub use frame::{decode_frame, encode_frame, Frame, FrameBody};
pub use header::{
    check_version, parse_header, FrameHeader, FrameType, HeaderInfo, Limits, FLAG_HELLO_RESUME,
    FLAG_URGENT_ANSWER, HEADER_LEN, MAGIC, VERSION_CURRENT, VERSION_HAND_OVER, VERSION_MIN,
};
pub use hello::{
    check_regions, negotiate_version, Hello, HelloAck, MigrationMode, Region, RejectReason,
    StreamKind, Verdict,
};
pub use pages::{is_zero, PageMask, WINDOW_PAGES_CAP};
pub use reader::FrameReader;
pub use window::{
    encode_page_window, validate_range, Compression, PageWindowRef, WindowEncoding, WindowMeta,
    WindowStats, LZ4_MIN_SAVING_BYTES_PER_PAGE,
};

/// The page size the protocol moves (x86-64 base pages).
pub const PAGE_SIZE: usize = 4096;
