#!/usr/bin/python3
"""make bench-scale: how tern scales with connections (issue 11, item 5).

Two figures, from the clone alone (tern's own load generator, bench/smtpload.c):

  - idle: K connections (50,000) to one tern, each greeted and past EHLO, then
    idle. tern's proportional set size (PSS, /proc/PID/smaps_rollup, summed over
    the privileged parent and the worker process) before and while holding them,
    per connection; and how long a new session waits for its greeting and its
    EHLO reply while tern holds them all.
  - active: accept rate (messages of 4 KiB, to local Maildir delivery, until the
    last 250) with LOW (50) and HIGH (5,000) concurrent senders, alternating in
    the same run, several repetitions, medians and the ratio HIGH / LOW. Every
    sender sends the same number of messages per connection in both, so
    connection set-up weighs the same per message.

Only this bench raises limits: RLIMIT_NOFILE for itself (inherited by tern and
smtpload; needs root or a high hard limit) and tern's max_connections and
max_connections_per_ip in the bench's own tern.conf. tern's defaults are not
changed. Loopback offers about 28,000 ephemeral ports per source address, so
the load generator spreads its connections over source addresses 127.0.0.2 and
up (smtpload -b).

Every load is bounded (connection and message counts, deadlines) and only talks
to 127.0.0.0/8. Figures are printed (a Markdown table and a JSON line), never
asserted.
"""
import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import free_port, stop

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)



def tern_pids(pid):
    """tern started as root is a small privileged parent and the unprivileged
    child that holds every connection: both count."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def mem_kb(pid):
    """(PSS, RSS) in KiB over tern's processes."""
    pss = rss = 0
    for p in tern_pids(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return pss, rss


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_port(port, proc, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit("bench: tern exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit("bench: tern did not greet in time")


def start_tern(tern, workdir, port, max_conns):
    data = os.path.join(workdir, "data")
    conf = os.path.join(workdir, "tern.conf")
    with open(conf, "w") as f:
        f.write(f"""
hostname = "bench.tern.test";
data_dir = "{data}";
user = "{'nobody' if os.geteuid() == 0 else ''}";
log_level = "warn";
local_domains = ["bench.test"];
limits {{ max_connections = {max_conns}; max_connections_per_ip = {max_conns}; }}
listen {{ mx {{ address = "127.0.0.1:{port}"; profile = "mx"; }} }}
""")
    if os.geteuid() == 0:
        os.chmod(workdir, 0o755)
    log = open(os.path.join(workdir, "tern.log"), "w")
    proc = subprocess.Popen([tern, "serve", "-c", conf], stdout=log, stderr=log)
    wait_port(port, proc)
    return proc



def probe_session(port):
    """ms from connect to the 220 greeting, and from EHLO to its last 250 line."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        line = f.readline()
        t1 = time.monotonic()
        if not line.startswith(b"220"):
            return None
        s.sendall(b"EHLO probe.bench\r\n")
        while True:
            line = f.readline()
            if not line.startswith(b"250") or line[3:4] == b" ":
                break
        t2 = time.monotonic()
        s.sendall(b"QUIT\r\n")
        f.readline()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def run_idle(args, load, workdir):
    port = free_port()
    proc = start_tern(args.tern, workdir, port, args.idle_conns + 1000)
    time.sleep(1)
    pss0, rss0 = mem_kb(proc.pid)
    cmd = [load, "hold", "127.0.0.1", str(port), "-k", str(args.idle_conns), "-H",
           str(args.hold_secs), "-r", str(args.open_rate), "-b", str(args.srcs),
           "-T", str(args.hold_secs + 300)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    res, pss1, rss1, probe = {}, pss0, rss0, None
    for line in p.stdout:
        if line.startswith("holding "):
            time.sleep(2)
            pss1, rss1 = mem_kb(proc.pid)
            probe = probe_session(port)
        elif line.startswith("{"):
            res = json.loads(line)
        elif line.strip():
            print("  " + line.strip(), flush=True)
    p.wait()
    stop(proc)
    held = res.get("held", 0)
    return {"wanted": args.idle_conns, "held": held, "dropped": res.get("dropped"),
            "failed": res.get("failed"), "errors": res.get("errors"),
            "pss_idle_kb": pss0, "pss_held_kb": pss1, "rss_idle_kb": rss0, "rss_held_kb": rss1,
            "pss_per_conn_b": (pss1 - pss0) * 1024 / held if held else None,
            "rss_per_conn_b": (rss1 - rss0) * 1024 / held if held else None,
            "probe_greeting_ms": probe[0] if probe else None,
            "probe_ehlo_ms": probe[1] if probe else None}


def run_send(args, load, workdir, conns):
    port = free_port()
    proc = start_tern(args.tern, workdir, port, conns + 1000)
    la0 = loadavg()
    out = subprocess.run(
        [load, "send", "127.0.0.1", str(port), "-n", str(args.messages), "-c", str(conns),
         "-p", str(args.per_conn), "-s", str(args.size), "-t", "postmaster@bench.test",
         "-b", str(args.srcs), "-T", str(args.timeout)],
        capture_output=True, text=True)
    la1 = loadavg()
    stop(proc)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        sys.exit(f"bench: smtpload failed ({out.returncode}): {out.stderr.strip()}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["load_before"], r["load_after"] = la0, la1
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tern", default=os.path.join(REPO, "build", "tern"))
    ap.add_argument("--smtpload", help="load generator (default: smtpload beside --tern, "
                    "else bench/smtpload.c built with cc)")
    ap.add_argument("--idle-conns", type=int, default=50000)
    ap.add_argument("--hold-secs", type=int, default=5)
    ap.add_argument("--open-rate", type=int, default=5000, help="new idle connections a second")
    ap.add_argument("--srcs", type=int, default=4, help="source addresses 127.0.0.2 and up")
    ap.add_argument("--low", type=int, default=50)
    ap.add_argument("--high", type=int, default=5000)
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--per-conn", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-active", action="store_true")
    args = ap.parse_args()
    if args.idle_conns > 100000 or args.high > 100000 or args.messages > 10**6:
        sys.exit("bench: bounds are 100000 connections and 10^6 messages")
    if args.srcs < 1 or args.srcs > 200:
        sys.exit("bench: --srcs is 1 to 200")

    # descriptors for every connection on both ends: tern and smtpload inherit this
    want = max(args.idle_conns, args.high) + 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fd_note = None
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            # no CAP_SYS_RESOURCE (a container, not root): the hard limit is all there is
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            cap = hard - 500
            if max(args.high, 1000) > cap:
                sys.exit(f"bench: the fd hard limit ({hard}) is too low: run as root, or raise "
                         "it (ulimit -Hn) first")
            if args.idle_conns > cap:
                fd_note = (f"the fd hard limit is {hard} and cannot be raised here (no "
                           f"CAP_SYS_RESOURCE): idle measured at {cap} connections, not "
                           f"{args.idle_conns}")
                args.idle_conns = cap

    tmp = tempfile.mkdtemp(prefix="tern-scale-",
                           dir=os.environ.get("TERN_BENCH_DIR", "/var/tmp"))
    os.chmod(tmp, 0o755)
    summary = {"cpus": os.cpu_count()}
    try:
        load = benchlib.smtpload(args.tern, tmp, args.smtpload)
        print(f"tern scale bench: {os.cpu_count()} CPUs, load average {loadavg():.2f} at start")
        if fd_note and not args.skip_idle:
            print("NOTE: " + fd_note)
            summary["fd_note"] = fd_note
        if not args.skip_idle:
            wd = os.path.join(tmp, "idle")
            os.makedirs(wd)
            h = run_idle(args, load, wd)
            summary["idle"] = h
            print(f"\nidle: {h['held']}/{h['wanted']} connections held past EHLO "
                  f"({args.srcs} source addresses); tern PSS {h['pss_idle_kb'] / 1024:.1f} MB "
                  f"before, {h['pss_held_kb'] / 1024:.1f} MB holding them")
            if h["held"]:
                print(f"  per connection: PSS {h['pss_per_conn_b']:.0f} B, "
                      f"RSS {h['rss_per_conn_b']:.0f} B")
            if h["probe_greeting_ms"] is not None:
                print(f"  a new session meanwhile: greeting in {h['probe_greeting_ms']:.1f} ms, "
                      f"EHLO reply in {h['probe_ehlo_ms']:.1f} ms")
            if h["errors"] or h["dropped"] or h["failed"]:
                print(f"  dropped {h['dropped']}, failed {h['failed']}; errors: {h['errors']}")
            shutil.rmtree(wd, ignore_errors=True)
        if not args.skip_active:
            print(f"\nactive: {args.messages} messages of {args.size} B, {args.per_conn} per "
                  f"connection, {args.low} vs {args.high} concurrent senders, alternating, "
                  f"{args.reps} reps")
            print("| rep | senders | accepted | tempfail/permfail/lost | accept msg/s | "
                  "MAIL->250 p50 / p99 ms | load avg before/after |")
            print("|---|---|---|---|---|---|---|")
            rates = {args.low: [], args.high: []}
            runs = []
            for rep in range(args.reps):
                order = (args.low, args.high) if rep % 2 == 0 else (args.high, args.low)
                for c in order:
                    wd = os.path.join(tmp, f"send{rep}-{c}")
                    os.makedirs(wd)
                    r = run_send(args, load, wd, c)
                    shutil.rmtree(wd, ignore_errors=True)
                    rate = r["ok"] / r["elapsed_s"] if r["elapsed_s"] else 0
                    rates[c].append(rate)
                    runs.append({"rep": rep + 1, "senders": c, "msgs_per_s": rate, **r})
                    print(f"| {rep + 1} | {c} | {r['ok']} | {r['tempfail']}/{r['permfail']}/"
                          f"{r['lost']} | {rate:.0f} | {r['lat_p50_ms']:.1f} / "
                          f"{r['lat_p99_ms']:.1f} | {r['load_before']:.1f} / "
                          f"{r['load_after']:.1f} |", flush=True)
                    if r["errors"]:
                        print(f"  errors: {r['errors']}")
            lo, hi = statistics.median(rates[args.low]), statistics.median(rates[args.high])
            ratio = hi / lo if lo else 0
            summary["active"] = {"runs": runs, "median_low": lo, "median_high": hi,
                                 "ratio": ratio}
            print(f"\nmedian accept rate: {lo:.0f} msg/s with {args.low} senders, {hi:.0f} msg/s "
                  f"with {args.high}: ratio {ratio * 100:.0f} %")
        print(json.dumps(summary))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
