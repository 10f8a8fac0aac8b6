//! Noise transport records: `[length: u16 BE][ciphertext and 16-byte tag]`, at most 65535
//! bytes after the length. Larger messages are split into records on the way out and joined
//! on the way in, so the frames above never see the limit. Each record's nonce is its number
//! on the stream (implicit, kept by both sides), so a record changed, dropped, reordered or
//! replayed fails to decrypt.

use super::SecureError;
use crate::wire::StreamKind;
use snow::TransportState;

/// The most bytes after a record's length field (Noise's message limit).
pub const MAX_RECORD_BYTES: usize = 65535;
/// Bytes of the authentication tag in every record.
const TAG_BYTES: usize = 16;
/// The most plaintext one record carries.
pub const MAX_RECORD_PLAIN_BYTES: usize = MAX_RECORD_BYTES - TAG_BYTES;
/// The plaintext this side puts in one record. Smaller than the limit so that opening one
/// record is a short step: the receiver opens records one at a time as it reads frames, and
/// urgent work waits at most one record's decryption.
pub const SEAL_RECORD_PLAIN_BYTES: usize = 16 << 10;
/// Bytes of a record's length field.
const LEN_BYTES: usize = 2;

/// One direction pair of a connection's Noise transport: seals what this side sends, opens
/// what it receives.
pub struct RecordCipher {
    state: TransportState,
    stream: StreamKind,
    /// Records opened so far: a failure on the first means the handshake was not the peer's.
    opened: u64,
}

impl std::fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCipher")
            .field("stream", &self.stream)
            .field("opened", &self.opened)
            .finish()
    }
}

impl RecordCipher {
    pub(super) fn new(state: TransportState, stream: StreamKind) -> RecordCipher {
        RecordCipher { state, stream, opened: 0 }
    }

    /// The stream this cipher belongs to.
    pub fn stream(&self) -> StreamKind {
        self.stream
    }

    /// The bytes `plain_bytes` of plaintext take on the wire.
    pub fn sealed_len(plain_bytes: usize) -> usize {
        let records = plain_bytes.div_ceil(SEAL_RECORD_PLAIN_BYTES).max(1);
        plain_bytes + records * (LEN_BYTES + TAG_BYTES)
    }

    /// Appends `plain` to `out` as records (one per [`SEAL_RECORD_PLAIN_BYTES`]); `out` grows
    /// only when its capacity is short.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        out.reserve(Self::sealed_len(plain.len()));
        for chunk in plain.chunks(SEAL_RECORD_PLAIN_BYTES) {
            let at = out.len();
            let len = chunk.len() + TAG_BYTES;
            out.resize(at + LEN_BYTES + len, 0);
            // Fits: a chunk and its tag are at most MAX_RECORD_BYTES.
            out[at..at + LEN_BYTES].copy_from_slice(&(len as u16).to_be_bytes());
            self.state.write_message(chunk, &mut out[at + LEN_BYTES..])?;
        }
        Ok(())
    }

    /// Seals one handshake message (Hello, HelloAck), which must fit one record.
    pub fn seal_one(&mut self, message: &[u8]) -> Result<Vec<u8>, SecureError> {
        if message.len() > MAX_RECORD_PLAIN_BYTES {
            let max = MAX_RECORD_PLAIN_BYTES;
            return Err(SecureError::HandshakeTooLong { len: message.len(), max });
        }
        let mut out = Vec::new();
        self.seal(message, &mut out)?;
        Ok(out)
    }

    /// The record length a 2-byte length field announces, checked.
    pub fn record_len(field: [u8; LEN_BYTES]) -> Result<usize, SecureError> {
        let len = usize::from(u16::from_be_bytes(field));
        if len <= TAG_BYTES {
            return Err(SecureError::RecordLength {
                len,
                min: TAG_BYTES + 1,
                max: MAX_RECORD_BYTES,
            });
        }
        Ok(len)
    }

    /// Opens one record's body (after its length field) into `out`; the plaintext's length.
    pub fn open(&mut self, body: &[u8], out: &mut [u8]) -> Result<usize, SecureError> {
        let first = self.opened == 0;
        let n = self.state.read_message(body, out).map_err(|_| {
            if first {
                SecureError::FirstRecordUndecryptable
            } else {
                SecureError::RecordUndecryptable { stream: self.stream }
            }
        })?;
        self.opened += 1;
        Ok(n)
    }

    /// Opens one handshake message: `record` is its whole record, length field included.
    pub fn open_one(&mut self, record: &[u8]) -> Result<Vec<u8>, SecureError> {
        let body = record.get(LEN_BYTES..).unwrap_or(&[]);
        let mut out = vec![0u8; body.len()];
        let n = self.open(body, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

/// Keeps received bytes until they form whole records, and opens them one at a time, so a
/// reader of frames decides when the work of opening is done. Its buffers are allocated once
/// and grow only to the most that was ever buffered at once.
#[derive(Debug)]
pub struct RecordReader {
    /// Received ciphertext; `start` is the first byte not yet opened.
    pending: Vec<u8>,
    start: usize,
    /// Where one record's plaintext is opened.
    plain: Vec<u8>,
}

impl Default for RecordReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordReader {
    /// An empty reader.
    pub fn new() -> RecordReader {
        RecordReader {
            pending: Vec::with_capacity(2 * (LEN_BYTES + MAX_RECORD_BYTES)),
            start: 0,
            plain: vec![0u8; MAX_RECORD_BYTES],
        }
    }

    /// Forgets what is buffered (its connection is gone); the buffers stay.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.start = 0;
    }

    /// Bytes received and not yet opened.
    pub fn buffered(&self) -> usize {
        self.pending.len() - self.start
    }

    /// Keeps `bytes` as they arrived, to be opened by [`RecordReader::open_next`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.pending.len() {
            self.clear();
        } else if self.start > 0 && self.pending.len() + bytes.len() > self.pending.capacity() {
            // Move the partial record to the front rather than grow.
            self.pending.drain(..self.start);
            self.start = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// Opens the next whole record with `cipher` and hands its plaintext to `sink`; false
    /// when no whole record is buffered.
    pub fn open_next(
        &mut self,
        cipher: &mut RecordCipher,
        sink: impl FnOnce(&[u8]),
    ) -> Result<bool, SecureError> {
        let rest = &self.pending[self.start..];
        let Some(len) = whole_record(rest)? else { return Ok(false) };
        let n = cipher.open(&rest[LEN_BYTES..LEN_BYTES + len], &mut self.plain)?;
        self.start += LEN_BYTES + len;
        sink(&self.plain[..n]);
        Ok(true)
    }

    /// Takes `bytes` as they arrived and opens every record they complete, in order.
    pub fn feed(
        &mut self,
        cipher: &mut RecordCipher,
        bytes: &[u8],
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), SecureError> {
        self.push(bytes);
        while self.open_next(cipher, &mut sink)? {}
        Ok(())
    }
}

/// The body length of the whole record at the front of `bytes`, or `None` while it is cut.
fn whole_record(bytes: &[u8]) -> Result<Option<usize>, SecureError> {
    let Some(field) = bytes.get(..LEN_BYTES) else { return Ok(None) };
    let len = RecordCipher::record_len([field[0], field[1]])?;
    Ok((bytes.len() >= LEN_BYTES + len).then_some(len))
}

#[cfg(test)]
mod tests {
    use super::super::{open_handshake, respond, Credential, Psk, SecureConfig};
    use super::*;

    /// A connected pair of ciphers (initiator's, responder's) over `stream`.
    pub(crate) fn cipher_pair(cfg: &SecureConfig) -> (RecordCipher, RecordCipher) {
        let (hs, opening) = open_handshake(cfg, StreamKind::Bulk).expect("open");
        let (responder, _, answer) = respond(cfg, &opening).expect("respond");
        (hs.on_answer(&answer).expect("answer"), responder)
    }

    fn cfg() -> SecureConfig {
        SecureConfig::new(Credential::Psk(Psk::from_bytes([7; 32])))
    }

    #[test]
    fn large_messages_split_into_records_and_join_whatever_the_cuts() {
        let (mut tx, mut rx) = cipher_pair(&cfg());
        let message: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut wire = Vec::new();
        tx.seal(&message, &mut wire).expect("seal");
        assert_eq!(wire.len(), RecordCipher::sealed_len(message.len()));
        tx.seal(b"tail", &mut wire).expect("seal");
        let mut reader = RecordReader::new();
        let mut got = Vec::new();
        // Cut at awkward places: inside length fields, inside bodies, one byte at a time.
        let cuts = [1usize, 1, 7, 65_000, 536, 3, 100_000];
        let mut at = 0;
        for cut in cuts.iter().copied().chain(std::iter::repeat(4096)) {
            if at >= wire.len() {
                break;
            }
            let end = (at + cut).min(wire.len());
            reader.feed(&mut rx, &wire[at..end], |p| got.extend_from_slice(p)).expect("feed");
            at = end;
        }
        assert_eq!(reader.buffered(), 0);
        assert_eq!(&got[..message.len()], &message[..]);
        assert_eq!(&got[message.len()..], b"tail");
    }

    #[test]
    fn a_changed_or_replayed_record_does_not_decrypt() {
        let (mut tx, mut rx) = cipher_pair(&cfg());
        let mut first = Vec::new();
        tx.seal(b"first", &mut first).expect("seal");
        let mut second = Vec::new();
        tx.seal(b"second", &mut second).expect("seal");
        let mut flipped = first.clone();
        flipped[4] ^= 1;
        let mut reader = RecordReader::new();
        let err = reader.feed(&mut rx, &flipped, |_| {}).expect_err("flipped");
        assert!(matches!(err, SecureError::FirstRecordUndecryptable), "{err}");
        let (mut tx, mut rx) = cipher_pair(&cfg());
        let mut first = Vec::new();
        tx.seal(b"first", &mut first).expect("seal");
        let mut reader = RecordReader::new();
        reader.feed(&mut rx, &first, |_| {}).expect("first");
        let err = reader.feed(&mut rx, &first, |_| {}).expect_err("replayed");
        assert!(matches!(err, SecureError::RecordUndecryptable { .. }), "{err}");
        let err = RecordReader::new().feed(&mut rx, &[0, 3, 1, 2, 3], |_| {}).expect_err("short");
        assert!(matches!(err, SecureError::RecordLength { len: 3, .. }), "{err}");
    }
}
