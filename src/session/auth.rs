//! Where authentication plugs into the handshake.
//!
//! The initiator asks its [`Authenticator`] for the token its Hello carries; the acceptor
//! checks that token and answers with a token of its own in the HelloAck; the initiator checks
//! the answer. The tokens ride in the Hello's and HelloAck's `auth_token` fields (at most
//! `Limits::max_auth_bytes`). [`NoAuth`] sends empty tokens and accepts only empty tokens, so a
//! peer that expects authentication fails closed against one that has none.

use crate::wire::StreamKind;

/// What a token is bound to: the session and stream of the Hello it rides in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthContext {
    /// The session.
    pub session_id: u64,
    /// The stream.
    pub stream: StreamKind,
}

/// A credential check, one per side. Implementations must not panic on any token.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Token for the initiator's Hello.
    fn hello_token(&self, ctx: &AuthContext) -> Vec<u8>;
    /// The acceptor's check of a Hello's token: its own token for the HelloAck, or why not.
    fn accept(&self, ctx: &AuthContext, token: &[u8]) -> Result<Vec<u8>, String>;
    /// The initiator's check of the HelloAck's token.
    fn confirm(&self, ctx: &AuthContext, token: &[u8]) -> Result<(), String>;
}

/// No authentication: empty tokens both ways; a non-empty token is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoAuth;

fn empty(token: &[u8]) -> Result<(), String> {
    if token.is_empty() {
        Ok(())
    } else {
        Err(format!("the peer sent a {}-byte token and this side expects none", token.len()))
    }
}

impl Authenticator for NoAuth {
    fn hello_token(&self, _ctx: &AuthContext) -> Vec<u8> {
        Vec::new()
    }

    fn accept(&self, _ctx: &AuthContext, token: &[u8]) -> Result<Vec<u8>, String> {
        empty(token).map(|()| Vec::new())
    }

    fn confirm(&self, _ctx: &AuthContext, token: &[u8]) -> Result<(), String> {
        empty(token)
    }
}
