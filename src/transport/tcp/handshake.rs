//! Reading one handshake frame off a connection, not a byte more: blocking with a timeout on
//! the connector (it has one connection to wait on), and in steps on the listener, which
//! polls every connection still in its handshake and must never wait on one of them.

use super::TcpError;
use crate::secure::{opening_len, RecordCipher, OPENING_MAGIC_BYTES};
use crate::session::handshake_frame_len;
use crate::wire::{Limits, HEADER_LEN};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Turns an OS error of a handshake read or write into the error that names it: a timeout
/// (which a socket timeout reports as EAGAIN) and a close get variants of their own.
pub(super) fn classify(
    peer: SocketAddr,
    doing: &'static str,
    timeout: Duration,
    received_bytes: usize,
    source: io::Error,
) -> TcpError {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            let timeout_ms = timeout.as_millis() as u64;
            TcpError::HandshakeTimeout { peer, doing, timeout_ms, received_bytes }
        }
        io::ErrorKind::UnexpectedEof => TcpError::HandshakeClosed { peer, doing, received_bytes },
        _ => TcpError::HandshakeIo { peer, doing, source },
    }
}

/// Reads exactly one handshake frame from a blocking `stream` whose read timeout is
/// `timeout`.
pub(super) fn read_handshake_frame(
    stream: &TcpStream,
    peer: SocketAddr,
    doing: &'static str,
    timeout: Duration,
) -> Result<Vec<u8>, TcpError> {
    let mut frame = vec![0u8; HEADER_LEN];
    read_full(stream, &mut frame, 0).map_err(|(n, e)| classify(peer, doing, timeout, n, e))?;
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&frame);
    let total = handshake_frame_len(&header, &Limits::default())
        .map_err(|error| TcpError::Session { peer, error })?;
    frame.resize(total, 0);
    read_full(stream, &mut frame, HEADER_LEN)
        .map_err(|(n, e)| classify(peer, doing, timeout, n, e))?;
    Ok(frame)
}

/// Reads exactly `n` bytes from a blocking `stream` whose read timeout is `timeout`.
pub(super) fn read_exact_bytes(
    stream: &TcpStream,
    peer: SocketAddr,
    doing: &'static str,
    timeout: Duration,
    n: usize,
) -> Result<Vec<u8>, TcpError> {
    let mut buf = vec![0u8; n];
    read_full(stream, &mut buf, 0).map_err(|(got, e)| classify(peer, doing, timeout, got, e))?;
    Ok(buf)
}

/// Reads exactly one Noise record (its length field included) from a blocking `stream`.
pub(super) fn read_record(
    stream: &TcpStream,
    peer: SocketAddr,
    doing: &'static str,
    timeout: Duration,
) -> Result<Vec<u8>, TcpError> {
    let mut record = read_exact_bytes(stream, peer, doing, timeout, RECORD_LEN_BYTES)?;
    let len = RecordCipher::record_len([record[0], record[1]])
        .map_err(|error| TcpError::Secure { peer, error })?;
    record.resize(RECORD_LEN_BYTES + len, 0);
    read_full(stream, &mut record, RECORD_LEN_BYTES)
        .map_err(|(n, e)| classify(peer, doing, timeout, n, e))?;
    Ok(record)
}

/// Bytes of a record's length field.
const RECORD_LEN_BYTES: usize = 2;

/// Fills `buf[from..]`; on failure, the bytes of `buf` that did arrive and the error (a
/// close is `UnexpectedEof`).
fn read_full(stream: &TcpStream, buf: &mut [u8], from: usize) -> Result<(), (usize, io::Error)> {
    let mut filled = from;
    while filled < buf.len() {
        match (&*stream).read(&mut buf[filled..]) {
            Ok(0) => return Err((filled, io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((filled, e)),
        }
    }
    Ok(())
}

/// What an incoming connection is reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    /// A plain Hello frame (no Noise on this listener).
    Hello,
    /// The Noise opening.
    Opening,
    /// The record that carries the Hello, after the Noise handshake.
    HelloRecord,
}

impl Unit {
    /// Bytes to read before the unit's length is known.
    fn header_len(self) -> usize {
        match self {
            Unit::Hello => HEADER_LEN,
            Unit::Opening => OPENING_MAGIC_BYTES,
            Unit::HelloRecord => RECORD_LEN_BYTES,
        }
    }

    /// The unit's whole length, from its first [`Unit::header_len`] bytes.
    fn total_len(self, head: &[u8], peer: SocketAddr) -> Result<usize, TcpError> {
        match self {
            Unit::Hello => {
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(head);
                handshake_frame_len(&header, &Limits::default())
                    .map_err(|error| TcpError::Session { peer, error })
            }
            Unit::Opening => opening_len([head[0], head[1], head[2], head[3]])
                .map_err(|error| TcpError::Secure { peer, error }),
            Unit::HelloRecord => RecordCipher::record_len([head[0], head[1]])
                .map(|len| RECORD_LEN_BYTES + len)
                .map_err(|error| TcpError::Secure { peer, error }),
        }
    }
}

/// What one look at an incoming connection found.
#[derive(Debug)]
pub(super) enum Step {
    /// More bytes are needed; the connection stays.
    Pending,
    /// The whole unit: a Hello frame (its length checked against the limits, the rest
    /// unchecked), a Noise opening, or the Hello's record.
    Frame(Vec<u8>),
    /// The connection is of no use: why.
    Failed(TcpError),
}

const DOING: &str = "was waited on for its Hello";

/// An accepted connection reading its Hello without blocking, under a deadline of its own.
#[derive(Debug)]
pub(super) struct Incoming {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    /// Length of the frame once its header is read; until then the header's.
    need: usize,
    sized: bool,
    unit: Unit,
    /// The cipher of this connection's Noise handshake, once done.
    cipher: Option<RecordCipher>,
    timeout: Duration,
    deadline: Instant,
}

impl Incoming {
    /// Starts the handshake of `stream`, accepted at `now`, reading `unit` first; it must
    /// finish its handshake (up to its whole Hello) within `timeout`.
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        now: Instant,
        timeout: Duration,
        unit: Unit,
    ) -> Result<Self, TcpError> {
        stream.set_nonblocking(true).map_err(|source| TcpError::HandshakeIo {
            peer,
            doing: "was accepted",
            source,
        })?;
        Ok(Self {
            stream,
            peer,
            buf: Vec::with_capacity(unit.header_len()),
            need: unit.header_len(),
            sized: false,
            unit,
            cipher: None,
            timeout,
            deadline: now + timeout,
        })
    }

    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(super) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The error of a connection whose deadline passed.
    pub(super) fn timed_out(&self) -> TcpError {
        TcpError::HandshakeTimeout {
            peer: self.peer,
            doing: DOING,
            timeout_ms: self.timeout.as_millis() as u64,
            received_bytes: self.buf.len(),
        }
    }

    /// Gives the socket back (to answer the Hello, or to close it), with the cipher of its
    /// Noise handshake, if it had one.
    pub(super) fn into_parts(self) -> (TcpStream, Option<RecordCipher>) {
        (self.stream, self.cipher)
    }

    /// What the connection is reading.
    pub(super) fn unit(&self) -> Unit {
        self.unit
    }

    /// The socket, to answer the opening on.
    pub(super) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The Noise handshake is done: read the Hello's record next, under the same deadline.
    pub(super) fn expect_hello_record(&mut self, cipher: RecordCipher) {
        self.cipher = Some(cipher);
        self.unit = Unit::HelloRecord;
        self.buf.clear();
        self.need = Unit::HelloRecord.header_len();
        self.sized = false;
    }

    /// Opens the Hello's record with the connection's cipher.
    pub(super) fn open_hello(&mut self, record: &[u8]) -> Result<Vec<u8>, TcpError> {
        let peer = self.peer;
        let cipher = self.cipher.as_mut().ok_or(TcpError::Secure {
            peer,
            error: crate::secure::SecureError::FirstRecordUndecryptable,
        })?;
        cipher.open_one(record).map_err(|error| TcpError::Secure { peer, error })
    }

    /// Reads what has arrived, up to the end of the Hello frame and never past it.
    pub(super) fn read_some(&mut self) -> Step {
        loop {
            if self.buf.len() == self.need {
                if self.sized {
                    return Step::Frame(std::mem::take(&mut self.buf));
                }
                match self.unit.total_len(&self.buf, self.peer) {
                    Ok(total) => (self.need, self.sized) = (total, true),
                    Err(error) => return Step::Failed(error),
                }
                continue;
            }
            let filled = self.buf.len();
            self.buf.resize(self.need, 0);
            let read = (&self.stream).read(&mut self.buf[filled..]);
            self.buf.truncate(filled + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    let (peer, received_bytes) = (self.peer, filled);
                    return Step::Failed(TcpError::HandshakeClosed {
                        peer,
                        doing: DOING,
                        received_bytes,
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Step::Failed(classify(self.peer, DOING, self.timeout, filled, e)),
            }
        }
    }
}
