#!/usr/bin/env python3
"""Prints the link-limit targets from the bench directories bench-env/link-limit-figures.sh wrote.

Usage: bench-env/link-limit-summary.py OUT_DIR
Each figure is the median over the cell's repetitions; every line names the bench directory it
comes from, so it can be traced to that directory's report.json and the command in report.md.
"""
import json
import os
import statistics
import sys

PAGE = 4096
LAN1G_BYTES_PER_MS = 1e9 / 8 / 1e3  # the tbf rate of the lan1g profile


def runs(out, name):
    path = os.path.join(out, name, "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return [r for r in data["runs"] if r.get("report")]


def cell(rs, **keys):
    return [r["report"] for r in rs if all(r.get(k) == v for k, v in keys.items())]


def med(reports, field):
    vals = [r[field] for r in reports]
    return statistics.median(vals) if vals else float("nan")


def verdict(ok):
    return "MET" if ok else "NOT MET"


def link(out):
    print("## Link use (idle 1 GiB): total_ms / (non-zero bytes / link rate)")
    print("| lz4 setting | profile | mode | total_ms | must-cross MB | ideal_ms | ratio | bytes_wire_total | lz4_used |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in ["auto", "on", "off"]:
        rs = runs(out, f"link-{c}")
        if rs is None:
            continue
        for mode in ["precopy", "postcopy", "hybrid"]:
            for run in [x for x in rs if x["report"]["mode"] == mode]:
                r = run["report"]
                must = (r["pages_raw"] + r["pages_lz4"]) * PAGE
                ideal = must / LAN1G_BYTES_PER_MS
                print(f"| {c} | {run['profile']} | {mode} | {r['total_ms']:.0f} | {must / 1e6:.0f} | {ideal:.0f} | "
                      f"{r['total_ms'] / ideal:.3f} | {r['bytes_wire_total']} | {r['lz4_used']} |")
    print()


def faults(out):
    print("## Fault latency with the push saturating the link (1 GiB hotcold paced 20k)")
    print("| bench | profile | mode | fault_us_p50 | fault_us_p99 | network_faults | runs |")
    print("|---|---|---|---|---|---|---|")
    for name in ["ws-paced", "fifo", "loopback", "ws-unpaced"]:
        rs = runs(out, name)
        if rs is None:
            continue
        for profile in sorted({r["profile"] for r in rs}):
            for mode in ["postcopy", "hybrid"]:
                c = cell(rs, profile=profile, mode=mode)
                if c:
                    print(f"| {name} | {profile} | {mode} | {med(c, 'fault_us_p50'):.0f} | "
                          f"{med(c, 'fault_us_p99'):.0f} | {med(c, 'network_faults'):.0f} | {len(c)} |")
    print()


def ws(out):
    rs = runs(out, "ws-paced")
    if rs:
        post, hyb = cell(rs, mode="postcopy"), cell(rs, mode="hybrid")
        ratio = med(hyb, "network_faults") / max(med(post, "network_faults"), 1)
        stall = med(hyb, "downtime_ms") + med(hyb, "vcpu_blocked_ms")
        deg = med(hyb, "degradation_pct")
        print("## Working set, paced (1 GiB hotcold, 64 MiB hot, --pace 20000, lan1g)")
        print(f"- hybrid/postcopy network_faults: {med(hyb, 'network_faults'):.0f} / "
              f"{med(post, 'network_faults'):.0f} = {ratio:.3f} (target <= 0.05: {verdict(ratio <= 0.05)})")
        print(f"- hybrid downtime_ms + vcpu_blocked_ms: {med(hyb, 'downtime_ms'):.2f} + "
              f"{med(hyb, 'vcpu_blocked_ms'):.2f} = {stall:.2f} (target <= 10: {verdict(stall <= 10)})")
        print(f"- hybrid degradation_pct: {deg:.1f} (target <= 10: {verdict(deg <= 10)}); "
              f"postcopy {med(post, 'degradation_pct'):.1f}")
        print(f"- ws_recall {med(hyb, 'ws_recall'):.2f}, runs {len(hyb)} + {len(post)}")
        print()
    for name, title in [("ws-unpaced", "unpaced (same guest, tight loop, lan1g)"),
                        ("ws-hotonly", "unpaced, every op in the hot set (--hot-frac 1.0, lan1g)")]:
        unpaced(out, name, title)


def unpaced(out, name, title):
    rs = runs(out, name)
    if rs:
        hyb, post = cell(rs, mode="hybrid"), cell(rs, mode="postcopy")
        wh = med(hyb, "write_hot_pages") * PAGE
        bound = 1.2 * wh / LAN1G_BYTES_PER_MS
        stall = med(hyb, "downtime_ms") + med(hyb, "vcpu_blocked_ms")
        print(f"## Working set, {title}")
        print(f"- write-hot set {wh / 2**20:.1f} MiB -> 1.2 x bytes / link rate = {bound:.1f} ms")
        print(f"- hybrid downtime_ms + vcpu_blocked_ms: {med(hyb, 'downtime_ms'):.2f} + "
              f"{med(hyb, 'vcpu_blocked_ms'):.2f} = {stall:.1f} ms (target <= {bound:.1f}: "
              f"{verdict(stall <= bound)})")
        print(f"- postcopy: {med(post, 'downtime_ms'):.2f} + {med(post, 'vcpu_blocked_ms'):.2f} ms, "
              f"{med(post, 'network_faults'):.0f} faults; hybrid {med(hyb, 'network_faults'):.0f} faults")
        pre = cell(rs, mode="precopy")
        if pre:
            # What pre-copy's rounds could not get clean (the dirty set it names before the
            # pause when it stops and falls back): pages rewritten faster than a whole round
            # crosses the link, which must cross after the pause in any mode.
            measured = med(pre, "pages_invalidated_live") * PAGE
            wire_per_byte = med(pre, "bytes_wire_total") / max(
                1, (med(pre, "pages_raw") + med(pre, "pages_lz4")) * PAGE)
            bound_m = 1.2 * measured * min(1.0, wire_per_byte) / LAN1G_BYTES_PER_MS
            print(f"- measured write-hot set (pre-copy's dirty set after {med(pre, 'rounds'):.0f} "
                  f"rounds): {measured / 2**20:.0f} MiB, {min(1.0, wire_per_byte):.2f} wire bytes "
                  f"per byte -> bound {bound_m:.0f} ms; hybrid {stall:.0f} ms "
                  f"({verdict(stall <= bound_m)})")
        print(f"- hybrid: stale pages over the migration {med(hyb, 'stale_pages'):.0f}, cold part given up in "
              f"{sum(bool(r.get('cold_pass_abandoned')) for r in hyb)}/{len(hyb)} runs, total_ms "
              f"{med(hyb, 'total_ms'):.0f} (postcopy {med(post, 'total_ms'):.0f})")
        print()


def downtime(out):
    print("## Downtime (target < 5 ms, hybrid and postcopy)")
    print("| bench | mem | profile | mode | downtime_ms | total_ms | runs |")
    print("|---|---|---|---|---|---|---|")
    for name in ["ws-paced", "ws-unpaced", "big", "loopback"]:
        rs = runs(out, name)
        if rs is None:
            continue
        for key in sorted({(r["mem_bytes"], r["profile"], r["mode"]) for r in rs}):
            c = cell(rs, mem_bytes=key[0], profile=key[1], mode=key[2])
            d = med(c, "downtime_ms")
            print(f"| {name} | {key[0] >> 20} MiB | {key[1]} | {key[2]} | {d:.2f} ({verdict(d < 5)}) | "
                  f"{med(c, 'total_ms'):.0f} | {len(c)} |")
    print()


def converge(out):
    print("## Pre-copy that cannot converge (unpaced scan, 256 MiB, lan1g)")
    print("| lz4 | mode | rounds | precopy_fallback | total_ms | downtime_ms | network_faults | pages_in_downtime |")
    print("|---|---|---|---|---|---|---|---|")
    for c in ["off", "auto"]:
        rs = runs(out, f"converge-{c}")
        for r in cell(rs or [], ):
            print(f"| {c} | {r['mode']} | {r['rounds']} | {r.get('precopy_fallback')} | {r['total_ms']:.0f} | "
                  f"{r['downtime_ms']:.2f} | {r['network_faults']} | {r['pages_in_downtime']} |")
    print()


def window(out):
    print("## Fault window, fixed 16 pages vs adaptive (hybrid, --live-pass ws, 256 MiB, lan1g)")
    print("| window | workload | network_faults | vcpu_blocked_ms | fault_us_p99 | total_ms | runs |")
    print("|---|---|---|---|---|---|---|")
    for a, label in [("false", "fixed 16"), ("true", "adaptive 4-256")]:
        rs = runs(out, f"window-adaptive-{a}")
        if rs is None:
            continue
        for w in ["random", "scan"]:
            c = cell(rs, workload=w)
            print(f"| {label} | {w} | {med(c, 'network_faults'):.0f} | {med(c, 'vcpu_blocked_ms'):.1f} | "
                  f"{med(c, 'fault_us_p99'):.0f} | {med(c, 'total_ms'):.0f} | {len(c)} |")
    print()


def scale(out):
    print("## Scaling (hotcold paced 20k per vCPU, lan1g)")
    print("| mem | vCPUs | mode | total_ms | fault_us_p99 | downtime_ms | network_faults |")
    print("|---|---|---|---|---|---|---|")
    rows = [("scale-256m", 1), ("ws-paced", 1), ("big", 1), ("scale-vcpus2", 2), ("scale-vcpus4", 4)]
    for name, vcpus in rows:
        rs = runs(out, name)
        if rs is None:
            continue
        for mode in ["postcopy", "hybrid"]:
            c = cell(rs, mode=mode, profile="lan1g")
            if c:
                print(f"| {c[0]['mem_bytes'] >> 20} MiB | {vcpus} | {mode} | {med(c, 'total_ms'):.0f} | "
                      f"{med(c, 'fault_us_p99'):.0f} | {med(c, 'downtime_ms'):.2f} | {med(c, 'network_faults'):.0f} |")
    print()


def main():
    out = sys.argv[1]
    for part in [link, faults, ws, downtime, converge, window, scale]:
        part(out)


if __name__ == "__main__":
    main()
