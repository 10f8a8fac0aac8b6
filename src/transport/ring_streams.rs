//! The bulk and urgent streams of one migration, driven through a [`Ring`].
//!
//! Both engines' drivers use this: it keeps one receive armed per stream and turns received
//! bytes into frames (a [`FrameReader`] per stream), and it owns a small set of send buffers
//! per stream so that several sends are in flight at once without allocating per send.
//! Completions whose tag is not one of its own are handed back to the caller.

use crate::ring::{Buf, Completion, Ring, RingError};
use crate::wire::{Frame, FrameReader, Limits, StreamKind, WireError};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::tcp::StreamPair;

/// Tags at or above this value are the caller's; below it, this module's.
pub const FIRST_CALLER_TAG: u64 = 16;

const TAG_RECV: [u64; 2] = [1, 2];
const TAG_SEND: [u64; 2] = [3, 4];

/// Bytes in one receive buffer.
///
/// Small on purpose. A receive armed on the ring copies its data in task work, which the
/// kernel runs inside whatever system call the loop makes next, such as the destination's
/// look for fault answers between two placed pages: a 512 KiB receive could put that much
/// copying ahead of a fault answer. Post-copy fault p99 with 512 against 128 KiB, side by
/// side: 431 against 359 us on loopback (median of 9 runs each), 591 against 399 over 18
/// runs each in a busier hour, and 639 against 531 us on veth (6 runs each). Total time on
/// loopback, where the destination's CPU is the limit, did not grow. In the busier hour the
/// guest also lost less of its speed (degradation 15% with 128 KiB against 30%), so it
/// reached more missing pages: more faults (676 against 406) and more time blocked on them
/// (97 against 72 ms).
const RECV_BUF_BYTES: usize = 128 * 1024;

/// Errors of the ring-driven streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The ring refused an operation.
    #[error("{stream:?} stream: {source}")]
    Ring {
        /// Which stream.
        stream: StreamKind,
        /// The ring's error.
        source: RingError,
    },
    /// A send or receive failed.
    #[error("{op} on the {stream:?} stream: {source}")]
    Io {
        /// `send` or `recv`.
        op: &'static str,
        /// Which stream.
        stream: StreamKind,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes received do not form valid frames.
    #[error("{stream:?} stream: {source}")]
    Wire {
        /// Which stream.
        stream: StreamKind,
        /// The decoder's error.
        source: WireError,
    },
}

/// What a completion meant for the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// Bytes arrived on the stream: call [`RingStreams::next_frame`] until it gives None.
    Received(StreamKind),
    /// A send finished; `bytes` left this host.
    Sent(StreamKind, u64),
    /// The peer closed the stream.
    Closed(StreamKind),
}

fn index(stream: StreamKind) -> usize {
    stream.index()
}

fn kind(index: usize) -> StreamKind {
    if index == 0 {
        StreamKind::Bulk
    } else {
        StreamKind::Urgent
    }
}

/// The two streams of a migration on one ring.
pub struct RingStreams {
    fds: [RawFd; 2],
    readers: [FrameReader; 2],
    free_send: [Vec<Vec<u8>>; 2],
    in_flight: [usize; 2],
    /// Bytes received per stream.
    pub bytes_received: [u64; 2],
    /// Bytes sent per stream.
    pub bytes_sent: [u64; 2],
    closed: [bool; 2],
}

impl std::fmt::Debug for RingStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingStreams")
            .field("fds", &self.fds)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl RingStreams {
    /// Arms a receive on both streams of `pair` and prepares `send_bufs` send buffers of
    /// `send_buf_bytes` per stream.
    pub fn new(
        ring: &mut Ring,
        pair: &StreamPair,
        send_bufs: usize,
        send_buf_bytes: usize,
        limits: Limits,
    ) -> Result<Self, StreamError> {
        let fds = [pair.bulk.as_raw_fd(), pair.urgent.as_raw_fd()];
        let streams = Self {
            fds,
            readers: [FrameReader::new(limits), FrameReader::new(limits)],
            free_send: [0, 1]
                .map(|_| (0..send_bufs).map(|_| Vec::with_capacity(send_buf_bytes)).collect()),
            in_flight: [0; 2],
            bytes_received: [0; 2],
            bytes_sent: [0; 2],
            closed: [false; 2],
        };
        for i in 0..2 {
            ring.recv(fds[i], Buf::with_capacity(RECV_BUF_BYTES), TAG_RECV[i])
                .map_err(|r| StreamError::Ring { stream: kind(i), source: r.error })?;
        }
        Ok(streams)
    }

    /// A free, empty send buffer for `stream`, if one is not in flight. Frames are encoded
    /// straight into it, and the ring sends it without another copy.
    pub fn take_send_buf(&mut self, stream: StreamKind) -> Option<Vec<u8>> {
        let mut buf = self.free_send[index(stream)].pop()?;
        buf.clear();
        Some(buf)
    }

    /// Gives back a send buffer that was not used.
    pub fn put_back(&mut self, stream: StreamKind, buf: Vec<u8>) {
        self.free_send[index(stream)].push(buf);
    }

    /// Sends all of `frames` on `stream`; the buffer comes back to the free list when the
    /// kernel is done with it.
    pub fn send(
        &mut self,
        ring: &mut Ring,
        stream: StreamKind,
        frames: Vec<u8>,
    ) -> Result<(), StreamError> {
        let i = index(stream);
        ring.send(self.fds[i], Buf::from_vec(frames), TAG_SEND[i])
            .map_err(|r| StreamError::Ring { stream, source: r.error })?;
        self.in_flight[i] += 1;
        Ok(())
    }

    /// Sends in flight on `stream`.
    pub fn in_flight(&self, stream: StreamKind) -> usize {
        self.in_flight[index(stream)]
    }

    /// Asks the kernel to acknowledge `stream`'s received data at once (TCP_QUICKACK, which
    /// lapses by itself, so it is set again after each receive). The urgent stream carries
    /// short bursts after idle spells: a delayed ACK there holds the sender at its restarted
    /// congestion window, and the next fault answer waits behind it.
    pub fn quickack(&self, stream: StreamKind) -> io::Result<()> {
        // SAFETY: the fd is the stream's socket, owned by the StreamPair these streams were
        // built from, which outlives them; the borrow ends with this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fds[index(stream)]) };
        socket2::SockRef::from(&fd).set_tcp_quickack(true)
    }

    /// The ring tag of `stream`'s receives (to pick its completions out of the ring first).
    pub fn recv_tag(&self, stream: StreamKind) -> u64 {
        TAG_RECV[index(stream)]
    }

    /// The ring tag of `stream`'s sends (a finished urgent send frees a buffer for the next
    /// urgent frame, so it is picked out of the ring first too).
    pub fn send_tag(&self, stream: StreamKind) -> u64 {
        TAG_SEND[index(stream)]
    }

    /// True when the peer closed `stream`.
    pub fn is_closed(&self, stream: StreamKind) -> bool {
        self.closed[index(stream)]
    }

    /// Handles a completion if it is one of ours (`Ok(Some)`), or hands it back (`Err`).
    pub fn on_completion(
        &mut self,
        ring: &mut Ring,
        completion: Completion,
    ) -> Result<Result<StreamEvent, Completion>, StreamError> {
        let tag = completion.tag;
        if let Some(i) = TAG_RECV.iter().position(|&t| t == tag) {
            return self.on_recv(ring, i, completion).map(Ok);
        }
        if let Some(i) = TAG_SEND.iter().position(|&t| t == tag) {
            self.in_flight[i] -= 1;
            let stream = kind(i);
            let sent = completion.result.map_err(|source| StreamError::Io {
                op: "send",
                stream,
                source,
            })?;
            self.bytes_sent[i] += sent as u64;
            if let Some(vec) = completion.buf.and_then(Buf::into_vec) {
                self.free_send[i].push(vec);
            }
            return Ok(Ok(StreamEvent::Sent(stream, sent as u64)));
        }
        Ok(Err(completion))
    }

    fn on_recv(
        &mut self,
        ring: &mut Ring,
        i: usize,
        completion: Completion,
    ) -> Result<StreamEvent, StreamError> {
        let stream = kind(i);
        let n = match completion.result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(source) => return Err(StreamError::Io { op: "recv", stream, source }),
        };
        let mut buf = completion.buf.unwrap_or_else(|| Buf::with_capacity(RECV_BUF_BYTES));
        if n == 0 {
            self.closed[i] = true;
            return Ok(StreamEvent::Closed(stream));
        }
        self.bytes_received[i] += n as u64;
        self.readers[i].push_bytes(buf.as_slice());
        buf.clear();
        ring.recv(self.fds[i], buf, TAG_RECV[i])
            .map_err(|r| StreamError::Ring { stream, source: r.error })?;
        Ok(StreamEvent::Received(stream))
    }

    /// The next complete frame received on `stream`, if any.
    pub fn next_frame(&mut self, stream: StreamKind) -> Result<Option<Frame<'_>>, StreamError> {
        self.readers[index(stream)]
            .next_frame()
            .map_err(|source| StreamError::Wire { stream, source })
    }
}
