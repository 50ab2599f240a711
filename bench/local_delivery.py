#!/usr/bin/python3
"""make bench: tern's accept and local-delivery throughput, and idle memory.

Starts the real tern binary on a loopback port with a fresh data dir, drives
it with tern's own loopback load generator (bench/smtpload.c: the build's
smtpload beside tern, or compiled here with cc), and prints:

  - accept side: messages/s until the last 250, MAIL->250 latency p50/p90/p99
  - end to end: messages/s until the last message is in a Maildir
  - idle connections: K connections held past EHLO, RSS per connection

Every load is bounded (message count, connection count, deadlines) and only
talks to 127.0.0.1. Figures are printed, never asserted.
"""
import argparse
import json
import os
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



def rss_kb(pid):
    """RSS of tern: started as root it is a small privileged parent and the
    unprivileged child that holds every connection, so count both."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_port(port, proc, deadline=15):
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


def count_delivered(maildir):
    try:
        return len(os.listdir(maildir))
    except FileNotFoundError:
        return 0


def start_tern(tern, workdir, port, extra=""):
    data = os.path.join(workdir, "data")
    conf = os.path.join(workdir, "tern.conf")
    with open(conf, "w") as f:
        f.write(f"""
hostname = "bench.tern.test";
data_dir = "{data}";
user = "{'nobody' if os.geteuid() == 0 else ''}";
log_level = "warn";
local_domains = ["bench.test"];
limits {{ max_connections = 20000; max_connections_per_ip = 20000; }}
listen {{ mx {{ address = "127.0.0.1:{port}"; profile = "mx"; }} }}
{extra}
""")
    if os.geteuid() == 0:
        os.chmod(workdir, 0o755)
    log = open(os.path.join(workdir, "tern.log"), "w")
    proc = subprocess.Popen([tern, "serve", "-c", conf], stdout=log, stderr=log)
    wait_port(port, proc)
    return proc, data



def run_send(args, tern, load, workdir):
    port = free_port()
    proc, data = start_tern(tern, workdir, port)
    maildir = os.path.join(data, "mail", "bench.test", "postmaster", "new")
    t0 = time.time()
    out = subprocess.run(
        [load, "send", "127.0.0.1", str(port), "-n", str(args.messages), "-c", str(args.conns),
         "-p", str(args.per_conn), "-s", str(args.size), "-t", "postmaster@bench.test",
         "-T", str(args.timeout)],
        capture_output=True, text=True)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        sys.exit(f"bench: smtpload failed ({out.returncode}): {out.stderr.strip()}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    accept_s = res["elapsed_s"]
    deadline = time.time() + args.timeout
    while count_delivered(maildir) < res["ok"] and time.time() < deadline:
        time.sleep(0.05)
    delivered_s = time.time() - t0
    delivered = count_delivered(maildir)
    peak_rss = rss_kb(proc.pid)
    stop(proc)
    return {
        "ok": res["ok"], "tempfail": res["tempfail"], "permfail": res["permfail"],
        "accept_msgs": res["ok"] / accept_s if accept_s else 0,
        "lost": res["lost"],
        "p50": res["lat_p50_ms"], "p90": res["lat_p90_ms"], "p99": res["lat_p99_ms"],
        "delivered": delivered, "delivered_msgs": delivered / delivered_s if delivered_s else 0,
        "rss_mb": peak_rss / 1024, "errors": res["errors"],
    }


def run_hold(args, tern, load, workdir):
    port = free_port()
    proc, _ = start_tern(tern, workdir, port)
    idle = rss_kb(proc.pid)
    p = subprocess.Popen(
        [load, "hold", "127.0.0.1", str(port), "-k", str(args.hold_conns), "-H",
         str(args.hold_secs), "-T", str(args.hold_secs + 60)],
        stdout=subprocess.PIPE, text=True)
    held_rss = idle
    res = {}
    for line in p.stdout:
        if line.startswith("holding "):
            time.sleep(min(2, args.hold_secs / 2))
            held_rss = rss_kb(proc.pid)
        if line.startswith("{"):
            res = json.loads(line)
    p.wait()
    stop(proc)
    held = res.get("held", 0)
    return {"held": held, "wanted": args.hold_conns, "idle_rss_mb": idle / 1024,
            "held_rss_mb": held_rss / 1024,
            "kb_per_conn": (held_rss - idle) / held if held else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tern", default=os.path.join(REPO, "build", "tern"))
    ap.add_argument("--smtpload", help="load generator (default: smtpload beside --tern, "
                    "else bench/smtpload.c built with cc)")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--per-conn", type=int, default=100)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--hold-conns", type=int, default=5000)
    ap.add_argument("--hold-secs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tern-baseline", help="a second tern binary (e.g. a build of main) run "
                    "after --tern in each rep, on the same load")
    ap.add_argument("--no-hold", action="store_true", help="skip the idle-connections part")
    args = ap.parse_args()
    if args.messages > 10**6 or args.hold_conns > 20000:
        sys.exit("bench: bounds are 10^6 messages and 20000 connections")

    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.hold_conns * 2 + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    tmp = tempfile.mkdtemp(prefix="tern-bench-", dir=os.environ.get("TERN_BENCH_DIR", "/var/tmp"))
    os.chmod(tmp, 0o755)
    try:
        load = benchlib.smtpload(args.tern, tmp, args.smtpload)
        print(f"tern bench: {args.messages} messages of {args.size} B over {args.conns} "
              f"connections ({args.per_conn} per connection), local Maildir delivery, "
              f"{args.reps} reps")
        print("| rep | server | accepted | accept msg/s | MAIL->250 p50 / p90 / p99 ms | "
              "delivered | end-to-end msg/s | RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        servers = [("tern", args.tern)]
        if args.tern_baseline:
            servers.append(("tern (baseline)", args.tern_baseline))
        e2e = {label: [] for label, _ in servers}
        for rep in range(args.reps):
            for label, binary in servers:
                # Each run's directory stays until the end: on ext4 without a journal,
                # creating a file scans past every inode deleted in the last seconds, so
                # removing the previous run's thousands of files here would slow the next.
                wd = os.path.join(tmp, f"send{rep}-{len(label)}")
                os.makedirs(wd)
                r = run_send(args, binary, load, wd)
                print(f"| {rep + 1} | {label} | {r['ok']} | {r['accept_msgs']:.0f} | "
                      f"{r['p50']:.1f} / {r['p90']:.1f} / {r['p99']:.1f} | {r['delivered']} | "
                      f"{r['delivered_msgs']:.0f} | {r['rss_mb']:.0f} |", flush=True)
                if r["errors"] or r["lost"] or r["tempfail"] or r["permfail"]:
                    print(f"  tempfail {r['tempfail']}, permfail {r['permfail']}, "
                          f"lost {r['lost']}; errors: {r['errors']}")
                e2e[label].append(r["delivered_msgs"])
        print(f"\nMaildir end-to-end msg/s (until the last file is in new/), median "
              f"(min-max) over {args.reps} rep(s), same reps:")
        for label, v in e2e.items():
            print(f"  {label}: {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})")
        if args.no_hold:
            return
        wd = os.path.join(tmp, "hold")
        os.makedirs(wd)
        h = run_hold(args, args.tern, load, wd)
        print(f"\nidle connections: {h['held']}/{h['wanted']} held past EHLO; RSS idle "
              f"{h['idle_rss_mb']:.1f} MB, holding {h['held_rss_mb']:.1f} MB, "
              f"{h['kb_per_conn']:.1f} KB per connection")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
