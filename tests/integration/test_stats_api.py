"""
test_stats_api.py — statistics and the queue over the HTTP API of `tern serve` (issue 13 item 4,
the backend of the dashboard; item 7: "stats totals equal to the events").

A fake MX (aiosmtpd on 127.0.0.1) accepts some recipients, defers some (451 4.2.0) and rejects
some (550 5.1.1); mail goes through the API and through SMTP. Then:
  - GET /api/v1/stats: its totals, its groups by domain and its series equal the counts made
    here from GET /api/v1/events for the same window; group=provider names gmail.com "google";
    group=tag and group=key split as sent; the 5.1.1 rejections are the top bounce reason;
    latency counts every delivery; bad parameters get a 400 that says what is wrong;
  - the queue: a deferred message is listed with its reason and next attempt; hold keeps it
    from being tried, release and retry try it at once, retry delivers once the MX accepts;
    delete removes it (404 afterwards); the listing pages with a cursor;
  - only admin keys: another key gets 403;
  - `tern stats` prints the same numbers (as the API's JSON and as a table).

Never: a timed assertion; every wait is bounded.
"""

import collections
import json
import threading
import time

import pytest

from conftest import Raw, free_port, start_on_free_port
from test_api import Api, create_key, wait_ready_http  # noqa: F401  (helpers, no tests)

DEADLINE = 60.0
COUNTERS = ("sent", "delivered", "deferred", "bounced", "complained", "opened", "clicked",
            "suppressed")
TYPE_OF = {"sent": "queued"}


class FakeMX:
    """aiosmtpd on 127.0.0.1: 550 5.1.1 for reject*@, 451 4.2.0 for defer*@ (until accept_all),
    250 for the rest. Counts RCPT attempts per address."""

    def __init__(self):
        from aiosmtpd.controller import Controller  # python3-aiosmtpd, in scripts/install-deps
        self.lock = threading.Lock()
        self.tries = collections.Counter()
        self.delivered = []
        self.accept_all = False
        outer = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                with outer.lock:
                    outer.tries[address] += 1
                    accept_all = outer.accept_all
                if address.startswith("reject"):
                    return f"550 5.1.1 <{address}>: user unknown"
                if address.startswith("defer") and not accept_all:
                    return "451 4.2.0 mailbox busy, try again later"
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 ok"

            async def handle_DATA(self, server, session, envelope):
                with outer.lock:
                    outer.delivered += list(envelope.rcpt_tos)
                return "250 2.0.0 taken"

        self.port = free_port()
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.ctl.start()

    def attempts(self, addr):
        with self.lock:
            return self.tries[addr]

    def stop(self):
        self.ctl.stop()


@pytest.fixture
def world(tern_factory):
    mx = FakeMX()
    port = free_port()
    via = {"via": f"smtp://127.0.0.1:{mx.port}"}
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
                      "relay": {"networks": ["127.0.0.0/8"]},
                      # a deferred recipient waits: only the API's retry tries it again
                      "delivery": {"retry_base": Raw("1h"), "retry_max": Raw("2h")},
                      "routes": {"remote.test": via, "other.test": via, "gmail.com": via}},
                     start=False)
    keys = {"admin": create_key(t, "ops", "--scope", "admin"),
            "send": create_key(t, "app", "--from-domain", "example.test"),
            "read": create_key(t, "reader", "--scope", "read")}
    start_on_free_port(t)
    wait_ready_http(port)
    api = Api(t, port)
    api.keys = keys
    api.mx = mx
    yield api
    mx.stop()


def send(api, to, tags=None):
    msg = {"from": "alice@example.test", "to": to, "subject": "stats", "text": "hello\n"}
    if tags:
        msg["tags"] = tags
    st, body = api.json("POST", "/api/v1/messages", msg, api.keys["send"])
    assert st == 202, body
    return body["id"]


def smtp_send(api, rcpts):
    from conftest import dot_stuff, expect
    with api.t.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
        for r in rcpts:
            expect(c.cmd(f"RCPT TO:<{r}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(dot_stuff(b"From: alice@example.test\r\nSubject: smtp\r\n\r\nhi\r\n") + b".\r\n")
        qid = expect(c.reply(), 250).queue_id()
        c.cmd("QUIT")
    return qid


def all_events(api, since):
    """Every event from since on, paged with the cursor (an admin key sees them all)."""
    out, cursor = [], None
    for _ in range(1000):
        qs = f"?since={since}&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        st, page = api.json("GET", "/api/v1/events" + qs, token=api.keys["admin"])
        assert st == 200, page
        out += page["events"]
        cursor = page["next_cursor"]
        if not page["more"]:
            return out
    pytest.fail("events did not end")


def wait_for(pred, what, api):
    deadline = time.monotonic() + DEADLINE
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{api.t.log_tail(60)}")
        time.sleep(0.2)


def stats(api, qs, key="admin"):
    st, body = api.json("GET", "/api/v1/stats" + qs, token=api.keys[key])
    assert st == 200, body
    return body


def count(evs, key=lambda e: None):
    """{group: {counter: n}} from events, as the stats count them."""
    out = collections.defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for e in evs:
        for c in COUNTERS:
            if e["type"] == TYPE_OF.get(c, c):
                out[key(e)][c] += 1
    return out


def domain(e):
    r = e["recipient"]
    return r.split("@", 1)[1].lower() if "@" in r else "(none)"


def test_stats_equal_the_events(world):
    api = world
    a = send(api, ["ok1@remote.test", "ok2@other.test", "reject1@remote.test",
                   "defer1@remote.test", "bob@gmail.com"], tags=["news"])
    b = send(api, ["ok3@remote.test"], tags=["receipt", "news"])
    c = smtp_send(api, ["ok4@other.test", "reject2@other.test"])
    start = stats(api, "?since=24h")["since"]

    def settled():
        evs = all_events(api, start)
        seen = {(e["type"], e["recipient"]) for e in evs}
        want = {("delivered", r) for r in ("ok1@remote.test", "ok2@other.test", "bob@gmail.com",
                                             "ok3@remote.test", "ok4@other.test")}
        want |= {("bounced", "reject1@remote.test"), ("bounced", "reject2@other.test"),
                 ("deferred", "defer1@remote.test")}
        return want <= seen and evs
    wait_for(settled, "every outcome's event", api)
    # the DSNs for the two rejections go to local mailboxes: wait until the queue is empty
    # but for the deferred recipient, so no event comes between the two reads below
    wait_for(lambda: [m["queue_id"] for m in api.json(
        "GET", "/api/v1/queue?state=all", token=api.keys["admin"])[1]["messages"]] == [a],
        "only the deferred message left in the queue", api)

    s = stats(api, "?since=24h&group=domain")
    evs = all_events(api, s["since"])
    assert {a, b, c} <= {e["queue_id"] for e in evs}
    by_all = count(evs)[None]
    assert s["totals"] == by_all
    assert s["totals"]["sent"] >= 8 and s["totals"]["delivered"] >= 5
    assert s["totals"]["bounced"] == 2 and s["totals"]["deferred"] == 1
    # the series adds up to the totals, one point per hour from since to until
    assert s["bucket"] == "hour" and s["group"] == "domain"
    assert s["until"] - s["since"] == 86400
    assert [p["t"] for p in s["series"]] == list(
        range(s["since"] // 3600 * 3600, s["until"] + 1, 3600))
    assert {c: sum(p[c] for p in s["series"]) for c in COUNTERS} == s["totals"]
    # groups by recipient domain: exactly the events' split
    groups = {g.pop("name"): g for g in s["groups"]}
    assert groups == dict(count(evs, domain))
    assert groups["remote.test"] == dict(by_all, sent=4, delivered=2, bounced=1, deferred=1)
    assert groups["other.test"]["sent"] == 3 and groups["other.test"]["bounced"] == 1
    # providers: gmail.com is google's; a domain of no provider stays itself
    p = {g["name"]: g for g in stats(api, "?since=24h&group=provider")["groups"]}
    assert p["google"]["sent"] == 1 and p["google"]["delivered"] == 1 and "gmail.com" not in p
    assert p["remote.test"]["sent"] == 4
    # tags: the first message's five recipients and the second's one carry "news"
    t = {g["name"]: g for g in stats(api, "?since=24h&group=tag")["groups"]}
    assert t["news"]["sent"] == 6 and t["receipt"]["sent"] == 1
    assert t["(none)"]["sent"] == s["totals"]["sent"] - 6  # SMTP mail and the DSNs
    k = {g["name"]: g for g in stats(api, "?since=7d&group=key")["groups"]}
    assert k["app"]["sent"] == 6 and k["app"]["bounced"] == 1
    # top bounce reasons: both rejections, with the MX's words
    (r,) = [r for r in s["top_bounce_reasons"] if r["status"] == "5.1.1"]
    assert r["count"] == 2 and "user unknown" in r["reason"]
    # latency: one value per delivery of a message whose receipt is recorded (the DSNs tern
    # made itself have no received or queued event: their two deliveries have no latency)
    lat = s["latency_ms"]
    received = {e["queue_id"] for e in evs if e["type"] in ("received", "queued")}
    assert lat["count"] == sum(e["type"] == "delivered" and e["queue_id"] in received
                               for e in evs) == 5
    assert s["totals"]["delivered"] == 7
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert "Apple Mail Privacy Protection" in s["opens_note"]
    # `tern stats` reads the same store: the same numbers, as JSON and as a table
    r = api.t.cli("stats", "--since", "24h", "--group", "domain", "--json", check=True)
    cli = json.loads(r.stdout)
    assert cli["totals"] == s["totals"] and cli["group"] == "domain"
    assert {g.pop("name"): g for g in cli["groups"]} == groups
    assert cli["top_bounce_reasons"] == s["top_bounce_reasons"]
    r = api.t.cli("stats", "--group", "provider", check=True)
    rows = {ln.split()[0]: [int(x) for x in ln.split()[1:]] for ln in r.stdout.splitlines()
            if ln.split() and ln.split()[0] in ("total", "google")}
    assert rows["total"] == [s["totals"][c] for c in COUNTERS]
    assert rows["google"] == [p["google"][c] for c in COUNTERS]
    assert "5.1.1" in r.stdout and "Apple Mail Privacy Protection" in r.stdout
    r = api.t.cli("stats", "--group", "country")
    assert r.returncode == 2 and "group: none, domain, key, tag or provider" in r.stderr
    # a day's bucket, and the same totals
    d = stats(api, "?since=7d&bucket=day")
    assert d["bucket"] == "day" and d["groups"] == []
    assert all(x["t"] % 86400 == 0 for x in d["series"]) and len(d["series"]) in (7, 8)
    assert d["totals"] == count(all_events(api, d["since"]))[None]


def test_stats_parameters_and_scope(world):
    api = world
    for qs, word in (("?since=5y", "since"), ("?since=0h", "since"), ("?since=101d", "since"),
                     ("?bucket=week", "bucket"), ("?group=country", "group"),
                     ("?group=", "group")):
        st, e = api.json("GET", "/api/v1/stats" + qs, token=api.keys["admin"])
        assert st == 400 and e["error"]["code"] == "invalid_request", (qs, e)
        assert e["error"]["message"].startswith(word + ":"), (qs, e)
    for path in ("/api/v1/stats", "/api/v1/queue"):
        for key in ("send", "read"):
            st, e = api.json("GET", path, token=api.keys[key])
            assert st == 403 and e["error"]["code"] == "forbidden_scope", (path, key, e)
        st, e = api.json("GET", path)
        assert st == 401 and e["error"]["code"] == "unauthorized"
    st, e = api.json("POST", "/api/v1/queue/AAAAAAAAAAAAAAAA/retry", {}, token=api.keys["send"])
    assert st == 403 and e["error"]["code"] == "forbidden_scope"
    st, e = api.json("POST", "/api/v1/stats", {}, token=api.keys["admin"])
    assert st == 405 and e["error"]["code"] == "method_not_allowed"
    # an empty store: zeros, and a whole series
    s = stats(api, "?since=30d")
    assert s["bucket"] == "day" and s["totals"] == dict.fromkeys(COUNTERS, 0)
    assert s["latency_ms"] == {"count": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    assert s["top_bounce_reasons"] == [] and len(s["series"]) in (30, 31)


def queue(api, qs=""):
    st, body = api.json("GET", "/api/v1/queue" + qs, token=api.keys["admin"])
    assert st == 200, body
    return body


def act(api, method, path, status=200):
    st, body = api.json(method, "/api/v1/queue/" + path, {} if method == "POST" else None,
                        token=api.keys["admin"])
    assert st == status, (method, path, body)
    return body


def test_queue_list_hold_release_retry_delete(world):
    api, mx = world, world.mx
    a = send(api, ["defer2@remote.test"])
    b = send(api, ["defer3@remote.test"])

    def deferred_both():
        ids = {m["queue_id"]: m for m in queue(api, "?state=deferred")["messages"]}
        return ids if {a, b} <= set(ids) else None
    msgs = wait_for(deferred_both, "both messages deferred", api)
    m = msgs[a]
    assert m["from"] == "alice@example.test" and m["size"] > 0 and m["held"] is False
    assert m["received"] <= time.time() + 1
    (r,) = m["recipients"]
    assert r["rcpt"] == "defer2@remote.test" and r["state"] == "deferred" and r["attempts"] == 1
    assert "451" in r["reason"] and "4.2.0" in r["reason"]
    assert r["next_attempt"] > m["received"]
    # paging: one a page, in queue id order
    p1 = queue(api, "?limit=1")
    assert len(p1["messages"]) == 1 and p1["next_cursor"] == p1["messages"][0]["queue_id"]
    p2 = queue(api, f"?limit=1&cursor={p1['next_cursor']}")
    assert p2["next_cursor"] is None
    assert sorted([p1["messages"][0]["queue_id"], p2["messages"][0]["queue_id"]]) == sorted([a, b])
    # hold: the message is held, a retry tries nothing
    assert act(api, "POST", f"{a}/hold") == {"queue_id": a, "result": "ok", "recipients": 1}
    api.t.wait_log(rf"event=queue_hold id={a} source=api key=ops rcpts=1")
    held = queue(api, "?state=held")["messages"]
    assert [h["queue_id"] for h in held] == [a] and held[0]["held"] is True
    assert held[0]["recipients"][0]["state"] == "held"
    assert a not in {x["queue_id"] for x in queue(api, "?state=deferred")["messages"]}
    assert act(api, "POST", f"{a}/retry")["recipients"] == 0
    # ... while b's retry is tried at once (and deferred again): a was not
    assert act(api, "POST", f"{b}/retry")["recipients"] == 1
    wait_for(lambda: mx.attempts("defer3@remote.test") == 2, "b retried", api)
    assert mx.attempts("defer2@remote.test") == 1
    # release: tried at once, deferred again
    assert act(api, "POST", f"{a}/release")["recipients"] == 1
    wait_for(lambda: mx.attempts("defer2@remote.test") == 2, "a tried on release", api)
    # retry once the MX accepts: delivered, gone from the queue
    with mx.lock:
        mx.accept_all = True
    wait_for(lambda: a in {x["queue_id"] for x in queue(api, "?state=deferred")["messages"]},
             "a deferred again", api)
    assert act(api, "POST", f"{a}/retry")["recipients"] == 1
    wait_for(lambda: "defer2@remote.test" in mx.delivered, "a delivered", api)
    wait_for(lambda: a not in {x["queue_id"] for x in queue(api)["messages"]}, "a gone", api)
    # delete: gone, and 404 afterwards
    assert act(api, "DELETE", b) == {"queue_id": b, "result": "ok", "recipients": 1}
    api.t.wait_log(rf"event=queue_delete id={b} source=api key=ops rcpts=1")
    assert b not in {x["queue_id"] for x in queue(api)["messages"]}
    for method, path in (("DELETE", b), ("POST", f"{b}/retry"), ("POST", f"{b}/hold"),
                         ("POST", "nonsense/retry")):
        e = act(api, method, path, 404)
        assert e["error"]["code"] == "not_found", e
    assert "defer3@remote.test" not in mx.delivered
    # bad requests
    assert act(api, "POST", f"{a}/explode", 404)["error"]["code"] == "not_found"
    assert act(api, "GET", f"{a}/retry", 405)["error"]["code"] == "method_not_allowed"
    for qs in ("?state=bogus", "?limit=0", "?limit=1001", "?cursor=x"):
        st, e = api.json("GET", "/api/v1/queue" + qs, token=api.keys["admin"])
        assert st == 400 and e["error"]["code"] == "invalid_request", (qs, e)
