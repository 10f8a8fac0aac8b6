//! Unit tests of the handshake machines: accept, every refusal, and broken input.

use super::*;
use crate::wire::{
    self, FrameBody, Limits, RejectReason, StreamKind, Verdict, HEADER_LEN, VERSION_MIN,
};

fn regions() -> Vec<Region> {
    vec![Region { guest_phys: 0, size_bytes: 64 * PAGE_SIZE as u64 }]
}

fn offer() -> Offer {
    Offer::new(42, MigrationMode::Hybrid, regions())
}

fn acceptor() -> Acceptor {
    Acceptor::new(AcceptorConfig::new(regions()))
}

/// One stream's exchange: the acceptor's answer and the initiator's view of it.
fn exchange(
    init: &mut Initiator,
    acc: &mut Acceptor,
    stream: StreamKind,
) -> (Answer, Result<Option<SessionParams>, SessionError>) {
    let hello = init.hello(stream).expect("hello");
    let answer = acc.on_hello_bytes(Some(stream), &hello);
    let seen = init.on_bytes(stream, &answer.reply);
    (answer, seen)
}

#[test]
fn both_streams_accepted_give_the_same_params() {
    let (mut init, mut acc) = (Initiator::new(offer()), acceptor());
    let (answer, seen) = exchange(&mut init, &mut acc, StreamKind::Bulk);
    assert_eq!(answer.outcome.expect("bulk"), StreamKind::Bulk);
    assert_eq!(seen.expect("ack"), None, "one stream is not a session yet");
    assert!(acc.params().is_err());
    let (_, seen) = exchange(&mut init, &mut acc, StreamKind::Urgent);
    let params = seen.expect("ack").expect("both open");
    assert_eq!(params, acc.params().expect("acceptor params"));
    assert_eq!(params.version, wire::VERSION_CURRENT);
    assert_eq!((params.session_id, params.mode), (42, MigrationMode::Hybrid));
    assert_eq!(params.intent, SessionIntent::New);
}

#[test]
fn resume_intent_reaches_the_acceptor() {
    let mut o = offer();
    o.intent = SessionIntent::Resume;
    let (mut init, mut acc) = (Initiator::new(o), acceptor());
    exchange(&mut init, &mut acc, StreamKind::Bulk).1.expect("bulk");
    let params = exchange(&mut init, &mut acc, StreamKind::Urgent).1.expect("urgent");
    assert_eq!(params.expect("open").intent, SessionIntent::Resume);
    assert_eq!(acc.params().expect("params").intent, SessionIntent::Resume);
}

#[test]
fn a_peer_one_version_ahead_settles_on_ours() {
    let mut o = offer();
    o.max_version = wire::VERSION_CURRENT + 1;
    let (mut init, mut acc) = (Initiator::new(o), acceptor());
    exchange(&mut init, &mut acc, StreamKind::Bulk).1.expect("bulk");
    let params = exchange(&mut init, &mut acc, StreamKind::Urgent).1.expect("urgent");
    assert_eq!(params.expect("open").version, wire::VERSION_CURRENT);
}

fn assert_rejected(max_version: u16) {
    let mut o = offer();
    o.max_version = max_version;
    let (mut init, mut acc) = (Initiator::new(o), acceptor());
    let (answer, seen) = exchange(&mut init, &mut acc, StreamKind::Bulk);
    let refused = answer.outcome.expect_err("refused");
    assert_eq!(refused.reject_reason(), Some(RejectReason::Version), "{refused}");
    let err = seen.expect_err("rejected");
    assert_eq!(err.reject_reason(), Some(RejectReason::Version));
    let text = err.to_string();
    let speaks = format!("(it speaks {VERSION_MIN}..={})", wire::VERSION_CURRENT);
    assert!(text.contains(&format!("protocol version {max_version} not supported")), "{text}");
    assert!(text.contains(&speaks), "{text}");
}

#[test]
fn version_too_new_is_rejected_with_the_reason() {
    assert_rejected(7);
}

#[test]
fn version_too_old_is_rejected_with_the_reason() {
    assert_rejected(0);
}

#[test]
fn layout_mismatch_is_rejected_and_both_sides_say_why() {
    let mut o = offer();
    o.regions = vec![Region { guest_phys: 0, size_bytes: 32 * PAGE_SIZE as u64 }];
    let (mut init, mut acc) = (Initiator::new(o), acceptor());
    let (answer, seen) = exchange(&mut init, &mut acc, StreamKind::Bulk);
    let refused = answer.outcome.expect_err("refused").to_string();
    assert!(refused.contains("memory layout differs"), "{refused}");
    assert!(refused.contains("128 KiB") && refused.contains("256 KiB"), "{refused}");
    let err = seen.expect_err("rejected");
    assert_eq!(err.reject_reason(), Some(RejectReason::LayoutMismatch));
    assert!(err.to_string().contains("memory layout differs"), "{err}");
}

/// A Hello re-encoded with its page-size field changed (the codec will not encode one).
fn hello_with_page_size(page_size: u32) -> Vec<u8> {
    let mut init = Initiator::new(offer());
    let mut bytes = init.hello(StreamKind::Bulk).expect("hello");
    // max_version u16, session u64, stream u8, mode u8, then the page size.
    let at = HEADER_LEN + 12;
    bytes[at..at + 4].copy_from_slice(&page_size.to_be_bytes());
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[12..16].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn another_page_size_is_a_layout_mismatch() {
    let mut acc = acceptor();
    let answer = acc.on_hello_bytes(None, &hello_with_page_size(2 * PAGE_SIZE as u32));
    let refused = answer.outcome.expect_err("refused");
    assert_eq!(refused.reject_reason(), Some(RejectReason::LayoutMismatch), "{refused}");
    let (frame, _) = wire::decode_frame(&answer.reply, &Limits::default()).expect("reply");
    let FrameBody::HelloAck(ack) = frame.body else { panic!("not an ack: {frame:?}") };
    assert_eq!(ack.verdict, Verdict::Reject(RejectReason::LayoutMismatch));
    assert_eq!((ack.session_id, ack.stream), (42, StreamKind::Bulk));
}

#[test]
fn a_hello_in_a_frame_version_we_cannot_read_is_still_answered() {
    let mut init = Initiator::new(offer());
    let mut bytes = init.hello(StreamKind::Urgent).expect("hello");
    bytes[4..6].copy_from_slice(&7u16.to_be_bytes()); // header version
    bytes[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&8u16.to_be_bytes()); // max_version
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[12..16].copy_from_slice(&crc.to_be_bytes());
    let answer = acceptor().on_hello_bytes(None, &bytes);
    let err = answer.outcome.expect_err("refused");
    assert!(
        matches!(err, SessionError::Wire(wire::WireError::UnsupportedVersion { got: 7, .. })),
        "{err}"
    );
    let (frame, _) = wire::decode_frame(&answer.reply, &Limits::default()).expect("reply");
    let FrameBody::HelloAck(ack) = frame.body else { panic!("not an ack: {frame:?}") };
    assert_eq!(ack.verdict, Verdict::Reject(RejectReason::Version));
    assert_eq!((ack.session_id, ack.stream), (42, StreamKind::Urgent));
}

#[test]
fn the_second_stream_of_another_session_is_refused() {
    let (mut init, mut acc) = (Initiator::new(offer()), acceptor());
    exchange(&mut init, &mut acc, StreamKind::Bulk).1.expect("bulk");
    let mut other = offer();
    other.session_id = 43;
    let mut stranger = Initiator::new(other);
    let (answer, seen) = exchange(&mut stranger, &mut acc, StreamKind::Urgent);
    assert_eq!(
        answer.outcome.expect_err("refused").reject_reason(),
        Some(RejectReason::UnknownSession)
    );
    assert_eq!(seen.expect_err("rejected").reject_reason(), Some(RejectReason::UnknownSession));
    assert_eq!(acc.open_streams(), 1);
}

#[test]
fn the_second_stream_with_another_mode_is_refused() {
    let (mut init, mut acc) = (Initiator::new(offer()), acceptor());
    exchange(&mut init, &mut acc, StreamKind::Bulk).1.expect("bulk");
    let mut other = offer();
    other.mode = MigrationMode::Precopy;
    let (answer, _) = exchange(&mut Initiator::new(other), &mut acc, StreamKind::Urgent);
    assert_eq!(answer.outcome.expect_err("refused").reject_reason(), Some(RejectReason::Mode));
}

#[test]
fn the_same_stream_twice_is_refused() {
    let (mut init, mut acc) = (Initiator::new(offer()), acceptor());
    exchange(&mut init, &mut acc, StreamKind::Bulk).1.expect("bulk");
    let (answer, _) = exchange(&mut Initiator::new(offer()), &mut acc, StreamKind::Bulk);
    let err = answer.outcome.expect_err("refused");
    assert_eq!(err.reject_reason(), Some(RejectReason::UnknownSession), "{err}");
}

#[test]
fn a_token_where_none_is_expected_is_bad_auth() {
    let resume = Offer {
        intent: SessionIntent::Resume,
        ticket: Some(SessionTicket::from_bytes([1; 32])),
        ..offer()
    };
    let mut init = Initiator::new(resume).bound();
    let (answer, seen) = exchange(&mut init, &mut acceptor(), StreamKind::Bulk);
    assert_eq!(answer.outcome.expect_err("refused").reject_reason(), Some(RejectReason::BadAuth));
    assert_eq!(seen.expect_err("rejected").reject_reason(), Some(RejectReason::BadAuth));
}

fn bound_acceptor(ticket: u8) -> Acceptor {
    acceptor().with_binding(Binding::New(SessionTicket::from_bytes([ticket; 32])))
}

#[test]
fn bound_streams_share_the_ticket_the_bulk_ack_gave() {
    let (mut init, mut acc) = (Initiator::new(offer()).bound(), bound_acceptor(9));
    assert!(init.hello(StreamKind::Urgent).is_err(), "no ticket before the bulk stream opens");
    let mut init = Initiator::new(offer()).bound();
    exchange(&mut init, &mut acc, StreamKind::Bulk).1.expect("bulk");
    assert_eq!(init.ticket(), acc.ticket());
    let params = exchange(&mut init, &mut acc, StreamKind::Urgent).1.expect("urgent");
    assert!(params.is_some());
}

#[test]
fn an_urgent_stream_of_another_session_is_refused() {
    let mut acc = bound_acceptor(9);
    exchange(&mut Initiator::new(offer()).bound(), &mut acc, StreamKind::Bulk).1.expect("bulk");
    // Another holder of the key learns its own session's ticket from another destination.
    let mut stranger = Initiator::new(offer()).bound();
    exchange(&mut stranger, &mut bound_acceptor(3), StreamKind::Bulk).1.expect("its own bulk");
    let (answer, seen) = exchange(&mut stranger, &mut acc, StreamKind::Urgent);
    let err = answer.outcome.expect_err("refused");
    assert_eq!(err.reject_reason(), Some(RejectReason::BadAuth));
    assert!(err.to_string().contains("urgent stream from another session"), "{err}");
    assert_eq!(seen.expect_err("rejected").reject_reason(), Some(RejectReason::BadAuth));
    assert_eq!(acc.open_streams(), 1, "the refused stream did not join");
}

#[test]
fn a_resume_needs_the_sessions_ticket() {
    let ticket = SessionTicket::from_bytes([5; 32]);
    let resuming = || acceptor().with_binding(Binding::Resume(ticket));
    let with = |t| Offer { intent: SessionIntent::Resume, ticket: Some(t), ..offer() };
    let mut init = Initiator::new(with(ticket)).bound();
    let mut acc = resuming();
    exchange(&mut init, &mut acc, StreamKind::Bulk).1.expect("bulk");
    exchange(&mut init, &mut acc, StreamKind::Urgent).1.expect("urgent").expect("open");
    let mut wrong = Initiator::new(with(SessionTicket::from_bytes([6; 32]))).bound();
    let (answer, _) = exchange(&mut wrong, &mut resuming(), StreamKind::Bulk);
    assert!(answer.outcome.expect_err("refused").to_string().contains("a resume from another"));
    let (answer, _) =
        exchange(&mut Initiator::new(offer()).bound(), &mut resuming(), StreamKind::Bulk);
    assert_eq!(answer.outcome.expect_err("new").reject_reason(), Some(RejectReason::BadAuth));
}

#[test]
fn a_stream_named_otherwise_than_it_came_is_an_error() {
    let mut init = Initiator::new(offer());
    let hello = init.hello(StreamKind::Bulk).expect("hello");
    let answer = acceptor().on_hello_bytes(Some(StreamKind::Urgent), &hello);
    assert!(matches!(answer.outcome, Err(SessionError::StreamMismatch { .. })));
}

#[test]
fn garbage_and_truncated_input_are_typed_errors() {
    let mut init = Initiator::new(offer());
    let hello = init.hello(StreamKind::Bulk).expect("hello");
    let mut acc = acceptor();
    for cut in 0..hello.len() {
        let answer = acc.on_hello_bytes(None, &hello[..cut]);
        assert!(matches!(answer.outcome, Err(SessionError::Wire(_))), "cut at {cut}");
        assert!(answer.reply.is_empty(), "nothing to answer a cut Hello with");
    }
    let noise: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    assert!(acc.on_hello_bytes(None, &noise).outcome.is_err());
    assert!(init.on_bytes(StreamKind::Bulk, &noise).is_err());
    assert!(init.on_bytes(StreamKind::Bulk, &hello[..10]).is_err());
    // A Hello where a HelloAck belongs.
    let err = init.on_bytes(StreamKind::Bulk, &hello).expect_err("not an ack");
    assert!(matches!(err, SessionError::Wire(wire::WireError::FrameBeforeHello { .. })), "{err}");
    assert_eq!(acc.open_streams(), 0);
}

#[test]
fn take_handshake_frame_takes_exactly_one_frame() {
    let mut init = Initiator::new(offer());
    let mut buf = init.hello(StreamKind::Bulk).expect("hello");
    let len = buf.len();
    buf.extend_from_slice(&init.hello(StreamKind::Urgent).expect("hello")[..5]);
    let limits = Limits::default();
    assert_eq!(take_handshake_frame(&mut buf, &limits).expect("frame").map(|f| f.len()), Some(len));
    assert_eq!(buf.len(), 5);
    assert_eq!(take_handshake_frame(&mut buf, &limits).expect("partial"), None);
}

mod over_the_simulated_link {
    use super::*;
    use crate::transport::sim::{Side, SimFaults, SimNet};

    #[test]
    fn a_delayed_reordering_link_still_opens_the_session() {
        let faults = SimFaults {
            delay_us: (50, 400),
            reorder_probability: 0.5,
            reorder_extra_us: 300,
            ..SimFaults::default()
        };
        for seed in 0..32 {
            let mut net = SimNet::new(seed, faults.clone());
            let opened = sim::handshake(&mut net, Initiator::new(offer()), acceptor())
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(opened.source, opened.dest);
            assert!(net.peek_time_us().is_none(), "seed {seed}: nothing left on the link");
        }
    }

    #[test]
    fn a_refusal_over_the_link_is_the_destination_s_error() {
        let mut net = SimNet::new(1, SimFaults::default());
        let mut o = offer();
        o.regions = vec![Region { guest_phys: 0, size_bytes: PAGE_SIZE as u64 }];
        let err = sim::handshake(&mut net, Initiator::new(o), acceptor()).expect_err("refused");
        assert!(
            matches!(
                &err,
                sim::SimHandshakeError::Session { side: Side::Dest, source }
                    if source.reject_reason() == Some(RejectReason::LayoutMismatch)
            ),
            "{err}"
        );
    }

    #[test]
    fn a_dropped_link_is_a_disconnect() {
        let faults = SimFaults { disconnect_after_bytes: Some(10), ..SimFaults::default() };
        let mut net = SimNet::new(2, faults);
        let err = sim::handshake(&mut net, Initiator::new(offer()), acceptor()).expect_err("down");
        assert!(matches!(err, sim::SimHandshakeError::Disconnected { .. }), "{err}");
    }
}
