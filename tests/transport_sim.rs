//! The seeded stream simulator: determinism, TCP ordering per stream, urgent overtaking bulk,
//! faults at their configured rates, and reconnection after a drop.

use hybridmig::transport::sim::{
    parse_seed, run_seeded, DisconnectCause, Side, SimError, SimEvent, SimFaults, SimNet,
};
use hybridmig::transport::StreamKind;

fn lossy() -> SimFaults {
    SimFaults {
        delay_us: (50, 2_000),
        loss_probability: 0.05,
        retransmit_delay_us: 10_000,
        reorder_probability: 0.1,
        reorder_extra_us: 5_000,
        corrupt_byte_probability: 0.001,
        ..SimFaults::default()
    }
}

/// Sends `count` numbered segments alternating streams and directions, and advances time
/// between sends; returns the full event trace.
fn drive(seed: u64, faults: SimFaults, count: u32) -> Vec<(u64, SimEvent)> {
    let mut net = SimNet::new(seed, faults);
    let mut trace = Vec::new();
    for i in 0..count {
        let from = if i % 3 == 0 { Side::Dest } else { Side::Source };
        let stream = if i % 2 == 0 { StreamKind::Bulk } else { StreamKind::Urgent };
        if net.send(from, stream, &segment(i)).is_err() {
            break;
        }
        let target = net.now_us() + 300;
        while net.peek_time_us().is_some_and(|t| t <= target) {
            trace.extend(net.next_event());
        }
        net.advance_to(target);
    }
    // Drain, bounded.
    for _ in 0..(count as usize * 2 + 4) {
        let Some(ev) = net.next_event() else { break };
        trace.push(ev);
    }
    trace
}

fn segment(i: u32) -> Vec<u8> {
    let len = 16 + (i as usize * 37) % 200;
    (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
}

/// Sends numbered segments on both streams (source to destination, without corruption) until
/// the link drops, reconnects, sends `after` more, and returns the whole trace and the
/// segment numbers sent after the reconnect per stream.
fn drive_through_reconnect(seed: u64, after: u32) -> (Vec<(u64, SimEvent)>, [Vec<u32>; 2]) {
    let faults = SimFaults {
        corrupt_byte_probability: 0.0,
        disconnect_after_bytes: Some(20_000),
        ..lossy()
    };
    let mut net = SimNet::new(seed, faults);
    let mut trace = Vec::new();
    let mut i = 0u32;
    while net.send(Side::Source, stream_of(i), &numbered(i)).is_ok() {
        i += 1;
        trace.extend(net.next_event());
    }
    while let Some(event) = net.next_event() {
        trace.push(event);
    }
    assert!(matches!(trace.last(), Some((_, SimEvent::Disconnected { .. }))));
    net.reconnect().expect("reconnect after the drop");
    assert_eq!(net.reconnect(), Err(SimError::StillConnected));
    let mut sent_after: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    for j in i..i + after {
        net.send(Side::Source, stream_of(j), &numbered(j)).expect("send after reconnect");
        sent_after[stream_of(j).index()].push(j);
        let target = net.now_us() + 300;
        while net.peek_time_us().is_some_and(|t| t <= target) {
            trace.extend(net.next_event());
        }
        net.advance_to(target);
    }
    while let Some(event) = net.next_event() {
        trace.push(event);
    }
    assert_eq!(net.stats().reconnects, 1);
    (trace, sent_after)
}

fn stream_of(i: u32) -> StreamKind {
    if i % 3 == 0 {
        StreamKind::Urgent
    } else {
        StreamKind::Bulk
    }
}

/// A segment that says its own number in its first four bytes.
fn numbered(i: u32) -> Vec<u8> {
    let mut bytes = i.to_le_bytes().to_vec();
    bytes.extend(segment(i));
    bytes
}

#[test]
fn reconnect_delivers_what_follows_in_order_and_replays() {
    run_seeded("reconnect_delivers_what_follows_in_order_and_replays", |seed| {
        let (trace, sent_after) = drive_through_reconnect(seed, 100);
        let drop_at = trace
            .iter()
            .position(|(_, e)| matches!(e, SimEvent::Disconnected { .. }))
            .expect("a drop");
        let mut got: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        for (_, event) in &trace[drop_at + 1..] {
            let SimEvent::Deliver { to, stream, bytes } = event else {
                panic!("a second drop: {event:?}");
            };
            assert_eq!(*to, Side::Dest);
            let n = u32::from_le_bytes(bytes[..4].try_into().expect("number"));
            assert_eq!(&bytes[..], &numbered(n)[..], "segment {n} intact");
            got[stream.index()].push(n);
        }
        assert_eq!(got, sent_after, "everything sent after the reconnect, in order");
        assert_eq!(drive_through_reconnect(seed, 100).0, trace, "the seed replays the run");
    });
}

#[test]
fn same_seed_gives_identical_trace() {
    run_seeded("same_seed_gives_identical_trace", |seed| {
        let a = drive(seed, lossy(), 400);
        let b = drive(seed, lossy(), 400);
        assert!(!a.is_empty());
        assert_eq!(a, b);
        let c = drive(seed ^ 0x5555, lossy(), 400);
        assert_ne!(a, c, "another seed gives another trace");
    });
}

#[test]
fn bytes_arrive_in_order_per_stream_and_direction() {
    run_seeded("bytes_arrive_in_order_per_stream_and_direction", |seed| {
        let faults = SimFaults { corrupt_byte_probability: 0.0, ..lossy() };
        let mut net = SimNet::new(seed, faults);
        let mut sent: [[Vec<u8>; 2]; 2] = Default::default();
        let mut got: [[Vec<u8>; 2]; 2] = Default::default();
        let side_ix = |s: Side| usize::from(s == Side::Dest);
        for i in 0..2_000u32 {
            let from = if i % 5 < 2 { Side::Dest } else { Side::Source };
            let stream = if i % 3 == 0 { StreamKind::Urgent } else { StreamKind::Bulk };
            let seg = segment(i);
            net.send(from, stream, &seg).expect("no disconnects configured");
            sent[side_ix(from)][stream.index()].extend_from_slice(&seg);
            if i % 4 == 0 {
                if let Some((_, SimEvent::Deliver { to, stream, bytes })) = net.next_event() {
                    got[side_ix(to.peer())][stream.index()].extend_from_slice(&bytes);
                }
            }
        }
        let mut last_us = 0;
        while let Some((t, ev)) = net.next_event() {
            assert!(t >= last_us, "clock never goes back");
            last_us = t;
            let SimEvent::Deliver { to, stream, bytes } = ev else {
                panic!("unexpected {ev:?}");
            };
            got[side_ix(to.peer())][stream.index()].extend_from_slice(&bytes);
        }
        assert_eq!(got, sent);
        let stats = net.stats();
        assert!(stats.losses > 0 && stats.held_back > 0, "{stats:?}");
    });
}

#[test]
fn urgent_overtakes_bulk_behind_a_lost_segment() {
    run_seeded("urgent_overtakes_bulk_behind_a_lost_segment", |seed| {
        let mut net = SimNet::new(
            seed,
            SimFaults {
                delay_us: (100, 200),
                loss_probability: 0.2,
                retransmit_delay_us: 50_000,
                ..SimFaults::default()
            },
        );
        let mut overtakes = 0;
        for round in 0..200u32 {
            net.send(Side::Source, StreamKind::Bulk, &round.to_le_bytes()).expect("bulk");
            net.send(Side::Source, StreamKind::Urgent, &round.to_le_bytes()).expect("urgent");
            let mut order = Vec::new();
            for _ in 0..2 {
                if let Some((_, SimEvent::Deliver { stream, .. })) = net.next_event() {
                    order.push(stream);
                }
            }
            if order == [StreamKind::Urgent, StreamKind::Bulk] {
                overtakes += 1;
            }
        }
        // A bulk loss (p = 0.2) makes the urgent segment of that round arrive first.
        assert!(overtakes >= 10, "urgent overtook bulk only {overtakes} times");
    });
}

#[test]
fn corruption_rate_matches_configuration() {
    run_seeded("corruption_rate_matches_configuration", |seed| {
        let p = 0.01;
        let mut net =
            SimNet::new(seed, SimFaults { corrupt_byte_probability: p, ..SimFaults::default() });
        let payload = vec![0u8; 4096];
        let n_segments = 256;
        for _ in 0..n_segments {
            net.send(Side::Source, StreamKind::Bulk, &payload).expect("send");
        }
        let mut flipped_bytes = 0u64;
        while let Some((_, SimEvent::Deliver { bytes, .. })) = net.next_event() {
            // Exactly one bit flipped in every corrupted byte.
            for b in bytes.iter().filter(|b| **b != 0) {
                assert_eq!(b.count_ones(), 1);
                flipped_bytes += 1;
            }
        }
        let total = (payload.len() * n_segments) as f64;
        let expected = total * p;
        let sigma = (total * p * (1.0 - p)).sqrt();
        assert!(
            (flipped_bytes as f64 - expected).abs() < 5.0 * sigma,
            "{flipped_bytes} flipped, expected {expected:.0} +- {sigma:.0}"
        );
        assert_eq!(net.stats().bytes_corrupted, flipped_bytes);
    });
}

#[test]
fn random_disconnect_rate_matches_configuration() {
    run_seeded("random_disconnect_rate_matches_configuration", |seed| {
        let p = 0.02;
        let runs = 300u64;
        let mut sends_before_drop = 0u64;
        for run in 0..runs {
            let mut net = SimNet::new(
                seed.wrapping_add(run),
                SimFaults { disconnect_probability: p, ..SimFaults::default() },
            );
            let mut accepted = 0;
            let err = loop {
                match net.send(Side::Source, StreamKind::Bulk, b"x") {
                    Ok(()) => accepted += 1,
                    Err(e) => break e,
                }
                assert!(accepted < 100_000, "never disconnected");
            };
            assert!(matches!(err, SimError::Disconnected { cause: DisconnectCause::Random, .. }));
            sends_before_drop += accepted;
            // Later sends fail too, and the event says so.
            assert!(net.send(Side::Dest, StreamKind::Urgent, b"y").is_err());
            let events: Vec<_> = std::iter::from_fn(|| net.next_event()).collect();
            assert!(matches!(events.last(), Some((_, SimEvent::Disconnected { .. }))));
        }
        // Geometric: mean failures before success = (1 - p) / p = 49.
        let mean = sends_before_drop as f64 / runs as f64;
        assert!((mean - 49.0).abs() < 12.0, "mean sends before drop {mean}");
    });
}

#[test]
fn disconnect_at_time_and_after_bytes_are_exact() {
    let mut net = SimNet::new(
        1,
        SimFaults {
            delay_us: (1_000, 1_000),
            disconnect_at_us: Some(2_500),
            ..SimFaults::default()
        },
    );
    net.send(Side::Source, StreamKind::Bulk, b"early").expect("send");
    // The clock cannot skip the pending delivery.
    assert_eq!(net.advance_to(2_000), 1_000);
    let (t, first) = net.next_event().expect("early delivery");
    assert_eq!(t, 1_000);
    assert!(matches!(first, SimEvent::Deliver { .. }));
    assert_eq!(net.advance_to(2_000), 2_000);
    net.send(Side::Source, StreamKind::Bulk, b"lost in flight").expect("send");
    let events: Vec<_> = std::iter::from_fn(|| net.next_event()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(
        events[0],
        (2_500, SimEvent::Disconnected { cause: DisconnectCause::AtTime, .. })
    ));
    assert_eq!(net.stats().segments_dropped, 1);
    assert!(net.send(Side::Source, StreamKind::Bulk, b"x").is_err());

    let mut net =
        SimNet::new(2, SimFaults { disconnect_after_bytes: Some(10), ..SimFaults::default() });
    net.send(Side::Source, StreamKind::Bulk, &[0; 6]).expect("6 bytes");
    net.send(Side::Dest, StreamKind::Urgent, &[0; 4]).expect("10 bytes");
    let err = net.send(Side::Source, StreamKind::Bulk, &[0; 1]).expect_err("11th byte");
    assert_eq!(err, SimError::Disconnected { cause: DisconnectCause::AfterBytes, len_bytes: 1 });
}

#[test]
fn seed_env_format_parses() {
    assert_eq!(parse_seed("12345"), Some(12345));
    assert_eq!(parse_seed(" 0xff "), Some(255));
    assert_eq!(parse_seed("nope"), None);
}

#[test]
fn failing_run_prints_its_seed_and_propagates() {
    let result = std::panic::catch_unwind(|| {
        run_seeded("deliberate failure", |seed| {
            assert_eq!(seed, seed.wrapping_add(1), "deliberate");
        })
    });
    assert!(result.is_err(), "the panic propagates after the seed is printed");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Oracle: whatever the delay/loss/hold-back model, each (direction, stream) delivers
        /// exactly the concatenation of what was sent on it.
        #[test]
        fn any_fault_mix_preserves_each_stream(
            seed in any::<u64>(),
            delay_lo in 0u64..1_000,
            delay_extra in 0u64..5_000,
            loss in 0.0f64..0.5,
            hold in 0.0f64..0.5,
            sends in proptest::collection::vec((any::<bool>(), any::<bool>(), 1usize..300, 0u64..400), 1..120),
        ) {
            let mut net = SimNet::new(seed, SimFaults {
                delay_us: (delay_lo, delay_lo + delay_extra),
                loss_probability: loss,
                retransmit_delay_us: 3_000,
                reorder_probability: hold,
                reorder_extra_us: 2_000,
                ..SimFaults::default()
            });
            let mut sent: [[Vec<u8>; 2]; 2] = Default::default();
            let mut got: [[Vec<u8>; 2]; 2] = Default::default();
            for (n, (from_dest, urgent, len, gap_us)) in sends.into_iter().enumerate() {
                let from = if from_dest { Side::Dest } else { Side::Source };
                let stream = if urgent { StreamKind::Urgent } else { StreamKind::Bulk };
                let bytes: Vec<u8> = (0..len).map(|j| (n * 13 + j) as u8).collect();
                net.send(from, stream, &bytes).expect("no disconnect configured");
                sent[usize::from(from_dest)][stream.index()].extend_from_slice(&bytes);
                let target = net.now_us() + gap_us;
                while net.peek_time_us().is_some_and(|t| t <= target) {
                    if let Some((_, SimEvent::Deliver { to, stream, bytes })) = net.next_event() {
                        got[usize::from(to.peer() == Side::Dest)][stream.index()].extend_from_slice(&bytes);
                    }
                }
                net.advance_to(target);
            }
            while let Some((_, ev)) = net.next_event() {
                if let SimEvent::Deliver { to, stream, bytes } = ev {
                    got[usize::from(to.peer() == Side::Dest)][stream.index()].extend_from_slice(&bytes);
                }
            }
            prop_assert_eq!(got, sent);
        }
    }
}
