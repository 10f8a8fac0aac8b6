//! A userspace delay line: packets cross between two TUN devices, one in each network
//! namespace of the test bed, and each is held for a fixed time before it is handed on.
//!
//! This kernel has no netem (DESIGN.md), so `tbf` can cap the rate and `nft` can drop packets,
//! but nothing in the kernel can add latency. `bench-env/netns up lan1g-rtt1ms` (and
//! `lan1g-rtt5ms`) joins the two namespaces through this forwarder instead of a veth pair: it
//! adds a one-way propagation delay of half the profile's round-trip time to every packet, in
//! both directions, after each side's `tbf`. What it measures: how each migration mode pays for
//! distance. Every network fault costs at least one round trip, so post-copy's blocked time
//! grows with faults x RTT, while the pre-sent working set and the fault window of the hybrid
//! mode cut the number of round trips.
//!
//! The forwarder reads a packet, stamps it due at `now + delay`, and a writer thread per
//! direction hands it to the other device when it is due. The delay is constant, so packets
//! stay in order. The queue is bounded in bytes (a full one drops, as a router would) and the
//! threads run at SCHED_FIFO priority 2, above the migration's event loops (priority 1), since
//! a wire must not wait for a CPU.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::metrics::mono_ns;

/// Errors of the delay line.
#[derive(Debug, thiserror::Error)]
pub enum DelayLineError {
    /// The named namespace could not be opened or entered.
    #[error("network namespace `{ns}`: {source} (bench-env/netns up lan1g-rtt1ms creates it)")]
    Netns {
        /// The namespace.
        ns: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Attaching to the TUN device failed.
    #[error("TUN device `{ifname}` in namespace `{ns}`: {source} (bench-env/netns creates it with `ip tuntap add`; /dev/net/tun must exist)")]
    Tun {
        /// The device.
        ifname: String,
        /// Its namespace.
        ns: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A device name that does not fit an interface name (15 bytes).
    #[error("interface name `{0}` is empty or longer than 15 bytes")]
    BadName(String),
    /// A forwarding thread could not start.
    #[error("starting a forwarding thread: {0}")]
    Thread(std::io::Error),
}

/// Where the delay line sits and how long it holds packets.
#[derive(Debug, Clone)]
pub struct DelayLineConfig {
    /// One end: (namespace, TUN device in it).
    pub a: (String, String),
    /// The other end.
    pub b: (String, String),
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Bytes held per direction at most; a packet beyond is dropped.
    pub limit_bytes: usize,
}

/// Packets held for a fixed delay, in arrival order, bounded in bytes.
#[derive(Debug)]
pub struct DelayQueue {
    held: VecDeque<(u64, Vec<u8>)>,
    held_bytes: usize,
    limit_bytes: usize,
    delay_ns: u64,
}

/// What [`DelayQueue::pop_due`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// The oldest packet, due now.
    Packet(Vec<u8>),
    /// The oldest packet is due in this many nanoseconds.
    WaitNs(u64),
    /// Nothing is held.
    Empty,
}

impl DelayQueue {
    /// A queue that holds each packet for `delay_ns` and at most `limit_bytes` in all.
    pub fn new(delay_ns: u64, limit_bytes: usize) -> Self {
        Self { held: VecDeque::new(), held_bytes: 0, limit_bytes, delay_ns }
    }

    /// Holds `packet`, which arrived at `now_ns`; false (and the packet is dropped) when the
    /// queue is full.
    pub fn push(&mut self, now_ns: u64, packet: Vec<u8>) -> bool {
        if self.held_bytes + packet.len() > self.limit_bytes {
            return false;
        }
        self.held_bytes += packet.len();
        self.held.push_back((now_ns + self.delay_ns, packet));
        true
    }

    /// The oldest packet if it is due at `now_ns`, else how long until it is.
    pub fn pop_due(&mut self, now_ns: u64) -> Due {
        match self.held.front() {
            None => Due::Empty,
            Some(&(due_ns, _)) if due_ns > now_ns => Due::WaitNs(due_ns - now_ns),
            Some(_) => {
                let (_, packet) = self.held.pop_front().expect("front exists");
                self.held_bytes -= packet.len();
                Due::Packet(packet)
            }
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Packets handed on.
    pub packets: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Packets dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// Counters of a delay line: `[a to b, b to a]`.
pub type DelayLineStats = [Arc<DirectionStats>; 2];

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `_IOW('T', 202, int)` from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// Larger than any MTU a TUN device takes.
const MAX_PACKET_BYTES: usize = 65_536;

/// The leading part of `struct ifreq` that TUNSETIFF reads: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// The kernel copies a whole `struct ifreq` (40 bytes on 64-bit Linux) in TUNSETIFF.
const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

/// Opens `/run/netns/NS` (what `ip netns add` creates).
fn open_netns(ns: &str) -> Result<File, DelayLineError> {
    File::open(format!("/run/netns/{ns}"))
        .map_err(|source| DelayLineError::Netns { ns: ns.to_string(), source })
}

/// Moves the calling thread into the network namespace behind `fd`.
fn enter_netns(fd: &File) -> std::io::Result<()> {
    // SAFETY: setns on a namespace file descriptor we own; it affects only this thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches to the existing TUN device `ifname` in namespace `ns`. The file stays bound to
/// that device whatever namespace the thread is in afterwards.
fn attach_tun(ns: &str, ifname: &str) -> Result<File, DelayLineError> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(DelayLineError::BadName(ifname.to_string()));
    }
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|source| DelayLineError::Netns { ns: "(this thread's)".into(), source })?;
    let target = open_netns(ns)?;
    let tun_err = |source| DelayLineError::Tun { ifname: ifname.into(), ns: ns.into(), source };
    enter_netns(&target).map_err(|source| DelayLineError::Netns { ns: ns.into(), source })?;
    let attached = (|| {
        let tun = File::options().read(true).write(true).open("/dev/net/tun")?;
        let mut req =
            IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: TUNSETIFF reads a struct ifreq; IfReq has its layout (name, flags, padding
        // to 40 bytes) and lives across the call.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(tun)
    })();
    // Back home whatever happened, so the caller's later sockets are where it expects.
    enter_netns(&home).map_err(|source| DelayLineError::Netns { ns: "(home)".into(), source })?;
    attached.map_err(tun_err)
}

/// Asks for SCHED_FIFO priority 2 and a 1 us timer slack; best effort (false when refused).
fn wire_priority() -> bool {
    let param = libc::sched_param { sched_priority: 2 };
    // SAFETY: plain syscalls on the calling thread with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
    }
}

/// One direction: the queue between its reader and its writer.
struct Pipe {
    queue: Mutex<DelayQueue>,
    ready: Condvar,
    stats: Arc<DirectionStats>,
}

fn read_side(mut from: File, pipe: &Pipe, stop: &AtomicBool) {
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The device is gone (its namespace was deleted): the line ends.
            Err(_) => break,
        };
        let held = pipe.queue.lock().expect("queue lock").push(mono_ns(), buf[..n].to_vec());
        if held {
            pipe.ready.notify_one();
        } else {
            pipe.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    pipe.ready.notify_one();
}

fn write_side(mut to: File, pipe: &Pipe, stop: &AtomicBool) {
    // Bounded waits, so a stop is seen within 50 ms even when no packet comes.
    const IDLE: Duration = Duration::from_millis(50);
    let mut queue = pipe.queue.lock().expect("queue lock");
    while !stop.load(Ordering::Relaxed) {
        match queue.pop_due(mono_ns()) {
            Due::Packet(packet) => {
                drop(queue);
                if to.write(&packet).is_ok() {
                    pipe.stats.packets.fetch_add(1, Ordering::Relaxed);
                    pipe.stats.bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
                }
                queue = pipe.queue.lock().expect("queue lock");
            }
            Due::WaitNs(ns) => {
                let wait = Duration::from_nanos(ns).min(IDLE);
                queue = pipe.ready.wait_timeout(queue, wait).expect("queue lock").0;
            }
            Due::Empty => queue = pipe.ready.wait_timeout(queue, IDLE).expect("queue lock").0,
        }
    }
}

/// Runs the delay line until `stop` is set or a device disappears; returns its counters.
pub fn run_delay_line(
    cfg: &DelayLineConfig,
    stop: Arc<AtomicBool>,
) -> Result<DelayLineStats, DelayLineError> {
    let tun_a = attach_tun(&cfg.a.0, &cfg.a.1)?;
    let tun_b = attach_tun(&cfg.b.0, &cfg.b.1)?;
    // Each device is read by one direction and written by the other: one more handle each.
    let dup = |tun: &File, (ns, ifname): &(String, String)| {
        tun.try_clone().map_err(|source| DelayLineError::Tun {
            ifname: ifname.clone(),
            ns: ns.clone(),
            source,
        })
    };
    let (a_out, b_out) = (dup(&tun_a, &cfg.a)?, dup(&tun_b, &cfg.b)?);
    let delay_ns = cfg.delay.as_nanos() as u64;
    let stats = DelayLineStats::default();
    let mut writers = Vec::new();
    for ((from, to), counters) in [(tun_a, b_out), (tun_b, a_out)].into_iter().zip(&stats) {
        let pipe = Arc::new(Pipe {
            queue: Mutex::new(DelayQueue::new(delay_ns, cfg.limit_bytes)),
            ready: Condvar::new(),
            stats: counters.clone(),
        });
        let (p, s) = (pipe.clone(), stop.clone());
        // Readers are not joined: one blocked on a device that is still there would wait for
        // its next packet. They end with the process.
        spawn("hm-dl-read", move || read_side(from, &p, &s))?;
        let (p, s) = (pipe, stop.clone());
        writers.push(spawn("hm-dl-write", move || write_side(to, &p, &s))?);
    }
    // A writer sees `stop` within 50 ms, whichever way it was set.
    for t in writers {
        let _ = t.join();
    }
    Ok(stats)
}

fn spawn(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, DelayLineError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if !wire_priority() {
                tracing::warn!("delay line thread runs at normal priority (no CAP_SYS_NICE)");
            }
            body()
        })
        .map_err(DelayLineError::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_each_packet_for_the_delay_in_order() {
        let mut q = DelayQueue::new(1_000, 1 << 20);
        assert_eq!(q.pop_due(0), Due::Empty);
        assert!(q.push(10, vec![1]));
        assert!(q.push(400, vec![2, 2]));
        assert_eq!(q.pop_due(500), Due::WaitNs(510));
        assert_eq!(q.pop_due(1_010), Due::Packet(vec![1]));
        assert_eq!(q.pop_due(1_010), Due::WaitNs(390));
        assert_eq!(q.pop_due(5_000), Due::Packet(vec![2, 2]));
        assert_eq!(q.pop_due(5_000), Due::Empty);
    }

    #[test]
    fn a_full_queue_drops_and_frees_as_it_drains() {
        let mut q = DelayQueue::new(0, 10);
        assert!(q.push(0, vec![0; 6]));
        assert!(!q.push(0, vec![0; 5]), "11 bytes held with a limit of 10");
        assert!(q.push(0, vec![0; 4]));
        assert!(matches!(q.pop_due(0), Due::Packet(p) if p.len() == 6));
        assert!(q.push(0, vec![0; 6]));
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let err = attach_tun("hm-no-such-namespace", "hm-tun0").unwrap_err();
        assert!(matches!(&err, DelayLineError::Netns { ns, .. } if ns == "hm-no-such-namespace"));
        assert!(err.to_string().contains("hm-no-such-namespace"), "{err}");
    }

    #[test]
    fn names_too_long_for_an_interface_are_refused() {
        let err = attach_tun("hm-src", "a-name-of-16-byt").unwrap_err();
        assert!(matches!(err, DelayLineError::BadName(_)), "{err}");
    }
}
