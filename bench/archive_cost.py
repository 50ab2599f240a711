#!/usr/bin/env python3
"""archive_cost.py — what the archive costs the SMTP accept path (issue 13 item 6).

The same load with `archive { enabled = false; }` and `= true;`, alternated run by run
on one release binary: N messages of 4 KiB over C connections into a local Maildir,
measured by tern's own load generator (accepted messages/s, MAIL->250 p50/p99). Two
connection counts: a light closed loop (2 connections; the machine is not saturated, so
a cost shows as latency) and a saturating one (20). Figures only, never assertions.

  bench/archive_cost.py --tern build/tern --smtpload build/smtpload [--reps 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, stop  # noqa: E402
from local_delivery import count_delivered, start_tern  # noqa: E402


def one(tern, load, archive, conns, messages):
    with tempfile.TemporaryDirectory(prefix="tern-archive-cost-") as work:
        port = free_port()
        extra = f"archive {{ enabled = {'true' if archive else 'false'}; }}"
        proc, data = start_tern(tern, work, port, extra)
        try:
            out = subprocess.run(
                [load, "send", "127.0.0.1", str(port), "-n", str(messages), "-c", str(conns),
                 "-p", "100", "-s", "4096", "-t", "postmaster@bench.test", "-T", "300"],
                capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            maildir = os.path.join(data, "mail", "bench.test", "postmaster", "new")
            deadline = time.time() + 120
            while count_delivered(maildir) < res["ok"] and time.time() < deadline:
                time.sleep(0.05)
        finally:
            stop(proc)
        return {"ok": res["ok"], "msgs": res["ok"] / res["elapsed_s"],
                "p50": res["lat_p50_ms"], "p99": res["lat_p99_ms"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tern", required=True)
    ap.add_argument("--smtpload", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--messages", type=int, default=10000)
    a = ap.parse_args()
    print(f"archive cost: {a.messages} messages of 4 KiB into a Maildir, archive off/on "
          f"alternated, {a.reps} reps per connection count")
    print("| conns | rep | archive | accepted | accept msg/s | MAIL->250 p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for conns in (2, 20):
        for rep in range(1, a.reps + 1):
            for archive in (False, True):
                r = one(a.tern, a.smtpload, archive, conns, a.messages)
                summary.setdefault((conns, archive), []).append(r)
                print(f"| {conns} | {rep} | {'on' if archive else 'off'} | {r['ok']} | "
                      f"{r['msgs']:.0f} | {r['p50']:.2f} / {r['p99']:.2f} |", flush=True)
    print("\nmedians (same runs):")
    for (conns, archive), rs in sorted(summary.items()):
        med = lambda k: sorted(x[k] for x in rs)[len(rs) // 2]  # noqa: E731
        print(f"  {conns:>2} connections, archive {'on ' if archive else 'off'}: "
              f"{med('msgs'):.0f} msg/s, p50 {med('p50'):.2f} ms, p99 {med('p99'):.2f} ms")


if __name__ == "__main__":
    main()
