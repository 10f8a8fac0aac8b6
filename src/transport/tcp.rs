//! Two TCP connections per migration (bulk and urgent), opened by the session handshake.
//!
//! The connector opens both connections (bulk first) and runs the session layer's
//! [`Initiator`] on each: it sends the Hello and waits, with a timeout, for the HelloAck. The
//! listener accepts connections in any order, reads each one's Hello (with a timeout), pairs
//! the two halves of a session by the session id the Hello carries, and answers each with the
//! HelloAck of that session's [`Acceptor`]: an accept, or a reject that names the reason before
//! the connection closes. What leaves is a [`StreamPair`] of plain blocking
//! `std::net::TcpStream`s with the [`SessionParams`] both sides agreed on: the engines may
//! drive them with blocking I/O (tests) or hand their fds to the io_uring driver. No byte past
//! the handshake is read, so nothing is left buffered on the side. Works on any address,
//! including one inside a network namespace the caller already entered.

use super::StreamKind;
use crate::session::{
    handshake_frame_len, refuse, Acceptor, AcceptorConfig, Answer, Authenticator, Initiator,
    NoAuth, Offer, SessionError, SessionParams,
};
use crate::wire::{decode_frame, FrameBody, Limits, RejectReason, HEADER_LEN};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors of the TCP transport; each names the address, stream or peer concerned.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// Creating, binding or listening on the listening socket failed.
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
    /// Sending or receiving a handshake frame failed (closed early, or timed out).
    #[error("the handshake with {peer} failed while it {doing}: {source}")]
    HandshakeIo {
        /// The peer.
        peer: SocketAddr,
        /// "sent its Hello", "waited for the HelloAck", ...
        doing: &'static str,
        /// The OS error.
        source: io::Error,
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
    #[error("no complete stream pair within {waited_ms} ms ({half_open} half-open sessions)")]
    Timeout {
        /// How long we waited.
        waited_ms: u64,
        /// Sessions with only one stream so far.
        half_open: usize,
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
}

/// Socket settings applied to both connections.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// SO_SNDBUF, if set.
    pub send_buffer_bytes: Option<usize>,
    /// SO_RCVBUF, if set (set before connect/listen so window scaling can use it).
    pub recv_buffer_bytes: Option<usize>,
    /// TCP keepalive idle time and probe interval, if set.
    pub keepalive: Option<Duration>,
    /// Bound on each connect.
    pub connect_timeout: Duration,
    /// Bound on each handshake frame read or written (a peer's Hello after accept; the
    /// HelloAck after our Hello).
    pub handshake_timeout: Duration,
    /// Sessions with one stream open that the listener keeps at most; a Hello that would open
    /// one more is refused as busy.
    pub max_half_open_sessions: usize,
}

impl Default for TcpOptions {
    fn default() -> TcpOptions {
        TcpOptions {
            send_buffer_bytes: None,
            recv_buffer_bytes: None,
            keepalive: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            max_half_open_sessions: 16,
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
}

impl StreamPair {
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
    if let Some(idle) = options.keepalive {
        let ka = TcpKeepalive::new().with_time(idle).with_interval(idle);
        sockopt("SO_KEEPALIVE", SockRef::from(stream).set_tcp_keepalive(&ka))?;
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
    let bulk = connect_one(addr, &mut initiator, StreamKind::Bulk, options)?;
    let urgent = connect_one(addr, &mut initiator, StreamKind::Urgent, options)?;
    let session = initiator
        .params()
        .ok_or(TcpError::Session { peer: addr, error: SessionError::Incomplete { open: 1 } })?;
    Ok(StreamPair { bulk, urgent, session })
}

fn connect_one(
    addr: SocketAddr,
    initiator: &mut Initiator,
    kind: StreamKind,
    options: &TcpOptions,
) -> Result<TcpStream, TcpError> {
    let connect_err = |source| TcpError::Connect { addr, kind, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(connect_err)?;
    apply_buffers(&sock, options)?;
    sock.connect_timeout(&addr.into(), options.connect_timeout).map_err(connect_err)?;
    let stream: TcpStream = sock.into();
    apply_connected(&stream, options)?;
    apply_kind(&stream, kind, addr)?;
    let session_err = |error| TcpError::Session { peer: addr, error };
    let hello = initiator.hello(kind).map_err(session_err)?;
    set_handshake_timeouts(&stream, addr, Some(options.handshake_timeout))?;
    (&stream).write_all(&hello).map_err(io_err(addr, "was sent our Hello"))?;
    let ack = read_handshake_frame(&stream, addr, "was waited on for its HelloAck")?;
    initiator.on_bytes(kind, &ack).map_err(session_err)?;
    set_handshake_timeouts(&stream, addr, None)?;
    Ok(stream)
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

/// Reads exactly one handshake frame (not a byte more) from `stream`.
fn read_handshake_frame(
    stream: &TcpStream,
    peer: SocketAddr,
    doing: &'static str,
) -> Result<Vec<u8>, TcpError> {
    let mut header = [0u8; HEADER_LEN];
    (&*stream).read_exact(&mut header).map_err(io_err(peer, doing))?;
    let total = handshake_frame_len(&header, &Limits::default())
        .map_err(|error| TcpError::Session { peer, error })?;
    let mut frame = vec![0u8; total];
    frame[..HEADER_LEN].copy_from_slice(&header);
    (&*stream).read_exact(&mut frame[HEADER_LEN..]).map_err(io_err(peer, doing))?;
    Ok(frame)
}

/// Binds a [`PairListener`] on `addr` with default options, for a VM laid out as `accept`
/// says.
pub fn listen(addr: SocketAddr, accept: AcceptorConfig) -> Result<PairListener, TcpError> {
    PairListener::bind(addr, TcpOptions::default(), accept)
}

/// A session with at least one stream open: its acceptor and the streams so far.
#[derive(Debug)]
struct Half {
    acceptor: Acceptor,
    bulk: Option<TcpStream>,
    urgent: Option<TcpStream>,
}

impl Half {
    fn slot(&mut self, kind: StreamKind) -> &mut Option<TcpStream> {
        match kind {
            StreamKind::Bulk => &mut self.bulk,
            StreamKind::Urgent => &mut self.urgent,
        }
    }
}

/// Accepts connections, runs the acceptor's handshake on each, and pairs them by session id.
#[derive(Debug)]
pub struct PairListener {
    listener: TcpListener,
    options: TcpOptions,
    accept: AcceptorConfig,
    auth: Arc<dyn Authenticator>,
    pending: HashMap<u64, Half>,
}

impl PairListener {
    /// Binds and listens on `addr` (port 0 picks a free port); Hellos are checked against
    /// `accept`.
    pub fn bind(
        addr: SocketAddr,
        options: TcpOptions,
        accept: AcceptorConfig,
    ) -> Result<PairListener, TcpError> {
        let err = |source| TcpError::Listen { addr, source };
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        sock.set_reuse_address(true).map_err(err)?;
        // Accepted sockets inherit the buffer sizes of the listener.
        apply_buffers(&sock, &options)?;
        sock.bind(&addr.into()).map_err(err)?;
        sock.listen(16).map_err(err)?;
        Ok(PairListener {
            listener: sock.into(),
            options,
            accept,
            auth: Arc::new(NoAuth),
            pending: HashMap::new(),
        })
    }

    /// Checks the Hellos' tokens with `auth` (the default sends and accepts none).
    pub fn with_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    fn acceptor(&self) -> Acceptor {
        Acceptor::new(self.accept.clone()).with_authenticator(self.auth.clone())
    }

    /// The bound address (with the real port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for any session to complete its pair.
    pub fn accept_pair(&mut self, timeout: Duration) -> Result<StreamPair, TcpError> {
        self.accept_until(None, timeout)
    }

    /// Waits for the pair of `session_id`; a connection of another session is an error.
    pub fn accept_session(
        &mut self,
        session_id: u64,
        timeout: Duration,
    ) -> Result<StreamPair, TcpError> {
        self.accept_until(Some(session_id), timeout)
    }

    fn accept_until(
        &mut self,
        expected: Option<u64>,
        timeout: Duration,
    ) -> Result<StreamPair, TcpError> {
        let started = Instant::now();
        loop {
            if let Some(pair) = self.take_complete(expected) {
                return Ok(pair);
            }
            let remaining = timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() || !wait_readable(&self.listener, remaining)? {
                return Err(TcpError::Timeout {
                    waited_ms: started.elapsed().as_millis() as u64,
                    half_open: self.pending.len(),
                });
            }
            let (stream, peer) =
                self.listener.accept().map_err(|source| TcpError::Accept { source })?;
            self.on_connection(stream, peer, expected)?;
        }
    }

    /// Reads a new connection's Hello, answers it, and files the stream under its session.
    fn on_connection(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        expected: Option<u64>,
    ) -> Result<(), TcpError> {
        set_handshake_timeouts(&stream, peer, Some(self.options.handshake_timeout))?;
        let hello = read_handshake_frame(&stream, peer, "was waited on for its Hello")?;
        let Some((session_id, kind)) = hello_key(&hello) else {
            // Undecodable: a fresh acceptor answers with a reject where it can (another
            // version, another page size) and names the error.
            let answer = self.acceptor().on_hello_bytes(None, &hello);
            return Err(self.reply_refused(&stream, peer, answer));
        };
        if let Some(want) = expected.filter(|w| *w != session_id) {
            let detail = format!("this destination waits for session {want:#x}");
            self.reply(
                &stream,
                peer,
                &refuse(session_id, kind, RejectReason::UnknownSession, detail),
            );
            return Err(TcpError::UnexpectedSession { expected: want, got: session_id, peer });
        }
        if !self.pending.contains_key(&session_id)
            && self.pending.len() >= self.options.max_half_open_sessions
        {
            let detail = format!("{} sessions are half open already", self.pending.len());
            let answer = refuse(session_id, kind, RejectReason::Busy, detail);
            return Err(self.reply_refused(&stream, peer, answer));
        }
        let fresh = self.acceptor();
        let half = self.pending.entry(session_id).or_insert_with(|| Half {
            acceptor: fresh,
            bulk: None,
            urgent: None,
        });
        let duplicate = half.slot(kind).is_some();
        let answer = half.acceptor.on_hello_bytes(None, &hello);
        if half.acceptor.open_streams() == 0 {
            self.pending.remove(&session_id);
        }
        if duplicate {
            self.reply(&stream, peer, &answer);
            return Err(TcpError::DuplicateStream { session_id, kind, peer });
        }
        if answer.outcome.is_err() {
            return Err(self.reply_refused(&stream, peer, answer));
        }
        self.reply(&stream, peer, &answer);
        set_handshake_timeouts(&stream, peer, None)?;
        apply_connected(&stream, &self.options)?;
        apply_kind(&stream, kind, peer)?;
        if let Some(half) = self.pending.get_mut(&session_id) {
            *half.slot(kind) = Some(stream);
        }
        Ok(())
    }

    /// Sends `answer`'s HelloAck; a peer that is gone by now changes nothing here.
    fn reply(&self, stream: &TcpStream, peer: SocketAddr, answer: &Answer) {
        if let Err(e) = (&*stream).write_all(&answer.reply) {
            tracing::debug!(%peer, error = %e, "could not send the HelloAck");
        }
    }

    /// Sends a refusal and turns it into the error the caller returns.
    fn reply_refused(&self, stream: &TcpStream, peer: SocketAddr, answer: Answer) -> TcpError {
        self.reply(stream, peer, &answer);
        let error = answer.outcome.err().unwrap_or(SessionError::Incomplete { open: 0 });
        TcpError::Session { peer, error }
    }

    fn take_complete(&mut self, expected: Option<u64>) -> Option<StreamPair> {
        let session_id = *self.pending.iter().find_map(|(id, half)| {
            let complete = half.bulk.is_some() && half.urgent.is_some();
            (complete && expected.is_none_or(|want| want == *id)).then_some(id)
        })?;
        let half = self.pending.remove(&session_id)?;
        let session = half.acceptor.params().ok()?;
        Some(StreamPair { bulk: half.bulk?, urgent: half.urgent?, session })
    }
}

/// The session id and stream of a Hello that decodes.
fn hello_key(frame: &[u8]) -> Option<(u64, StreamKind)> {
    match decode_frame(frame, &Limits::default()) {
        Ok((frame, _)) => match frame.body {
            FrameBody::Hello(hello) => Some((hello.session_id, hello.stream)),
            _ => None,
        },
        Err(_) => None,
    }
}

/// Waits until the listener has a connection to accept; false on timeout.
fn wait_readable(listener: &TcpListener, timeout: Duration) -> Result<bool, TcpError> {
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let timeout_ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd on a descriptor the listener keeps open during the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        let source = io::Error::last_os_error();
        if source.kind() == io::ErrorKind::Interrupted {
            return Ok(true);
        }
        return Err(TcpError::Accept { source });
    }
    Ok(n > 0)
}
