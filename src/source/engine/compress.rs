//! The compression choice: the compression in force and what the auto policy decides it from.
//!
//! What the driver reports of the link (`on_bulk_sent`, `on_link_wait`) feeds the rate meter;
//! the guest bytes of each bulk run are added as it is encoded; each probe window's timing
//! feeds the lz4 probe and re-decides the compression ([`Lz4Check`] runs the trial).

use crate::source::config::CompressionPolicy;
use crate::source::policy::{lz4_worth, Lz4Check, Lz4Probe, RateMeter};
use crate::wire::Compression;

/// The compression in force and the auto policy's measurements (see the module docs).
#[derive(Debug)]
pub(super) struct CompressionChoice {
    policy: CompressionPolicy,
    in_force: Compression,
    rate: RateMeter,
    /// The auto policy's measurements.
    probe: Lz4Probe,
    /// The auto policy's trial of lz4 against the raw rate.
    check: Lz4Check,
    /// Non-zero guest bytes encoded on bulk since the last `on_bulk_sent` (for the rate).
    bulk_guest_bytes: u64,
}

impl CompressionChoice {
    /// The choice under `policy`: lz4 from the start when it is on, raw otherwise.
    pub(super) fn new(policy: CompressionPolicy) -> Self {
        let in_force = match policy {
            CompressionPolicy::On => Compression::Lz4,
            _ => Compression::None,
        };
        Self {
            policy,
            in_force,
            rate: RateMeter::default(),
            probe: Lz4Probe::default(),
            check: Lz4Check::default(),
            bulk_guest_bytes: 0,
        }
    }

    /// The compression in force (fault answers always use it).
    pub(super) fn in_force(&self) -> Compression {
        self.in_force
    }

    /// The compression of the next bulk run, and whether it is a probe to be timed: under the
    /// auto policy every `LZ4_PROBE_EVERY`-th bulk window goes lz4 and is timed, which gives
    /// the compressor's rate and ratio on this guest's data.
    pub(super) fn for_bulk_run(&mut self) -> (Compression, bool) {
        let probe = self.policy == CompressionPolicy::Auto && self.probe.due();
        (if probe { Compression::Lz4 } else { self.in_force }, probe)
    }

    /// A probe compressed `input_bytes` of guest data into `output_bytes` in `elapsed_ns`.
    pub(super) fn on_probe(&mut self, input_bytes: u64, output_bytes: u64, elapsed_ns: u64) {
        self.probe.record(input_bytes, output_bytes, elapsed_ns);
        self.pick();
    }

    /// A bulk run carried `bytes` of non-zero guest memory.
    pub(super) fn add_bulk_guest_bytes(&mut self, bytes: u64) {
        self.bulk_guest_bytes += bytes;
    }

    /// `bytes` of bulk data left this host at `now_ns`.
    pub(super) fn on_bulk_sent(&mut self, bytes: u64, now_ns: u64) {
        // Encoded a moment before it was sent: the bulk buffers in flight are small.
        let guest_bytes = std::mem::take(&mut self.bulk_guest_bytes);
        if let Some(span) = self.rate.record(bytes, guest_bytes, now_ns) {
            self.check.on_span(span, self.in_force == Compression::Lz4);
        }
    }

    /// The driver waited `ns` on the link with bulk data to send.
    pub(super) fn on_link_wait(&mut self, ns: u64) {
        self.rate.on_link_wait(ns);
    }

    /// The link's rate, learned while the loop waited on it (0 while the loop is the limit).
    pub(super) fn link_bytes_per_ms(&self) -> f64 {
        self.rate.link_bytes_per_ms().unwrap_or(0.0)
    }

    /// Guest bytes per wire byte of the pages sent with lz4 in force (1 without it).
    pub(super) fn ratio(&self) -> f64 {
        match (self.in_force, self.probe.estimate()) {
            (Compression::Lz4, Some((_, ratio))) => ratio.max(1.0),
            _ => 1.0,
        }
    }

    /// The measured bulk output rate (0 before any is known).
    pub(super) fn bytes_per_ms(&self) -> f64 {
        self.rate.bytes_per_ms()
    }

    /// The auto policy: lz4 when it moves guest bytes faster than the raw link does. The
    /// source compresses while the link sends, so lz4's rate in guest bytes is the slower of
    /// the compressor and the link divided by the ratio; it must beat the link by 10%. The
    /// compressor counts at half its probed rate: the probe times lz4 alone, while the loop
    /// also encodes, sends and serves faults, and the destination has to decompress. The link's
    /// rate is the one learned while the loop waited on it ([`RateMeter`]): on a path where the
    /// loop is the limit (loopback, veth) there is none and lz4 stays off; on a 1 Gbit/s link
    /// it turns on when the pages compress. A prediction to turn it on starts a trial
    /// ([`Lz4Check`]) that alternates lz4 and raw: lz4 stays on only if its side moved 10%
    /// more guest memory.
    fn pick(&mut self) {
        if self.policy != CompressionPolicy::Auto {
            return;
        }
        let Some((lz4_bytes_per_ms, ratio)) = self.probe.estimate() else {
            return;
        };
        // No link rate yet: the loop has not waited on the link, so it is the limit itself and
        // compressing would only add to its work.
        let link_bytes_per_ms = self.rate.link_bytes_per_ms();
        let predicted =
            link_bytes_per_ms.is_some_and(|link| lz4_worth(link, lz4_bytes_per_ms, ratio));
        let choice = if self.check.decide(predicted, self.rate.spans()) {
            Compression::Lz4
        } else {
            Compression::None
        };
        let trial = matches!(self.check, Lz4Check::Trial { .. });
        if choice != self.in_force && !trial {
            tracing::info!(
                link_bytes_per_ms,
                output_bytes_per_ms = self.rate.bytes_per_ms(),
                lz4_bytes_per_ms,
                ratio,
                lz4 = choice == Compression::Lz4,
                "source: compression policy changed"
            );
        }
        self.in_force = choice;
    }
}
