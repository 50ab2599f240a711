#!/usr/bin/env python3
"""archive_callgrind.py — instructions per message of the spool's commit thread and the
archive's writer thread (issue 13 item 6), counted by valgrind's callgrind: repeatable
whatever else runs on the machine, unlike timings.

One release binary (or two, --tern-baseline, one after the other) runs under
`valgrind --tool=callgrind --separate-threads=yes` with the archive on; N messages of 4 KiB
over 2 connections into a local Maildir; after every message is archived the server is
stopped and each thread's total is attributed by the thread's entry function
(committer_main: the spool's commit thread; writer_main: the archive's writer). Prints
instructions per message per thread. Figures only, never assertions.

  bench/archive_callgrind.py --tern build/tern --smtpload build/smtpload [--messages 2000]
                             [--tern-baseline OTHER/tern]
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from archive_cost import archived  # noqa: E402
from benchlib import free_port, stop  # noqa: E402
from local_delivery import count_delivered, start_tern  # noqa: E402

THREADS = {"committer_main": "spool commit thread", "writer_main": "archive writer"}


def thread_totals(prefix):
    """{entry function: instructions} over the callgrind files of one run."""
    out = {}
    for path in glob.glob(prefix + "*"):
        with open(path, errors="replace") as f:
            text = f.read()
        m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
        if not m:
            continue
        for fn in THREADS:
            if re.search(rf"^fn=\(\d+\)\s*{fn}$|^fn=(?:\(\d+\)\s*)?{fn}$", text, re.M):
                out[fn] = out.get(fn, 0) + int(m.group(1))
    return out


def run(tern, load, messages):
    with tempfile.TemporaryDirectory(prefix="tern-archive-cg-") as work:
        os.chmod(work, 0o755)
        cgdir = os.path.join(work, "cg")  # the server's child runs as nobody: it writes here
        os.mkdir(cgdir)
        os.chmod(cgdir, 0o1777)
        prefix = os.path.join(cgdir, "cg.out")
        wrapper = os.path.join(work, "tern-vg")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec valgrind -q --tool=callgrind --separate-threads=yes "
                    f"--trace-children=yes --callgrind-out-file={prefix}.%p {tern} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        port = free_port()
        proc, data = start_tern(wrapper, work, port, "archive { enabled = true; }")
        try:
            out = subprocess.run(
                [load, "send", "127.0.0.1", str(port), "-n", str(messages), "-c", "2",
                 "-p", "100", "-s", "4096", "-t", "postmaster@bench.test", "-T", "600"],
                capture_output=True, text=True)
            ok = int(re.search(r'"ok":\s*(\d+)', out.stdout).group(1))
            deadline = time.time() + 600
            while archived(data) < ok and time.time() < deadline:
                time.sleep(0.2)
            maildir = os.path.join(data, "mail", "bench.test", "postmaster", "new")
            while count_delivered(maildir) < ok and time.time() < deadline:
                time.sleep(0.2)
        finally:
            stop(proc, timeout=300)
        return ok, thread_totals(prefix)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tern", required=True)
    ap.add_argument("--smtpload", required=True)
    ap.add_argument("--tern-baseline")
    ap.add_argument("--messages", type=int, default=2000)
    a = ap.parse_args()
    print("| binary | messages | thread | instructions / message |")
    print("|---|---|---|---|")
    for name, binary in (("new", a.tern), ("baseline", a.tern_baseline)):
        if not binary:
            continue
        ok, tot = run(binary, a.smtpload, a.messages)
        for fn, label in THREADS.items():
            v = tot.get(fn)
            print(f"| {name} | {ok} | {label} | {v / ok:,.0f} |" if v and ok else
                  f"| {name} | {ok} | {label} | - |", flush=True)


if __name__ == "__main__":
    main()
