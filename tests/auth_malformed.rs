//! Malformed and hostile input to the Noise handshake: the fuzz target's harness over
//! mutations of real handshake messages and noise; every single-bit change of a real opening
//! refused with a typed error; and, on real TCP, a listener that drops each broken handshake
//! with the cause and then pairs the real source at once. Settings that differ (a wrong key,
//! `--no-encrypt` on one side only) are refused with errors that name them.
//!
//! `AUTH_FUZZ_ITERS=n` runs the randomized part longer.

mod wire_common;

use hybridmig::secure::fuzzing::exercise_handshake_input;
use hybridmig::secure::{open_handshake, respond, Credential, Psk, SecureConfig, SecureError};
use hybridmig::session::{AcceptorConfig, Initiator, Offer};
use hybridmig::transport::tcp::{self, PairListener, TcpError, TcpOptions};
use hybridmig::wire::{MigrationMode, Region, StreamKind, PAGE_SIZE};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use wire_common::Rng;

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

fn cfg(key: u8) -> SecureConfig {
    SecureConfig::new(Credential::Psk(Psk::from_bytes([key; 32])))
}

fn regions() -> Vec<Region> {
    vec![Region { guest_phys: 0, size_bytes: 64 * PAGE_SIZE as u64 }]
}

/// Real messages of one handshake: the opening, the answer, a sealed Hello record.
fn real_messages() -> Vec<Vec<u8>> {
    let cfg = cfg(0x5A);
    let (hs, opening) = open_handshake(&cfg, StreamKind::Bulk).expect("opening");
    let (_, _, answer) = respond(&cfg, &opening).expect("answer");
    let mut cipher = hs.on_answer(&answer).expect("cipher");
    let record = cipher.seal_one(b"a hello of some length").expect("seal");
    vec![opening, answer, record]
}

#[test]
fn mutated_handshake_messages_and_noise_never_get_through() {
    let iters: usize =
        std::env::var("AUTH_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let mut rng = Rng(0xA0_7E);
    let seeds = real_messages();
    for seed in &seeds {
        exercise_handshake_input(seed);
    }
    for i in 0..iters {
        let mut input = seeds[i % seeds.len()].clone();
        match below(&mut rng, 4) {
            0 => {
                let at = below(&mut rng, input.len() as u64) as usize;
                input[at] ^= 1 << below(&mut rng, 8);
            }
            1 => input.truncate(below(&mut rng, input.len() as u64) as usize),
            2 => {
                let other = &seeds[below(&mut rng, seeds.len() as u64) as usize];
                let cut = below(&mut rng, other.len() as u64) as usize;
                input.extend_from_slice(&other[cut..]);
            }
            _ => {
                let len = below(&mut rng, 200) as usize;
                input = (0..len).map(|_| below(&mut rng, 256) as u8).collect();
            }
        }
        exercise_handshake_input(&input);
    }
}

#[test]
fn every_bit_flip_of_a_real_opening_is_refused_with_a_typed_error() {
    let cfg = cfg(1);
    let (_, opening) = open_handshake(&cfg, StreamKind::Urgent).expect("opening");
    for bit in 0..opening.len() * 8 {
        let mut flipped = opening.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let refused = respond(&cfg, &flipped).expect_err("a flipped opening");
        let expected = match bit / 8 {
            0..=3 => matches!(refused.error, SecureError::NotAnOpening { .. }),
            4 => matches!(refused.error, SecureError::Format { .. }),
            5 => matches!(
                refused.error,
                SecureError::WrongKey | SecureError::InvalidOpening { field: "stream", .. }
            ),
            6 => matches!(
                refused.error,
                SecureError::EncryptionDiffers { .. }
                    | SecureError::SuiteDiffers { .. }
                    | SecureError::InvalidOpening { .. }
            ),
            7 => matches!(refused.error, SecureError::InvalidOpening { field: "flags", .. }),
            _ => matches!(refused.error, SecureError::WrongKey),
        };
        assert!(expected, "bit {bit}: {}", refused.error);
    }
    let err = respond(&cfg, &opening[..10]).expect_err("short");
    assert!(matches!(err.error, SecureError::NotAnOpening { .. }), "{}", err.error);
}

fn secure_listener(key: u8, encrypt: bool) -> (PairListener, std::net::SocketAddr) {
    let options = TcpOptions {
        handshake_timeout: Duration::from_millis(300),
        security: Some(cfg(key).encrypting(encrypt)),
        ..TcpOptions::default()
    };
    let l = PairListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        options,
        AcceptorConfig::new(regions()),
    )
    .expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

fn connect(
    addr: std::net::SocketAddr,
    key: u8,
    encrypt: bool,
    id: u64,
) -> Result<tcp::StreamPair, TcpError> {
    let options =
        TcpOptions { security: Some(cfg(key).encrypting(encrypt)), ..TcpOptions::default() };
    tcp::connect_with(
        addr,
        Initiator::new(Offer::new(id, MigrationMode::Hybrid, regions())),
        &options,
    )
}

/// Sends `bytes` on a new connection and keeps it open.
fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("send");
    s
}

#[test]
fn a_listener_drops_broken_handshakes_with_the_cause_and_pairs_the_real_source() {
    let (mut l, addr) = secure_listener(7, true);
    let key = cfg(7);
    let (_, opening) = open_handshake(&key, StreamKind::Bulk).expect("opening");
    let mut flipped = opening.clone();
    flipped[30] ^= 4;
    let mut bad_record = opening.clone();
    bad_record.extend_from_slice(&[0, 40]);
    bad_record.extend_from_slice(&[0xEE; 40]);
    let mut short_record = opening.clone();
    short_record.extend_from_slice(&[0, 5, 1, 2, 3, 4, 5]);
    let held = [
        send(addr, &opening[..20]),
        send(addr, &flipped),
        send(addr, &bad_record),
        send(addr, &short_record),
        send(addr, &opening),
    ];
    std::thread::sleep(Duration::from_millis(400));
    let client = std::thread::spawn(move || connect(addr, 7, true, 99));
    let pair = l.accept_pair(Duration::from_secs(5)).expect("the real source pairs");
    assert_eq!(pair.session_id(), 99);
    assert!(pair.encrypted());
    let theirs = client.join().expect("client").expect("connect");
    assert!(theirs.encrypted() && theirs.ticket.is_some() && theirs.ticket == pair.ticket);
    // The stalled handshakes are dropped on their own deadlines.
    let err = l.accept_pair(Duration::from_millis(600)).expect_err("nothing else pairs");
    assert!(matches!(err, TcpError::Timeout { .. }), "{err}");
    let reasons: Vec<String> = l.take_dropped().iter().map(|d| d.reason.to_string()).collect();
    let all = reasons.join("\n");
    for cause in [
        "timed out",
        "wrong key",
        "the first message after the handshake did not decrypt",
        "a record of 5 bytes",
    ] {
        assert!(all.contains(cause), "no drop naming `{cause}`:\n{all}");
    }
    drop(held);
}

#[test]
fn wrong_keys_and_differing_settings_are_refused_on_both_sides() {
    let (mut l, addr) = secure_listener(8, true);
    let accepting = std::thread::spawn(move || {
        let _ = l.accept_pair(Duration::from_millis(1500));
        l.take_dropped().into_iter().map(|d| d.reason.to_string()).collect::<Vec<_>>()
    });
    let wrong = connect(addr, 9, true, 1).expect_err("a wrong key");
    assert!(matches!(wrong.secure_error(), Some(SecureError::RefusedKey)), "{wrong}");
    let clear =
        connect(addr, 8, false, 2).expect_err("--no-encrypt against an encrypting destination");
    assert!(
        matches!(wrong.secure_error(), Some(SecureError::RefusedKey))
            && matches!(
                clear.secure_error(),
                Some(SecureError::EncryptionDiffers { source_encrypts: false })
            ),
        "{clear}"
    );
    assert!(clear.to_string().contains("--no-encrypt"), "{clear}");
    let mut plain = TcpStream::connect(addr).expect("connect");
    let hello = Initiator::new(Offer::new(3, MigrationMode::Hybrid, regions()))
        .hello(StreamKind::Bulk)
        .expect("hello");
    plain.write_all(&hello).expect("plain hello");
    plain.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    let reasons = accepting.join().expect("listener").join("\n");
    assert!(reasons.contains("wrong key"), "{reasons}");
    assert!(reasons.contains("the source sends clear"), "{reasons}");
    assert!(reasons.contains("plain Hello without the Noise handshake"), "{reasons}");
}

#[test]
fn without_encryption_both_sides_authenticate_and_frames_stay_clear() {
    let (mut l, addr) = secure_listener(4, false);
    let client = std::thread::spawn(move || connect(addr, 4, false, 5));
    let pair = l.accept_pair(Duration::from_secs(5)).expect("pair");
    let theirs = client.join().expect("client").expect("connect");
    assert!(!pair.encrypted() && !theirs.encrypted());
    assert!(pair.ticket.is_some() && pair.ticket == theirs.ticket, "bound all the same");
}
