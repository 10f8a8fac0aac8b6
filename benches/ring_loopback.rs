//! Bulk-stream throughput over loopback: the io_uring driver versus a tight blocking
//! `send(2)` loop, same bytes, same receiver (a thread draining with blocking `recv`).
//!
//! Run: `cargo bench --bench ring_loopback` (env: `RING_BENCH_MIB` total MiB, default 1024;
//! `RING_BENCH_DEPTH` sends queued, default 8; `RING_BENCH_MSG_KIB`, default 1024;
//! `RING_BENCH_SNDBUF_KIB` SO_SNDBUF of both senders, default 0 = kernel autotuning;
//! `RING_BENCH_REPS`, default 5).
//! Prints one JSON line per run and a summary line with the ratio ring / blocking.

use hybridmig::ring::{Buf, Ring};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A connected loopback pair plus a thread draining `total_bytes` from the server side.
fn pair_with_drain(
    total_bytes: usize,
    msg_bytes: usize,
) -> (TcpStream, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.set_nodelay(true).expect("nodelay");
    // Same socket settings for both senders; 0 keeps the kernel's autotuning.
    let sndbuf_kib = env_usize("RING_BENCH_SNDBUF_KIB", 0);
    if sndbuf_kib > 0 {
        socket2::SockRef::from(&client).set_send_buffer_size(sndbuf_kib << 10).expect("SO_SNDBUF");
    }
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; msg_bytes];
        let mut got = 0;
        while got < total_bytes {
            match server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("drain: {e}"),
            }
        }
        got
    });
    (client, drain)
}

fn blocking_run(total_bytes: usize, msg_bytes: usize) -> Duration {
    let (mut client, drain) = pair_with_drain(total_bytes, msg_bytes);
    let data = vec![0xA5u8; msg_bytes];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total_bytes {
        client.write_all(&data).expect("send");
        sent += msg_bytes;
    }
    assert_eq!(drain.join().expect("drain"), total_bytes);
    started.elapsed()
}

fn ring_run(
    total_bytes: usize,
    msg_bytes: usize,
    depth: usize,
) -> (Duration, hybridmig::ring::RingStats) {
    let (client, drain) = pair_with_drain(total_bytes, msg_bytes);
    let fd = client.as_raw_fd();
    let mut ring = Ring::new(64).expect("ring");
    let mut free: Vec<Buf> = (0..depth).map(|_| Buf::from_vec(vec![0xA5u8; msg_bytes])).collect();
    let started = Instant::now();
    let (mut submitted, mut completed) = (0usize, 0usize);
    while completed < total_bytes {
        while submitted < total_bytes {
            let Some(mut buf) = free.pop() else { break };
            buf.clear();
            buf.extend_filled(msg_bytes);
            ring.send(fd, buf, 0).expect("send");
            submitted += msg_bytes;
        }
        ring.submit_and_wait(1, None).expect("wait");
        for c in ring.completions() {
            let n = c.result.expect("send result");
            assert_eq!(n, msg_bytes, "MSG_WAITALL sends complete fully");
            completed += n;
            free.extend(c.buf);
        }
    }
    assert_eq!(drain.join().expect("drain"), total_bytes);
    (started.elapsed(), ring.stats())
}

fn gib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64
}

fn main() {
    let total_bytes = env_usize("RING_BENCH_MIB", 1024) << 20;
    let depth = env_usize("RING_BENCH_DEPTH", 8);
    let msg_bytes = env_usize("RING_BENCH_MSG_KIB", 1024) << 10;
    let reps = env_usize("RING_BENCH_REPS", 5).max(1);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (mut blocking_runs, mut ring_runs) = (Vec::new(), Vec::new());
    // Interleaved so both see the same machine state.
    for rep in 0..reps {
        let b = blocking_run(total_bytes, msg_bytes);
        let (r, stats) = ring_run(total_bytes, msg_bytes, depth);
        blocking_runs.push(b);
        ring_runs.push(r);
        println!(
            "{{\"bench\":\"ring_loopback\",\"rep\":{rep},\"blocking_gib_s\":{:.3},\"ring_gib_s\":{:.3},\"ring_wait_ms\":{},\"ring_process_ms\":{},\"zc_notifs\":{},\"zc_copied\":{}}}",
            gib_per_s(total_bytes, b),
            gib_per_s(total_bytes, r),
            stats.wait_ns / 1_000_000,
            stats.process_ns / 1_000_000,
            stats.zc_notifs,
            stats.zc_copied,
        );
    }
    blocking_runs.sort();
    ring_runs.sort();
    let (best_blocking, best_ring) = (blocking_runs[0], ring_runs[0]);
    let (median_blocking, median_ring) = (blocking_runs[reps / 2], ring_runs[reps / 2]);
    println!(
        "{{\"bench\":\"ring_loopback\",\"summary\":true,\"median_ratio\":{:.3},\"total_mib\":{},\"msg_kib\":{},\"depth\":{depth},\"reps\":{reps},\"cores\":{cores},\"blocking_gib_s\":{:.3},\"ring_gib_s\":{:.3},\"ratio\":{:.3}}}",
        median_blocking.as_secs_f64() / median_ring.as_secs_f64(),
        total_bytes >> 20,
        msg_bytes >> 10,
        gib_per_s(total_bytes, best_blocking),
        gib_per_s(total_bytes, best_ring),
        best_blocking.as_secs_f64() / best_ring.as_secs_f64(),
    );
}
