"""
test_capture_ext.py — capture mode at Mailpit's level, part A (issue 14 item 1): the WebSocket
at /api/events (raw sockets here; a Node `ws` client in test_capture_ext_node), the health
routes, Mailpit's MP_* environment, basic authentication of the UI and API.

Owns: starting `tern capture` with extra flags and environment (a Capture subclass) and the
raw WebSocket client below (RFC 6455 framing, masked as a client must).

Never: talk to anything but 127.0.0.1, wait without a bound, signal a process it did not
start.
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import socket
import struct
import time
from pathlib import Path

import pytest

from capture_harness import (SANITIZER_MARKERS, Capture, capture, capture_factory,  # noqa: F401
                             http_request)
from conftest import free_port, make_message

POLL = 10.0
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------
# tern capture configured as a docker-compose file configures Mailpit.


class EnvCapture(Capture):
    """`tern capture ARGS` with env (MP_* variables) and no flags but the ones given; ports
    and paths in env may use {smtp}, {http}, {root}. It runs in root, so the embedded
    default's ./tern-data lands there when MP_DATABASE is not set."""

    def __init__(self, env, args=()):
        super().__init__()
        self.env_tmpl = env
        self.args = list(args)

    def start(self, timeout=10.0):
        self.smtp_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.smtp_port:
            self.http_port = free_port()
        fill = dict(smtp=self.smtp_port, http=self.http_port, root=self.root)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MP_")}
        env.update({k: v.format(**fill) for k, v in self.env_tmpl.items()})
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin, "capture", *[a.format(**fill) for a in self.args]],
                                     stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, env=env, cwd=self.root)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout):
        """/readyz answers even when the UI asks for a login."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tern capture exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                if self.env_tmpl.get("MP_UI_TLS_CERT"):
                    if https_request(self.http_port, "GET", "/readyz").status == 200:
                        return
                elif http_request(self.http_port, "GET", "/readyz", timeout=2.0).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"/readyz did not answer within {timeout}s\n{self.log_tail()}")


@pytest.fixture
def env_capture():
    made = []

    def make(env, args=()):
        c = EnvCapture(env, args)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        rc = c.stop()
        assert rc != "killed-after-timeout", c.log_tail()
        bad = c.sanitizer_report()
        assert not bad, f"{bad} in the log:\n{c.log_tail(80)}"
        c.cleanup()


# --------------------------------------------------------------------------
# A raw WebSocket client.


class WS:
    def __init__(self, port, path="/api/events", headers=None, key=None, tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=POLL)
        if tls:
            import ssl
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)
        self.key = key or base64.b64encode(os.urandom(16)).decode()
        hdrs = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Key": self.key, "Sec-WebSocket-Version": "13"}
        hdrs.update(headers or {})
        req = f"GET {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None) + "\r\n"
        self.sock.sendall(req.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and lines[0] else 0
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def recv_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert not (b1 & 0x80), "a server frame must not be masked"
        n, h = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, h = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, h = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(h + n)
        payload, self.buf = self.buf[h:h + n], self.buf[h + n:]
        return b0 & 0x0F, payload

    def send_frame(self, opcode, payload=b"", fin=True, mask=True, length=None):
        n = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | opcode])
        mbit = 0x80 if mask else 0
        if n < 126:
            head += bytes([mbit | n])
        elif n < 65536:
            head += bytes([mbit | 126]) + struct.pack(">H", n)
        else:
            head += bytes([mbit | 127]) + struct.pack(">Q", n)
        if mask:
            m = os.urandom(4)
            head += m
            payload = bytes(b ^ m[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)

    def next_event(self, want_type=None):
        """The next text frame's JSON (answering pings on the way), skipping other types."""
        while True:
            op, p = self.recv_frame()
            if op == 0x9:
                self.send_frame(0xA, p)
                continue
            if op == 0x1:
                ev = json.loads(p)
                if want_type is None or ev.get("Type") == want_type:
                    return ev

    def close(self):
        self.sock.close()


def smtp_send(cap, subject, rcpts=("alice@example.test",), frm="sender@example.org", **kw):
    with cap.smtp() as c:
        c.send_message(frm, list(rcpts), make_message(subject, frm=frm, to=rcpts[0], **kw))


# --------------------------------------------------------------------------
# WebSocket


def test_websocket_handshake_and_new_message_event(capture):
    ws = WS(capture.http_port)
    try:
        assert ws.status == 101, ws.headers
        assert ws.headers.get("upgrade", "").lower() == "websocket"
        assert "upgrade" in ws.headers.get("connection", "").lower()
        want = base64.b64encode(hashlib.sha1((ws.key + GUID).encode()).digest()).decode()
        assert ws.headers.get("sec-websocket-accept") == want
        first = ws.next_event()
        assert first["Type"] == "stats" and first["Data"]["Total"] == 0, first
        smtp_send(capture, "over the websocket")
        ev = ws.next_event("new")
        assert ev["Data"]["Subject"] == "over the websocket"
        assert ev["Data"]["ID"]
        # a ping from the client gets its pong with the same payload
        ws.send_frame(0x9, b"are you there")
        while True:
            op, p = ws.recv_frame()
            if op == 0xA:
                assert p == b"are you there"
                break
        # the close handshake: our 1000 comes back, then the server closes
        ws.send_frame(0x8, struct.pack(">H", 1000))
        op, p = ws.recv_frame()
        assert op == 0x8 and p == struct.pack(">H", 1000)
        ws.sock.settimeout(POLL)
        assert ws.sock.recv(100) == b""
    finally:
        ws.close()


def test_websocket_refuses_cross_origin_and_bad_frames(capture):
    port = capture.http_port
    evil = WS(port, headers={"Origin": "http://evil.example"})
    assert evil.status == 403
    evil.close()
    same = WS(port, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status == 101
    # an unmasked client frame is a protocol error: close 1002
    same.next_event("stats")
    same.send_frame(0x1, b"hi", mask=False)
    while True:
        op, p = same.recv_frame()
        if op == 0x8:
            assert p[:2] == struct.pack(">H", 1002)
            break
    same.close()
    big = WS(port)
    big.next_event("stats")
    big.send_frame(0x2, b"", length=10 * 1024 * 1024)  # announced, never sent: 1009 at once
    while True:
        op, p = big.recv_frame()
        if op == 0x8:
            assert p[:2] == struct.pack(">H", 1009)
            break
    big.close()
    assert WS(port, headers={"Sec-WebSocket-Version": "8"}).status == 426
    assert WS(port, key="short").status == 400
    # SSE is still there for clients that ask for it, and the server still answers
    r = http_request(port, "GET", "/api/v1/info")
    assert r.status == 200


def test_websocket_events_in_mailpit_shapes(capture):
    port = capture.http_port
    ws = WS(port)
    try:
        ws.next_event("stats")
        smtp_send(capture, "shape one")
        a = ws.next_event("new")["Data"]["ID"]
        smtp_send(capture, "shape two")
        b = ws.next_event("new")["Data"]["ID"]
        r = http_request(port, "PUT", "/api/v1/messages", body={"IDs": [a], "Read": True})
        assert r.status == 200, r
        assert ws.next_event("update")["Data"] == {"ID": a}
        assert http_request(port, "DELETE", "/api/v1/messages", body={"IDs": [b]}).status == 200
        assert ws.next_event("delete")["Data"] == {"ID": b}
        assert http_request(port, "DELETE", "/api/v1/messages").status == 200
        assert ws.next_event("truncate")["Data"] is None
        assert ws.next_event("stats")["Data"]["Total"] == 0
    finally:
        ws.close()


def test_sse_still_served(capture):
    s = socket.create_connection(("127.0.0.1", capture.http_port), timeout=POLL)
    try:
        s.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{capture.http_port}\r\n"
                  "Accept: text/event-stream\r\n\r\n".encode())
        data = b""
        while b"event: stats" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert b"text/event-stream" in data
    finally:
        s.close()


def test_health_routes(capture):
    for path in ("/livez", "/readyz"):
        r = http_request(capture.http_port, "GET", path, headers={"Host": "mailpit:8025"})
        assert r.status == 200, (path, r)


NODE_DIR = Path(__file__).resolve().parent.parent / "node"


def node_ws_ready():
    """Installs the pinned `ws` (npm, into tests/node/node_modules) if it is missing; skips only
    when node or npm is not there at all."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the ws client (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").is_file():
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                            "--loglevel=error"], cwd=NODE_DIR, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=300, text=True)
        assert r.returncode == 0, f"npm ci in tests/node failed:\n{r.stdout[-3000:]}"


def test_websocket_from_node_ws_client(capture):
    node_ws_ready()
    p = subprocess.Popen(["node", str(NODE_DIR / "ws_events.mjs"),
                          f"ws://127.0.0.1:{capture.http_port}/api/events"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line.strip())
            if line.strip() in ("READY", "TIMEOUT") or line.startswith("ERROR"):
                break
        assert lines and lines[-1] == "READY", lines
        assert json.loads(lines[0])["Type"] == "stats"
        smtp_send(capture, "to a node client")
        rest, _ = p.communicate(timeout=30)
        lines += rest.splitlines()
        assert p.returncode == 0, lines
        new = [json.loads(x) for x in lines if x.startswith("{") and '"new"' in x]
        assert new and new[0]["Data"]["Subject"] == "to a node client", lines
        assert "CLOSED 1000" in lines, lines
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


# --------------------------------------------------------------------------
# MP_* environment


def test_compose_style_run_configured_by_mp_env_only(env_capture):
    cap = env_capture({
        "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
        "MP_UI_BIND_ADDR": "127.0.0.1:{http}",
        "MP_DATABASE": "{root}/mpdata/mailpit.db",
        "MP_MAX_MESSAGES": "2",
        "MP_SMTP_AUTH_ACCEPT_ANY": "1",
        "MP_SMTP_AUTH_ALLOW_INSECURE": "true",
        "MP_VERBOSE": "1",
        "MP_SMTP_MAX_RECIPIENTS": "2",
        "MP_ENABLE_CHAOS": "true",
        "MP_SOMETHING_NEW": "x",
    })
    # MP_SMTP_AUTH_ACCEPT_ANY: any login is accepted, then mail flows; MP_ENABLE_CHAOS is
    # accepted (the chaos API is always there)
    assert http_request(cap.http_port, "GET", "/api/v1/chaos").status == 200
    import smtplib
    with smtplib.SMTP("127.0.0.1", cap.smtp_port, timeout=POLL) as s:
        s.ehlo()
        assert s.has_extn("auth")
        s.login("whoever", "whatever")
        for i in range(3):
            s.sendmail("app@example.org", ["user@example.test"],
                       make_message(f"compose {i}", frm="app@example.org", to="user@example.test"))
        # MP_SMTP_MAX_RECIPIENTS: the third recipient of one message is refused
        refused = s.sendmail("app@example.org", ["a@example.test", "b@example.test",
                                                 "c@example.test"],
                             make_message("compose 3", frm="app@example.org"))
        assert list(refused) == ["c@example.test"] and refused["c@example.test"][0] == 452
    # the developer's tests read Mailpit's API: the newest two are kept (MP_MAX_MESSAGES)
    deadline = time.monotonic() + POLL
    while True:
        r = http_request(cap.http_port, "GET", "/api/v1/messages")
        assert r.status == 200
        subs = [m["Subject"] for m in r.json()["messages"]]
        if subs == ["compose 3", "compose 2"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert subs == ["compose 3", "compose 2"], subs
    mid = r.json()["messages"][0]["ID"]
    r = http_request(cap.http_port, "GET", f"/api/v1/message/{mid}")
    assert r.status == 200 and r.json()["Subject"] == "compose 3"
    r = http_request(cap.http_port, "GET", "/api/v1/search?query=subject:%22compose%202%22")
    assert r.status == 200 and r.json()["messages_count"] == 1
    assert http_request(cap.http_port, "DELETE", "/api/v1/messages").status == 200
    # MP_DATABASE names a file: its directory holds the store
    assert (cap.root / "mpdata" / "capture" / "capture.db").is_file()
    log = cap.log()
    assert "MP_SOMETHING_NEW" in log and "ignored" in log
    assert " debug event=" in log  # MP_VERBOSE


def test_flags_win_over_mp_env(env_capture):
    # MP_UI_BIND_ADDR names a port nobody listens on; --listen (Mailpit's flag) wins
    cap = env_capture({"MP_UI_BIND_ADDR": "127.0.0.1:1",
                       "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}"},
                      ["--listen", "127.0.0.1:{http}", "--database", "{root}/db/x.db",
                       "--allowed-hosts", "mail,.svc.test"])
    assert http_request(cap.http_port, "GET", "/api/v1/info").status == 200
    # other containers name the service: --allowed-hosts lets them in, nothing else
    for host, want in (("mail:8025", 200), ("x.svc.test", 200), ("mailpit:8025", 403)):
        r = http_request(cap.http_port, "GET", "/api/v1/messages", headers={"Host": host})
        assert r.status == want, (host, r)


@pytest.mark.parametrize("env,words,status", [
    ({"MP_SMTP_REQUIRE_STARTTLS": "1"}, "needs --smtp-tls-cert", 2),
    ({"MP_SMTP_AUTH_FILE": "/nonexistent/passwords"}, "/nonexistent/passwords", 1),
    ({"MP_SMTP_AUTH_ACCEPT_ANY": "maybe"}, "not a yes/no value", 2),
    ({"MP_MAX_MESSAGES": "lots"}, "not a count", 2),
    ({"MP_MAX_AGE": "3 weeks"}, "not like 12h or 7d", 2),
])
def test_mp_env_refused_clearly(env, words, status):
    from conftest import tern_bin
    e = {k: v for k, v in os.environ.items() if not k.startswith("MP_")}
    e.update(env)
    r = subprocess.run([tern_bin(), "capture", "--smtp", "127.0.0.1:1", "--http", "127.0.0.1:1"],
                       env=e, capture_output=True, text=True, timeout=30)
    assert r.returncode == status, r
    assert words in r.stderr, r.stderr


# --------------------------------------------------------------------------
# Basic authentication of the UI and API


def bcrypt_hash(password):
    """A $2y$ hash as Apache's htpasswd -B writes, made with the system's libxcrypt."""
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2y$", 5, None, 0)
    return lib.crypt(password.encode(), salt).decode()


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_file_refuses_without_credentials(env_capture, tmp_path):
    users = tmp_path / "ui.htpasswd"
    users.write_text(f"# made by htpasswd -B\nadmin:{bcrypt_hash('s3cret')}\n"
                     "viewer:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(users, 0o644)
    cap = env_capture({"MP_UI_AUTH_FILE": str(users), "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                       "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    port = cap.http_port
    for path in ("/api/v1/messages", "/", "/api/v1/info", "/view/latest.html"):
        r = http_request(port, "GET", path)
        assert r.status == 401, (path, r)
        assert r.headers.get("www-authenticate", "").startswith("Basic realm="), r.headers
    assert http_request(port, "GET", "/api/v1/messages", headers=basic("admin", "wrong")).status == 401
    assert http_request(port, "GET", "/api/v1/messages", headers=basic("nobody", "s3cret")).status == 401
    assert http_request(port, "DELETE", "/api/v1/messages").status == 401
    r = http_request(port, "GET", "/api/v1/messages", headers=basic("admin", "s3cret"))
    assert r.status == 200 and "messages" in r.json()
    assert http_request(port, "GET", "/api/v1/info", headers=basic("viewer", "secret")).status == 200
    # health checks stay open (Mailpit's too); the WebSocket needs the login as well
    assert http_request(port, "GET", "/livez").status == 200
    assert http_request(port, "GET", "/readyz").status == 200
    assert WS(port).status == 401
    ws = WS(port, headers=basic("admin", "s3cret"))
    assert ws.status == 101
    ws.close()
    # logins are checked on the thread pool: clients that leave while theirs is checked, and
    # many at once with a login never seen before, all come out right
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", port), timeout=POLL)
        h = basic("admin", f"guess{i}")["Authorization"]
        s.sendall(f"GET /api/v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {h}\r\n\r\n".encode())
        s.close()
    users.write_text("")  # read once at start: changing the file changes nothing
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda i: http_request(
            port, "GET", "/api/v1/info",
            headers=basic("viewer", "secret") if i % 2 else basic("admin", "s3cret")).status,
            range(16)))
    assert got == [200] * 16, got
    bad = list(map(lambda i: http_request(port, "GET", "/api/v1/info",
                                          headers=basic("viewer", f"no{i}")).status, range(3)))
    assert bad == [401] * 3


def test_basic_auth_inline_pairs(env_capture):
    cap = env_capture({"MP_UI_AUTH": "alice:pw1 bob:pw2", "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                       "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    assert http_request(cap.http_port, "GET", "/api/v1/info").status == 401
    assert http_request(cap.http_port, "GET", "/api/v1/info", headers=basic("bob", "pw2")).status == 200
    assert http_request(cap.http_port, "GET", "/api/v1/info", headers=basic("bob", "pw1")).status == 401


# --------------------------------------------------------------------------
# Tags on arrival


def wait_listed(port, subject, headers=None):
    deadline = time.monotonic() + POLL
    while time.monotonic() < deadline:
        r = http_request(port, "GET", "/api/v1/messages", headers=headers)
        for m in r.json()["messages"]:
            if m["Subject"] == subject:
                return m
        time.sleep(0.05)
    pytest.fail(f"{subject!r} never listed")


def test_tags_from_plus_addresses_and_x_tags(capture):
    ws = WS(capture.http_port)
    ws.next_event("stats")
    smtp_send(capture, "tagged", rcpts=("dev+Newsletter@example.test", "ops+alerts@example.test",
                                        "plain@example.test"),
              extra_headers="X-Tags: release, QA team!,\r\n  nightly\r\n")
    m = wait_listed(capture.http_port, "tagged")
    assert sorted(m["Tags"]) == ["Newsletter", "QA team", "alerts", "nightly", "release"], m
    # the live event carries them too
    assert sorted(ws.next_event("new")["Data"]["Tags"]) == sorted(m["Tags"])
    ws.close()
    # an existing tag keeps its spelling; the tags API and tag: search see them
    smtp_send(capture, "tagged again", rcpts=("x+NEWSLETTER@example.test",))
    m2 = wait_listed(capture.http_port, "tagged again")
    assert m2["Tags"] == ["Newsletter"], m2
    tags = http_request(capture.http_port, "GET", "/api/v1/tags").json()
    assert "Newsletter" in tags and "alerts" in tags
    r = http_request(capture.http_port, "GET", "/api/v1/search?query=tag:alerts").json()
    assert [x["Subject"] for x in r["messages"]] == ["tagged"]


def test_tags_disable(env_capture):
    cap = env_capture({"MP_TAGS_DISABLE": "plus-addresses", "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                       "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    smtp_send(cap, "half tagged", rcpts=("dev+plus@example.test",), extra_headers="X-Tags: xt\r\n")
    assert wait_listed(cap.http_port, "half tagged")["Tags"] == ["xt"]


# --------------------------------------------------------------------------
# The new-message webhook


class Receiver:
    """A webhook receiver (Python's http.server) on a free loopback port; status is what it
    answers."""

    def __init__(self, status=200):
        import http.server
        import queue
        import threading
        self.calls = queue.Queue()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                outer.calls.put((self.path, dict(self.headers), self.rfile.read(n)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def next(self):
        import queue
        try:
            return self.calls.get(timeout=POLL)
        except queue.Empty:
            pytest.fail("the webhook was not called")

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_webhook_posts_each_new_message(env_capture):
    rx = Receiver()
    try:
        cap = env_capture({"MP_WEBHOOK_URL": f"http://127.0.0.1:{rx.port}/hook/in",
                           "MP_WEBHOOK_LIMIT": "50",
                           "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                           "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
        smtp_send(cap, "hook one", rcpts=("a+hooked@example.test",))
        path, headers, body = rx.next()
        assert path == "/hook/in"
        assert headers.get("Content-Type") == "application/json"
        summary = json.loads(body)
        assert summary["Subject"] == "hook one" and summary["ID"] and summary["Tags"] == ["hooked"]
        listed = wait_listed(cap.http_port, "hook one")
        assert listed["ID"] == summary["ID"]
        # the API's send path fires it too
        r = http_request(cap.http_port, "POST", "/api/v1/send",
                         body={"From": {"Email": "api@example.org"},
                               "To": [{"Email": "b@example.test"}], "Subject": "hook two",
                               "Text": "hi"})
        assert r.status == 200, r
        assert json.loads(rx.next()[2])["Subject"] == "hook two"
    finally:
        rx.close()


def test_webhook_failure_is_logged_and_capture_goes_on(env_capture):
    rx = Receiver(status=500)
    try:
        cap = env_capture({"MP_WEBHOOK_URL": f"http://127.0.0.1:{rx.port}/",
                           "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                           "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
        smtp_send(cap, "hook refused")
        rx.next()
        wait_listed(cap.http_port, "hook refused")
        deadline = time.monotonic() + POLL
        while "event=webhook_failed" not in cap.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "event=webhook_failed" in cap.log() and "status=500" in cap.log()
    finally:
        rx.close()


def test_webhook_url_must_be_http():
    from conftest import tern_bin
    e = {k: v for k, v in os.environ.items() if not k.startswith("MP_")}
    e["MP_WEBHOOK_URL"] = "file:///etc/passwd"
    r = subprocess.run([tern_bin(), "capture", "--smtp", f"127.0.0.1:{free_port()}", "--http",
                        f"127.0.0.1:{free_port()}", "--data-dir", "/nonexistent/x"],
                       env=e, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "http:// or https://" in r.stderr


# --------------------------------------------------------------------------
# POP3 on captured mail


def test_pop3_serves_captured_mail(env_capture, tmp_path):
    import poplib
    users = tmp_path / "pop3.htpasswd"
    users.write_text(f"reader:{bcrypt_hash('popsecret')}\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(users, 0o644)
    pop_port = free_port()
    cap = env_capture({"MP_POP3_BIND_ADDR": f"127.0.0.1:{pop_port}",
                       "MP_POP3_AUTH_FILE": str(users),
                       "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                       "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    smtp_send(cap, "pop first", body="line one\r\n.starts with a dot\r\n")
    wait_listed(cap.http_port, "pop first")
    smtp_send(cap, "pop second")
    second = wait_listed(cap.http_port, "pop second")

    bad = poplib.POP3("127.0.0.1", pop_port, timeout=POLL)
    bad.user("reader")
    with pytest.raises(poplib.error_proto):
        bad.pass_("wrong")
    bad.close()

    p = poplib.POP3("127.0.0.1", pop_port, timeout=POLL)
    p.user("reader")
    p.pass_("popsecret")
    count, octets = p.stat()
    assert count == 2
    uidls = [x.split()[1].decode() for x in p.uidl()[1]]
    assert uidls[1] == second["ID"]  # oldest first; UIDL is the capture ID
    lines = p.retr(1)[1]
    assert b"Subject: pop first" in lines
    assert b".starts with a dot" in lines  # dot-stuffing undone by poplib
    raw = http_request(cap.http_port, "GET", f"/api/v1/message/{uidls[0]}/raw").body
    assert b"\r\n".join(lines) + b"\r\n" == raw
    sizes = dict((int(a), int(b)) for a, b in (x.split() for x in p.list()[1]))
    assert sizes[1] == len(raw) and sum(sizes.values()) == octets
    p.dele(1)
    p.quit()
    # the DELE'd one left the store at QUIT; the other stayed
    r = http_request(cap.http_port, "GET", "/api/v1/messages").json()
    assert [m["Subject"] for m in r["messages"]] == ["pop second"]

    # a session that ends without QUIT deletes nothing
    p = poplib.POP3("127.0.0.1", pop_port, timeout=POLL)
    p.user("reader")
    p.pass_("popsecret")
    p.dele(1)
    p.sock.close()
    time.sleep(0.3)
    p2 = poplib.POP3("127.0.0.1", pop_port, timeout=POLL)
    p2.user("reader")
    p2.pass_("popsecret")
    assert p2.stat()[0] == 1
    p2.quit()


def test_pop3_needs_users():
    from conftest import tern_bin
    e = {k: v for k, v in os.environ.items() if not k.startswith("MP_")}
    e["MP_POP3_BIND_ADDR"] = "127.0.0.1:1"
    r = subprocess.run([tern_bin(), "capture", "--smtp", "127.0.0.1:1", "--http", "127.0.0.1:1"],
                       env=e, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--pop3 needs users" in r.stderr, r


# --------------------------------------------------------------------------
# HTTPS for the UI and API


def https_request(port, method, path, headers=None, body=None):
    import http.client
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=POLL, context=ctx)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        from capture_harness import Response
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def test_https_ui_and_api(env_capture, tmp_path):
    import ssl
    os.chmod(tmp_path, 0o755)
    cert, key = tmp_path / "ui.crt", tmp_path / "ui.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    os.chmod(key, 0o644)
    cap = env_capture({"MP_UI_TLS_CERT": str(cert), "MP_UI_TLS_KEY": str(key),
                       "MP_UI_AUTH": "u:p",
                       "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                       "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    smtp_tls = env_capture({"MP_SMTP_TLS_CERT": str(cert), "MP_SMTP_TLS_KEY": str(key),
                            "MP_SMTP_REQUIRE_TLS": "1",
                            "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                            "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    smtp_send(cap, "over https")
    auth = basic("u", "p")
    assert https_request(cap.http_port, "GET", "/api/v1/messages").status == 401
    deadline = time.monotonic() + POLL
    while True:
        r = https_request(cap.http_port, "GET", "/api/v1/messages", headers=auth)
        assert r.status == 200
        if r.json()["messages"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.json()["messages"][0]["Subject"] == "over https"
    # MP_SMTP_REQUIRE_TLS with the same pair: SMTP speaks TLS from the first byte
    import smtplib
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", smtp_tls.smtp_port, context=ctx, timeout=POLL) as c:
        c.sendmail("a@example.org", ["b@example.test"], make_message("implicit tls"))
    wait_listed(smtp_tls.http_port, "implicit tls")
    # MP_SMTP_REQUIRE_STARTTLS: MAIL only after STARTTLS
    st = env_capture({"MP_SMTP_TLS_CERT": str(cert), "MP_SMTP_TLS_KEY": str(key),
                      "MP_SMTP_REQUIRE_STARTTLS": "true",
                      "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                      "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    with smtplib.SMTP("127.0.0.1", st.smtp_port, timeout=POLL) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        code, text = c.mail("a@example.org")
        assert code == 530 and b"STARTTLS" in text, (code, text)
        c.rset()
        c.starttls(context=ctx)
        c.ehlo()
        c.sendmail("a@example.org", ["b@example.test"], make_message("after starttls"))
    wait_listed(st.http_port, "after starttls")
    # wss: the live events over TLS
    ws = WS(cap.http_port, headers=auth, tls=True)
    try:
        assert ws.status == 101
        assert ws.next_event("stats")["Data"]["Total"] == 1
        smtp_send(cap, "over wss")
        assert ws.next_event("new")["Data"]["Subject"] == "over wss"
    finally:
        ws.close()
    # the certificate served is the one given
    pem = ssl.get_server_certificate(("127.0.0.1", cap.http_port))
    assert pem.split() == cert.read_text().split()
    # plain HTTP on the HTTPS port gets no answer: the handshake fails, the connection closes
    import http.client
    with pytest.raises((OSError, http.client.HTTPException)):
        http_request(cap.http_port, "GET", "/api/v1/info", headers=auth, timeout=5)
    assert https_request(cap.http_port, "GET", "/livez").status == 200  # still serving


# --------------------------------------------------------------------------
# SMTP logins from a users file (Mailpit's --smtp-auth-file)


def test_smtp_auth_file_checks_logins(env_capture, tmp_path):
    import smtplib
    users = tmp_path / "smtp.htpasswd"
    users.write_text(f"app:{bcrypt_hash('mailpass')}\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(users, 0o644)
    cap = env_capture({"MP_SMTP_AUTH_FILE": str(users), "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                       "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    msg = make_message("logged in", frm="app@example.org")
    with smtplib.SMTP("127.0.0.1", cap.smtp_port, timeout=POLL) as s:
        s.ehlo()
        code, _ = s.mail("app@example.org")
        assert code == 530  # a login first, as Mailpit asks with an auth file
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("app", "wrong")
        assert e.value.smtp_code == 535
    with smtplib.SMTP("127.0.0.1", cap.smtp_port, timeout=POLL) as s:
        s.login("app", "mailpass")
        s.sendmail("app@example.org", ["x@example.test"], msg)
    m = wait_listed(cap.http_port, "logged in")
    full = http_request(cap.http_port, "GET", f"/api/v1/message/{m['ID']}").json()
    assert full.get("Username", "app") == "app"


def test_smtp_auth_accept_any_wins_over_the_file(env_capture, tmp_path):
    import smtplib
    cap = env_capture({"MP_SMTP_AUTH": "app:mailpass", "MP_SMTP_AUTH_ACCEPT_ANY": "1",
                       "MP_SMTP_BIND_ADDR": "127.0.0.1:{smtp}",
                       "MP_UI_BIND_ADDR": "127.0.0.1:{http}"})
    with smtplib.SMTP("127.0.0.1", cap.smtp_port, timeout=POLL) as s:
        s.login("anyone", "anything")
        s.sendmail("a@example.org", ["x@example.test"], make_message("any login"))
    wait_listed(cap.http_port, "any login")
