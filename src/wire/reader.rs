//! [`FrameReader`]: turns a byte stream into frames without copying them.
//!
//! A driver (io_uring, plain socket, simulator) asks for [`FrameReader::spare_capacity`],
//! receives into it, reports the count with [`FrameReader::commit`], then calls
//! [`FrameReader::next_frame`] until it returns `Ok(None)`. Frames borrow the receive buffer,
//! so one must be dropped before the next call. Consumed bytes are only moved to the front
//! when the spare room is too small (not per frame).
//!
//! A header is checked (magic, version, type, flags, length against [`Limits`]) as soon as its
//! 16 bytes are in, so a hostile length is rejected before the buffer grows for it. Errors are
//! sticky: a failed frame is not consumed, and the stream cannot resynchronise, so the driver
//! should drop the connection.

use super::frame::decode_payload;
use super::header::{parse_header, HEADER_LEN};
use super::{Frame, Limits, WireError};

/// Receive buffer size a reader starts with: a few default windows.
const INITIAL_CAPACITY_BYTES: usize = 256 * 1024;

/// Streaming frame decoder over a growable receive buffer.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// First unconsumed byte.
    start: usize,
    /// End of received bytes.
    end: usize,
    /// Total size of a frame whose header is in but whose payload is not yet (0 when none).
    pending_total: usize,
    limits: Limits,
}

impl FrameReader {
    /// A reader enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { buf: Vec::new(), start: 0, end: 0, pending_total: 0, limits }
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Bytes the receive buffer currently holds (received or not).
    pub fn capacity_bytes(&self) -> usize {
        self.buf.len()
    }

    fn max_frame_bytes(&self) -> usize {
        HEADER_LEN + self.limits.max_payload_bytes as usize
    }

    /// A slice to receive into, at least `min` bytes long (capped at the largest legal frame),
    /// and large enough for the rest of a frame whose header has arrived.
    pub fn spare_capacity(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let rest_of_pending = self.pending_total.saturating_sub(self.buffered_bytes());
        let want = min.min(self.max_frame_bytes()).max(rest_of_pending).max(1);
        if self.buf.len() - self.end < want {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < want {
                let grown =
                    (self.end + want).max(INITIAL_CAPACITY_BYTES.min(self.max_frame_bytes()));
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were received into the slice from [`Self::spare_capacity`].
    pub fn commit(&mut self, n: usize) -> Result<(), WireError> {
        let spare = self.buf.len() - self.end;
        if n > spare {
            return Err(WireError::CommitOverflow { n, spare });
        }
        self.end += n;
        Ok(())
    }

    /// Convenience for tests and simple drivers: copies `bytes` in (spare + commit).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let spare = self.spare_capacity(rest.len());
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            self.end += n;
            rest = &rest[n..];
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, WireError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = parse_header(avail, &self.limits)?;
        let total = HEADER_LEN + header.payload_len as usize;
        if avail.len() < total {
            self.pending_total = total;
            return Ok(None);
        }
        let frame_start = self.start;
        // Borrow only `buf` so that `start` can move while the frame borrows the buffer.
        let payload = &self.buf[frame_start + HEADER_LEN..frame_start + total];
        let frame = decode_payload(&header, payload, &self.limits)?;
        self.pending_total = 0;
        self.start = frame_start + total;
        Ok(Some(frame))
    }
}
