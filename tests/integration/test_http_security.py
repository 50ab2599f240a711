"""
test_http_security.py — the capture HTTP API against cross-site requests, DNS rebinding and
resource exhaustion (issue 7, review finding "the capture HTTP API takes cross-site requests
and any Host").

Owns: black-box tests of the real `tern capture` daemon with Python's http.client, raw sockets
and curl on loopback: a foreign Origin or a non-JSON body never releases a captured message
(the aiosmtpd relayhost sink must get nothing), a Host that is not one of the listener's own
names is refused (DNS rebinding), the configured capture.http_allowed_hosts are accepted,
bodies over capture.http_max_body get 413, connections over capture.http_max_connections are
refused, and the web UI's own kind of request (JSON, same-origin Origin) still works.

Never: reach beyond 127.0.0.1, wait without a bound, or assert on timing.
"""

import http.client
import json
import shutil
import signal
import socket
import subprocess
import time

import pytest

from capture_harness import capture, capture_factory, smtp_sink  # noqa: F401
from conftest import Raw, make_message

POLL = 10.0  # seconds: every wait below is bounded by this


# --------------------------------------------------------------------------
# Helpers.


def req(cap, method, path, body=None, headers=None, host=None, timeout=POLL):
    """One request on a fresh connection; body is bytes/str (sent as is) or a dict (JSON
    text, but the Content-Type is only what headers say). Returns (status, headers, bytes)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    hdrs = dict(headers or {})
    if host is not None:
        hdrs["Host"] = host
    conn = http.client.HTTPConnection("127.0.0.1", cap.http_port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def own_origin(cap):
    return f"http://127.0.0.1:{cap.http_port}"


JSON = {"Content-Type": "application/json"}


def wait_for(fn, what, timeout=POLL):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.03)


def capture_one(cap, subject):
    with cap.smtp() as c:
        c.send_message("app@example.org", ["user@example.test"],
                       make_message(subject, frm="app@example.org", to="user@example.test",
                                    body=f"reset link for {subject}\r\n"))

    def find():
        st, _, data = req(cap, "GET", "/api/v1/messages")
        assert st == 200, data
        return next((m for m in json.loads(data)["messages"] if m["Subject"] == subject), None)
    return wait_for(find, f"captured message {subject!r}")["ID"]


def assert_json_error(status, headers, data, want):
    assert status == want, f"want {want}, got {status}: {data[:300]!r}"
    assert "application/json" in headers.get("content-type", ""), headers
    err = json.loads(data).get("Error")
    assert err, data
    return err


def released(cap):
    return cap.log().count("event=released ")


def relay_capture(factory, sink, **capture_keys):
    conf = {"relayhost": {"via": f"smtp://127.0.0.1:{sink.port}", "tls": "none"}}
    if capture_keys:
        conf["capture"] = capture_keys
    return factory(conf)


def release_marker_and_wait(cap, sink, mid):
    """A legitimate release (JSON, same-origin Origin) to a marker address, waited for: if a
    refused request had queued a release, it was queued before this one. Returns every
    recipient the sink saw."""
    st, h, data = req(cap, "POST", f"/api/v1/message/{mid}/release",
                      {"To": ["marker@relay.example"]},
                      headers=dict(JSON, Origin=own_origin(cap)))
    assert st == 200, data
    got = sink.wait(1, timeout=POLL)
    assert got, f"the legitimate release never reached the sink\n{cap.log_tail()}"
    return [r for (_, rcpts, _) in sink.messages for r in rcpts]


# --------------------------------------------------------------------------
# Cross-site requests.


def test_foreign_origin_post_does_not_release(capture_factory, smtp_sink):
    """The review's attack: a page on another site POSTs a release of a captured password-reset
    mail to the attacker's address."""
    cap = relay_capture(capture_factory, smtp_sink)
    mid = capture_one(cap, "password reset")
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{cap.http_port + 1}",
                   f"https://evil.example:{cap.http_port}"):
        st, h, data = req(cap, "POST", f"/api/v1/message/{mid}/release",
                          {"To": ["attacker@evil.example"]}, headers=dict(JSON, Origin=origin))
        err = assert_json_error(st, h, data, 403)
        assert "origin" in err.lower(), err
    # a text/plain "simple request" (what a cross-site form or fetch without preflight sends)
    st, h, data = req(cap, "POST", f"/api/v1/message/{mid}/release",
                      json.dumps({"To": ["attacker@evil.example"]}),
                      headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert st in (403, 415), data
    assert released(cap) == 0
    rcpts = release_marker_and_wait(cap, smtp_sink, mid)
    assert rcpts == ["marker@relay.example"], f"the sink got {rcpts}"
    assert released(cap) == 1


def test_non_json_body_is_refused_with_415(capture_factory, smtp_sink):
    cap = relay_capture(capture_factory, smtp_sink)
    mid = capture_one(cap, "text plain")
    body = json.dumps({"To": ["attacker@evil.example"]})
    for ctype in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": ctype} if ctype else {}
        # no Origin (a non-browser client) and a same-origin one: the type alone decides
        for extra in ({}, {"Origin": own_origin(cap)}):
            st, h, data = req(cap, "POST", f"/api/v1/message/{mid}/release", body,
                              headers=dict(headers, **extra))
            err = assert_json_error(st, h, data, 415)
            assert "application/json" in err, err
    # other routes that take a body
    st, h, data = req(cap, "PUT", "/api/v1/messages", json.dumps({"Read": True}),
                      headers={"Content-Type": "text/plain"})
    assert_json_error(st, h, data, 415)
    st, h, data = req(cap, "POST", "/api/v1/send",
                      json.dumps({"From": {"Email": "a@b.example"},
                                  "To": [{"Email": "c@d.example"}], "Text": "x"}),
                      headers={"Content-Type": "text/plain"})
    assert_json_error(st, h, data, 415)
    st, _, data = req(cap, "DELETE", "/api/v1/messages", "{}",
                      headers={"Content-Type": "text/plain"})
    assert st == 415, data
    assert released(cap) == 0
    rcpts = release_marker_and_wait(cap, smtp_sink, mid)
    assert rcpts == ["marker@relay.example"], f"the sink got {rcpts}"
    # nothing was deleted either
    st, _, data = req(cap, "GET", "/api/v1/messages")
    assert json.loads(data)["total"] == 1


def test_json_with_parameters_and_no_origin_is_accepted(capture_factory, smtp_sink):
    """curl and API clients send no Origin; application/json may carry parameters."""
    cap = relay_capture(capture_factory, smtp_sink)
    mid = capture_one(cap, "api client")
    st, _, data = req(cap, "POST", f"/api/v1/message/{mid}/release",
                      {"To": ["api@relay.example"]},
                      headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert st == 200, data
    got = smtp_sink.wait(1, timeout=POLL)
    assert got and got[0][1] == ["api@relay.example"]
    # bodiless requests need no Content-Type (DELETE all, as Mailpit's clients send it)
    st, _, data = req(cap, "DELETE", "/api/v1/messages")
    assert st == 200, data
    st, _, data = req(cap, "GET", "/api/v1/messages")
    assert json.loads(data)["total"] == 0


def test_cross_site_fetch_metadata_without_origin_is_refused(capture):
    st, h, data = req(capture, "DELETE", "/api/v1/messages",
                      headers={"Sec-Fetch-Site": "cross-site"})
    assert_json_error(st, h, data, 403)
    st, _, data = req(capture, "DELETE", "/api/v1/messages",
                      headers={"Sec-Fetch-Site": "same-origin"})
    assert st == 200, data


def test_get_is_not_origin_checked(capture):
    """Reads are protected by the browser's same-origin policy and the Host check; a GET
    with a foreign Origin (an <img>, a link) still gets its answer."""
    st, _, data = req(capture, "GET", "/api/v1/messages", headers={"Origin": "http://x.example"})
    assert st == 200, data


def test_capture_does_not_serve_the_serve_admin_ui(capture):
    """web/ui/ is tern serve's admin UI; the embedded files are shared, but capture mode
    must not hand them out (they talk to routes capture mode does not have)."""
    st, _, _ = req(capture, "GET", "/ui/app.js")
    assert st == 404
    st, _, _ = req(capture, "GET", "/ui/login.html")
    assert st == 404
    st, _, data = req(capture, "GET", "/assets/app.js")
    assert st == 200 and data


# --------------------------------------------------------------------------
# Host (DNS rebinding).


@pytest.mark.parametrize("path", ["/api/v1/messages", "/", "/api/events", "/view/latest.txt",
                                  "/api/v1/info"])
def test_rebinding_host_is_refused(capture, path):
    """A DNS-rebinding page reaches 127.0.0.1 with its own name in Host."""
    capture_one(capture, "secret")
    for host in (f"rebind.evil.example:{capture.http_port}", "rebind.evil.example",
                 f"localhost.evil.example:{capture.http_port}"):
        st, h, data = req(capture, "GET", path, host=host)
        err = assert_json_error(st, h, data, 403)
        assert "host" in err.lower() and "http_allowed_hosts" in err, err
        assert b"secret" not in data


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}", "localhost", "127.0.0.1", "app.localhost:{port}",
                                  "10.1.2.3:{port}", "[2001:db8::1]:{port}"])
def test_own_host_names_are_accepted(capture, host):
    st, _, data = req(capture, "GET", "/api/v1/messages",
                      host=host.format(port=capture.http_port))
    assert st == 200, data


def test_missing_or_malformed_host_is_refused(capture):
    s = socket.create_connection(("127.0.0.1", capture.http_port), timeout=POLL)
    try:
        s.sendall(b"GET /api/v1/messages HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    for host in ("evil.example@127.0.0.1", "127.0.0.1:80:80", "[::1", "a b"):
        st, _, data = req(capture, "GET", "/api/v1/messages", host=host)
        assert st in (400, 403), (host, st, data)


def test_configured_allowed_host_is_accepted(capture_factory, smtp_sink):
    cap = relay_capture(capture_factory, smtp_sink,
                        http_allowed_hosts=["mail.dev.example", ".preview.example"])
    mid = capture_one(cap, "allowed host")
    for host in ("mail.dev.example", f"MAIL.dev.example:{cap.http_port}", "preview.example",
                 "pr-12.preview.example"):
        st, _, data = req(cap, "GET", "/api/v1/messages", host=host)
        assert st == 200, (host, data)
    for host in ("dev.example", "other.example", "xpreview.example"):
        st, h, data = req(cap, "GET", "/api/v1/messages", host=host)
        assert_json_error(st, h, data, 403)
    # the UI served through that name: its fetches carry that origin
    host = f"mail.dev.example:{cap.http_port}"
    st, _, data = req(cap, "POST", f"/api/v1/message/{mid}/release",
                      {"To": ["ui@relay.example"]}, host=host,
                      headers=dict(JSON, Origin=f"http://{host}"))
    assert st == 200, data
    # a proxy terminating TLS on the default port
    st, _, data = req(cap, "PUT", "/api/v1/messages", {"Read": True}, host="mail.dev.example",
                      headers=dict(JSON, Origin="https://mail.dev.example"))
    assert st == 200, data
    # the Origin must name the same host as the Host header
    st, h, data = req(cap, "PUT", "/api/v1/messages", {"Read": False}, host="mail.dev.example",
                      headers=dict(JSON, Origin=own_origin(cap)))
    assert_json_error(st, h, data, 403)
    got = smtp_sink.wait(1, timeout=POLL)
    assert got and got[0][1] == ["ui@relay.example"]


def test_allowed_hosts_follow_a_reload(capture_factory):
    cap = capture_factory({"capture": {"http_allowed_hosts": ["a.example"]}})
    assert req(cap, "GET", "/api/v1/info", host="a.example")[0] == 200
    assert req(cap, "GET", "/api/v1/info", host="b.example")[0] == 403
    text = cap.config_path.read_text().replace('"a.example"', '"b.example"')
    cap.config_path.write_text(text)
    cap.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: req(cap, "GET", "/api/v1/info", host="b.example")[0] == 200,
             "b.example allowed after SIGHUP")
    assert req(cap, "GET", "/api/v1/info", host="a.example")[0] == 403


def test_wildcard_allows_any_host_but_not_foreign_origins(capture_factory):
    cap = capture_factory({"capture": {"http_allowed_hosts": ["*"]}})
    st, _, data = req(cap, "GET", "/api/v1/messages", host="anything.example")
    assert st == 200, data
    st, h, data = req(cap, "DELETE", "/api/v1/messages", host="anything.example",
                      headers={"Origin": "http://evil.example"})
    assert_json_error(st, h, data, 403)
    st, _, data = req(cap, "DELETE", "/api/v1/messages", host="anything.example",
                      headers={"Origin": "http://anything.example"})
    assert st == 200, data


# --------------------------------------------------------------------------
# Bounds: body size and connections.


def send_body(size):
    """A Mailpit /api/v1/send request of about size bytes (one attachment)."""
    raw = b"\0" * max(1, (size * 3) // 4 - 300)
    import base64
    return {"From": {"Email": "app@example.org"}, "To": [{"Email": "user@example.test"}],
            "Subject": f"attachment {size}", "Text": "see attachment",
            "Attachments": [{"Filename": "blob.bin", "Content": base64.b64encode(raw).decode()}]}


def test_body_over_the_cap_gets_413(capture_factory):
    cap = capture_factory({"capture": {"http_max_body": Raw("64k")}})
    small = send_body(40 * 1024)
    st, _, data = req(cap, "POST", "/api/v1/send", small, headers=JSON)
    assert st == 200, data
    big = send_body(200 * 1024)
    st, _, data = req(cap, "POST", "/api/v1/send", big, headers=JSON)
    assert st == 413, (st, data[:300])
    # a client that only announces a huge body gets its answer before sending it
    s = socket.create_connection(("127.0.0.1", cap.http_port), timeout=POLL)
    try:
        s.sendall(b"POST /api/v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{")
        head = s.recv(4096)
    finally:
        s.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    st, _, data = req(cap, "GET", "/api/v1/messages")
    assert json.loads(data)["total"] == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing (apt-get install curl)")
def test_curl_sees_the_same_rules(capture_factory, smtp_sink, tmp_path):
    cap = relay_capture(capture_factory, smtp_sink, http_max_body=Raw("64k"))
    mid = capture_one(cap, "curl")
    base = f"http://127.0.0.1:{cap.http_port}"

    def curl(*args):
        r = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
                           capture_output=True, text=True, timeout=POLL * 2)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    url = f"{base}/api/v1/message/{mid}/release"
    code, body = curl("-X", "POST", "-H", "Origin: http://evil.example", "-H",
                      "Content-Type: application/json", "--data", '{"To":["x@evil.example"]}', url)
    assert code == 403, body
    code, body = curl("-X", "POST", "--data", '{"To":["x@evil.example"]}', url)  # form type
    assert code == 415, body
    code, body = curl("-H", "Host: rebind.evil.example", f"{base}/api/v1/messages")
    assert code == 403, body
    big = tmp_path / "big.json"
    big.write_text(json.dumps(send_body(300 * 1024)))
    code, body = curl("-X", "POST", "-H", "Content-Type: application/json",
                      "--data-binary", f"@{big}", f"{base}/api/v1/send")
    assert code == 413, body
    code, body = curl("-X", "POST", "-H", "Content-Type: application/json", "--data",
                      '{"To":["curl@relay.example"]}', url)
    assert code == 200, body
    got = smtp_sink.wait(1, timeout=POLL)
    assert [r for (_, rc, _) in got for r in rc] == ["curl@relay.example"]


def open_keepalive(cap):
    """A connection the server has certainly accepted: one request answered, kept open."""
    conn = http.client.HTTPConnection("127.0.0.1", cap.http_port, timeout=POLL)
    conn.request("GET", "/api/v1/info")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    return conn


def refused(cap):
    """True if a new connection is turned away (503, or closed without an answer)."""
    s = socket.create_connection(("127.0.0.1", cap.http_port), timeout=POLL)
    try:
        s.sendall(b"GET /api/v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = s.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.close()
    if head.startswith(b"HTTP/1.1 200"):
        return False
    assert head == b"" or head.startswith(b"HTTP/1.1 503"), head[:200]
    return True


def test_connection_cap(capture_factory):
    cap = capture_factory({"capture": {"http_max_connections": 4}})
    held = [open_keepalive(cap) for _ in range(4)]
    try:
        assert refused(cap), "a fifth connection was served with http_max_connections = 4"
        # an event stream counts too; the held ones still work
        held[0].request("GET", "/api/v1/messages")
        r = held[0].getresponse()
        r.read()
        assert r.status == 200
        held.pop().close()
        # the freed slot is usable again (the close is seen asynchronously)
        wait_for(lambda: not refused(cap), "a connection after one was closed")
    finally:
        for c in held:
            c.close()
    assert "event=http_refused" in cap.log() and "too_many_connections" in cap.log()


def test_connection_count_survives_every_way_of_closing(capture_factory):
    """Each way a connection can end gives its slot back: otherwise the cap would fill up
    with connections long gone and lock everyone out."""
    cap = capture_factory({"capture": {"http_max_connections": 3}})
    port = cap.http_port
    for i in range(12):
        # served and closed by the client (keep-alive)
        open_keepalive(cap).close()
        # Connection: close, answered and closed by the server
        st, _, _ = req(cap, "GET", "/api/v1/info", headers={"Connection": "close"})
        assert st == 200
        # closed by the client in the middle of a request, and before sending anything
        s = socket.create_connection(("127.0.0.1", port), timeout=POLL)
        s.sendall(b"POST /api/v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n")
        s.close()
        socket.create_connection(("127.0.0.1", port), timeout=POLL).close()
        # refused by the guard, and a body over the bound
        st, _, _ = req(cap, "GET", "/api/v1/info", host="evil.example")
        assert st == 403
        # an event stream, dropped by the client
        s = socket.create_connection(("127.0.0.1", port), timeout=POLL)
        s.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.close()

    def three_fit():
        held = []
        try:
            for _ in range(3):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=POLL)
                conn.request("GET", "/api/v1/info")
                r = conn.getresponse()
                r.read()
                held.append(conn)
                if r.status != 200:
                    return False
            return True
        except OSError:
            return False
        finally:
            for c in held:
                c.close()
    wait_for(three_fit, "three concurrent connections after 96 closed ones")


def test_default_limits_are_printed(tmp_path):
    from conftest import tern_bin
    r = subprocess.run([tern_bin(), "check-config"], capture_output=True, text=True,
                       timeout=POLL)
    assert r.returncode == 0, r.stderr
    assert "http_max_connections = 256;" in r.stdout, r.stdout
    assert "http_max_body = 64m;" in r.stdout, r.stdout
    assert "http_allowed_hosts = [];" in r.stdout, r.stdout
