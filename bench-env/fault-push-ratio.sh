#!/usr/bin/env bash
# Fault p99 with the background push against the on-demand-only floor, in one batch: the same
# guest (1 GiB hotcold paced at 20,000 ops/s on lan1g, which ends 7 s after the migration
# starts) migrated with the push running, and with the push held back 12 s, past the guest's
# end (`push_delay_ms`), so only fault answers cross while it runs. Rounds alternate the two.
#
# Usage: bench-env/fault-push-ratio.sh OUT_DIR [ROUNDS]   (root, /dev/kvm, iproute2)
# Prints, per mode, the median fault p50/p99 of each side and the ratio push/on-demand of p99.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench-env/fault-push-ratio.sh OUT_DIR [ROUNDS]}
rounds=${2:-3}
bin=${HM_BIN:-target/release/hybridmig}
mkdir -p "$out"
for i in $(seq 1 "$rounds"); do
  for side in push ondemand; do
    "$bin" bench --config "bench-env/specs/fault-$side-lan1g.json" --out "$out/$side-$i" >/dev/null 2>&1 \
      || { echo "bench $side round $i failed: see $out/$side-$i" >&2; exit 1; }
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
cells = {}
for side in ["push", "ondemand"]:
    for i in range(1, rounds + 1):
        for run in json.load(open(f"{out}/{side}-{i}/report.json"))["runs"]:
            r = run.get("report")
            if not r or not r.get("verified"):
                sys.exit(f"{side} round {i} {run.get('mode')}: not verified")
            cells.setdefault((r["mode"], side), []).append(r)
print("| mode | side | runs | faults | fault p50 us | fault p99 us |")
print("|---|---|---|---|---|---|")
for (mode, side), rs in sorted(cells.items()):
    med = lambda f: statistics.median(r[f] for r in rs)
    print(f"| {mode} | {side} | {len(rs)} | {med('network_faults'):.0f} | {med('fault_us_p50'):.0f} | {med('fault_us_p99'):.0f} |")
for mode in sorted({m for m, _ in cells}):
    p = statistics.median(r["fault_us_p99"] for r in cells[(mode, "push")])
    f = statistics.median(r["fault_us_p99"] for r in cells[(mode, "ondemand")])
    print(f"{mode}: p99 with the push / on demand only = {p:.0f} / {f:.0f} = {p / max(f, 1):.2f}")
PY
