"""
test_api.py — the HTTP sending API of `tern serve` (issue 12 items 1, 2, 4, 5): a listener
with profile "http", API keys made by `tern apikey`, the native JSON API (send, raw, batch,
status), Mailpit's POST /api/v1/send, /healthz and /readyz, the OpenAPI file.

What arrives is read back from the recipients' Maildirs and parsed with Python's email
package (an independent parser): bodies, attachments byte for byte, inline images by
Content-ID, Bcc absent from the header, our Received field, the DKIM signature (checked
with dkimpy). Every refusal is checked for its status, its stable JSON code, and that
nothing of the refused message was queued or delivered.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import base64
import email
import email.policy
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import Raw, free_port, make_tmpdir, start_on_free_port, tern_bin

REPO = Path(__file__).resolve().parents[2]
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
BLOB = bytes(range(256)) * 40 + b"\x00\r\n\r\x00end"


# --------------------------------------------------------------------------- helpers


class Api:
    def __init__(self, t, port):
        self.t = t
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method, path, body=None, token=None, ctype="application/json", raw=None,
             headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None and ctype:
            req.add_header("Content-Type", ctype)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, method, path, body=None, token=None, **kw):
        st, hd, data = self.call(method, path, body, token, **kw)
        return st, json.loads(data) if data else None


def create_key(t, name, *extra):
    r = t.cli("apikey", "create", name, *extra)
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    assert re.fullmatch(r"tern_[0-9a-f]{16}_[0-9a-f]{64}", tok), r.stdout
    return tok


def wait_ready_http(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "no /healthz answer"
        time.sleep(0.05)


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.default)


def queue_ids(t):
    return set(re.findall(r"\b[0-9A-Z]{16}\b", t.queue_list()))


@pytest.fixture
def api(tern_factory):
    port = free_port()
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}},
                     start=False)
    keys = {
        "send": create_key(t, "app", "--from-domain", "example.test"),
        "other": create_key(t, "other-app", "--from-domain", "example.test"),
        "read": create_key(t, "reader", "--scope", "read"),
        "admin": create_key(t, "ops", "--scope", "admin"),
    }
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    a.keys = keys
    return a


def send_ok(api, msg, key="send"):
    st, body = api.json("POST", "/api/v1/messages", msg, api.keys[key])
    assert st == 202, body
    assert re.fullmatch(r"[0-9A-Z]{16}", body["id"]) and body["status"] == "queued"
    return body


# --------------------------------------------------------------------------- tests


def test_health_and_ready_need_no_key(api):
    st, body = api.json("GET", "/healthz")
    assert st == 200 and body == {"status": "ok"}
    st, body = api.json("GET", "/readyz")
    assert st == 200 and body["status"] == "ready" and isinstance(body["queued"], int)


def test_native_send_delivers_every_part_intact(api):
    msg = {
        "from": "Shop <shop@example.test>",
        "to": ["Alice <alice@example.test>"],
        "bcc": [{"email": "bob@example.test"}],
        "reply_to": "help@example.test",
        "subject": "Your receipt — nº 42",
        "text": "Thanks for your order.\n",
        "html": '<p>Thanks! <img src="cid:logo@shop"></p>',
        "attachments": [{"filename": "receipt.bin", "content": base64.b64encode(BLOB).decode(),
                         "content_type": "application/octet-stream", "encoding": "base64"}],
        "inline": [{"filename": "logo.png", "content": base64.b64encode(PNG).decode(),
                    "content_type": "image/png", "content_id": "logo@shop"}],
        "headers": {"X-Campaign": "spring"},
        "tags": ["receipt"],
        "metadata": {"order": "42"},
        "priority": "high",
        "send_at": "2020-01-01T00:00:00Z",  # past: now
    }
    body = send_ok(api, msg)
    qid = body["id"]
    assert body["message_id"] == f"<{qid}@mx.example.test>"
    (_, data), = api.t.wait_mail("alice@example.test")
    m = parse(data)
    assert not m.defects
    assert m["Subject"] == "Your receipt — nº 42"
    assert m["From"].addresses[0].addr_spec == "shop@example.test"
    assert m["Reply-To"].addresses[0].addr_spec == "help@example.test"
    assert m["Message-ID"] == body["message_id"]
    assert m["X-Campaign"] == "spring" and m["X-Priority"].startswith("1") and m["Importance"] == "high"
    assert m["Bcc"] is None
    assert re.search(rf"with HTTP id {qid}\b", m["Received"]), m["Received"]
    assert m.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Thanks for your order.\n"
    assert "cid:logo@shop" in m.get_body(("html",)).get_content()
    files = {p.get_filename(): p for p in m.walk() if p.get_filename()}
    assert files["receipt.bin"].get_payload(decode=True) == BLOB
    assert files["logo.png"].get_payload(decode=True) == PNG
    assert files["logo.png"]["Content-ID"] == "<logo@shop>"
    # the Bcc recipient got the same message
    (_, data_b), = api.t.wait_mail("bob@example.test")
    assert parse(data_b)["Message-ID"] == body["message_id"]
    log = api.t.wait_log(rf"event=api method=POST path=/api/v1/messages status=202 key=app .*id={qid}")
    assert log
    api.t.wait_log(rf"event=api_metadata id={qid} metadata=")
    api.t.wait_log(rf"event=queued id={qid} source=api key=app .* tags=receipt$")


def test_raw_send(api):
    raw = (b"From: Raw Sender <raw@example.test>\nTo: alice@example.test\nSubject: raw one\n"
           b"Message-ID: <raw-1@example.test>\n\nbare LF body\nline two\n")
    st, body = api.json("POST", "/api/v1/messages/raw",
                        {"from": "bounce@example.test", "to": ["alice@example.test"],
                         "raw": base64.b64encode(raw).decode()}, api.keys["send"])
    assert st == 202, body
    (_, data), = api.t.wait_mail("alice@example.test")
    assert b"\r\n\r\nbare LF body\r\nline two\r\n" in data  # CRLF, as the spool stores mail
    m = parse(data)
    assert m["Message-ID"] == "<raw-1@example.test>" and m["Subject"] == "raw one"
    # the From field's domain is what the key's domains are checked against
    bad = raw.replace(b"raw@example.test", b"raw@elsewhere.test")
    st, body = api.json("POST", "/api/v1/messages/raw",
                        {"from": "bounce@example.test", "to": ["alice@example.test"],
                         "raw": base64.b64encode(bad).decode()}, api.keys["send"])
    assert st == 403 and body["error"]["code"] == "forbidden_from_domain"


def test_batch_refuses_the_bad_message_whole_and_queues_the_others(api):
    good = lambda n: {"from": "app@example.test", "to": "alice@example.test",
                      "subject": f"batch {n}", "text": f"message {n}\n"}
    bad = dict(good(1), to=["bob@example.test", "not an address"])
    st, body = api.json("POST", "/api/v1/messages/batch",
                        {"messages": [good(0), bad, good(2)]}, api.keys["send"])
    assert st == 200, body
    assert body["accepted"] == 2 and body["rejected"] == 1
    r = body["results"]
    assert [x["index"] for x in r] == [0, 1, 2]
    assert r[0]["status"] == "queued" and r[2]["status"] == "queued"
    assert r[1]["status"] == "rejected" and r[1]["http_status"] == 422
    assert r[1]["error"] == {"code": "invalid_address", "field": "to[1]",
                             "message": r[1]["error"]["message"]}
    got = api.t.wait_mail("alice@example.test", count=2)
    subjects = sorted(parse(d)["Subject"] for _, d in got)
    assert subjects == ["batch 0", "batch 2"]
    # bob was in the refused message only: nothing half-accepted
    time.sleep(0.5)
    assert api.t.mail_files("bob@example.test") == []
    # too many messages: refused before anything is looked at
    st, body = api.json("POST", "/api/v1/messages/batch",
                        {"messages": [good(9)] * 501}, api.keys["send"])
    assert st == 413 and body["error"]["code"] == "batch_too_large"


def test_status_per_recipient_and_per_key(api):
    # remote recipients wait in the queue (the test DNS is dead): deferred or queued
    body = send_ok(api, {"from": "app@example.test", "to": ["x@remote.test", "y@remote.test"],
                         "text": "hold on\n"})
    qid = body["id"]
    st, s = api.json("GET", f"/api/v1/messages/{qid}", token=api.keys["send"])
    assert st == 200, s
    assert s["id"] == qid and s["from"] == "app@example.test"
    assert [r["address"] for r in s["recipients"]] == ["x@remote.test", "y@remote.test"]
    assert all(r["state"] in ("queued", "deferred") for r in s["recipients"])
    # after a try, each recipient is deferred with the reason
    deadline = time.monotonic() + 20
    while True:
        st, s = api.json("GET", f"/api/v1/messages/{qid}", token=api.keys["send"])
        if all(r["state"] == "deferred" for r in s["recipients"]):
            break
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    assert all(r["reason"] and r["attempts"] >= 1 for r in s["recipients"]), s
    # another key does not see it; a read key of its own neither; admin does
    assert api.json("GET", f"/api/v1/messages/{qid}", token=api.keys["other"])[0] == 404
    assert api.json("GET", f"/api/v1/messages/{qid}", token=api.keys["read"])[0] == 404
    assert api.json("GET", f"/api/v1/messages/{qid}", token=api.keys["admin"])[0] == 200
    st, e = api.json("GET", "/api/v1/messages/AAAAAAAAAAAAAAAA", token=api.keys["admin"])
    assert st == 404 and e["error"]["code"] == "not_found"


class FakeMX:
    """aiosmtpd on 127.0.0.1: 550 for reject@..., 250 for the rest, messages kept."""

    def __init__(self):
        from aiosmtpd.controller import Controller  # python3-aiosmtpd, in scripts/install-deps
        self.messages = []
        outer = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address.startswith("reject@"):
                    return "550 5.1.1 no such user here"
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 ok"

            async def handle_DATA(self, server, session, envelope):
                outer.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                       envelope.original_content or envelope.content))
                return "250 2.0.0 taken"

        self.port = free_port()
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.ctl.start()

    def stop(self):
        self.ctl.stop()


def test_status_outlives_the_queue_delivered_and_bounced(tern_factory):
    """A fake MX takes one recipient and refuses another (550): once every recipient is
    delivered or bounced the message leaves the queue, and its status stays, with each
    recipient's final state and reply. The MX got the message with its attachment intact."""
    mx = FakeMX()
    try:
        port = free_port()
        t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
                          "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}"}}},
                         start=False)
        keys = {"send": create_key(t, "app"), "other": create_key(t, "other"),
                "admin": create_key(t, "ops", "--scope", "admin")}
        start_on_free_port(t)
        wait_ready_http(port)
        api = Api(t, port)
        api.keys = keys
        body = send_ok(api, {"from": "app@example.test",
                             "to": ["alice@example.test", "ok@remote.test", "reject@remote.test"],
                             "text": "two get it\n",
                             "attachments": [{"filename": "blob.bin",
                                              "content": base64.b64encode(BLOB).decode()}]})
        qid = body["id"]
        deadline = time.monotonic() + 30
        while True:
            st, s = api.json("GET", f"/api/v1/messages/{qid}", token=keys["send"])
            assert st == 200, s
            if s["finished"]:
                break
            assert time.monotonic() < deadline, s
            time.sleep(0.2)
        assert qid not in queue_ids(t)
        states = {r["address"]: (r["state"], r.get("reason", "")) for r in s["recipients"]}
        assert states["alice@example.test"][0] == "delivered"
        assert states["ok@remote.test"][0] == "delivered"
        assert states["reject@remote.test"][0] == "bounced"
        assert "550" in states["reject@remote.test"][1] and "5.1.1" in states["reject@remote.test"][1]
        # still per key
        assert api.json("GET", f"/api/v1/messages/{qid}", token=keys["other"])[0] == 404
        assert api.json("GET", f"/api/v1/messages/{qid}", token=keys["admin"])[0] == 200
        # what the MX got: the attachment byte for byte
        (frm, rcpts, data), = mx.messages
        assert frm == "app@example.test" and rcpts == ["ok@remote.test"]
        m = parse(data)
        assert [p.get_payload(decode=True) for p in m.walk() if p.get_filename()] == [BLOB]
    finally:
        mx.stop()


def test_no_2xx_before_the_commit_and_the_worker_never_waits(tern_factory, monkeypatch):
    """With the spool's committer stopped after its sync and before it answers
    (TERN_TEST_FAULT=commit_sync, debug builds), a send gets no answer, while the same
    listener keeps serving other requests (the API waits for the disk without blocking its
    worker); a client that hangs up meanwhile crashes nothing. After kill -9 and a restart
    the synced message is recovered and delivered."""
    monkeypatch.setenv("TERN_TEST_FAULT", "commit_sync")
    port = free_port()
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}},
                     start=False)
    tok = create_key(t, "app")
    start_on_free_port(t)
    wait_ready_http(port)
    if "event=fault_armed point=commit_sync" not in t.log():
        pytest.skip("fault points are compiled out of this (release) build")
    body = json.dumps({"from": "app@example.test", "to": "alice@example.test",
                       "subject": "synced, never answered", "text": "x\n"}).encode()
    req = (f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           f"Authorization: Bearer {tok}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(req)
    t.wait_log(r"event=fault_point point=commit_sync")
    s.settimeout(1.5)
    with pytest.raises(socket.timeout):
        s.recv(1)  # no 202: the commit has not answered
    st, h = Api(t, port).json("GET", "/healthz")
    assert st == 200 and h == {"status": "ok"}
    s.close()  # the client gives up
    time.sleep(0.3)
    st, _ = Api(t, port).json("GET", "/readyz")
    assert st == 200
    t.kill9()
    monkeypatch.delenv("TERN_TEST_FAULT")
    start_on_free_port(t)
    (_, data), = t.wait_mail("alice@example.test", timeout=20)
    assert parse(data)["Subject"] == "synced, never answered"


def test_concurrent_clients_all_get_their_message_queued(api):
    """16 clients sending at once (their puts share group commits): every one gets a 202
    with its own queue id, and every message arrives once."""
    results, errors = [], []

    def client(n):
        try:
            for k in range(4):
                st, body = api.json("POST", "/api/v1/messages",
                                    {"from": "app@example.test", "to": "alice@example.test",
                                     "subject": f"c{n}-{k}", "text": "x\n"}, api.keys["send"])
                results.append((st, body.get("id")))
        except Exception as e:  # reported below, with the others
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors and all(not th.is_alive() for th in threads), errors
    assert len(results) == 64 and all(st == 202 for st, _ in results), results
    assert len({i for _, i in results}) == 64
    got = api.t.wait_mail("alice@example.test", count=64, timeout=30)
    assert sorted(parse(d)["Subject"] for _, d in got) == sorted(
        f"c{n}-{k}" for n in range(16) for k in range(4))


@pytest.mark.parametrize("case", [
    # (what, status, code, field, request)
    ("malformed JSON", 400, "malformed_json", None, {"raw": b'{"from": "a@example.test",'}),
    ("not an object", 400, "invalid_request", None, {"raw": b"[1, 2]"}),
    ("no key", 401, "unauthorized", None, {"token": None}),
    ("a wrong key", 401, "unauthorized", None,
     {"token": "tern_0000000000000000_" + "0" * 64}),
    ("read scope", 403, "forbidden_scope", None, {"token": "read"}),
    ("another domain", 403, "forbidden_from_domain", "from",
     {"msg": {"from": "x@elsewhere.test"}}),
    ("too large", 413, "message_too_large", None, {"msg": {"text": "a" * 1200000}}),
    ("text/plain body", 415, "unsupported_media_type", None, {"ctype": "text/plain"}),
    ("no body", 422, "missing_body", "text", {"drop": ["text"]}),
    ("no recipients", 422, "missing_recipients", "to", {"drop": ["to"]}),
    ("bad address", 422, "invalid_address", "to[1]",
     {"msg": {"to": ["alice@example.test", "alice@@example.test"]}}),
    ("unknown encoding", 422, "unknown_encoding", "attachments[0].encoding",
     {"msg": {"attachments": [{"filename": "a.txt", "content": "aGk=", "encoding": "quoted-printable"}]}}),
    ("bad base64", 422, "invalid_base64", "attachments[0].content",
     {"msg": {"attachments": [{"filename": "a.txt", "content": "not base64!"}]}}),
    ("send_at too far ahead", 422, "send_at_too_far", "send_at",
     {"msg": {"send_at": "2999-01-01T00:00:00Z"}}),
    ("header injection", 422, "invalid_header", "headers.X-A",
     {"msg": {"headers": {"X-A": "v\r\nBcc: evil@remote.test"}}}),
    ("unknown key", 422, "unknown_field", "colour", {"msg": {"colour": "red"}}),
], ids=lambda c: c[0])
def test_each_error_class_is_json_with_a_stable_code(api, case):
    what, status, code, field, req = case
    msg = {"from": "app@example.test", "to": ["alice@example.test"], "subject": "refused",
           "text": "never delivered\n"}
    msg.update(req.get("msg", {}))
    for k in req.get("drop", []):
        del msg[k]
    token = req.get("token", "send")
    token = api.keys.get(token, token)
    st, hd, data = api.call("POST", "/api/v1/messages", msg, token, raw=req.get("raw"),
                            ctype=req.get("ctype", "application/json"))
    assert st == status, data
    assert hd["Content-Type"].startswith("application/json")
    err = json.loads(data)["error"]
    assert err["code"] == code and err["message"]
    assert err.get("field") == field
    if status == 401:
        assert hd["WWW-Authenticate"].startswith("Bearer")
    api.t.wait_log(rf"event=api method=POST path=/api/v1/messages status={status} ")
    time.sleep(0.3)
    assert api.t.mail_files("alice@example.test") == []
    assert "event=queued" not in api.t.log()


def test_mailpit_send_against_serve(api):
    """The request an application makes to `tern capture` works against `tern serve` with a
    key (Basic auth with the token as password, as Mailpit's clients send it)."""
    req = {"From": {"Email": "app@example.test", "Name": "App"},
           "To": [{"Email": "alice@example.test"}], "Subject": "from mailpit code",
           "Text": "same code in dev and prod\n",
           "Attachments": [{"Filename": "b.bin", "Content": base64.b64encode(BLOB).decode()}]}
    basic = base64.b64encode(b"anyone:" + api.keys["send"].encode()).decode()
    st, hd, data = api.call("POST", "/api/v1/send", req, headers={"Authorization": "Basic " + basic})
    assert st == 200, data
    qid = json.loads(data)["ID"]
    assert re.fullmatch(r"[0-9A-Z]{16}", qid)
    (_, msg), = api.t.wait_mail("alice@example.test")
    m = parse(msg)
    assert m["Subject"] == "from mailpit code"
    assert [p.get_payload(decode=True) for p in m.walk() if p.get_filename()] == [BLOB]
    # Mailpit's own error shape for its own route
    st, hd, data = api.call("POST", "/api/v1/send", {"From": {"Email": "bad"}},
                            headers={"Authorization": "Basic " + basic})
    assert st == 400 and "Error" in json.loads(data)
    # and no key, no send
    assert api.call("POST", "/api/v1/send", req)[0] == 401


def test_apikey_create_list_revoke(api):
    t = api.t
    tok = create_key(t, "temp", "--scope", "send", "--from-domain", "example.test",
                     "--from-domain", "example.org")
    out = t.cli("apikey", "list", check=True).stdout
    line = next(ln for ln in out.splitlines() if " temp " in ln)
    assert "send" in line and "live" in line and "example.test,example.org" in line
    assert tok not in out and tok.split("_")[2] not in out
    # the store holds neither the token nor its secret
    db = Path(t.data_dir) / "apikeys.db"
    raw = db.read_bytes()
    assert tok.split("_")[2].encode() not in raw
    rows = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
        "SELECT length(secret_sha256) FROM apikeys WHERE name = 'temp'").fetchall()
    assert rows == [(32,)]
    msg = {"from": "app@example.org", "to": "alice@example.test", "text": "subdomain rule\n"}
    assert api.json("POST", "/api/v1/messages", msg, tok)[0] == 202
    # a name is unique among live keys
    r = t.cli("apikey", "create", "temp")
    assert r.returncode == 1 and "already" in r.stderr
    r = t.cli("apikey", "revoke", "temp", check=True)
    # the running server sees it at once
    st, body = api.json("POST", "/api/v1/messages", msg, tok)
    assert st == 401 and body["error"]["code"] == "unauthorized"
    out = t.cli("apikey", "list", check=True).stdout
    assert "revoked" in next(ln for ln in out.splitlines() if " temp " in ln)
    assert t.cli("apikey", "revoke", "temp").returncode == 1
    assert t.cli("apikey", "create", "bad name!").returncode == 1
    assert t.cli("apikey", "create", "x", "--scope", "root").returncode == 2


def test_openapi_file_is_served_and_lists_every_route(api):
    st, hd, data = api.call("GET", "/api/openapi.json")
    assert st == 200 and hd["Content-Type"].startswith("application/json")
    doc = json.loads(data)
    assert doc == json.loads((REPO / "web" / "openapi.json").read_text())
    assert doc["openapi"].startswith("3.")
    # the routes of api.c's header comment are the routes of the document
    src = (REPO / "src" / "http" / "api.c").read_text().split("*/", 1)[0]
    served = set()
    for m in re.finditer(r"^ \*\s+(GET|POST|PUT|DELETE)\s+(/[^\s,]+)(?:, (/[^\s,]+))?", src,
                         re.M):
        for p in filter(None, m.group(2, 3)):
            served.add((m.group(1).lower(), p.replace("{queue_id}", "{id}")))
    documented = {(meth, p) for p, ops in doc["paths"].items() for meth in ops}
    assert served == documented, (served ^ documented)
    # and each one answers (not 404) with the method the document gives
    for meth, p in sorted(documented):
        path = p.replace("{id}", "AAAAAAAAAAAAAAAA")
        st, _, _ = api.call(meth.upper(), path, {} if meth == "post" else None,
                            api.keys["admin"])
        # (a tracking route answers 404 to a token that does not verify)
        assert st != 405 and (st != 404 or "{id}" in p or p.startswith("/t/")), (meth, p, st)
    # every error code the server can give is listed in the document
    codes = set(doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
                ["code"]["enum"])
    used = set()
    for f in ("api.c", "api_json.c"):
        used |= set(re.findall(r'"([a-z_]+)"', re.sub(r"//.*", "", (REPO / "src/http" / f).read_text()))) & {
            c for c in re.findall(r'api_error_set\([^;]*?"([a-z_]+)"', (REPO / "src/http" / f).read_text(), re.S)}
        used |= set(re.findall(r'fail\(c, \d+, "([a-z_]+)"', (REPO / "src/http" / f).read_text()))
    assert used and used <= codes, used - codes
    # the query parameters the event routes read are the ones documented, and the event
    # routes' status codes (events_get in api.c) are listed for each of them
    ev = (REPO / "src/http/events_routes.c").read_text()
    read = set(re.findall(r'\{"([a-z_]+)", buf->', ev)) | set(
        re.findall(r'param\(qs, len, "([a-z_]+)"', ev))
    doc_ev = {x["name"] for x in doc["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert read and read == doc_ev, read ^ doc_ev
    for p in ("/api/v1/events", "/api/v1/webhooks", "/api/v1/webhooks/{id}/attempts"):
        assert {"401", "403", "500", "503"} <= set(doc["paths"][p]["get"]["responses"]), p


def test_api_mail_is_dkim_signed(tern_factory):
    """API mail is signed for its From domain at receipt, as submission is (smtp/sign.h)."""
    dkim = pytest.importorskip("dkim")  # python3-dkim, in scripts/install-deps
    d = make_tmpdir("tern-api-dkim-")
    r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test", "s1", "--type", "rsa"],
                       cwd=d, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    key = d / "example.test.s1.key"
    port = free_port()
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
                      "dkim": {"keys": Raw(f'[{{ domain = "example.test"; selector = "s1"; '
                                           f'key_file = "{key}"; }}]')}}, start=False)
    tok = create_key(t, "app")
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    st, body = a.json("POST", "/api/v1/messages",
                      {"from": "a@example.test", "to": "alice@example.test", "subject": "signed",
                       "text": "signed over HTTP\n"}, tok)
    assert st == 202, body
    (_, data), = t.wait_mail("alice@example.test")
    assert b"d=example.test" in data
    recs = t.cli("dkim", "dns", check=True).stdout
    txt = "".join(re.findall(r'"([^"]*)"', recs))
    assert dkim.DKIM(data).verify(dnsfunc=lambda name, timeout=5: txt.encode())
    shutil.rmtree(d, ignore_errors=True)


def test_check_config_knows_the_http_profile(scratch):
    conf = scratch / "t.conf"
    conf.write_text(f'data_dir = "{scratch}/d";\nlisten {{ api {{ address = "127.0.0.1:2580"; '
                    f'profile = "http"; }} }}\n')
    r = subprocess.run([tern_bin(), "check-config", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr  # loopback: no warning
    assert re.search(r'profile = "http"', r.stdout)
    # what check-config prints reads back
    printed = scratch / "printed.conf"
    printed.write_text(r.stdout)
    r2 = subprocess.run([tern_bin(), "check-config", "-c", str(printed)], capture_output=True,
                        text=True, timeout=30)
    assert r2.returncode == 0, r2.stderr
    # off loopback the API's keys would cross the network in clear: said, not refused
    conf.write_text(f'data_dir = "{scratch}/d";\nlisten {{ api {{ address = "0.0.0.0:2580"; '
                    f'profile = "http"; }} }}\n')
    r = subprocess.run([tern_bin(), "check-config", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0
    assert re.search(r"^tern: warning: listen\.api\.address: the HTTP API has no TLS", r.stderr,
                     re.M), r.stderr
    conf.write_text(f'data_dir = "{scratch}/d";\nlisten {{ api {{ address = "127.0.0.1:2580"; '
                    f'profile = "http"; tls = "starttls"; }} }}\n')
    r = subprocess.run([tern_bin(), "check-config", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "http listener takes only address, profile and tls" in r.stderr
