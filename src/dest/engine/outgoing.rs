//! The destination's outgoing queues and their bounds.
//!
//! Fault requests wait for the urgent stream, everything else (acknowledgements, Pongs, the
//! DoneAck, requests asked again, the recovery report) for the bulk stream. Neither grows
//! with input without a bound:
//! - a fault request exists only for a page a thread waits on, at most [`FAULTS_WAITING_MAX`]
//!   of them (one more fault is [`DestError::QueueFull`]), which also bounds the retry
//!   bookkeeping;
//! - an acknowledgement replaces a queued one of its stream (they are cumulative), a request
//!   asked again is not queued twice, and a Ping or a repeated Done that finds
//!   [`BULK_FRAMES_MAX`] frames queued is [`DestError::QueueFull`].

use super::*;
use crate::dest::DestQueue;

/// Faults waiting for the network at most. Each is a thread blocked on a missing page (a vCPU,
/// or the VMM touching guest memory), so no guest comes near it.
pub const FAULTS_WAITING_MAX: usize = 1024;

/// Frames waiting for the bulk stream at most: every request asked again (one per waiting
/// fault) with room to spare for the few control frames.
pub const BULK_FRAMES_MAX: usize = FAULTS_WAITING_MAX + 64;

impl DestEngine {
    /// Fails when one more fault may not wait for the network.
    pub(super) fn check_fault_room(&self) -> Result<(), DestError> {
        if self.fault_waits.len() >= FAULTS_WAITING_MAX {
            let bound = FAULTS_WAITING_MAX;
            return Err(DestError::QueueFull { queue: DestQueue::FaultsWaiting, bound });
        }
        Ok(())
    }

    /// Fails when the bulk stream's queue is full (input that would add a frame is refused).
    pub(super) fn check_bulk_room(&self) -> Result<(), DestError> {
        if self.bulk_out.len() >= BULK_FRAMES_MAX {
            let bound = BULK_FRAMES_MAX;
            return Err(DestError::QueueFull { queue: DestQueue::BulkFrames, bound });
        }
        Ok(())
    }

    /// Queues a frame for the bulk stream, within its bound.
    pub(super) fn queue_bulk(&mut self, frame: BulkFrame) -> Result<(), DestError> {
        self.check_bulk_room()?;
        self.bulk_out.push_back(frame);
        Ok(())
    }

    /// Queues an acknowledgement of every window received so far on `stream` (on bulk). One
    /// still queued for the stream is brought up to date instead: it says the same and more.
    pub(super) fn queue_ack(&mut self, stream: StreamKind) {
        let seq = self.windows_received[stream.index()];
        let value = stream.index() as u64;
        let queued = self.bulk_out.iter_mut().find_map(|frame| match frame {
            BulkFrame::Control(c) if c.kind == wire::ControlKind::Ack && c.value == value => {
                Some(c)
            }
            _ => None,
        });
        match queued {
            Some(ack) => ack.seq = seq,
            None => {
                let ack = wire::Control { kind: wire::ControlKind::Ack, seq, value };
                self.bulk_out.push_back(BulkFrame::Control(ack));
            }
        }
    }

    /// Queues `request` asked again on bulk; false when one for its page is still queued
    /// or the queue is full (it is asked at the next poll).
    pub(super) fn queue_retry(&mut self, request: wire::FaultRequest) -> bool {
        let same_page = |frame: &BulkFrame| {
            matches!(frame, BulkFrame::FaultRequest(r)
                if r.region == request.region && r.page == request.page)
        };
        if self.check_bulk_room().is_err() || self.bulk_out.iter().any(same_page) {
            return false;
        }
        self.bulk_out.push_back(BulkFrame::FaultRequest(request));
        true
    }
}
