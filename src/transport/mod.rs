//! The bulk and urgent streams between the two hosts.
//!
//! A migration uses two byte streams: **bulk** (pre-copy rounds, working set, background push)
//! and **urgent** (fault requests and their page windows), so a fault answer never waits behind
//! bulk data. Frames are opaque here: bytes enter through a send on one side and leave as
//! bytes received on the other. [`tcp`] carries them over two real TCP connections bound by a
//! session id; [`sim`] is a seeded, virtual-clock simulator of the same two streams with loss,
//! delay, reordering across streams, disconnects and corruption.

pub mod sim;
pub mod tcp;

/// Which of the two streams of a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Rounds, working set, background push.
    Bulk,
    /// Fault requests and their answers.
    Urgent,
}

impl StreamKind {
    /// Both kinds, bulk first.
    pub const ALL: [StreamKind; 2] = [StreamKind::Bulk, StreamKind::Urgent];

    /// The byte that names the stream in a connection preamble.
    pub fn to_wire(self) -> u8 {
        match self {
            StreamKind::Bulk => 1,
            StreamKind::Urgent => 2,
        }
    }

    /// Parses a preamble byte; unknown values are `None`.
    pub fn from_wire(byte: u8) -> Option<StreamKind> {
        match byte {
            1 => Some(StreamKind::Bulk),
            2 => Some(StreamKind::Urgent),
            _ => None,
        }
    }

    /// 0 for bulk, 1 for urgent (for per-stream arrays).
    pub fn index(self) -> usize {
        match self {
            StreamKind::Bulk => 0,
            StreamKind::Urgent => 1,
        }
    }
}
