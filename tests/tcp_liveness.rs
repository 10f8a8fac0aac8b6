//! Liveness of the migration streams: every stream of a pair, on both sides, carries
//! TCP_USER_TIMEOUT and keepalive derived from one setting; and a silent partition (an
//! nftables rule dropping every packet, inside a private network namespace) fails both ends'
//! ring streams with a typed timeout naming the liveness, within a few seconds, whether the
//! end was sending or only waiting.

use hybridmig::host_check::{require_commands, require_root};
use hybridmig::ring::Ring;
use hybridmig::session::{AcceptorConfig, Initiator, Offer};
use hybridmig::transport::ring_streams::{RingStreams, StreamError};
use hybridmig::transport::tcp::{
    self, liveness_of, KeepaliveSettings, PairListener, StreamPair, TcpOptions,
};
use hybridmig::transport::StreamKind;
use hybridmig::wire::{Limits, MigrationMode, Region, PAGE_SIZE};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

fn regions() -> Vec<Region> {
    vec![Region { guest_phys: 0, size_bytes: 16 * PAGE_SIZE as u64 }]
}

/// Both ends of a session opened with `liveness`: (source's pair, destination's pair).
fn pairs(liveness: Option<Duration>) -> (StreamPair, StreamPair) {
    let options = TcpOptions { liveness, ..TcpOptions::default() };
    let mut l = PairListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        options.clone(),
        AcceptorConfig::new(regions()),
    )
    .expect("bind");
    let addr = l.local_addr().expect("addr");
    let source = std::thread::spawn(move || {
        let offer = Offer::new(9, MigrationMode::Postcopy, regions());
        tcp::connect_with(addr, Initiator::new(offer), &options).expect("connect")
    });
    let dest = l.accept_pair(WAIT).expect("accept");
    (source.join().expect("source"), dest)
}

#[test]
fn every_stream_on_both_sides_carries_the_liveness() {
    for (liveness_ms, idle_s, interval_s, count) in [(2000, 1, 1, 1), (10_000, 5, 2, 3)] {
        let liveness = Duration::from_millis(liveness_ms);
        let (source, dest) = pairs(Some(liveness));
        for (side, pair) in [("source", &source), ("destination", &dest)] {
            for kind in StreamKind::ALL {
                let got = liveness_of(pair.stream(kind)).expect("getsockopt");
                let what = format!("{side} {kind:?} with liveness {liveness_ms} ms: {got:?}");
                assert_eq!(got.user_timeout, Some(liveness), "{what}");
                assert!(got.keepalive, "{what}");
                let want = KeepaliveSettings {
                    idle: Duration::from_secs(idle_s),
                    interval: Duration::from_secs(interval_s),
                    count,
                };
                assert_eq!(got.timers, want, "{what}");
            }
        }
    }
}

#[test]
fn no_liveness_keeps_the_kernel_defaults() {
    let (source, dest) = pairs(None);
    for pair in [&source, &dest] {
        for kind in StreamKind::ALL {
            let got = liveness_of(pair.stream(kind)).expect("getsockopt");
            assert_eq!(got.user_timeout, None, "{kind:?}: {got:?}");
            assert!(!got.keepalive, "{kind:?}: {got:?}");
        }
    }
}

#[test]
fn the_default_liveness_is_two_seconds() {
    assert_eq!(TcpOptions::default().liveness, Some(Duration::from_secs(2)));
    assert_eq!(tcp::DEFAULT_LIVENESS, Duration::from_secs(2));
}

/// A network namespace of this test's own, deleted by name when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let name = format!("hm-liveness-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }

    /// Moves the calling thread into the namespace (threads it spawns follow it).
    fn enter(&self) {
        let file = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns file");
        // SAFETY: setns on a namespace descriptor we hold open; it moves only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Drops every TCP packet inside the namespace (both directions cross its loopback).
    fn partition(&self) {
        let rules = "table inet hm_partition {\n  chain input {\n    type filter hook input \
                     priority 0; policy accept;\n    meta l4proto tcp drop\n  }\n}\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        nft.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("rules");
        assert!(nft.wait().expect("nft").success(), "nft refused the partition rule");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("spawn");
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// One end's ring streams, pumped until a stream fails.
struct End {
    ring: Ring,
    streams: RingStreams,
    failed: Option<(StreamError, Duration)>,
}

impl End {
    fn new(pair: &StreamPair) -> End {
        let mut ring = Ring::new(32).expect("ring");
        let streams =
            RingStreams::new(&mut ring, pair, 2, 64 << 10, Limits::default()).expect("streams");
        End { ring, streams, failed: None }
    }

    fn pump(&mut self, since: Instant) {
        if self.failed.is_some() {
            return;
        }
        self.ring.submit_and_wait(1, Some(Duration::from_millis(10))).expect("ring");
        while let Some(c) = self.ring.next_completion() {
            if let Err(e) = self.streams.on_completion(&mut self.ring, c) {
                self.failed = Some((e, since.elapsed()));
                return;
            }
        }
    }
}

#[test]
fn a_silent_partition_fails_both_ends_with_a_typed_timeout() {
    let test = "a_silent_partition_fails_both_ends_with_a_typed_timeout";
    if !require_root(test) || !require_commands(&[("ip", "iproute2"), ("nft", "nftables")], test) {
        return;
    }
    let ns = Netns::create();
    let (source, dest) = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            let (source_pair, dest_pair) = pairs(Some(tcp::DEFAULT_LIVENESS));
            let (mut source, mut dest) = (End::new(&source_pair), End::new(&dest_pair));
            ns.partition();
            let cut = Instant::now();
            // The source has data in flight (retransmissions); the destination only waits
            // (keepalive probes).
            let buf = source.streams.take_send_buf(StreamKind::Bulk).expect("send buffer");
            let mut bytes = buf;
            bytes.resize(64 << 10, 0x5A);
            source.streams.send(&mut source.ring, StreamKind::Bulk, bytes).expect("send");
            while (source.failed.is_none() || dest.failed.is_none()) && cut.elapsed() < 4 * WAIT {
                source.pump(cut);
                dest.pump(cut);
            }
            (source.failed, dest.failed)
        })
        .join()
        .expect("namespace thread")
    });
    drop(ns);
    for (side, failed) in [("source", source), ("destination", dest)] {
        let (err, after) = failed.unwrap_or_else(|| panic!("the {side} never noticed"));
        assert!(
            matches!(err, StreamError::TimedOut { user_timeout_ms: 2000, .. }),
            "{side}: {err}"
        );
        let text = err.to_string();
        assert!(text.contains("no acknowledgement from the peer for 2000 ms"), "{side}: {text}");
        // Keepalive counts whole seconds: an idle stream is declared dead one probe interval
        // after the liveness at most.
        assert!(after < Duration::from_millis(4000), "{side} noticed after {after:?}");
        eprintln!("{side}: {err} after {after:?}");
    }
}
