//! Liveness of a migration connection: how long a silent peer may go unnoticed.
//!
//! One setting, `liveness`, becomes TCP_USER_TIMEOUT (sent data, or a keepalive probe, left
//! unacknowledged that long fails the connection with ETIMEDOUT) and keepalive probes, so an
//! idle connection is checked too: without them a side that only waits (a destination
//! waiting for the next page, a source waiting for DoneAck) would wait forever on a
//! partitioned link. The kernel answers keepalive probes itself, so a busy but healthy peer
//! never trips it.

use super::{sockopt, TcpError};
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::net::TcpStream;
use std::time::Duration;

/// Keepalive counts whole seconds, at least one.
const KEEPALIVE_FLOOR: Duration = Duration::from_secs(1);
/// The kernel's limit on TCP_KEEPIDLE and TCP_KEEPINTVL (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL).
const KEEPALIVE_CEILING: Duration = Duration::from_secs(32_767);

/// The keepalive timers derived from a liveness setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveSettings {
    /// TCP_KEEPIDLE: idle time before the first probe (half the liveness, at least 1 s).
    pub idle: Duration,
    /// TCP_KEEPINTVL: time between probes (a quarter of the liveness, at least 1 s).
    pub interval: Duration,
    /// TCP_KEEPCNT: probes, enough that idle + count * interval covers the liveness (with
    /// TCP_USER_TIMEOUT set the kernel ends the connection on the timeout, not the count).
    pub count: u32,
}

impl KeepaliveSettings {
    /// The timers for `liveness`. Below 2 s the keepalive's one-second granularity makes an
    /// idle connection's detection take up to 2 s; a connection with data in flight still
    /// fails after `liveness`.
    pub fn for_liveness(liveness: Duration) -> Self {
        let whole = |d: Duration| {
            Duration::from_secs(d.as_secs()).clamp(KEEPALIVE_FLOOR, KEEPALIVE_CEILING)
        };
        let idle = whole(liveness / 2);
        let interval = whole(liveness / 4);
        let rest_ms = liveness.saturating_sub(idle).as_millis();
        let count = rest_ms.div_ceil(interval.as_millis()).clamp(1, 127) as u32;
        Self { idle, interval, count }
    }
}

/// Sets TCP_USER_TIMEOUT to `liveness` and keepalive from
/// [`KeepaliveSettings::for_liveness`] on `stream`.
pub fn set_liveness(stream: &TcpStream, liveness: Duration) -> Result<(), TcpError> {
    let sock = SockRef::from(stream);
    let k = KeepaliveSettings::for_liveness(liveness);
    let keepalive =
        TcpKeepalive::new().with_time(k.idle).with_interval(k.interval).with_retries(k.count);
    sockopt("SO_KEEPALIVE", sock.set_tcp_keepalive(&keepalive))?;
    sockopt("TCP_USER_TIMEOUT", sock.set_tcp_user_timeout(Some(liveness)))
}

/// What a connection's liveness options read back as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessReport {
    /// TCP_USER_TIMEOUT (`None`: the kernel's default).
    pub user_timeout: Option<Duration>,
    /// SO_KEEPALIVE.
    pub keepalive: bool,
    /// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT.
    pub timers: KeepaliveSettings,
}

/// Reads the liveness options of `stream` back from the kernel.
pub fn liveness_of(stream: &TcpStream) -> io::Result<LivenessReport> {
    let sock = SockRef::from(stream);
    Ok(LivenessReport {
        user_timeout: sock.tcp_user_timeout()?,
        keepalive: sock.keepalive()?,
        timers: KeepaliveSettings {
            idle: sock.tcp_keepalive_time()?,
            interval: sock.tcp_keepalive_interval()?,
            count: sock.tcp_keepalive_retries()?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn two_seconds_probe_after_one_each_second() {
        let k = KeepaliveSettings::for_liveness(ms(2000));
        assert_eq!((k.idle, k.interval, k.count), (ms(1000), ms(1000), 1));
    }

    #[test]
    fn long_liveness_covers_itself_with_probes() {
        for liveness_ms in [3000, 10_000, 60_000, 600_000] {
            let k = KeepaliveSettings::for_liveness(ms(liveness_ms));
            let covered = k.idle + k.interval * k.count;
            assert!(covered >= ms(liveness_ms), "{liveness_ms}: {k:?}");
            assert!(k.idle <= ms(liveness_ms), "{liveness_ms}: {k:?}");
        }
    }

    #[test]
    fn short_liveness_stays_at_the_floor() {
        let k = KeepaliveSettings::for_liveness(ms(300));
        assert_eq!((k.idle, k.interval, k.count), (ms(1000), ms(1000), 1));
    }
}
