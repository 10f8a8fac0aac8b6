//! Two TCP connections per migration (bulk and urgent), opened by the session handshake.
//!
//! The connector opens both connections (bulk first) and runs the session layer's
//! [`Initiator`] on each: it sends the Hello and waits, with a timeout, for the HelloAck. The
//! listener ([`PairListener`], in `tcp/listener.rs`) accepts connections in any order, reads
//! each one's Hello without blocking (a connection that sends nothing, garbage, or half a Hello
//! never holds up another), pairs the two halves of a session by the session id the Hello
//! carries, and answers each with the HelloAck of that session's [`Acceptor`]: an accept, or a
//! reject that names the reason before the connection closes. A connection that cannot join a
//! session is dropped with one warning naming its peer and the reason, and the listener goes
//! on waiting for the real source. What leaves is a [`StreamPair`] of plain blocking
//! `std::net::TcpStream`s with the [`SessionParams`] both sides agreed on: the engines may
//! drive them with blocking I/O (tests) or hand their fds to the io_uring driver. No byte past
//! the handshake is read, so nothing is left buffered on the side. Every connection gets the
//! liveness settings of `tcp/liveness.rs` (TCP_USER_TIMEOUT and keepalive), so a silent peer
//! surfaces as a timed-out stream within [`TcpOptions::liveness`]. Works on any address,
//! including one inside a network namespace the caller already entered.

mod handshake;
mod listener;
mod liveness;

pub use listener::{listen, DroppedConnection, PairListener};
pub use liveness::{liveness_of, set_liveness, KeepaliveSettings, LivenessReport};

use super::framing::{Framing, PairFraming};
use super::StreamKind;
use crate::secure::{self, RecordCipher, SecureConfig, SecureError};
use crate::session::{Initiator, Offer, SessionError, SessionParams, SessionTicket};
use handshake::{read_exact_bytes, read_handshake_frame, read_record};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[cfg(doc)]
use crate::session::Acceptor;

/// Errors of the TCP transport; each names the address, stream or peer concerned.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The source has no address to dial (its connections were given by the caller).
    #[error("no address to dial for the recovery: give one (migrate-recover)")]
    NoAddress,
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Connecting the given stream failed.
    #[error("connecting the {kind:?} stream to {addr} failed: {source}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// Which stream.
        kind: StreamKind,
        /// The OS error.
        source: io::Error,
    },
    /// Setting a socket option failed.
    #[error("setting {option} failed: {source}")]
    SockOpt {
        /// The option.
        option: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// `accept` failed.
    #[error("accept failed: {source}")]
    Accept {
        /// The OS error.
        source: io::Error,
    },
    /// Sending or receiving a handshake frame failed (an OS error other than a timeout or a
    /// close, which have variants of their own).
    #[error("the handshake with {peer} failed while it {doing}: {source}")]
    HandshakeIo {
        /// The peer.
        peer: SocketAddr,
        /// "sent its Hello", "waited for the HelloAck", ...
        doing: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The peer sent no whole handshake frame within the handshake timeout.
    #[error(
        "the handshake with {peer} timed out while it {doing}: no whole frame within \
         {timeout_ms} ms ({received_bytes} bytes received)"
    )]
    HandshakeTimeout {
        /// The peer.
        peer: SocketAddr,
        /// "was waited on for its Hello", ...
        doing: &'static str,
        /// The handshake timeout.
        timeout_ms: u64,
        /// Bytes of the frame that did arrive.
        received_bytes: usize,
    },
    /// The peer closed the connection before a whole handshake frame (a port probe closes
    /// after 0 bytes).
    #[error(
        "{peer} closed the connection while it {doing}, after {received_bytes} bytes of the frame"
    )]
    HandshakeClosed {
        /// The peer.
        peer: SocketAddr,
        /// "was waited on for its Hello", ...
        doing: &'static str,
        /// Bytes of the frame that did arrive.
        received_bytes: usize,
    },
    /// More connections were reading their Hello than the listener keeps at once; the oldest
    /// was dropped to make room.
    #[error("{peer} was dropped: {limit} connections were in the handshake at once")]
    TooManyHandshakes {
        /// The connection dropped.
        peer: SocketAddr,
        /// [`TcpOptions::max_handshakes`].
        limit: usize,
    },
    /// The handshake itself failed: refused by the destination, refused here, or malformed.
    /// (The message holds the session layer's in full, so it is not chained as a source.)
    #[error("{error} (peer {peer})")]
    Session {
        /// The peer.
        peer: SocketAddr,
        /// What the session layer said.
        error: SessionError,
    },
    /// The Noise handshake or a handshake record failed: a wrong key, no key, a replayed
    /// handshake, settings that differ (the message names which).
    #[error("{error} (peer {peer})")]
    Secure {
        /// The peer.
        peer: SocketAddr,
        /// What the secure layer said.
        error: SecureError,
    },
    /// The OS random source failed while making a session ticket.
    #[error("the OS random source failed while making a session ticket: {0}")]
    Random(getrandom::Error),
    /// A session announced the same stream twice.
    #[error("session {session_id:#x} opened its {kind:?} stream twice (second from {peer})")]
    DuplicateStream {
        /// The session.
        session_id: u64,
        /// The duplicated stream.
        kind: StreamKind,
        /// The second peer.
        peer: SocketAddr,
    },
    /// A connection of another session arrived while waiting for a given one.
    #[error("expected session {expected:#x}, peer {peer} announced session {got:#x}")]
    UnexpectedSession {
        /// The session waited for.
        expected: u64,
        /// The session announced.
        got: u64,
        /// The peer.
        peer: SocketAddr,
    },
    /// No complete pair arrived in time.
    #[error(
        "no complete stream pair within {waited_ms} ms ({half_open} half-open sessions, \
         {dropped} connections dropped)"
    )]
    Timeout {
        /// How long we waited.
        waited_ms: u64,
        /// Sessions with only one stream so far.
        half_open: usize,
        /// Connections dropped while waiting (see [`PairListener::dropped`]).
        dropped: u64,
    },
}

impl TcpError {
    /// The session layer's error, when the handshake failed in it (a reject, for one).
    pub fn session_error(&self) -> Option<&SessionError> {
        match self {
            Self::Session { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The secure layer's error, when the Noise handshake or a handshake record failed.
    pub fn secure_error(&self) -> Option<&SecureError> {
        match self {
            Self::Secure { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Socket settings applied to both connections.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// SO_SNDBUF, if set.
    pub send_buffer_bytes: Option<usize>,
    /// SO_RCVBUF, if set (set before connect/listen so window scaling can use it).
    pub recv_buffer_bytes: Option<usize>,
    /// How long a peer may leave sent data (or keepalive probes) unacknowledged before the
    /// connection fails with a timeout: TCP_USER_TIMEOUT, with keepalive probes so an idle
    /// connection is checked too (see [`KeepaliveSettings`]). `None` keeps the kernel's
    /// defaults (minutes of retransmissions, no keepalive).
    pub liveness: Option<Duration>,
    /// Bound on each connect.
    pub connect_timeout: Duration,
    /// Time a connection has to deliver its whole handshake frame (the listener: a peer's
    /// Hello, counted from the accept; the connector: the HelloAck after our Hello). Each
    /// accepted connection has its own deadline, so a silent one never delays another.
    pub handshake_timeout: Duration,
    /// Sessions with one stream open that the listener keeps at most; a Hello that would open
    /// one more is refused as busy.
    pub max_half_open_sessions: usize,
    /// Connections the listener reads Hellos from at once; one more drops the oldest.
    pub max_handshakes: usize,
    /// Mutual authentication (a Noise handshake on every connection before its Hello),
    /// session binding, and encryption; `None` runs the handshake in the clear and binds
    /// nothing (the command line never does: it needs a key).
    pub security: Option<SecureConfig>,
}

/// The default of [`TcpOptions::liveness`] and of the CLI's `--liveness-ms`.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(2);
/// The default of [`TcpOptions::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for TcpOptions {
    fn default() -> TcpOptions {
        TcpOptions {
            send_buffer_bytes: None,
            recv_buffer_bytes: None,
            liveness: Some(DEFAULT_LIVENESS),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_half_open_sessions: 16,
            max_handshakes: 64,
            security: None,
        }
    }
}

/// The two connected streams of one migration session.
#[derive(Debug)]
pub struct StreamPair {
    /// The bulk stream.
    pub bulk: TcpStream,
    /// The urgent stream.
    pub urgent: TcpStream,
    /// What the handshake agreed on (the engines are built from it).
    pub session: SessionParams,
    /// The session's ticket when its streams are bound (authenticated connections); a
    /// source resumes with it.
    pub ticket: Option<SessionTicket>,
    /// How frames travel on each stream after the handshake; the ring takes it once.
    pub framing: PairFraming,
}

impl StreamPair {
    /// A pair whose frames travel in the clear and whose streams are not bound.
    pub fn new(bulk: TcpStream, urgent: TcpStream, session: SessionParams) -> StreamPair {
        StreamPair { bulk, urgent, session, ticket: None, framing: PairFraming::clear() }
    }

    /// True when frames after the handshake are encrypted on both streams.
    pub fn encrypted(&self) -> bool {
        self.framing.encrypted()
    }

    /// The two connections and how frames travel on each (bulk first); `None` for the
    /// framing when it was taken already.
    pub fn into_parts(self) -> (TcpStream, TcpStream, Option<[Framing; 2]>) {
        let framing = self.framing.take();
        (self.bulk, self.urgent, framing)
    }

    /// The stream of the given kind.
    pub fn stream(&self, kind: StreamKind) -> &TcpStream {
        match kind {
            StreamKind::Bulk => &self.bulk,
            StreamKind::Urgent => &self.urgent,
        }
    }

    /// The session both streams belong to.
    pub fn session_id(&self) -> u64 {
        self.session.session_id
    }
}

fn sockopt<T>(option: &'static str, r: io::Result<T>) -> Result<T, TcpError> {
    r.map_err(|source| TcpError::SockOpt { option, source })
}

/// Buffer sizes (before connect / listen).
fn apply_buffers(sock: &Socket, options: &TcpOptions) -> Result<(), TcpError> {
    if let Some(n) = options.send_buffer_bytes {
        sockopt("SO_SNDBUF", sock.set_send_buffer_size(n))?;
    }
    if let Some(n) = options.recv_buffer_bytes {
        sockopt("SO_RCVBUF", sock.set_recv_buffer_size(n))?;
    }
    Ok(())
}

/// Per-connection options (after connect / accept).
fn apply_connected(stream: &TcpStream, options: &TcpOptions) -> Result<(), TcpError> {
    // Fault requests are tiny and latency-bound: never let Nagle hold them back.
    sockopt("TCP_NODELAY", stream.set_nodelay(true))?;
    if let Some(liveness) = options.liveness {
        set_liveness(stream, liveness)?;
    }
    Ok(())
}

/// IP type of service of the urgent stream: "low delay" (RFC 1349), which Linux also maps to
/// the interactive priority band, so a priority qdisc on a shared link (`pfifo_fast` under `tbf` in `bench-env/netns`)
/// sends fault traffic ahead of queued bulk packets.
const URGENT_TOS: u32 = 0x10;
/// `TC_PRIO_INTERACTIVE`: band 0 of the default `prio` priomap.
const URGENT_SO_PRIORITY: u32 = 6;

/// Unsent bytes the bulk stream may keep in its socket buffer. Autotuning would let several
/// MB sit there; every byte of it is data the destination must take in before a switch-over
/// can start (the source drains the stream first), and time a stale page lives. Two of the
/// ring's 64 KiB send buffers plus this much unsent data keep a 1 Gbit/s link busy well past
/// its round trip.
const BULK_NOTSENT_LOWAT_BYTES: u32 = 512 << 10;

/// Marks the urgent stream's packets for priority queueing on the path; bounds the unsent
/// data of the bulk stream.
fn apply_kind(stream: &TcpStream, kind: StreamKind, addr: SocketAddr) -> Result<(), TcpError> {
    let sock = SockRef::from(stream);
    if kind == StreamKind::Bulk {
        return sockopt("TCP_NOTSENT_LOWAT", sock.set_tcp_notsent_lowat(BULK_NOTSENT_LOWAT_BYTES));
    }
    match addr {
        SocketAddr::V4(_) => sockopt("IP_TOS", sock.set_tos_v4(URGENT_TOS))?,
        SocketAddr::V6(_) => sockopt("IPV6_TCLASS", sock.set_tclass_v6(URGENT_TOS))?,
    }
    // After IP_TOS, which resets the priority from the TOS; set it explicitly anyway.
    sockopt("SO_PRIORITY", sock.set_priority(URGENT_SO_PRIORITY))
}

/// Connects both streams to `addr` and opens the session `offer` describes, with default
/// options and no authentication.
pub fn connect(addr: SocketAddr, offer: Offer) -> Result<StreamPair, TcpError> {
    connect_with(addr, Initiator::new(offer), &TcpOptions::default())
}

/// Connects both streams (bulk first), running `initiator`'s handshake on each.
pub fn connect_with(
    addr: SocketAddr,
    mut initiator: Initiator,
    options: &TcpOptions,
) -> Result<StreamPair, TcpError> {
    if options.security.is_some() {
        initiator = initiator.bound();
    }
    let (bulk, bulk_framing) = connect_one(addr, &mut initiator, StreamKind::Bulk, options)?;
    let (urgent, urgent_framing) = connect_one(addr, &mut initiator, StreamKind::Urgent, options)?;
    let session = initiator
        .params()
        .ok_or(TcpError::Session { peer: addr, error: SessionError::Incomplete { open: 1 } })?;
    let framing = PairFraming::new([bulk_framing, urgent_framing]);
    Ok(StreamPair { bulk, urgent, session, ticket: initiator.ticket(), framing })
}

/// Dials `addr` again and again, opening or resuming the session `offer` names, until a pair
/// opens or `timeout` has passed (then the last attempt's error). The destination may still be
/// noticing that the old connection died, be unreachable for a while (a partition), or have
/// dropped a Hello that loss held up past its handshake time (and so refuse the other stream's
/// as an unknown session, or be busy). A refusal no retry can change (version, layout, mode,
/// authentication) is returned at once.
pub fn redial(
    addr: SocketAddr,
    offer: &Offer,
    options: &TcpOptions,
    timeout: Duration,
) -> Result<StreamPair, TcpError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match connect_with(addr, Initiator::new(offer.clone()), options) {
            Ok(pair) => return Ok(pair),
            Err(error) if std::time::Instant::now() >= deadline => return Err(error),
            Err(error) if is_final(&error) => return Err(error),
            Err(error) => {
                tracing::info!(%error, "redial failed; trying again");
                std::thread::sleep(REDIAL_PAUSE);
            }
        }
    }
}

/// Waits until the peer closed `stream` (reading and dropping anything it still sends), or
/// `limit` passed: the side that finishes first lingers, so its close never resets a
/// connection the other side is still reading a last frame from.
pub fn wait_for_peer_close(stream: &TcpStream, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    let mut sink = [0u8; 4096];
    let mut bulk = stream;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || bulk.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match std::io::Read::read(&mut bulk, &mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// True for a refusal that dialling again cannot change.
fn is_final(error: &TcpError) -> bool {
    use crate::wire::RejectReason::{BadAuth, LayoutMismatch, Mode, Version};
    if error.secure_error().is_some() {
        return true;
    }
    let reason = error.session_error().and_then(SessionError::reject_reason);
    matches!(reason, Some(BadAuth | Version | LayoutMismatch | Mode))
}

/// Pause between two redials.
const REDIAL_PAUSE: Duration = Duration::from_millis(100);

fn connect_one(
    addr: SocketAddr,
    initiator: &mut Initiator,
    kind: StreamKind,
    options: &TcpOptions,
) -> Result<(TcpStream, Framing), TcpError> {
    let connect_err = |source| TcpError::Connect { addr, kind, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(connect_err)?;
    apply_buffers(&sock, options)?;
    sock.connect_timeout(&addr.into(), options.connect_timeout).map_err(connect_err)?;
    let stream: TcpStream = sock.into();
    apply_connected(&stream, options)?;
    apply_kind(&stream, kind, addr)?;
    let session_err = |error| TcpError::Session { peer: addr, error };
    let secure_err = |error| TcpError::Secure { peer: addr, error };
    let timeout = options.handshake_timeout;
    set_handshake_timeouts(&stream, addr, Some(timeout))?;
    let mut cipher = match &options.security {
        Some(cfg) => Some(noise_connect(&stream, addr, cfg, kind, timeout)?),
        None => None,
    };
    let mut hello = initiator.hello(kind).map_err(session_err)?;
    if let Some(cipher) = cipher.as_mut() {
        hello = cipher.seal_one(&hello).map_err(secure_err)?;
    }
    (&stream)
        .write_all(&hello)
        .map_err(|source| handshake::classify(addr, "was sent our Hello", timeout, 0, source))?;
    const DOING: &str = "was waited on for its HelloAck";
    let ack = match cipher.as_mut() {
        Some(cipher) => {
            let record = read_record(&stream, addr, DOING, timeout)?;
            cipher.open_one(&record).map_err(secure_err)?
        }
        None => read_handshake_frame(&stream, addr, DOING, timeout)?,
    };
    initiator.on_bytes(kind, &ack).map_err(session_err)?;
    set_handshake_timeouts(&stream, addr, None)?;
    let encrypt = options.security.as_ref().is_some_and(|cfg| cfg.encrypt);
    Ok((stream, Framing::after_handshake(cipher, encrypt)))
}

/// The initiator's Noise handshake on a fresh connection: the opening out, the answer in.
fn noise_connect(
    stream: &TcpStream,
    addr: SocketAddr,
    cfg: &SecureConfig,
    kind: StreamKind,
    timeout: Duration,
) -> Result<RecordCipher, TcpError> {
    let secure_err = |error| TcpError::Secure { peer: addr, error };
    let (state, opening) = secure::open_handshake(cfg, kind).map_err(secure_err)?;
    (&*stream).write_all(&opening).map_err(|source| {
        handshake::classify(addr, "was sent our Noise opening", timeout, 0, source)
    })?;
    const DOING: &str = "was waited on for its Noise answer";
    let mut answer = read_exact_bytes(stream, addr, DOING, timeout, secure::ANSWER_STATUS_BYTES)?;
    let rest = read_exact_bytes(stream, addr, DOING, timeout, secure::answer_len(answer[0]))?;
    answer.extend_from_slice(&rest);
    state.on_answer(&answer).map_err(secure_err)
}

fn io_err(peer: SocketAddr, doing: &'static str) -> impl Fn(io::Error) -> TcpError {
    move |source| TcpError::HandshakeIo { peer, doing, source }
}

/// Bounds (or, with `None`, unbounds) the handshake's reads and writes on `stream`.
fn set_handshake_timeouts(
    stream: &TcpStream,
    peer: SocketAddr,
    timeout: Option<Duration>,
) -> Result<(), TcpError> {
    let err = io_err(peer, "was set up for the handshake");
    stream.set_nonblocking(false).map_err(&err)?;
    stream.set_read_timeout(timeout).map_err(&err)?;
    stream.set_write_timeout(timeout).map_err(&err)
}
