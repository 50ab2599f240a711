#!/usr/bin/env python3
"""archive_cost.py — what the archive costs the SMTP accept path (issue 13 item 6).

The same load with `archive { enabled = false; }` and `= true;`, alternated run by run
on one release binary: N messages of 4 KiB over C connections into a local Maildir,
measured by tern's own load generator (accepted messages/s, MAIL->250 p50/p99). Two
connection counts: a light closed loop (2 connections; the machine is not saturated, so
a cost shows as latency) and a saturating one (20). With --tern-baseline, that binary
runs with the archive on too, in the same alternation (off, on, baseline on), so an old
and a new archive are compared in the same minute. Figures only, never assertions.

Each run also gives the minor page faults of the tern process(es) during the send
(/proc/PID/stat minflt). For each run with the archive on it also says how far the archive was behind when the
last message was accepted (the writer runs at SCHED_IDLE since this change, so at
saturation it waits for idle CPU), how long it took to catch up after, and the rate the
writer reached alone in that catch-up (messages archived / catch-up seconds).

  bench/archive_cost.py --tern build/tern --smtpload build/smtpload [--reps 3]
                        [--tern-baseline OTHER/tern]
"""
import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, stop  # noqa: E402
from local_delivery import count_delivered, start_tern  # noqa: E402


def archived(data):
    """Messages in DATA/archive/index.sqlite (read-only; -1 while it cannot be read)."""
    db = os.path.join(data, "archive", "index.sqlite")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM archive").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def minflt(pid):
    """Minor page faults of pid and its child processes so far (/proc/PID/stat field 10)."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                total += int(f.read().rsplit(")", 1)[1].split()[7])
        except (OSError, ValueError, IndexError):
            pass
    return total


def one(tern, load, archive, conns, messages):
    with tempfile.TemporaryDirectory(prefix="tern-archive-cost-") as work:
        port = free_port()
        extra = f"archive {{ enabled = {'true' if archive else 'false'}; }}"
        proc, data = start_tern(tern, work, port, extra)
        behind = catchup = rate = None
        try:
            f0 = minflt(proc.pid)
            out = subprocess.run(
                [load, "send", "127.0.0.1", str(port), "-n", str(messages), "-c", str(conns),
                 "-p", "100", "-s", "4096", "-t", "postmaster@bench.test", "-T", "300"],
                capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            faults = minflt(proc.pid) - f0  # during the send only
            if archive:  # how far behind at the last 250, and the catch-up after it
                t0 = time.time()
                at_end = max(archived(data), 0)
                behind = res["ok"] - at_end
                deadline = t0 + 300
                while archived(data) < res["ok"] and time.time() < deadline:
                    time.sleep(0.02)
                catchup = time.time() - t0
                # the catch-up includes up to one batch window (200 ms): a rate only
                # where the backlog was big enough for that not to matter
                rate = behind / catchup if behind >= 1000 else None
            maildir = os.path.join(data, "mail", "bench.test", "postmaster", "new")
            deadline = time.time() + 120
            while count_delivered(maildir) < res["ok"] and time.time() < deadline:
                time.sleep(0.05)
        finally:
            stop(proc)
        return {"ok": res["ok"], "msgs": res["ok"] / res["elapsed_s"],
                "p50": res["lat_p50_ms"], "p99": res["lat_p99_ms"],
                "behind": behind, "catchup": catchup, "rate": rate, "faults": faults}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tern", required=True)
    ap.add_argument("--smtpload", required=True)
    ap.add_argument("--tern-baseline", help="another tern binary, run with the archive on too")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--messages", type=int, default=10000)
    a = ap.parse_args()
    kinds = [("off", a.tern, False), ("on", a.tern, True)]
    if a.tern_baseline:
        kinds.append(("baseline on", a.tern_baseline, True))
    print(f"archive cost: {a.messages} messages of 4 KiB into a Maildir, "
          f"{' / '.join(k for k, _, _ in kinds)} alternated, {a.reps} reps per connection count")
    print("| conns | rep | archive | accepted | accept msg/s | MAIL->250 p50 / p99 ms "
          "| archive behind at last 250 | catch-up s | writer alone msg/s "
          "| minor faults during send |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for conns in (2, 20):
        for rep in range(1, a.reps + 1):
            for kind, binary, archive in kinds:
                r = one(binary, a.smtpload, archive, conns, a.messages)
                summary.setdefault((conns, kind), []).append(r)
                extra = (f"{r['behind']} | {r['catchup']:.2f} | "
                         f"{r['rate']:.0f}" if r["rate"] else
                         f"{r['behind']} | {r['catchup']:.2f} | -") if archive else "- | - | -"
                print(f"| {conns} | {rep} | {kind} | {r['ok']} | {r['msgs']:.0f} | "
                      f"{r['p50']:.2f} / {r['p99']:.2f} | {extra} | {r['faults']} |",
                      flush=True)
    print("\nmedians (same runs; spread = lowest..highest accept msg/s):")
    for (conns, kind), rs in sorted(summary.items()):
        med = lambda k: sorted(x[k] for x in rs)[len(rs) // 2]  # noqa: E731
        lo, hi = min(x["msgs"] for x in rs), max(x["msgs"] for x in rs)
        print(f"  {conns:>2} connections, archive {kind:<11}: {med('msgs'):.0f} msg/s "
              f"({lo:.0f}..{hi:.0f}), p50 {med('p50'):.2f} ms, p99 {med('p99'):.2f} ms, "
              f"minor faults {med('faults')}")


if __name__ == "__main__":
    main()
