#!/usr/bin/env bash
# Measures each bench-env/netns profile: 2,000 pings 2 ms apart from the source namespace to
# the destination (round-trip loss and RTT), then a 5 s iperf3 TCP stream source -> destination
# (throughput and retransmits). Leaves the bed up with the last profile.
# Usage: bench-env/netns-figures.sh [PROFILE...]   (root; Debian packages iputils-ping, iperf3)
set -euo pipefail
cd "$(dirname "$0")/.."
src="${HM_SRC_NS:-hm-src}" dst="${HM_DST_NS:-hm-dst}"
for tool in ping:iputils-ping iperf3:iperf3 python3:python3; do
  command -v "${tool%%:*}" >/dev/null || { echo "missing ${tool%%:*}: apt-get install ${tool#*:}" >&2; exit 1; }
done
echo "| profile | ping loss (round trip) | rtt avg | iperf3 Mbit/s (recv) | retransmits |"
echo "|---|---|---|---|---|"
for p in "${@:-veth lan1g lan1g-loss1 lan1g-loss5 lan10g}"; do
  for profile in $p; do
    bench-env/netns up "$profile" >/dev/null
    ping_out=$(ip netns exec "$src" ping -q -c 2000 -i 0.002 10.77.0.2 || true)
    loss=$(grep -o '[0-9.]*% packet loss' <<<"$ping_out" | cut -d' ' -f1)
    rtt=$(grep -o 'rtt [^=]*= [0-9./]*' <<<"$ping_out" | cut -d= -f2 | cut -d/ -f2)
    ip netns exec "$dst" iperf3 -s -1 -B 10.77.0.2 >/dev/null 2>&1 &
    server=$!
    sleep 0.5
    tp=$(ip netns exec "$src" iperf3 -c 10.77.0.2 -t 5 -J | python3 -c '
import json, sys
e = json.load(sys.stdin)["end"]
print("%.0f | %d" % (e["sum_received"]["bits_per_second"] / 1e6, e["sum_sent"].get("retransmits", -1)))')
    wait "$server" || true
    echo "| $profile | $loss | ${rtt} ms | $tp |"
  done
done
