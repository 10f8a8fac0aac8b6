#!/usr/bin/env bash
# Compares the four modes on loopback with `hybridmig migrate`: 1 GiB hotcold guest (64 MiB
# hot), 1 vCPU, unpaced and paced (--pace 20000), REPS runs each; prints the median of each
# figure per mode and condition as a markdown table (docs/results/2026-11-25-modes-loopback-1g.md).
# The same matrix as bench specs: bench-env/specs/loopback-modes-{unpaced,paced}.json.
# Usage: bench-env/loopback-modes-figures.sh [REPS]   (default 5; needs root, /dev/kvm)
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-5}"
bin=target/release/hybridmig
cargo build --release --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
guest=(--workload hotcold --mem 1G --vcpus 1 --hot-mib 64 --seed 3)
for cond in unpaced paced; do
  if [ "$cond" = paced ]; then ops=120000; pace=(--pace 20000); after=3000; else ops=150000000; pace=(); after=2000; fi
  expected=$("$bin" run "${guest[@]}" --ops "$ops" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
  for mode in precopy postcopy hybrid hybrid-paper; do
    for r in $(seq "$reps"); do
      "$bin" migrate "${guest[@]}" --ops "$ops" "${pace[@]}" --mode "$mode" --migrate-after-ms "$after" \
        --expected-digest "$expected" --json > "$out/$cond-$mode-$r.json"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys, glob, statistics, os
d = sys.argv[1]
keys = ["total_ms","downtime_ms","bytes_wire_total","network_faults","fault_us_p50","fault_us_p99","vcpu_blocked_ms","ws_pages","ws_recall","rounds","degradation_pct","pages_zero","pages_raw","pages_lz4"]
for cond in ["unpaced","paced"]:
    print(f"## {cond}")
    print("| mode | " + " | ".join(keys) + " | verified |")
    print("|" + "---|" * (len(keys) + 2))
    for mode in ["precopy","postcopy","hybrid","hybrid-paper"]:
        runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, f"{cond}-{mode}-[0-9]*.json")))]
        med = lambda k: statistics.median(r[k] for r in runs)
        cells = [f"{med(k):.2f}" if isinstance(runs[0][k], float) else str(int(med(k))) for k in keys]
        print(f"| {mode} | " + " | ".join(cells) + f" | {all(r['verified'] for r in runs)} ({len(runs)}) |")
PY
