//! The destination engine: a sans-IO state machine.
//!
//! Inputs: frames from the two streams, and page faults (a guest page the running VM touched
//! while it is missing). Outputs: fault requests on the urgent stream, acknowledgements and
//! DoneAck on the bulk stream, pages handed to a [`PageSink`], and [`DestEvent`]s telling the
//! driver when to restore the state and resume the guest.
//!
//! Residency of each page: *present* (placed here), *requested* (a fault request is in
//! flight), or missing. After the switch-over the *need set* says which missing pages must come
//! from the source; a missing page outside it is zero and is placed locally.

use super::DestError;
use crate::memory::{Layout, PageBitmap, PAGE_SIZE};
use crate::metrics::LatencyHistogram;
use crate::ports::{memory_digest, zero_page_crc, Clock, MonoClock, PageSink};
use crate::session::SessionParams;
use crate::wire::{self, MigrationMode, StreamKind};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What the driver must do after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestEvent {
    /// Restore this state blob and resume the guest now.
    Resume(Vec<u8>),
    /// Every page is here and the digests matched: the source is no longer needed.
    Complete,
}

/// Where the destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestPhase {
    /// Receiving pages before the switch-over.
    PreSwitch,
    /// Guest running; pages arrive on demand and in the background.
    Running,
    /// Every page is here.
    Complete,
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
    present: PageBitmap,
    requested: PageBitmap,
    need: Option<PageBitmap>,
    /// The memory `need` takes when the first need-set frame arrives, allocated (and faulted
    /// in) up front so that the downtime does not pay for it.
    need_spare: PageBitmap,
    /// Needed pages not yet present.
    outstanding: u64,
    page_crc: Vec<u32>,
    fault_started_ns: HashMap<u64, u64>,
    fault_hist: LatencyHistogram,
    next_request_id: u32,
    urgent_out: VecDeque<Vec<u8>>,
    bulk_out: VecDeque<Vec<u8>>,
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
    stats: DestStats,
}

impl std::fmt::Debug for DestEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestEngine")
            .field("phase", &self.phase)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A decoded background window of which pages `next..count` are still to be placed.
struct Placing {
    first: u64,
    count: u32,
    next: u32,
    zeros: wire::PageMask,
    decoded: Vec<u8>,
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
            present: PageBitmap::new(pages),
            requested: PageBitmap::new(pages),
            need: None,
            need_spare: PageBitmap::new(pages),
            outstanding: 0,
            page_crc: vec![zero_page_crc(); pages as usize],
            fault_started_ns: HashMap::new(),
            fault_hist: LatencyHistogram::new(),
            next_request_id: 1,
            urgent_out: VecDeque::new(),
            bulk_out: VecDeque::new(),
            scratch,
            place_chunk_pages: 0,
            placing: None,
            spare_decoded: Vec::new(),
            done: None,
            windows_received: [0; 2],
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
        self.present.get(page)
    }

    /// The session this engine receives.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The migration mode of the session.
    pub fn mode(&self) -> MigrationMode {
        self.mode
    }

    /// Appends the next urgent frame (fault requests) to `out`; false when none.
    pub fn poll_urgent(&mut self, out: &mut Vec<u8>) -> bool {
        Self::pop_into(&mut self.urgent_out, out)
    }

    /// Appends the next bulk-stream frame (acks, DoneAck) to `out`; false when none.
    pub fn poll_bulk(&mut self, out: &mut Vec<u8>) -> bool {
        Self::pop_into(&mut self.bulk_out, out)
    }

    fn pop_into(queue: &mut VecDeque<Vec<u8>>, out: &mut Vec<u8>) -> bool {
        match queue.pop_front() {
            Some(frame) => {
                out.extend_from_slice(&frame);
                true
            }
            None => false,
        }
    }

    /// Handles one frame from `stream`.
    pub fn on_frame(
        &mut self,
        stream: StreamKind,
        frame: wire::Frame<'_>,
        sink: &mut dyn PageSink,
    ) -> Result<Option<DestEvent>, DestError> {
        let unexpected = |frame: &wire::FrameBody<'_>, phase| DestError::UnexpectedFrame {
            stream,
            frame: frame.frame_type(),
            phase,
        };
        let body = frame.body;
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
                self.on_state(blob)
            }
            wire::FrameBody::Done(done) if self.phase != DestPhase::PreSwitch => {
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

    /// Places the pages of a window that are not here yet; rewrites present ones before the
    /// switch-over (a pre-copy round re-sending a dirtied page), drops them after.
    fn on_window(
        &mut self,
        window: &wire::PageWindowRef<'_>,
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        let count = window.page_count;
        let first = self.layout.global(window.region, window.first_page, u64::from(count))?;
        let len = count as usize * PAGE_SIZE;
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = window
            .decode_into(&mut scratch[..len])
            .map_err(DestError::from)
            .and_then(|zeros| self.place_range(first, 0..count, &zeros, &scratch[..len], sink));
        self.scratch = scratch;
        result
    }

    /// Places pages `range` (window-relative) of a decoded window starting at page `first`.
    fn place_range(
        &mut self,
        first: u64,
        range: std::ops::Range<u32>,
        zeros: &wire::PageMask,
        decoded: &[u8],
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        let mut i = range.start;
        while i < range.end {
            let page = first + u64::from(i);
            let is_zero = zeros.contains(i);
            // Extend a run of pages with the same (present, zero) shape.
            let present = self.present.get(page);
            let mut j = i + 1;
            while j < range.end
                && self.present.get(first + u64::from(j)) == present
                && zeros.contains(j) == is_zero
            {
                j += 1;
            }
            let bytes = &decoded[i as usize * PAGE_SIZE..j as usize * PAGE_SIZE];
            self.place_run(first + u64::from(i), bytes, present, is_zero, sink)?;
            i = j;
        }
        Ok(())
    }

    /// Sets how many pages of a background window are placed per [`DestEngine::place_more`]
    /// call once the guest runs (0, the default: whole windows in `on_frame`).
    ///
    /// Placing 64 pages with UFFDIO_COPY takes about 0.7 ms on a nested host. A driver that
    /// serves faults between the chunks keeps a fault answer from waiting behind the rest of
    /// a background window. Pages of the window that a fault answer places meanwhile are
    /// skipped when their chunk comes.
    pub fn set_place_chunk(&mut self, pages: u32) {
        self.place_chunk_pages = pages;
    }

    /// Whether a background window is decoded but not all placed; call
    /// [`DestEngine::place_more`] until false.
    pub fn placing(&self) -> bool {
        self.placing.is_some()
    }

    /// Places the next chunk of the window in progress. When the window is finished it is
    /// counted, and the migration may complete.
    pub fn place_more(&mut self, sink: &mut dyn PageSink) -> Result<Option<DestEvent>, DestError> {
        // While a vCPU waits on a fault answer, a page at a time: the driver looks for the
        // answer between chunks, and a chunk of 8 takes 30 to 80 us to place here.
        let chunk = if self.requested.count() > 0 { 1 } else { self.place_chunk_pages.max(1) };
        Ok(if self.advance_placing(chunk, sink)? { self.check_complete() } else { None })
    }

    /// Places up to `pages` more pages of the window in progress; true when that finished it.
    fn advance_placing(&mut self, pages: u32, sink: &mut dyn PageSink) -> Result<bool, DestError> {
        let Some(mut job) = self.placing.take() else {
            return Ok(false);
        };
        let end = job.next.saturating_add(pages).min(job.count);
        let result = self.place_range(job.first, job.next..end, &job.zeros, &job.decoded, sink);
        result?;
        job.next = end;
        if end < job.count {
            self.placing = Some(job);
            return Ok(false);
        }
        self.spare_decoded = job.decoded;
        self.count_window(StreamKind::Bulk)?;
        Ok(true)
    }

    /// Decodes a background window and places its first chunk (see `set_place_chunk`).
    fn start_placing(
        &mut self,
        window: &wire::PageWindowRef<'_>,
        sink: &mut dyn PageSink,
    ) -> Result<Option<DestEvent>, DestError> {
        let count = window.page_count;
        let first = self.layout.global(window.region, window.first_page, u64::from(count))?;
        let mut decoded = std::mem::take(&mut self.spare_decoded);
        decoded.resize(count as usize * PAGE_SIZE, 0);
        // A window that does not decode ends the migration, so its buffer need not be kept.
        let zeros = window.decode_into(&mut decoded)?;
        self.placing = Some(Placing { first, count, next: 0, zeros, decoded });
        self.place_more(sink)
    }

    /// Finishes a window in progress before a later bulk frame is handled (bulk frames are
    /// applied in order). Completion is checked by the handler of that later frame.
    fn finish_placing(&mut self, sink: &mut dyn PageSink) -> Result<(), DestError> {
        self.advance_placing(u32::MAX, sink)?;
        Ok(())
    }

    fn place_run(
        &mut self,
        first: u64,
        bytes: &[u8],
        present: bool,
        is_zero: bool,
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        let count = (bytes.len() / PAGE_SIZE) as u32;
        if present && self.phase != DestPhase::PreSwitch {
            self.stats.pages_duplicate += u64::from(count);
            return Ok(());
        }
        if is_zero && !present && self.leave_zero(first, u64::from(count)) {
            return Ok(());
        }
        match (present, is_zero) {
            (false, false) => sink.place(first, bytes)?,
            (false, true) => sink.place_zero(first, u64::from(count))?,
            (true, false) => sink.overwrite(first, bytes)?,
            (true, true) => {
                for k in 0..u64::from(count) {
                    sink.overwrite(first + k, &ZERO_PAGE)?;
                }
            }
        }
        // A fault's latency ends when its page is in (the placement above woke its waiter).
        let now_ns = self.clock.now_ns();
        for k in 0..count {
            let page = first + u64::from(k);
            self.page_crc[page as usize] = if is_zero {
                zero_page_crc()
            } else {
                crc32fast::hash(&bytes[k as usize * PAGE_SIZE..(k as usize + 1) * PAGE_SIZE])
            };
            self.mark_present(page, now_ns);
        }
        self.stats.pages_placed += u64::from(count);
        Ok(())
    }

    /// A zero page that is missing here need not be placed: it stays missing, known zero,
    /// and a vCPU that touches it gets a local zero page (`on_fault`, outside the need set).
    /// That saves one UFFDIO_ZEROPAGE per run; on a guest whose data alternates with zero
    /// pages it is half of all placements. Not when a fault waits on a page of the run: the
    /// fault's answer must wake it.
    fn leave_zero(&mut self, first: u64, count: u64) -> bool {
        if (first..first + count).any(|page| self.requested.get(page)) {
            return false;
        }
        let running = self.phase == DestPhase::Running;
        for page in first..first + count {
            if self.need.as_mut().is_some_and(|need| need.clear(page)) && running {
                self.outstanding -= 1;
            }
            self.page_crc[page as usize] = zero_page_crc();
        }
        self.stats.pages_left_zero += count;
        true
    }

    fn mark_present(&mut self, page: u64, now_ns: u64) {
        if !self.present.set(page) {
            return;
        }
        // Before the state arrives `outstanding` is not counted yet (on_state counts it).
        if self.phase == DestPhase::Running && self.need.as_ref().is_some_and(|n| n.get(page)) {
            self.outstanding -= 1;
        }
        if self.requested.clear(page) {
            if let Some(start) = self.fault_started_ns.remove(&page) {
                let latency_us = now_ns.saturating_sub(start) / 1000;
                tracing::trace!(
                    page,
                    latency_us,
                    at_ns = now_ns,
                    since_resume_us = start.saturating_sub(self.stats.state_received_ns) / 1000,
                    "destination: fault served"
                );
                self.fault_hist.record(latency_us);
            }
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
        let need = self.need.get_or_insert_with(|| std::mem::take(&mut self.need_spare));
        let base = self.layout.global(set.region, 0, 1)?;
        for run in set.runs(&self.wire_regions)? {
            let first = base + run.first_page;
            need.set_range(first, run.count);
            let stop = first + run.count;
            let mut page = first;
            // Jump from present run to present run: a post-copy need set of a large guest holds
            // about every page, and nearly none is present yet.
            while let Some(start) = self.present.next_set_before(page, stop) {
                page = start;
                let end = self.present.next_unset(page).unwrap_or(u64::MAX).min(stop);
                sink.discard(page, end - page)?;
                for p in page..end {
                    self.present.clear(p);
                    self.page_crc[p as usize] = zero_page_crc();
                }
                self.stats.pages_discarded += end - page;
                page = end;
            }
        }
        Ok(())
    }

    fn on_state(&mut self, blob: &[u8]) -> Result<Option<DestEvent>, DestError> {
        self.stats.state_received_ns = self.clock.now_ns();
        tracing::info!(blob_bytes = blob.len(), "destination: state arrived, resuming the guest");
        let need = self.need.get_or_insert_with(|| std::mem::take(&mut self.need_spare));
        self.outstanding = need.count_and_not(&self.present);
        self.phase = DestPhase::Running;
        Ok(Some(DestEvent::Resume(blob.to_vec())))
    }

    /// A vCPU touched missing page `page`.
    pub fn on_fault(
        &mut self,
        page: u64,
        vcpu: u32,
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        if page >= self.layout.total_pages() {
            return Err(DestError::FaultOutsideMemory { page });
        }
        if self.present.get(page) {
            // Placed between the fault and its message: the waiter still needs a wake-up.
            self.stats.local_faults += 1;
            sink.wake(page, 1)?;
            return Ok(());
        }
        let needed = match &self.need {
            Some(need) => need.get(page),
            None => return Err(DestError::FaultBeforeSwitch { page }),
        };
        if !needed {
            self.stats.local_faults += 1;
            sink.place_zero(page, 1)?;
            self.mark_present(page, self.clock.now_ns());
            return Ok(());
        }
        if !self.requested.set(page) {
            return Ok(()); // a request is in flight; the answer wakes every waiter
        }
        self.stats.network_faults += 1;
        let now_ns = self.clock.now_ns();
        tracing::trace!(page, at_ns = now_ns, "destination: fault request");
        self.fault_started_ns.insert(page, now_ns);
        let (region, page_in_region) =
            self.layout.locate(page).ok_or(DestError::FaultOutsideMemory { page })?;
        let request = wire::FaultRequest {
            region,
            page: page_in_region,
            vcpu,
            request_id: self.next_request_id,
        };
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        let mut out = Vec::new();
        wire::encode_frame(
            &mut out,
            self.version,
            &wire::FrameBody::FaultRequest(request),
            &self.limits,
        )?;
        self.urgent_out.push_back(out);
        Ok(())
    }

    /// Answers a Ping with a Pong of the same sequence number: every frame before the Ping on
    /// this stream has been placed by now, which is what the source waits for before it pauses.
    fn on_control(&mut self, c: &wire::Control) -> Result<(), DestError> {
        if c.kind != wire::ControlKind::Ping {
            return Ok(());
        }
        let pong = wire::Control { kind: wire::ControlKind::Pong, seq: c.seq, value: c.value };
        let mut out = Vec::new();
        wire::encode_frame(&mut out, self.version, &wire::FrameBody::Control(pong), &self.limits)?;
        self.bulk_out.push_back(out);
        Ok(())
    }

    fn count_window(&mut self, stream: StreamKind) -> Result<(), DestError> {
        let i = stream.index();
        self.windows_received[i] += 1;
        if self.windows_received[i] % ACK_EVERY_WINDOWS == 0 {
            self.queue_ack(stream)?;
        }
        Ok(())
    }

    /// Queues an acknowledgement of every window received so far on `stream` (on bulk).
    fn queue_ack(&mut self, stream: StreamKind) -> Result<(), DestError> {
        let ack = wire::Control {
            kind: wire::ControlKind::Ack,
            seq: self.windows_received[stream.index()],
            value: stream.index() as u64,
        };
        let mut out = Vec::new();
        wire::encode_frame(&mut out, self.version, &wire::FrameBody::Control(ack), &self.limits)?;
        self.bulk_out.push_back(out);
        Ok(())
    }

    /// Completes once Done arrived and every needed page is present: checks the digest and
    /// queues DoneAck.
    fn check_complete(&mut self) -> Option<DestEvent> {
        if self.phase != DestPhase::Running || self.outstanding != 0 {
            return None;
        }
        let done = self.done?;
        let digest = memory_digest(&self.page_crc);
        self.stats.memory_digest = digest;
        self.stats.complete_ns = self.clock.now_ns();
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
        // Everything received is acknowledged before the DoneAck.
        for stream in StreamKind::ALL {
            if self.queue_ack(stream).is_err() {
                return None;
            }
        }
        let mut out = Vec::new();
        if wire::encode_frame(&mut out, self.version, &wire::FrameBody::DoneAck(ack), &self.limits)
            .is_ok()
        {
            self.bulk_out.push_back(out);
        }
        self.phase = DestPhase::Complete;
        tracing::info!(
            digest,
            matched = verdict == wire::DoneVerdict::Match,
            "destination: every page present"
        );
        Some(DestEvent::Complete)
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
    struct Recorder {
        placed: Vec<(u64, u64)>,
        zeroed: Vec<(u64, u64)>,
        woken: Vec<(u64, u64)>,
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

    fn feed(dest: &mut DestEngine, stream: StreamKind, bytes: &[u8], sink: &mut Recorder) {
        let (frame, _) = wire::decode_frame(bytes, &wire::Limits::default()).expect("frame");
        dest.on_frame(stream, frame, sink).expect("on_frame");
    }

    /// A post-copy destination of 64 pages, running, with every page in its need set.
    fn running_postcopy(sink: &mut Recorder) -> DestEngine {
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
        assert_eq!(dest.phase(), DestPhase::Running);
        dest
    }

    /// A bulk window of `pages` zero pages from `first_page`.
    fn zero_window(first_page: u64, pages: usize) -> Vec<u8> {
        window_of(first_page, &vec![0u8; pages * PAGE_SIZE])
    }

    /// A bulk window of `data` (whole pages) from `first_page`.
    fn window_of(first_page: u64, data: &[u8]) -> Vec<u8> {
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
