//! [`Handshake`]: a tiny per-connection state machine that checks the order and placement of
//! received frames.
//!
//! The source connects (it is the initiator), the destination accepts. Each side feeds every
//! received frame to [`Handshake::check`] before acting on it:
//!
//! ```text
//!   destination (acceptor)                source (initiator, after sending Hello)
//!   AwaitHello --Hello--> Open(v)         AwaitHelloAck --HelloAck(accept)--> Open(v)
//!   Open --Done--> Finished                             --HelloAck(reject)--> Rejected
//!                                         Open --DoneAck--> Finished
//! ```
//!
//! In `Open`, frames must carry the negotiated version, travel on a stream allowed for their
//! type (fault requests on urgent; state, dirty sets and Done/DoneAck on bulk) and go in the
//! right direction (the destination never receives a `FaultRequest`, the source never a
//! `PageWindow`). A second Hello, data before Hello, or anything after the end are errors.

use super::{negotiate_version, Frame, FrameBody, FrameType, StreamKind, Verdict, WireError};

/// Which end of the connection this checker guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The destination: receives Hello, pages, state, dirty sets, Done.
    Acceptor,
    /// The source: receives HelloAck, fault requests, DoneAck.
    Initiator,
}

/// Where a connection's handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeState {
    /// Acceptor waiting for the peer's Hello.
    AwaitHello,
    /// Initiator waiting for the answer to its Hello.
    AwaitHelloAck {
        /// Session id our Hello carried.
        session_id: u64,
        /// Stream our Hello named.
        stream: StreamKind,
    },
    /// Handshake done; data frames flow.
    Open {
        /// Negotiated protocol version.
        version: u16,
        /// Which stream this connection is.
        stream: StreamKind,
        /// The session.
        session_id: u64,
    },
    /// The acceptor refused the Hello.
    Rejected,
    /// Done (acceptor) or DoneAck (initiator) was received.
    Finished,
}

/// Per-connection order checker. See the module docs for the states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    role: Role,
    state: HandshakeState,
}

impl Handshake {
    /// The destination's checker, before any frame arrived.
    pub fn acceptor() -> Self {
        Self { role: Role::Acceptor, state: HandshakeState::AwaitHello }
    }

    /// The source's checker, after it sent a Hello for `session_id` on `stream`.
    pub fn initiator(session_id: u64, stream: StreamKind) -> Self {
        Self { role: Role::Initiator, state: HandshakeState::AwaitHelloAck { session_id, stream } }
    }

    /// Current state.
    pub fn state(&self) -> HandshakeState {
        self.state
    }

    /// The negotiated version once the connection is open.
    pub fn version(&self) -> Option<u16> {
        match self.state {
            HandshakeState::Open { version, .. } => Some(version),
            _ => None,
        }
    }

    /// Checks a received frame and advances the state. On error the state is unchanged.
    pub fn check(&mut self, frame: &Frame<'_>) -> Result<(), WireError> {
        self.state = self.next_state(frame)?;
        Ok(())
    }

    fn next_state(&self, frame: &Frame<'_>) -> Result<HandshakeState, WireError> {
        let got = frame.frame_type();
        match (self.state, &frame.body) {
            (HandshakeState::AwaitHello, FrameBody::Hello(h)) => Ok(HandshakeState::Open {
                version: negotiate_version(h.max_version)?,
                stream: h.stream,
                session_id: h.session_id,
            }),
            (HandshakeState::AwaitHello, _) => {
                Err(WireError::FrameBeforeHello { got, expected: FrameType::Hello })
            }
            (HandshakeState::AwaitHelloAck { session_id, stream }, FrameBody::HelloAck(a)) => {
                if a.session_id != session_id || a.stream != stream {
                    return Err(WireError::HelloAckMismatch {
                        got_session: a.session_id,
                        got_stream: a.stream,
                        session: session_id,
                        stream,
                    });
                }
                Ok(match a.verdict {
                    Verdict::Accept => {
                        HandshakeState::Open { version: a.version, stream, session_id }
                    }
                    Verdict::Reject(_) => HandshakeState::Rejected,
                })
            }
            (HandshakeState::AwaitHelloAck { .. }, _) => {
                Err(WireError::FrameBeforeHello { got, expected: FrameType::HelloAck })
            }
            (HandshakeState::Open { version, stream, .. }, _) => {
                self.check_open(frame, version, stream)
            }
            (HandshakeState::Rejected, _) => {
                Err(WireError::FrameAfterEnd { got, state: "rejected" })
            }
            (HandshakeState::Finished, _) => {
                Err(WireError::FrameAfterEnd { got, state: "finished" })
            }
        }
    }

    fn check_open(
        &self,
        frame: &Frame<'_>,
        version: u16,
        stream: StreamKind,
    ) -> Result<HandshakeState, WireError> {
        let got = frame.frame_type();
        if matches!(got, FrameType::Hello | FrameType::HelloAck) {
            return Err(WireError::DuplicateHello { frame: got });
        }
        if frame.version != version {
            return Err(WireError::VersionMismatch {
                frame: got,
                got: frame.version,
                negotiated: version,
            });
        }
        let allowed_stream = match got {
            FrameType::FaultRequest => stream == StreamKind::Urgent,
            FrameType::VmState | FrameType::DirtySet | FrameType::Done | FrameType::DoneAck => {
                stream == StreamKind::Bulk
            }
            _ => true,
        };
        if !allowed_stream {
            return Err(WireError::WrongStream { got, stream });
        }
        let (role, receives) = match self.role {
            Role::Acceptor => {
                ("destination", !matches!(got, FrameType::FaultRequest | FrameType::DoneAck))
            }
            Role::Initiator => (
                "source",
                matches!(got, FrameType::FaultRequest | FrameType::DoneAck | FrameType::Control),
            ),
        };
        if !receives {
            return Err(WireError::UnexpectedFrame { got, role });
        }
        let ends = matches!(
            (self.role, got),
            (Role::Acceptor, FrameType::Done) | (Role::Initiator, FrameType::DoneAck)
        );
        Ok(if ends { HandshakeState::Finished } else { self.state })
    }
}
