"""
test_events.py — events and signed webhooks (issue 13 items 1 and 2).

Events: a message to three recipients whose fake MXes accept, reject (550) and defer (451)
gives received, queued, delivered (with the MX's reply), bounced (5.1.1, hard, the
diagnostic) and deferred (next attempt) in the store, read with `tern events tail`.

Webhooks: a receiver (http.server) that fails its first attempts, or is down across a tern
restart, checks each signature with its own HMAC-SHA256 code (the Standard Webhooks
algorithm) and gets every event exactly once, in order per message; an endpoint failing for
the whole retry window is disabled and resumes after `tern webhook enable`; an endpoint's
event filter holds.

Never: a timed assertion; every wait is bounded.
"""

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Raw, free_port
from remote_harness import (  # noqa: F401  (fixtures)
    REJECT_RCPT_TEXT, check_alive, mx, remote_tern, submit, world)

DEADLINE = 60.0
FAST_RETRY = {"webhooks": {"retry_base": Raw("1s"), "retry_max": Raw("1s")}}


def body_for(qid_hint, to):
    return (f"From: alice@example.test\r\nTo: {', '.join(to)}\r\n"
            f"Subject: events {qid_hint}\r\nMessage-ID: <{qid_hint}@example.test>\r\n\r\n"
            "hello\r\n").encode()


def events(t, *args):
    r = t.cli("events", "tail", "--json", "--limit", "100000", *args, check=True)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def wait_for(pred, what, t=None, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while True:
        if t is not None:
            check_alive(t)
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}"
                        + (("\n" + t.log_tail(60)) if t is not None else ""))
        time.sleep(0.2)


def add_webhook(t, url, *extra):
    r = t.cli("webhook", "add", url, *extra, check=True)
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["secret"].startswith("whsec_")
    return int(lines["id"]), lines["secret"]


# --------------------------------------------------------------------------
# The receiver.


class Receiver:
    """Standard Webhooks receiver: verifies every request's signature with the spec's
    algorithm (its own code), answers 500 to the first `fail_first` requests, records
    the events it accepted (2xx) in arrival order."""

    def __init__(self, secret, port=None, fail_first=0):
        self.key = base64.b64decode(secret[len("whsec_"):])
        self.port = port or free_port()
        self.fail_first = fail_first
        self.requests = 0
        self.bad = []          # requests whose signature or headers were wrong
        self.accepted = []     # (webhook-id, body dict), in order
        self.lock = threading.Lock()
        self.server = None

    def verify(self, headers, body):
        mid = headers.get("webhook-id")
        ts = headers.get("webhook-timestamp")
        sig = headers.get("webhook-signature")
        if not (mid and ts and sig and ts.isdigit()):
            return False
        signed = f"{mid}.{ts}.".encode() + body
        want = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        # "v1,SIG" possibly several, space-separated (the spec allows rotation)
        return any(s.startswith("v1,") and hmac.compare_digest(s[3:], want)
                   for s in sig.split(" "))

    def start(self):
        rcv = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with rcv.lock:
                    rcv.requests += 1
                    fail = rcv.requests <= rcv.fail_first
                    if not rcv.verify(self.headers, body):
                        rcv.bad.append((dict(self.headers), body))
                    elif not fail:
                        rcv.accepted.append((self.headers["webhook-id"], json.loads(body)))
                self.send_response(500 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hook"

    def snapshot(self):
        with self.lock:
            return list(self.accepted), list(self.bad)


def check_delivery(rcv, stored, qids):
    """Every stored event of these messages reached rcv exactly once, in the store's order
    per message, each validly signed."""
    got, bad = rcv.snapshot()
    assert not bad, f"{len(bad)} request(s) with a bad signature: {bad[:2]}"
    ids = [i for i, _ in got]
    assert len(ids) == len(set(ids)), f"an event arrived twice: {ids}"
    for i, b in got:
        assert b["data"]["id"] == i  # webhook-id is the event's id
        assert b["type"] == "message." + b["data"]["type"]
    for q in qids:
        want = [(e["id"], e["type"]) for e in stored if e["queue_id"] == q]
        have = [(b["data"]["id"], b["data"]["type"]) for _, b in got
                if b["data"]["queue_id"] == q]
        assert have == want, f"message {q}: got {have}, stored {want}"


def all_arrived(rcv, stored, qids):
    got, _ = rcv.snapshot()
    have = {b["data"]["id"] for _, b in got}
    return all(e["id"] in have for e in stored if e["queue_id"] in qids)


# --------------------------------------------------------------------------
# Events.


def test_each_outcome_is_an_event(remote_tern, mx):
    t = remote_tern(extra=FAST_RETRY, max_lifetime=Raw("1h"))
    rcpts = ["a@ok.test", "b@reject.test", "c@lifetime.test"]
    qid = submit(t, rcpts, body_for("outcomes", rcpts))

    def done():
        ev = events(t, "--recipient", "c@lifetime.test")
        types = {e["type"] for e in events(t) if e["queue_id"] == qid}
        return {"delivered", "bounced", "deferred"} <= types and ev
    wait_for(done, "delivered, bounced and deferred events", t)
    ev = [e for e in events(t) if e["queue_id"] == qid]
    by = {}
    for e in ev:
        by.setdefault((e["type"], e["recipient"]), e)
    rec = by[("received", "")]
    assert rec["sender"] == "alice@example.test"
    assert rec["message_id"] == "<outcomes@example.test>"
    for r in rcpts:
        assert ("queued", r) in by, ev
    # received and queued come before any outcome
    assert [e["type"] for e in ev[:4]] == ["received", "queued", "queued", "queued"]
    d = by[("delivered", "a@ok.test")]
    assert d["reply"].startswith("250"), d
    assert d["message_id"] == "<outcomes@example.test>"
    b = by[("bounced", "b@reject.test")]
    assert b["status"] == "5.1.1" and b["bounce"] == "hard"
    assert "zorglub-7781" in b["reply"]
    f = by[("deferred", "c@lifetime.test")]
    assert f["status"].startswith("4.") and "blorpt-5512" in f["reply"]
    assert f["next_attempt"] >= f["time"]
    # the filters of `tern events tail`
    assert {e["type"] for e in events(t, "--type", "bounced")} == {"bounced"}
    assert all(e["recipient"] == "a@ok.test" for e in events(t, "--recipient", "A@ok.test"))
    assert events(t, "--since", "2999-01-01T00:00:00Z") == []
    # the plain text form
    out = t.cli("events", "tail", "--type", "bounced", check=True).stdout
    assert qid in out and "5.1.1" in out and "b@reject.test" in out
    # usage errors
    assert t.cli("events", "tail", "--type", "nope").returncode == 2
    assert t.cli("events", "tail", "--since", "yesterday").returncode == 2


# --------------------------------------------------------------------------
# Webhooks.


def test_webhook_retries_until_every_event_arrives_signed_once_in_order(remote_tern, mx):
    t = remote_tern(extra=FAST_RETRY)
    # The endpoint is added before its receiver knows the secret: pick the port first.
    port = free_port()
    ep, secret = add_webhook(t, f"http://127.0.0.1:{port}/hook")
    bport = free_port()
    bep, bsecret = add_webhook(t, f"http://127.0.0.1:{bport}/b", "--events", "bounced")
    rcv = Receiver(secret, port=port, fail_first=3).start()
    brcv = Receiver(bsecret, port=bport).start()
    try:
        # A rejected address per message: the first bounce puts its address on the
        # suppression list, and a later message to it would be suppressed, not bounced.
        qids = [submit(t, ["x@ok.test", f"y{i}@reject.test"], body_for(f"m{i}", ["x@ok.test"]))
                for i in range(3)]

        def stored():
            ev = [e for e in events(t) if e["queue_id"] in qids]
            n = sum(1 for e in ev if e["type"] in ("delivered", "bounced"))
            return ev if n == 6 else None
        ev = wait_for(stored, "the outcomes of three messages", t)
        wait_for(lambda: all_arrived(rcv, ev, qids), "every event at the receiver", t)
        check_delivery(rcv, ev, qids)
        assert rcv.requests > len(ev)  # the first three failed and were retried
        # the bounced-only endpoint: exactly the bounces
        bounced = [e for e in ev if e["type"] == "bounced"]
        wait_for(lambda: all_arrived(brcv, bounced, qids), "the bounces at the filtered endpoint", t)
        got, bad = brcv.snapshot()
        assert not bad
        assert sorted(b["data"]["id"] for _, b in got) == sorted(e["id"] for e in bounced)
        # attempts are visible: the failures and the successes
        att = t.cli("webhook", "attempts", str(ep), "--limit", "1000", check=True).stdout
        assert att.count("http=500") == 3, att
        assert "http=204" in att
        lst = t.cli("webhook", "list", check=True).stdout
        assert f"{ep} {rcv.url} events=all" in lst and "status=active" in lst
    finally:
        rcv.stop()
        brcv.stop()


def test_receiver_down_across_a_restart_gets_everything_after(remote_tern, mx):
    t = remote_tern(extra=FAST_RETRY)
    port = free_port()
    ep, secret = add_webhook(t, f"http://127.0.0.1:{port}/hook", "--events",
                             "received,queued,delivered")
    rcv = Receiver(secret, port=port)  # not started: connection refused
    qids = [submit(t, ["r@ok.test"], body_for(f"down{i}", ["r@ok.test"])) for i in range(2)]
    wait_for(lambda: t.cli("webhook", "attempts", str(ep), check=True).stdout.count("http=0") >= 2,
             "failed attempts while the receiver is down", t)
    ev = wait_for(lambda: (lambda e: e if sum(x["type"] == "delivered" for x in e) == 2 else None)(
        [e for e in events(t) if e["queue_id"] in qids]), "both deliveries", t)
    assert t.stop() == 0  # SIGTERM with events pending in the outbox
    qids.append(None)
    t.start()
    qid3 = submit(t, ["r@ok.test"], body_for("after", ["r@ok.test"]))
    qids[-1] = qid3
    rcv.start()
    try:
        def stored():
            e = [x for x in events(t) if x["queue_id"] in qids]
            return e if sum(x["type"] == "delivered" for x in e) == 3 else None
        ev = wait_for(stored, "the third delivery", t)
        ev = [e for e in ev if e["type"] in ("received", "queued", "delivered")]
        wait_for(lambda: all_arrived(rcv, ev, qids), "every event after the restart", t)
        check_delivery(rcv, ev, qids)
        got, _ = rcv.snapshot()
        assert len(got) == len(ev) == 9
    finally:
        rcv.stop()


def test_endpoint_disabled_after_the_retry_window_and_enabled_again(remote_tern, mx):
    t = remote_tern(extra={"webhooks": {"retry_base": Raw("1s"), "retry_max": Raw("1s"),
                                        "retry_window": Raw("2s")}})
    port = free_port()
    ep, secret = add_webhook(t, f"http://127.0.0.1:{port}/hook", "--events", "delivered")
    qid = submit(t, ["d@ok.test"], body_for("disabled", ["d@ok.test"]))
    wait_for(lambda: "disabled: failing since" in t.cli("webhook", "list", check=True).stdout,
             "the endpoint disabled", t)
    assert "pending=1" in t.cli("webhook", "list", check=True).stdout
    rcv = Receiver(secret, port=port).start()
    try:
        assert t.cli("webhook", "enable", str(ep), check=True).returncode == 0
        ev = [e for e in events(t) if e["queue_id"] == qid and e["type"] == "delivered"]
        assert len(ev) == 1
        wait_for(lambda: all_arrived(rcv, ev, [qid]), "the event after enable", t)
        check_delivery(rcv, ev, [qid])
        assert "status=active" in t.cli("webhook", "list", check=True).stdout
    finally:
        rcv.stop()
    # management errors
    assert t.cli("webhook", "enable", "999").returncode == 1
    assert t.cli("webhook", "add", "ftp://example.test/").returncode == 2
    assert t.cli("webhook", "add", "http://127.0.0.1:1/", "--events", "bogus").returncode == 2
    assert t.cli("webhook", "del", str(ep)).returncode == 0
    assert str(ep) + " " not in t.cli("webhook", "list", check=True).stdout


def test_local_submission_is_received_and_queued(remote_tern, mx):
    t = remote_tern()
    import subprocess
    msg = body_for("viasendmail", ["s@ok.test"])
    r = subprocess.run([t.bin, "sendmail", "-C", str(t.config_path), "s@ok.test"], input=msg,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr

    def got():
        ev = [e for e in events(t) if e["message_id"] == "<viasendmail@example.test>"]
        return ev if {"received", "queued", "delivered"} <= {e["type"] for e in ev} else None
    ev = wait_for(got, "the events of a sendmail submission", t)
    assert [e["type"] for e in ev[:2]] == ["received", "queued"]
    assert ev[1]["recipient"] == "s@ok.test"
    assert ev[0]["key"]  # the submitting user's login


def test_a_receiver_back_gets_the_backlog_without_waiting_out_the_backoff(remote_tern, mx):
    # An hour's backoff: only the receiver's recovery can make these due again soon.
    t = remote_tern(extra={"webhooks": {"retry_base": Raw("1h"), "retry_max": Raw("1h")}})
    port = free_port()
    ep, secret = add_webhook(t, f"http://127.0.0.1:{port}/hook", "--events", "delivered")
    first = submit(t, ["e@ok.test"], body_for("backlog1", ["e@ok.test"]))
    wait_for(lambda: "http=0" in t.cli("webhook", "attempts", str(ep), check=True).stdout,
             "a failed attempt while the receiver is down", t)
    rcv = Receiver(secret, port=port).start()
    try:
        second = submit(t, ["e@ok.test"], body_for("backlog2", ["e@ok.test"]))

        def stored():
            e = [x for x in events(t, "--type", "delivered") if x["queue_id"] in (first, second)]
            return e if len(e) == 2 else None
        ev = wait_for(stored, "both deliveries", t)
        wait_for(lambda: all_arrived(rcv, ev, [first, second]), "the backlog", t)
        check_delivery(rcv, ev, [first, second])
    finally:
        rcv.stop()


def test_a_suppressed_recipient_is_an_event(remote_tern, mx):
    t = remote_tern()
    t.cli("suppress", "add", "sup@ok.test", check=True)
    qid = submit(t, ["sup@ok.test"], body_for("suppressed", ["sup@ok.test"]))

    def got():
        return [e for e in events(t, "--type", "suppressed") if e["queue_id"] == qid]
    ev = wait_for(got, "a suppressed event", t)
    assert ev[0]["recipient"] == "sup@ok.test"
    assert all("sup@ok.test" not in r.rcpt_tos for r in mx["ok"].messages)


def test_events_enabled_false_records_nothing_and_mail_still_flows(remote_tern, mx):
    # events { enabled = false; }: for a plain MX that wants no event writer beside the
    # mail path. Mail is delivered as always; no store is opened, nothing is recorded.
    t = remote_tern(extra={"events": {"enabled": False}})
    qid = submit(t, ["off@ok.test"], body_for("eventsoff", ["off@ok.test"]))
    mx["ok"].wait_messages(1, tern=t)
    assert qid
    assert not (t.data_dir / "events.db").exists()
    shown = t.cli("check-config", check=True).stdout
    assert "enabled = false;" in shown.split("events {", 1)[1]
