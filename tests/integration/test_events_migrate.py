"""
test_events_migrate.py — an events.db written by an older tern (an index on time, a full index
by queue id, no events_span) is taken over by `tern serve`:
  - its events writer migrates it at start (logged event=events_migrated): the index on time
    is gone, the index by queue id holds receipts only, every old event has its minute's span;
  - GET /api/v1/stats counts the old events exactly (sent, delivered, bounced, the bounce
    reason, the latency of each delivery from its receipt; events two days old stay out of a
    24-hour window), and GET /api/v1/events with since returns exactly the old events from
    that time on;
  - a message relayed afterwards adds its events, and the counts grow by exactly them.

Never: a timed assertion; every wait is bounded.
"""

import os
import pwd
import sqlite3
import time

from conftest import IS_ROOT, free_port, start_on_free_port
from test_api import Api, create_key, wait_ready_http  # noqa: F401  (helpers, no tests)
from test_stats_api import FakeMX, smtp_send, stats, wait_for

# The schema of events.c before events_span (main at 80b75e4).
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
INSERT INTO meta(k, v) VALUES('node', 'old000000000');
"""


def old_store(path, now):
    """30 messages in the last hour (25 delivered 7 s after receipt, 5 bounced 5.1.1) and
    4 messages two days ago; returns the time of the 11th message."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(OLD_SCHEMA)
    rows = []
    for m in range(34):
        t = now - 3600 + m * 100 if m < 30 else now - 2 * 86400 + m
        qid = f"OLD{m:013d}"
        rcpt = f"user{m}@remote.test"
        rows.append((t, "received", qid, "", ""))
        rows.append((t, "queued", qid, rcpt, ""))
        if m % 6 == 5:
            rows.append((t + 7, "bounced", qid, rcpt, "5.1.1"))
        else:
            rows.append((t + 7, "delivered", qid, rcpt, ""))
    db.executemany("INSERT INTO events(time, type, queue_id, message_id, sender, recipient, "
                   "key, tags, metadata, reply, status, relay, next_attempt, hard) "
                   "VALUES(?, ?, ?, '<m@old.test>', 'alice@example.test', ?, '', '', '', "
                   "'550 5.1.1 no such user', ?, 'mx.remote.test', 0, 0)", rows)
    db.close()
    return now - 3600 + 10 * 100


def test_old_events_store_is_migrated_and_counted(tern_factory):
    mx = FakeMX()
    port = free_port()
    try:
        t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}",
                                             "profile": "http"}},
                          "relay": {"networks": ["127.0.0.0/8"]},
                          "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}"}}},
                         start=False)
        admin = create_key(t, "ops", "--scope", "admin")
        path = t.data_dir / "events.db"
        cut = old_store(str(path), int(time.time()))
        if IS_ROOT:  # the serving child runs as nobody
            pw = pwd.getpwnam("nobody")
            for p in t.data_dir.glob("events.db*"):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        start_on_free_port(t)
        wait_ready_http(port)
        api = Api(t, port)
        api.keys = {"admin": admin}
        assert "event=events_migrated" in t.log_tail(200)

        s = stats(api, "?since=24h")
        assert s["totals"]["sent"] == 30
        assert s["totals"]["delivered"] == 25
        assert s["totals"]["bounced"] == 5
        top = s["top_bounce_reasons"][0]
        assert top["status"] == "5.1.1" and top["count"] == 5
        assert s["latency_ms"]["count"] == 25 and s["latency_ms"]["p50"] == 7000
        # since: exactly the old events from the 11th message on (20 messages, 3 each)
        st, page = api.json("GET", f"/api/v1/events?since={cut}&limit=1000",
                            token=admin)
        assert st == 200, page
        assert len(page["events"]) == 60
        assert {e["queue_id"] for e in page["events"]} == {f"OLD{m:013d}"
                                                           for m in range(10, 30)}

        db = sqlite3.connect(str(path))
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type='index'")}
        assert "events_time" not in names and "events_qid" not in names
        assert "events_receipt" in names
        assert db.execute("SELECT count(*) FROM events_span").fetchone()[0] >= 30
        db.close()

        # new mail: its events are counted on top of the old ones
        qid = smtp_send(api, ["fresh@remote.test"])

        def delivered():
            st, page = api.json("GET", f"/api/v1/events?queue_id={qid}", token=admin)
            return st == 200 and any(e["type"] == "delivered" for e in page["events"])
        wait_for(delivered, "the new message's delivery", api)
        s = stats(api, "?since=24h")
        assert s["totals"]["sent"] == 31
        assert s["totals"]["delivered"] == 26
        assert s["totals"]["bounced"] == 5
        assert s["latency_ms"]["count"] == 26
    finally:
        mx.stop()
