#!/usr/bin/python3
"""Capture-mode benchmark: tern capture beside maildev, in the same run.

For each server: N messages of 4 KiB over 10 SMTP connections (tern's own
loopback load generator, bench/smtpload.c), then
  - accept side: messages/s until the last 250, MAIL->250 latency p50/p99;
  - visible before 250: ONE count of the listed messages right after the
    last 250 (what a CI suite that sends, then lists at once, sees), and
    that count per second of sending (equal to the accept rate only when
    every acknowledged message was already listed);
  - captured: messages/s until the API lists all N;
  - list latency: the first page of the message list (tern: GET
    /api/v1/messages?limit=50; maildev 3: GET /api/email returns every
    message; its counts come from GET /api/email/summary) and search
    latency (tern: GET /api/v1/search; maildev: none, so not measured),
    p50/p99 over R requests;
  - RSS of the server process.
Then tern alone is filled to --fill messages (default 100,000) and its list
and search latencies are measured again at that size (maildev keeps every
message and returns all of them on each list, which is why it is only
measured at N). --no-fill skips that part.

Bounded: message counts, timeouts, loopback only. Figures are printed,
never asserted. maildev 3 comes from npm (installed into --maildev-dir if
missing); tern from --tern (a release build: `make build`).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import benchlib
from benchlib import free_port, stop

HERE = os.path.dirname(os.path.abspath(__file__))
MAILDEV_MAJOR = 3
REPO = os.path.dirname(HERE)



def http_get(url, timeout=60):
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def wait_http(url, proc, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"bench: server exited during start-up ({url})")
        try:
            http_get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"bench: {url} did not answer in time")


def rss_mb(pid):
    total = 0
    pids = [pid]
    # maildev runs under node; count the process tree.
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout.split()
        pids += [int(p) for p in out]
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
    return total / 1024


def send(load, port, n, conns, timeout):
    out = subprocess.run([load, "send", "127.0.0.1", str(port), "-n", str(n), "-c", str(conns),
                          "-p", "100", "-s", "4096", "-t", "dev@capture.test",
                          "-T", str(timeout)], capture_output=True, text=True)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        sys.exit(f"bench: smtpload failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def latencies(url, reps):
    xs = []
    for _ in range(reps):
        dt, _ = http_get(url)
        xs.append(dt * 1000)
    xs.sort()
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]



def run_tern(args, load, tmp, run=1):
    smtp, web = free_port(), free_port()
    data = os.path.join(tmp, f"tern-data-{run}")  # a fresh store each run
    log = open(os.path.join(tmp, "tern.log"), "w")
    conf = os.path.join(tmp, "tern.conf")
    with open(conf, "w") as f:
        f.write('log_level = "warn";\nlimits { max_connections_per_ip = 10000; }\n')
        if os.geteuid() == 0:
            f.write('user = "nobody";\n')
    proc = subprocess.Popen([args.tern, "capture", "-c", conf, "--smtp", f"127.0.0.1:{smtp}",
                             "--http", f"127.0.0.1:{web}", "--data-dir", data],
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{web}"
    try:
        wait_http(base + "/api/v1/info", proc)
        t0 = time.time()
        res = send(load, smtp, args.messages, args.conns, args.timeout)
        _, body = http_get(base + "/api/v1/messages?limit=1")  # at once, no retry
        at_once = json.loads(body)["total"]
        deadline = time.time() + args.timeout
        count = 0
        while time.time() < deadline:
            _, body = http_get(base + "/api/v1/messages?limit=1")
            count = json.loads(body)["total"]
            if count >= res["ok"]:
                break
            time.sleep(0.05)
        captured_s = time.time() - t0
        row = {
            "server": "tern capture", "ok": res["ok"],
            "accept": res["ok"] / res["elapsed_s"], "p50": res["lat_p50_ms"],
            "at_once": at_once, "visible_per_s": min(at_once, res["ok"]) / res["elapsed_s"],
            "p99": res["lat_p99_ms"], "captured": count,
            "captured_per_s": count / captured_s,
            "list": latencies(base + "/api/v1/messages?limit=50", args.reps),
            "search": latencies(base + "/api/v1/search?query=subject:bench+is:unread&limit=50",
                                args.reps),
            "rss": rss_mb(proc.pid),
        }
        fill = None
        if args.fill > count:
            more = args.fill - count
            r2 = send(load, smtp, more, args.conns, args.timeout * 5)
            deadline = time.time() + args.timeout * 5
            while time.time() < deadline:
                _, body = http_get(base + "/api/v1/messages?limit=1")
                total = json.loads(body)["total"]
                if total >= count + r2["ok"]:
                    break
                time.sleep(0.5)
            fill = {
                "total": total,
                "list": latencies(base + "/api/v1/messages?limit=50", args.reps),
                "page": latencies(base + f"/api/v1/messages?start={total // 2}&limit=50",
                                  args.reps),
                "search": latencies(base + "/api/v1/search?query=abcdefghij&limit=50",
                                    args.reps),
                "search_none": latencies(base + "/api/v1/search?query=from:nobody@nowhere",
                                         args.reps),
                "rss": rss_mb(proc.pid),
            }
        return row, fill
    finally:
        stop(proc)


def run_maildev(args, load, tmp, run=1):
    exe = os.path.join(args.maildev_dir, "node_modules", ".bin", "maildev")
    if not os.path.exists(exe):
        os.makedirs(args.maildev_dir, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"maildev@{MAILDEV_MAJOR}"],
                       cwd=args.maildev_dir, check=True, capture_output=True)
    smtp, web = free_port(), free_port()
    log = open(os.path.join(tmp, "maildev.log"), "w")
    proc = subprocess.Popen([exe, "--smtp", str(smtp), "--web", str(web), "--ip", "127.0.0.1",
                             "--mail-directory", os.path.join(tmp, f"maildev-mail-{run}"),
                             "--silent"],
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{web}"
    try:
        wait_http(base + "/api/email/summary", proc)
        t0 = time.time()
        res = send(load, smtp, args.messages, args.conns, args.timeout)
        _, body = http_get(base + "/api/email/summary?limit=1")  # at once, no retry
        at_once = json.loads(body)["total"]
        deadline = time.time() + args.timeout
        count = 0
        while time.time() < deadline:
            _, body = http_get(base + "/api/email/summary?limit=1")
            count = json.loads(body)["total"]
            if count >= res["ok"]:
                break
            time.sleep(1.0)
        captured_s = time.time() - t0
        return {
            "server": f"maildev {MAILDEV_MAJOR}", "ok": res["ok"],
            "accept": res["ok"] / res["elapsed_s"], "p50": res["lat_p50_ms"],
            "at_once": at_once, "visible_per_s": min(at_once, res["ok"]) / res["elapsed_s"],
            "p99": res["lat_p99_ms"], "captured": count,
            "captured_per_s": count / captured_s,
            "list": latencies(base + "/api/email", max(3, args.reps // 10)),
            "search": None,
            "rss": rss_mb(proc.pid),
        }
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tern", default=os.path.join(REPO, "build", "tern"))
    ap.add_argument("--tern-baseline", help="a second tern binary (e.g. a build of main) run "
                    "beside --tern in each repetition")
    ap.add_argument("--smtpload", help="load generator (default: smtpload beside --tern, "
                    "else bench/smtpload.c built with cc)")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--fill", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--maildev-dir", default="/var/tmp/tern-bench-maildev3")
    ap.add_argument("--no-fill", action="store_true", help="skip the --fill part")
    ap.add_argument("--runs", type=int, default=1,
                    help="repetitions of the N-message part (tern and maildev alternate)")
    ap.add_argument("--skip-maildev", action="store_true")
    args = ap.parse_args()
    if args.messages > 10**6 or args.fill > 10**6:
        sys.exit("bench: at most 10^6 messages")
    tmp = tempfile.mkdtemp(prefix="tern-capture-bench-", dir="/var/tmp")
    os.chmod(tmp, 0o755)
    try:
        load = benchlib.smtpload(args.tern, tmp, args.smtpload)
        if args.no_fill:
            args.fill = 0
        rows = []
        fill = None
        for run in range(args.runs):
            t, f = run_tern(args, load, tmp, run + 1)
            t["run"] = run + 1
            rows.append(t)
            if args.tern_baseline:
                b, _ = run_tern(argparse.Namespace(**dict(vars(args), tern=args.tern_baseline,
                                                          fill=0)), load, tmp, f"b{run + 1}")
                b["run"] = run + 1
                b["server"] = "tern capture (baseline)"
                rows.append(b)
            fill = fill or f
            args.fill = 0  # only once
            if not args.skip_maildev:
                m = run_maildev(args, load, tmp, run + 1)
                m["run"] = run + 1
                rows.append(m)
        print(f"capture: {args.messages} messages of 4 KiB over {args.conns} connections")
        print("| run | server | accepted | accept msg/s | MAIL->250 p50 / p99 ms |"
              " listed at once after the last 250 | visible-before-250 msg/s |"
              " captured msg/s | list p50 / p99 ms | search p50 / p99 ms | RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            s = f"{r['search'][0]:.1f} / {r['search'][1]:.1f}" if r["search"] else "n/a"
            print(f"| {r['run']} | {r['server']} | {r['ok']} | {r['accept']:.0f} | "
                  f"{r['p50']:.1f} / {r['p99']:.1f} | {r['at_once']} of {r['ok']} | "
                  f"{r['visible_per_s']:.0f} | {r['captured_per_s']:.0f} | "
                  f"{r['list'][0]:.1f} / {r['list'][1]:.1f} | {s} | {r['rss']:.0f} |")
        # The figure issue 11 asks for, per server: the median over the runs (and the
        # range), all measured in the same runs, alternating.
        print("\nvisible-before-250 msg/s, median (min-max) over "
              f"{args.runs} run(s), same runs:")
        for server in dict.fromkeys(r["server"] for r in rows):
            v = [r["visible_per_s"] for r in rows if r["server"] == server]
            print(f"  {server}: {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})")
        if fill:
            print(f"\ntern capture at {fill['total']} stored messages: list first page "
                  f"{fill['list'][0]:.1f} / {fill['list'][1]:.1f} ms, middle page "
                  f"{fill['page'][0]:.1f} / {fill['page'][1]:.1f} ms, free-text search "
                  f"{fill['search'][0]:.1f} / {fill['search'][1]:.1f} ms, search with no "
                  f"match {fill['search_none'][0]:.1f} / {fill['search_none'][1]:.1f} ms "
                  f"(p50 / p99), RSS {fill['rss']:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
