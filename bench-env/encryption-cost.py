#!/usr/bin/env python3
"""Paired migrations with and without encryption, over the cells of a bench spec.

Usage: bench-env/encryption-cost.py SPEC.json OUT_DIR [BIN]
  For each profile, rep and mode of SPEC (hotcold workloads, its mems), runs `hybridmig
  migrate` twice back to back, once encrypted (the default) and once with --no-encrypt, in
  alternating order, so both see the same minute of a shared machine. Profiles are `loopback`
  or a bench-env/netns profile; the namespaces are named hm-enc-src/hm-enc-dst (override with
  HM_SRC_NS/HM_DST_NS) and torn down at the end. Writes OUT_DIR/runs.jsonl (one merged
  report per run, with `profile`, `rep`, `encrypt`) and prints a markdown table of medians:
  total_ms, fault p50/p99 (us), CPU of each process (ms), per cell and setting.
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    spec = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    binary = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, "..", "target", "release", "hybridmig")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HM_SRC_NS", "hm-enc-src")
    env.setdefault("HM_DST_NS", "hm-enc-dst")
    env["HM_BIN"] = binary
    netns = os.path.join(HERE, "netns")
    runs = open(os.path.join(out, "runs.jsonl"), "w")
    try:
        for mem in spec["mems"]:
            guest = ["--workload", "hotcold", "--mem", mem, "--ops", str(spec["ops"])]
            digest = json.loads(run([binary, "run", *guest, "--json"]).stdout.splitlines()[-1])["digest"]
            for profile in spec["profiles"]:
                ns = []
                if profile != "loopback":
                    run([netns, "up", profile], env=env)
                    ns = ["--src-netns", env["HM_SRC_NS"], "--dst-netns", env["HM_DST_NS"]]
                for rep in range(spec["reps"]):
                    for mode in spec["modes"]:
                        order = [True, False] if (rep + len(mode)) % 2 == 0 else [False, True]
                        for encrypt in order:
                            cmd = [binary, "migrate", *guest, *ns, "--mode", mode,
                                   "--pace", str(spec["pace"]),
                                   "--migrate-after-ms", str(spec["migrate_after_ms"]),
                                   "--expected-digest", digest, "--json"]
                            if not encrypt:
                                cmd.append("--no-encrypt")
                            r = subprocess.run(cmd, capture_output=True, text=True)
                            lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
                            report = json.loads(lines[-1]) if lines else {"error": r.stderr[-400:]}
                            report.update(profile=profile, rep=rep, encrypt=encrypt, mem=mem)
                            runs.write(json.dumps(report) + "\n")
                            runs.flush()
                            print(f"{profile} {mode} rep {rep} encrypt={encrypt}: "
                                  f"total_ms={report.get('total_ms')} verified={report.get('verified')}",
                                  file=sys.stderr)
                if profile != "loopback":
                    run([netns, "down"], env=env)
    finally:
        runs.close()
        if any(p != "loopback" for p in spec["profiles"]):
            subprocess.run([netns, "down"], env=env, capture_output=True)
    print(table(os.path.join(out, "runs.jsonl")))


def table(path):
    rows = [json.loads(l) for l in open(path)]
    cells = {}
    for r in rows:
        cells.setdefault((r["profile"], r.get("mode", "?"), r["encrypt"]), []).append(r)
    fields = ["total_ms", "fault_us_p50", "fault_us_p99", "src_cpu_ms", "dst_cpu_ms"]
    out = ["| profile | mode | encrypted | runs (verified) | " + " | ".join(fields) + " |",
           "|---" * (4 + len(fields)) + "|"]
    for (profile, mode, encrypt), rs in sorted(cells.items(), key=lambda c: (c[0][0], c[0][1], not c[0][2])):
        ok = [r for r in rs if r.get("verified") and r.get("encrypted") == encrypt]
        med = [f"{statistics.median(r[f] for r in ok):.0f}" if ok else "-" for f in fields]
        out.append(f"| {profile} | {mode} | {encrypt} | {len(rs)} ({len(ok)}) | " + " | ".join(med) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(sys.argv[2]))
    else:
        main()
