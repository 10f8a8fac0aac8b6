//! The acceptor (destination) side of the handshake: takes each stream's Hello, checks it
//! against this host's VM and the session's other stream, and answers with a HelloAck that
//! accepts or names the reason for refusing.

use super::auth::check_token;
use super::{
    describe_regions, AcceptorConfig, Binding, SessionError, SessionIntent, SessionParams,
    SessionTicket,
};
use crate::wire::{
    self, FrameBody, FrameType, Hello, RejectReason, StreamKind, Verdict, WireError, HEADER_LEN,
    MAGIC, VERSION_CURRENT, VERSION_MIN,
};

/// The acceptor's answer to one Hello: the bytes to send back (a HelloAck, possibly a reject;
/// empty when the input was too broken to answer), and what became of the stream.
#[derive(Debug)]
pub struct Answer {
    /// The encoded HelloAck to send on the connection the Hello came on (may be empty).
    pub reply: Vec<u8>,
    /// The stream that is now open, or why the Hello was not taken. After an error the
    /// connection should be closed once `reply` is sent.
    pub outcome: Result<StreamKind, SessionError>,
}

/// The destination's handshake for one session (both streams). Sans-IO: feed it each Hello
/// frame's bytes with [`Acceptor::on_hello_bytes`] and send back [`Answer::reply`].
#[derive(Debug)]
pub struct Acceptor {
    cfg: AcceptorConfig,
    binding: Binding,
    /// The session as the first accepted Hello set it.
    session: Option<SessionParams>,
    open: [bool; 2],
    limits: wire::Limits,
}

/// A refusal before it is encoded.
struct Refusal {
    reason: RejectReason,
    detail: String,
}

impl Acceptor {
    /// An acceptor for a VM with `cfg`'s memory layout whose streams are not bound to each
    /// other by a ticket (see [`Acceptor::with_binding`]).
    pub fn new(cfg: AcceptorConfig) -> Self {
        Self {
            cfg,
            binding: Binding::None,
            session: None,
            open: [false; 2],
            limits: wire::Limits::default(),
        }
    }

    /// Binds the session's streams by a ticket (see [`Binding`]).
    pub fn with_binding(mut self, binding: Binding) -> Self {
        self.binding = binding;
        self
    }

    /// The session's ticket, when its streams are bound.
    pub fn ticket(&self) -> Option<SessionTicket> {
        match self.binding {
            Binding::None => None,
            Binding::New(ticket) | Binding::Resume(ticket) => Some(ticket),
        }
    }

    /// The session id of the first accepted Hello.
    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.session_id)
    }

    /// Streams accepted so far.
    pub fn open_streams(&self) -> usize {
        self.open.iter().filter(|o| **o).count()
    }

    /// The session's parameters once both streams are open.
    pub fn params(&self) -> Result<SessionParams, SessionError> {
        match (&self.session, self.open) {
            (Some(params), [true, true]) => Ok(params.clone()),
            _ => Err(SessionError::Incomplete { open: self.open_streams() }),
        }
    }

    /// Takes the bytes of one whole frame, the first on a connection. `arrived_on` names the
    /// stream when the transport knows it (the simulator does; TCP learns it from the Hello).
    pub fn on_hello_bytes(&mut self, arrived_on: Option<StreamKind>, bytes: &[u8]) -> Answer {
        let hello = match wire::decode_frame(bytes, &self.limits) {
            Ok((frame, _)) => match frame.body {
                FrameBody::Hello(hello) => hello,
                other => {
                    let got = other.frame_type();
                    let error = WireError::FrameBeforeHello { got, expected: FrameType::Hello };
                    return Answer { reply: Vec::new(), outcome: Err(error.into()) };
                }
            },
            Err(error) => return self.answer_undecodable(bytes, error),
        };
        if let Some(arrived_on) = arrived_on.filter(|s| *s != hello.stream) {
            let error = SessionError::StreamMismatch { named: hello.stream, arrived_on };
            return Answer { reply: Vec::new(), outcome: Err(error) };
        }
        match self.judge(&hello) {
            Ok((version, token)) => self.accept(&hello, version, &token),
            Err(r) => refuse(hello.session_id, hello.stream, r.reason, r.detail),
        }
    }

    /// Checks a decodable Hello: version, layout, session, auth. The version and the token
    /// for the ack, or the refusal.
    fn judge(&self, hello: &Hello<'_>) -> Result<(u16, Vec<u8>), Refusal> {
        let version = wire::negotiate_version(hello.max_version).map_err(|_| Refusal {
            reason: RejectReason::Version,
            detail: version_detail(hello.max_version),
        })?;
        if hello.page_size != self.cfg.page_size || hello.regions != self.cfg.regions {
            return Err(Refusal {
                reason: RejectReason::LayoutMismatch,
                detail: format!(
                    "memory layout differs: the source offers {} in {}-byte pages, this VM has \
                     {} in {}-byte pages",
                    describe_regions(&hello.regions),
                    hello.page_size,
                    describe_regions(&self.cfg.regions),
                    self.cfg.page_size
                ),
            });
        }
        self.check_other_stream(hello, version)?;
        let token = check_token(&self.binding, hello.stream, hello.resume, hello.auth_token)
            .map_err(|detail| Refusal { reason: RejectReason::BadAuth, detail })?;
        Ok((version, token))
    }

    /// The second stream must name the same session, mode, intent and version as the first.
    fn check_other_stream(&self, hello: &Hello<'_>, version: u16) -> Result<(), Refusal> {
        if self.open[hello.stream.index()] {
            return Err(Refusal {
                reason: RejectReason::UnknownSession,
                detail: format!("the {:?} stream is already open", hello.stream),
            });
        }
        let Some(first) = &self.session else { return Ok(()) };
        let unknown = |detail| Err(Refusal { reason: RejectReason::UnknownSession, detail });
        if first.session_id != hello.session_id {
            return unknown(format!(
                "session {:#x} differs from the other stream's {:#x}",
                hello.session_id, first.session_id
            ));
        }
        if first.mode != hello.mode {
            return Err(Refusal {
                reason: RejectReason::Mode,
                detail: format!(
                    "mode {} differs from the other stream's {}",
                    hello.mode, first.mode
                ),
            });
        }
        if first.version != version || (first.intent == SessionIntent::Resume) != hello.resume {
            return unknown("version or intent differs from the other stream's".to_string());
        }
        Ok(())
    }

    fn accept(&mut self, hello: &Hello<'_>, version: u16, token: &[u8]) -> Answer {
        let ack = wire::HelloAck {
            version,
            session_id: hello.session_id,
            stream: hello.stream,
            verdict: Verdict::Accept,
            auth_token: token,
        };
        let mut reply = Vec::new();
        if let Err(e) =
            wire::encode_frame(&mut reply, version, &FrameBody::HelloAck(ack), &self.limits)
        {
            return Answer { reply: Vec::new(), outcome: Err(e.into()) };
        }
        self.open[hello.stream.index()] = true;
        let intent = if hello.resume { SessionIntent::Resume } else { SessionIntent::New };
        self.session.get_or_insert_with(|| SessionParams {
            version,
            session_id: hello.session_id,
            mode: hello.mode,
            intent,
            regions: hello.regions.clone(),
            page_size: hello.page_size,
        });
        Answer { reply, outcome: Ok(hello.stream) }
    }

    /// A Hello the codec cannot take (a frame version or page size this build does not speak)
    /// is still answered: its frozen layout gives the session and stream to name in the
    /// reject.
    fn answer_undecodable(&self, bytes: &[u8], error: WireError) -> Answer {
        let reason = match &error {
            WireError::UnsupportedVersion { .. } => RejectReason::Version,
            WireError::UnsupportedPageSize { .. } => RejectReason::LayoutMismatch,
            _ => return Answer { reply: Vec::new(), outcome: Err(error.into()) },
        };
        let Some(peek) = peek_hello(bytes) else {
            return Answer { reply: Vec::new(), outcome: Err(error.into()) };
        };
        if reason == RejectReason::Version {
            // The header's version is outside the CRC, so locally this stays the codec's
            // error (a corrupted byte must read as corruption); the peer still learns why.
            let detail = version_detail(peek.max_version);
            let reply = refuse(peek.session_id, peek.stream, reason, detail).reply;
            return Answer { reply, outcome: Err(error.into()) };
        }
        let detail = format!("memory layout differs: {error}");
        refuse(peek.session_id, peek.stream, reason, detail)
    }
}

/// The answer that refuses a Hello of `session_id` on `stream`: a HelloAck with
/// `Reject(reason)`, and the error naming `detail`. For refusals decided outside an
/// [`Acceptor`] (a listener that is busy, or waits for another session).
pub fn refuse(session_id: u64, stream: StreamKind, reason: RejectReason, detail: String) -> Answer {
    let ack = wire::HelloAck {
        version: VERSION_CURRENT,
        session_id,
        stream,
        verdict: Verdict::Reject(reason),
        auth_token: &[],
    };
    let mut reply = Vec::new();
    let body = FrameBody::HelloAck(ack);
    if wire::encode_frame(&mut reply, VERSION_CURRENT, &body, &wire::Limits::default()).is_err() {
        reply.clear();
    }
    Answer { reply, outcome: Err(SessionError::Refused { reason, session_id, stream, detail }) }
}

fn version_detail(peer_max: u16) -> String {
    format!(
        "protocol version {peer_max} not supported (this side speaks \
         {VERSION_MIN}..={VERSION_CURRENT})"
    )
}

/// The fields of a Hello at their frozen offsets.
struct Peek {
    max_version: u16,
    session_id: u64,
    stream: StreamKind,
}

/// Reads the magic, the frame type and the first fields of a Hello whose header or payload
/// the codec refused; `None` unless it is plainly a Hello.
fn peek_hello(bytes: &[u8]) -> Option<Peek> {
    let magic = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?);
    if magic != MAGIC || *bytes.get(6)? != FrameType::Hello as u8 {
        return None;
    }
    let payload = bytes.get(HEADER_LEN..)?;
    let max_version = u16::from_be_bytes(payload.get(0..2)?.try_into().ok()?);
    let session_id = u64::from_be_bytes(payload.get(2..10)?.try_into().ok()?);
    let stream = StreamKind::from_wire(*payload.get(10)?)?;
    Some(Peek { max_version, session_id, stream })
}
