//! The Noise handshake of one connection, sans-IO: the opening the initiator sends, the
//! responder's answer, and the cipher each side keeps for the records that follow.
//!
//! The opening is `"HMNS"`, a format version, the stream kind, the settings (encryption on or
//! off, the cipher) and Noise message `-> psk, e`. The settings and the stream kind are in the
//! clear (the responder needs them to start its side) and are authenticated by the Noise
//! prologue, so a changed byte makes the message fail to decrypt. The answer is one status
//! byte and, when it is `Ok`, Noise message `<- e, ee`: only a holder of the key
//! could write it, which authenticates the responder to the initiator.

use super::key::Credential;
use super::record::RecordCipher;
use super::{CipherSuite, SecureConfig, SecureError};
use crate::wire::{StreamKind, MAGIC};
use snow::{Builder, HandshakeState};

/// Starts every opening.
const OPENING_MAGIC: [u8; 4] = *b"HMNS";
/// The opening's format version.
const FORMAT: u8 = 1;
/// Bytes of a Noise message of this pattern: an ephemeral key and the tag of an empty payload.
const NOISE_MESSAGE_BYTES: usize = 32 + 16;
/// Bytes of the opening's fixed part before the Noise message.
const OPENING_HEADER_BYTES: usize = 8;
/// Bytes of a whole opening.
pub const OPENING_BYTES: usize = OPENING_HEADER_BYTES + NOISE_MESSAGE_BYTES;
/// Bytes of the answer's status, read first: the Noise message follows only when it is OK.
pub const ANSWER_STATUS_BYTES: usize = 1;
/// Bound into every handshake (with the stream and settings), so no other protocol's
/// handshake with the same key can be taken for this one.
const PROLOGUE_LABEL: &[u8] = b"hybridmig migration stream, noise v1";
/// Flag bit: frames are encrypted after the handshake.
const FLAG_ENCRYPT: u8 = 0x01;

/// Bytes of an opening read first: its magic, which tells a plain Hello and garbage at once.
pub const OPENING_MAGIC_BYTES: usize = 4;

/// The whole opening's length, from its first [`OPENING_MAGIC_BYTES`]; a plain Hello (no
/// key) and anything else are refused before the rest is read.
pub fn opening_len(head: [u8; OPENING_MAGIC_BYTES]) -> Result<usize, SecureError> {
    if head == MAGIC.to_be_bytes() {
        return Err(SecureError::PlainHello);
    }
    if head != OPENING_MAGIC {
        return Err(SecureError::NotAnOpening { got: head });
    }
    Ok(OPENING_BYTES)
}

/// The first byte of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    Ok = 0,
    WrongKey = 1,
    EncryptionDiffers = 2,
    SuiteDiffers = 3,
    Malformed = 4,
}

/// The bytes of the answer after its status byte, given the status byte.
pub fn answer_len(status: u8) -> usize {
    if status == Status::Ok as u8 {
        NOISE_MESSAGE_BYTES
    } else {
        0
    }
}

fn prologue(stream: StreamKind, flags: u8) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&[stream.to_wire(), flags]);
    p
}

fn flags_of(cfg: &SecureConfig) -> u8 {
    (cfg.suite.to_wire() << 4) | if cfg.encrypt { FLAG_ENCRYPT } else { 0 }
}

fn builder<'a>(
    suite: CipherSuite,
    credential: &'a Credential,
    prologue: &'a [u8],
) -> Result<Builder<'a>, SecureError> {
    let params = suite.noise_params().parse().map_err(SecureError::Noise)?;
    let Credential::Psk(psk) = credential;
    Ok(Builder::new(params).psk(0, psk.as_bytes())?.prologue(prologue)?)
}

/// The initiator's side after its opening: waits for the answer.
pub struct InitiatorHandshake {
    state: HandshakeState,
    stream: StreamKind,
    encrypt: bool,
    suite: CipherSuite,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorHandshake").field("stream", &self.stream).finish()
    }
}

/// Starts the handshake of `stream`: the opening to send, and the state that takes the answer.
pub fn open_handshake(
    cfg: &SecureConfig,
    stream: StreamKind,
) -> Result<(InitiatorHandshake, Vec<u8>), SecureError> {
    let flags = flags_of(cfg);
    let prologue = prologue(stream, flags);
    let mut state = builder(cfg.suite, &cfg.credential, &prologue)?.build_initiator()?;
    let mut opening = vec![0u8; OPENING_BYTES];
    opening[..4].copy_from_slice(&OPENING_MAGIC);
    opening[4] = FORMAT;
    opening[5] = stream.to_wire();
    opening[6] = flags;
    opening[7] = NOISE_MESSAGE_BYTES as u8;
    let n = state.write_message(&[], &mut opening[OPENING_HEADER_BYTES..])?;
    opening.truncate(OPENING_HEADER_BYTES + n);
    let (encrypt, suite) = (cfg.encrypt, cfg.suite);
    Ok((InitiatorHandshake { state, stream, encrypt, suite }, opening))
}

impl InitiatorHandshake {
    /// Takes the whole answer (status byte and message): the cipher for the records, or the
    /// reason the handshake failed.
    pub fn on_answer(mut self, answer: &[u8]) -> Result<RecordCipher, SecureError> {
        let (&status, message) =
            answer.split_first().ok_or(SecureError::UnknownStatus { got: 0 })?;
        match status {
            s if s == Status::Ok as u8 => {}
            s if s == Status::WrongKey as u8 => return Err(SecureError::RefusedKey),
            s if s == Status::EncryptionDiffers as u8 => {
                return Err(SecureError::EncryptionDiffers { source_encrypts: self.encrypt });
            }
            s if s == Status::SuiteDiffers as u8 => {
                let source_suite = self.suite;
                let dest_suite = CipherSuite::ALL.into_iter().find(|s| *s != source_suite);
                let dest_suite = dest_suite.unwrap_or(source_suite);
                return Err(SecureError::SuiteDiffers { source_suite, dest_suite });
            }
            s if s == Status::Malformed as u8 => return Err(SecureError::OpeningRefused),
            s if s == MAGIC.to_be_bytes()[0] => return Err(SecureError::PlainAnswer),
            got => return Err(SecureError::UnknownStatus { got }),
        }
        let mut payload = [0u8; NOISE_MESSAGE_BYTES];
        self.state
            .read_message(message, &mut payload)
            .map_err(|_| SecureError::AnswerUndecryptable)?;
        Ok(RecordCipher::new(self.state.into_transport_mode()?, self.stream))
    }
}

/// A refused opening: the answer to send back (it names the reason in its status byte) and
/// the error to log.
#[derive(Debug)]
pub struct HandshakeFailure {
    /// The bytes to send before closing (empty when the peer is not one of ours).
    pub answer: Vec<u8>,
    /// Why.
    pub error: SecureError,
}

fn fail(status: Option<Status>, error: SecureError) -> HandshakeFailure {
    HandshakeFailure { answer: status.map(|s| vec![s as u8]).unwrap_or_default(), error }
}

/// Checks a whole opening (of [`OPENING_BYTES`]) against this side's settings and key: the
/// answer to send, the stream the opening names, and the cipher for the records; or the
/// refusal.
pub fn respond(
    cfg: &SecureConfig,
    opening: &[u8],
) -> Result<(RecordCipher, StreamKind, Vec<u8>), HandshakeFailure> {
    let stream = check_opening(cfg, opening)?;
    let prologue = prologue(stream, opening[6]);
    let noise = |e| fail(Some(Status::Malformed), SecureError::Noise(e));
    let mut state = builder(cfg.suite, &cfg.credential, &prologue)
        .and_then(|b| Ok(b.build_responder()?))
        .map_err(|error| fail(Some(Status::Malformed), error))?;
    let mut payload = [0u8; NOISE_MESSAGE_BYTES];
    state
        .read_message(&opening[OPENING_HEADER_BYTES..], &mut payload)
        .map_err(|_| fail(Some(Status::WrongKey), SecureError::WrongKey))?;
    let mut answer = vec![0u8; ANSWER_STATUS_BYTES + NOISE_MESSAGE_BYTES];
    answer[0] = Status::Ok as u8;
    let n = state.write_message(&[], &mut answer[ANSWER_STATUS_BYTES..]).map_err(noise)?;
    answer.truncate(ANSWER_STATUS_BYTES + n);
    let cipher = RecordCipher::new(state.into_transport_mode().map_err(noise)?, stream);
    Ok((cipher, stream, answer))
}

/// The stream an opening names, once its magic, format and settings are this side's.
fn check_opening(cfg: &SecureConfig, opening: &[u8]) -> Result<StreamKind, HandshakeFailure> {
    let mut head = [0u8; 4];
    head.copy_from_slice(opening.get(..4).unwrap_or(&[0; 4]));
    if head == MAGIC.to_be_bytes() {
        return Err(fail(None, SecureError::PlainHello));
    }
    if head != OPENING_MAGIC || opening.len() != OPENING_BYTES {
        return Err(fail(None, SecureError::NotAnOpening { got: head }));
    }
    let malformed = |error| fail(Some(Status::Malformed), error);
    if opening[4] != FORMAT {
        return Err(malformed(SecureError::Format { got: opening[4], expected: FORMAT }));
    }
    let stream = StreamKind::from_wire(opening[5]).ok_or_else(|| {
        malformed(SecureError::InvalidOpening { field: "stream", got: opening[5] })
    })?;
    let flags = opening[6];
    let suite = CipherSuite::from_wire(flags >> 4)
        .ok_or_else(|| malformed(SecureError::InvalidOpening { field: "cipher", got: flags }))?;
    if flags & 0x0E != 0 || usize::from(opening[7]) != NOISE_MESSAGE_BYTES {
        return Err(malformed(SecureError::InvalidOpening { field: "flags", got: flags }));
    }
    let source_encrypts = flags & FLAG_ENCRYPT != 0;
    if source_encrypts != cfg.encrypt {
        let error = SecureError::EncryptionDiffers { source_encrypts };
        return Err(fail(Some(Status::EncryptionDiffers), error));
    }
    if suite != cfg.suite {
        let error = SecureError::SuiteDiffers { source_suite: suite, dest_suite: cfg.suite };
        return Err(fail(Some(Status::SuiteDiffers), error));
    }
    Ok(stream)
}
