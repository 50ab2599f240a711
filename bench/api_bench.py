#!/usr/bin/python3
"""make bench-api: the HTTP sending API's sends/s beside SMTP accepts/s of the same server.

Starts the real tern binary once with an mx listener and an "http" (API) listener on
loopback, makes an API key with `tern apikey create`, then in each rep:

  - API: C concurrent HTTP/1.1 clients (one process each, keep-alive connections, Python's
    http.client), each POSTing native sends (POST /api/v1/messages, a text body of SIZE
    bytes) with a Bearer key until N messages are sent in all. tern answers 202 only after
    the message is on stable storage in the spool (the group commit), so a 202 is a committed
    message. Figures: 202s/s until the last answer, request latency p50/p90/p99.
  - SMTP: tern's own load generator (bench/smtpload.c) on the same server, the same N,
    C connections, SIZE-byte messages: 250s/s until the last, MAIL->250 latency.

Every message goes to one local Maildir (delivery runs during both loads alike). Every load
is bounded (message count, deadlines) and only talks to 127.0.0.1. Figures are printed,
never asserted. The clients share the machine with tern: on a small machine the Python
clients take a share of the CPU the API figure would otherwise get (smtpload is C).
"""
import argparse
import http.client
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import free_port, stop

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)



def wait_port(port, proc, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit("bench: tern exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: nothing listens on {port} in time")


def start_tern(tern, workdir, mx_port, api_port):
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
listen {{
    mx {{ address = "127.0.0.1:{mx_port}"; profile = "mx"; }}
    api {{ address = "127.0.0.1:{api_port}"; profile = "http"; }}
}}
""")
    if os.geteuid() == 0:
        os.chmod(workdir, 0o755)
    r = subprocess.run([tern, "apikey", "create", "bench", "-c", conf], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"tern_[0-9a-f]{16}_[0-9a-f]{64}", r.stdout)
    if r.returncode != 0 or not m:
        sys.exit(f"bench: tern apikey create failed: {r.stderr.strip()}")
    log = open(os.path.join(workdir, "tern.log"), "w")
    proc = subprocess.Popen([tern, "serve", "-c", conf], stdout=log, stderr=log)
    wait_port(mx_port, proc)
    wait_port(api_port, proc)
    return proc, data, m.group(0)


def cpu_s(pid):
    """CPU seconds (user + system) of tern: started as root it is a small privileged parent
    and the unprivileged child that does the work, so count both."""
    total, pids = 0.0, [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def children_cpu_s():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime



def api_client(port, token, count, size, deadline, tag, out):
    """One keep-alive connection, count sends one after another; puts (ok, errors, [latency
    seconds], first error) on out."""
    text = ("x" * 75 + "\n") * (size // 76) + "x" * (size % 76)
    lat, ok, errors, first = [], 0, 0, None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for i in range(count):
        if time.time() > deadline:
            errors += count - i
            first = first or "deadline"
            break
        body = json.dumps({"from": "app@bench.test", "to": ["postmaster@bench.test"],
                           "subject": f"api {tag} {i}", "text": text}).encode()
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/v1/messages", body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            errors += 1
            first = first or repr(e)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        lat.append(time.perf_counter() - t0)
        if r.status == 202:
            ok += 1
        else:
            errors += 1
            first = first or f"{r.status} {data[:200]!r}"
    conn.close()
    out.put((ok, errors, lat, first))


def pct(sorted_lat, p):
    if not sorted_lat:
        return 0.0
    return sorted_lat[min(len(sorted_lat) - 1, int(p / 100 * len(sorted_lat)))] * 1000


def run_api(args, port, token, rep):
    out = multiprocessing.Queue()
    per = [args.messages // args.conns + (1 if i < args.messages % args.conns else 0)
           for i in range(args.conns)]
    deadline = time.time() + args.timeout
    procs = [multiprocessing.Process(target=api_client,
                                     args=(port, token, n, args.size, deadline, f"{rep}.{i}",
                                           out))
             for i, n in enumerate(per)]
    t0 = time.time()
    for p in procs:
        p.start()
    res = [out.get(timeout=args.timeout + 60) for _ in procs]
    elapsed = time.time() - t0
    for p in procs:
        p.join(timeout=30)
    lat = sorted(x for r in res for x in r[2])
    ok = sum(r[0] for r in res)
    return {"ok": ok, "errors": sum(r[1] for r in res),
            "first_error": next((r[3] for r in res if r[3]), None),
            "rate": ok / elapsed if elapsed else 0,
            "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99)}


def run_smtp(args, load, port):
    per_conn = max(1, -(-args.messages // args.conns))
    out = subprocess.run(
        [load, "send", "127.0.0.1", str(port), "-n", str(args.messages), "-c", str(args.conns),
         "-p", str(per_conn), "-s", str(args.size), "-t", "postmaster@bench.test",
         "-T", str(args.timeout)],
        capture_output=True, text=True)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        sys.exit(f"bench: smtpload failed ({out.returncode}): {out.stderr.strip()}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"ok": r["ok"], "errors": r["tempfail"] + r["permfail"] + r["lost"],
            "first_error": r["errors"] or None,
            "rate": r["ok"] / r["elapsed_s"] if r["elapsed_s"] else 0,
            "p50": r["lat_p50_ms"], "p90": r["lat_p90_ms"], "p99": r["lat_p99_ms"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tern", default=os.path.join(REPO, "build", "tern"))
    ap.add_argument("--smtpload", help="load generator (default: smtpload beside --tern, "
                    "else bench/smtpload.c built with cc)")
    ap.add_argument("--messages", type=int, default=4000, help="per load and rep")
    ap.add_argument("--conns", type=int, default=16, help="concurrent clients (both loads)")
    ap.add_argument("--size", type=int, default=4096, help="bytes of body text / message")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=300, help="seconds per load")
    args = ap.parse_args()
    if args.messages > 10**6 or args.conns > 512 or args.messages < args.conns:
        sys.exit("bench: 1 <= conns <= messages <= 10^6 and conns <= 512")

    tmp = tempfile.mkdtemp(prefix="tern-api-bench-",
                           dir=os.environ.get("TERN_BENCH_DIR", "/var/tmp"))
    os.chmod(tmp, 0o755)
    proc = None
    try:
        load = benchlib.smtpload(args.tern, tmp, args.smtpload)
        mx_port, api_port = free_port(), free_port()
        proc, data, token = start_tern(args.tern, tmp, mx_port, api_port)
        print(f"tern api bench: {args.messages} messages of {args.size} B per load, "
              f"{args.conns} concurrent keep-alive clients, one tern serve, local Maildir "
              f"delivery, {args.reps} reps (API then SMTP in each)")
        print("| rep | path | accepted | errors | msg/s | latency p50 / p90 / p99 ms | "
              "tern CPU us/msg | client CPU us/msg |")
        print("|---|---|---|---|---|---|---|---|")
        for rep in range(args.reps):
            for label, run in (("HTTP API (202)", lambda: run_api(args, api_port, token, rep)),
                               ("SMTP (250)", lambda: run_smtp(args, load, mx_port))):
                # tern's CPU includes the local deliveries that run meanwhile, alike for both
                c0, k0 = cpu_s(proc.pid), children_cpu_s()
                r = run()
                c1, k1 = cpu_s(proc.pid), children_cpu_s()
                n = max(1, r["ok"])
                print(f"| {rep + 1} | {label} | {r['ok']} | {r['errors']} | {r['rate']:.0f} | "
                      f"{r['p50']:.1f} / {r['p90']:.1f} / {r['p99']:.1f} | "
                      f"{(c1 - c0) / n * 1e6:.0f} | {(k1 - k0) / n * 1e6:.0f} |", flush=True)
                if r["errors"]:
                    print(f"  first error: {r['first_error']}")
    finally:
        if proc:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
