//! Every queue of the engines has a bound, and each bound does what the design says at it:
//! the source's bulk windows wait at the unacknowledged-page cap while fault answers still go,
//! a fault answer is never queued twice for one page, a full outbox leaves the answer to the
//! push, and the destination refuses input that would grow a full queue with an error naming
//! it. The engines are driven through their sans-IO API, frames carried by hand.

use hybridmig::dest::engine::{ACK_EVERY_WINDOWS, BULK_FRAMES_MAX, FAULTS_WAITING_MAX};
use hybridmig::dest::{DestEngine, DestError, DestQueue};
use hybridmig::ports::{DestVm, EmbedError, MigratableVm, PageSink, SinkError};
use hybridmig::session::{SessionIntent, SessionParams};
use hybridmig::sim::{SimGuestSpec, SimVm};
use hybridmig::source::engine::OUTBOX_RUNS_MAX;
use hybridmig::source::{LivePass, Phase, SourceConfig, SourceEngine};
use hybridmig::wire::{self, FrameBody, MigrationMode, StreamKind};

/// A sink that places nothing: only the engines' decisions are looked at.
struct NullSink;

impl PageSink for NullSink {
    fn place(&mut self, _first: u64, _data: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    fn place_zero(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn overwrite(&mut self, _first: u64, _data: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    fn discard(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn wake(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
        Ok(())
    }
}

impl DestVm for NullSink {
    fn restore_state(&mut self, _blob: &[u8]) -> Result<(), EmbedError> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), EmbedError> {
        Ok(())
    }
}

/// Each frame of `buf`, in order.
fn each_frame(buf: &[u8], mut f: impl FnMut(wire::Frame<'_>)) {
    let limits = wire::Limits::default();
    let mut at = 0;
    while at < buf.len() {
        let (frame, used) = wire::decode_frame(&buf[at..], &limits).expect("frame");
        f(frame);
        at += used;
    }
}

/// A post-copy migration of a one-region guest of `pages` pages, resumed on the destination.
struct Pair {
    vm: SimVm,
    source: SourceEngine,
    dest: DestEngine,
}

impl Pair {
    fn resumed(pages: u64, tune: impl FnOnce(&mut SourceConfig)) -> Self {
        let spec = SimGuestSpec { region_pages: vec![pages], hot_pages: 16, ..Default::default() };
        let mut vm = SimVm::new(&spec);
        let mut cfg = SourceConfig::new(MigrationMode::Postcopy, 21);
        tune(&mut cfg);
        let session = SessionParams {
            version: wire::VERSION_CURRENT,
            session_id: 21,
            mode: cfg.mode,
            intent: SessionIntent::New,
            regions: vm
                .regions()
                .iter()
                .map(|r| wire::Region { guest_phys: r.guest_phys, size_bytes: r.size_bytes })
                .collect(),
            page_size: wire::PAGE_SIZE as u32,
        };
        let mut source = SourceEngine::new(cfg, &session, &vm).expect("source");
        let dest = DestEngine::new(source.layout().clone(), &session);
        source.start(&mut vm).expect("start");
        let mut pair = Self { vm, source, dest };
        // The need set, the state, the destination's Loaded and the Run, one frame per poll,
        // until the push starts.
        // A hybrid source also waits for the destination to confirm its live pass.
        for _ in 0..100_000 {
            if pair.source.phase() == Phase::Push {
                return pair;
            }
            let mut buf = Vec::new();
            if !pair.source.awaits_loaded()
                && pair.source.poll_bulk(&mut buf, &mut pair.vm).expect("switch-over")
            {
                pair.deliver_to_dest(StreamKind::Bulk, &buf);
                continue;
            }
            let mut answer = Vec::new();
            assert!(pair.dest.poll_bulk(&mut answer), "neither side has a frame to send");
            pair.deliver_to_source(StreamKind::Bulk, &answer);
        }
        panic!("the push never started");
    }

    fn deliver_to_dest(&mut self, stream: StreamKind, buf: &[u8]) {
        let dest = &mut self.dest;
        each_frame(buf, |frame| {
            dest.on_frame(stream, frame, &mut NullSink).expect("dest on_frame");
        });
    }

    fn deliver_to_source(&mut self, stream: StreamKind, buf: &[u8]) {
        let (source, vm) = (&mut self.source, &mut self.vm);
        each_frame(buf, |frame| source.on_frame(stream, frame, vm).expect("source on_frame"));
    }

    /// A fault request for `page`, as the destination would send it.
    fn request(page: u64, request_id: u32) -> Vec<u8> {
        let req = wire::FaultRequest { region: 0, page, vcpu: 0, request_id };
        let mut out = Vec::new();
        let body = FrameBody::FaultRequest(req);
        wire::encode_frame(&mut out, wire::VERSION_CURRENT, &body, &wire::Limits::default())
            .expect("request");
        out
    }

    /// (first page, page count) of every page window in `buf`.
    fn windows(buf: &[u8]) -> Vec<(u64, u32)> {
        let mut windows = Vec::new();
        each_frame(buf, |frame| {
            if let FrameBody::PageWindow(w) = frame.body {
                windows.push((w.first_page, w.page_count));
            }
        });
        windows
    }
}

#[test]
fn at_the_cap_no_bulk_window_goes_until_an_ack_but_fault_answers_do() {
    let mut pair = Pair::resumed(1024, |cfg| {
        cfg.push_pages = 4;
        cfg.unacked_cap_pages = cfg.min_unacked_cap_pages();
    });
    let cap = ACK_EVERY_WINDOWS * 4;
    // The push runs until the cap: the destination has acknowledged nothing (nothing arrived).
    let mut held = Vec::new();
    let mut windows = 0;
    while pair.source.poll_bulk(&mut held, &mut pair.vm).expect("push") {
        windows += 1;
        assert!(windows < 1024, "the push never stopped");
    }
    let unacked = pair.source.unacked_pages(StreamKind::Bulk);
    assert!((cap..cap + 4).contains(&unacked), "{unacked} bulk pages unacknowledged at the cap");
    assert_eq!(pair.source.phase(), Phase::Push, "memory is left to push");
    assert_eq!(pair.source.stats().unacked_cap_stalls, 1);
    let mut more = Vec::new();
    assert!(!pair.source.poll_bulk(&mut more, &mut pair.vm).expect("poll"), "no window at the cap");
    assert!(more.is_empty());

    // A vCPU faults on a page the push has not reached: its answer goes on urgent at the cap.
    let page = 900;
    pair.dest.on_fault(page, 0, &mut NullSink).expect("fault");
    let mut request = Vec::new();
    assert!(pair.dest.poll_urgent(&mut request));
    pair.deliver_to_source(StreamKind::Urgent, &request);
    let mut answer = Vec::new();
    assert!(pair.source.poll_urgent(&mut answer), "the fault answer must not wait at the cap");
    assert_eq!(Pair::windows(&answer), vec![(page, 1)]);
    pair.deliver_to_dest(StreamKind::Urgent, &answer);
    assert!(pair.dest.is_present(page));

    // The held windows arrive, the destination acknowledges them, and the push goes on.
    pair.deliver_to_dest(StreamKind::Bulk, &held);
    let mut acks = Vec::new();
    assert!(pair.dest.poll_bulk(&mut acks));
    pair.deliver_to_source(StreamKind::Bulk, &acks);
    assert!(pair.source.unacked_pages(StreamKind::Bulk) < cap, "the ack released room");
    let mut next = Vec::new();
    assert!(pair.source.poll_bulk(&mut next, &mut pair.vm).expect("push"), "push resumed");
}

#[test]
fn a_fault_asked_again_while_its_answer_waits_is_not_queued_twice() {
    let mut pair = Pair::resumed(512, |cfg| cfg.push_delay_ms = 3_600_000);
    let request = Pair::request(10, 1);
    pair.deliver_to_source(StreamKind::Urgent, &request);
    // The same page again before the urgent stream took the answer: on urgent, and on bulk
    // (the destination's retry path), which also answers on bulk.
    pair.deliver_to_source(StreamKind::Urgent, &Pair::request(10, 2));
    pair.deliver_to_source(StreamKind::Bulk, &Pair::request(10, 3));
    assert_eq!(pair.source.stats().fault_answers_deduped, 2);
    assert_eq!(pair.source.stats().faults_served, 1);
    let mut urgent = Vec::new();
    while pair.source.poll_urgent(&mut urgent) {}
    let carrying = |w: &(u64, u32)| w.0 <= 10 && 10 < w.0 + u64::from(w.1);
    let urgent_copies = Pair::windows(&urgent).iter().filter(|w| carrying(w)).count();
    assert_eq!(urgent_copies, 1, "page 10 queued once on urgent: {:?}", Pair::windows(&urgent));
    let mut bulk = Vec::new();
    while pair.source.poll_bulk(&mut bulk, &mut pair.vm).expect("bulk") {}
    assert_eq!(Pair::windows(&bulk), vec![(10, 1)], "one answer on bulk for the retry");
}

#[test]
fn a_full_outbox_leaves_the_answer_to_the_push_which_takes_it_next() {
    let pages = OUTBOX_RUNS_MAX as u64 + 8;
    let mut pair = Pair::resumed(pages, |_| {});
    for page in 0..=OUTBOX_RUNS_MAX as u64 {
        pair.deliver_to_source(StreamKind::Urgent, &Pair::request(page, page as u32 + 1));
    }
    let stats = pair.source.stats();
    assert_eq!(stats.faults_served, OUTBOX_RUNS_MAX as u64 + 1);
    assert_eq!(stats.fault_answers_deferred, 1);
    let mut bulk = Vec::new();
    assert!(pair.source.poll_bulk(&mut bulk, &mut pair.vm).expect("push"));
    let deferred = OUTBOX_RUNS_MAX as u64;
    assert_eq!(Pair::windows(&bulk).first().map(|w| w.0), Some(deferred), "push takes it next");
    let mut answered = 0;
    loop {
        let mut urgent = Vec::new();
        if !pair.source.poll_urgent(&mut urgent) {
            break;
        }
        answered += Pair::windows(&urgent).len();
    }
    assert_eq!(answered, OUTBOX_RUNS_MAX, "every queued answer still goes");
}

#[test]
fn the_destination_coalesces_acks_and_refuses_input_past_its_bounds() {
    let pages = FAULTS_WAITING_MAX as u64 + 512;
    let mut pair = Pair::resumed(pages, |_| {});
    // 96 windows, nothing sent back meanwhile: one acknowledgement, of all of them.
    for first in 0..96 {
        let meta =
            wire::WindowMeta { region: 0, first_page: first, request_id: 0, urgent_answer: false };
        let mut window = Vec::new();
        let zero = vec![0u8; wire::PAGE_SIZE];
        wire::encode_page_window(
            &mut window,
            wire::VERSION_CURRENT,
            &meta,
            &zero,
            wire::Compression::None,
            &wire::Limits::default(),
        )
        .expect("window");
        pair.deliver_to_dest(StreamKind::Bulk, &window);
    }
    let mut out = Vec::new();
    while pair.dest.poll_bulk(&mut out) {}
    let mut acks = Vec::new();
    each_frame(&out, |frame| {
        if let FrameBody::Control(c) = frame.body {
            acks.push((c.kind, c.seq, c.value));
        }
    });
    assert_eq!(acks, vec![(wire::ControlKind::Ack, 96, 0)]);

    // Faults waiting for the network: one per blocked thread, and no more than the bound.
    for page in 200..200 + FAULTS_WAITING_MAX as u64 {
        pair.dest.on_fault(page, 0, &mut NullSink).expect("fault within the bound");
    }
    let past = pair.dest.on_fault(100, 0, &mut NullSink);
    assert!(
        matches!(past, Err(DestError::QueueFull { queue: DestQueue::FaultsWaiting, bound })
            if bound == FAULTS_WAITING_MAX),
        "{past:?}"
    );
    // A fault on a page already asked for adds nothing and is fine.
    pair.dest.on_fault(200, 0, &mut NullSink).expect("a second fault on a waiting page");

    // Pings the source never reads the Pongs of: refused once the bulk queue is full.
    let mut refused = None;
    for seq in 0..=BULK_FRAMES_MAX as u64 {
        let ping = wire::Control { kind: wire::ControlKind::Ping, seq, value: 0 };
        let mut frame = Vec::new();
        let body = FrameBody::Control(ping);
        wire::encode_frame(&mut frame, wire::VERSION_CURRENT, &body, &wire::Limits::default())
            .expect("ping");
        let (decoded, _) = wire::decode_frame(&frame, &wire::Limits::default()).expect("frame");
        if let Err(e) = pair.dest.on_frame(StreamKind::Bulk, decoded, &mut NullSink) {
            refused = Some((seq, e));
            break;
        }
    }
    let (seq, error) = refused.expect("Pings past the bound are refused");
    assert!(seq <= BULK_FRAMES_MAX as u64);
    assert!(
        matches!(error, DestError::QueueFull { queue: DestQueue::BulkFrames, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("frames for the bulk stream"), "{error}");
}

#[test]
fn a_cap_below_one_acknowledgement_interval_is_refused() {
    let vm = SimVm::new(&SimGuestSpec::default());
    let session = SessionParams {
        version: wire::VERSION_CURRENT,
        session_id: 5,
        mode: MigrationMode::Postcopy,
        intent: SessionIntent::New,
        regions: vm
            .regions()
            .iter()
            .map(|r| wire::Region { guest_phys: r.guest_phys, size_bytes: r.size_bytes })
            .collect(),
        page_size: wire::PAGE_SIZE as u32,
    };
    let mut cfg = SourceConfig::new(MigrationMode::Postcopy, 5);
    cfg.unacked_cap_pages = cfg.min_unacked_cap_pages() - 1;
    let error = SourceEngine::new(cfg, &session, &vm).expect_err("a cap that would wait forever");
    assert!(error.to_string().contains("unacked_cap_pages"), "{error}");
}

#[test]
fn a_faulted_page_can_be_polled_alone_and_its_window_after() {
    let mut pair = Pair::resumed(512, |cfg| {
        cfg.mode = MigrationMode::Hybrid;
        cfg.window_pages = 8;
        cfg.adaptive_window = false;
        cfg.live_pass = LivePass::WorkingSet;
        cfg.push_delay_ms = 3_600_000;
    });
    // Page 4 lies in the guest's written (hot) pages, so its window has pages to carry.
    pair.deliver_to_source(StreamKind::Urgent, &Pair::request(4, 1));
    pair.deliver_to_source(StreamKind::Urgent, &Pair::request(300, 2));
    // A sealing driver takes the faulting page alone, so it is sealed and opened as its own
    // record; the window follows in the next poll, and the next answer's page alone again.
    let mut alone = Vec::new();
    assert!(pair.source.poll_faulted_page(&mut alone));
    assert_eq!(Pair::windows(&alone), vec![(4, 1)]);
    let mut none = Vec::new();
    assert!(!pair.source.poll_faulted_page(&mut none), "a window run is not a faulted page");
    let mut window = Vec::new();
    assert!(pair.source.poll_urgent(&mut window));
    let runs = Pair::windows(&window);
    let pages: u32 = runs.iter().map(|w| w.1).sum();
    assert_eq!(pages, 7, "the rest of an 8-page window: {runs:?}");
    assert!(runs.iter().all(|w| w.0 != 300), "one poll holds one answer: {runs:?}");
    let mut next = Vec::new();
    assert!(pair.source.poll_faulted_page(&mut next));
    assert_eq!(Pair::windows(&next), vec![(300, 1)]);
}
