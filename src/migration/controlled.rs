//! The hosts' part of the control channel ([`crate::control`]): the final status, and the
//! library's connection helpers ([`crate::control::connect`]) with the hosts' errors.

use super::report::{DestReport, Outcome, SourceReport};
use super::MigrationError;
use crate::control::connect::FirstConnectionError;
use crate::control::{Control, Ending};

pub(super) use crate::control::connect::{
    cancel_taken, dial_target, first_pair, relisten_on_recover, swap_in,
};

/// The source's first connection (see [`crate::control::connect::first_dial`]).
pub(super) fn first_dial(
    control: Option<&Control>,
    default: std::net::SocketAddr,
    offer: &crate::session::Offer,
    options: &crate::transport::tcp::TcpOptions,
    timeout: std::time::Duration,
) -> Result<crate::transport::tcp::StreamPair, MigrationError> {
    crate::control::connect::first_dial(control, default, offer, options, timeout).map_err(|e| {
        match e {
            FirstConnectionError::Cancelled { before } => {
                MigrationError::OperatorCancelled { before }
            }
            FirstConnectionError::Tcp(e) => e.into(),
        }
    })
}

/// Publishes the source's final status.
pub(super) fn source_ended(
    control: Option<&Control>,
    result: Result<SourceReport, MigrationError>,
) -> Result<SourceReport, MigrationError> {
    publish(control, &result, |r| (r.outcome, r.cancel_reason.clone()));
    result
}

/// Publishes the destination's final status.
pub(super) fn dest_ended(
    control: Option<&Control>,
    result: Result<DestReport, MigrationError>,
) -> Result<DestReport, MigrationError> {
    publish(control, &result, |r| (r.outcome, r.cancel_reason.clone()));
    result
}

/// The final status of either host, from its report's outcome and cancel reason.
fn publish<R>(
    control: Option<&Control>,
    result: &Result<R, MigrationError>,
    outcome: impl Fn(&R) -> (Outcome, Option<String>),
) {
    let Some(control) = control else { return };
    control.end(match result.as_ref().map(outcome) {
        Ok((Outcome::Cancelled, reason)) => Ending::Cancelled(reason),
        Ok(_) => Ending::Completed,
        Err(e) => Ending::Failed(e.to_string()),
    });
}
