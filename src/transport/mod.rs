//! The bulk and urgent streams between the two hosts.
//!
//! A migration uses two byte streams: **bulk** (pre-copy rounds, working set, background push)
//! and **urgent** (fault requests and their page windows), so a fault answer never waits behind
//! bulk data. Frames are opaque here: bytes enter through a send on one side and leave as
//! bytes received on the other. [`tcp`] carries them over two real TCP connections bound by a
//! session id; [`sim`] is a seeded, virtual-clock simulator of the same two streams with loss,
//! delay, reordering across streams, disconnects and corruption.

pub mod framing;
pub mod ring_streams;
pub mod sim;
pub mod tcp;

/// Which of the two connections a byte stream is (defined with the wire protocol).
pub use crate::wire::StreamKind;
