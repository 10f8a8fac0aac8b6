#!/usr/bin/env python3
"""Every mode against every guest on one link, to judge `--mode auto` against the fixed modes.

Usage: bench-env/auto-matrix.py SPEC.json OUT_DIR [BIN]
       bench-env/auto-matrix.py --table OUT_DIR/runs.jsonl
  SPEC names a netns profile, a memory size, the modes, the reps and the guests (each a list
  of `hybridmig migrate` guest arguments), and when the migration starts (`migrate_after_ms`,
  per guest in `migrate_after_ms_by_guest`). For each guest it computes the unmigrated digest
  once (`hybridmig run`), then for each rep runs every mode once, in an order that rotates
  with the rep, so the modes share the same minutes of a shared machine. The namespaces are
  named hm-auto-src/hm-auto-dst (override with HM_SRC_NS/HM_DST_NS) and torn down at the end.
  Writes OUT_DIR/runs.jsonl (one report per run, with `guest` and `rep`) and prints, per
  guest, the medians of disruption (downtime + vCPU blocked) and total_ms for each mode, and
  the two ratios the issue names: auto over the best fixed mode, hybrid over post-copy.
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIXED = ["precopy", "postcopy", "hybrid"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def digest(binary, guest, mem):
    out = run([binary, "run", *guest, "--mem", mem, "--json"]).stdout
    return json.loads(out.splitlines()[-1])["digest"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    spec = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    binary = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, "..", "target", "release", "hybridmig")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HM_SRC_NS", "hm-auto-src")
    env.setdefault("HM_DST_NS", "hm-auto-dst")
    env["HM_BIN"] = binary
    netns = os.path.join(HERE, "netns")
    runs = open(os.path.join(out, "runs.jsonl"), "w")
    run([netns, "up", spec["profile"]], env=env)
    ns = ["--src-netns", env["HM_SRC_NS"], "--dst-netns", env["HM_DST_NS"]]
    try:
        for name, guest in spec["guests"].items():
            expected = digest(binary, guest, spec["mem"])
            after = spec.get("migrate_after_ms_by_guest", {}).get(name, spec["migrate_after_ms"])
            for rep in range(spec["reps"]):
                k = rep % len(spec["modes"])
                for mode in spec["modes"][k:] + spec["modes"][:k]:
                    cmd = [binary, "migrate", *guest, "--mem", spec["mem"], *ns, "--mode", mode,
                           "--migrate-after-ms", str(after),
                           "--expected-digest", expected, "--timeout-s", "300", "--json"]
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
                    report = json.loads(lines[-1]) if lines else {"error": r.stderr[-400:], "mode": mode}
                    report.pop("progress_buckets", None)
                    report.pop("fault_cdf", None)
                    report.update(guest=name, rep=rep)
                    runs.write(json.dumps(report) + "\n")
                    runs.flush()
                    print(f"{name} {mode} rep {rep}: total_ms={report.get('total_ms')} "
                          f"disruption_ms={disruption(report)} verified={report.get('verified')}",
                          file=sys.stderr)
    finally:
        runs.close()
        subprocess.run([netns, "down"], env=env, capture_output=True)
    print(table(os.path.join(out, "runs.jsonl")))


def disruption(r):
    if "downtime_ms" not in r:
        return None
    return r["downtime_ms"] + r.get("vcpu_blocked_ms", 0.0)


def table(path):
    rows = [json.loads(l) for l in open(path)]
    guests = list(dict.fromkeys(r["guest"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out = ["| guest | mode | runs (verified) | disruption ms | total_ms | network_faults |",
           "|---|---|---|---|---|---|"]
    ratios = ["| guest | auto disruption / best fixed | auto total / best fixed | hybrid disruption / post-copy |",
              "|---|---|---|---|"]
    for g in guests:
        med = {}
        for m in modes:
            rs = [r for r in rows if r["guest"] == g and r["mode"] == m]
            ok = [r for r in rs if r.get("verified")]
            if not ok:
                out.append(f"| {g} | {m} | {len(rs)} (0) | - | - | - |")
                continue
            d = statistics.median(disruption(r) for r in ok)
            t = statistics.median(r["total_ms"] for r in ok)
            f = statistics.median(r["network_faults"] for r in ok)
            med[m] = (d, t)
            out.append(f"| {g} | {m} | {len(rs)} ({len(ok)}) | {d:.1f} | {t:.0f} | {f:.0f} |")
        fixed = [med[m] for m in FIXED if m in med]
        if "auto" in med and fixed:
            best_d = min(d for d, _ in fixed)
            best_t = min(t for _, t in fixed)
            auto_d, auto_t = med["auto"]
            hyb = (f"{med['hybrid'][0] / max(med['postcopy'][0], 1e-9):.2f}"
                   if "hybrid" in med and "postcopy" in med else "-")
            ratios.append(f"| {g} | {auto_d / max(best_d, 1e-9):.2f} ({auto_d:.1f} / {best_d:.1f}) | "
                          f"{auto_t / best_t:.2f} ({auto_t:.0f} / {best_t:.0f}) | {hyb} |")
    return "\n".join(out) + "\n\n" + "\n".join(ratios)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(sys.argv[2]))
    else:
        main()
