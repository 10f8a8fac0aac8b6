//! Lost connections in the simulator: a drop (scheduled, random, or a frame the reader
//! refuses) stops both ends' sends, and [`RECONNECT_US`] later a new connection is up with clean
//! readers and reopened gates, and each engine is told, as the real drivers do.

use super::*;

/// Virtual time a reader may hold part of a frame with no byte arriving before the connection
/// counts as broken.
const PARTIAL_FRAME_US: u64 = 50_000;

/// Virtual time from a lost connection to its replacement (the redial and handshake).
pub(super) const RECONNECT_US: u64 = 2_000;

impl World<'_> {
    /// A frame begun and not finished for [`PARTIAL_FRAME_US`] (a length garbled upward
    /// waits for bytes that never come) means a broken connection, as the reader's CRC would
    /// for other damage.
    pub(super) fn check_partial_frames(&mut self, now_us: u64) {
        if self.down_since_us.is_some() {
            return;
        }
        for at in 0..self.readers.len() {
            let waiting = self.readers[at].buffered_bytes() > 0;
            if !waiting || now_us < self.last_rx_us[at] + PARTIAL_FRAME_US {
                continue;
            }
            tracing::debug!(at, "sim: a frame never finished, the connection is dropped");
            self.frames_refused += 1;
            self.net.break_now();
            self.link_lost(now_us);
            return;
        }
    }

    /// The connection dropped (or a side found it broken): both ends stop sending until a new
    /// one is up, [`RECONNECT_US`] later; the guest keeps running where it runs.
    pub(super) fn link_lost(&mut self, at_us: u64) {
        if self.down_since_us.is_none() {
            self.down_since_us = Some(at_us);
            self.trace.event(TraceKind::Disconnect, at_us, &[]);
        }
    }

    /// A new connection replaces the lost one: clean frame readers, reopened gates, and each
    /// engine told (the destination reports what it holds, the source waits for it).
    pub(super) fn reconnect(&mut self, now_us: u64) -> Result<(), SimRunError> {
        self.down_since_us = None;
        if self.net.is_down() {
            self.net.reconnect().map_err(|_| SimRunError::Disconnected { at_us: now_us })?;
        }
        self.readers = [0, 1, 2, 3].map(|_| FrameReader::new(Limits::default()));
        self.gates = self.gates.map(FrameGate::reopened);
        self.bulk_in_flight_bytes = 0;
        // What the old connection still held is gone, and no longer on the link.
        let stats = self.net.stats();
        self.link_bytes_lost = stats.bytes_sent - stats.bytes_delivered;
        self.recoveries += 1;
        self.trace.event(TraceKind::Reconnect, now_us, &[]);
        self.source.on_reconnect();
        self.dest.on_reconnect()?;
        Ok(())
    }
}

/// Handshake attempts before a run gives up on its link.
const HANDSHAKE_ATTEMPTS: u32 = 8;

/// Opens the session, dialling again when the link drops (or garbles a Hello) during the
/// handshake, as the real source re-dials.
pub(super) fn open_session(
    net: &mut SimNet,
    cfg: &SourceConfig,
    src_vm: &SimVm,
    dst_vm: &SimVm,
) -> Result<crate::session::sim::SimSession, SimRunError> {
    use crate::session::sim::{open, SimHandshakeError};
    let mut attempt = 1;
    loop {
        match open(net, cfg, &src_vm.regions(), &dst_vm.regions()) {
            Err(SimHandshakeError::Disconnected { .. } | SimHandshakeError::Wire { .. })
                if attempt < HANDSHAKE_ATTEMPTS =>
            {
                attempt += 1;
                if !net.is_down() {
                    net.break_now();
                }
                net.reconnect().map_err(|_| SimRunError::Disconnected { at_us: net.now_us() })?;
            }
            other => return Ok(other?),
        }
    }
}
