//! What a driver publishes ([`View`]), the status an operator of QEMU would recognise
//! ([`MigrationStatus`]), and `query-migrate`'s answer built from them.

use super::Side;
use crate::dest::{DestPhase, DestStats};
use crate::driver::WingPhase;
use crate::metrics::mono_ns;
use crate::source::{Phase, SourceStats};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// A migration's status, in QEMU's names (`recovering` is this project's own: QEMU does not
/// recover a migration before its switch-over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    /// Not started: the guest warms up, or the destination waits for its source.
    #[default]
    Setup,
    /// Memory crosses while the guest runs on the source.
    Active,
    /// The source paused the guest; the last pages and the state are on their way.
    Device,
    /// The guest runs on the destination; pages still come on demand and in the background.
    PostcopyActive,
    /// A connection was lost after the hand-over; both hosts keep their half and wait for a
    /// new one.
    PostcopyPaused,
    /// As paused, and an operator gave a new address (`migrate-recover`).
    PostcopyRecover,
    /// A connection was lost before the hand-over; a new one is being dialled (source) or
    /// waited for (destination).
    Recovering,
    /// The guest moved.
    Completed,
    /// Called off before the hand-over; the guest runs on the source.
    Cancelled,
    /// Ended with an error.
    Failed,
}

impl MigrationStatus {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::Setup => "setup",
            MigrationStatus::Active => "active",
            MigrationStatus::Device => "device",
            MigrationStatus::PostcopyActive => "postcopy-active",
            MigrationStatus::PostcopyPaused => "postcopy-paused",
            MigrationStatus::PostcopyRecover => "postcopy-recover",
            MigrationStatus::Recovering => "recovering",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Cancelled => "cancelled",
            MigrationStatus::Failed => "failed",
        }
    }
}

/// The engine's counters as the report has them.
#[derive(Debug, Clone)]
pub enum Counters {
    /// The source engine's.
    Source(Box<SourceStats>),
    /// The destination engine's.
    Dest(Box<DestStats>),
}

/// What a driver publishes about its engine and streams.
#[derive(Debug, Clone)]
pub struct View {
    /// The engine's phase.
    pub phase: WingPhase,
    /// Source: the state was queued for the destination. Destination: the guest runs here.
    pub handed_over: bool,
    /// The engine's counters.
    pub counters: Counters,
    /// Bytes this host sent on the bulk and urgent streams.
    pub sent_bytes: [u64; 2],
    /// Bytes this host received on the bulk and urgent streams.
    pub received_bytes: [u64; 2],
    /// Pages of guest memory.
    pub total_pages: u64,
    /// Source: pages sent (a page sent twice counts twice). Destination: pages placed.
    pub pages_moved: u64,
    /// Destination: time vCPUs spent blocked on network faults so far (us).
    pub vcpu_blocked_us: u64,
    /// Destination: the same by vCPU index (us); empty on the source.
    pub vcpu_blocked_us_per_vcpu: Vec<u64>,
    /// Destination: fault latencies in QEMU's power-of-two buckets; `None` on the source.
    pub fault_latency_dist_us: Option<[u64; crate::metrics::POW2_BUCKETS]>,
}

/// The status a view gives, given the recovery state around it.
pub fn status_of(
    phase: WingPhase,
    handed_over: bool,
    recovering: bool,
    recover_asked: bool,
) -> MigrationStatus {
    if recovering {
        return match (handed_over, recover_asked) {
            (false, _) => MigrationStatus::Recovering,
            (true, false) => MigrationStatus::PostcopyPaused,
            (true, true) => MigrationStatus::PostcopyRecover,
        };
    }
    match phase {
        WingPhase::Source(Phase::Setup) => MigrationStatus::Setup,
        WingPhase::Source(Phase::Rounds | Phase::WorkingSet) => MigrationStatus::Active,
        WingPhase::Source(Phase::SwitchOver) if !handed_over => MigrationStatus::Device,
        WingPhase::Source(Phase::SwitchOver | Phase::Push | Phase::AwaitDoneAck) => {
            MigrationStatus::PostcopyActive
        }
        WingPhase::Source(Phase::Finished) => MigrationStatus::Completed,
        WingPhase::Dest(DestPhase::PreSwitch) => MigrationStatus::Active,
        // The state is here and the guest waits for the source's Run: QEMU's device phase.
        WingPhase::Dest(DestPhase::Loaded) => MigrationStatus::Device,
        WingPhase::Dest(DestPhase::Refused) => MigrationStatus::Failed,
        WingPhase::Dest(DestPhase::Running) => MigrationStatus::PostcopyActive,
        WingPhase::Dest(DestPhase::Complete) => MigrationStatus::Completed,
    }
}

/// The engine phase's name as the report and the logs give it.
pub fn phase_name(phase: WingPhase) -> String {
    match phase {
        WingPhase::Source(p) => format!("{p:?}"),
        WingPhase::Dest(p) => format!("{p:?}"),
    }
}

/// When the migration began and ended, as the control channel saw it (mono ns; 0: not yet).
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// The driver's first view.
    pub first_ns: u64,
    /// The final status.
    pub ended_ns: u64,
}

const PAGE_BYTES: u64 = 4096;

fn ms(from_ns: u64, to_ns: u64) -> u64 {
    to_ns.saturating_sub(from_ns) / 1_000_000
}

/// `query-migrate`'s `return` object: QEMU's fields where they mean the same, and every
/// counter of the report under `counters`.
pub fn query_json(
    side: Side,
    status: MigrationStatus,
    view: Option<&View>,
    times: Times,
    reason: Option<&str>,
    recover_to: Option<SocketAddr>,
) -> Value {
    let mut out = json!({ "status": status.as_str(), "side": side });
    if let Some(reason) = reason {
        out["error-desc"] = json!(reason);
    }
    if let Some(addr) = recover_to {
        out["recover-uri"] = json!(format!("tcp:{addr}"));
    }
    let Some(view) = view else { return out };
    let end_ns = if times.ended_ns > 0 { times.ended_ns } else { mono_ns() };
    out["phase"] = json!(phase_name(view.phase));
    out["handed-over"] = json!(view.handed_over);
    let total_bytes = view.total_pages * PAGE_BYTES;
    match &view.counters {
        Counters::Source(s) => {
            let start_ns = if s.start_ns > 0 { s.start_ns } else { times.first_ns };
            let end_ns = if s.finished_ns > 0 { s.finished_ns } else { end_ns };
            out["total-time"] = json!(ms(start_ns, end_ns));
            if s.pause_ns > 0 && s.state_sent_ns > 0 {
                out["downtime"] = json!(ms(s.pause_ns, s.state_sent_ns));
            }
            let normal = s.pages_raw + s.pages_lz4;
            let remaining = view.total_pages.saturating_sub(view.pages_moved) * PAGE_BYTES;
            let done = status == MigrationStatus::Completed;
            out["ram"] = json!({
                "transferred": view.sent_bytes[0] + view.sent_bytes[1],
                "remaining": if done { 0 } else { remaining },
                "total": total_bytes,
                "duplicate": s.pages_zero,
                "normal": normal,
                "normal-bytes": normal * PAGE_BYTES,
                "page-size": PAGE_BYTES,
                "dirty-sync-count": s.rounds,
                "postcopy-requests": s.faults_served,
            });
            out["recoveries"] = json!(s.recoveries);
            out["counters"] = serde_json::to_value(s).unwrap_or(Value::Null);
        }
        Counters::Dest(d) => {
            out["total-time"] = json!(ms(times.first_ns, end_ns));
            out["ram"] = json!({
                "transferred": view.received_bytes[0] + view.received_bytes[1],
                "total": total_bytes,
                "normal": view.pages_moved,
                "normal-bytes": view.pages_moved * PAGE_BYTES,
                "page-size": PAGE_BYTES,
                "postcopy-requests": d.network_faults,
            });
            out["postcopy-blocktime"] = json!(view.vcpu_blocked_us / 1000);
            let per_vcpu_ms: Vec<u64> =
                view.vcpu_blocked_us_per_vcpu.iter().map(|us| us / 1000).collect();
            out["postcopy-vcpu-blocktime"] = json!(per_vcpu_ms);
            if let Some(dist) = &view.fault_latency_dist_us {
                out["postcopy-latency-dist"] = json!(dist.as_slice());
            }
            out["recoveries"] = json!(d.recoveries);
            out["counters"] = serde_json::to_value(d).unwrap_or(Value::Null);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_phases_and_the_recovery() {
        let src = |p| WingPhase::Source(p);
        assert_eq!(status_of(src(Phase::Rounds), false, false, false), MigrationStatus::Active);
        assert_eq!(status_of(src(Phase::SwitchOver), false, false, false), MigrationStatus::Device);
        assert_eq!(
            status_of(src(Phase::SwitchOver), true, false, false),
            MigrationStatus::PostcopyActive
        );
        assert_eq!(status_of(src(Phase::Push), true, true, false), MigrationStatus::PostcopyPaused);
        assert_eq!(status_of(src(Phase::Push), true, true, true), MigrationStatus::PostcopyRecover);
        assert_eq!(status_of(src(Phase::Rounds), false, true, true), MigrationStatus::Recovering);
        let dst = WingPhase::Dest(DestPhase::Running);
        assert_eq!(status_of(dst, true, false, false), MigrationStatus::PostcopyActive);
        assert_eq!(status_of(dst, true, true, false), MigrationStatus::PostcopyPaused);
    }

    #[test]
    fn the_query_names_qemus_fields() {
        let stats =
            SourceStats { pages_zero: 3, pages_raw: 5, faults_served: 2, ..Default::default() };
        let view = View {
            phase: WingPhase::Source(Phase::Push),
            handed_over: true,
            counters: Counters::Source(Box::new(stats)),
            sent_bytes: [1000, 24],
            received_bytes: [0, 0],
            total_pages: 10,
            pages_moved: 8,
            vcpu_blocked_us: 0,
            vcpu_blocked_us_per_vcpu: Vec::new(),
            fault_latency_dist_us: None,
        };
        let times = Times { first_ns: 1, ended_ns: 0 };
        let q = query_json(
            Side::Source,
            MigrationStatus::PostcopyActive,
            Some(&view),
            times,
            None,
            None,
        );
        assert_eq!(q["status"], "postcopy-active");
        assert_eq!(q["ram"]["transferred"], 1024);
        assert_eq!(q["ram"]["remaining"], 2 * 4096);
        assert_eq!(q["ram"]["duplicate"], 3);
        assert_eq!(q["ram"]["postcopy-requests"], 2);
        assert_eq!(q["counters"]["pages_raw"], 5);
        assert!(q["total-time"].is_u64());
    }

    #[test]
    fn the_destination_gives_qemus_latency_distribution_and_per_vcpu_blocktime() {
        let mut dist = [0u64; crate::metrics::POW2_BUCKETS];
        dist[6] = 4;
        let view = View {
            phase: WingPhase::Dest(DestPhase::Running),
            handed_over: true,
            counters: Counters::Dest(Box::default()),
            sent_bytes: [0, 0],
            received_bytes: [0, 0],
            total_pages: 10,
            pages_moved: 4,
            vcpu_blocked_us: 5_000,
            vcpu_blocked_us_per_vcpu: vec![2_000, 3_000],
            fault_latency_dist_us: Some(dist),
        };
        let times = Times { first_ns: 1, ended_ns: 0 };
        let status = MigrationStatus::PostcopyActive;
        let q = query_json(Side::Destination, status, Some(&view), times, None, None);
        assert_eq!(q["postcopy-blocktime"], 5);
        assert_eq!(q["postcopy-vcpu-blocktime"], json!([2, 3]));
        let got = q["postcopy-latency-dist"].as_array().expect("postcopy-latency-dist");
        assert_eq!(got.len(), 24);
        assert_eq!(got[6], 4);
    }
}
