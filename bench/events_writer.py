#!/usr/bin/python3
"""bench/events_writer.py — instructions of the events writer thread per relayed message.

Builds bench/events_writer.c against each build directory given (its libternlib.a, the
headers of the source tree it was configured from, the libraries of its tern link line),
runs it under valgrind --tool=callgrind --separate-threads=yes for N1 and N2 messages (three
events each, the relay path's: received, queued, delivered) in bursts of BURST messages, and
prints (writer(N2) - writer(N1)) / (N2 - N1): what one more message costs the writer thread,
start-up cancelled out, and the same without the commits' own work (sqlite3BtreeCommitPhaseOne,
inclusive) with the number of commits: how many events a commit holds depends on the pace
(the writer gathers for 25 ms), and valgrind's pace is not the real one (bench/
callgrind_relay.py's batches hold about 7 events under it, hundreds at full speed). Each
burst is written before the next (events_flush), which bounds a batch to 3 x BURST events.

usage: events_writer.py BUILD_DIR [BUILD_DIR...] [--n1 300] [--n2 3300] [--burst 170]
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def build(build_dir, out):
    """Compiles events_writer.c and links it like build_dir's tern."""
    src_dir = None
    with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
        for ln in f:
            if ln.startswith("CMAKE_HOME_DIRECTORY:"):
                src_dir = ln.split("=", 1)[1].strip()
    with open(os.path.join(build_dir, "CMakeFiles", "tern.dir", "link.txt")) as f:
        link = f.read().split()
    libs = [x if os.path.isabs(x) or x.startswith("-") else os.path.join(build_dir, x)
            for x in link[link.index("tern") + 1:]]
    obj = out + ".o"
    subprocess.run(["cc", "-std=c17", "-D_GNU_SOURCE", "-O2", "-g", "-I",
                    os.path.join(src_dir, "src"), "-c", os.path.join(HERE, "events_writer.c"),
                    "-o", obj], check=True)
    subprocess.run(["cc", "-o", out, obj] + libs + ["-lpthread", "-lm"], check=True)


def writer_instructions(exe, n, burst, work):
    data = tempfile.mkdtemp(dir=work)
    cg = os.path.join(data, "cg")
    os.makedirs(cg)
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={cg}/cg", exe, data, str(n), str(burst)],
                   check=True, capture_output=True)
    for path in glob.glob(f"{cg}/cg*"):
        with open(path, errors="replace") as f:
            text = f.read()
        if re.search(r"^c?fn=\(\d+\) writer_main$", text, re.M):
            total = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
            r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--tree=caller",
                                path], capture_output=True, text=True).stdout
            m = re.search(r"\((\d+)x\) \[[^\]]*\]\n\s*([\d,]+) \([\d. %]+\)\s+\*\s+\?\?\?:"
                          r"sqlite3BtreeCommitPhaseOne", r)
            if not m:
                sys.exit(f"events_writer: no commit found in {path}")
            return total, int(m.group(1)), int(m.group(2).replace(",", ""))
    sys.exit(f"events_writer: no writer thread in {cg}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--n1", type=int, default=340)
    ap.add_argument("--n2", type=int, default=3400)
    ap.add_argument("--burst", type=int, default=170)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tern-evw-")
    try:
        for i, b in enumerate(a.builds):
            exe = os.path.join(work, f"events_writer{i}")
            build(b, exe)
            w1, c1, k1 = writer_instructions(exe, a.n1, a.burst, work)
            w2, c2, k2 = writer_instructions(exe, a.n2, a.burst, work)
            n = a.n2 - a.n1
            print(f"{b}: writer {(w2 - w1) / n:.0f} instructions per message, "
                  f"{((w2 - k2) - (w1 - k1)) / n:.0f} without the commits' own work "
                  f"(sqlite3BtreeCommitPhaseOne: {c1} and {c2} commits, "
                  f"{(k2 - k1) / max(c2 - c1, 1):.0f} instructions each; bursts of "
                  f"{3 * a.burst} events)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
