//! The one error type of the session layer.

use crate::wire::{RejectReason, StreamKind, WireError};

/// Everything that can go wrong while two hosts agree on a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The destination answered our Hello with a reject; `detail` says why in words.
    #[error("the destination refused: {detail}")]
    Rejected {
        /// The reason code the HelloAck carried.
        reason: RejectReason,
        /// The stream whose Hello was refused.
        stream: StreamKind,
        /// The reason in words, with what this side offered.
        detail: String,
    },
    /// This side (the acceptor) refused a peer's Hello and sent it a reject.
    #[error("refused the {stream:?} stream of session {session_id:#x}: {detail}")]
    Refused {
        /// The reason code sent back.
        reason: RejectReason,
        /// The session the Hello named.
        session_id: u64,
        /// The stream the Hello named.
        stream: StreamKind,
        /// The reason in words, with both sides' values.
        detail: String,
    },
    /// A frame was malformed or out of order (before, during or after the handshake).
    #[error("session frame: {0}")]
    Wire(#[from] WireError),
    /// The two streams of one session were accepted with different versions.
    #[error("the {stream:?} stream settled on version {got}, the other stream on {other}")]
    VersionsDiffer {
        /// The stream answered second.
        stream: StreamKind,
        /// Its version.
        got: u16,
        /// The first stream's version.
        other: u16,
    },
    /// The acceptor picked a version newer than the initiator offered.
    #[error("the destination chose version {got}, newer than the {offered} this side offered")]
    VersionNotOffered {
        /// The version in the HelloAck.
        got: u16,
        /// The newest version the Hello offered.
        offered: u16,
    },
    /// A Hello arrived on one stream but names the other.
    #[error("a Hello naming the {named:?} stream arrived on the {arrived_on:?} stream")]
    StreamMismatch {
        /// The stream the Hello names.
        named: StreamKind,
        /// The stream it came on.
        arrived_on: StreamKind,
    },
    /// The authenticator refused the peer's token.
    #[error("authentication failed: {why}")]
    Auth {
        /// The authenticator's reason.
        why: String,
    },
    /// Asked for a Hello on a stream that already sent one.
    #[error("the {stream:?} stream already sent its Hello")]
    HelloTwice {
        /// The stream.
        stream: StreamKind,
    },
    /// The handshake is not complete, so there are no session parameters yet.
    #[error("the handshake is not complete ({open} of 2 streams open)")]
    Incomplete {
        /// Streams accepted so far.
        open: usize,
    },
    /// The link carrying the handshake failed (simulated link dropped, socket error).
    #[error("the {stream:?} stream failed during the handshake: {why}")]
    Link {
        /// The stream.
        stream: StreamKind,
        /// What happened.
        why: String,
    },
}

impl SessionError {
    /// The reject reason, when this error is a reject sent or received.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            Self::Rejected { reason, .. } | Self::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}
