//! The session layer: the one handshake that opens a migration, used by both hosts, the TCP
//! transport, the simulator and the fuzz target.
//!
//! Bytes enter as received handshake frames and leave as frames to send; nothing here touches
//! a socket. The source runs an [`Initiator`] built from its [`Offer`] (session id, mode,
//! memory layout, page size, intent, newest version); the destination runs an [`Acceptor`]
//! built from its [`AcceptorConfig`] (its VM's layout). Each stream (bulk, urgent) opens with a
//! Hello and its HelloAck. When both streams are accepted, both sides hold the same
//! [`SessionParams`], and the engines are built from them. After the handshake, a
//! [`FrameGate`] per stream checks that every frame carries the negotiated version, travels
//! on a stream allowed for its type and in the right direction.
//!
//! ```text
//!  source (Initiator)                               destination (Acceptor)
//!    |== bulk connection ===============================|
//!    |-- Hello{session, Bulk, mode, layout} ----------->|  version, layout checked
//!    |<- HelloAck{version, Accept, ticket} -------------|  (ticket when bound)
//!    |== urgent connection =============================|
//!    |-- Hello{session, Urgent, ticket, ...} ---------->|  same session, mode, version, ticket
//!    |<- HelloAck{version, Accept} ---------------------|
//!    |   both: SessionParams { version, session_id, mode, intent, regions, page_size }
//!    |
//!    |   refused instead:
//!    |<- HelloAck{Reject(Version | LayoutMismatch | BadAuth | UnknownSession | Busy | Mode)}
//!    |   the connection closes; the source reports SessionError::Rejected with the reason
//!    |   in words, the destination SessionError::Refused with both sides' values
//! ```
//!
//! # Versions
//!
//! Every build speaks its own version and the one before (`wire::VERSION_MIN ..=
//! wire::VERSION_CURRENT`). The Hello names the initiator's newest version; the acceptor picks
//! the highest version both speak ([`crate::wire::negotiate_version`]) or refuses with
//! `Reject(Version)`. The Hello's payload layout is frozen across versions and travels in a
//! frame of the oldest version the initiator speaks, so an acceptor of another version can
//! still read its session id and stream and answer with a reject instead of closing silently.
//!
//! # Authentication and binding
//!
//! The peers prove who they are below this layer (the TCP transport's Noise handshake,
//! `crate::secure`, before the Hello). Here, when bound ([`Binding`]), the acceptor gives a
//! new session's bulk stream a random [`SessionTicket`] in the HelloAck's `auth_token`, and
//! the urgent stream and every resumed stream must carry it in the Hello's: a stream from
//! another session is refused with `Reject(BadAuth)`. Unbound, tokens are empty both ways.
//!
//! # Resuming a session
//!
//! [`SessionIntent::Resume`] is sent as header flag `wire::FLAG_HELLO_RESUME` on the Hello
//! (no version bump: a build before the flag refuses a Hello with unknown flags, so a resume
//! fails closed against it). The acceptor records the intent in [`SessionParams::intent`];
//! what a resumed session does is the recovery code's to decide.

mod acceptor;
mod auth;
mod error;
mod framing;
mod gate;
mod initiator;
pub mod sim;
#[cfg(test)]
mod tests;

pub use acceptor::{refuse, Acceptor, Answer};
pub use auth::{Binding, SessionTicket, TICKET_BYTES};
pub use error::SessionError;
pub use framing::{handshake_frame_len, take_handshake_frame};
pub use gate::{FrameGate, Role};
pub use initiator::Initiator;

use crate::ports::HostRegion;
use crate::wire::{MigrationMode, Region, PAGE_SIZE, VERSION_CURRENT};

/// Whether a Hello opens a new session or resumes one whose connection broke.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionIntent {
    /// A new migration.
    #[default]
    New,
    /// Reconnect to the session of the same id (post-copy recovery).
    Resume,
}

/// What both sides agreed on; the engines are built from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// The protocol version every later frame carries.
    pub version: u16,
    /// The session both streams belong to.
    pub session_id: u64,
    /// The migration method.
    pub mode: MigrationMode,
    /// New session or resumed one.
    pub intent: SessionIntent,
    /// The guest memory layout (identical on both sides).
    pub regions: Vec<Region>,
    /// Page size in bytes.
    pub page_size: u32,
}

/// What the initiator (source) proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The session id both streams carry.
    pub session_id: u64,
    /// The migration method.
    pub mode: MigrationMode,
    /// The source VM's memory layout.
    pub regions: Vec<Region>,
    /// Page size in bytes.
    pub page_size: u32,
    /// New session or resumed one.
    pub intent: SessionIntent,
    /// Newest protocol version offered (this build's, unless a test plays another peer).
    pub max_version: u16,
    /// The session's ticket when resuming a bound session (see [`Binding`]).
    pub ticket: Option<SessionTicket>,
}

impl Offer {
    /// A new session of `mode` for memory laid out as `regions`, at this build's version.
    pub fn new(session_id: u64, mode: MigrationMode, regions: Vec<Region>) -> Self {
        Self {
            session_id,
            mode,
            regions,
            page_size: PAGE_SIZE as u32,
            intent: SessionIntent::New,
            max_version: VERSION_CURRENT,
            ticket: None,
        }
    }
}

/// What the acceptor (destination) checks a Hello against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptorConfig {
    /// This VM's memory layout.
    pub regions: Vec<Region>,
    /// Page size in bytes.
    pub page_size: u32,
}

impl AcceptorConfig {
    /// Accepts sessions for memory laid out as `regions`.
    pub fn new(regions: Vec<Region>) -> Self {
        Self { regions, page_size: PAGE_SIZE as u32 }
    }
}

/// The wire form of a VM's memory regions.
pub fn wire_regions(regions: &[HostRegion]) -> Vec<Region> {
    regions.iter().map(|r| Region { guest_phys: r.guest_phys, size_bytes: r.size_bytes }).collect()
}

/// A layout in words: "2 regions, 256 MiB in all ([0x0, +1 MiB), [0x100000, +255 MiB))".
/// Totals that are not whole MiB show one decimal.
pub fn describe_regions(regions: &[Region]) -> String {
    let total: u64 = regions.iter().map(|r| r.size_bytes).sum();
    let list: Vec<String> = regions
        .iter()
        .map(|r| format!("[{:#x}, +{})", r.guest_phys, human_bytes(r.size_bytes)))
        .collect();
    let plural = if regions.len() == 1 { "" } else { "s" };
    format!("{} region{plural}, {} in all ({})", regions.len(), human_bytes(total), list.join(", "))
}

fn human_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes > MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else if bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}
