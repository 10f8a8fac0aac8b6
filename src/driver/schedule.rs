//! The order in which a side does its work: urgent first, bulk in buffers, placement in
//! chunks. Sans-IO, so the io_uring wings and the simulator run this same code and differ only
//! in what a buffer, a send and "serve what is urgent now" are ([`Outlet`], [`SourceSide`],
//! [`DestSide`]).
//!
//! The policy, in one place:
//! - the source sends every urgent frame (fault answers) the moment it has a buffer for it;
//! - it fills bulk buffers up to their size, and during the push it serves urgent input between
//!   two bulk frames, so a fault never waits behind the encoding of a buffer;
//! - the buffer that carries the VM state leaves at once, not behind pushed pages;
//! - the destination sends fault requests before acknowledgements;
//! - a buffer of urgent frames or of the destination's frames takes frames until it holds
//!   [`FILL_BYTES`]; the rest wait in the engine's bounded queues for the next buffer;
//! - once its guest runs, it places a large bulk window chunk by chunk and serves urgent input
//!   (faults, fault answers) before the first chunk and between chunks.

use crate::dest::{DestEngine, DestError, DestPhase};
use crate::ports::MigratableVm;
use crate::source::{Phase, SourceEngine, SourceError};
use crate::wire::StreamKind;

/// Bytes after which a buffer of fault answers, or of the destination's frames, takes no more:
/// the drivers' send buffers are this size, so a backlog waits in the engines' bounded queues
/// instead of growing one buffer.
pub const FILL_BYTES: usize = 64 * 1024;

/// A side's send buffers and link, as the scheduling sees them.
pub trait Outlet {
    /// The side's error.
    type Error;
    /// A free, empty send buffer of `stream`, if one is not in flight.
    fn take_buf(&mut self, stream: StreamKind) -> Option<Vec<u8>>;
    /// Returns a buffer [`Outlet::take_buf`] gave that is not sent after all.
    fn put_back(&mut self, stream: StreamKind, buf: Vec<u8>);
    /// Queues a filled buffer on `stream`.
    fn send(&mut self, stream: StreamKind, buf: Vec<u8>) -> Result<(), Self::Error>;
    /// Hands what was queued to the link now, without waiting for the loop's next turn.
    fn push_now(&mut self) -> Result<(), Self::Error>;
    /// Whether `stream`'s buffers are sealed into records as they are sent.
    fn seals(&self, stream: StreamKind) -> bool {
        let _ = stream;
        false
    }
}

/// The source's engine and VM, and its urgent service, beside its outlet.
pub trait SourceSide: Outlet<Error: From<SourceError>> {
    /// The engine and the VM it reads.
    fn parts(&mut self) -> (&mut SourceEngine, &mut dyn MigratableVm);
    /// Handles urgent input that is ready (fault requests); true when there was any.
    fn serve_urgent(&mut self) -> Result<bool, Self::Error>;
}

/// The destination's engine, its placement and its urgent service, beside its outlet.
pub trait DestSide: Outlet<Error: From<DestError>> {
    /// The engine.
    fn engine(&mut self) -> &mut DestEngine;
    /// Places the next chunk of the window being placed (the engine's `place_more` with the
    /// side's VM port), and handles what that completes.
    fn place_chunk(&mut self) -> Result<(), Self::Error>;
    /// Handles urgent input that is ready: vCPU faults and fault answers.
    fn serve_urgent(&mut self) -> Result<(), Self::Error>;
}

/// Sends every urgent frame the source has, each buffer as soon as it is full or the frames
/// run out, and pushes them to the link at once.
pub fn source_urgent<S: SourceSide>(side: &mut S) -> Result<(), S::Error> {
    let sealed = side.seals(StreamKind::Urgent);
    let mut queued = false;
    while let Some(mut frames) = side.take_buf(StreamKind::Urgent) {
        if sealed && side.parts().0.poll_faulted_page(&mut frames) {
            // Sealed and on the link before its window is sealed, in a record of its own
            // that the destination opens without waiting for the window's bytes.
            side.send(StreamKind::Urgent, frames)?;
            side.push_now()?;
            continue;
        }
        if sealed {
            // The rest of one answer: the next answer's faulting page goes alone too.
            side.parts().0.poll_urgent(&mut frames);
        } else {
            while frames.len() < FILL_BYTES && side.parts().0.poll_urgent(&mut frames) {}
        }
        if frames.is_empty() {
            side.put_back(StreamKind::Urgent, frames);
            break;
        }
        side.send(StreamKind::Urgent, frames)?;
        queued = true;
    }
    if queued {
        // Into the link now: the side may go on to encode a bulk buffer first, and the answer
        // must not wait in the queue meanwhile.
        side.push_now()?;
    }
    Ok(())
}

/// Fills free bulk buffers with frames, up to `buf_bytes` each. True when it stopped for want
/// of a buffer (every one is on the link), false when the engine had nothing more to send.
pub fn source_bulk<S: SourceSide>(side: &mut S, buf_bytes: usize) -> Result<bool, S::Error> {
    while let Some(mut frames) = side.take_buf(StreamKind::Bulk) {
        let phase_before = side.parts().0.phase();
        let mut state_out = false;
        while frames.len() < buf_bytes && {
            let (engine, vm) = side.parts();
            engine.poll_bulk(&mut frames, vm)?
        } {
            if side.parts().0.awaits_loaded() {
                // The state was just encoded: the destination loads it and answers, and
                // nothing else may go before that answer, so it leaves now.
                state_out = true;
                break;
            }
            if side.parts().0.phase() == Phase::Push {
                if phase_before != Phase::Push {
                    // The hand-over was just encoded: the destination resumes when it arrives,
                    // so it leaves now, not behind a buffer of pushed pages.
                    state_out = true;
                    break;
                }
                if side.serve_urgent()? {
                    source_urgent(side)?;
                }
            }
        }
        if frames.is_empty() {
            side.put_back(StreamKind::Bulk, frames);
            return Ok(false);
        }
        side.send(StreamKind::Bulk, frames)?;
        if state_out {
            side.push_now()?;
        }
    }
    Ok(true)
}

/// Sends what the destination engine queued: fault requests first, then acknowledgements and
/// the requests it asks again on bulk.
pub fn dest_flush<S: DestSide>(side: &mut S) -> Result<(), S::Error> {
    side.engine().poll_retries();
    for stream in [StreamKind::Urgent, StreamKind::Bulk] {
        while let Some(mut frames) = side.take_buf(stream) {
            let engine = side.engine();
            match stream {
                StreamKind::Urgent => {
                    while frames.len() < FILL_BYTES && engine.poll_urgent(&mut frames) {}
                }
                StreamKind::Bulk => {
                    while frames.len() < FILL_BYTES && engine.poll_bulk(&mut frames) {}
                }
            }
            if frames.is_empty() {
                side.put_back(stream, frames);
                break;
            }
            side.send(stream, frames)?;
        }
    }
    Ok(())
}

/// After a bulk frame, once the guest runs here: serves urgent input first, then places the
/// rest of a large window chunk by chunk with urgent service between chunks, so the push never
/// holds a vCPU's fault behind more than one chunk.
pub fn dest_after_bulk_frame<S: DestSide>(side: &mut S) -> Result<(), S::Error> {
    if side.engine().phase() != DestPhase::Running {
        return Ok(());
    }
    side.serve_urgent()?;
    while side.engine().placing() {
        side.place_chunk()?;
        side.serve_urgent()?;
    }
    Ok(())
}

/// After vCPU faults were handed to the engine: the requests leave now, before the side goes
/// back to placing.
pub fn dest_after_faults<S: DestSide>(side: &mut S) -> Result<(), S::Error> {
    dest_flush(side)?;
    side.push_now()
}
