//! The hosts' part of the control channel ([`crate::control`]): the final status, and the
//! library's connection helpers ([`crate::control::connect`]) with the hosts' errors.

use super::report::{DestReport, Outcome, SourceReport};
use super::MigrationError;
use crate::control::connect::FirstConnectionError;
use crate::control::{Control, MigrationStatus};

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
    if let Some(control) = control {
        match &result {
            Ok(r) if r.outcome == Outcome::Cancelled => {
                control.finish(MigrationStatus::Cancelled, r.cancel_reason.clone())
            }
            Ok(_) => control.finish(MigrationStatus::Completed, None),
            Err(e) => control.finish(MigrationStatus::Failed, Some(e.to_string())),
        }
    }
    result
}

/// Publishes the destination's final status.
pub(super) fn dest_ended(
    control: Option<&Control>,
    result: Result<DestReport, MigrationError>,
) -> Result<DestReport, MigrationError> {
    if let Some(control) = control {
        match &result {
            Ok(r) if r.outcome == Outcome::Cancelled => {
                control.finish(MigrationStatus::Cancelled, r.cancel_reason.clone())
            }
            Ok(_) => control.finish(MigrationStatus::Completed, None),
            Err(e) => control.finish(MigrationStatus::Failed, Some(e.to_string())),
        }
    }
    result
}
