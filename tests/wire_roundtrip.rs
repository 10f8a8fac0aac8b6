//! Round trips: every frame type, encoded then decoded, must come back identical; page windows
//! must reproduce the guest's bytes exactly, whatever mix of pages and compression.

mod wire_common;

use hybridmig::wire::*;
use proptest::prelude::*;
use wire_common::{make_pages, PageKind};

fn kind_strategy() -> impl Strategy<Value = PageKind> {
    prop_oneof![
        Just(PageKind::Zero),
        Just(PageKind::Random),
        Just(PageKind::Text),
        Just(PageKind::Sparse),
    ]
}

fn window_kinds() -> impl Strategy<Value = Vec<PageKind>> {
    prop_oneof![
        // Uniform windows, the common case, and mixed ones.
        (kind_strategy(), 1usize..=32).prop_map(|(k, n)| vec![k; n]),
        prop::collection::vec(kind_strategy(), 1..=32),
    ]
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Lz4)]
}

fn round_trip(version: u16, body: FrameBody<'_>) {
    let limits = Limits::default();
    let mut out = vec![0xAA]; // something before the frame: encoders must append
    let n = encode_frame(&mut out, version, &body, &limits).expect("encode");
    assert_eq!(out.len(), n + 1);
    let (frame, used) = decode_frame(&out[1..], &limits).expect("decode");
    assert_eq!(used, n);
    assert_eq!(frame, Frame { version, body });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn page_window_round_trip(
        kinds in window_kinds(),
        seed in any::<u64>(),
        version in VERSION_MIN..=VERSION_CURRENT,
        comp in compression(),
        region in 0u32..8,
        first_page in 0u64..1_000_000,
        request_id in any::<u32>(),
        urgent in any::<bool>(),
    ) {
        let limits = Limits::default();
        let pages = make_pages(&kinds, seed);
        let request_id = if version >= 2 { request_id } else { 0 };
        let meta = WindowMeta { region, first_page, request_id, urgent_answer: urgent };
        let mut out = Vec::new();
        let stats = encode_page_window(&mut out, version, &meta, &pages, comp, &limits).unwrap();
        prop_assert_eq!(stats.frame_bytes, out.len());
        prop_assert_eq!(stats.zero_pages + stats.raw_pages + stats.lz4_pages, kinds.len() as u32);

        let (frame, used) = decode_frame(&out, &limits).unwrap();
        prop_assert_eq!(used, out.len());
        let FrameBody::PageWindow(w) = frame.body else { panic!("not a window: {frame:?}") };
        prop_assert_eq!((w.region, w.first_page, w.request_id, w.urgent_answer),
            (region, first_page, request_id, urgent));
        prop_assert_eq!(w.page_count as usize, kinds.len());
        prop_assert_eq!(w.encoding, stats.encoding);

        // Poison the destination so that untouched bytes would show.
        let mut dest = vec![0x5Au8; pages.len()];
        let zero = w.decode_into(&mut dest).unwrap();
        let is_zero_kind: Vec<bool> = kinds.iter().map(|k| *k == PageKind::Zero).collect();
        for (i, page) in dest.chunks_exact(PAGE_SIZE).enumerate() {
            if zero.contains(i as u32) {
                prop_assert!(is_zero_kind[i], "page {} reported zero", i);
                prop_assert!(page.iter().all(|&b| b == 0x5A), "zero page {} was written", i);
            }
        }
        if version >= 2 || is_zero_kind.iter().all(|&z| z) {
            // v2 reports every zero page; v1 only all-zero windows.
            prop_assert_eq!(zero.count() as usize, is_zero_kind.iter().filter(|&&z| z).count());
        }
        zero.fill_zero_pages(&mut dest);
        prop_assert!(dest == pages, "decoded pages differ");
        if version == 1 {
            prop_assert_ne!(w.encoding, WindowEncoding::Mixed);
        }

        // Re-encoding the borrowed window reproduces the same frame.
        let mut again = Vec::new();
        let flags_body = FrameBody::PageWindow(w);
        encode_frame(&mut again, version, &flags_body, &limits).unwrap();
        prop_assert_eq!(again, out);
    }

    #[test]
    fn hello_round_trip(
        version in VERSION_MIN..=VERSION_CURRENT,
        max_version in any::<u16>(),
        session_id in any::<u64>(),
        urgent in any::<bool>(),
        mode in 0usize..4,
        sizes in prop::collection::vec((0u64..16, 1u64..1024), 0..8),
        auth in prop::collection::vec(any::<u8>(), 0..=1024),
        resume in any::<bool>(),
    ) {
        let mut regions = Vec::new();
        let mut next = 0u64;
        for (gap, pages) in sizes {
            let guest_phys = next + gap * PAGE_SIZE as u64;
            regions.push(Region { guest_phys, size_bytes: pages * PAGE_SIZE as u64 });
            next = guest_phys + pages * PAGE_SIZE as u64;
        }
        let modes = [MigrationMode::Precopy, MigrationMode::Postcopy, MigrationMode::Hybrid,
            MigrationMode::HybridPaper];
        let stream = if urgent { StreamKind::Urgent } else { StreamKind::Bulk };
        round_trip(version, FrameBody::Hello(Hello {
            max_version, session_id, stream, mode: modes[mode], page_size: PAGE_SIZE as u32,
            regions, auth_token: &auth, resume,
        }));
    }

    #[test]
    fn hello_ack_round_trip(
        version in VERSION_MIN..=VERSION_CURRENT,
        chosen in VERSION_MIN..=VERSION_CURRENT,
        session_id in any::<u64>(),
        reject in prop::option::of(0usize..6),
        auth in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let reasons = [RejectReason::BadAuth, RejectReason::Version, RejectReason::UnknownSession,
            RejectReason::LayoutMismatch, RejectReason::Busy, RejectReason::Mode];
        let verdict = reject.map_or(Verdict::Accept, |r| Verdict::Reject(reasons[r]));
        round_trip(version, FrameBody::HelloAck(HelloAck {
            version: chosen, session_id, stream: StreamKind::Bulk, verdict, auth_token: &auth,
        }));
    }

    #[test]
    fn small_frames_round_trip(
        version in VERSION_MIN..=VERSION_CURRENT,
        a in any::<u64>(), b in any::<u64>(), c in any::<u64>(),
        x in any::<u32>(), y in any::<u32>(), z in any::<u32>(),
        pick in 0usize..5,
        blob in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let request_id = if version >= 2 { z } else { 0 };
        round_trip(version, FrameBody::FaultRequest(FaultRequest { region: x, page: a, vcpu: y, request_id }));
        round_trip(version, FrameBody::Done(Done { pages: a, bytes: b, memory_digest: c }));
        let verdicts = [DoneVerdict::Match, DoneVerdict::DigestMismatch, DoneVerdict::CountMismatch];
        round_trip(version, FrameBody::DoneAck(DoneAck {
            counts: Done { pages: c, bytes: a, memory_digest: b }, verdict: verdicts[pick % 3],
        }));
        let kinds = [ControlKind::Pause, ControlKind::Resume, ControlKind::Ack, ControlKind::Ping,
            ControlKind::Pong];
        round_trip(version, FrameBody::Control(Control { kind: kinds[pick], seq: a, value: b }));
        round_trip(version, FrameBody::VmState(&blob));
    }

    #[test]
    fn dirty_set_round_trip(
        region_pages in 1u64..5000,
        density in 0u32..=100,
        clustered in any::<bool>(),
        seed in any::<u64>(),
        version in VERSION_MIN..=VERSION_CURRENT,
    ) {
        let mut rng = wire_common::Rng(seed);
        let mut bitmap = vec![0u64; region_pages.div_ceil(64) as usize];
        let mut page = 0;
        while page < region_pages {
            // Clustered sets have long runs (run-length wins), scattered ones favour the bitmap.
            let run = if clustered { 1 + rng.next_u64() % 64 } else { 1 };
            let dirty = (rng.next_u64() % 100) < u64::from(density);
            for p in page..(page + run).min(region_pages) {
                if dirty { bitmap[(p / 64) as usize] |= 1 << (p % 64); }
            }
            page += run;
        }
        let regions = [Region { guest_phys: 0, size_bytes: 1 << 20 },
            Region { guest_phys: 1 << 32, size_bytes: region_pages * PAGE_SIZE as u64 }];
        let limits = Limits::default();
        let mut out = Vec::new();
        let stats = encode_dirty_set(&mut out, version, 1, &bitmap, region_pages, &limits).unwrap();
        let expected_pages: u64 = bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        prop_assert_eq!(stats.pages, expected_pages);
        let (frame, _) = decode_frame(&out, &limits).unwrap();
        let FrameBody::DirtySet(set) = frame.body else { panic!("not a dirty set") };
        prop_assert_eq!(set.format, stats.format);
        let mut rebuilt = vec![0u64; bitmap.len()];
        let mut prev_end = None;
        for run in set.runs(&regions).unwrap() {
            prop_assert!(run.count > 0);
            prop_assert!(prev_end.is_none_or(|e| run.first_page > e), "runs not disjoint/ascending");
            prev_end = Some(run.first_page + run.count);
            for p in run.first_page..run.first_page + run.count {
                rebuilt[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
        prop_assert_eq!(rebuilt, bitmap);
        // The other format would not have been smaller.
        let body_len = set.body().len();
        let runs_len: usize = set.runs(&regions).unwrap().fold((0, 0u64), |(n, prev), r| {
            (n + varint_len(r.first_page - prev) + varint_len(r.count), r.first_page + r.count)
        }).0;
        prop_assert!(body_len <= runs_len.max(8), "chose {:?} of {} bytes over runs of {}", set.format, body_len, runs_len);
        round_trip(version, FrameBody::DirtySet(set));
    }

    #[test]
    fn reader_reassembles_any_chunking(
        kinds in window_kinds(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(1usize..9000, 1..40),
    ) {
        let limits = Limits::default();
        let pages = make_pages(&kinds, seed);
        let mut stream = Vec::new();
        let meta = WindowMeta { region: 0, first_page: 7, request_id: 9, urgent_answer: true };
        encode_page_window(&mut stream, 2, &meta, &pages, Compression::Lz4, &limits).unwrap();
        encode_frame(&mut stream, 2, &FrameBody::Control(Control { kind: ControlKind::Ack, seq: 1, value: 2 }), &limits).unwrap();
        encode_page_window(&mut stream, 2, &meta, &pages, Compression::None, &limits).unwrap();
        let mut reader = FrameReader::new(limits);
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < stream.len() {
            let want = *cut.next().unwrap_or(&1);
            let spare = reader.spare_capacity(want);
            let n = want.min(spare.len()).min(stream.len() - pos);
            spare[..n].copy_from_slice(&stream[pos..pos + n]);
            reader.commit(n).unwrap();
            pos += n;
            while let Some(frame) = reader.next_frame().unwrap() {
                let summary = match frame.body {
                    FrameBody::PageWindow(w) => {
                        let mut dest = vec![0u8; w.len_bytes()];
                        w.decode_into(&mut dest).unwrap().fill_zero_pages(&mut dest);
                        prop_assert!(dest == pages);
                        "window"
                    }
                    FrameBody::Control(_) => "control",
                    _ => "other",
                };
                got.push(summary);
            }
        }
        prop_assert_eq!(got, vec!["window", "control", "window"]);
        prop_assert_eq!(reader.buffered_bytes(), 0);
        // The buffer stays near one frame, it does not grow with the stream.
        prop_assert!(reader.capacity_bytes() <= 2 * stream.len() + (256 << 10));
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[test]
fn a_window_with_zero_pages_is_mixed_and_version_1_is_refused() {
    let limits = Limits::default();
    let pages = make_pages(&[PageKind::Zero, PageKind::Text, PageKind::Zero], 3);
    let meta = WindowMeta::default();
    let mut out = Vec::new();
    let old = encode_page_window(&mut out, 1, &meta, &pages, Compression::None, &limits);
    assert!(matches!(old, Err(WireError::UnsupportedVersion { got: 1, .. })));
    assert!(out.is_empty());
    let v2 = encode_page_window(&mut out, 2, &meta, &pages, Compression::None, &limits).unwrap();
    assert_eq!((v2.encoding, v2.zero_pages, v2.raw_pages), (WindowEncoding::Mixed, 2, 1));
}

#[test]
fn incompressible_pages_go_raw_and_zero_pages_cost_bits() {
    let limits = Limits::default();
    let meta = WindowMeta::default();
    let mut out = Vec::new();
    let random = make_pages(&[PageKind::Random; 16], 5);
    let s = encode_page_window(&mut out, 2, &meta, &random, Compression::Lz4, &limits).unwrap();
    assert_eq!((s.raw_pages, s.lz4_pages), (16, 0));
    out.clear();
    let zeros = vec![0u8; 16 * PAGE_SIZE];
    let s = encode_page_window(&mut out, 2, &meta, &zeros, Compression::Lz4, &limits).unwrap();
    assert_eq!(s.encoding, WindowEncoding::ZeroRun);
    assert!(s.frame_bytes < 64, "zero window took {} bytes", s.frame_bytes);
    out.clear();
    let text = make_pages(&[PageKind::Text; 16], 5);
    let s = encode_page_window(&mut out, 2, &meta, &text, Compression::Lz4, &limits).unwrap();
    assert_eq!(s.lz4_pages, 16);
    assert!(s.frame_bytes < 16 * PAGE_SIZE / 2, "text window took {} bytes", s.frame_bytes);
}

#[test]
fn encoder_errors_leave_output_untouched() {
    let limits = Limits::default();
    let mut out = vec![1, 2, 3];
    let meta = WindowMeta { request_id: 5, ..WindowMeta::default() };
    let pages = vec![1u8; PAGE_SIZE];
    let err = encode_page_window(&mut out, 1, &meta, &pages, Compression::None, &limits);
    assert!(matches!(err, Err(WireError::UnsupportedVersion { got: 1, .. })));
    let big = vec![0u8; (limits.max_vmstate_bytes as usize) + 1];
    let err = encode_frame(&mut out, 2, &FrameBody::VmState(&big), &limits);
    assert!(matches!(err, Err(WireError::PayloadTooLong { frame: FrameType::VmState, .. })));
    let hello = Hello {
        max_version: 2,
        session_id: 1,
        stream: StreamKind::Bulk,
        mode: MigrationMode::Hybrid,
        page_size: PAGE_SIZE as u32,
        regions: vec![],
        auth_token: &[0u8; 2000],
        resume: false,
    };
    let err = encode_frame(&mut out, 2, &FrameBody::Hello(hello), &limits);
    assert!(matches!(err, Err(WireError::AuthTooLong { len: 2000, max: 1024 })));
    assert_eq!(out, vec![1, 2, 3]);
}

#[test]
fn handshake_accepts_the_documented_exchange() {
    use hybridmig::session::{
        Acceptor, AcceptorConfig, FrameGate, Initiator, Offer, Role, SessionIntent,
    };
    let limits = Limits::default();
    let regions = vec![Region { guest_phys: 0, size_bytes: 64 * PAGE_SIZE as u64 }];
    let mut offer = Offer::new(42, MigrationMode::Hybrid, regions.clone());
    offer.max_version = VERSION_CURRENT + 1; // a newer peer: we settle on ours
    let mut src = Initiator::new(offer);
    let mut dst = Acceptor::new(AcceptorConfig::new(regions.clone()));
    let mut params = None;
    for stream in [StreamKind::Bulk, StreamKind::Urgent] {
        let hello = src.hello(stream).unwrap();
        let answer = dst.on_hello_bytes(Some(stream), &hello);
        assert_eq!(answer.outcome.unwrap(), stream);
        params = src.on_bytes(stream, &answer.reply).unwrap();
    }
    let params = params.expect("both streams open");
    assert_eq!(params.version, VERSION_CURRENT);
    assert_eq!(params, dst.params().unwrap());
    assert_eq!(params.intent, SessionIntent::New);
    let mut src_urgent = FrameGate::new(Role::Initiator, StreamKind::Urgent, params.version);
    let fault = FaultRequest { region: 0, page: 3, vcpu: 0, request_id: 1 };
    let version = params.version;
    src_urgent.check(&Frame { version, body: FrameBody::FaultRequest(fault) }).unwrap();
    let pages = vec![7u8; 4 * PAGE_SIZE];
    let meta = WindowMeta { region: 0, first_page: 2, request_id: 1, urgent_answer: true };
    let mut out = Vec::new();
    encode_page_window(&mut out, version, &meta, &pages, Compression::None, &limits).unwrap();
    let (frame, _) = decode_frame(&out, &limits).unwrap();
    FrameGate::new(Role::Acceptor, StreamKind::Urgent, params.version).check(&frame).unwrap();
    let FrameBody::PageWindow(w) = frame.body else { panic!() };
    w.validate(&regions).unwrap();
    assert_eq!(negotiate_version(VERSION_CURRENT - 1).unwrap(), VERSION_CURRENT - 1);
    assert!(negotiate_version(VERSION_CURRENT - 2).is_err(), "only N and N-1 are spoken");
}
