//! Binding both streams (and every resumed stream) to one session.
//!
//! Who the peer is, the transport proves below the session layer (the Noise handshake of
//! `crate::secure`, one per connection). What it does not prove is that two connections from
//! holders of the key belong to the same migration. So, when bound, the acceptor gives the
//! bulk stream of a new session a random [`SessionTicket`] in its HelloAck's `auth_token`
//! (encrypted, inside Noise), and every other stream of that session, the urgent stream and
//! each stream of a resume, must carry it in its Hello's `auth_token`; a stream that does not
//! is refused with `Reject(BadAuth)`. Unbound (the simulator, the plain library transport), the
//! tokens stay empty both ways and a non-empty token is refused.

use subtle::ConstantTimeEq;

/// Bytes of a session ticket.
pub const TICKET_BYTES: usize = 32;

/// A random value the destination gives a session's bulk stream; the session's other streams
/// carry it to show they belong to it. `Debug` never shows it.
#[derive(Clone, Copy)]
pub struct SessionTicket([u8; TICKET_BYTES]);

impl std::fmt::Debug for SessionTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionTicket(..)")
    }
}

impl PartialEq for SessionTicket {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SessionTicket {}

impl SessionTicket {
    /// A fresh ticket from the OS random source.
    pub fn generate() -> Result<SessionTicket, getrandom::Error> {
        let mut bytes = [0u8; TICKET_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(SessionTicket(bytes))
    }

    /// A ticket of the given bytes (tests, the fuzz target).
    pub fn from_bytes(bytes: [u8; TICKET_BYTES]) -> SessionTicket {
        SessionTicket(bytes)
    }

    /// The ticket a token carries, if it is one.
    pub fn from_token(token: &[u8]) -> Option<SessionTicket> {
        token.try_into().ok().map(SessionTicket)
    }

    /// The token form.
    pub fn as_bytes(&self) -> &[u8; TICKET_BYTES] {
        &self.0
    }

    /// True when `token` is this ticket (compared in constant time).
    pub fn matches(&self, token: &[u8]) -> bool {
        token.len() == TICKET_BYTES && bool::from(self.0.ct_eq(token))
    }
}

/// How an acceptor binds the streams of its session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Binding {
    /// Empty tokens both ways; a non-empty token is refused.
    #[default]
    None,
    /// A new session: its bulk stream gets this ticket, every other stream must carry it.
    New(SessionTicket),
    /// A session that ran here before: only resuming streams that carry its ticket join.
    Resume(SessionTicket),
}

/// Why a Hello's token does not bind it to the session (the refusal's detail).
pub(super) fn check_token(
    binding: &Binding,
    stream: crate::wire::StreamKind,
    resume: bool,
    token: &[u8],
) -> Result<Vec<u8>, String> {
    use crate::wire::StreamKind::{Bulk, Urgent};
    let ticket = match binding {
        Binding::None if token.is_empty() => return Ok(Vec::new()),
        Binding::None => {
            return Err(format!(
                "the peer sent a {}-byte token and this side expects none",
                token.len()
            ))
        }
        Binding::New(ticket) | Binding::Resume(ticket) => ticket,
    };
    let opens = matches!(binding, Binding::New(_)) && !resume && stream == Bulk;
    if opens && token.is_empty() {
        return Ok(ticket.as_bytes().to_vec());
    }
    if opens {
        return Err("a new session's bulk Hello carries a token it cannot have".to_string());
    }
    if !ticket.matches(token) {
        return Err(match (binding, resume, stream) {
            (Binding::Resume(_), false, _) => {
                "a new session under the id of one that ran here: only a resume carrying its \
                 ticket joins it"
                    .to_string()
            }
            (_, true, _) => {
                "a resume from another session: its Hello lacks the session's ticket".to_string()
            }
            (_, false, Urgent) => "urgent stream from another session: its Hello lacks the \
                                   ticket this session's bulk stream was given"
                .to_string(),
            (_, false, Bulk) => "bulk stream without the session's ticket".to_string(),
        });
    }
    Ok(if stream == Bulk { ticket.as_bytes().to_vec() } else { Vec::new() })
}
