#!/usr/bin/python3
"""make bench-relay: tern's durable relay throughput against a sink, A/B against another binary.

Starts smtp-sink (Postfix's test server, Debian package postfix: /usr/sbin/smtp-sink) on a
loopback port as the next hop, tern with `relayhost` pointing at it (relay allowed from
127.0.0.0/8, a fresh data dir each run), and drives tern with tern's own load generator
(bench/smtpload.c). Per run it prints: accept msg/s (until the last 250), relayed msg/s
(until the sink counted the last message), MAIL->250 latency p50/p99 and each step's round
trip (MAIL, RCPT, DATA, end of data), tern's CPU (user, system, ms per message; from wait4,
start-up and shutdown included) and its context switches per message (voluntary +
involuntary, from the same wait4). With --tern-baseline the two binaries run alternately,
repetition by repetition, on the same load, so that a busy machine disturbs both alike:
compare them within a repetition.

Every load is bounded (message count, deadlines) and only talks to 127.0.0.1. Figures are
printed, never asserted. For instruction counts run tern under callgrind with --wrap
(e.g. --wrap "valgrind --tool=callgrind --trace-children=yes"); for syscalls per message
--wrap "strace -f -c -o FILE".
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import benchlib
from benchlib import free_port

HERE = os.path.dirname(os.path.abspath(__file__))



def greets(port, deadline):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return True
        except OSError:
            time.sleep(0.1)
    return False


class Sink:
    """smtp-sink -c prints its running message count; we read it to see the last one in."""

    def __init__(self, sink_bin, target, chunk_sink=None):
        self.port = free_port()
        self.target = target
        self.count = 0
        self.t_done = None
        cmd = [sink_bin, "-c", "-u", "nobody", "-m", "4096", "-h", "bench-sink",
               f"127.0.0.1:{self.port}", "4096"]
        if chunk_sink:
            # bench/chunk_sink.py: smtp-sink's output, CHUNKING offered or not
            cmd = [sys.executable, os.path.join(HERE, "chunk_sink.py"),
                   f"127.0.0.1:{self.port}", chunk_sink]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not greets(self.port, 20):
            self.stop()
            sys.exit("bench: smtp-sink did not start")

    def _read(self):
        pat, buf = re.compile(rb"mesg=(\d+)"), b""
        while True:
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                return
            buf = (buf + data)[-4096:]
            m = None
            for m in pat.finditer(buf):
                pass
            if m:
                self.count = max(self.count, int(m.group(1)))
                if self.count >= self.target and self.t_done is None:
                    self.t_done = time.time()

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()


def run_once(args, tern, load, sink_bin, trace=None, extra=""):
    sink = Sink(sink_bin, args.messages, args.chunk_sink)
    work = tempfile.mkdtemp(prefix="tern-bench-relay-")
    os.chmod(work, 0o755)
    port = free_port()
    conf = os.path.join(work, "tern.conf")
    with open(conf, "w") as f:
        f.write(f"""hostname = "bench.tern.test";
data_dir = "{work}/data";
user = "{'nobody' if os.geteuid() == 0 else ''}";
log_level = "warn";
local_domains = ["localhost"];
relay {{ networks = ["127.0.0.0/8"]; }}
relayhost {{ via = "smtp://127.0.0.1:{sink.port}"; tls = "none"; }}
delivery {{ max_per_destination = {args.per_dest}; pipeline_next = {args.pipeline_next}; }}
workers = {args.workers};
limits {{ max_connections = 20000; max_connections_per_ip = 20000; queued_memory = {args.queued_memory}; }}
listen {{ mx {{ address = "127.0.0.1:{port}"; profile = "mx"; }} }}
{extra}
""")
    log = open(os.path.join(work, "tern.log"), "w")
    proc = subprocess.Popen(shlex.split(args.wrap) + [tern, "serve", "-c", conf], stdout=log,
                            stderr=log, start_new_session=True)
    try:
        if not greets(port, 120):
            sys.exit(f"bench: tern did not greet in time (log: {work}/tern.log)")
        t0 = time.time()
        out = subprocess.run(
            [load, "send", "127.0.0.1", str(port), "-n", str(args.messages), "-c",
             str(args.conns), "-s", str(args.size), "-T", str(args.timeout)]
            + (["-L", trace] if trace else []),
            capture_output=True, text=True, timeout=args.timeout + 60)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        end = time.time() + args.timeout
        while sink.t_done is None and time.time() < end:
            time.sleep(0.05)
        wall = (sink.t_done or time.time()) - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, _, ru = os.wait4(proc.pid, 0)
        log.close()
        sink.stop()
    keep = args.keep
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    cpu = ru.ru_utime + ru.ru_stime
    return {"accept_msgs_per_s": res.get("msgs_per_s"), "relayed": sink.count,
            "relayed_msgs_per_s": round(sink.count / wall, 1) if wall > 0 else 0,
            "p50_ms": res.get("lat_p50_ms"), "p99_ms": res.get("lat_p99_ms"),
            "cpu_user_s": round(ru.ru_utime, 3), "cpu_sys_s": round(ru.ru_stime, 3),
            "cpu_ms_per_msg": round(cpu * 1000 / max(1, args.messages), 4),
            # the largest resident set of tern's processes (Linux: KiB)
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "ctxsw_per_msg": round((ru.ru_nvcsw + ru.ru_nivcsw) / max(1, args.messages), 2),
            # each step's round trip p50/p99 (MAIL, RCPT, DATA, end of data -> 250)
            "steps_p50_p99_ms": {k: [v.get("p50_ms"), v.get("p99_ms")]
                                 for k, v in (res.get("steps") or {}).items()},
            "errors": res.get("errors")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tern", required=True)
    ap.add_argument("--tern-baseline", help="another tern binary, run alternately")
    ap.add_argument("--smtpload", help="bench/smtpload built beside tern (default: found)")
    ap.add_argument("--sink", default=shutil.which("smtp-sink") or "/usr/sbin/smtp-sink")
    ap.add_argument("-n", "--messages", type=int, default=20000)
    ap.add_argument("-c", "--conns", type=int, default=50)
    ap.add_argument("-s", "--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--wrap", default="", help="a command to run tern under")
    ap.add_argument("--chunk-sink", choices=("on", "off"),
                    help="next hop bench/chunk_sink.py (Python, slower than smtp-sink) "
                         "offering CHUNKING (on) or not (off), instead of smtp-sink, whose "
                         "Postfix 3.7 version has no BDAT: for counts per message, not rates")
    ap.add_argument("--keep", action="store_true", help="keep each run's data dir and log")
    ap.add_argument("--trace", metavar="PREFIX",
                    help="smtpload -L: every accepted message's time, connection and step "
                         "round trips, to PREFIX-repN-NAME.txt (where a latency tail lives)")
    ap.add_argument("--per-dest", type=int, default=10,
                    help="delivery.max_per_destination: connections to the sink")
    ap.add_argument("--pipeline-next", choices=("true", "false"), default="true",
                    help="delivery.pipeline_next: the next message's MAIL behind the end "
                         "of data")
    ap.add_argument("--queued-memory", default="128m",
                    help="limits.queued_memory: bodies kept in memory while they wait for "
                         "delivery (tern's default 128m)")
    ap.add_argument("--workers", type=int, default=0,
                    help="tern's event-loop threads (config `workers`; 0: one per core)")
    ap.add_argument("--conf", default="",
                    help="configuration text added to tern's (e.g. 'events { enabled = false; }')")
    ap.add_argument("--baseline-conf", default=None,
                    help="configuration text added for the baseline instead (default: --conf); "
                         "with --tern-baseline the same binary as --tern, this A/Bs a setting")
    args = ap.parse_args()
    if not os.access(args.sink, os.X_OK):
        sys.exit("bench: needs smtp-sink as the next hop (Debian package postfix)")
    load = benchlib.smtpload(args.tern, tempfile.mkdtemp(prefix="tern-bench-"), args.smtpload)
    base_conf = args.conf if args.baseline_conf is None else args.baseline_conf
    bins = [("tern", args.tern, args.conf)] + ([("baseline", args.tern_baseline, base_conf)]
                                               if args.tern_baseline else [])
    print(f"relay: {args.messages} messages of {args.size} B over {args.conns} connections, "
          f"{args.reps} repetitions")
    for rep in range(1, args.reps + 1):
        for name, b, extra in bins:
            trace = f"{args.trace}-rep{rep}-{name}.txt" if args.trace else None
            r = run_once(args, b, load, args.sink, trace, extra)
            print(f"rep {rep} {name}: " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
