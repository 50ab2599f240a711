"""Prometheus /metrics (issue 13 item 5): `metrics { address; token; }` serves the text
exposition on its own listener. A scrape parses with prometheus_client's parser; the
counters move by exactly what the mail did (local delivery, relay to a fake MX, a bounce
from it, a deferral on dead DNS, a rejected recipient, a STARTTLS session and a failed
handshake); histograms are well-formed; the token is required when set; only GET /metrics
answers; the sample Grafana dashboard names only metrics a scrape has."""
import json
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, Client, expect, free_port, make_message, make_tmpdir

TOKEN = "t0k3n-for-tests"
DEADLINE = 20.0


class SinkMX:
    """Accepts every recipient except bad@relay.test (550 at RCPT)."""

    def __init__(self):
        self.received = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("bad@"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 OK"


@pytest.fixture
def fake_mx():
    handler = SinkMX()
    port = free_port()
    c = Controller(handler, hostname="127.0.0.1", port=port)
    c.start()
    yield port, handler
    c.stop()


@pytest.fixture(scope="module")
def certs():
    d = make_tmpdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True)
    return {"tls": {"cert_file": str(cert), "key_file": str(key)}}


def get(port, path="/metrics", token=None, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


class Scrape:
    def __init__(self, text):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for f in self.families.values():
            for s in f.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def v(self, name, **labels):
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def names(self):
        """Every sample name, and the sample names of declared families that have no
        series yet (a labelled counter before its first event)."""
        names = {name for name, _ in self.samples}
        for f in self.families.values():
            names.add(f.name + "_total" if f.type == "counter" else f.name)
        return names


def scrape(port, token=TOKEN):
    status, headers, text = get(port, token=token)
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(text)


def wait_for(port, pred, what):
    deadline = time.monotonic() + DEADLINE
    while True:
        s = scrape(port)
        if pred(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{s.text}")
        time.sleep(0.1)


def check_histogram(s, name):
    fam = s.families[name]
    assert fam.type == "histogram"
    buckets = [(float(x.labels["le"]), x.value) for x in fam.samples if x.name == name + "_bucket"]
    assert buckets and buckets[-1][0] == float("inf"), "the last bucket is +Inf"
    les = [le for le, _ in buckets]
    assert les == sorted(les), "buckets in ascending le order"
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), "bucket counts are cumulative"
    assert s.v(name + "_count") == counts[-1], "_count equals the +Inf bucket"
    assert s.v(name + "_sum") >= 0


@pytest.fixture
def metrics_tern(tern_factory, fake_mx, certs):
    mx_port, handler = fake_mx
    mport = free_port()
    t = tern_factory({
        **certs,
        "metrics": {"address": f"127.0.0.1:{mport}", "token": TOKEN},
        "routes": {"relay.test": {"via": f"smtp://127.0.0.1:{mx_port}", "tls": "none"}},
    })
    return t, mport, handler


def test_counters_move_by_what_the_mail_did(metrics_tern):
    t, mport, handler = metrics_tern
    # the harness's readiness probe sends QUIT and leaves: its 221 counts once it is gone
    s0 = wait_for(mport, lambda s: s.v("tern_sessions_active", profile="mx") == 0
                  and s.v("tern_connections_total", listener="mx", profile="mx") == 1, "the probe")
    assert s0.v("tern_build_info", version=s0.families["tern_build_info"].samples[0].labels["version"]) == 1
    for fam in ("tern_connections", "tern_messages_received", "tern_messages_delivered",
                "tern_messages_deferred", "tern_messages_bounced", "tern_queue_messages",
                "tern_spool_bytes", "tern_spool_commit_duration_seconds",
                "tern_dns_query_duration_seconds", "tern_tls_handshakes", "tern_smtp_replies",
                "tern_auth_failures", "tern_webhook_backlog", "tern_destination_throttled",
                "tern_sessions_active", "tern_queued_memory_bytes", "tern_bodies_reread",
                "process_resident_memory_bytes", "process_open_fds",
                "process_cpu_seconds", "process_start_time_seconds"):
        assert fam in s0.families, fam
    assert s0.families["tern_messages_delivered"].type == "counter"
    assert s0.families["tern_queue_messages"].type == "gauge"
    assert s0.v("process_resident_memory_bytes") > 0
    assert s0.v("process_start_time_seconds") > 1.5e9

    # One session from a relay network (127.0.0.2): a local recipient, two on the
    # routed domain (one the MX refuses: its failure notice, for MAIL FROM:<>, goes to
    # the local postmaster), one on a domain whose DNS is dead (deferred), and one
    # unknown local user. The harness's readiness probe was one connection already.
    with Client(t.port, source="127.0.0.2") as c:
        c.send_message("sender@example.org", ["alice@example.test", "ok@relay.test"],
                       make_message("one"))
        expect(c.cmd("RSET"), 250)
        c.send_message("", ["bad@relay.test"], make_message("two"), helo=False)
        expect(c.cmd("RSET"), 250)
        dead_id = c.send_message("", ["x@dead.example.net"], make_message("three"), helo=False)
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
        expect(c.cmd("RCPT TO:<nobody@example.test>"), 550)
        expect(c.cmd("QUIT"), 221)

    s1 = wait_for(mport, lambda s: s.v("tern_messages_delivered_total", transport="remote") >= 1
                  and s.v("tern_messages_bounced_total") >= 1
                  and s.v("tern_messages_deferred_total") >= 1
                  and s.v("tern_messages_delivered_total", transport="local") >= 2
                  and s.v("tern_sessions_active", profile="mx") == 0,
                  "delivery, bounce, deferral and the session's end")
    assert s1.v("tern_messages_received_total", profile="mx") == 3
    # alice's copy and the failure notice to postmaster (an alias of alice)
    assert s1.v("tern_messages_delivered_total", transport="local") == 2
    assert s1.v("tern_messages_delivered_total", transport="remote") == 1
    assert s1.v("tern_messages_bounced_total") == 1
    assert s1.v("tern_messages_deferred_total") == 1

    def delta(name, **labels):
        return s1.v(name, **labels) - s0.v(name, **labels)

    assert delta("tern_connections_total", listener="mx", profile="mx") == 1
    # 220, EHLO, 3 x (MAIL, RCPT..., DATA end), 2 x RSET, MAIL, QUIT: all 2xx but the 550
    assert delta("tern_smtp_replies_total", code_class="5xx") == 1
    assert delta("tern_smtp_replies_total", code_class="2xx") == 1 + 1 + (1 + 2 + 1) + 2 * (1 + 1 + 1) + 2 + 1 + 1
    assert delta("tern_smtp_replies_total", code_class="4xx") == 0
    # the dead-DNS message stays, deferred; the others are done
    assert s1.v("tern_queue_messages", state="deferred") == 1
    assert s1.v("tern_queue_messages", state="active") == 0
    assert s1.v("tern_queue_messages", state="hold") == 0
    assert s1.v("tern_spool_bytes") > 0
    assert s1.v("tern_spool_commit_duration_seconds_count") >= 1
    assert s1.v("tern_dns_query_duration_seconds_count") >= 1
    for h in ("tern_spool_commit_duration_seconds", "tern_dns_query_duration_seconds"):
        check_histogram(s1, h)
    assert sorted(r for _, rs in handler.received for r in rs) == ["ok@relay.test"]

    # held by the operator: the gauge moves from deferred to hold
    t.cli("queue", "hold", dead_id, check=True)
    s2 = wait_for(mport, lambda s: s.v("tern_queue_messages", state="hold") == 1, "the hold")
    assert s2.v("tern_queue_messages", state="deferred") == 0
    assert s2.v("tern_queue_messages", state="active") == 0


def test_tls_handshakes_counted(metrics_tern):
    t, mport, _ = metrics_tern
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed test certificate
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as s:
        s.ehlo("client.example.org")
        s.starttls(context=ctx)
        s.ehlo("client.example.org")
        s.sendmail("sender@example.org", ["alice@example.test"], make_message("tls"))
    # A client that asks for STARTTLS, then sends bytes that are no TLS record.
    with socket.create_connection(("127.0.0.1", t.port), timeout=10) as raw:
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO client.example.org\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        raw.sendall(b"\x16\x03\x01\x00\x10" + b"this is not tls!" * 4)
        try:
            raw.recv(4096)
        except OSError:
            pass
    s = wait_for(mport, lambda s: s.v("tern_tls_handshakes_total", direction="inbound",
                                      result="failed") >= 1
                 and s.v("tern_messages_delivered_total", transport="local") >= 1,
                 "the failed handshake and the delivery")
    assert s.v("tern_tls_handshakes_total", direction="inbound", result="ok") == 1
    assert s.v("tern_tls_handshakes_total", direction="inbound", result="failed") == 1
    assert s.v("tern_messages_received_total", profile="mx") == 1
    assert s.v("tern_connections_total", listener="mx", profile="mx") == 3  # and the probe


def test_outbound_tls_handshake_counted(tern_factory, certs):
    """Relay through a route with tls = "require" to a fake MX that offers STARTTLS."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["tls"]["cert_file"], certs["tls"]["key_file"])
    handler = SinkMX()
    mx_port = free_port()
    c = Controller(handler, hostname="127.0.0.1", port=mx_port, tls_context=ctx,
                   require_starttls=True)
    c.start()
    try:
        mport = free_port()
        t = tern_factory({
            "metrics": {"address": f"127.0.0.1:{mport}"},
            "routes": {"tls.test": {"via": f"smtp://127.0.0.1:{mx_port}", "tls": "require"}},
        })
        with Client(t.port, source="127.0.0.2") as cl:
            cl.send_message("sender@example.org", ["ok@tls.test"], make_message("tls-out"))
            expect(cl.cmd("QUIT"), 221)
        s = wait_for(mport, lambda s: s.v("tern_messages_delivered_total", transport="remote") >= 1,
                     "the delivery over TLS")
        assert s.v("tern_tls_handshakes_total", direction="outbound", result="ok") == 1
        assert s.v("tern_tls_handshakes_total", direction="outbound", result="failed") == 0
        assert [r for _, rs in handler.received for r in rs] == ["ok@tls.test"]
    finally:
        c.stop()


def test_token_and_paths(metrics_tern):
    t, mport, _ = metrics_tern
    status, headers, _ = get(mport)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert get(mport, token="wrong")[0] == 401
    assert get(mport, token=TOKEN + "x")[0] == 401
    assert get(mport, token=TOKEN[:-1])[0] == 401
    assert get(mport, token=TOKEN)[0] == 200
    assert get(mport, path="/", token=TOKEN)[0] == 404
    assert get(mport, path="/metrics/x", token=TOKEN)[0] == 404
    assert get(mport, method="POST", token=TOKEN)[0] == 405
    # the token never appears in what check-config prints
    out = t.cli("check-config", check=True).stdout
    assert "metrics {" in out and TOKEN not in out


def test_no_token_needed_when_none_set(tern_factory):
    mport = free_port()
    t = tern_factory({"metrics": {"address": f"127.0.0.1:{mport}"}})
    s0 = wait_for(mport, lambda s: s.v("tern_sessions_active", profile="mx") == 0
                  and s.v("tern_connections_total", listener="mx", profile="mx") == 1, "the probe")
    with Client(t.port) as c:
        expect(c.cmd("QUIT"), 221)
    s = wait_for(mport, lambda s: s.v("tern_sessions_active", profile="mx") == 0
                 and s.v("tern_connections_total", listener="mx", profile="mx")
                 == s0.v("tern_connections_total", listener="mx", profile="mx") + 1,
                 "the session")
    assert (s.v("tern_smtp_replies_total", code_class="2xx")
            - s0.v("tern_smtp_replies_total", code_class="2xx")) == 2  # 220 and 221


@pytest.mark.parametrize("section, words", [
    ({"address": "127.0.0.1"}, "metrics.address"),
    ({"address": "localhost:9125"}, "metrics.address"),
    ({"address": "127.0.0.1:9125", "token": "has space"}, "metrics.token"),
    ({"address": "127.0.0.1:9125", "bogus": 1}, "unknown key 'bogus' in section metrics"),
])
def test_bad_metrics_config_refused(tern_factory, section, words):
    t = tern_factory({"metrics": section}, users=(), start=False)
    r = t.cli("check-config")
    assert r.returncode != 0
    assert words in r.stderr + r.stdout


def test_grafana_dashboard_names_only_scraped_metrics(tern_factory):
    dash = json.loads((REPO / "contrib" / "grafana" / "tern-dashboard.json").read_text())
    exprs = []

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("expr", "query") and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(dash)
    assert len(exprs) >= 8, "the dashboard has panels with queries"
    mport = free_port()
    t = tern_factory({"metrics": {"address": f"127.0.0.1:{mport}"}})
    names = scrape(mport, token=None).names()
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\b((?:tern|process)_[a-z_]+)\b", e))
    assert used, exprs
    missing = sorted(n for n in used if n not in names)
    assert not missing, f"the dashboard names metrics tern does not expose: {missing}"
    for needed in ("tern_queue_messages", "tern_spool_commit_duration_seconds_bucket",
                   "tern_messages_delivered_total"):
        assert needed in used


def test_webhook_backlog_and_throttled_destination(tern_factory, fake_mx):
    """tern_webhook_backlog follows the outbox: events for an endpoint that does not answer
    wait there, and go when the endpoint is deleted; tern_destination_throttled_total counts
    a message shaping holds back, labelled with the configured destination."""
    mx_port, handler = fake_mx
    mport, dead = free_port(), free_port()  # nothing listens on dead
    t = tern_factory({
        "metrics": {"address": f"127.0.0.1:{mport}", "token": TOKEN},
        "routes": {"relay.test": {"via": f"smtp://127.0.0.1:{mx_port}", "tls": "none"}},
        "shaping": {"relay.test": {"per_minute": 1}},
        "webhooks": {"retry_base": 3600},
    })
    assert scrape(mport).v("tern_webhook_backlog") == 0
    r = t.cli("webhook", "add", f"http://127.0.0.1:{dead}/hook", check=True)
    wid = dict(line.split(" ", 1) for line in r.stdout.splitlines())["id"]
    with Client(t.port, source="127.0.0.2") as c:
        c.send_message("sender@example.org", ["a@relay.test"], make_message("one"))
        expect(c.cmd("RSET"), 250)
        c.send_message("sender@example.org", ["b@relay.test"], make_message("two"))
    # received and queued of each message at least: in the outbox, not posted
    wait_for(mport, lambda s: s.v("tern_webhook_backlog") >= 4, "the webhook backlog")
    # one a minute to relay.test: the second message is held back and counted
    s = wait_for(mport, lambda s: s.v("tern_destination_throttled_total",
                                      destination="relay.test") >= 1, "a throttled delivery")
    assert s.v("tern_destination_throttled_total", destination="other") == 0
    deadline = time.monotonic() + DEADLINE
    while not handler.received:
        assert time.monotonic() < deadline, "the first message never reached the MX"
        time.sleep(0.1)
    assert len(handler.received) == 1  # the second waits for the next minute
    t.cli("webhook", "del", wid, check=True)
    wait_for(mport, lambda s: s.v("tern_webhook_backlog") == 0, "the backlog gone with its endpoint")
