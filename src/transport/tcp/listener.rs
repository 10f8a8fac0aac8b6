//! The destination's listener: accepts connections, reads each one's Hello without blocking,
//! pairs the streams of a session, and drops every connection that cannot join one.
//!
//! One `poll` watches the listening socket and every connection still in its handshake. Each
//! connection has its own deadline ([`TcpOptions::handshake_timeout`] from its accept), so a
//! peer that connects and says nothing, or half a Hello, is dropped on its own deadline while
//! the real source is accepted and answered meanwhile. Garbage, an early close, a refused
//! Hello, a duplicate stream or another session's connection are dropped the same way: one
//! warning naming the peer and the reason, an entry in [`PairListener::dropped`], and the
//! listener keeps waiting until its accept timeout.

use super::handshake::{Incoming, Step, Unit};
use super::{apply_buffers, apply_connected, apply_kind, set_handshake_timeouts, set_liveness};
use super::{StreamPair, TcpError, TcpOptions};
use crate::secure::{self, RecordCipher};
use crate::session::{
    refuse, Acceptor, AcceptorConfig, Answer, Binding, SessionError, SessionTicket,
};
use crate::transport::framing::{Framing, PairFraming};
use crate::transport::StreamKind;
use crate::wire::{decode_frame, FrameBody, Limits, RejectReason};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Dropped connections [`PairListener::dropped`] remembers (the most recent).
const DROPPED_KEPT: usize = 32;
/// Tickets of sessions handed out that the listener remembers for their resumes.
const TICKETS_KEPT: usize = 16;

/// A connection the listener dropped before it joined a session, and why.
#[derive(Debug)]
pub struct DroppedConnection {
    /// Who connected.
    pub peer: SocketAddr,
    /// Why it was dropped: garbage or a refused Hello ([`TcpError::Session`]), an early close
    /// ([`TcpError::HandshakeClosed`]), silence ([`TcpError::HandshakeTimeout`]), a duplicate
    /// stream, another session, too many handshakes at once.
    pub reason: TcpError,
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
    bulk: Option<(TcpStream, Framing)>,
    urgent: Option<(TcpStream, Framing)>,
}

impl Half {
    fn slot(&mut self, kind: StreamKind) -> &mut Option<(TcpStream, Framing)> {
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
    /// Tickets of the sessions handed out (newest last), so a resume must carry its own.
    tickets: VecDeque<(u64, SessionTicket)>,
    pending: HashMap<u64, Half>,
    /// Sessions whose pair is complete, in the order they completed.
    complete: VecDeque<u64>,
    /// Connections reading their Hello, in the order they were accepted.
    incoming: Vec<Incoming>,
    dropped: VecDeque<DroppedConnection>,
    dropped_total: u64,
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
        sock.listen(128).map_err(err)?;
        // Accepts are driven by poll; a connection gone between poll and accept must not block.
        sock.set_nonblocking(true).map_err(err)?;
        Ok(PairListener {
            listener: sock.into(),
            options,
            accept,
            tickets: VecDeque::new(),
            pending: HashMap::new(),
            complete: VecDeque::new(),
            incoming: Vec::new(),
            dropped: VecDeque::new(),
            dropped_total: 0,
        })
    }

    /// The acceptor for a new half of `session_id`: with authentication on, its streams are
    /// bound by a fresh ticket, or by the session's own when it was handed out before (only
    /// its resume may join it).
    fn acceptor(&self, session_id: Option<u64>) -> Result<Acceptor, TcpError> {
        let acceptor = Acceptor::new(self.accept.clone());
        if self.options.security.is_none() {
            return Ok(acceptor);
        }
        let known = self.tickets.iter().rev().find(|(id, _)| Some(*id) == session_id);
        let binding = match known {
            Some((_, ticket)) => Binding::Resume(*ticket),
            None => Binding::New(SessionTicket::generate().map_err(TcpError::Random)?),
        };
        Ok(acceptor.with_binding(binding))
    }

    /// The first unit a connection sends: the Noise opening, or a plain Hello without
    /// authentication.
    fn first_unit(&self) -> Unit {
        if self.options.security.is_some() {
            Unit::Opening
        } else {
            Unit::Hello
        }
    }

    /// The bound address (with the real port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Takes over the session tickets `old` handed out, so a listener that replaces it (an
    /// operator's new address) still knows each session's resume for what it is.
    pub fn adopt_tickets(&mut self, old: &PairListener) {
        for entry in &old.tickets {
            if !self.tickets.iter().any(|(id, _)| *id == entry.0) {
                if self.tickets.len() >= TICKETS_KEPT {
                    self.tickets.pop_front();
                }
                self.tickets.push_back(*entry);
            }
        }
    }

    /// The most recent connections dropped before joining a session (oldest first), at most
    /// 32.
    pub fn dropped(&self) -> impl Iterator<Item = &DroppedConnection> {
        self.dropped.iter()
    }

    /// Takes the remembered dropped connections out (oldest first); the total stays.
    pub fn take_dropped(&mut self) -> Vec<DroppedConnection> {
        self.dropped.drain(..).collect()
    }

    /// Connections dropped since the listener was bound.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Waits for any session to complete its pair. Connections still in their handshake when
    /// it times out stay, with their own deadlines, for the next call.
    pub fn accept_pair(&mut self, timeout: Duration) -> Result<StreamPair, TcpError> {
        self.accept_until(None, timeout)
    }

    /// Waits for the pair of `session_id`; a connection of another session is refused
    /// (`UnknownSession`) and dropped.
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
        let deadline = started + timeout;
        loop {
            if let Some(pair) = self.take_complete(expected) {
                return Ok(pair);
            }
            let now = Instant::now();
            self.drop_expired(now);
            if now >= deadline {
                return Err(TcpError::Timeout {
                    waited_ms: started.elapsed().as_millis() as u64,
                    half_open: self.pending.len(),
                    dropped: self.dropped_total,
                });
            }
            let wake = self.incoming.iter().map(Incoming::deadline).fold(deadline, Instant::min);
            let ready = self.poll(wake.saturating_duration_since(now))?;
            self.read_ready(&ready.incoming, expected);
            if ready.listener {
                self.accept_ready()?;
            }
        }
    }

    /// Waits until the listener or a connection in its handshake is readable (or closed).
    fn poll(&self, timeout: Duration) -> Result<Ready, TcpError> {
        let mut fds: Vec<libc::pollfd> = std::iter::once(self.listener.as_raw_fd())
            .chain(self.incoming.iter().map(Incoming::fd))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // Round up, so a deadline a fraction of a millisecond away is not polled for 0 ms.
        let timeout_ms = (timeout.as_micros().div_ceil(1000)).clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the whole call, and
        // every descriptor in it belongs to a socket `self` keeps open meanwhile.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let source = io::Error::last_os_error();
            if source.kind() == io::ErrorKind::Interrupted {
                return Ok(Ready::default());
            }
            return Err(TcpError::Accept { source });
        }
        Ok(Ready {
            listener: fds[0].revents != 0,
            incoming: (1..fds.len()).filter(|&i| fds[i].revents != 0).map(|i| i - 1).collect(),
        })
    }

    /// Accepts every connection waiting, each into its handshake.
    fn accept_ready(&mut self) -> Result<(), TcpError> {
        for _ in 0..self.options.max_handshakes.max(1) {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The peer reset the connection before the accept, or a signal came.
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(source) => return Err(TcpError::Accept { source }),
            };
            if self.incoming.len() >= self.options.max_handshakes.max(1) {
                self.drop_oldest_incoming();
            }
            match self.start_handshake(stream, peer) {
                Ok(conn) => self.incoming.push(conn),
                Err(reason) => self.drop_connection(peer, reason),
            }
        }
        Ok(())
    }

    /// Liveness from the accept on (a peer that goes silent mid-handshake is a timeout
    /// either way), then the Hello's own deadline.
    fn start_handshake(&self, stream: TcpStream, peer: SocketAddr) -> Result<Incoming, TcpError> {
        if let Some(liveness) = self.options.liveness {
            set_liveness(&stream, liveness)?;
        }
        let unit = self.first_unit();
        Incoming::new(stream, peer, Instant::now(), self.options.handshake_timeout, unit)
    }

    fn drop_oldest_incoming(&mut self) {
        let oldest = (0..self.incoming.len()).min_by_key(|&i| self.incoming[i].deadline());
        if let Some(i) = oldest {
            let conn = self.incoming.swap_remove(i);
            let limit = self.options.max_handshakes;
            self.drop_connection(
                conn.peer(),
                TcpError::TooManyHandshakes { peer: conn.peer(), limit },
            );
        }
    }

    /// Drops every connection whose handshake deadline passed.
    fn drop_expired(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.incoming.len() {
            if self.incoming[i].deadline() <= now {
                let conn = self.incoming.swap_remove(i);
                self.drop_connection(conn.peer(), conn.timed_out());
            } else {
                i += 1;
            }
        }
    }

    /// Reads what the connections at `ready` (ascending indices) sent, in the order they
    /// were accepted; a whole Hello is answered and leaves the list.
    fn read_ready(&mut self, ready: &[usize], expected: Option<u64>) {
        let mut ready = ready.iter().peekable();
        let conns = std::mem::take(&mut self.incoming);
        let mut kept = Vec::with_capacity(conns.len());
        for (i, mut conn) in conns.into_iter().enumerate() {
            if ready.next_if_eq(&&i).is_none() {
                kept.push(conn);
                continue;
            }
            match conn.read_some() {
                Step::Pending => kept.push(conn),
                Step::Failed(reason) => self.drop_connection(conn.peer(), reason),
                Step::Frame(unit) => {
                    let peer = conn.peer();
                    match self.on_unit(conn, &unit, expected) {
                        Ok(Some(conn)) => kept.push(conn),
                        Ok(None) => {}
                        Err(reason) => self.drop_connection(peer, reason),
                    }
                }
            }
        }
        self.incoming = kept;
    }

    /// Logs and remembers a connection dropped for `reason` (its socket is closed by now or
    /// when the caller lets go of it).
    fn drop_connection(&mut self, peer: SocketAddr, reason: TcpError) {
        tracing::warn!(%peer, %reason, "dropped a connection that cannot join a session; still listening");
        if self.dropped.len() >= DROPPED_KEPT {
            self.dropped.pop_front();
        }
        self.dropped.push_back(DroppedConnection { peer, reason });
        self.dropped_total += 1;
    }

    /// Takes a whole unit a connection sent: a Noise opening is answered and the connection
    /// goes on to its Hello's record (returned, to stay in the list); a Hello (plain or from
    /// its record) is answered and filed. The error says why the connection is dropped.
    fn on_unit(
        &mut self,
        mut conn: Incoming,
        unit: &[u8],
        expected: Option<u64>,
    ) -> Result<Option<Incoming>, TcpError> {
        let peer = conn.peer();
        match conn.unit() {
            Unit::Opening => {
                let cipher = self.answer_opening(&conn, unit)?;
                conn.expect_hello_record(cipher);
                Ok(Some(conn))
            }
            Unit::HelloRecord => {
                let hello = conn.open_hello(unit)?;
                let (stream, cipher) = conn.into_parts();
                let link = Link { stream, peer, cipher };
                self.on_hello(link, &hello, expected).map(|()| None)
            }
            Unit::Hello => {
                let (stream, _) = conn.into_parts();
                let link = Link { stream, peer, cipher: None };
                self.on_hello(link, unit, expected).map(|()| None)
            }
        }
    }

    /// Answers a Noise opening: the cipher of the connection, or why it is dropped (its
    /// refusal sent first, where the peer is one of ours).
    fn answer_opening(&self, conn: &Incoming, opening: &[u8]) -> Result<RecordCipher, TcpError> {
        let peer = conn.peer();
        let cfg = self.options.security.as_ref().ok_or(TcpError::Secure {
            peer,
            error: secure::SecureError::NotAnOpening { got: [0; 4] },
        })?;
        let (cipher, answer, failure) = match secure::respond(cfg, opening) {
            Ok((cipher, _stream, answer)) => (Some(cipher), answer, None),
            Err(refused) => (None, refused.answer, Some(refused.error)),
        };
        // A fresh socket takes a few dozen bytes at once; one that does not is dropped.
        let written = (conn.stream()).write_all(&answer);
        if let Some(error) = failure {
            return Err(TcpError::Secure { peer, error });
        }
        written.map_err(|source| TcpError::HandshakeIo {
            peer,
            doing: "was sent our Noise answer",
            source,
        })?;
        cipher.ok_or(TcpError::Secure { peer, error: secure::SecureError::WrongKey })
    }

    /// Answers a whole Hello and files the stream under its session; the error says why the
    /// connection is dropped instead.
    fn on_hello(
        &mut self,
        mut link: Link,
        hello: &[u8],
        expected: Option<u64>,
    ) -> Result<(), TcpError> {
        let peer = link.peer;
        // Blocking again, with the handshake timeout on the reply's write.
        set_handshake_timeouts(&link.stream, peer, Some(self.options.handshake_timeout))?;
        let Some((session_id, kind)) = hello_key(hello) else {
            // Undecodable: a fresh acceptor answers with a reject where it can (another
            // version, another page size) and names the error.
            let answer = self.acceptor(None)?.on_hello_bytes(None, hello);
            return Err(link.reply_refused(answer));
        };
        if let Some(want) = expected.filter(|w| *w != session_id) {
            let detail = format!("this destination waits for session {want:#x}");
            link.reply(&refuse(session_id, kind, RejectReason::UnknownSession, detail));
            return Err(TcpError::UnexpectedSession { expected: want, got: session_id, peer });
        }
        if !self.pending.contains_key(&session_id)
            && self.pending.len() >= self.options.max_half_open_sessions
        {
            let detail = format!("{} sessions are half open already", self.pending.len());
            let answer = refuse(session_id, kind, RejectReason::Busy, detail);
            return Err(link.reply_refused(answer));
        }
        if !self.pending.contains_key(&session_id) {
            let half =
                Half { acceptor: self.acceptor(Some(session_id))?, bulk: None, urgent: None };
            self.pending.insert(session_id, half);
        }
        let Some(half) = self.pending.get_mut(&session_id) else { return Ok(()) };
        let duplicate = half.slot(kind).is_some();
        // Over Noise the stream the opening named (bound into its handshake) must be the
        // stream the Hello names.
        let arrived_on = link.cipher.as_ref().map(RecordCipher::stream);
        let answer = half.acceptor.on_hello_bytes(arrived_on, hello);
        if half.acceptor.open_streams() == 0 {
            self.pending.remove(&session_id);
        }
        if duplicate {
            link.reply(&answer);
            return Err(TcpError::DuplicateStream { session_id, kind, peer });
        }
        if answer.outcome.is_err() {
            return Err(link.reply_refused(answer));
        }
        link.reply(&answer);
        let Link { stream, cipher, .. } = link;
        set_handshake_timeouts(&stream, peer, None)?;
        apply_connected(&stream, &self.options)?;
        apply_kind(&stream, kind, peer)?;
        let encrypt = self.options.security.as_ref().is_some_and(|cfg| cfg.encrypt);
        if let Some(half) = self.pending.get_mut(&session_id) {
            *half.slot(kind) = Some((stream, Framing::after_handshake(cipher, encrypt)));
            if half.bulk.is_some() && half.urgent.is_some() {
                self.complete.push_back(session_id);
            }
        }
        Ok(())
    }

    /// The first session to complete its pair (of `expected`, if given).
    fn take_complete(&mut self, expected: Option<u64>) -> Option<StreamPair> {
        let at = self.complete.iter().position(|id| expected.is_none_or(|want| want == *id))?;
        let session_id = self.complete.remove(at)?;
        let half = self.pending.remove(&session_id)?;
        let session = half.acceptor.params().ok()?;
        let ticket = half.acceptor.ticket();
        if let Some(ticket) = ticket {
            if self.tickets.len() >= TICKETS_KEPT {
                self.tickets.pop_front();
            }
            self.tickets.push_back((session_id, ticket));
        }
        let ((bulk, bulk_framing), (urgent, urgent_framing)) = (half.bulk?, half.urgent?);
        let framing = PairFraming::new([bulk_framing, urgent_framing]);
        Some(StreamPair { bulk, urgent, session, ticket, framing })
    }
}

/// What a poll found readable: the listener, and which connections in their handshake.
#[derive(Default)]
struct Ready {
    listener: bool,
    incoming: Vec<usize>,
}

/// Accept errors that concern one connection, not the listener.
fn is_transient_accept_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
        || matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM))
}

/// A connection whose Hello is being answered, with the cipher of its Noise handshake.
struct Link {
    stream: TcpStream,
    peer: SocketAddr,
    cipher: Option<RecordCipher>,
}

impl Link {
    /// Sends `answer`'s HelloAck (sealed when the connection has a cipher); a peer that is
    /// gone by now changes nothing here.
    fn reply(&mut self, answer: &Answer) {
        let sealed;
        let bytes = match self.cipher.as_mut() {
            Some(cipher) => match cipher.seal_one(&answer.reply) {
                Ok(bytes) => {
                    sealed = bytes;
                    &sealed
                }
                Err(error) => {
                    tracing::debug!(peer = %self.peer, %error, "could not seal the HelloAck");
                    return;
                }
            },
            None => &answer.reply,
        };
        if let Err(e) = (&self.stream).write_all(bytes) {
            tracing::debug!(peer = %self.peer, error = %e, "could not send the HelloAck");
        }
    }

    /// Sends a refusal and turns it into the reason the connection is dropped.
    fn reply_refused(&mut self, answer: Answer) -> TcpError {
        self.reply(&answer);
        let error = answer.outcome.err().unwrap_or(SessionError::Incomplete { open: 0 });
        TcpError::Session { peer: self.peer, error }
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
