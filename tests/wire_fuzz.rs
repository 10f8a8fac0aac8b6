//! The fuzz target's harness, run here as a bounded randomized test: valid streams, then
//! mutations of them (bit flips, cuts, splices, length and type edits), then pure noise.
//!
//! `WIRE_FUZZ_ITERS=n` runs longer (the default keeps the suite fast);
//! `WIRE_FUZZ_SEEDS_DIR=dir` writes the valid seed streams there (the cargo-fuzz corpus).

mod wire_common;

use std::time::{Duration, Instant};

use hybridmig::wire::fuzzing::exercise_decoders;
use hybridmig::wire::*;
use wire_common::{make_pages, PageKind, Rng};

fn seed_streams() -> Vec<Vec<u8>> {
    let limits = Limits::default();
    let mut seeds = Vec::new();
    for version in [hybridmig::wire::VERSION_MIN, hybridmig::wire::VERSION_CURRENT] {
        let mut s = Vec::new();
        let hello = Hello {
            max_version: version,
            session_id: 7,
            stream: StreamKind::Bulk,
            mode: MigrationMode::Hybrid,
            page_size: PAGE_SIZE as u32,
            regions: vec![
                Region { guest_phys: 0, size_bytes: 64 * PAGE_SIZE as u64 },
                Region { guest_phys: 1 << 30, size_bytes: 4096 * PAGE_SIZE as u64 },
            ],
            auth_token: b"token",
            resume: version == hybridmig::wire::VERSION_CURRENT,
        };
        encode_frame(&mut s, version, &FrameBody::Hello(hello), &limits).unwrap();
        let kinds = [
            vec![PageKind::Zero; 3],
            vec![PageKind::Text; 2],
            vec![PageKind::Random],
            vec![PageKind::Zero, PageKind::Text, PageKind::Random, PageKind::Sparse],
        ];
        for (i, k) in kinds.iter().enumerate() {
            let pages = make_pages(k, i as u64);
            let meta = WindowMeta { region: 0, first_page: i as u64, ..WindowMeta::default() };
            for comp in [Compression::None, Compression::Lz4] {
                encode_page_window(&mut s, version, &meta, &pages, comp, &limits).unwrap();
            }
        }
        let mut bitmap = vec![0u64; 64];
        bitmap[0] = 0xF0F0_0000_0000_00FF;
        bitmap[9] = u64::MAX;
        encode_dirty_set(&mut s, version, 1, &bitmap, 4096, &limits).unwrap();
        bitmap.iter_mut().step_by(2).for_each(|w| *w = 0x5555_5555_5555_5555);
        encode_dirty_set(&mut s, version, 1, &bitmap, 4096, &limits).unwrap();
        let small: [FrameBody<'_>; 4] = [
            FrameBody::VmState(b"vcpu state blob"),
            FrameBody::Control(Control { kind: ControlKind::Ack, seq: 3, value: 4 }),
            FrameBody::Done(Done { pages: 1, bytes: 2, memory_digest: 3 }),
            FrameBody::DoneAck(DoneAck {
                counts: Done { pages: 1, bytes: 2, memory_digest: 3 },
                verdict: DoneVerdict::Match,
            }),
        ];
        for body in &small {
            encode_frame(&mut s, version, body, &limits).unwrap();
        }
        let fault = FaultRequest { region: 1, page: 5, vcpu: 1, request_id: version.into() };
        let fault = FaultRequest { request_id: if version >= 2 { 9 } else { 0 }, ..fault };
        encode_frame(&mut s, version, &FrameBody::FaultRequest(fault), &limits).unwrap();
        seeds.push(s);
    }
    seeds
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.next_u64() % 4 {
        if v.is_empty() {
            break;
        }
        let at = (rng.next_u64() % v.len() as u64) as usize;
        match rng.next_u64() % 6 {
            0 => v[at] ^= 1 << (rng.next_u64() % 8),
            1 => v.truncate(at),
            2 => v[at] = rng.next_u64() as u8,
            3 => {
                let len = (rng.next_u64() % 64) as usize;
                let from = (rng.next_u64() % v.len() as u64) as usize;
                let piece: Vec<u8> = v[from..(from + len).min(v.len())].to_vec();
                v.splice(at..at, piece);
            }
            4 => {
                // Rewrite a header-sized window with plausible header values.
                let val = [0u8, 1, 2, 3, 0xff, 0x7f][(rng.next_u64() % 6) as usize];
                v[at] = val;
            }
            _ => {
                let n = (rng.next_u64() % 8) as usize;
                v.drain(at..(at + n).min(v.len()));
            }
        }
    }
    v
}

#[test]
fn seeds_decode_completely() {
    for seed in seed_streams() {
        let mut reader = FrameReader::new(Limits::default());
        reader.push_bytes(&seed);
        let mut frames = 0;
        while let Some(_frame) = reader.next_frame().expect("valid seed") {
            frames += 1;
        }
        assert!(frames >= 15, "only {frames} frames");
        assert_eq!(reader.buffered_bytes(), 0);
        let mut data = vec![3u8];
        data.extend_from_slice(&seed);
        exercise_decoders(&data);
    }
}

#[test]
fn fuzz_harness_on_mutations_and_noise() {
    let iters: u64 =
        std::env::var("WIRE_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let deadline = Instant::now() + Duration::from_secs(if iters > 3000 { 3600 } else { 20 });
    let seeds = seed_streams();
    if let Some(dir) = std::env::var_os("WIRE_FUZZ_SEEDS_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            let mut data = vec![i as u8 * 17];
            data.extend_from_slice(s);
            std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), data).unwrap();
        }
    }
    let mut rng = Rng(0x5EED);
    for i in 0..iters {
        if Instant::now() > deadline {
            break;
        }
        let mut data = vec![rng.next_u64() as u8];
        if i % 10 == 9 {
            let len = (rng.next_u64() % 256) as usize;
            data.extend((0..len).map(|_| rng.next_u64() as u8));
        } else {
            let seed = &seeds[(i % seeds.len() as u64) as usize];
            data.extend(mutate(seed, &mut rng));
        }
        exercise_decoders(&data);
    }
}
