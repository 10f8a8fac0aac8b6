//! Per-connection choice between SEND_ZC and plain send, made from what the kernel reports.
//!
//! Every SEND_ZC asks for usage reports (IORING_SEND_ZC_REPORT_USAGE); each notification CQE
//! then says whether the kernel really avoided the copy or copied anyway
//! (IORING_NOTIF_USAGE_ZC_COPIED, which loopback and veth always set). A connection whose
//! first [`PROBE_COPIED_NOTIFS`] notifications all say "copied" switches to plain send at once,
//! which is cheaper than a copying SEND_ZC; otherwise it decides after [`PROBE_NOTIFS`].
//!
//! The early exit matters behind a rate limit: a probing SEND_ZC's buffer stays busy until
//! its notification, which comes only once the packet has left the qdisc's queue, so a long
//! probe starves the stream (docs/kernel-facts.md has the figures). Copying is a property of
//! the route (loopback, veth, a device without zero-copy), so two copied reports in a row are
//! enough to say so.

use std::collections::HashMap;
use std::os::fd::RawFd;

/// Notifications looked at before deciding for zero-copy (or by majority).
pub const PROBE_NOTIFS: u32 = 8;
/// Copied notifications, with none uncopied, that decide for plain send before [`PROBE_NOTIFS`].
pub const PROBE_COPIED_NOTIFS: u32 = 2;

/// How sends on a connection are issued right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// SEND_ZC while notifications are being counted.
    Probing,
    /// SEND_ZC: the kernel reported real zero-copy.
    ZeroCopy,
    /// Plain IORING_OP_SEND.
    Plain,
}

/// What the caller wants for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendPolicy {
    /// Probe with SEND_ZC, then keep whichever the kernel's reports favour.
    Auto,
    /// Always plain send.
    ForcePlain,
    /// Always SEND_ZC (tests, and links known to do real zero-copy).
    ForceZeroCopy,
}

#[derive(Debug)]
struct ConnState {
    mode: SendMode,
    notifs: u32,
    copied: u32,
}

/// The per-fd table; an entry is created on the first send to an fd.
#[derive(Debug)]
pub(crate) struct ZcTable {
    zc_supported: bool,
    conns: HashMap<RawFd, ConnState>,
}

impl ZcTable {
    pub(crate) fn new(zc_supported: bool) -> ZcTable {
        ZcTable { zc_supported, conns: HashMap::with_capacity(16) }
    }

    fn initial_mode(&self) -> SendMode {
        if self.zc_supported {
            SendMode::Probing
        } else {
            SendMode::Plain
        }
    }

    /// The mode the next send on `fd` uses.
    pub(crate) fn mode(&mut self, fd: RawFd) -> SendMode {
        let initial = self.initial_mode();
        self.conns.entry(fd).or_insert(ConnState { mode: initial, notifs: 0, copied: 0 }).mode
    }

    /// The mode of `fd` without creating an entry.
    pub(crate) fn peek(&self, fd: RawFd) -> Option<SendMode> {
        self.conns.get(&fd).map(|c| c.mode)
    }

    pub(crate) fn set_policy(&mut self, fd: RawFd, policy: SendPolicy) {
        let mode = match policy {
            SendPolicy::Auto => self.initial_mode(),
            SendPolicy::ForcePlain => SendMode::Plain,
            SendPolicy::ForceZeroCopy if self.zc_supported => SendMode::ZeroCopy,
            SendPolicy::ForceZeroCopy => SendMode::Plain,
        };
        self.conns.insert(fd, ConnState { mode, notifs: 0, copied: 0 });
    }

    pub(crate) fn forget(&mut self, fd: RawFd) {
        self.conns.remove(&fd);
    }

    /// Records one notification for `fd`; decides once enough were seen.
    pub(crate) fn note(&mut self, fd: RawFd, copied: bool) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        conn.notifs = conn.notifs.saturating_add(1);
        conn.copied = conn.copied.saturating_add(u32::from(copied));
        let all_copied = conn.copied == conn.notifs && conn.notifs >= PROBE_COPIED_NOTIFS;
        if conn.mode != SendMode::Probing || (conn.notifs < PROBE_NOTIFS && !all_copied) {
            return;
        }
        // All (or most) copied: zero-copy costs more than it saves on this link.
        conn.mode =
            if conn.copied * 2 > conn.notifs { SendMode::Plain } else { SendMode::ZeroCopy };
        tracing::info!(
            fd,
            notifs = conn.notifs,
            copied = conn.copied,
            mode = ?conn.mode,
            "send mode chosen from SEND_ZC notifications"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_notifications_switch_to_plain() {
        let mut t = ZcTable::new(true);
        assert_eq!(t.mode(5), SendMode::Probing);
        for _ in 0..PROBE_COPIED_NOTIFS - 1 {
            t.note(5, true);
        }
        assert_eq!(t.mode(5), SendMode::Probing, "one report is not enough");
        t.note(5, true);
        assert_eq!(t.mode(5), SendMode::Plain, "copied from the start: plain at once");
        assert_eq!(t.mode(6), SendMode::Probing);
        for _ in 0..PROBE_NOTIFS {
            t.note(6, false);
        }
        assert_eq!(t.mode(6), SendMode::ZeroCopy);
        // Later notifications (in-flight ones) do not flip a decision.
        t.note(6, true);
        assert_eq!(t.peek(6), Some(SendMode::ZeroCopy));
    }

    #[test]
    fn mixed_reports_wait_for_the_full_probe() {
        let mut t = ZcTable::new(true);
        t.mode(7);
        t.note(7, false);
        for _ in 1..PROBE_NOTIFS - 1 {
            t.note(7, true);
            assert_eq!(t.peek(7), Some(SendMode::Probing), "one real zero-copy report seen");
        }
        t.note(7, true);
        assert_eq!(t.peek(7), Some(SendMode::Plain), "most were copied");
    }

    #[test]
    fn unsupported_zc_is_always_plain() {
        let mut t = ZcTable::new(false);
        assert_eq!(t.mode(1), SendMode::Plain);
        t.set_policy(1, SendPolicy::ForceZeroCopy);
        assert_eq!(t.mode(1), SendMode::Plain);
    }
}
