//! The initiator (source) side of the handshake: one Hello per stream out, one HelloAck per
//! stream in, and the session's parameters once both streams are accepted.

use super::{Offer, SessionError, SessionIntent, SessionParams, SessionTicket};
use crate::wire::{
    self, Frame, FrameBody, FrameType, HelloAck, RejectReason, StreamKind, Verdict, WireError,
    VERSION_CURRENT, VERSION_MIN,
};

/// Where one stream's handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    /// No Hello sent yet.
    Idle,
    /// Hello sent, waiting for its HelloAck.
    AwaitAck,
    /// Accepted with this version.
    Open(u16),
    /// The acceptor refused it.
    Rejected,
}

/// The source's handshake over both streams. Sans-IO: [`Initiator::hello`] gives the bytes to
/// send, [`Initiator::on_frame`] (or [`Initiator::on_bytes`]) takes the answer.
#[derive(Debug)]
pub struct Initiator {
    offer: Offer,
    /// True when the streams are bound by a ticket (see [`super::Binding`]).
    bound: bool,
    /// The session's ticket: the offer's (a resume), or the bulk stream's HelloAck's.
    ticket: Option<SessionTicket>,
    legs: [Leg; 2],
    limits: wire::Limits,
}

impl Initiator {
    /// An initiator that offers `offer`, its streams not bound by a ticket.
    pub fn new(offer: Offer) -> Self {
        Self {
            ticket: offer.ticket,
            offer,
            bound: false,
            legs: [Leg::Idle; 2],
            limits: wire::Limits::default(),
        }
    }

    /// Binds the streams by the session's ticket: the bulk stream of a new session learns it
    /// from its HelloAck, every other stream carries it (a resume, the offer's ticket).
    pub fn bound(mut self) -> Self {
        self.bound = true;
        self
    }

    /// The session's ticket, once known.
    pub fn ticket(&self) -> Option<SessionTicket> {
        self.ticket
    }

    /// What this side offers.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The encoded Hello frame for `stream`. Call once per stream.
    pub fn hello(&mut self, stream: StreamKind) -> Result<Vec<u8>, SessionError> {
        if self.legs[stream.index()] != Leg::Idle {
            return Err(SessionError::HelloTwice { stream });
        }
        let token = self.hello_token(stream)?;
        let hello = wire::Hello {
            max_version: self.offer.max_version,
            session_id: self.offer.session_id,
            stream,
            mode: self.offer.mode,
            page_size: self.offer.page_size,
            regions: self.offer.regions.clone(),
            auth_token: &token,
            resume: self.offer.intent == SessionIntent::Resume,
        };
        // The Hello's layout is the same in every version: send it in the oldest one we speak,
        // which any acceptor with a version in common with us can parse.
        let frame_version =
            self.offer.max_version.saturating_sub(1).clamp(VERSION_MIN, VERSION_CURRENT);
        let mut out = Vec::new();
        wire::encode_frame(&mut out, frame_version, &FrameBody::Hello(hello), &self.limits)?;
        self.legs[stream.index()] = Leg::AwaitAck;
        Ok(out)
    }

    /// Decodes one complete frame received on `stream` and hands it to [`Self::on_frame`].
    pub fn on_bytes(
        &mut self,
        stream: StreamKind,
        bytes: &[u8],
    ) -> Result<Option<SessionParams>, SessionError> {
        let (frame, _) = wire::decode_frame(bytes, &self.limits)?;
        self.on_frame(stream, &frame)
    }

    /// Takes the HelloAck received on `stream`; the session's parameters once both streams
    /// are accepted, an error naming the reason when the acceptor refused.
    pub fn on_frame(
        &mut self,
        stream: StreamKind,
        frame: &Frame<'_>,
    ) -> Result<Option<SessionParams>, SessionError> {
        let got = frame.frame_type();
        let ack = match (self.legs[stream.index()], &frame.body) {
            (Leg::AwaitAck, FrameBody::HelloAck(ack)) => ack,
            (Leg::Idle | Leg::AwaitAck, _) => {
                return Err(
                    WireError::FrameBeforeHello { got, expected: FrameType::HelloAck }.into()
                )
            }
            (Leg::Open(_), _) => return Err(WireError::DuplicateHello { frame: got }.into()),
            (Leg::Rejected, _) => {
                return Err(WireError::FrameAfterEnd { got, state: "rejected" }.into())
            }
        };
        if ack.session_id != self.offer.session_id || ack.stream != stream {
            return Err(WireError::HelloAckMismatch {
                got_session: ack.session_id,
                got_stream: ack.stream,
                session: self.offer.session_id,
                stream,
            }
            .into());
        }
        if let Verdict::Reject(reason) = ack.verdict {
            self.legs[stream.index()] = Leg::Rejected;
            let detail = self.describe_reject(reason, ack);
            return Err(SessionError::Rejected { reason, stream, detail });
        }
        let version = self.check_version(stream, frame.version, ack)?;
        self.confirm_token(stream, ack.auth_token)?;
        self.legs[stream.index()] = Leg::Open(version);
        Ok(self.params())
    }

    /// The token of `stream`'s Hello: empty unbound and on a new session's bulk stream, the
    /// ticket otherwise.
    fn hello_token(&self, stream: StreamKind) -> Result<Vec<u8>, SessionError> {
        let opens = self.offer.intent == SessionIntent::New && stream == StreamKind::Bulk;
        if !self.bound || opens {
            return Ok(Vec::new());
        }
        match self.ticket {
            Some(ticket) => Ok(ticket.as_bytes().to_vec()),
            None => Err(SessionError::Auth {
                why: format!(
                    "the {stream:?} stream needs the session's ticket, which the bulk stream's \
                     HelloAck carries: open the bulk stream first"
                ),
            }),
        }
    }

    /// Checks the HelloAck's token: the ticket on a bound bulk stream (learned there for a
    /// new session), empty otherwise.
    fn confirm_token(&mut self, stream: StreamKind, token: &[u8]) -> Result<(), SessionError> {
        let auth = |why: &str| Err(SessionError::Auth { why: why.to_string() });
        if !self.bound || stream == StreamKind::Urgent {
            return if token.is_empty() {
                Ok(())
            } else {
                auth("unexpected token in the HelloAck")
            };
        }
        let Some(got) = SessionTicket::from_token(token) else {
            return auth("the bulk stream's HelloAck carries no session ticket");
        };
        match self.ticket {
            Some(known) if known != got => {
                auth("the bulk stream's HelloAck carries another session's ticket")
            }
            _ => {
                self.ticket = Some(got);
                Ok(())
            }
        }
    }

    fn check_version(
        &self,
        stream: StreamKind,
        frame_version: u16,
        ack: &HelloAck<'_>,
    ) -> Result<u16, SessionError> {
        if ack.version > self.offer.max_version {
            return Err(SessionError::VersionNotOffered {
                got: ack.version,
                offered: self.offer.max_version,
            });
        }
        if frame_version != ack.version {
            return Err(WireError::VersionMismatch {
                frame: FrameType::HelloAck,
                got: frame_version,
                negotiated: ack.version,
            }
            .into());
        }
        let other = self.legs[1 - stream.index()];
        if let Leg::Open(other) = other {
            if other != ack.version {
                return Err(SessionError::VersionsDiffer { stream, got: ack.version, other });
            }
        }
        Ok(ack.version)
    }

    /// The session's parameters once both streams are accepted.
    pub fn params(&self) -> Option<SessionParams> {
        match self.legs {
            [Leg::Open(version), Leg::Open(_)] => Some(SessionParams {
                version,
                session_id: self.offer.session_id,
                mode: self.offer.mode,
                intent: self.offer.intent,
                regions: self.offer.regions.clone(),
                page_size: self.offer.page_size,
            }),
            _ => None,
        }
    }

    /// The reason in words, from what this side offered (the ack carries only a code).
    fn describe_reject(&self, reason: RejectReason, ack: &HelloAck<'_>) -> String {
        let offer = &self.offer;
        match reason {
            RejectReason::Version => {
                // Every build speaks its own version and the one before.
                let newest = ack.version;
                let oldest = newest.saturating_sub(1).max(VERSION_MIN);
                format!(
                    "protocol version {} not supported (it speaks {oldest}..={newest})",
                    offer.max_version
                )
            }
            RejectReason::LayoutMismatch => format!(
                "memory layout differs: this side offered {} in {}-byte pages, which the \
                 destination's VM does not have (its log names its own layout)",
                super::describe_regions(&offer.regions),
                offer.page_size
            ),
            RejectReason::BadAuth => "authentication failed".to_string(),
            RejectReason::UnknownSession => format!(
                "session {:#x} is unknown there or its two streams disagree",
                offer.session_id
            ),
            RejectReason::Busy => "it is busy (too many sessions half open)".to_string(),
            RejectReason::Mode => {
                format!(
                    "migration mode {} not supported or differs between the streams",
                    offer.mode
                )
            }
        }
    }
}
