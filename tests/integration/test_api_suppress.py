"""
test_api_suppress.py — the suppression list through the HTTP API of `tern serve` (issue 12
items 2 and 8): API mail that asks for one-click unsubscribe carries List-Unsubscribe and
List-Unsubscribe-Post (RFC 8058) inside its DKIM signature; a POST of
List-Unsubscribe=One-Click to the link puts the recipient on the sending domain's list, and
the next API send to it is reported `suppressed` and never reaches the MX; a tampered token
suppresses nothing; the suppression API (PUT, GET, list, DELETE) with an admin key, and the
domain rule for keys without scope admin.

The world: tern relays mail for remote.test to a fake MX (aiosmtpd) on 127.0.0.1 through a
route; the API listens on 127.0.0.1 and is its own unsubscribe_url.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import email
import email.policy
import json
import re
import shutil
import subprocess
import time
import urllib.parse

import pytest

from conftest import Raw, free_port, make_tmpdir, start_on_free_port, tern_bin
from test_api import Api, create_key, wait_ready_http
from test_suppress import FakeMX  # one fake MX for the suppression tests

pytest.importorskip("aiosmtpd")  # python3-aiosmtpd, in scripts/install-deps

DEADLINE = 20.0
SENDER = "news@example.test"


@pytest.fixture
def mx():
    m = FakeMX()
    yield m
    m.stop()


@pytest.fixture
def api(tern_factory, mx):
    port = free_port()
    t = tern_factory({
        "listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
        "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}", "tls": "none"}},
        "delivery": {"retry_base": 1, "retry_max": 2},
        "suppression": {"unsubscribe_url": f"http://127.0.0.1:{port}"},
    }, start=False)
    keys = {
        "send": create_key(t, "app", "--from-domain", "example.test"),
        "elsewhere": create_key(t, "elsewhere", "--from-domain", "other.test"),
        "admin": create_key(t, "ops", "--scope", "admin"),
    }
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    a.keys = keys
    return a


def entries(t):
    """`tern suppress list --json`: {scope ("" global), address, reason, ...} each."""
    return json.loads(t.cli("suppress", "list", "--json", check=True).stdout)


def send(api, to, **extra):
    msg = {"from": f"News <{SENDER}>", "to": to, "subject": "hello", "text": "hi\n", **extra}
    return api.json("POST", "/api/v1/messages", msg, api.keys["send"])


def unsub_url(mx_msg):
    m = email.message_from_bytes(mx_msg["content"], policy=email.policy.default)
    lu = m.get_all("List-Unsubscribe")
    assert lu and len(lu) == 1, mx_msg["content"][:2000]
    assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = re.findall(r"<([^>]+)>", str(lu[0]))
    return m, links


def post_form(api, url, body=b"List-Unsubscribe=One-Click"):
    path = urllib.parse.urlsplit(url).path
    return api.call("POST", path, raw=body, ctype="application/x-www-form-urlencoded")


def wait_event(t, etype, rcpt, timeout=20.0):
    """The first event of etype about rcpt in the event store (`tern events tail`)."""
    deadline = time.monotonic() + timeout
    while True:
        r = t.cli("events", "tail", "--json", "--type", etype, check=True)
        got = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        got = [e for e in got if e["recipient"] == rcpt]
        if got:
            return got[0]
        assert time.monotonic() < deadline, f"no {etype} event for {rcpt}"
        time.sleep(0.1)


def wait_state(api, qid, addr, state):
    deadline = time.monotonic() + DEADLINE
    while True:
        st, body = api.json("GET", f"/api/v1/messages/{qid}", token=api.keys["send"])
        got = [r["state"] for r in (body or {}).get("recipients", []) if r["address"] == addr]
        if st == 200 and got == [state]:
            return body
        if api.t.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{qid}: {addr} never {state}: {st} {body}\n{api.t.log_tail()}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- tests


def test_one_click_unsubscribe_end_to_end(api, mx):
    rcpt = "reader@remote.test"
    st, body = send(api, rcpt, list_unsubscribe={"mailto": "unsub@example.test"})
    assert st == 202, body
    got = mx.wait_message(rcpt, api.t)
    m, links = unsub_url(got)
    https = [u for u in links if u.startswith(f"http://127.0.0.1:{api.port}/unsubscribe/")]
    assert len(https) == 1 and "mailto:unsub@example.test" in links, links
    # the fields come before the message's own, after our Received field
    head = got["content"].split(b"\r\n\r\n", 1)[0].decode()
    assert head.index("List-Unsubscribe:") < head.index("From:")
    # a GET (a link scanner) never unsubscribes
    st, _, _ = api.call("GET", urllib.parse.urlsplit(https[0]).path)
    assert st == 405 and entries(api.t) == []
    # the one-click POST puts the address on the sending domain's list
    st, _, data = post_form(api, https[0])
    assert st == 200, data
    assert json.loads(data) == {"unsubscribed": rcpt, "domain": "example.test"}
    e = [x for x in entries(api.t) if x["address"] == rcpt]
    assert len(e) == 1 and e[0]["scope"] == "example.test" and e[0]["reason"] == "unsubscribe"
    # the unsubscribe is an event (webhooks see it)
    ev = wait_event(api.t, "unsubscribed", rcpt)
    assert ev["metadata"] == {"domain": "example.test"} and "one-click" in ev["reply"], ev
    # the next API send to it is reported suppressed and never offered to the MX
    offered = mx.offered(rcpt)
    st, body = send(api, rcpt)
    assert st == 202, body
    wait_state(api, body["id"], rcpt, "suppressed")
    assert mx.offered(rcpt) == offered


def test_fields_are_inside_the_dkim_signature(tern_factory, mx):
    """The fields are added before signing: the signature covers them and verifies."""
    dkim = pytest.importorskip("dkim")  # python3-dkim, in scripts/install-deps
    d = make_tmpdir("tern-api-unsub-dkim-")
    r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test", "s1", "--type", "rsa"],
                       cwd=d, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    port = free_port()
    t = tern_factory({
        "listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
        "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}", "tls": "none"}},
        "suppression": {"unsubscribe_url": "https://mail.example.test"},
        "dkim": {"keys": Raw(f'[{{ domain = "example.test"; selector = "s1"; '
                             f'key_file = "{d / "example.test.s1.key"}"; }}]')},
    }, start=False)
    tok = create_key(t, "app")
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    rcpt = "signed@remote.test"
    st, body = a.json("POST", "/api/v1/messages",
                      {"from": SENDER, "to": rcpt, "subject": "s", "text": "signed\n",
                       "list_unsubscribe": True}, tok)
    assert st == 202, body
    got = mx.wait_message(rcpt, t)
    m, links = unsub_url(got)
    assert len(links) == 1 and links[0].startswith("https://mail.example.test/unsubscribe/")
    h = re.search(r"\bh=([^;]+)", str(m["DKIM-Signature"])).group(1).lower().replace(" ", "")
    assert "list-unsubscribe" in h.split(":") and "list-unsubscribe-post" in h.split(":"), h
    recs = t.cli("dkim", "dns", check=True).stdout
    txt = "".join(re.findall(r'"([^"]*)"', recs))
    assert dkim.DKIM(got["content"]).verify(dnsfunc=lambda name, timeout=5: txt.encode())
    # and a changed link breaks it
    bad = got["content"].replace(b"/unsubscribe/", b"/unsubscribX/", 1)
    assert not dkim.DKIM(bad).verify(dnsfunc=lambda name, timeout=5: txt.encode())
    shutil.rmtree(d, ignore_errors=True)


def test_tampered_token_suppresses_nothing(api, mx):
    rcpt = "victim@remote.test"
    st, body = send(api, rcpt, list_unsubscribe=True)
    assert st == 202, body
    _, links = unsub_url(mx.wait_message(rcpt, api.t))
    path = urllib.parse.urlsplit(links[0]).path
    tok = path.rsplit("/", 1)[1]
    # another recipient in the signed part, the same MAC: must not verify
    payload, mac = tok.split(".")
    bad = [path[:-len(tok)] + payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac,
           path[:-len(tok)] + payload + "." + ("0" * len(mac)),
           path + "x"]
    for p in bad:
        st, _, data = api.call("POST", p, raw=b"List-Unsubscribe=One-Click",
                               ctype="application/x-www-form-urlencoded")
        assert st == 404, (p, st, data)
        assert json.loads(data)["error"] == "unknown_token"
    assert entries(api.t) == []
    # a POST without the One-Click field is refused as well
    st, _, _ = post_form(api, links[0], body=b"List-Unsubscribe=No")
    assert st == 400 and entries(api.t) == []


def test_list_unsubscribe_needs_exactly_one_recipient(api, mx):
    ids_before = api.t.queue_list()
    st, body = send(api, ["a@remote.test", "b@remote.test"], list_unsubscribe=True)
    assert st == 422 and body["error"]["code"] == "list_unsubscribe_one_recipient", body
    st, body = send(api, "a@remote.test", cc="c@remote.test", list_unsubscribe=True)
    assert st == 422 and body["error"]["code"] == "list_unsubscribe_one_recipient", body
    for bad in ({"mailto": "no at sign"}, {"mailto": "a@b>, <http://x"}, "yes", {"x": 1}):
        st, body = send(api, "a@remote.test", list_unsubscribe=bad)
        assert st == 422 and body["error"]["field"] == "list_unsubscribe", (bad, body)
    st, body = send(api, "a@remote.test", list_unsubscribe=True,
                    headers={"List-Unsubscribe": "<https://evil.test/>"})
    assert st == 422, body
    assert api.t.queue_list() == ids_before
    assert mx.offered("a@remote.test") == 0


def test_list_unsubscribe_without_unsubscribe_url_is_refused(tern_factory):
    port = free_port()
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}},
                     start=False)
    tok = create_key(t, "app")
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    st, body = a.json("POST", "/api/v1/messages",
                      {"from": SENDER, "to": "x@remote.test", "text": "x\n",
                       "list_unsubscribe": True}, tok)
    assert st == 422 and body["error"]["code"] == "list_unsubscribe_unavailable", body


def test_suppression_api_with_an_admin_key(api, mx):
    adm = api.keys["admin"]
    addr = "Gone@Remote.test"
    q = urllib.parse.quote(addr, safe="@")
    st, body = api.json("PUT", f"/api/v1/suppressions/{q}",
                        {"domain": "example.test", "reason": "complaint", "detail": "by hand"}, adm)
    assert st == 200, body
    assert body["address"] == "Gone@remote.test" and body["domain"] == "example.test"
    assert body["reason"] == "complaint" and body["detail"] == "by hand"
    st, body = api.json("PUT", "/api/v1/suppressions/all@remote.test", {}, adm)  # global
    assert st == 200 and body["domain"] == "" and body["reason"] == "manual", body
    assert {(e["address"], e["scope"]) for e in entries(api.t)} == {
        ("Gone@remote.test", "example.test"), ("all@remote.test", "")}
    st, body = api.json("GET", f"/api/v1/suppressions/{q}?domain=example.test", token=adm)
    assert st == 200 and body["reason"] == "complaint", body
    st, body = api.json("GET", f"/api/v1/suppressions/{q}", token=adm)  # not on the global list
    assert st == 404 and body["error"]["code"] == "not_suppressed", body
    st, body = api.json("GET", "/api/v1/suppressions", token=adm)
    assert st == 200 and len(body["suppressions"]) == 2, body
    st, body = api.json("GET", "/api/v1/suppressions?domain=", token=adm)
    assert st == 200 and [e["address"] for e in body["suppressions"]] == ["all@remote.test"]
    # what the API put there stops delivery like any entry
    # (the domain part is matched without case, the local part as it is)
    st, sent = send(api, "Gone@REMOTE.test")
    assert st == 202, sent
    wait_state(api, sent["id"], "Gone@REMOTE.test", "suppressed")
    assert mx.offered("Gone@REMOTE.test") == 0
    st, _, data = api.call("DELETE", f"/api/v1/suppressions/{q}?domain=example.test", token=adm)
    assert st == 204 and data == b""
    st, body = api.json("DELETE", f"/api/v1/suppressions/{q}?domain=example.test", token=adm)
    assert st == 404, body
    assert [e["address"] for e in entries(api.t)] == ["all@remote.test"]
    st, body = api.json("GET", "/api/v1/suppressions/not-an-address", token=adm)
    assert st == 400 and body["error"]["code"] == "bad_address", body
    st, body = api.json("GET", "/api/v1/suppressions/x@remote.test")
    assert st == 401, body


def test_a_key_manages_only_its_own_domains_lists(api, mx):
    own, other = api.keys["send"], api.keys["elsewhere"]
    # another domain's key: 403, and nothing written
    for meth, path, body in (
            ("PUT", "/api/v1/suppressions/x@remote.test?domain=example.test", {}),
            ("PUT", "/api/v1/suppressions/x@remote.test", {"domain": "example.test"}),
            ("PUT", "/api/v1/suppressions/x@remote.test?domain=other.test",
             {"domain": "example.test"}),
            ("GET", "/api/v1/suppressions?domain=example.test", None),
            ("GET", "/api/v1/suppressions", None),
            ("PUT", "/api/v1/suppressions/x@remote.test", {}),  # the global list
            ("DELETE", "/api/v1/suppressions/x@remote.test?domain=example.test", None)):
        st, b = api.json(meth, path, body, other)
        assert st == 403 and b["error"]["code"] == "forbidden_domain", (meth, path, st, b)
    assert entries(api.t) == []
    # a duplicated domain parameter cannot smuggle another list past the check
    st, b = api.json("PUT", "/api/v1/suppressions/x@remote.test?domain=other.test"
                     "&domain=example.test", {}, other)
    assert st == 403, b
    assert entries(api.t) == []
    # its own domain's list is fine
    st, b = api.json("PUT", "/api/v1/suppressions/x@remote.test?domain=other.test", {}, other)
    assert st == 200 and b["domain"] == "other.test", b
    st, b = api.json("GET", "/api/v1/suppressions?domain=other.test", token=other)
    assert st == 200 and [e["address"] for e in b["suppressions"]] == ["x@remote.test"]
    st, b = api.json("GET", "/api/v1/suppressions?domain=other.test", token=own)
    assert st == 403, b


def test_clients_that_leave_before_the_answer_do_no_harm(api, mx):
    """Requests run on the pool and answer from its completion: a client gone meanwhile is
    logged and its request freed (the sanitizers check the rest at teardown)."""
    import socket
    adm = api.keys["admin"]
    reqs = []
    body = json.dumps({"domain": "example.test"}).encode()
    reqs.append(b"PUT /api/v1/suppressions/early@remote.test HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + adm.encode() + b"\r\nContent-Type: application/json"
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    msg = json.dumps({"from": SENDER, "to": "early@remote.test", "text": "x\n"}).encode()
    reqs.append(b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                api.keys["send"].encode() + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(msg)).encode() + b"\r\n\r\n" + msg)
    reqs.append(b"POST /unsubscribe/abc.def HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n"
                b"List-Unsubscribe=One-Click")
    for _ in range(10):
        for r in reqs:
            s = socket.create_connection(("127.0.0.1", api.port), timeout=10)
            s.sendall(r)
            s.close()
    st, body = api.json("GET", "/api/v1/suppressions?domain=example.test", token=adm)
    assert st == 200, body
    assert api.t.proc.poll() is None
    st, body = api.json("GET", "/healthz")
    assert st == 200
