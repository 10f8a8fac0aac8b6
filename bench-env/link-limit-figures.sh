#!/usr/bin/env bash
# Measures the issue-5 performance figures with `hybridmig bench`, one bench directory per
# question, then prints each target with the figures it is judged on.
# Usage: bench-env/issue5-figures.sh OUT_DIR [CELL...]   (root, /dev/kvm, iproute2/nftables)
#   CELLs (default: all): link ws-paced ws-unpaced ws-hotonly fifo loopback big converge window
#   scale
# Every run is verified against an unmigrated run; a cell whose runs fail stops the script.
# Env: UNPACED_REPS (default 3) repetitions of the ws-unpaced cell (each run is long).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench-env/issue5-figures.sh OUT_DIR [CELL...]}
shift
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=(link ws-paced ws-unpaced ws-hotonly fifo loopback big converge window scale)
bin=target/release/hybridmig
cargo build --release --quiet
mkdir -p "$out"

# bench NAME JSON: one `hybridmig bench` over the spec JSON (fields of report.json's `spec`).
bench() {
  local name=$1 json=$2
  echo "== $name: $json"
  printf '%s\n' "$json" > "$out/$name.json"
  "$bin" bench --config "$out/$name.json" --out "$out/$name" 2>&1 | grep -v '^\s*$' | tail -n 3
}

# A 1 GiB hotcold guest (64 MiB hot) paced at 20,000 ops/s runs about 20 s, longer than a
# post-copy push of 1 GiB at 1 Gbit/s (about 9 s).
paced='"workloads": ["hotcold"], "pace": 20000, "ops": 400000, "migrate_after_ms": 3000'
unpaced='"workloads": ["hotcold"], "pace": null, "ops": 600000000, "migrate_after_ms": 2000'
for cell in "${cells[@]}"; do
  case $cell in
    # Link use: an idle 1 GiB guest (it fills its memory once, half of it with zero pages, then
    # spins), lz4 forced on, forced off, and chosen by the engine. The migration starts after
    # 3 s: the fill (a first write to 131,072 pages) took over 1 s on this shared machine, and
    # a migration during it moves a different amount of data in every run.
    link)
      # lz4 auto on lan1g and on lan1g-jumbo (MTU 9,000: the framing floor is 1.007 instead
      # of 1.046), then lz4 forced on and off once, on lan1g-jumbo.
      bench link-auto '{"modes": ["precopy", "postcopy", "hybrid"], "workloads": ["idle"], "mems": ["1G"], "profiles": ["lan1g", "lan1g-jumbo"], "reps": 3, "pace": 1000, "ops": 14000, "migrate_after_ms": 3000, "compression": "auto"}'
      for c in on off; do
        bench "link-$c" '{"modes": ["precopy", "postcopy", "hybrid"], "workloads": ["idle"], "mems": ["1G"], "profiles": ["lan1g-jumbo"], "reps": 1, "pace": 1000, "ops": 14000, "migrate_after_ms": 3000, "compression": "'$c'"}'
      done ;;
    ws-paced)
      bench ws-paced '{"modes": ["postcopy", "hybrid"], '"$paced"', "mems": ["1G"], "profiles": ["lan1g"], "reps": 3}' ;;
    ws-unpaced)
      # Pre-copy runs beside them to measure the write-hot set at link speed: the pages its
      # rounds could not get clean (its stale_pages) are what must cross after the pause.
      bench ws-unpaced '{"modes": ["precopy", "postcopy", "hybrid"], '"$unpaced"', "mems": ["1G"], "profiles": ["lan1g"], "reps": '"${UNPACED_REPS:-3}"'}' ;;
    # Unpaced with every op in the hot set (no cold writes): what must cross after the pause
    # is the write-hot subset alone.
    ws-hotonly)
      bench ws-hotonly '{"modes": ["postcopy", "hybrid"], '"$unpaced"', "hot_frac": 1.0, "mems": ["1G"], "profiles": ["lan1g"], "reps": 2}' ;;
    # The same paced guest on a link without the priority band, for the fault-latency target.
    fifo)
      bench fifo '{"modes": ["postcopy", "hybrid"], '"$paced"', "mems": ["1G"], "profiles": ["lan1g-fifo"], "reps": 1}' ;;
    loopback)
      bench loopback '{"modes": ["postcopy", "hybrid"], '"$paced"', "mems": ["1G"], "profiles": ["loopback", "veth"], "reps": 3}' ;;
    big)
      bench big '{"modes": ["postcopy", "hybrid"], "workloads": ["hotcold"], "pace": 20000, "ops": 1200000, "migrate_after_ms": 3000, "mems": ["4G"], "profiles": ["lan1g"], "reps": 1, "timeout_s": 600}' ;;
    converge)
      for c in off auto; do
        bench "converge-$c" '{"modes": ["precopy", "hybrid"], "workloads": ["scan"], "pace": null, "ops": 600000000, "migrate_after_ms": 1000, "mems": ["256M"], "profiles": ["lan1g"], "reps": 1, "compression": "'$c'"}'
      done ;;
    # Fault window: hybrid with the working-set-only live pass, so the cold part faults.
    window)
      for a in false true; do
        bench "window-adaptive-$a" '{"modes": ["hybrid"], "workloads": ["random", "scan"], "pace": 100000, "ops": 1000000, "migrate_after_ms": 2000, "mems": ["256M"], "profiles": ["lan1g"], "reps": 2, "live_pass": "ws", "adaptive_window": '$a'}'
      done ;;
    scale)
      bench scale-256m '{"modes": ["postcopy", "hybrid"], "workloads": ["hotcold"], "pace": 20000, "ops": 200000, "migrate_after_ms": 3000, "mems": ["256M"], "profiles": ["lan1g"], "reps": 1}'
      for v in 2 4; do
        bench "scale-vcpus$v" '{"modes": ["postcopy", "hybrid"], '"$paced"', "mems": ["1G"], "profiles": ["lan1g"], "reps": 1, "vcpus": '$v'}'
      done ;;
    *) echo "unknown cell $cell" >&2; exit 2 ;;
  esac
done
python3 bench-env/issue5-summary.py "$out"
