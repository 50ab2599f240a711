#!/usr/bin/python3
"""bench/callgrind_relay.py — instructions per relayed 4 KiB message, from callgrind.

Runs tern under valgrind --tool=callgrind (the privileged parent and the serving child,
each writing its own profile), relays N1 and then N2 messages of 4 KiB from smtpload
(10 connections) to bench/bigmsg.py's sink through a relayhost, and prints
(Ir(N2) - Ir(N1)) / (N2 - N1): the instructions one more message costs, start-up and
shutdown cancelled out. Instruction counts do not depend on what else runs on the
machine; group commit batch sizes do depend on timing, so repeat runs differ a little
(about 0.5 % here). Compare two binaries of the same build type back to back.

usage: callgrind_relay.py TERN SMTPLOAD [N1 N2] [--chunk-sink=on|off]
--chunk-sink: the next hop is bench/chunk_sink.py offering CHUNKING (on) or not (off)
instead of bigmsg.py's sink; --threads: --separate-threads=yes, per-thread totals printed, each labelled with the
thread functions its profile names (writer_main in store/events.c is the events writer);
--keep=DIR: copy the profiles of the second (larger) run into DIR for callgrind_annotate,
and its events.db.
Only 127.0.0.1 is used; processes started here are stopped by their PID.
"""
import glob
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))



def wait_port(port, deadline=120):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"callgrind_relay: nothing listens on {port}")


CHUNK = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--chunk-sink=")), None)
THREADS = "--threads" in sys.argv
KEEP = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--keep=")), None)
ROLES = re.compile(r"^c?fn=\(\d+\) ([a-z_]*_main)$", re.M)


def run(tern, load, n, keep=None):
    work = tempfile.mkdtemp(prefix="tern-cg-")
    os.chmod(work, 0o755)
    cg = os.path.join(work, "cg")
    os.mkdir(cg)
    os.chmod(cg, 0o1777)  # started as root, tern's serving child runs as nobody
    sp, port = free_port(), free_port()
    if CHUNK:
        sink = subprocess.Popen([sys.executable, os.path.join(HERE, "chunk_sink.py"),
                                 f"127.0.0.1:{sp}", CHUNK], stdout=subprocess.DEVNULL)
    else:
        sink = subprocess.Popen([sys.executable, os.path.join(HERE, "bigmsg.py"), "--sink",
                                 str(sp)])
    wait_port(sp)
    conf = os.path.join(work, "tern.conf")
    with open(conf, "w") as f:
        f.write(f'''
hostname = "bench.tern.test"; data_dir = "{work}/data"; log_level = "info";
user = "{'nobody' if os.geteuid() == 0 else ''}";
local_domains = ["bench.test"];
relay {{ networks = ["127.0.0.0/8"]; }}
relayhost {{ via = "smtp://127.0.0.1:{sp}"; tls = "none"; }}
dns {{ forward = ["127.0.0.1@9"]; }}
limits {{ max_connections = 2000; max_connections_per_ip = 2000; }}
listen {{ mx {{ address = "127.0.0.1:{port}"; profile = "mx"; }} }}
''')
    log_path = os.path.join(work, "tern.log")
    with open(log_path, "w") as log:
        p = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes"]
                             + (["--separate-threads=yes"] if THREADS else [])
                             + [f"--callgrind-out-file={cg}/cg.%p", tern, "serve", "-c", conf],
                             stdout=log, stderr=log)
    try:
        wait_port(port)
        subprocess.run([load, "send", "127.0.0.1", str(port), "-n", str(n), "-c", "10",
                        "-s", "4096", "-t", "sink@remote.test", "-T", "600"],
                       capture_output=True, text=True)
        end, done = time.time() + 600, 0
        while time.time() < end:
            with open(log_path, errors="replace") as f:
                done = f.read().count("event=delivered")
            if done >= n:
                break
            time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(300)
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)
    total = 0
    for path in sorted(glob.glob(f"{cg}/cg.*")):
        with open(path, errors="replace") as f:
            for ln in f:
                if ln.startswith("summary:"):
                    total += int(ln.split()[1])
                    if THREADS:
                        with open(path, errors="replace") as g:
                            roles = sorted(set(ROLES.findall(g.read())))
                        print(f"  {os.path.basename(path)}: {int(ln.split()[1])} "
                              f"{','.join(roles)}")
                    break
    if keep:
        os.makedirs(keep, exist_ok=True)
        for path in glob.glob(f"{cg}/cg.*") + glob.glob(f"{work}/data/events.db*"):
            shutil.copy(path, keep)
    print(f"{n} messages, {done} delivered: {total} instructions", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return total


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    tern, load = sys.argv[1], sys.argv[2]
    nums = [a for a in sys.argv[3:] if not a.startswith("--")]
    n1, n2 = (int(nums[0]), int(nums[1])) if len(nums) > 1 else (300, 1300)
    a, b = run(tern, load, n1), run(tern, load, n2, KEEP)
    print(f"{tern}: {(b - a) / (n2 - n1):.0f} instructions per relayed 4 KiB message")


if __name__ == "__main__":
    main()
