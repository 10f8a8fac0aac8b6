//! Reading one handshake frame off a connection, not a byte more: blocking with a timeout on
//! the connector (it has one connection to wait on), and in steps on the listener, which
//! polls every connection still in its handshake and must never wait on one of them.

use super::TcpError;
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

/// What one look at an incoming connection found.
#[derive(Debug)]
pub(super) enum Step {
    /// More bytes are needed; the connection stays.
    Pending,
    /// The whole Hello frame (its length checked against the limits, the rest unchecked).
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
    timeout: Duration,
    deadline: Instant,
}

impl Incoming {
    /// Starts the handshake of `stream`, accepted at `now`; it must send its Hello within
    /// `timeout`.
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        now: Instant,
        timeout: Duration,
    ) -> Result<Self, TcpError> {
        stream.set_nonblocking(true).map_err(|source| TcpError::HandshakeIo {
            peer,
            doing: "was accepted",
            source,
        })?;
        Ok(Self {
            stream,
            peer,
            buf: Vec::with_capacity(HEADER_LEN),
            need: HEADER_LEN,
            sized: false,
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

    /// Gives the socket back (to answer the Hello, or to close it).
    pub(super) fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Reads what has arrived, up to the end of the Hello frame and never past it.
    pub(super) fn read_some(&mut self) -> Step {
        loop {
            if self.buf.len() == self.need {
                if self.sized {
                    return Step::Frame(std::mem::take(&mut self.buf));
                }
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&self.buf);
                match handshake_frame_len(&header, &Limits::default()) {
                    Ok(total) => (self.need, self.sized) = (total, true),
                    Err(error) => {
                        return Step::Failed(TcpError::Session { peer: self.peer, error })
                    }
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
