//! How frames travel on a connection after its handshake: in the clear, or sealed in Noise
//! records by the cipher the connection's handshake made.

use crate::secure::RecordCipher;
use std::sync::Mutex;

/// One connection's framing after the handshake.
#[derive(Debug)]
pub enum Framing {
    /// Frames as they are (no Noise, or `--no-encrypt`).
    Clear,
    /// Every byte sealed in Noise records with this cipher.
    Sealed(Box<RecordCipher>),
}

impl Framing {
    /// The framing after a handshake that made `cipher` (if any): sealed when `encrypt`.
    pub fn after_handshake(cipher: Option<RecordCipher>, encrypt: bool) -> Framing {
        match cipher {
            Some(cipher) if encrypt => Framing::Sealed(Box::new(cipher)),
            _ => Framing::Clear,
        }
    }

    /// True when sealed.
    pub fn is_sealed(&self) -> bool {
        matches!(self, Framing::Sealed(_))
    }
}

/// The framing of both streams of a pair (bulk, urgent), taken once by whoever drives them.
/// Held behind a lock because the pair is lent by reference to the driver that takes it; a
/// second take gets nothing, so a cipher is never used twice and never silently dropped for
/// the clear.
#[derive(Debug)]
pub struct PairFraming {
    slot: Mutex<Option<[Framing; 2]>>,
    encrypted: bool,
}

impl PairFraming {
    /// Both streams in the clear.
    pub fn clear() -> PairFraming {
        PairFraming::new([Framing::Clear, Framing::Clear])
    }

    /// The given framings, bulk first.
    pub fn new(framing: [Framing; 2]) -> PairFraming {
        let encrypted = framing.iter().all(Framing::is_sealed);
        PairFraming { slot: Mutex::new(Some(framing)), encrypted }
    }

    /// True when both streams are sealed.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// Takes the framings out; `None` once taken.
    pub fn take(&self) -> Option<[Framing; 2]> {
        match self.slot.lock() {
            Ok(mut slot) => slot.take(),
            // A panic elsewhere while holding the lock: the slot itself is still valid.
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}
