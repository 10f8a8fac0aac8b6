//! Keys, mutual authentication and encryption of the migration's connections.
//!
//! Every connection (bulk, urgent, and each connection of a recovery) opens with a Noise
//! `NNpsk0` handshake keyed by the migration's pre-shared key ([`key`]), before the session's
//! Hello: both sides prove they hold the key, and fresh ephemeral keys on both sides make a
//! recorded handshake useless later ([`handshake`]). The Hello and HelloAck then travel as
//! Noise transport records, and so does every later frame unless encryption is off
//! ([`record`]). Nothing here touches a socket: the TCP transport moves the bytes.
//!
//! ```text
//!  initiator (source)                                   responder (destination)
//!    |-- opening: "HMNS" v1 stream flags | -> psk, e ---->|  key, stream, settings checked
//!    |<- answer: status | <- e, ee ------------------------|
//!    |== record{Hello} ====================================>|  must decrypt (else: replay or
//!    |<= record{HelloAck} ==================================|  wrong key)
//!    |== records{frames}, or frames in the clear (--no-encrypt) ==|
//! ```

pub mod fuzzing;
pub mod handshake;
pub mod key;
pub mod record;

pub use handshake::{
    answer_len, open_handshake, opening_len, respond, HandshakeFailure, InitiatorHandshake,
    ANSWER_STATUS_BYTES, OPENING_BYTES, OPENING_MAGIC_BYTES,
};
pub use key::{load_key_file, write_key_file, Credential, KeyError, Psk, PSK_BYTES};
pub use record::{
    RecordCipher, RecordReader, MAX_RECORD_BYTES, MAX_RECORD_PLAIN_BYTES, SEAL_RECORD_PLAIN_BYTES,
};

use crate::wire::StreamKind;
use std::sync::Arc;

/// The AEAD cipher of the Noise protocol (the rest is fixed: NNpsk0, 25519, BLAKE2s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CipherSuite {
    /// AES-256-GCM (the default: the faster of the two where the CPU has AES instructions).
    #[default]
    AesGcm,
    /// ChaCha20-Poly1305.
    ChaChaPoly,
}

impl CipherSuite {
    /// Both suites, for benchmarks.
    pub const ALL: [CipherSuite; 2] = [CipherSuite::AesGcm, CipherSuite::ChaChaPoly];

    /// The Noise protocol name of this suite.
    pub fn noise_params(self) -> &'static str {
        match self {
            CipherSuite::AesGcm => "Noise_NNpsk0_25519_AESGCM_BLAKE2s",
            CipherSuite::ChaChaPoly => "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s",
        }
    }

    fn to_wire(self) -> u8 {
        match self {
            CipherSuite::AesGcm => 1,
            CipherSuite::ChaChaPoly => 2,
        }
    }

    fn from_wire(byte: u8) -> Option<CipherSuite> {
        match byte {
            1 => Some(CipherSuite::AesGcm),
            2 => Some(CipherSuite::ChaChaPoly),
            _ => None,
        }
    }
}

/// How a host secures its connections: the credential it proves, whether frames are
/// encrypted after the handshake, and the cipher. Both sides must agree on the last two.
#[derive(Clone, Debug)]
pub struct SecureConfig {
    /// What this side proves it holds.
    pub credential: Arc<Credential>,
    /// Frames encrypted after the handshake (`--no-encrypt` turns this off; the handshake,
    /// Hello and HelloAck are encrypted either way).
    pub encrypt: bool,
    /// The AEAD cipher.
    pub suite: CipherSuite,
}

impl SecureConfig {
    /// Authenticates with `credential` and encrypts every frame with the default cipher.
    pub fn new(credential: Credential) -> SecureConfig {
        SecureConfig {
            credential: Arc::new(credential),
            encrypt: true,
            suite: CipherSuite::default(),
        }
    }

    /// The same, with frames in the clear after the handshake when `encrypt` is false.
    pub fn encrypting(mut self, encrypt: bool) -> SecureConfig {
        self.encrypt = encrypt;
        self
    }
}

/// Errors of the Noise handshake and the records; each names the cause.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    /// The peer sent a plain Hello where the Noise handshake must come first.
    #[error(
        "the peer sent a plain Hello without the Noise handshake: it has no key (start it \
         with --key-file, the same key on both hosts)"
    )]
    PlainHello,
    /// The first bytes are neither a Noise opening nor a Hello.
    #[error("the peer's first bytes are not a hybridmig Noise opening (got {got:02x?})")]
    NotAnOpening {
        /// The first bytes.
        got: [u8; 4],
    },
    /// The opening is of a format version this build does not speak.
    #[error("the peer's Noise opening has format version {got}; this build speaks {expected}")]
    Format {
        /// The version received.
        got: u8,
        /// This build's.
        expected: u8,
    },
    /// A field of the opening has a value no build sends.
    #[error("the peer's Noise opening has an invalid {field} ({got})")]
    InvalidOpening {
        /// The field.
        field: &'static str,
        /// Its value.
        got: u8,
    },
    /// The two sides disagree on encrypting frames after the handshake.
    #[error(
        "the source {} frames and the destination {}: start both with or both without \
         --no-encrypt",
        if *.source_encrypts { "encrypts" } else { "sends clear (--no-encrypt)" },
        if *.source_encrypts { "does not (--no-encrypt)" } else { "encrypts" }
    )]
    EncryptionDiffers {
        /// The source's setting.
        source_encrypts: bool,
    },
    /// The two sides use different ciphers.
    #[error(
        "the peers use different ciphers: source {source_suite:?}, destination {dest_suite:?}"
    )]
    SuiteDiffers {
        /// The source's.
        source_suite: CipherSuite,
        /// The destination's.
        dest_suite: CipherSuite,
    },
    /// The responder could not decrypt the initiator's first handshake message.
    #[error(
        "wrong key: the peer's handshake did not decrypt with this side's key (the two hosts \
         hold different keys)"
    )]
    WrongKey,
    /// The destination refused our handshake: it could not decrypt it with its key.
    #[error("wrong key: the destination could not decrypt our handshake (the hosts hold different keys)")]
    RefusedKey,
    /// The responder's answer did not decrypt: it does not hold our key.
    #[error(
        "wrong key: the destination's answer did not decrypt (it does not hold this side's key)"
    )]
    AnswerUndecryptable,
    /// The first record after the handshake did not decrypt.
    #[error(
        "the first message after the handshake did not decrypt: a replayed handshake or a \
         wrong key"
    )]
    FirstRecordUndecryptable,
    /// A later record did not decrypt: changed on the way, dropped, reordered or replayed.
    #[error(
        "the {stream:?} stream: a record did not decrypt (changed, dropped, reordered or \
         replayed on the way)"
    )]
    RecordUndecryptable {
        /// The stream.
        stream: StreamKind,
    },
    /// A record's length is impossible.
    #[error("a record of {len} bytes: records carry {min}..={max} bytes")]
    RecordLength {
        /// The length field.
        len: usize,
        /// The least (the tag alone).
        min: usize,
        /// The most.
        max: usize,
    },
    /// A handshake message (Hello, HelloAck) does not fit one record.
    #[error("a handshake message of {len} bytes does not fit one record ({max} at most)")]
    HandshakeTooLong {
        /// Its length.
        len: usize,
        /// The most.
        max: usize,
    },
    /// The destination answered with a plain frame: it skips the Noise handshake.
    #[error(
        "the destination answered in the clear, without the Noise handshake: it does not \
         authenticate (no key, or not a hybridmig destination that holds one)"
    )]
    PlainAnswer,
    /// The destination found our opening malformed (a build of another format).
    #[error("the destination refused our Noise opening as malformed (another build's format?)")]
    OpeningRefused,
    /// The answer's status byte is unknown.
    #[error("the destination's answer has an unknown status {got}")]
    UnknownStatus {
        /// The byte.
        got: u8,
    },
    /// The Noise library refused an operation (a bug or a corrupted state, never input).
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
}
