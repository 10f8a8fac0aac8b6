//! The hosts' part of the control channel outside the event loop: a cancel before the first
//! connection, the operator's address for the source's dials and the destination's listener.
//!
//! While a driver runs, its loop answers cancels and publishes; before it (the first dial, the
//! wait for the source) and between recovery attempts, these answer, between slices of the
//! wait. The CLI's hosts and the embedding API ([`crate::facade`]) share them.

use super::Control;
use crate::driver::recovery::RECONNECT_SLICE;
use crate::session::{AcceptorConfig, Offer};
use crate::transport::tcp::{self, PairListener, StreamPair, TcpError, TcpOptions};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why the first connection did not open.
#[derive(Debug, thiserror::Error)]
pub enum FirstConnectionError {
    /// An operator cancelled before it opened.
    #[error("cancelled by the operator before {before}")]
    Cancelled {
        /// What had not happened yet.
        before: &'static str,
    },
    /// Dialling or accepting failed.
    #[error(transparent)]
    Tcp(#[from] TcpError),
}

/// True when an operator's cancel is waiting: it is accepted (nothing was handed over yet).
pub fn cancel_taken(control: Option<&Control>) -> bool {
    control.is_some_and(|c| c.take_cancel_request(|| Ok(())))
}

/// Where the source dials: the address of the last `migrate-recover`, else `default`.
pub fn dial_target(control: Option<&Control>, default: SocketAddr) -> SocketAddr {
    control.and_then(Control::recover_target).unwrap_or(default)
}

/// The source's first connection, dialled for at most `timeout` in slices, each to the
/// current target; a cancel between two slices ends it.
pub fn first_dial(
    control: Option<&Control>,
    default: SocketAddr,
    offer: &Offer,
    options: &TcpOptions,
    timeout: Duration,
) -> Result<StreamPair, FirstConnectionError> {
    let deadline = Instant::now() + timeout;
    loop {
        if cancel_taken(control) {
            return Err(FirstConnectionError::Cancelled { before: "the first connection" });
        }
        let from = Instant::now();
        let slice = deadline.saturating_duration_since(from).min(RECONNECT_SLICE);
        match tcp::redial(dial_target(control, default), offer, options, slice) {
            Ok(pair) => return Ok(pair),
            // Early: a refusal no retry changes (see `tcp::redial`).
            Err(e) if Instant::now() >= deadline || Instant::now() < from + slice => {
                return Err(e.into())
            }
            Err(_) => {}
        }
    }
}

/// A listener bound by `migrate-recover`, waiting to replace the current one.
pub type NextListener = Arc<Mutex<Option<PairListener>>>;

/// A poisoned lock only means a recover hook panicked; the listener in it is still whole.
fn lock(next: &Mutex<Option<PairListener>>) -> MutexGuard<'_, Option<PairListener>> {
    next.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts the listener `migrate-recover` bound in place of `listener` (which closes), if any.
/// Called by the one thread that accepts, between two slices of its wait.
pub fn swap_in(listener: &mut PairListener, next: &Mutex<Option<PairListener>>) {
    if let Some(mut fresh) = lock(next).take() {
        fresh.adopt_tickets(listener);
        *listener = fresh;
    }
}

/// The destination's first pair, waited for at most `timeout` in slices; a cancel between two
/// slices ends it (`Ok(None)`).
pub fn first_pair(
    control: Option<&Control>,
    listener: &mut PairListener,
    next: &Mutex<Option<PairListener>>,
    timeout: Duration,
) -> Result<Option<StreamPair>, TcpError> {
    let started = Instant::now();
    loop {
        if cancel_taken(control) {
            return Ok(None);
        }
        swap_in(listener, next);
        let slice = (started + timeout).saturating_duration_since(Instant::now());
        match listener.accept_pair(slice.min(RECONNECT_SLICE)) {
            Ok(pair) => return Ok(Some(pair)),
            Err(TcpError::Timeout { .. }) if slice > RECONNECT_SLICE => {}
            Err(TcpError::Timeout { half_open, dropped, .. }) => {
                let waited_ms = started.elapsed().as_millis() as u64;
                return Err(TcpError::Timeout { waited_ms, half_open, dropped });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Lets `migrate-recover` move the destination's listener: the new address is bound at once
/// (an address that cannot be bound is the request's error), and the accepting thread puts it
/// in place of the old one, which closes, before its next slice of waiting.
pub fn relisten_on_recover(
    control: Option<&Control>,
    options: &TcpOptions,
    accept: &AcceptorConfig,
) -> NextListener {
    let next = NextListener::default();
    let Some(control) = control else { return next };
    let (slot, options, accept) = (next.clone(), options.clone(), accept.clone());
    control.set_recover_hook(Box::new(move |addr| {
        let fresh = PairListener::bind(addr, options.clone(), accept.clone())?;
        *lock(&slot) = Some(fresh);
        tracing::warn!(
            "destination: listening on {addr} for the source's resume (migrate-recover)"
        );
        Ok(())
    }));
    next
}
