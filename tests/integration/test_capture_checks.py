"""
test_capture_checks.py — the message checks of `tern capture` (issue 14 item 1): html-check
against caniemail.com's data (the copy in third_party/caniemail/), link-check against a loopback
HTTP server answering 200 / 404 / redirect / too slowly, sa-check against Debian's rspamd and a
stand-in spamd, and List-Unsubscribe in the message JSON; every answer in Mailpit's shape
(tests/data/mailpit-api/swagger.json).

Never: reach beyond 127.0.0.1, wait without a bound, or signal a process it did not start.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from capture_harness import (capture, capture_factory, check_definition, quote,  # noqa: F401
                             response_schema, check_shape)
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CANIEMAIL = ROOT / "third_party" / "caniemail" / "caniemail.json"
POLL = 10.0


def japi(cap, path, status=200, route=None, query=None):
    r = cap.request("GET", path, query=query)
    assert r.status == status, f"GET {path}: {r!r}"
    v = r.json()
    if route:
        schema = response_schema("GET", route, status)
        assert schema, route
        check_shape(v, schema, f"GET {route}")
    return v


def send(cap, raw, frm="sender@example.org", to="alice@example.test"):
    with cap.smtp() as c:
        c.send_message(frm, [to], raw)
    deadline = time.monotonic() + POLL
    subject = next(l for l in raw.split(b"\r\n") if l.lower().startswith(b"subject:"))
    subject = subject.split(b":", 1)[1].strip().decode()
    while time.monotonic() < deadline:
        for m in japi(cap, "/api/v1/messages")["messages"]:
            if m["Subject"] == subject:
                return m["ID"]
        time.sleep(0.03)
    pytest.fail(f"message {subject!r} not listed within {POLL}s")


def html_message(subject, html, extra=b""):
    return (b"From: Sender <sender@example.org>\r\nTo: alice@example.test\r\n"
            b"Subject: " + subject.encode() + b"\r\nMIME-Version: 1.0\r\n" + extra +
            b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n")


# --------------------------------------------------------------------------
# html-check


def caniemail_feature(slug):
    data = json.loads(CANIEMAIL.read_text(encoding="utf-8"))
    return next(f for f in data["data"] if f["slug"] == slug), data["nicenames"]


def expected_score(feature):
    y = n = p = 0
    for plats in feature["stats"].values():
        for vers in plats.values():
            for s in vers.values():
                if s.startswith("y"):
                    y += 1
                elif s.startswith("n"):
                    n += 1
                else:
                    p += 1
    t = y + n + p
    return 100 * y / t, 100 * p / t, 100 * n / t


def support_word(s):
    return {"y": "yes", "n": "no"}.get(s[0], "partial")


FLEX_HTML = ("<html><head><style>.row { display: flex; }</style></head><body>"
             "<div class=\"row\">a</div><div style=\"DISPLAY : flex\">b</div>"
             "<p style=\"color: red\">c</p></body></html>")


def test_html_check_flexbox_and_style_get_caniemail_verdicts(capture):
    mid = send(capture, html_message("flex and style", FLEX_HTML))
    r = japi(capture, f"/api/v1/message/{quote(mid)}/html-check",
             route="/api/v1/message/{ID}/html-check")
    by = {w["Slug"]: w for w in r["Warnings"]}
    # <style>, display:flex on both divs (one from the <style> rule), display itself, </body>
    assert {"html-style", "css-display-flex", "css-display", "html-body"} <= set(by), sorted(by)
    assert by["css-display-flex"]["Score"]["Found"] == 2
    assert by["html-style"]["Score"]["Found"] == 1
    for slug in ("css-display-flex", "html-style"):
        feat, nice = caniemail_feature(slug)
        w = by[slug]
        assert w["Title"] == feat["title"] and w["URL"] == feat["url"]
        sup, par, uns = expected_score(feat)
        assert w["Score"]["Supported"] == pytest.approx(sup, abs=0.01)
        assert w["Score"]["Partial"] == pytest.approx(par, abs=0.01)
        assert w["Score"]["Unsupported"] == pytest.approx(uns, abs=0.01)
        # each client version's verdict, e.g. Gmail and Outlook on Windows
        got = {(x["Family"], x["Platform"], x["Version"]): x for x in w["Results"]}
        want = {(fam, plat, ver): s for fam, plats in feat["stats"].items()
                for plat, vers in plats.items() for ver, s in vers.items()}
        assert set(got) == set(want)
        for k, s in want.items():
            assert got[k]["Support"] == support_word(s), (slug, k, s)
            assert got[k]["Name"] == f"{nice['family'][k[0]]} {nice['platform'][k[1]]} ({k[2]})"
        gmail = [k for k in want if k[0] == "gmail"]
        outlook_win = [k for k in want if k[:2] == ("outlook", "windows")]
        assert gmail and outlook_win
    # caniemail says: Outlook on Windows renders no flexbox, Gmail's webmail does
    flex = {(x["Family"], x["Platform"]): x["Support"] for x in by["css-display-flex"]["Results"]}
    assert flex[("outlook", "windows")] == "no"
    assert flex[("gmail", "desktop-webmail")] == "yes"
    # the totals as Mailpit computes them: the largest weighted share of each kind
    nodes = r["Total"]["Nodes"]
    assert nodes == 5  # body, style, div, div, p (html/head/meta are not counted)
    un = max(w["Score"]["Unsupported"] * w["Score"]["Found"] / nodes for w in r["Warnings"])
    pa = max(w["Score"]["Partial"] * w["Score"]["Found"] / nodes for w in r["Warnings"])
    assert r["Total"]["Unsupported"] == pytest.approx(un, abs=0.01)
    assert r["Total"]["Partial"] == pytest.approx(pa, abs=0.01)
    assert r["Total"]["Supported"] == pytest.approx(100 - un - pa, abs=0.01)
    assert r["Total"]["Tests"] > 100
    # worst first
    weights = [(w["Score"]["Unsupported"] + w["Score"]["Partial"]) * w["Score"]["Found"]
               for w in r["Warnings"]]
    assert weights == sorted(weights, reverse=True)
    assert "Gmail" in r["Platforms"]["desktop-webmail"]
    assert r["Platforms"]["windows"] == sorted(r["Platforms"]["windows"])


def test_html_check_of_a_message_without_html_is_400_as_in_mailpit(capture):
    raw = (b"From: sender@example.org\r\nTo: alice@example.test\r\nSubject: plain only\r\n\r\n"
           b"no html here\r\n")
    mid = send(capture, raw)
    r = capture.request("GET", f"/api/v1/message/{quote(mid)}/html-check")
    assert r.status == 400 and r.text.strip() == "message does not contain HTML", r


def test_html_check_plain_html_has_nothing_to_warn(capture):
    mid = send(capture, html_message("bare html", "<p>hello</p><p>there</p>"))
    r = japi(capture, f"/api/v1/message/{quote(mid)}/html-check",
             route="/api/v1/message/{ID}/html-check")
    assert r["Warnings"] == [] and r["Total"]["Nodes"] == 2
    assert r["Total"]["Supported"] == 100


def test_html_check_unknown_message_is_404(capture):
    r = capture.request("GET", "/api/v1/message/nosuchid/html-check")
    assert r.status == 404


# --------------------------------------------------------------------------
# link-check


class LinkServer:
    """A loopback HTTP server: /ok 200, /missing 404, /moved 302 -> /ok, /nohead 405 on HEAD
    and 200 on GET, /slow answers after the checker gave up (bounded by `release`)."""

    def __init__(self):
        release = self.release = threading.Event()
        seen = self.seen = []

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, body):
                seen.append((self.command, self.path))
                if self.path == "/ok":
                    code = 200
                elif self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/ok")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                elif self.path == "/nohead":
                    code = 405 if self.command == "HEAD" else 200
                elif self.path == "/slow":
                    release.wait(30)
                    code = 200
                else:
                    code = 404
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                if body:
                    try:
                        self.wfile.write(b"ok")
                    except OSError:
                        pass

            def do_GET(self):
                self.answer(True)

            def do_HEAD(self):
                self.answer(False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def links():
    s = LinkServer()
    yield s
    s.close()


def test_link_check_reports_each_links_status(capture, links):
    html = (f'<html><body><a href="{links.url("/ok")}">ok</a>'
            f'<a href="{links.url("/missing")}">missing</a>'
            f'<a href="{links.url("/nohead")}">nohead</a>'
            f'<a href="{links.url("/moved")}">moved</a>'
            f'<img src="{links.url("/slow")}">'
            f'<a href="mailto:x@example.org">mail</a><a href="ftp://127.0.0.1/x">ftp</a>'
            f'<a href="{links.url("/ok")}">again</a></body></html>')
    raw = (b"From: sender@example.org\r\nTo: alice@example.test\r\nSubject: links\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsee " + links.url("/missing").encode() +
           b" and (" + links.url("/text-only").encode() + b").\r\n"
           b"--b\r\nContent-Type: text/html\r\n\r\n" + html.encode() + b"\r\n--b--\r\n")
    mid = send(capture, raw)
    r = japi(capture, f"/api/v1/message/{quote(mid)}/link-check",
             route="/api/v1/message/{ID}/link-check")
    got = {l["URL"]: (l["StatusCode"], l["Status"]) for l in r["Links"]}
    # each http(s) link once, mailto: and ftp: not asked
    assert set(got) == {links.url(p) for p in
                        ("/ok", "/missing", "/nohead", "/moved", "/slow", "/text-only")}
    assert got[links.url("/ok")] == (200, "OK")
    assert got[links.url("/missing")] == (404, "Not Found")
    assert got[links.url("/text-only")] == (404, "Not Found")
    assert got[links.url("/nohead")] == (200, "OK")  # HEAD refused, GET answers
    assert got[links.url("/moved")] == (302, "Found")  # not followed unless asked
    slow_code, slow_status = got[links.url("/slow")]
    assert slow_code == 0 and slow_status, got  # timed out: no status, a reason
    assert r["Errors"] == 3  # missing, text-only, slow
    assert ("HEAD", "/nohead") in links.seen and ("GET", "/nohead") in links.seen
    # follow=true follows the redirect
    links.release.set()
    r = japi(capture, f"/api/v1/message/{quote(mid)}/link-check", query={"follow": "true"})
    got = {l["URL"]: l["StatusCode"] for l in r["Links"]}
    assert got[links.url("/moved")] == 200


# --------------------------------------------------------------------------
# sa-check

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HAM = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\n"
       b"Subject: lunch tomorrow\r\nDate: Sun, 06 Dec 2026 03:00:00 +0000\r\n"
       b"Message-ID: <lunch-1@example.org>\r\n\r\nHello Bob,\r\nshall we meet at noon?\r\n"
       b"Alice\r\n")


def test_sa_check_without_a_scanner_is_400_as_in_mailpit(capture):
    mid = send(capture, HAM)
    r = capture.request("GET", f"/api/v1/message/{quote(mid)}/sa-check")
    assert r.status == 400 and r.text.strip() == "no SpamAssassin service defined", r
    assert japi(capture, "/api/v1/webui")["SpamAssassin"] is False


@pytest.fixture(scope="module")
def rspamd_http():
    """Debian's rspamd with only its normal worker, on a free loopback port (HTTP /checkv2)."""
    exe = shutil.which("rspamd") or "/usr/bin/rspamd"
    if not os.path.exists(exe) or not os.path.exists("/etc/rspamd/rspamd.conf"):
        pytest.fail("rspamd is not installed (scripts/install-deps installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="tern-rspamd-http-"))
    port = free_port()
    conf = tmp / "conf"
    for d in ("conf/local.d", "conf/override.d", "db", "run", "log"):
        (tmp / d).mkdir(parents=True)
    (conf / "override.d" / "worker-normal.inc").write_text(
        'bind_socket = "127.0.0.1:%d";\ncount = 1;\n' % port)
    (conf / "override.d" / "worker-proxy.inc").write_text("enabled = false;\n")
    (conf / "override.d" / "worker-controller.inc").write_text("enabled = false;\n")
    (conf / "local.d" / "options.inc").write_text(
        'dns { nameserver = ["127.0.0.1:%d"]; timeout = 1s; retransmits = 1; }\n'
        "enable_test_patterns = true;\n" % free_port())
    (conf / "local.d" / "logging.inc").write_text(
        'type = "file";\nfilename = "%s";\nlevel = "info";\n' % (tmp / "log" / "rspamd.log"))
    proc = subprocess.Popen(
        [exe, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf",
         "--var=LOCAL_CONFDIR=%s" % conf, "--var=DBDIR=%s" % (tmp / "db"),
         "--var=RUNDIR=%s" % (tmp / "run"), "--var=LOGDIR=%s" % (tmp / "log")],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr", "wb"))
    deadline = time.monotonic() + 180  # a bound: it takes ~30 s on a busy machine
    up = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            up = True
            break
        except OSError:
            time.sleep(0.2)
    if not up:
        proc.kill()
        proc.wait(10)
        log = tmp / "log" / "rspamd.log"
        pytest.fail("rspamd did not start: %s" % (log.read_text()[-2000:] if log.exists() else ""))
    yield port
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    shutil.rmtree(tmp, ignore_errors=True)


# rspamd compiles its TLD list at start (CPU-bound, ~30 s on a loaded machine): the tests
# that start one share an xdist group so that two never compile at once (conftest.py).
@pytest.mark.xdist_group("rspamd")
def test_sa_check_asks_rspamd(capture_factory, rspamd_http):
    cap = capture_factory({"capture": {"spam_check": f"rspamd:127.0.0.1:{rspamd_http}"}})
    assert japi(cap, "/api/v1/webui")["SpamAssassin"] is True
    spam = send(cap, HAM.replace(b"lunch tomorrow", b"gtube test")
                .replace(b"shall we meet at noon?", GTUBE))
    r = japi(cap, f"/api/v1/message/{quote(spam)}/sa-check",
             route="/api/v1/message/{ID}/sa-check")
    assert not r.get("Error"), r
    assert r["IsSpam"] is True and r["Score"] > 5, r
    names = [x["Name"] for x in r["Rules"]]
    assert "GTUBE" in names, names
    scores = [x["Score"] for x in r["Rules"]]
    assert scores == sorted(scores, reverse=True)
    assert all(round(s * 10) == s * 10 for s in scores + [r["Score"]])  # one decimal
    ham = send(cap, HAM)
    r = japi(cap, f"/api/v1/message/{quote(ham)}/sa-check")
    assert not r.get("Error"), r
    assert r["IsSpam"] is False and r["Score"] < 5 and r["Rules"], r


def test_sa_check_scanner_down_is_an_error_not_a_hang(capture_factory):
    cap = capture_factory({"capture": {"spam_check": f"rspamd:127.0.0.1:{free_port()}"}})
    mid = send(cap, HAM)
    r = japi(cap, f"/api/v1/message/{quote(mid)}/sa-check",
             route="/api/v1/message/{ID}/sa-check")
    assert "connect" in r["Error"] and r["IsSpam"] is False


SPAMD_REPORT = (
    "Spam detection software, running on the system \"test\",\r\n"
    "has identified this incoming email as possible spam.\r\n\r\n"
    "Content analysis details:   (6.1 points, 5.0 required)\r\n\r\n"
    " pts rule name              description\r\n"
    "---- ---------------------- --------------------------------------------------\r\n"
    " 5.0 TEST_RULE              A rule for the test, with a description that\r\n"
    "                            goes on\r\n"
    " 1.2 MISSING_MID            Missing Message-Id: header\r\n"
    "-0.1 DKIM_VALID             Message has at least one valid DKIM or DK signature\r\n"
    "\r\n")


class FakeSpamd:
    """Answers one REPORT the way spamd 3.4 does, and keeps what it was sent."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(POLL)
        self.port = self.sock.getsockname()[1]
        self.got = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        c.settimeout(POLL)
        data = b""
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        self.got.append(data)
        body = SPAMD_REPORT.encode()
        c.sendall(b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: True ; 6.1 / 5.0\r\n\r\n"
                  % len(body) + body)
        c.close()

    def close(self):
        self.sock.close()


def test_sa_check_speaks_spamc_to_spamd(capture_factory):
    spamd = FakeSpamd()
    try:
        cap = capture_factory({"capture": {"spam_check": f"spamassassin:127.0.0.1:{spamd.port}"}})
        mid = send(cap, HAM)
        r = japi(cap, f"/api/v1/message/{quote(mid)}/sa-check",
                 route="/api/v1/message/{ID}/sa-check")
    finally:
        spamd.close()
    req = spamd.got[0]
    head, _, body = req.partition(b"\r\n\r\n")
    assert head.startswith(b"REPORT SPAMC/1.5\r\n")
    assert b"Content-length: %d" % len(body) in head
    assert b"\r\nFrom: Alice" in body and body.endswith(b"shall we meet at noon?\r\nAlice\r\n")
    assert r["IsSpam"] is True and r["Score"] == pytest.approx(6.1)
    assert [(x["Name"], x["Score"]) for x in r["Rules"]] == [
        ("TEST_RULE", 5.0), ("MISSING_MID", 1.2), ("DKIM_VALID", -0.1)]
    assert r["Rules"][0]["Description"] == \
        "A rule for the test, with a description that goes on"


def test_spam_check_config_is_checked(capture_factory):
    cap = capture_factory({"capture": {"spam_check": "rspamd:nohostport"}}, start=False)
    p = subprocess.run([cap.bin, "check-config", "-c", str(cap.config_path)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "capture.spam_check" in (p.stdout + p.stderr), p


# --------------------------------------------------------------------------
# List-Unsubscribe


def test_list_unsubscribe_is_parsed(capture):
    mid = send(capture, html_message(
        "unsub", "<p>hi</p>",
        b"List-Unsubscribe: <mailto:leave@example.org?subject=unsub>,\r\n"
        b" <https://example.org/u?id=1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"))
    m = japi(capture, f"/api/v1/message/{quote(mid)}", route="/api/v1/message/{ID}")
    lu = m["ListUnsubscribe"]
    assert lu["Links"] == ["mailto:leave@example.org?subject=unsub", "https://example.org/u?id=1"]
    assert lu["HeaderPost"] == "List-Unsubscribe=One-Click"
    assert lu["Errors"] == ""


def test_mailpits_env_enables_spamassassin(capture_factory, monkeypatch):
    spamd = FakeSpamd()
    try:
        monkeypatch.setenv("MP_ENABLE_SPAMASSASSIN", f"127.0.0.1:{spamd.port}")
        cap = capture_factory()
        assert japi(cap, "/api/v1/webui")["SpamAssassin"] is True
        mid = send(cap, HAM)
        r = japi(cap, f"/api/v1/message/{quote(mid)}/sa-check",
                 route="/api/v1/message/{ID}/sa-check")
    finally:
        spamd.close()
    assert spamd.got and spamd.got[0].startswith(b"REPORT SPAMC/1.5\r\n")
    assert r["IsSpam"] is True and [x["Name"] for x in r["Rules"]][0] == "TEST_RULE"
