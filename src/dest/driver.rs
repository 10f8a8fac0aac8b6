//! Runs a [`DestEngine`] on one io_uring: userfaultfd reads, both socket receives and the
//! fault-request sends share the ring.
//!
//! Guest memory is registered with the userfaultfd *before* the first frame is read, so fault
//! service is running before the state is restored (restoring devices may touch memory). The
//! stream pair arrives with the session the handshake opened, which gives the mode.

use super::engine::{DestEngine, DestEvent, DestPhase, DestStats};
use super::sink::UffdSink;
use super::uffd::{Uffd, UffdEvent, UFFD_MSG_LEN_BYTES};
use super::DestError;
use crate::metrics::mono_ns;
use crate::ports::{layout_of, page_of_host_addr, HostRegion, MigratableVm};
use crate::ring::{Buf, Completion, Ring};
use crate::transport::ring_streams::{RingStreams, StreamError, StreamEvent, FIRST_CALLER_TAG};
use crate::transport::tcp::StreamPair;
use crate::wire::{Limits, StreamKind};
use std::os::fd::AsRawFd;
use std::time::Duration;

const TAG_UFFD: u64 = FIRST_CALLER_TAG;
/// Fault messages read per uffd read.
const UFFD_MSGS_PER_READ: usize = 64;

/// Tunables of the destination's event loop.
#[derive(Debug, Clone)]
pub struct DestDriverOptions {
    /// Period of the caller's tick hook.
    pub tick: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    /// Pages of a background window placed between two looks for faults, once the guest
    /// runs (see [`DestEngine::set_place_chunk`]; 0 places whole windows).
    pub place_chunk_pages: u32,
}

impl Default for DestDriverOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(10),
            timeout: Duration::from_secs(600),
            place_chunk_pages: 8,
        }
    }
}

/// What the destination measured, beyond the engine's counters.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DestRun {
    /// The engine's counters.
    pub stats: DestStats,
    /// When the guest resumed here (mono ns).
    pub resume_ns: u64,
    /// Migration mode, from the session.
    pub mode: Option<String>,
    /// Fault latency percentiles (us).
    pub fault_us_p50: u64,
    /// 99th percentile.
    pub fault_us_p99: u64,
    /// 99.9th percentile.
    pub fault_us_p999: u64,
    /// Sum of fault latencies: time vCPUs spent blocked on the network (ms).
    pub vcpu_blocked_ms: f64,
    /// Fault latency CDF: (us, fraction).
    pub fault_cdf: Vec<(u64, f64)>,
    /// Bytes this host sent on the bulk stream (acks, DoneAck).
    pub sent_bulk: u64,
    /// Bytes this host sent on the urgent stream (fault requests).
    pub sent_urgent: u64,
}

fn stream_err(e: StreamError) -> DestError {
    DestError::Io { what: "migration stream", source: std::io::Error::other(e.to_string()) }
}

fn ring_err(what: &'static str, e: impl std::fmt::Display) -> DestError {
    DestError::Io { what, source: std::io::Error::other(e.to_string()) }
}

/// Receives a migration into `vm` over `pair`; returns once every page is here and the source
/// confirmed the digest. `on_tick` runs every `opts.tick` (after the resume too).
pub fn run_dest(
    vm: &mut dyn MigratableVm,
    pair: &StreamPair,
    opts: &DestDriverOptions,
    on_tick: &mut dyn FnMut(&DestEngine),
) -> Result<DestRun, DestError> {
    let regions = vm.regions();
    let layout = layout_of(&regions)?;
    let (uffd, _) = Uffd::open_with_features(super::uffd::UFFD_FEATURE_THREAD_ID)
        .map_err(|e| ring_err("userfaultfd open", e))?;
    for r in &regions {
        uffd.register(r.host_addr() as u64, r.size_bytes)
            .map_err(|e| ring_err("userfaultfd register", e))?;
    }
    if !crate::ring::prioritize_this_thread() {
        tracing::info!("destination event loop runs at normal priority (no CAP_SYS_NICE)");
    }
    let mut engine = DestEngine::new(layout.clone(), &pair.session);
    engine.set_place_chunk(opts.place_chunk_pages);
    let mut ring = Ring::new(256).map_err(|e| ring_err("io_uring setup", e))?;
    let mut streams =
        RingStreams::new(&mut ring, pair, 4, 64 * 1024, Limits::default()).map_err(stream_err)?;
    arm_uffd_read(&mut ring, &uffd, Buf::with_capacity(UFFD_MSG_LEN_BYTES * UFFD_MSGS_PER_READ))?;
    // Every mode keeps userfaultfd registered: a pre-copy that does not converge finishes
    // post-copy, and its missing pages then fault like any other.
    let run = DestRun { mode: Some(pair.session.mode.to_string()), ..DestRun::default() };
    let mut ctx = Ctx { vm, uffd: &uffd, regions: &regions, layout: &layout, run };
    let deadline = mono_ns() + opts.timeout.as_nanos() as u64;
    let mut next_tick = 0;
    loop {
        let now = mono_ns();
        if now >= next_tick {
            on_tick(&engine);
            next_tick = now + opts.tick.as_nanos() as u64;
        }
        if now > deadline {
            return Err(DestError::Timeout { secs: opts.timeout.as_secs(), phase: engine.phase() });
        }
        flush(&mut engine, &mut ring, &mut streams)?;
        if engine.phase() == DestPhase::Complete && streams.in_flight(StreamKind::Bulk) == 0 {
            break;
        }
        ring.submit_and_wait(1, Some(opts.tick)).map_err(|e| ring_err("io_uring wait", e))?;
        let mut lp =
            Loop { engine: &mut engine, ctx: &mut ctx, ring: &mut ring, streams: &mut streams };
        while let Some(completion) = lp.ring.next_completion() {
            lp.on_completion(completion)?;
        }
    }
    let mut run = ctx.run;
    let hist = engine.fault_histogram();
    run.stats = engine.stats().clone();
    run.stats.bytes_bulk = streams.bytes_received[0];
    run.stats.bytes_urgent = streams.bytes_received[1];
    run.sent_bulk = streams.bytes_sent[0];
    run.sent_urgent = streams.bytes_sent[1];
    run.fault_us_p50 = hist.quantile_us(0.5);
    run.fault_us_p99 = hist.quantile_us(0.99);
    run.fault_us_p999 = hist.quantile_us(0.999);
    run.vcpu_blocked_ms = hist.sum_us() as f64 / 1e3;
    run.fault_cdf = hist.cdf();
    if !engine.verified() {
        return Err(DestError::DigestMismatch {
            source_digest: run.stats.source_digest,
            dest_digest: run.stats.memory_digest,
        });
    }
    // The guest keeps running here without this loop: every page still missing is a zero page
    // (the need set is complete), so hand the memory back to the kernel's own fault path.
    // Unregistering also wakes any vCPU whose fault message was not read yet.
    for r in &regions {
        uffd.unregister(r.host_addr() as u64, r.size_bytes)
            .map_err(|e| ring_err("userfaultfd unregister", e))?;
    }
    Ok(run)
}

/// One pass of the event loop over ready completions.
struct Loop<'l, 'c> {
    engine: &'l mut DestEngine,
    ctx: &'l mut Ctx<'c>,
    ring: &'l mut Ring,
    streams: &'l mut RingStreams,
}

impl Loop<'_, '_> {
    fn on_completion(&mut self, completion: Completion) -> Result<(), DestError> {
        let completion = match self
            .streams
            .on_completion(self.ring, completion)
            .map_err(stream_err)?
        {
            Ok(StreamEvent::Received(stream)) => return self.on_received(stream),
            Ok(StreamEvent::Closed(stream)) if self.engine.phase() != DestPhase::Complete => {
                return Err(DestError::PeerClosed {
                    stream,
                    phase: self.engine.phase(),
                    outstanding: 0,
                });
            }
            Ok(StreamEvent::Sent(StreamKind::Urgent, _)) => {
                // A buffer is free again: fault requests queued behind it leave now, not
                // after the loop has worked through every bulk receive that is ready.
                flush(self.engine, self.ring, self.streams)?;
                return self.ring.submit().map(drop).map_err(|e| ring_err("io_uring submit", e));
            }
            Ok(_) => return Ok(()),
            Err(completion) => completion,
        };
        if completion.tag == TAG_UFFD {
            self.on_uffd_read(completion)?;
        }
        Ok(())
    }

    /// Handles every complete frame received on `stream`. Between two bulk frames, and
    /// between the chunks of one (a 64-page window takes about 0.7 ms to place here; a chunk
    /// is one page while a fault answer is awaited), it serves any fault that arrived
    /// meanwhile, so the push never holds a vCPU's fault behind more than one chunk.
    fn on_received(&mut self, stream: StreamKind) -> Result<(), DestError> {
        while let Some(frame) = self.streams.next_frame(stream).map_err(stream_err)? {
            let event = self.engine.on_frame(stream, frame, &mut self.ctx.sink())?;
            if let Some(event) = event {
                self.ctx.on_event(event)?;
            }
            if stream == StreamKind::Bulk && self.engine.phase() == DestPhase::Running {
                self.serve_urgent_now()?;
                while self.engine.placing() {
                    if let Some(event) = self.engine.place_more(&mut self.ctx.sink())? {
                        self.ctx.on_event(event)?;
                    }
                    self.serve_urgent_now()?;
                }
            }
        }
        if stream == StreamKind::Urgent {
            // Best effort: a failure only leaves the kernel's delayed ACKs in place.
            let _ = self.streams.quickack(StreamKind::Urgent);
        }
        Ok(())
    }

    /// Picks fault messages and urgent-stream receives out of the ring ahead of the rest.
    fn serve_urgent_now(&mut self) -> Result<(), DestError> {
        // A system call per bulk frame, on purpose: entering the kernel runs the ring's task
        // work, which is what posts a waiting uffd or urgent completion. Peeking at the shared
        // completion queue without it was measured slower (loopback post-copy fault p50 about
        // 230 us instead of 170, p99 1.5 to 3.3 ms instead of under 0.9).
        self.ring.submit().map_err(|e| ring_err("io_uring submit", e))?;
        let recv_tag = self.streams.recv_tag(StreamKind::Urgent);
        let send_tag = self.streams.send_tag(StreamKind::Urgent);
        while let Some(c) =
            self.ring.take_completion(|tag| tag == TAG_UFFD || tag == recv_tag || tag == send_tag)
        {
            self.on_completion(c)?;
        }
        Ok(())
    }

    fn on_uffd_read(&mut self, completion: Completion) -> Result<(), DestError> {
        let buf = completion
            .buf
            .unwrap_or_else(|| Buf::with_capacity(UFFD_MSG_LEN_BYTES * UFFD_MSGS_PER_READ));
        match completion.result {
            Ok(_) => on_uffd_messages(self.engine, self.ctx, buf.as_slice())?,
            Err(e)
                if e.raw_os_error() == Some(libc::EAGAIN)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(source) => return Err(DestError::Io { what: "userfaultfd read", source }),
        }
        let mut buf = buf;
        buf.clear();
        arm_uffd_read(self.ring, self.ctx.uffd, buf)?;
        flush(self.engine, self.ring, self.streams)?;
        // Submit now: the fault request must leave before the loop goes back to placing.
        self.ring.submit().map_err(|e| ring_err("io_uring submit", e))?;
        Ok(())
    }
}

fn arm_uffd_read(ring: &mut Ring, uffd: &Uffd, buf: Buf) -> Result<(), DestError> {
    ring.read(uffd.as_raw_fd(), buf, TAG_UFFD)
        .map_err(|r| ring_err("userfaultfd read submit", r.error))
}

/// Everything a frame or a fault may need besides the engine.
struct Ctx<'a> {
    vm: &'a mut dyn MigratableVm,
    uffd: &'a Uffd,
    regions: &'a [HostRegion],
    layout: &'a crate::memory::Layout,
    run: DestRun,
}

impl Ctx<'_> {
    fn sink(&self) -> UffdSink<'_> {
        UffdSink::new(self.uffd, self.regions, self.layout)
    }

    fn on_event(&mut self, event: DestEvent) -> Result<(), DestError> {
        match event {
            DestEvent::Resume(blob) => {
                self.vm.restore_state(&blob)?;
                self.vm.resume()?;
                self.run.resume_ns = mono_ns();
            }
            DestEvent::Complete => {}
        }
        Ok(())
    }
}

fn on_uffd_messages(
    engine: &mut DestEngine,
    ctx: &mut Ctx<'_>,
    bytes: &[u8],
) -> Result<(), DestError> {
    for event in super::uffd::parse_messages(bytes) {
        if let UffdEvent::PageFault { addr, .. } = event {
            let page = page_of_host_addr(ctx.regions, ctx.layout, addr as usize)
                .ok_or(DestError::FaultOutsideMemory { page: u64::MAX })?;
            engine.on_fault(page, 0, &mut ctx.sink())?;
        }
    }
    Ok(())
}

/// Sends whatever the engine queued: urgent first.
fn flush(
    engine: &mut DestEngine,
    ring: &mut Ring,
    streams: &mut RingStreams,
) -> Result<(), DestError> {
    for stream in [StreamKind::Urgent, StreamKind::Bulk] {
        while let Some(mut frames) = streams.take_send_buf(stream) {
            let produced = match stream {
                StreamKind::Urgent => {
                    while engine.poll_urgent(&mut frames) {}
                    !frames.is_empty()
                }
                StreamKind::Bulk => {
                    while engine.poll_bulk(&mut frames) {}
                    !frames.is_empty()
                }
            };
            if !produced {
                streams.put_back(stream, frames);
                break;
            }
            streams.send(ring, stream, frames).map_err(stream_err)?;
        }
    }
    Ok(())
}
