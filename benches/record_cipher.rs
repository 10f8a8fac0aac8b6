//! Throughput of the Noise transport records on every frame: sealing a 64 KiB send buffer into
//! records and opening them again, for each cipher suite (AES-256-GCM, ChaCha20-Poly1305).
//!
//! Run: `cargo bench --bench record_cipher`. Figures are plaintext bytes per second on one
//! core; docs/security.md says which suite is the default and why.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hybridmig::secure::{
    open_handshake, respond, CipherSuite, Credential, Psk, RecordCipher, RecordReader, SecureConfig,
};
use hybridmig::wire::StreamKind;

/// One send buffer of the drivers.
const BUF_BYTES: usize = 64 << 10;

fn cipher_pair(suite: CipherSuite) -> (RecordCipher, RecordCipher) {
    let mut cfg = SecureConfig::new(Credential::Psk(Psk::from_bytes([3; 32])));
    cfg.suite = suite;
    let (hs, opening) = open_handshake(&cfg, StreamKind::Bulk).expect("opening");
    let (responder, _, answer) = respond(&cfg, &opening).expect("answer");
    (hs.on_answer(&answer).expect("initiator"), responder)
}

fn plaintext() -> Vec<u8> {
    (0..BUF_BYTES).map(|i| (i * 131 % 251) as u8).collect()
}

fn seal(c: &mut Criterion) {
    let plain = plaintext();
    let mut g = c.benchmark_group("seal_64k");
    g.throughput(Throughput::Bytes(BUF_BYTES as u64));
    for suite in CipherSuite::ALL {
        let (mut tx, _) = cipher_pair(suite);
        let mut out = Vec::with_capacity(RecordCipher::sealed_len(BUF_BYTES));
        g.bench_function(format!("{suite:?}"), |b| {
            b.iter(|| {
                out.clear();
                tx.seal(black_box(&plain), &mut out).expect("seal");
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn seal_and_open(c: &mut Criterion) {
    let plain = plaintext();
    let mut g = c.benchmark_group("seal_open_64k");
    g.throughput(Throughput::Bytes(BUF_BYTES as u64));
    for suite in CipherSuite::ALL {
        let (mut tx, mut rx) = cipher_pair(suite);
        let mut reader = RecordReader::new();
        let mut out = Vec::with_capacity(RecordCipher::sealed_len(BUF_BYTES));
        g.bench_function(format!("{suite:?}"), |b| {
            b.iter(|| {
                out.clear();
                tx.seal(black_box(&plain), &mut out).expect("seal");
                let mut got = 0usize;
                reader.feed(&mut rx, &out, |p| got += p.len()).expect("open");
                black_box(got)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = seal, seal_and_open
}
criterion_main!(benches);
