#!/usr/bin/python3
"""bench/events_queries.py — the event store's read side on a large store, two binaries.

Builds DATA/events.db with the schema of a tern before events_span (an index on time; the
SQL below is that schema) holding N events over the last 30 days (none in the last 30 minutes nor
within 15 minutes of the edges of the windows the CLI is asked for, which move while it runs): N/3 messages of three
events each (received, queued, then delivered, or 5 % bounced, 5 % deferred), 10,000
recipients at 50 domains. Then, for each binary given, a copy of it: the binary's `serve` is
started once on it (its events writer migrates an older store at start; the time the start
took is printed) and stopped, then each read is run --reps times through the binary's CLI
and the least CPU time printed (process start included, the same for both binaries):
`tern events tail` without and with a filter, `tern stats` over 24 hours, 7 days (grouped by
provider) and 30 days. The outputs of the two binaries are compared (they must agree: the
counts are the store's, whatever its indexes).

usage: events_queries.py --tern NEW [--tern-baseline OLD] [-n 1000000] [--reps 3]
Only 127.0.0.1 is used; processes started here are stopped by their PID.
"""
import argparse
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port  # noqa: E402

OLD_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE events(id INTEGER PRIMARY KEY, time INTEGER NOT NULL, type TEXT NOT NULL,
 queue_id TEXT, message_id TEXT, sender TEXT, recipient TEXT, key TEXT, tags TEXT,
 metadata TEXT, reply TEXT, status TEXT, relay TEXT, next_attempt INTEGER, hard INTEGER);
CREATE INDEX events_time ON events(time);
CREATE INDEX events_qid ON events(queue_id);
CREATE TABLE webhooks(id INTEGER PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL,
 events TEXT NOT NULL DEFAULT '', key TEXT NOT NULL DEFAULT '', enabled INTEGER NOT NULL
 DEFAULT 1, status TEXT NOT NULL DEFAULT 'active', failing_since INTEGER NOT NULL DEFAULT 0,
 created INTEGER NOT NULL);
CREATE TABLE outbox(id INTEGER PRIMARY KEY, endpoint INTEGER NOT NULL, event INTEGER NOT NULL,
 queue_id TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try INTEGER NOT NULL
 DEFAULT 0, done INTEGER NOT NULL DEFAULT 0);
CREATE INDEX outbox_pending ON outbox(done, endpoint, queue_id, id);
CREATE TABLE attempts(id INTEGER PRIMARY KEY, endpoint INTEGER NOT NULL, event INTEGER NOT
 NULL, time INTEGER NOT NULL, http_status INTEGER NOT NULL, error TEXT NOT NULL DEFAULT '');
CREATE INDEX attempts_ep ON attempts(endpoint, id);
INSERT INTO meta(k, v) VALUES('node', 'bench0000000');
"""

B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def make_store(path, n):
    rnd = random.Random(11)
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(OLD_SCHEMA)
    now = int(time.time())
    start = now - 30 * 86400 + 1800
    edges = (now - 86400, now - 7 * 86400)
    msgs = n // 3
    rows = []
    for m in range(msgs):
        t = start + (m * (30 * 86400 - 3600)) // msgs
        if any(abs(t - e) < 900 for e in edges):
            continue  # the CLI's windows are relative: no event where their edges move
        qid = "".join(B32[(m >> (5 * i)) & 31] for i in range(16))[::-1]
        mid = f"<{m}.bench@client.test>"
        rcpt = f"user{rnd.randrange(10000)}@domain{rnd.randrange(50)}.test"
        rows.append((t, "received", qid, mid, "bench@client.test", "", "", "", "", "", "", ""))
        rows.append((t, "queued", qid, mid, "bench@client.test", rcpt, "", "", "", "", "", ""))
        r = rnd.random()
        dt = t + rnd.randrange(1, 30)
        if r < 0.05:
            rows.append((dt, "bounced", qid, mid, "bench@client.test", rcpt, "", "", "",
                         f"550 5.1.1 <{rcpt}>: no such user", f"5.1.{rnd.randrange(3)}",
                         "mx.remote.test"))
        elif r < 0.10:
            rows.append((dt, "deferred", qid, mid, "bench@client.test", rcpt, "", "", "",
                         "451 4.7.1 try later", "4.7.1", "mx.remote.test"))
        else:
            rows.append((dt, "delivered", qid, mid, "bench@client.test", rcpt, "", "", "",
                         "250 2.0.0 Ok: queued", "", "mx.remote.test"))
    # rows in the order a writer would have stored them: by time
    rows.sort(key=lambda r: r[0])
    db.execute("BEGIN")
    db.executemany("INSERT INTO events(time, type, queue_id, message_id, sender, recipient, "
                   "key, tags, metadata, reply, status, relay, next_attempt, hard) "
                   "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,0,0)", rows)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return len(rows)


def migrate(tern, data):
    """Starts tern serve on the store once (its writer migrates it) and stops it."""
    port = free_port()
    conf = os.path.join(data, "..", "tern.conf")
    with open(conf, "w") as f:
        f.write(f'''
hostname = "bench.tern.test"; data_dir = "{data}"; log_level = "info";
user = "{'nobody' if os.geteuid() == 0 else ''}";
dns {{ forward = ["127.0.0.1@9"]; }}
listen {{ mx {{ address = "127.0.0.1:{port}"; profile = "mx"; }} }}
''')
    if os.geteuid() == 0:
        shutil.chown(data, "nobody")
        for x in os.listdir(data):
            shutil.chown(os.path.join(data, x), "nobody")
    log = os.path.join(data, "..", "serve.log")
    t0 = time.time()
    with open(log, "w") as lf:
        p = subprocess.Popen([tern, "serve", "-c", conf], stdout=lf, stderr=lf)
    try:
        end = time.time() + 300
        while time.time() < end:
            with open(log, errors="replace") as f:
                text = f.read()
            if "event=events_started" in text or "event=events_failed" in text:
                break
            time.sleep(0.05)
        took = time.time() - t0
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(120)
    if "event=events_started" not in text:
        sys.exit(f"events_queries: {tern} did not start its event store:\n{text[-2000:]}")
    return took, "event=events_migrated" in text, conf


def run_cpu(cmd):
    """Runs cmd; its output."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"events_queries: {' '.join(cmd)} failed: {err}")
    return out


def timed(cmd):
    """cmd's CPU time (user + system: the machine's other load changes it far less than
    the wall time) and its output without the window line (the CLI's windows end now,
    which moves between two runs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run_cpu(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, "\n".join(x for x in out.splitlines() if not x.startswith("window"))


QUERIES = [
    ("events tail --limit 100", ["events", "tail", "--limit", "100"]),
    ("events tail --recipient (no match)", ["events", "tail", "--recipient", "nobody@x.test"]),
    ("events tail --type bounced --since 1h", ["events", "tail", "--type", "bounced",
                                                "--since", "1h"]),
    ("stats --since 24h", ["stats", "--since", "24h"]),
    ("stats --since 7d --group provider", ["stats", "--since", "7d", "--group", "provider"]),
    ("stats --since 30d", ["stats", "--since", "30d"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tern", required=True)
    ap.add_argument("--tern-baseline")
    ap.add_argument("-n", type=int, default=1000000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tern-evq-")
    os.chmod(work, 0o755)
    try:
        src = os.path.join(work, "events.db")
        t0 = time.time()
        rows = make_store(src, a.n)
        print(f"store: {rows} events, {os.path.getsize(src) / 1e6:.0f} MB, made in "
              f"{time.time() - t0:.0f} s", flush=True)
        bins = [("new", a.tern)] + ([("old", a.tern_baseline)] if a.tern_baseline else [])
        confs, outs = {}, {}
        for name, tern in bins:
            data = os.path.join(work, name, "data")
            os.makedirs(data)
            os.chmod(os.path.join(work, name), 0o755)
            shutil.copy(src, os.path.join(data, "events.db"))
            took, migrated, conf = migrate(tern, data)
            confs[name] = conf
            size = sum(os.path.getsize(os.path.join(data, x)) for x in os.listdir(data)
                       if x.startswith("events.db"))
            print(f"{name}: first start {took:.2f} s{' (migrated)' if migrated else ''}, "
                  f"store {size / 1e6:.0f} MB", flush=True)
        print(f"CPU ms (user + system of the CLI process), best of {a.reps}, binaries "
              "alternating:")
        print(f"{'query':40s} " + " ".join(f"{n:>10s}" for n, _ in bins))
        for label, args in QUERIES:
            cpu, outs = {}, {}
            for _ in range(a.reps):
                for name, tern in bins:
                    t, out = timed([tern] + args + ["-c", confs[name]])
                    cpu[name] = min(cpu.get(name, 1e9), t)
                    outs[name] = out
            line = f"{label:40s}" + "".join(f" {cpu[n] * 1000:8.0f}ms" for n, _ in bins)
            same = len(set(outs.values())) == 1
            print(line + ("" if same else "   outputs differ:"), flush=True)
            if not same:
                vals = list(outs.values())
                for x, y in zip(vals[0].splitlines(), vals[1].splitlines()):
                    if x != y:
                        print(f"    {bins[0][0]}: {x}\n    {bins[1][0]}: {y}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
