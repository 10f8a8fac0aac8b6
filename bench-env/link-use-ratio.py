#!/usr/bin/env python3
"""Link use against the framing floor computed from the MTU, from a `hybridmig bench` directory.

Usage: bench-env/link-use-ratio.py BENCH_DIR [BENCH_DIR...]
  For every verified run: link use = total_ms / (guest bytes that had to cross / link rate),
  the bytes being the non-zero pages sent (raw and lz4, 4 KiB each), the rate the profile's
  tbf rate (1 Gbit/s for lan1g and lan1g-jumbo). The floor is what TCP/IP framing alone costs
  on that MTU as tbf counts it: (MTU + 14) / (MTU - 52), the Ethernet header on one side and
  IP, TCP and its timestamp option on the other (1.0456 at 1,500 bytes, 1.0074 at 9,000).
  Prints per profile and mode the median link use, the floor and their ratio.
"""
import json
import os
import statistics
import sys

PAGE = 4096
RATE_BYTES_PER_MS = {"lan1g": 1e9 / 8 / 1e3, "lan1g-jumbo": 1e9 / 8 / 1e3}
MTU = {"lan1g": 1500, "lan1g-jumbo": 9000}


def floor(mtu):
    return (mtu + 14) / (mtu - 52)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cells = {}
    for d in sys.argv[1:]:
        for run in json.load(open(os.path.join(d, "report.json")))["runs"]:
            r = run.get("report")
            if not r or not r.get("verified") or run["profile"] not in MTU:
                continue
            must = (r["pages_raw"] + r["pages_lz4"]) * PAGE
            use = r["total_ms"] / (must / RATE_BYTES_PER_MS[run["profile"]])
            cells.setdefault((run["profile"], r["mode"]), []).append(use)
    print("| profile | mode | runs | link use (median, min..max) | framing floor | use / floor |")
    print("|---|---|---|---|---|---|")
    for (profile, mode), uses in sorted(cells.items()):
        f = floor(MTU[profile])
        m = statistics.median(uses)
        print(f"| {profile} | {mode} | {len(uses)} | {m:.4f} ({min(uses):.4f}..{max(uses):.4f}) | "
              f"{f:.4f} | {m / f:.4f} |")


if __name__ == "__main__":
    main()
