//! Malformed input, table-driven: every case must fail with one specific `WireError` variant
//! (and never panic). Byte-level cases are run through both `decode_frame` and `FrameReader`.

use hybridmig::session::{
    Acceptor, AcceptorConfig, FrameGate, Initiator, Offer, Role, SessionError,
};
use hybridmig::wire::*;

const PAGE: usize = PAGE_SIZE;

/// A frame with a correct CRC around an arbitrary payload.
fn raw_frame(version: u16, frame_type: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.push(frame_type);
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A v2 window payload with the given fixed fields and body.
fn window_payload(region: u32, first: u64, count: u32, encoding: u8, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&region.to_be_bytes());
    p.extend_from_slice(&first.to_be_bytes());
    p.extend_from_slice(&count.to_be_bytes());
    p.push(encoding);
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(body);
    p
}

fn window_frame(count: u32, encoding: u8, body: &[u8]) -> Vec<u8> {
    raw_frame(2, FrameType::PageWindow as u8, 0, &window_payload(0, 0, count, encoding, body))
}

fn hello_payload(page_size: u32, stream: u8, regions: &[(u64, u64)], auth_len: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&2u16.to_be_bytes());
    p.extend_from_slice(&42u64.to_be_bytes());
    p.push(stream);
    p.push(MigrationMode::Hybrid as u8);
    p.extend_from_slice(&page_size.to_be_bytes());
    p.extend_from_slice(&(regions.len() as u16).to_be_bytes());
    for &(gpa, size) in regions {
        p.extend_from_slice(&gpa.to_be_bytes());
        p.extend_from_slice(&size.to_be_bytes());
    }
    p.extend_from_slice(&auth_len.to_be_bytes());
    p.extend(std::iter::repeat_n(0xAB, usize::from(auth_len).min(4)));
    p
}

fn dirty_payload(format: u8, count: u64, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&0u32.to_be_bytes());
    p.push(format);
    p.extend_from_slice(&count.to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// Decodes with `decode_frame` and with a `FrameReader`; both must agree.
fn decode_both(bytes: &[u8]) -> Result<(), WireError> {
    let limits = Limits::default();
    let one_shot = decode_frame(bytes, &limits).map(|_| ());
    let mut reader = FrameReader::new(limits);
    reader.push_bytes(bytes);
    let streamed = reader.next_frame().map(|f| f.is_some());
    match (&one_shot, &streamed) {
        (Err(WireError::Truncated { .. }), Ok(false)) => {}
        (Ok(()), Ok(true)) => {}
        (Err(a), Err(b)) => {
            assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "{a} vs {b}")
        }
        _ => panic!("decode_frame {one_shot:?} but reader {streamed:?}"),
    }
    one_shot
}

/// Decodes a window frame, then its pages into a correctly sized buffer.
fn decode_window(bytes: &[u8]) -> Result<(), WireError> {
    let (frame, _) = decode_frame(bytes, &Limits::default())?;
    let FrameBody::PageWindow(w) = frame.body else { panic!("not a window") };
    let mut dest = vec![0u8; w.len_bytes()];
    w.decode_into(&mut dest).map(|_| ())
}

fn decode_dirty(payload: &[u8], region_pages: u64) -> Result<(), WireError> {
    let bytes = raw_frame(2, FrameType::DirtySet as u8, 0, payload);
    let (frame, _) = decode_frame(&bytes, &Limits::default())?;
    let FrameBody::DirtySet(d) = frame.body else { panic!("not a dirty set") };
    let regions = [Region { guest_phys: 0, size_bytes: region_pages * PAGE as u64 }];
    d.runs(&regions).map(|runs| runs.for_each(drop))
}

fn regions() -> Vec<Region> {
    vec![
        Region { guest_phys: 0, size_bytes: 100 * PAGE as u64 },
        Region { guest_phys: 1 << 32, size_bytes: 10 * PAGE as u64 },
    ]
}

fn hello_frame(version: u16) -> Frame<'static> {
    Frame {
        version,
        body: FrameBody::Hello(Hello {
            max_version: 2,
            session_id: 42,
            stream: StreamKind::Bulk,
            mode: MigrationMode::Hybrid,
            page_size: PAGE as u32,
            regions: regions(),
            auth_token: b"",
            resume: false,
        }),
    }
}

fn ack_frame(session_id: u64, verdict: Verdict) -> Frame<'static> {
    Frame {
        version: 2,
        body: FrameBody::HelloAck(HelloAck {
            version: 2,
            session_id,
            stream: StreamKind::Bulk,
            verdict,
            auth_token: b"",
        }),
    }
}

fn control(version: u16) -> Frame<'static> {
    Frame {
        version,
        body: FrameBody::Control(Control { kind: ControlKind::Ping, seq: 1, value: 0 }),
    }
}

/// The destination's bulk stream after the handshake settled on version 2.
fn open_acceptor() -> FrameGate {
    FrameGate::new(Role::Acceptor, StreamKind::Bulk, 2)
}

/// The source's handshake after it sent the bulk stream's Hello.
fn initiator_awaiting_ack() -> Initiator {
    let mut init = Initiator::new(Offer::new(42, MigrationMode::Hybrid, regions()));
    init.hello(StreamKind::Bulk).expect("hello");
    init
}

/// The session layer's result, reduced to the codec error it carries.
fn session_wire<T>(result: Result<T, SessionError>) -> Result<(), WireError> {
    match result {
        Ok(_) => Ok(()),
        Err(SessionError::Wire(e)) => Err(e),
        Err(other) => panic!("expected a wire error, got {other}"),
    }
}

fn encoded(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, frame.version, &frame.body, &Limits::default()).expect("encode");
    out
}

type Matcher = fn(&WireError) -> bool;

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<(&'static str, Result<(), WireError>, Matcher)> {
    let ctl = raw_frame(2, FrameType::Control as u8, 0, &[1; 17]);
    let lz4_one_page = lz4_flex::block::compress(&[7u8; PAGE]);
    let lz4_two_pages = lz4_flex::block::compress(&[7u8; 2 * PAGE]);
    let lz4_small = lz4_flex::block::compress(&[7u8; 100]);
    let mut mixed_short_lz4 = vec![0b10u8];
    mixed_short_lz4.extend_from_slice(&(lz4_small.len() as u16).to_be_bytes());
    mixed_short_lz4.extend_from_slice(&lz4_small);
    let mut mixed_long_len = vec![0b10u8];
    mixed_long_len.extend_from_slice(&4096u16.to_be_bytes());
    mixed_long_len.extend_from_slice(&[0; 4096]);
    let small_limits = Limits { max_vmstate_bytes: 1024, ..Limits::default() };
    let fault = |v| Frame {
        version: v,
        body: FrameBody::FaultRequest(FaultRequest { region: 0, page: 1, vcpu: 0, request_id: 0 }),
    };
    let mut urgent_open = FrameGate::new(Role::Initiator, StreamKind::Urgent, 2);
    let window_ref = |first_page, count| {
        let meta = WindowMeta { region: 0, first_page, ..WindowMeta::default() };
        PageWindowRef::from_parts(&meta, count, WindowEncoding::ZeroRun, &[])
    };

    vec![
        // Header.
        (
            "bad magic",
            decode_both(&{
                let mut b = ctl.clone();
                b[0] ^= 0xff;
                b
            }),
            |e| matches!(e, WireError::BadMagic { got, .. } if *got == 0xb74d4947),
        ),
        ("unknown frame type", decode_both(&raw_frame(2, 0xEE, 0, &[])), |e| {
            matches!(e, WireError::UnknownFrameType { got: 0xEE })
        }),
        ("invalid frame type 0", decode_both(&raw_frame(2, 0, 0, &[])), |e| {
            matches!(e, WireError::UnknownFrameType { got: 0 })
        }),
        (
            "flags on a control frame",
            decode_both(&raw_frame(2, FrameType::Control as u8, 1, &[1; 17])),
            |e| matches!(e, WireError::UnknownFlags { frame: FrameType::Control, got: 1 }),
        ),
        ("undefined window flag", decode_both(&raw_frame(2, 3, 0x80, &[])), |e| {
            matches!(e, WireError::UnknownFlags { frame: FrameType::PageWindow, got: 0x80 })
        }),
        (
            "length over limit",
            decode_both(&{
                let mut b = raw_frame(2, 3, 0, &[]);
                b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
                b
            }),
            |e| {
                matches!(
                    e,
                    WireError::PayloadTooLong {
                        frame: FrameType::PageWindow,
                        len: 0xffff_ffff,
                        ..
                    }
                )
            },
        ),
        (
            "vmstate over its own limit, reader does not grow",
            {
                let mut b = raw_frame(2, FrameType::VmState as u8, 0, &[]);
                b[8..12].copy_from_slice(&2048u32.to_be_bytes());
                let mut r = FrameReader::new(small_limits);
                r.push_bytes(&b);
                let res = r.next_frame().map(|_| ());
                assert!(r.capacity_bytes() < 300 << 10, "reader grew to {}", r.capacity_bytes());
                res
            },
            |e| {
                matches!(
                    e,
                    WireError::PayloadTooLong { frame: FrameType::VmState, len: 2048, max: 1024 }
                )
            },
        ),
        (
            "crc mismatch",
            decode_both(&{
                let mut b = ctl.clone();
                b[20] ^= 1;
                b
            }),
            |e| matches!(e, WireError::CrcMismatch { frame: FrameType::Control, .. }),
        ),
        ("truncated header", decode_both(&ctl[..7]), |e| {
            matches!(e, WireError::Truncated { what: "frame header", need: 16, have: 7 })
        }),
        ("truncated payload", decode_both(&ctl[..20]), |e| {
            matches!(e, WireError::Truncated { what: "payload", need: 17, have: 4 })
        }),
        ("version N+1", decode_both(&raw_frame(VERSION_CURRENT + 1, 9, 0, &[1; 17])), |e| {
            matches!(e, WireError::UnsupportedVersion { got: 4, min: 2, max: 3 })
        }),
        ("version 0", decode_both(&raw_frame(0, 9, 0, &[1; 17])), |e| {
            matches!(e, WireError::UnsupportedVersion { got: 0, .. })
        }),
        // Page windows.
        (
            "lz4 inflates short of the window",
            decode_window(&window_frame(2, 2, &lz4_one_page)),
            |e| matches!(e, WireError::Lz4SizeMismatch { expected: 8192, got: 4096, .. }),
        ),
        ("lz4 inflates past the window", decode_window(&window_frame(1, 2, &lz4_two_pages)), |e| {
            matches!(e, WireError::Lz4SizeMismatch { expected: 4096, .. })
        }),
        (
            "mixed lz4 page inflates to 100 bytes",
            decode_window(&window_frame(1, 4, &mixed_short_lz4)),
            |e| matches!(e, WireError::Lz4SizeMismatch { page: 0, expected: 4096, got: 100 }),
        ),
        ("lz4 garbage", decode_window(&window_frame(1, 2, &[0xF0, 1, 2])), |e| {
            matches!(e, WireError::Lz4Corrupt { .. })
        }),
        (
            "mixed lz4 page not smaller than raw",
            decode_window(&window_frame(1, 4, &mixed_long_len)),
            |e| matches!(e, WireError::Lz4PageTooLong { page: 0, len: 4096 }),
        ),
        ("mixed page kind 3", decode_window(&window_frame(1, 4, &[0b11])), |e| {
            matches!(e, WireError::InvalidField { field: "window.page kind", got: 3 })
        }),
        ("mixed map padding bits", decode_window(&window_frame(1, 4, &[0b0100])), |e| {
            matches!(e, WireError::InvalidField { field: "window.map padding", .. })
        }),
        (
            // Version 1 (no mixed windows, no request ids) is no longer spoken: refused whole.
            "a window in version 1",
            decode_both(&raw_frame(1, 3, 0, &window_payload(0, 0, 1, 4, &[0]))[..]),
            |e| matches!(e, WireError::UnsupportedVersion { got: 1, min: 2, max: 3 }),
        ),
        ("unknown window encoding", decode_both(&window_frame(1, 9, &[])), |e| {
            matches!(e, WireError::InvalidField { field: "window.encoding", got: 9 })
        }),
        ("zero-length window", decode_both(&window_frame(0, 3, &[])), |e| {
            matches!(e, WireError::EmptyWindow { region: 0, first_page: 0 })
        }),
        ("window over the page limit", decode_both(&window_frame(257, 3, &[])), |e| {
            matches!(e, WireError::WindowTooLong { count: 257, max: 256 })
        }),
        ("raw window body short", decode_both(&window_frame(2, 1, &[0; PAGE])), |e| {
            matches!(e, WireError::Truncated { what: "window.body", need: 8192, have: 4096 })
        }),
        ("zero run with a body", decode_both(&window_frame(1, 3, &[0])), |e| {
            matches!(e, WireError::TrailingBytes { frame: FrameType::PageWindow, extra: 1 })
        }),
        ("mixed window trailing bytes", decode_window(&window_frame(1, 4, &[0, 9])), |e| {
            matches!(e, WireError::TrailingBytes { frame: FrameType::PageWindow, extra: 1 })
        }),
        (
            "destination of the wrong size",
            {
                let w = window_ref(0, 2);
                w.decode_into(&mut [0u8; PAGE]).map(|_| ())
            },
            |e| matches!(e, WireError::DestinationSize { expected: 8192, got: 4096 }),
        ),
        // Ranges against the Hello's regions.
        ("page out of range", window_ref(100, 1).validate(&regions()), |e| {
            matches!(e, WireError::PageOutOfRange { region: 0, page: 100, region_pages: 100 })
        }),
        ("window crossing the region end", window_ref(98, 4).validate(&regions()), |e| {
            matches!(
                e,
                WireError::WindowCrossesRegionEnd { region: 0, first_page: 98, count: 4, .. }
            )
        }),
        ("zero-length window against regions", window_ref(5, 0).validate(&regions()), |e| {
            matches!(e, WireError::EmptyWindow { .. })
        }),
        ("region index out of range", validate_range(&regions(), 2, 0, 1), |e| {
            matches!(e, WireError::RegionOutOfRange { region: 2, regions: 2 })
        }),
        (
            "fault request past region end",
            FaultRequest { region: 1, page: 10, vcpu: 0, request_id: 1 }.validate(&regions()),
            |e| matches!(e, WireError::PageOutOfRange { region: 1, page: 10, region_pages: 10 }),
        ),
        // Hello.
        (
            "hello page size 8192",
            decode_both(&raw_frame(2, 1, 0, &hello_payload(8192, 1, &[], 0))),
            |e| matches!(e, WireError::UnsupportedPageSize { got: 8192, supported: 4096 }),
        ),
        (
            "hello stream 3",
            decode_both(&raw_frame(2, 1, 0, &hello_payload(4096, 3, &[], 0))),
            |e| matches!(e, WireError::InvalidField { field: "hello.stream", got: 3 }),
        ),
        (
            "hello with too many regions",
            decode_both(&raw_frame(2, 1, 0, &hello_payload(4096, 1, &[(0, 4096); 65], 0))),
            |e| matches!(e, WireError::TooManyRegions { count: 65, max: 64 }),
        ),
        (
            "hello with overlapping regions",
            decode_both(&raw_frame(
                2,
                1,
                0,
                &hello_payload(4096, 1, &[(0, 8192), (4096, 4096)], 0),
            )),
            |e| matches!(e, WireError::BadRegion { index: 1, .. }),
        ),
        (
            "hello with an empty region",
            decode_both(&raw_frame(2, 1, 0, &hello_payload(4096, 1, &[(0, 0)], 0))),
            |e| matches!(e, WireError::BadRegion { index: 0, why: "empty", .. }),
        ),
        (
            "hello auth over limit",
            decode_both(&raw_frame(2, 1, 0, &hello_payload(4096, 1, &[], 5000))),
            |e| matches!(e, WireError::AuthTooLong { len: 5000, max: 1024 }),
        ),
        (
            "hello with trailing bytes",
            decode_both(&raw_frame(2, 1, 0, &{
                let mut p = hello_payload(4096, 1, &[], 0);
                p.push(0);
                p
            })),
            |e| matches!(e, WireError::TrailingBytes { frame: FrameType::Hello, extra: 1 }),
        ),
        (
            "hello region table cut short",
            decode_both(&raw_frame(2, 1, 0, &hello_payload(4096, 1, &[(0, 4096)], 0)[..30])),
            |e| matches!(e, WireError::Truncated { what: "hello.regions", need: 16, have: 12 }),
        ),
        (
            "hello_ack accept with a reason",
            decode_both(&raw_frame(2, 2, 0, &[0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 5, 0, 0])),
            |e| matches!(e, WireError::InvalidField { field: "hello_ack.reason", got: 5 }),
        ),
        // Handshake.
        ("duplicate hello", open_acceptor().check(&hello_frame(2)), |e| {
            matches!(e, WireError::DuplicateHello { frame: FrameType::Hello })
        }),
        (
            "data before hello",
            session_wire(
                Acceptor::new(AcceptorConfig::new(regions()))
                    .on_hello_bytes(None, &encoded(&control(2)))
                    .outcome,
            ),
            |e| {
                matches!(
                    e,
                    WireError::FrameBeforeHello {
                        got: FrameType::Control,
                        expected: FrameType::Hello
                    }
                )
            },
        ),
        (
            "frame version differs from the negotiated one",
            open_acceptor().check(&control(1)),
            |e| matches!(e, WireError::VersionMismatch { got: 1, negotiated: 2, .. }),
        ),
        (
            "VM state on the urgent stream",
            FrameGate::new(Role::Acceptor, StreamKind::Urgent, 2)
                .check(&Frame { version: 2, body: FrameBody::VmState(b"state") }),
            |e| {
                matches!(
                    e,
                    WireError::WrongStream { got: FrameType::VmState, stream: StreamKind::Urgent }
                )
            },
        ),
        (
            "fault request received by the destination",
            FrameGate::new(Role::Acceptor, StreamKind::Urgent, 2).check(&fault(2)),
            |e| {
                matches!(
                    e,
                    WireError::UnexpectedFrame {
                        got: FrameType::FaultRequest,
                        role: "destination"
                    }
                )
            },
        ),
        (
            "page window received by the source",
            urgent_open.check(&Frame { version: 2, body: FrameBody::PageWindow(window_ref(0, 1)) }),
            |e| {
                matches!(
                    e,
                    WireError::UnexpectedFrame { got: FrameType::PageWindow, role: "source" }
                )
            },
        ),
        (
            "frame after a reject",
            {
                let mut h = initiator_awaiting_ack();
                let reject = ack_frame(42, Verdict::Reject(RejectReason::BadAuth));
                let refused = h.on_frame(StreamKind::Bulk, &reject).expect_err("rejected");
                assert_eq!(refused.reject_reason(), Some(RejectReason::BadAuth));
                session_wire(h.on_frame(StreamKind::Bulk, &control(2)))
            },
            |e| matches!(e, WireError::FrameAfterEnd { state: "rejected", .. }),
        ),
        (
            "hello_ack for another session",
            session_wire(
                initiator_awaiting_ack()
                    .on_frame(StreamKind::Bulk, &ack_frame(43, Verdict::Accept)),
            ),
            |e| matches!(e, WireError::HelloAckMismatch { got_session: 43, session: 42, .. }),
        ),
        // Dirty sets.
        (
            "dirty set longer than the region",
            decode_dirty(&dirty_payload(1, 11, &[0, 11]), 10),
            |e| {
                matches!(e, WireError::DirtySetLongerThanRegion { pages: 11, region_pages: 10, .. })
            },
        ),
        ("dirty run past the region end", decode_dirty(&dirty_payload(1, 3, &[8, 3]), 10), |e| {
            matches!(e, WireError::DirtyPastRegionEnd { page: 10, region_pages: 10, .. })
        }),
        (
            "dirty bitmap past the region end",
            decode_dirty(&dirty_payload(2, 1, &[0, 0, 0, 0, 0, 0, 0, 8, 0, 4]), 10),
            |e| matches!(e, WireError::DirtyPastRegionEnd { region_pages: 10, .. }),
        ),
        ("dirty run of length zero", decode_dirty(&dirty_payload(1, 0, &[1, 0]), 10), |e| {
            matches!(e, WireError::EmptyDirtyRun { page: 1, .. })
        }),
        ("dirty count mismatch", decode_dirty(&dirty_payload(1, 5, &[0, 2]), 10), |e| {
            matches!(e, WireError::DirtyCountMismatch { announced: 5, counted: 2, .. })
        }),
        ("dirty varint overflow", decode_dirty(&dirty_payload(1, 1, &[0xff; 11]), 10), |e| {
            matches!(e, WireError::BadVarint { offset: 0 })
        }),
        (
            "dirty run gap overflows u64",
            decode_dirty(
                &dirty_payload(
                    1,
                    2,
                    &[0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 1],
                ),
                10,
            ),
            |e| matches!(e, WireError::DirtyPastRegionEnd { .. }),
        ),
        (
            "dirty set for a missing region",
            decode_dirty(
                &{
                    let mut p = dirty_payload(1, 0, &[]);
                    p[3] = 7;
                    p
                },
                10,
            ),
            |e| matches!(e, WireError::RegionOutOfRange { region: 7, regions: 1 }),
        ),
        ("dirty format 0", decode_both(&raw_frame(2, 5, 0, &dirty_payload(0, 0, &[]))), |e| {
            matches!(e, WireError::InvalidField { field: "dirty.format", got: 0 })
        }),
        (
            "dirty set over its limit",
            decode_both(&{
                let mut b = raw_frame(2, 5, 0, &[]);
                b[8..12].copy_from_slice(&(5u32 << 20).to_be_bytes());
                b
            }),
            |e| matches!(e, WireError::PayloadTooLong { frame: FrameType::DirtySet, .. }),
        ),
        (
            "encoder bitmap bit past the region",
            encode_dirty_set(&mut Vec::new(), 2, 0, &[1 << 12], 12, &Limits::default()).map(|_| ()),
            |e| matches!(e, WireError::DirtyPastRegionEnd { page: 12, region_pages: 12, .. }),
        ),
        // Small frames.
        ("control kind 0", decode_both(&raw_frame(2, 9, 0, &[0; 17])), |e| {
            matches!(e, WireError::InvalidField { field: "control.kind", got: 0 })
        }),
        ("done_ack verdict 0", decode_both(&raw_frame(2, 8, 0, &[0; 25])), |e| {
            matches!(e, WireError::InvalidField { field: "done_ack.verdict", got: 0 })
        }),
        ("v2 fault request without request id", decode_both(&raw_frame(2, 6, 0, &[0; 16])), |e| {
            matches!(e, WireError::Truncated { what: "fault.request_id", need: 4, have: 0 })
        }),
        ("a fault request in version 1", decode_both(&raw_frame(1, 6, 0, &[0; 20])), |e| {
            matches!(e, WireError::UnsupportedVersion { got: 1, .. })
        }),
        (
            "encode in version 1",
            encode_frame(
                &mut Vec::new(),
                1,
                &FrameBody::FaultRequest(FaultRequest {
                    region: 0,
                    page: 0,
                    vcpu: 0,
                    request_id: 3,
                }),
                &Limits::default(),
            )
            .map(|_| ()),
            |e| matches!(e, WireError::UnsupportedVersion { got: 1, .. }),
        ),
        (
            "encode in version 4",
            encode_frame(&mut Vec::new(), 4, &control(4).body, &Limits::default()).map(|_| ()),
            |e| matches!(e, WireError::UnsupportedVersion { got: 4, .. }),
        ),
        (
            "encode pages that are not whole pages",
            encode_page_window(
                &mut Vec::new(),
                2,
                &WindowMeta::default(),
                &[0; 100],
                Compression::None,
                &Limits::default(),
            )
            .map(|_| ()),
            |e| matches!(e, WireError::NotWholePages { len_bytes: 100 }),
        ),
        (
            "reader commit overflow",
            {
                let mut r = FrameReader::new(Limits::default());
                let n = r.spare_capacity(16).len();
                r.commit(n + 1)
            },
            |e| matches!(e, WireError::CommitOverflow { .. }),
        ),
    ]
}

#[test]
fn every_malformed_input_fails_with_its_specific_error() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (name, result, expect) in &cases {
        match result {
            Err(e) if expect(e) => {
                // The message must render (Display is what operators see).
                assert!(!e.to_string().is_empty());
            }
            other => failures.push(format!("{name}: got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn errors_are_sticky_in_the_reader() {
    let mut bytes = raw_frame(2, 9, 0, &[1; 17]);
    bytes[20] ^= 1;
    let mut r = FrameReader::new(Limits::default());
    r.push_bytes(&bytes);
    assert!(matches!(r.next_frame(), Err(WireError::CrcMismatch { .. })));
    assert!(matches!(r.next_frame(), Err(WireError::CrcMismatch { .. })));
}

#[test]
fn hello_naming_version_0_is_refused_with_the_version_reason() {
    let hello = {
        let mut h = hello_frame(2);
        if let FrameBody::Hello(x) = &mut h.body {
            x.max_version = 0
        }
        h
    };
    let answer =
        Acceptor::new(AcceptorConfig::new(regions())).on_hello_bytes(None, &encoded(&hello));
    let err = answer.outcome.expect_err("refused");
    assert_eq!(err.reject_reason(), Some(RejectReason::Version), "{err}");
    assert!(err.to_string().contains("protocol version 0 not supported"), "{err}");
    let (reply, _) = decode_frame(&answer.reply, &Limits::default()).expect("a reject frame");
    assert!(matches!(
        reply.body,
        FrameBody::HelloAck(HelloAck { verdict: Verdict::Reject(RejectReason::Version), .. })
    ));
}
