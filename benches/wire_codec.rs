//! Codec throughput: encode and decode of 64 KiB page windows (zero, random, text-like and a
//! mix), with and without lz4, and the zero-page scan rate.
//!
//! Run: `cargo bench --bench wire_codec`. Figures are bytes of guest memory per second (the
//! window's 64 KiB), on one core.

#[path = "../tests/wire_common/mod.rs"]
mod wire_common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hybridmig::wire::*;
use wire_common::{make_pages, PageKind};

const WINDOW_PAGES: usize = 16; // 64 KiB

fn windows() -> Vec<(&'static str, Vec<u8>)> {
    use PageKind::*;
    let mixed: Vec<PageKind> =
        [Zero, Text, Random, Sparse].iter().copied().cycle().take(WINDOW_PAGES).collect();
    vec![
        ("zero", make_pages(&[Zero; WINDOW_PAGES], 1)),
        ("random", make_pages(&[Random; WINDOW_PAGES], 2)),
        ("text", make_pages(&[Text; WINDOW_PAGES], 3)),
        ("mixed", make_pages(&mixed, 4)),
    ]
}

fn comps() -> [(&'static str, Compression); 2] {
    [("raw", Compression::None), ("lz4", Compression::Lz4)]
}

fn encode(c: &mut Criterion) {
    let limits = Limits::default();
    let meta = WindowMeta::default();
    let mut g = c.benchmark_group("encode_64k");
    g.throughput(Throughput::Bytes((WINDOW_PAGES * PAGE_SIZE) as u64));
    for (name, pages) in windows() {
        for (cname, comp) in comps() {
            let mut out = Vec::with_capacity(2 * pages.len());
            g.bench_function(format!("{name}/{cname}"), |b| {
                b.iter(|| {
                    out.clear();
                    encode_page_window(
                        &mut out,
                        VERSION_CURRENT,
                        &meta,
                        black_box(&pages),
                        comp,
                        &limits,
                    )
                    .expect("encode")
                })
            });
        }
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    let meta = WindowMeta::default();
    let mut g = c.benchmark_group("decode_64k");
    g.throughput(Throughput::Bytes((WINDOW_PAGES * PAGE_SIZE) as u64));
    for (name, pages) in windows() {
        for (cname, comp) in comps() {
            let mut frame = Vec::new();
            let stats =
                encode_page_window(&mut frame, VERSION_CURRENT, &meta, &pages, comp, &limits)
                    .expect("encode");
            eprintln!(
                "{name}/{cname}: {:?}, {} bytes on the wire for {} bytes of pages",
                stats.encoding,
                stats.frame_bytes,
                pages.len()
            );
            let mut dest = vec![0u8; pages.len()];
            g.bench_function(format!("{name}/{cname}"), |b| {
                b.iter(|| {
                    // Header, CRC and payload parse included: what a receiver pays per window.
                    let (f, _) = decode_frame(black_box(&frame), &limits).expect("decode");
                    let FrameBody::PageWindow(w) = f.body else { unreachable!() };
                    w.decode_into(&mut dest).expect("pages")
                })
            });
        }
    }
    g.finish();
}

fn zero_scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("zero_scan");
    let page = vec![0u8; PAGE_SIZE];
    g.throughput(Throughput::Bytes(PAGE_SIZE as u64));
    g.bench_function("zero_page_4k", |b| b.iter(|| is_zero(black_box(&page))));
    let big = vec![0u8; 1 << 20];
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("zero_1m", |b| b.iter(|| is_zero(black_box(&big))));
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = encode, decode, zero_scan }
criterion_main!(benches);
