//! The destination engine: a sans-IO state machine.
//!
//! Inputs: frames from the two streams, and page faults (a guest page the running VM touched
//! while it is missing). Outputs: fault requests on the urgent stream, acknowledgements and
//! DoneAck on the bulk stream, pages handed to a [`PageSink`], the state restored and the guest
//! resumed through the [`DestVm`] port, and [`DestEvent`]s telling the driver what happened.
//!
//! Residency of each page: *present* (placed here), *requested* (a fault request is in
//! flight), or missing. After the switch-over the *need set* says which missing pages must come
//! from the source; a missing page outside it is zero and is placed locally.

use super::DestError;
use crate::memory::{Layout, PAGE_SIZE};
use crate::metrics::LatencyHistogram;
use crate::ports::{memory_digest, zero_page_crc, Clock, DestVm, MonoClock, PageSink};
use crate::session::SessionParams;
use crate::wire::{self, MigrationMode, StreamKind};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

mod blocked;
mod outgoing;
mod placement;
mod recovery;
mod residency;
mod retry;

use blocked::FaultWait;
pub use blocked::VCPUS_ATTRIBUTED_MAX;
pub use outgoing::{BULK_FRAMES_MAX, FAULTS_WAITING_MAX};
use placement::Placing;
use residency::Residency;

/// What the driver must do after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestEvent {
    /// The state was restored and the guest resumed here (through [`DestVm`]).
    Resumed,
    /// Every page is here and the digests matched: the source is no longer needed.
    Complete,
}

/// Where the destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestPhase {
    /// Receiving pages before the switch-over.
    PreSwitch,
    /// The state is restored and the guest paused here, waiting for the source's `Run`
    /// (protocol version 3 on): the source is still authoritative.
    Loaded,
    /// Guest running; pages arrive on demand and in the background.
    Running,
    /// Every page is here.
    Complete,
    /// The state could not be loaded: the source heard so and keeps the guest; this side only
    /// sends its refusal and ends ([`DestEngine::take_refusal`]).
    Refused,
}

/// Counters and instants the destination reports.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DestStats {
    /// When the VmState arrived (mono ns).
    pub state_received_ns: u64,
    /// When every needed page was present (mono ns).
    pub complete_ns: u64,
    /// Faults that needed the network.
    pub network_faults: u64,
    /// Faults served locally (zero pages, or pages that arrived meanwhile).
    pub local_faults: u64,
    /// Pages placed from the network.
    pub pages_placed: u64,
    /// Pages that arrived twice (the second copy was dropped).
    pub pages_duplicate: u64,
    /// Stale pages dropped at the switch-over.
    pub pages_discarded: u64,
    /// Zero pages that arrived for missing pages and were left missing, known zero (a vCPU
    /// that touches one gets a local zero page).
    pub pages_left_zero: u64,
    /// Bytes received on bulk (counted by the driver).
    pub bytes_bulk: u64,
    /// Bytes received on urgent (counted by the driver).
    pub bytes_urgent: u64,
    /// Memory digest over the pages as placed.
    pub memory_digest: u64,
    /// The source's digest from Done.
    pub source_digest: u64,
    /// Connections that replaced a lost one.
    pub recoveries: u64,
    /// Fault requests asked again on bulk after no answer in time.
    #[serde(default)]
    pub fault_retries: u64,
    /// The longest a vCPU waited for a page from the network (us).
    #[serde(default)]
    pub fault_us_max: u64,
}

/// The destination state machine. See the module docs.
pub struct DestEngine {
    /// Time, read through the port (the simulator passes a virtual clock).
    clock: Arc<dyn Clock>,
    layout: Layout,
    wire_regions: Vec<wire::Region>,
    limits: wire::Limits,
    version: u16,
    session_id: u64,
    mode: MigrationMode,
    phase: DestPhase,
    /// Which pages are present, requested, needed, outstanding.
    residency: Residency,
    page_crc: Vec<u32>,
    /// Pages a thread waits on from the network: since when, and which vCPU asked first.
    fault_waits: HashMap<u64, FaultWait>,
    fault_hist: LatencyHistogram,
    /// Network-fault latencies summed per vCPU index (us); grows to the highest index seen,
    /// at most [`VCPUS_ATTRIBUTED_MAX`].
    blocked_us_per_vcpu: Vec<u64>,
    /// Latencies of faults no vCPU index was given for, or past the bound (us).
    blocked_us_unattributed: u64,
    next_request_id: u32,
    /// Fault requests waiting for the urgent stream, encoded when polled (no allocation per
    /// fault once the queue has reached its largest size).
    fault_requests: VecDeque<wire::FaultRequest>,
    /// A fault request that could not be encoded when polled: returned by the next call.
    failed: Option<DestError>,
    /// Frames waiting for the bulk stream, in order.
    bulk_out: VecDeque<BulkFrame>,
    scratch: Vec<u8>,
    /// Pages per `place_more` call for background windows (0: whole windows).
    place_chunk_pages: u32,
    /// The background window being placed chunk by chunk.
    placing: Option<Placing>,
    /// The decode buffer of the last finished `Placing`, kept for the next one.
    spare_decoded: Vec<u8>,
    done: Option<wire::Done>,
    /// Windows received per stream, acknowledged every [`ACK_EVERY_WINDOWS`].
    windows_received: [u64; 2],
    /// Fault requests asked again, and the answer time that paces them.
    retries: retry::Retries,
    /// Why the state did not load (phase [`DestPhase::Refused`]).
    refusal: Option<DestError>,
    stats: DestStats,
}

impl std::fmt::Debug for DestEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestEngine")
            .field("phase", &self.phase)
            .field("outstanding", &self.residency.outstanding())
            .finish()
    }
}

/// A frame waiting for the bulk stream (bounded: see `outgoing`).
#[derive(Debug)]
enum BulkFrame {
    /// Encoded when queued (the DoneAck: once per migration).
    Encoded(Vec<u8>),
    /// An acknowledgement or a Pong, encoded when polled, so that the acknowledgements of a
    /// stream of fault answers allocate nothing.
    Control(wire::Control),
    /// A fault request asked again (see `retry`), encoded when polled.
    FaultRequest(wire::FaultRequest),
}

/// Windows between two acknowledgements on a stream (the source keeps every unacknowledged
/// window so that a broken connection can be resumed without losing one).
pub const ACK_EVERY_WINDOWS: u64 = 32;

impl DestEngine {
    /// A destination for a VM with this memory layout (its regions, in order), in the session
    /// the handshake opened (which checked that the source's layout is this one).
    pub fn new(layout: Layout, session: &SessionParams) -> Self {
        let pages = layout.total_pages();
        let wire_regions = layout
            .regions()
            .iter()
            .map(|r| wire::Region { guest_phys: r.guest_phys, size_bytes: r.size_bytes })
            .collect();
        let limits = wire::Limits::default();
        let scratch = vec![0u8; limits.window_pages() as usize * PAGE_SIZE];
        Self {
            clock: Arc::new(MonoClock),
            layout,
            wire_regions,
            limits,
            version: session.version,
            session_id: session.session_id,
            mode: session.mode,
            phase: DestPhase::PreSwitch,
            residency: Residency::new(pages),
            page_crc: vec![zero_page_crc(); pages as usize],
            fault_waits: HashMap::new(),
            fault_hist: LatencyHistogram::new(),
            blocked_us_per_vcpu: Vec::new(),
            blocked_us_unattributed: 0,
            next_request_id: 1,
            fault_requests: VecDeque::new(),
            failed: None,
            bulk_out: VecDeque::new(),
            scratch,
            place_chunk_pages: 0,
            placing: None,
            spare_decoded: Vec::new(),
            done: None,
            windows_received: [0; 2],
            retries: retry::Retries::default(),
            refusal: None,
            stats: DestStats::default(),
        }
    }

    /// Reads time from `clock` instead of CLOCK_MONOTONIC (the simulator's virtual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Current phase.
    pub fn phase(&self) -> DestPhase {
        self.phase
    }

    /// Counters so far.
    pub fn stats(&self) -> &DestStats {
        &self.stats
    }

    /// Fault latencies (uffd message to page placed), in microseconds.
    pub fn fault_histogram(&self) -> &LatencyHistogram {
        &self.fault_hist
    }

    /// The page layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// True when `page` has been placed here.
    pub fn is_present(&self, page: u64) -> bool {
        self.residency.is_present(page)
    }

    /// The session this engine receives.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The migration mode of the session.
    pub fn mode(&self) -> MigrationMode {
        self.mode
    }

    /// Appends the next urgent frame (a fault request) to `out`; false when none. The request
    /// is encoded here, straight into `out`: nothing is allocated per fault. One that cannot be
    /// encoded is returned by the next `on_frame` or `on_fault`.
    pub fn poll_urgent(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(request) = self.fault_requests.pop_front() else {
            return false;
        };
        self.encode_polled(out, &wire::FrameBody::FaultRequest(request))
    }

    /// Appends the next bulk-stream frame (Ack, Pong, DoneAck) to `out`; false when none. One
    /// that cannot be encoded is returned by the next `on_frame` or `on_fault`.
    pub fn poll_bulk(&mut self, out: &mut Vec<u8>) -> bool {
        match self.bulk_out.pop_front() {
            None => false,
            Some(BulkFrame::Encoded(frame)) => {
                out.extend_from_slice(&frame);
                true
            }
            Some(BulkFrame::Control(c)) => self.encode_polled(out, &wire::FrameBody::Control(c)),
            Some(BulkFrame::FaultRequest(r)) => {
                self.encode_polled(out, &wire::FrameBody::FaultRequest(r))
            }
        }
    }

    /// Encodes a polled frame into `out`; an error is kept for the next call that can return
    /// one.
    fn encode_polled(&mut self, out: &mut Vec<u8>, body: &wire::FrameBody<'_>) -> bool {
        match wire::encode_frame(out, self.version, body, &self.limits) {
            Ok(_) => true,
            Err(error) => {
                self.failed.get_or_insert(error.into());
                false
            }
        }
    }

    /// Handles one frame from `stream`.
    pub fn on_frame(
        &mut self,
        stream: StreamKind,
        frame: wire::Frame<'_>,
        vm: &mut dyn DestVm,
    ) -> Result<Option<DestEvent>, DestError> {
        let sink: &mut dyn PageSink = vm;
        let unexpected = |frame: &wire::FrameBody<'_>, phase| DestError::UnexpectedFrame {
            stream,
            frame: frame.frame_type(),
            phase,
        };
        let body = frame.body;
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        if stream == StreamKind::Bulk {
            self.finish_placing(sink)?;
        }
        match body {
            wire::FrameBody::PageWindow(window) => {
                window.validate(&self.wire_regions)?;
                if stream == StreamKind::Urgent {
                    tracing::trace!(
                        page = self.layout.global(window.region, window.first_page, 1).ok(),
                        at_ns = self.clock.now_ns(),
                        "destination: fault answer arrived"
                    );
                }
                if stream == StreamKind::Bulk
                    && self.phase == DestPhase::Running
                    && self.place_chunk_pages > 0
                    && window.page_count > self.place_chunk_pages
                {
                    return self.start_placing(&window, sink);
                }
                self.on_window(&window, sink)?;
                self.count_window(stream)?;
                Ok(self.check_complete())
            }
            wire::FrameBody::DirtySet(set) => {
                self.on_need_set(&set, sink)?;
                Ok(None)
            }
            wire::FrameBody::VmState(blob) if self.phase == DestPhase::PreSwitch => {
                self.on_state(blob, vm)
            }
            wire::FrameBody::Control(c)
                if c.kind == wire::ControlKind::Run && self.phase == DestPhase::Loaded =>
            {
                self.run(vm)
            }
            wire::FrameBody::Done(done) if self.phase == DestPhase::Complete => {
                // The first DoneAck was lost with a connection: answer the repeated Done,
                // acknowledging every window first, as the first time.
                self.check_bulk_room()?;
                self.stats.source_digest = done.memory_digest;
                for stream in StreamKind::ALL {
                    self.queue_ack(stream);
                }
                self.queue_done_ack(&done);
                Ok(None)
            }
            wire::FrameBody::Done(done)
                if !matches!(self.phase, DestPhase::PreSwitch | DestPhase::Loaded) =>
            {
                self.stats.source_digest = done.memory_digest;
                self.done = Some(done);
                Ok(self.check_complete())
            }
            wire::FrameBody::Control(c) => {
                self.on_control(&c)?;
                Ok(None)
            }
            other => Err(unexpected(&other, self.phase)),
        }
    }

    /// The need set of one region: stale present pages are dropped so they fault again.
    fn on_need_set(
        &mut self,
        set: &wire::DirtySetRef<'_>,
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        if self.phase != DestPhase::PreSwitch {
            return Err(DestError::UnexpectedFrame {
                stream: StreamKind::Bulk,
                frame: wire::FrameType::DirtySet,
                phase: self.phase,
            });
        }
        self.residency.open_need();
        let base = self.layout.global(set.region, 0, 1)?;
        for run in set.runs(&self.wire_regions)? {
            let first = base + run.first_page;
            self.residency.add_needed(first, run.count);
            let stop = first + run.count;
            let mut page = first;
            // Jump from present run to present run: a post-copy need set of a large guest holds
            // about every page, and nearly none is present yet.
            while let Some((start, end)) = self.residency.next_present_run(page, stop) {
                page = start;
                sink.discard(page, end - page)?;
                self.residency.drop_present(page, end);
                for p in page..end {
                    self.page_crc[p as usize] = zero_page_crc();
                }
                self.stats.pages_discarded += end - page;
                page = end;
            }
        }
        Ok(())
    }

    /// Restores the state; from version 3 the guest waits for `Run`, and the source hears
    /// `Loaded`. A version-2 source hands over with the state itself.
    fn on_state(
        &mut self,
        blob: &[u8],
        vm: &mut dyn DestVm,
    ) -> Result<Option<DestEvent>, DestError> {
        self.stats.state_received_ns = self.clock.now_ns();
        tracing::info!(blob_bytes = blob.len(), "destination: state arrived, restoring it");
        if self.version < wire::VERSION_HAND_OVER {
            vm.restore_state(blob)?;
            return self.run(vm);
        }
        let value = match vm.restore_state(blob) {
            Ok(()) => {
                self.phase = DestPhase::Loaded;
                0
            }
            Err(error) => {
                // The source still holds the guest: tell it, so it resumes its copy at once
                // instead of waiting out a recovery.
                tracing::error!(%error, "destination: the state does not load; refusing it");
                self.phase = DestPhase::Refused;
                self.refusal = Some(error.into());
                wire::LOADED_REFUSED
            }
        };
        let loaded = wire::Control { kind: wire::ControlKind::Loaded, seq: 0, value };
        self.queue_bulk(BulkFrame::Control(loaded))?;
        Ok(None)
    }

    /// Why the state was refused, once the phase is [`DestPhase::Refused`].
    pub fn take_refusal(&mut self) -> Option<DestError> {
        self.refusal.take()
    }

    /// The hand-over: the guest resumes here and from now on runs on this side.
    fn run(&mut self, vm: &mut dyn DestVm) -> Result<Option<DestEvent>, DestError> {
        tracing::info!("destination: hand-over, resuming the guest");
        // Running before the resume: a vCPU's first fault must find the engine ready for it.
        self.residency.start_running();
        self.phase = DestPhase::Running;
        vm.resume()?;
        Ok(Some(DestEvent::Resumed))
    }

    /// A vCPU touched missing page `page`; `vcpu` is its index, or
    /// [`wire::FAULT_VCPU_UNKNOWN`] for a thread the VMM does not know as a vCPU.
    pub fn on_fault(
        &mut self,
        page: u64,
        vcpu: u32,
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        if page >= self.layout.total_pages() {
            return Err(DestError::FaultOutsideMemory { page });
        }
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        if self.residency.is_present(page) {
            // Placed between the fault and its message: the waiter still needs a wake-up.
            self.stats.local_faults += 1;
            sink.wake(page, 1)?;
            return Ok(());
        }
        let Some(needed) = self.residency.is_needed(page) else {
            return Err(DestError::FaultBeforeSwitch { page });
        };
        if !needed {
            self.stats.local_faults += 1;
            sink.place_zero(page, 1)?;
            self.mark_present(page, self.clock.now_ns());
            return Ok(());
        }
        if self.residency.is_requested(page) {
            return Ok(()); // a request is in flight; the answer wakes every waiter
        }
        self.check_fault_room()?;
        self.residency.request(page);
        self.stats.network_faults += 1;
        let now_ns = self.clock.now_ns();
        tracing::trace!(page, at_ns = now_ns, "destination: fault request");
        self.fault_waits.insert(page, FaultWait { started_ns: now_ns, vcpu });
        self.queue_fault_request(page)
    }

    /// Queues a fault request for `page` with a fresh request id.
    fn queue_fault_request(&mut self, page: u64) -> Result<(), DestError> {
        let request = self.fault_request_for(page).ok_or(DestError::FaultOutsideMemory { page })?;
        self.fault_requests.push_back(request);
        Ok(())
    }

    /// A fault request for `page` with a fresh request id and the vCPU waiting on it (None
    /// outside memory).
    fn fault_request_for(&mut self, page: u64) -> Option<wire::FaultRequest> {
        let (region, page_in_region) = self.layout.locate(page)?;
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        let vcpu = self.fault_waits.get(&page).map_or(wire::FAULT_VCPU_UNKNOWN, |w| w.vcpu);
        Some(wire::FaultRequest { region, page: page_in_region, vcpu, request_id })
    }

    /// Answers a Ping with a Pong of the same sequence number: every frame before the Ping on
    /// this stream has been placed by now, which is what the source waits for before it pauses.
    fn on_control(&mut self, c: &wire::Control) -> Result<(), DestError> {
        if c.kind != wire::ControlKind::Ping {
            return Ok(());
        }
        let pong = wire::Control { kind: wire::ControlKind::Pong, seq: c.seq, value: c.value };
        self.queue_bulk(BulkFrame::Control(pong))
    }

    fn count_window(&mut self, stream: StreamKind) -> Result<(), DestError> {
        let i = stream.index();
        self.windows_received[i] += 1;
        // After the DoneAck, a window is a fault answer that crossed it (its pages were here
        // already), or a recovery's re-send: the source has stopped reading, or acknowledgements
        // go with the repeated DoneAck.
        if self.phase != DestPhase::Complete && self.windows_received[i] % ACK_EVERY_WINDOWS == 0 {
            self.queue_ack(stream);
        }
        Ok(())
    }

    /// Completes once Done arrived and every needed page is present: checks the digest and
    /// queues DoneAck.
    fn check_complete(&mut self) -> Option<DestEvent> {
        if self.phase != DestPhase::Running || self.residency.outstanding() != 0 {
            return None;
        }
        let done = self.done?;
        let digest = memory_digest(&self.page_crc);
        self.stats.memory_digest = digest;
        self.stats.complete_ns = self.clock.now_ns();
        // Everything received is acknowledged before the DoneAck.
        for stream in StreamKind::ALL {
            self.queue_ack(stream);
        }
        let verdict = self.queue_done_ack(&done);
        self.phase = DestPhase::Complete;
        tracing::info!(
            digest,
            matched = verdict == wire::DoneVerdict::Match,
            "destination: every page present"
        );
        Some(DestEvent::Complete)
    }

    /// Queues the DoneAck answering `done`, with this side's digest; returns its verdict. Once
    /// per Done: a repeated Done checks the queue's room first.
    fn queue_done_ack(&mut self, done: &wire::Done) -> wire::DoneVerdict {
        let digest = self.stats.memory_digest;
        let verdict = if digest == done.memory_digest {
            wire::DoneVerdict::Match
        } else {
            wire::DoneVerdict::DigestMismatch
        };
        let ack = wire::DoneAck {
            counts: wire::Done {
                pages: self.stats.pages_placed,
                bytes: self.stats.bytes_bulk + self.stats.bytes_urgent,
                memory_digest: digest,
            },
            verdict,
        };
        let mut out = Vec::new();
        if wire::encode_frame(&mut out, self.version, &wire::FrameBody::DoneAck(ack), &self.limits)
            .is_ok()
        {
            self.bulk_out.push_back(BulkFrame::Encoded(out));
        }
        verdict
    }

    /// True when the digests matched at completion.
    pub fn verified(&self) -> bool {
        self.phase == DestPhase::Complete && self.stats.memory_digest == self.stats.source_digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::SinkError;

    /// Records what the engine asks of guest memory.
    #[derive(Default)]
    pub(super) struct Recorder {
        placed: Vec<(u64, u64)>,
        zeroed: Vec<(u64, u64)>,
        woken: Vec<(u64, u64)>,
        restored: Option<Vec<u8>>,
        resumed: bool,
    }

    impl PageSink for Recorder {
        fn place(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
            self.placed.push((first, (data.len() / PAGE_SIZE) as u64));
            Ok(())
        }
        fn place_zero(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
            self.zeroed.push((first, count));
            Ok(())
        }
        fn overwrite(&mut self, _first: u64, _data: &[u8]) -> Result<(), SinkError> {
            Ok(())
        }
        fn discard(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
            Ok(())
        }
        fn wake(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
            self.woken.push((first, count));
            Ok(())
        }
    }

    impl DestVm for Recorder {
        fn restore_state(&mut self, blob: &[u8]) -> Result<(), crate::ports::EmbedError> {
            self.restored = Some(blob.to_vec());
            Ok(())
        }
        fn resume(&mut self) -> Result<(), crate::ports::EmbedError> {
            assert!(self.restored.is_some(), "resumed before the state was restored");
            self.resumed = true;
            Ok(())
        }
    }

    pub(super) fn feed(
        dest: &mut DestEngine,
        stream: StreamKind,
        bytes: &[u8],
        sink: &mut Recorder,
    ) {
        let (frame, _) = wire::decode_frame(bytes, &wire::Limits::default()).expect("frame");
        dest.on_frame(stream, frame, sink).expect("on_frame");
    }

    /// A post-copy destination of 64 pages, running, with every page in its need set.
    pub(super) fn running_postcopy(sink: &mut Recorder) -> DestEngine {
        const PAGES: u64 = 64;
        let layout = Layout::new(&[(0, PAGES * PAGE_SIZE as u64)]).expect("layout");
        let regions = vec![wire::Region { guest_phys: 0, size_bytes: PAGES * PAGE_SIZE as u64 }];
        let session = crate::session::SessionParams {
            version: wire::VERSION_CURRENT,
            session_id: 9,
            mode: MigrationMode::Postcopy,
            intent: crate::session::SessionIntent::New,
            regions,
            page_size: PAGE_SIZE as u32,
        };
        let mut dest = DestEngine::new(layout, &session);
        let limits = wire::Limits::default();
        let mut out = Vec::new();
        let need = [u64::MAX];
        wire::encode_dirty_set(&mut out, wire::VERSION_CURRENT, 0, &need, PAGES, &limits)
            .expect("need set");
        feed(&mut dest, StreamKind::Bulk, &out, sink);
        let mut out = Vec::new();
        let body = wire::FrameBody::VmState(b"state");
        wire::encode_frame(&mut out, wire::VERSION_CURRENT, &body, &limits).expect("state");
        feed(&mut dest, StreamKind::Bulk, &out, sink);
        assert_eq!(dest.phase(), DestPhase::Loaded);
        assert_eq!(sink.restored.as_deref(), Some(&b"state"[..]), "the engine restored the state");
        assert!(!sink.resumed, "the guest waits for the source's Run");
        let mut answer = Vec::new();
        assert!(dest.poll_bulk(&mut answer));
        let (frame, _) = wire::decode_frame(&answer, &limits).expect("Loaded");
        assert!(matches!(
            frame.body,
            wire::FrameBody::Control(c) if c.kind == wire::ControlKind::Loaded
        ));
        let mut out = Vec::new();
        let run = wire::Control { kind: wire::ControlKind::Run, seq: 0, value: 0 };
        wire::encode_frame(
            &mut out,
            wire::VERSION_CURRENT,
            &wire::FrameBody::Control(run),
            &limits,
        )
        .expect("run");
        feed(&mut dest, StreamKind::Bulk, &out, sink);
        assert_eq!(dest.phase(), DestPhase::Running);
        assert!(sink.resumed, "the engine resumed the guest through its port");
        dest
    }

    /// A bulk window of `pages` zero pages from `first_page`.
    fn zero_window(first_page: u64, pages: usize) -> Vec<u8> {
        window_of(first_page, &vec![0u8; pages * PAGE_SIZE])
    }

    /// A bulk window of `data` (whole pages) from `first_page`.
    pub(super) fn window_of(first_page: u64, data: &[u8]) -> Vec<u8> {
        let meta = wire::WindowMeta { region: 0, first_page, request_id: 0, urgent_answer: false };
        let mut out = Vec::new();
        let limits = wire::Limits::default();
        wire::encode_page_window(
            &mut out,
            wire::VERSION_CURRENT,
            &meta,
            data,
            wire::Compression::None,
            &limits,
        )
        .expect("window");
        out
    }

    #[test]
    fn zero_pages_nobody_waits_for_stay_missing_but_a_waited_one_is_placed() {
        let mut sink = Recorder::default();
        let mut dest = running_postcopy(&mut sink);
        // A vCPU faults on page 5: a request goes out, and it waits.
        dest.on_fault(5, 0, &mut sink).expect("fault");
        assert_eq!(dest.stats().network_faults, 1);
        // Pages 4..8 arrive, all zero, with a waiter on page 5: the run is placed.
        feed(&mut dest, StreamKind::Bulk, &zero_window(4, 4), &mut sink);
        assert!(dest.is_present(5), "the page a vCPU waits for must be placed");
        assert_eq!(sink.zeroed, vec![(4, 4)]);
        // Pages 8..12 arrive, all zero, and nobody waits: they stay missing, known zero.
        feed(&mut dest, StreamKind::Bulk, &zero_window(8, 4), &mut sink);
        for page in 8..12 {
            assert!(!dest.is_present(page), "page {page} should stay missing, known zero");
        }
        assert_eq!(sink.zeroed, vec![(4, 4)], "no placement for pages nobody waits on");
        assert_eq!(dest.stats().pages_left_zero, 4);
        // A later touch of a page left zero is a local fault, not a network one.
        dest.on_fault(9, 0, &mut sink).expect("fault");
        assert_eq!(dest.stats().network_faults, 1);
        assert_eq!(dest.stats().local_faults, 1);
        assert!(dest.is_present(9));
    }

    #[test]
    fn background_windows_are_placed_a_page_at_a_time_while_a_fault_waits() {
        let mut sink = Recorder::default();
        let mut dest = running_postcopy(&mut sink);
        dest.set_place_chunk(8);
        let data: Vec<u8> = (0..16 * PAGE_SIZE).map(|i| (i % 251) as u8 | 1).collect();
        // Nobody waits: the first chunk is 8 pages.
        feed(&mut dest, StreamKind::Bulk, &window_of(0, &data), &mut sink);
        assert_eq!(sink.placed, vec![(0, 8)]);
        dest.place_more(&mut sink).expect("place");
        assert!(!dest.placing());
        // A vCPU waits on page 40: the next window goes a page per call, so the driver looks
        // for the answer between single pages.
        dest.on_fault(40, 0, &mut sink).expect("fault");
        sink.placed.clear();
        feed(&mut dest, StreamKind::Bulk, &window_of(16, &data), &mut sink);
        dest.place_more(&mut sink).expect("place");
        assert_eq!(sink.placed, vec![(16, 1), (17, 1)]);
        assert!(dest.placing());
    }
}
