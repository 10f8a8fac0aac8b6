//! Two TCP connections per migration (bulk and urgent), bound together by a session id.
//!
//! The connector opens both connections and writes a 16-byte preamble on each right after
//! connecting; the listener accepts connections in any order, reads each preamble (with a
//! timeout) and pairs the two halves of a session. What leaves is a [`StreamPair`] of plain
//! blocking `std::net::TcpStream`s: the engines may drive them with blocking I/O (tests) or
//! hand their fds to the io_uring driver. Works on any address, including one inside a network
//! namespace the caller already entered.
//!
//! Preamble layout (network byte order):
//! ```text
//! 0..4   magic "HMGS"
//! 4      preamble version (1)
//! 5      stream kind (1 = bulk, 2 = urgent)
//! 6..8   reserved, zero
//! 8..16  session id (u64)
//! ```

use super::StreamKind;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Magic that opens every preamble.
pub const PREAMBLE_MAGIC: [u8; 4] = *b"HMGS";
/// Preamble version this code writes and accepts.
pub const PREAMBLE_VERSION: u8 = 1;
/// Length of the preamble.
pub const PREAMBLE_LEN_BYTES: usize = 16;

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
    /// Writing the preamble failed.
    #[error("writing the {kind:?} preamble to {addr} failed: {source}")]
    WritePreamble {
        /// The peer address.
        addr: SocketAddr,
        /// Which stream.
        kind: StreamKind,
        /// The OS error.
        source: io::Error,
    },
    /// `accept` failed.
    #[error("accept failed: {source}")]
    Accept {
        /// The OS error.
        source: io::Error,
    },
    /// Reading a peer's preamble failed (closed early, or timed out).
    #[error("reading the preamble from {peer} failed: {source}")]
    ReadPreamble {
        /// The peer.
        peer: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The preamble does not start with the magic: not a hybridmig peer.
    #[error("peer {peer} sent a preamble with bad magic {got:02x?}")]
    BadMagic {
        /// The peer.
        peer: SocketAddr,
        /// The first four bytes received.
        got: [u8; 4],
    },
    /// The preamble version is not ours.
    #[error("peer {peer} speaks preamble version {got}, expected {PREAMBLE_VERSION}")]
    BadVersion {
        /// The peer.
        peer: SocketAddr,
        /// The version received.
        got: u8,
    },
    /// The stream-kind byte is unknown.
    #[error("peer {peer} announced unknown stream kind {got}")]
    UnknownKind {
        /// The peer.
        peer: SocketAddr,
        /// The byte received.
        got: u8,
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
    /// Bound on reading a peer's preamble after accept.
    pub preamble_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> TcpOptions {
        TcpOptions {
            send_buffer_bytes: None,
            recv_buffer_bytes: None,
            keepalive: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(5),
            preamble_timeout: Duration::from_secs(5),
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
    /// The session both belong to.
    pub session_id: u64,
}

impl StreamPair {
    /// The stream of the given kind.
    pub fn stream(&self, kind: StreamKind) -> &TcpStream {
        match kind {
            StreamKind::Bulk => &self.bulk,
            StreamKind::Urgent => &self.urgent,
        }
    }
}

/// A decoded connection preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// The session the connection belongs to.
    pub session_id: u64,
    /// Which stream it is.
    pub kind: StreamKind,
}

impl Preamble {
    /// The 16 bytes sent on the wire.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN_BYTES] {
        let mut out = [0u8; PREAMBLE_LEN_BYTES];
        out[..4].copy_from_slice(&PREAMBLE_MAGIC);
        out[4] = PREAMBLE_VERSION;
        out[5] = self.kind.to_wire();
        out[8..].copy_from_slice(&self.session_id.to_be_bytes());
        out
    }

    /// Parses 16 received bytes from `peer`.
    pub fn decode(
        bytes: &[u8; PREAMBLE_LEN_BYTES],
        peer: SocketAddr,
    ) -> Result<Preamble, TcpError> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[..4]);
        if magic != PREAMBLE_MAGIC {
            return Err(TcpError::BadMagic { peer, got: magic });
        }
        if bytes[4] != PREAMBLE_VERSION {
            return Err(TcpError::BadVersion { peer, got: bytes[4] });
        }
        let kind =
            StreamKind::from_wire(bytes[5]).ok_or(TcpError::UnknownKind { peer, got: bytes[5] })?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..]);
        Ok(Preamble { session_id: u64::from_be_bytes(id), kind })
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

/// Connects both streams of `session_id` to `addr` with default options.
pub fn connect(addr: SocketAddr, session_id: u64) -> Result<StreamPair, TcpError> {
    connect_with(addr, session_id, &TcpOptions::default())
}

/// Connects both streams (bulk first) and sends their preambles.
pub fn connect_with(
    addr: SocketAddr,
    session_id: u64,
    options: &TcpOptions,
) -> Result<StreamPair, TcpError> {
    let bulk = connect_one(addr, session_id, StreamKind::Bulk, options)?;
    let urgent = connect_one(addr, session_id, StreamKind::Urgent, options)?;
    Ok(StreamPair { bulk, urgent, session_id })
}

fn connect_one(
    addr: SocketAddr,
    session_id: u64,
    kind: StreamKind,
    options: &TcpOptions,
) -> Result<TcpStream, TcpError> {
    let connect_err = |source| TcpError::Connect { addr, kind, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(connect_err)?;
    apply_buffers(&sock, options)?;
    sock.connect_timeout(&addr.into(), options.connect_timeout).map_err(connect_err)?;
    let mut stream: TcpStream = sock.into();
    apply_connected(&stream, options)?;
    apply_kind(&stream, kind, addr)?;
    let preamble = Preamble { session_id, kind }.encode();
    stream.write_all(&preamble).map_err(|source| TcpError::WritePreamble { addr, kind, source })?;
    Ok(stream)
}

/// Binds a [`PairListener`] on `addr` with default options.
pub fn listen(addr: SocketAddr) -> Result<PairListener, TcpError> {
    PairListener::bind(addr, TcpOptions::default())
}

/// Half of a session that arrived first.
#[derive(Debug, Default)]
struct Half {
    bulk: Option<TcpStream>,
    urgent: Option<TcpStream>,
}

/// Accepts connections and pairs them by session id.
#[derive(Debug)]
pub struct PairListener {
    listener: TcpListener,
    options: TcpOptions,
    pending: HashMap<u64, Half>,
}

impl PairListener {
    /// Binds and listens on `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr, options: TcpOptions) -> Result<PairListener, TcpError> {
        let err = |source| TcpError::Listen { addr, source };
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        sock.set_reuse_address(true).map_err(err)?;
        // Accepted sockets inherit the buffer sizes of the listener.
        apply_buffers(&sock, &options)?;
        sock.bind(&addr.into()).map_err(err)?;
        sock.listen(16).map_err(err)?;
        Ok(PairListener { listener: sock.into(), options, pending: HashMap::new() })
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
            let preamble = self.read_preamble(&stream, peer)?;
            if let Some(want) = expected.filter(|w| *w != preamble.session_id) {
                return Err(TcpError::UnexpectedSession {
                    expected: want,
                    got: preamble.session_id,
                    peer,
                });
            }
            apply_connected(&stream, &self.options)?;
            apply_kind(&stream, preamble.kind, peer)?;
            let half = self.pending.entry(preamble.session_id).or_default();
            let slot = match preamble.kind {
                StreamKind::Bulk => &mut half.bulk,
                StreamKind::Urgent => &mut half.urgent,
            };
            if slot.is_some() {
                return Err(TcpError::DuplicateStream {
                    session_id: preamble.session_id,
                    kind: preamble.kind,
                    peer,
                });
            }
            *slot = Some(stream);
        }
    }

    fn read_preamble(&self, stream: &TcpStream, peer: SocketAddr) -> Result<Preamble, TcpError> {
        let err = |source| TcpError::ReadPreamble { peer, source };
        stream.set_nonblocking(false).map_err(err)?;
        stream.set_read_timeout(Some(self.options.preamble_timeout)).map_err(err)?;
        let mut bytes = [0u8; PREAMBLE_LEN_BYTES];
        (&*stream).read_exact(&mut bytes).map_err(err)?;
        stream.set_read_timeout(None).map_err(err)?;
        Preamble::decode(&bytes, peer)
    }

    fn take_complete(&mut self, expected: Option<u64>) -> Option<StreamPair> {
        let session_id = *self.pending.iter().find_map(|(id, half)| {
            let complete = half.bulk.is_some() && half.urgent.is_some();
            (complete && expected.is_none_or(|want| want == *id)).then_some(id)
        })?;
        let half = self.pending.remove(&session_id)?;
        Some(StreamPair { bulk: half.bulk?, urgent: half.urgent?, session_id })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips_and_rejects_garbage() {
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let p = Preamble { session_id: 0x0123_4567_89ab_cdef, kind: StreamKind::Urgent };
        let bytes = p.encode();
        assert_eq!(Preamble::decode(&bytes, peer).expect("decode"), p);
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(matches!(Preamble::decode(&bad, peer), Err(TcpError::BadMagic { .. })));
        let mut bad = bytes;
        bad[4] = 9;
        assert!(matches!(Preamble::decode(&bad, peer), Err(TcpError::BadVersion { got: 9, .. })));
        let mut bad = bytes;
        bad[5] = 7;
        assert!(matches!(Preamble::decode(&bad, peer), Err(TcpError::UnknownKind { got: 7, .. })));
    }
}
