#!/usr/bin/env bash
# Measures how the engine does when the link is the limit (docs/results/, "link limit"):
# link use, the working set paced and unpaced, fault latency behind a saturating push,
# downtime at 1 and 4 GiB, a pre-copy that cannot converge, the fault window and scaling.
# Runs one `hybridmig bench` per cell, each over a spec committed in bench-env/specs/, then
# prints every target with the figures it is judged on (bench-env/link-limit-summary.py).
#
# Usage: bench-env/link-limit-figures.sh OUT_DIR [CELL...]   (root, /dev/kvm, iproute2/nftables)
#   CELLs (default: all): link ws-paced ws-unpaced ws-hotonly fifo loopback big converge window
#   scale
# Every run is verified against an unmigrated run; a cell whose runs fail stops the script.
# Env: UNPACED_REPS (default: the spec's 3) repetitions of the ws-unpaced cell (each run is
#      long); HM_BIN: a hybridmig binary to use instead of building target/release/hybridmig.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench-env/link-limit-figures.sh OUT_DIR [CELL...]}
shift
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=(link ws-paced ws-unpaced ws-hotonly fifo loopback big converge window scale)
specs=bench-env/specs
if [ -n "${HM_BIN:-}" ]; then
  bin=$HM_BIN
else
  bin=target/release/hybridmig
  cargo build --release --quiet
fi
mkdir -p "$out"

# bench NAME [FLAG...]: one `hybridmig bench` over bench-env/specs/NAME.json into OUT_DIR/NAME
# (flags such as --reps override the spec; report.json records the spec as run).
bench() {
  local name=$1
  shift
  echo "== $name: $specs/$name.json $*"
  "$bin" bench --config "$specs/$name.json" "$@" --out "$out/$name" 2>&1 | grep -v '^\s*$' | tail -n 3
}

for cell in "${cells[@]}"; do
  case $cell in
    # Link use: an idle 1 GiB guest (it fills its memory once, half of it with zero pages, then
    # spins) with lz4 chosen by the engine on lan1g and lan1g-jumbo (MTU 9,000: the framing
    # floor is 1.007 instead of 1.046), then lz4 forced on and off once, on lan1g-jumbo. The
    # migration starts after 3 s: the fill (a first write to 131,072 pages) took over 1 s on a
    # shared 2-core machine, and a migration during it moves a different amount every run.
    link)
      for c in auto on off; do bench "link-$c"; done ;;
    # A 1 GiB hotcold guest (64 MiB hot) paced at 20,000 ops/s runs about 20 s, longer than a
    # post-copy push of 1 GiB at 1 Gbit/s (about 9 s).
    ws-paced) bench ws-paced ;;
    # Pre-copy runs beside them to measure the write-hot set at link speed: the pages its
    # rounds could not get clean are what must cross after the pause in any mode.
    ws-unpaced)
      if [ -n "${UNPACED_REPS:-}" ]; then bench ws-unpaced --reps "$UNPACED_REPS"; else bench ws-unpaced; fi ;;
    # Unpaced with every op in the hot set (no cold writes): what must cross after the pause
    # is the write-hot subset alone.
    ws-hotonly) bench ws-hotonly ;;
    # The paced guest on a link without the priority band, for the fault-latency target.
    fifo) bench fifo ;;
    loopback) bench loopback ;;
    big) bench big ;;
    converge)
      for c in off auto; do bench "converge-$c"; done ;;
    # Fault window: hybrid with the working-set-only live pass, so the cold part faults.
    window)
      for a in false true; do bench "window-adaptive-$a"; done ;;
    scale)
      for s in scale-256m scale-vcpus2 scale-vcpus4; do bench "$s"; done ;;
    *) echo "unknown cell $cell" >&2; exit 2 ;;
  esac
done
python3 bench-env/link-limit-summary.py "$out"
