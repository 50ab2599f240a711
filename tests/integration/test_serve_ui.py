"""
test_serve_ui.py — the web UI of `tern serve` (issue 13 item 4) and its login, on the API's
http listener: admins made by `tern user add NAME --ui-admin`, POST /ui/login giving a session
cookie, every /ui/ page but the login page's behind it, the session standing for an admin key
on /api/v1/ (with its CSRF token on anything but GET), /api/v1/keys, and the UI itself in
headless Chromium (tests/e2e/serve_ui.spec.mjs, screenshots in tests/e2e/artifacts/serve-ui-*),
with the archive on (its page: search, legal hold and release, the raw copy's bytes).

The HTTP-level checks use urllib (no browser): they assert what an attacker could try — a wrong
password, a page without a session, a POST without the CSRF token, a cookie after logout or
after a restart of tern.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did not
start.
"""

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port, start_on_free_port, tern_bin
from test_api import Api, create_key, wait_ready_http

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "tests" / "e2e"
ADMIN, ADMIN_PW = "admin@example.test", "correct horse battery"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def http(port, method, path, body=None, headers=None, ctype="application/json"):
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None and ctype:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with OPENER.open(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def login(port, user=ADMIN, password=ADMIN_PW):
    st, hd, body = http(port, "POST", "/ui/login", {"user": user, "password": password})
    if st != 200:
        return st, None, None
    cookie = hd["Set-Cookie"]
    m = re.match(r"tern_ui=([0-9a-f]{64});", cookie)
    assert m, cookie
    return st, f"tern_ui={m.group(1)}", json.loads(body)["csrf"]


def start_serve(tern_factory, extra=None):
    port = free_port()
    cfg = {"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}}
    cfg.update(extra or {})
    t = tern_factory(cfg, start=False)
    t.cli("user", "add", ADMIN, "--ui-admin", "--password-stdin", input=ADMIN_PW + "\n",
          check=True)
    start_on_free_port(t)
    wait_ready_http(port)
    return t, port


# --------------------------------------------------------------------------- HTTP level


def test_login_gates_every_ui_page_and_the_session_is_an_admin_key(tern_factory):
    t, port = start_serve(tern_factory)
    # the admin is in DATA/ui-admins, listed by the same command
    r = t.cli("user", "list", "--ui-admin", check=True)
    assert r.stdout.split() == [ADMIN]
    assert (t.data_dir / "ui-admins").read_text().startswith(ADMIN + ":{SHA512-CRYPT}$6$")

    # without a session: pages redirect to the login page, other files and the API say 401
    for page in ("/ui", "/ui/", "/ui/index.html", "/ui/anything"):
        st, hd, _ = http(port, "GET", page)
        assert st == 302 and hd["Location"] == "/ui/login", page
    for f in ("/ui/app.js", "/ui/vendor/uPlot.iife.min.js", "/ui/session"):
        assert http(port, "GET", f)[0] == 401, f
    assert http(port, "GET", "/api/v1/keys")[0] == 401
    # another site's cookie on the same host is no session: the usual answer for no key
    st, _, body = http(port, "GET", "/api/v1/keys", headers={"Cookie": "other=1"})
    assert st == 401 and "API key is required" in json.loads(body)["error"]["message"]
    # the login page and its own files are public, with a strict CSP
    st, hd, body = http(port, "GET", "/ui/login")
    assert st == 200 and b'id="login-form"' in body
    assert "script-src 'self'" in hd["Content-Security-Policy"]
    assert hd["X-Frame-Options"] == "DENY"
    assert http(port, "GET", "/ui/login.js")[0] == 200
    assert http(port, "GET", "/ui/ui.css")[0] == 200

    # a wrong password and an unknown user are refused alike; no cookie
    for user, pw in ((ADMIN, "wrong"), ("nobody@example.test", ADMIN_PW)):
        st, hd, body = http(port, "POST", "/ui/login", {"user": user, "password": pw})
        assert st == 401 and json.loads(body)["error"]["code"] == "login_failed"
        assert "Set-Cookie" not in hd
    # a login from another site's page is refused (login CSRF)
    st, _, _ = http(port, "POST", "/ui/login", {"user": ADMIN, "password": ADMIN_PW},
                    headers={"Origin": "http://evil.example"})
    assert st == 403

    # the right one: a session cookie, HttpOnly, SameSite=Strict, no Secure on plain HTTP
    st, hd, body = http(port, "POST", "/ui/login", {"user": ADMIN, "password": ADMIN_PW})
    assert st == 200, body
    sc = hd["Set-Cookie"]
    assert len(hd.get_all("Content-Security-Policy")) == 1  # set once, not again on the answer
    assert "HttpOnly" in sc and "SameSite=Strict" in sc and "Path=/" in sc
    assert "Max-Age=43200" in sc and "Secure" not in sc
    st, cookie, csrf = login(port)  # a form works too? JSON here; the form below
    assert re.fullmatch(r"[0-9a-f]{64}", csrf)
    ck = {"Cookie": cookie}
    st, _, body = http(port, "GET", "/ui/session", headers=ck)
    assert st == 200 and json.loads(body) == {"user": ADMIN, "csrf": csrf}
    st, _, body = http(port, "GET", "/ui/", headers=ck)
    assert st == 200 and b"/ui/app.js" in body
    assert http(port, "GET", "/ui/vendor/uPlot.iife.min.js", headers=ck)[0] == 200

    # the session is an admin key on the API: GET with the cookie alone
    st, _, body = http(port, "GET", "/api/v1/webhooks", headers=ck)
    assert st == 200 and "webhooks" in json.loads(body)
    # a POST without the CSRF header (or with a wrong one) is 403, and nothing is made
    st, _, body = http(port, "POST", "/api/v1/keys", {"name": "nocsrf"}, headers=ck)
    assert st == 403 and json.loads(body)["error"]["code"] == "csrf"
    st, _, _ = http(port, "POST", "/api/v1/keys", {"name": "nocsrf"},
                    headers={**ck, "X-CSRF-Token": "0" * 64})
    assert st == 403
    st, _, body = http(port, "GET", "/api/v1/keys", headers=ck)
    assert [k for k in json.loads(body)["keys"] if k["name"] == "nocsrf"] == []
    # with it: made
    st, _, body = http(port, "POST", "/api/v1/keys", {"name": "viaui"},
                       headers={**ck, "X-CSRF-Token": csrf})
    assert st == 201, body
    # a form login works as well
    st, hd, _ = http(port, "POST", "/ui/login",
                     f"user={ADMIN.replace('@', '%40')}&password={ADMIN_PW.replace(' ', '+')}".encode(),
                     ctype="application/x-www-form-urlencoded")
    assert st == 200 and hd["Set-Cookie"].startswith("tern_ui=")

    # logout needs the CSRF token too; after it the cookie is worth nothing
    assert http(port, "POST", "/ui/logout", headers=ck)[0] == 403
    st, hd, _ = http(port, "POST", "/ui/logout", headers={**ck, "X-CSRF-Token": csrf})
    assert st == 200 and "Max-Age=0" in hd["Set-Cookie"]
    assert http(port, "GET", "/ui/session", headers=ck)[0] == 401
    assert http(port, "GET", "/ui/", headers=ck)[0] == 302
    assert http(port, "GET", "/api/v1/webhooks", headers=ck)[0] == 401

    # a session from before a restart of tern no longer works
    st, cookie, csrf = login(port)
    assert http(port, "GET", "/api/v1/keys", headers={"Cookie": cookie})[0] == 200
    t.stop()
    start_on_free_port(t)
    wait_ready_http(port)
    assert http(port, "GET", "/api/v1/keys", headers={"Cookie": cookie})[0] == 401
    assert http(port, "GET", "/ui/", headers={"Cookie": cookie})[0] == 302


def test_keys_routes_list_create_revoke_admin_only(tern_factory):
    t, port = start_serve(tern_factory)
    admin = create_key(t, "ops", "--scope", "admin")
    send = create_key(t, "app")
    api = Api(t, port)
    # admin only
    assert api.json("GET", "/api/v1/keys", token=send)[0] == 403
    assert api.json("POST", "/api/v1/keys", {"name": "x"}, token=send)[0] == 403
    st, k = api.json("POST", "/api/v1/keys",
                     {"name": "shop", "scope": "send", "from_domains": ["Shop.Example"],
                      "per_hour": 100, "per_day": 1000}, token=admin)
    assert st == 201, k
    assert re.fullmatch(r"tern_[0-9a-f]{16}_[0-9a-f]{64}", k["token"])
    assert k["from_domains"] == ["shop.example"] and k["per_hour"] == 100 and k["per_day"] == 1000
    assert k["revoked"] is None
    # the token works for a send from its domain, not for another domain
    msg = {"from": "a@shop.example", "to": ["alice@example.test"], "text": "hi\n"}
    assert api.json("POST", "/api/v1/messages", msg, token=k["token"])[0] == 202
    st, e = api.json("POST", "/api/v1/messages", {**msg, "from": "a@other.example"},
                     token=k["token"])
    assert st == 403, e
    # the list never shows a secret; the CLI sees the same key
    st, lst = api.json("GET", "/api/v1/keys", token=admin)
    assert st == 200 and "tern_" not in json.dumps(lst)
    shop = [x for x in lst["keys"] if x["name"] == "shop"][0]
    assert shop["id"] == k["id"] and shop["scope"] == "send"
    assert "shop" in t.cli("apikey", "list", check=True).stdout
    # bad input
    assert api.json("POST", "/api/v1/keys", {"name": "shop"}, token=admin)[0] == 409
    for bad in ({}, {"name": "a b"}, {"name": "ok", "scope": "root"},
                {"name": "ok", "per_hour": -1}, {"name": "ok", "from_domains": "x.org"}):
        st, e = api.json("POST", "/api/v1/keys", bad, token=admin)
        assert st == 422 and e["error"]["code"] == "invalid_field", (bad, e)
    # revoke: the token stops working at once; twice is 404
    st, r = api.json("DELETE", "/api/v1/keys/shop", token=admin)
    assert st == 200 and r == {"name": "shop", "revoked": True}
    assert api.json("POST", "/api/v1/messages", msg, token=k["token"])[0] == 401
    assert api.json("DELETE", "/api/v1/keys/shop", token=admin)[0] == 404
    st, lst = api.json("GET", "/api/v1/keys", token=admin)
    assert [x["revoked"] for x in lst["keys"] if x["name"] == "shop"][0] > 0



def test_failed_logins_block_the_address_and_stop_answers_the_waiting_ones(tern_factory):
    """The brute-force throttle (auth/throttle.c, as for SMTP AUTH): ten failures from one
    address block it, so the right password then gets 429 with Retry-After and no session.
    The failures wait out growing delays (1 s doubling to 16 s) before their 401; a tern that
    stops ends those still waiting at once (their connection closes; sanitizers stay quiet)."""
    t, port = start_serve(tern_factory)
    codes = []

    def fail_once():
        try:
            codes.append(http(port, "POST", "/ui/login", {"user": ADMIN, "password": "nope"})[0])
        except OSError:  # tern stopped while this one waited out its delay
            codes.append("closed")

    threads = [threading.Thread(target=fail_once, daemon=True) for _ in range(10)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 60
    while "event=ui_login_failed" not in t.log_path.read_text() or \
            "failures=10" not in t.log_path.read_text():
        assert time.monotonic() < deadline, t.log_tail()
        time.sleep(0.1)
    st, hd, body = http(port, "POST", "/ui/login", {"user": ADMIN, "password": ADMIN_PW})
    assert st == 429 and int(hd["Retry-After"]) > 0, body
    assert "Set-Cookie" not in hd
    assert t.stop() == 0
    for th in threads:
        th.join(30)
    assert len(codes) == 10 and set(codes) <= {401, "closed"}, codes


# --------------------------------------------------------------------------- in Chromium


class DeferringMX:
    """aiosmtpd on 127.0.0.1 answering 451 to every recipient: the message stays deferred."""

    def __init__(self):
        from aiosmtpd.controller import Controller  # python3-aiosmtpd, in scripts/install-deps

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                return "451 4.3.0 try again later (test greylist)"

        self.port = free_port()
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.ctl.start()

    def stop(self):
        self.ctl.stop()


class FailingReceiver:
    """A webhook receiver that answers 500 to everything, counting the POSTs."""

    def __init__(self):
        self.posts = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts += 1
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def playwright_ready():
    """node, Debian's chromium and playwright-core (npm, pinned in tests/e2e/package.json, no
    browser download), installed as tests/e2e/run.sh does; the reason when impossible."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node/npm are not installed (scripts/install-deps e2e)"
    if not os.access(os.environ.get("CHROMIUM", "/usr/bin/chromium"), os.X_OK):
        return "chromium is not installed (scripts/install-deps e2e)"
    if not (E2E / "node_modules" / "playwright-core" / "package.json").is_file():
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
                            "--loglevel=error"], cwd=E2E, capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"))
        if r.returncode != 0:
            return f"npm could not install playwright-core: {r.stderr[-500:]}"
    return None


# tests/e2e: this and the other Chromium test (test_webui_e2e.py) npm-install playwright-core into
# the same tests/e2e/node_modules when it is missing: one xdist group, never at once.
@pytest.mark.xdist_group("e2e")
def test_ui_in_chromium(tern_factory):
    why = playwright_ready()
    if why:
        pytest.skip(why)
    mx, hook = DeferringMX(), FailingReceiver()
    try:
        t, port = start_serve(tern_factory, {
            "routes": {"defer.test": {"via": f"smtp://127.0.0.1:{mx.port}"}},
            "archive": {"enabled": True}})
        admin = create_key(t, "ops", "--scope", "admin")
        r = t.cli("webhook", "add", f"http://127.0.0.1:{hook.port}/hook", "--events",
                  "delivered,deferred", check=True)
        hook_id = int(r.stdout.split()[1])
        api = Api(t, port)
        st, ok = api.json("POST", "/api/v1/messages",
                          {"from": "app@example.test", "to": ["alice@example.test"],
                           "subject": "delivered", "text": "hi\n"}, token=admin)
        assert st == 202, ok
        st, dfr = api.json("POST", "/api/v1/messages",
                           {"from": "app@example.test", "to": ["someone@defer.test"],
                            "subject": "deferred", "text": "later\n"}, token=admin)
        assert st == 202, dfr
        deadline = time.monotonic() + 30
        while True:  # both outcomes are events before the browser looks
            st, ev = api.json("GET", "/api/v1/events?limit=1000", token=admin)
            types = {(e["queue_id"], e["type"]) for e in ev["events"]}
            if (ok["id"], "delivered") in types and (dfr["id"], "deferred") in types:
                break
            assert time.monotonic() < deadline, ev
            time.sleep(0.2)
        # the archive page's message: over SMTP, a distinctive body word, listed by the API
        word = "uiarchivewombat"
        sent = (b"From: Archive Sender <archiver@example.org>\r\nTo: <alice@example.test>\r\n"
                b"Subject: archived for the UI\r\nMessage-ID: <ui-archive@example.org>\r\n\r\n"
                b"The word is " + word.encode() + b".\r\n")
        with t.client() as c:
            arch_qid = c.send_message("archiver@example.org", ["alice@example.test"], sent)
        deadline = time.monotonic() + 30
        while True:
            st, res = api.json("GET", f"/api/v1/archive?query={word}", token=admin)
            assert st == 200, res
            if [m["ID"] for m in res["messages"]] == [arch_qid]:
                break
            assert time.monotonic() < deadline, (res, t.log_tail())
            time.sleep(0.1)
        artifacts = E2E / "artifacts"
        env = dict(os.environ, TERN_UI_URL=f"http://127.0.0.1:{port}", TERN_UI_USER=ADMIN,
                   TERN_UI_PASSWORD=ADMIN_PW, TERN_ADMIN_TOKEN=admin, TERN_DEFER_QID=dfr["id"],
                   TERN_WEBHOOK_ID=str(hook_id), TERN_E2E_ARTIFACTS=str(artifacts),
                   TERN_ARCHIVE_QID=arch_qid, TERN_ARCHIVE_WORD=word)
        try:
            r = subprocess.run(["node", str(E2E / "serve_ui.spec.mjs")], env=env, cwd=E2E,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=300)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"serve_ui.spec.mjs took longer than 300 s\n{(e.stdout or '')[-4000:]}")
        print(r.stdout)
        assert r.returncode == 0 and "PASS" in r.stdout, r.stdout[-6000:]
        for name in ("login", "dashboard", "events", "suppressions", "keys", "webhooks",
                     "archive"):
            assert (artifacts / f"serve-ui-{name}.png").is_file(), name
        # the raw link the UI showed (the spec compared its bytes, fetched with the session,
        # to the API's) gives the original: tern's Received field, then the message as sent
        st, hd, raw = http(port, "GET", f"/api/v1/archive/{arch_qid}/raw",
                           headers={"Authorization": f"Bearer {admin}"})
        assert st == 200 and hd["Content-Type"] == "message/rfc822"
        assert raw.startswith(b"Received: ") and raw.endswith(sent), raw[-300:]
        assert "raw link bytes equal the API's" in r.stdout
        # released in the UI: no longer held
        st, res = api.json("GET", f"/api/v1/archive?query={word}", token=admin)
        assert st == 200 and res["messages"][0]["Hold"] is False
    finally:
        mx.stop()
        hook.stop()
