//! Runs a [`SourceEngine`] on one io_uring over the two TCP streams.
//!
//! The loop keeps a few bulk sends in flight (each a buffer of several frames), sends urgent
//! frames the moment the engine has them, and waits on the ring for receives, send
//! completions and a periodic tick (the caller's hook samples the guest's progress there).

use super::config::{Phase, SourceStats};
use super::engine::SourceEngine;
use super::SourceError;
use crate::metrics::mono_ns;
use crate::ports::MigratableVm;
use crate::ring::Ring;
use crate::transport::ring_streams::{RingStreams, StreamError, StreamEvent};
use crate::transport::tcp::StreamPair;
use crate::wire::{Limits, StreamKind};
use std::time::Duration;

/// Tunables of the source's event loop.
#[derive(Debug, Clone)]
pub struct SourceDriverOptions {
    /// Bulk send buffers in flight at most.
    pub bulk_in_flight: usize,
    /// Bytes per bulk send buffer.
    pub bulk_buf_bytes: usize,
    /// Period of the caller's tick hook.
    pub tick: Duration,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for SourceDriverOptions {
    fn default() -> Self {
        Self {
            bulk_in_flight: 2,
            bulk_buf_bytes: 64 << 10,
            tick: Duration::from_millis(10),
            timeout: Duration::from_secs(600),
        }
    }
}

/// An I/O error of the loop's ring or streams, named by what was being done.
fn ring_err(what: &'static str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Io { what, source: std::io::Error::other(e.to_string()) }
}

fn stream_err(e: StreamError) -> SourceError {
    ring_err("migration stream", e)
}

/// Drives `engine` to the end of the migration; `on_tick` runs every `opts.tick`.
pub fn run_source(
    engine: &mut SourceEngine,
    vm: &mut dyn MigratableVm,
    pair: &StreamPair,
    opts: &SourceDriverOptions,
    on_tick: &mut dyn FnMut(&SourceEngine),
) -> Result<SourceStats, SourceError> {
    if !crate::ring::prioritize_this_thread() {
        tracing::info!("source event loop runs at normal priority (no CAP_SYS_NICE)");
    }
    let mut ring = Ring::new(256).map_err(|e| ring_err("io_uring setup", e))?;
    let mut streams = RingStreams::new(
        &mut ring,
        pair,
        opts.bulk_in_flight,
        opts.bulk_buf_bytes,
        Limits::default(),
    )
    .map_err(stream_err)?;
    engine.start(vm)?;
    let deadline = mono_ns() + opts.timeout.as_nanos() as u64;
    let mut next_tick = 0u64;
    loop {
        let now = mono_ns();
        if now >= next_tick {
            on_tick(engine);
            next_tick = now + opts.tick.as_nanos() as u64;
        }
        if now > deadline {
            return Err(SourceError::Timeout {
                secs: opts.timeout.as_secs(),
                phase: engine.phase(),
            });
        }
        fill_urgent(engine, &mut ring, &mut streams)?;
        let waits_on_link = fill_bulk(engine, vm, &mut ring, &mut streams, opts)?;
        if engine.is_finished()
            && streams.in_flight(StreamKind::Bulk) == 0
            && streams.in_flight(StreamKind::Urgent) == 0
        {
            let mut stats = engine.stats().clone();
            stats.bytes_bulk = streams.bytes_sent[0];
            stats.bytes_urgent = streams.bytes_sent[1];
            return Ok(stats);
        }
        if waits_on_link {
            wait_on_link(engine, &mut ring, opts.tick)?;
        } else {
            ring.submit_and_wait(1, Some(opts.tick)).map_err(|e| ring_err("io_uring wait", e))?;
        }
        while let Some(completion) = ring.next_completion() {
            match streams.on_completion(&mut ring, completion).map_err(stream_err)? {
                Ok(StreamEvent::Received(stream)) => {
                    while let Some(frame) = streams.next_frame(stream).map_err(stream_err)? {
                        engine.on_frame(stream, frame, vm)?;
                    }
                }
                Ok(StreamEvent::Sent(StreamKind::Bulk, bytes)) => {
                    engine.on_bulk_sent(bytes, mono_ns())
                }
                Ok(StreamEvent::Sent(..)) => {}
                Ok(StreamEvent::Closed(stream)) if !engine.is_finished() => {
                    return Err(SourceError::PeerClosed { stream, phase: engine.phase() });
                }
                Ok(StreamEvent::Closed(_)) | Err(_) => {}
            }
        }
    }
}

/// Waits with every bulk buffer in the kernel, and tells the engine how long that took. The
/// sends go in first, timed apart from the wait: on loopback and veth a send delivers its
/// packets inside the call, which is the loop's own work, not a wait on the link.
fn wait_on_link(
    engine: &mut SourceEngine,
    ring: &mut Ring,
    tick: Duration,
) -> Result<(), SourceError> {
    if ring.submit().map_err(|e| ring_err("io_uring submit", e))? > 0 {
        return Ok(()); // a send finished inside the call: no wait
    }
    let from_ns = mono_ns();
    ring.submit_and_wait(1, Some(tick)).map_err(|e| ring_err("io_uring wait", e))?;
    engine.on_link_wait(mono_ns().saturating_sub(from_ns));
    Ok(())
}

/// Sends every urgent frame the engine has (each in its own buffer while buffers last).
fn fill_urgent(
    engine: &mut SourceEngine,
    ring: &mut Ring,
    streams: &mut RingStreams,
) -> Result<(), SourceError> {
    let mut queued = false;
    while let Some(mut frames) = streams.take_send_buf(StreamKind::Urgent) {
        while engine.poll_urgent(&mut frames) {}
        if frames.is_empty() {
            streams.put_back(StreamKind::Urgent, frames);
            break;
        }
        streams.send(ring, StreamKind::Urgent, frames).map_err(stream_err)?;
        queued = true;
    }
    if queued {
        // Into the kernel now: the loop may go on to encode a bulk buffer first (a few hundred
        // microseconds with lz4), and the answer must not wait in the submission queue.
        ring.submit().map_err(|e| ring_err("io_uring submit", e))?;
        tracing::trace!(at_ns = mono_ns(), "source: urgent send submitted");
    }
    Ok(())
}

/// Fills free bulk buffers with frames, up to about one buffer each. True when it stopped for
/// want of a buffer (every one is in the kernel, so the loop now waits on the link), false
/// when the engine had nothing more to send.
fn fill_bulk(
    engine: &mut SourceEngine,
    vm: &mut dyn MigratableVm,
    ring: &mut Ring,
    streams: &mut RingStreams,
    opts: &SourceDriverOptions,
) -> Result<bool, SourceError> {
    while let Some(mut frames) = streams.take_send_buf(StreamKind::Bulk) {
        let phase_before = engine.phase();
        let mut resume_now = false;
        while frames.len() < opts.bulk_buf_bytes && engine.poll_bulk(&mut frames, vm)? {
            if engine.phase() == Phase::Push {
                if phase_before != Phase::Push {
                    // The state was just encoded: the destination resumes when it arrives, so
                    // it leaves now, not behind a buffer's worth of pushed pages.
                    resume_now = true;
                    break;
                }
                serve_urgent_now(engine, vm, ring, streams)?;
            }
        }
        if frames.is_empty() {
            streams.put_back(StreamKind::Bulk, frames);
            return Ok(false);
        }
        streams.send(ring, StreamKind::Bulk, frames).map_err(stream_err)?;
        if resume_now {
            ring.submit().map_err(|e| ring_err("io_uring submit", e))?;
        }
    }
    Ok(true)
}

/// Serves fault requests that arrived while a bulk buffer was being filled (encoding one takes
/// up to a few hundred microseconds with lz4), so a fault never waits for the push.
fn serve_urgent_now(
    engine: &mut SourceEngine,
    vm: &mut dyn MigratableVm,
    ring: &mut Ring,
    streams: &mut RingStreams,
) -> Result<(), SourceError> {
    ring.submit().map_err(|e| ring_err("io_uring submit", e))?;
    let recv_tag = streams.recv_tag(StreamKind::Urgent);
    let send_tag = streams.send_tag(StreamKind::Urgent);
    let mut served = false;
    while let Some(completion) = ring.take_completion(|tag| tag == recv_tag || tag == send_tag) {
        match streams.on_completion(ring, completion).map_err(stream_err)? {
            Ok(StreamEvent::Received(stream)) => {
                while let Some(frame) = streams.next_frame(stream).map_err(stream_err)? {
                    engine.on_frame(stream, frame, vm)?;
                }
                served = true;
            }
            Ok(StreamEvent::Sent(..)) => served = true, // a buffer for a waiting answer
            Ok(StreamEvent::Closed(stream)) if !engine.is_finished() => {
                return Err(SourceError::PeerClosed { stream, phase: engine.phase() });
            }
            _ => {}
        }
    }
    if served {
        fill_urgent(engine, ring, streams)?;
    }
    Ok(())
}
