//! The post-handshake frame gate: checks each frame received on an open stream before an
//! engine acts on it.
//!
//! Frames must carry the negotiated version, travel on a stream allowed for their type (fault
//! requests on urgent; state, dirty sets and Done/DoneAck on bulk) and go in the right
//! direction (the destination never receives a `FaultRequest`, the source never a
//! `PageWindow`; the source receives `DirtySet` only as a recovery report of missing pages). A second Hello, or anything after Done (destination) or DoneAck (source), is
//! an error.

use crate::wire::{Frame, FrameType, StreamKind, WireError};

/// Which end of the session a gate guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The destination: receives pages, state, dirty sets, Done.
    Acceptor,
    /// The source: receives fault requests, DoneAck.
    Initiator,
}

/// Per-stream order checker for the frames after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameGate {
    role: Role,
    stream: StreamKind,
    version: u16,
    finished: bool,
}

impl FrameGate {
    /// A gate for `stream` of a session opened with `version`, on the `role` side.
    pub fn new(role: Role, stream: StreamKind, version: u16) -> Self {
        Self { role, stream, version, finished: false }
    }

    /// The gate for a new connection of the same session: after a recovery the peer may
    /// repeat Done or DoneAck, so the end seen on the old connection is forgotten.
    pub fn reopened(self) -> Self {
        Self { finished: false, ..self }
    }

    /// True once Done (destination) or DoneAck (source) passed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Checks a received frame; on error nothing changes.
    pub fn check(&mut self, frame: &Frame<'_>) -> Result<(), WireError> {
        let got = frame.frame_type();
        if self.finished {
            return Err(WireError::FrameAfterEnd { got, state: "finished" });
        }
        if matches!(got, FrameType::Hello | FrameType::HelloAck) {
            return Err(WireError::DuplicateHello { frame: got });
        }
        if frame.version != self.version {
            return Err(WireError::VersionMismatch {
                frame: got,
                got: frame.version,
                negotiated: self.version,
            });
        }
        let allowed_stream = match got {
            FrameType::VmState | FrameType::DirtySet | FrameType::Done | FrameType::DoneAck => {
                self.stream == StreamKind::Bulk
            }
            _ => true,
        };
        if !allowed_stream {
            return Err(WireError::WrongStream { got, stream: self.stream });
        }
        let (role, receives) = match self.role {
            Role::Acceptor => {
                ("destination", !matches!(got, FrameType::FaultRequest | FrameType::DoneAck))
            }
            Role::Initiator => (
                "source",
                matches!(
                    got,
                    FrameType::FaultRequest
                        | FrameType::DoneAck
                        | FrameType::Control
                        | FrameType::DirtySet
                ),
            ),
        };
        if !receives {
            return Err(WireError::UnexpectedFrame { got, role });
        }
        self.finished = matches!(
            (self.role, got),
            (Role::Acceptor, FrameType::Done) | (Role::Initiator, FrameType::DoneAck)
        );
        Ok(())
    }
}
