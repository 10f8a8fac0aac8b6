//! The engine's side of the lz4 auto policy: what the driver reports of the link feeds the
//! rate meter, and each probe window re-decides the compression ([`Lz4Check`] runs the trial).

use super::*;

impl SourceEngine {
    /// Tells the engine that `bytes` of bulk data left this host at `now_ns` (for the rate).
    pub fn on_bulk_sent(&mut self, bytes: u64, now_ns: u64) {
        // Encoded a moment before it was sent: the bulk buffers in flight are small.
        let guest_bytes = std::mem::take(&mut self.bulk_guest_bytes);
        if let Some(span) = self.rate.record(bytes, guest_bytes, now_ns) {
            self.lz4_check.on_span(span, self.compression == Compression::Lz4);
        }
    }

    /// Tells the engine that the driver waited `ns` with bulk frames to send and every bulk
    /// send buffer in the kernel: the link, not the loop, was the limit for that long. The
    /// compression policy learns the link's rate only from such waits.
    pub fn on_link_wait(&mut self, ns: u64) {
        self.rate.on_link_wait(ns);
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
    pub(super) fn pick_compression(&mut self) {
        if self.cfg.compression != CompressionPolicy::Auto {
            return;
        }
        let Some((lz4_bytes_per_ms, ratio)) = self.lz4_probe.estimate() else {
            return;
        };
        // No link rate yet: the loop has not waited on the link, so it is the limit itself and
        // compressing would only add to its work.
        let link_bytes_per_ms = self.rate.link_bytes_per_ms();
        let predicted =
            link_bytes_per_ms.is_some_and(|link| lz4_worth(link, lz4_bytes_per_ms, ratio));
        let choice = if self.lz4_check.decide(predicted, self.rate.spans()) {
            Compression::Lz4
        } else {
            Compression::None
        };
        let trial = matches!(self.lz4_check, Lz4Check::Trial { .. });
        if choice != self.compression && !trial {
            tracing::info!(
                link_bytes_per_ms,
                output_bytes_per_ms = self.rate.bytes_per_ms(),
                lz4_bytes_per_ms,
                ratio,
                lz4 = choice == Compression::Lz4,
                "source: compression policy changed"
            );
        }
        self.compression = choice;
    }
}
