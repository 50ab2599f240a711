#!/usr/bin/env python3
"""archive_restart.py — the archive's catch-up after a kill -9 in a burst (issue 13 item 6).

A release tern with the archive on takes N messages of 4 KiB over C connections into a local
Maildir; right after the last 250 (the archive's writer, which indexes later, is then far
behind, and local delivery has finished many of the messages) the process holding the spool
is killed with SIGKILL. It is started again on the same data: the spool's recovery hands the
archive every record of the surviving segments, queued or delivered. Prints how many were
archived at the kill, the start time (exec to the listener), the catch-up time (from the
restart until every accepted message is archived) and whether each is archived exactly once.
With --tern-baseline the same for another binary (main's archive lost the delivered ones).
Figures only, never assertions.

  bench/archive_restart.py --tern build/tern --smtpload build/smtpload [--messages 10000]
"""
import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from archive_cost import archived  # noqa: E402
from benchlib import free_port, stop  # noqa: E402
from local_delivery import start_tern  # noqa: E402


def distinct(data):
    con = sqlite3.connect(f"file:{os.path.join(data, 'archive', 'index.sqlite')}?mode=ro",
                          uri=True, timeout=5)
    try:
        return con.execute("SELECT COUNT(DISTINCT id) FROM messages").fetchone()[0]
    finally:
        con.close()


def kill9(proc):
    """SIGKILL to the process holding the spool (the child of a split tern), then the rest."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    for k in kids:
        os.kill(k, signal.SIGKILL)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run(tern, load, messages, conns):
    with tempfile.TemporaryDirectory(prefix="tern-archive-restart-") as work:
        port = free_port()
        extra = "archive { enabled = true; }"
        proc, data = start_tern(tern, work, port, extra)
        out = subprocess.run(
            [load, "send", "127.0.0.1", str(port), "-n", str(messages), "-c", str(conns),
             "-p", "100", "-s", "4096", "-t", "postmaster@bench.test", "-T", "300"],
            capture_output=True, text=True)
        kill9(proc)
        ok = int(out.stdout.strip().splitlines()[-1].split('"ok":')[1].split(",")[0])
        at_kill = max(archived(data), 0)
        t0 = time.time()
        proc, data = start_tern(tern, work, port, extra)
        started = time.time() - t0
        deadline = t0 + 120
        last, last_t = -1, time.time()
        while time.time() < deadline:  # all archived, or no progress for 3 s (lost ones)
            n = archived(data)
            if n >= ok:
                break
            if n != last:
                last, last_t = n, time.time()
            elif time.time() - last_t > 3:
                break
            time.sleep(0.02)
        catchup = (time.time() if n >= ok else last_t) - t0
        n, d = archived(data), distinct(data)
        stop(proc)
        return ok, at_kill, started, catchup, n, d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tern", required=True)
    ap.add_argument("--smtpload", required=True)
    ap.add_argument("--tern-baseline")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    print("| binary | rep | accepted | archived at the kill | start s | catch-up s "
          "| archived after | distinct ids |")
    print("|---|---|---|---|---|---|---|---|")
    for rep in range(1, a.reps + 1):
        for name, binary in (("new", a.tern), ("baseline", a.tern_baseline)):
            if not binary:
                continue
            ok, at_kill, started, catchup, n, d = run(binary, a.smtpload, a.messages, a.conns)
            print(f"| {name} | {rep} | {ok} | {at_kill} | {started:.2f} | {catchup:.2f} "
                  f"| {n} | {d} |", flush=True)


if __name__ == "__main__":
    main()
