"""
test_tracking.py — open and click tracking of API mail (issue 13 items 3 and 7): a native send
with "track": {"opens": true, "clicks": true} reaches the MX with its HTML links turned into
signed BASE/t/c/TOKEN redirects and a pixel BASE/t/o/TOKEN before </body>, the text part
untouched and the DKIM signature (made after the rewrite) valid; the pixel answers a GIF and
records an `opened` event, a link answers 302 to the original URL and records `clicked`; a
tampered token (a byte changed, or another URL under the old MAC) is a 404 with no Location
and no event; without "track" nothing changes; without tracking.base_url a send asking for it
is refused with 422 tracking_unavailable.

The world: tern relays mail for remote.test to a fake MX (aiosmtpd) on 127.0.0.1; the API
listens on 127.0.0.1 and is its own tracking base_url.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import base64
import email
import email.policy
import http.client
import json
import re
import shutil
import subprocess
import time
import urllib.parse

import pytest

from conftest import Raw, free_port, make_tmpdir, start_on_free_port, tern_bin
from test_api import Api, create_key, wait_ready_http
from test_suppress import FakeMX

pytest.importorskip("aiosmtpd")  # python3-aiosmtpd, in scripts/install-deps

DEADLINE = 20.0
SENDER = "news@example.test"
HTML = ('<html><body><p>Hello <a href="https://shop.example/sale?a=1&amp;b=2">sale</a>, '
        '<a href="mailto:help@example.test">help</a>, <a href="#top">top</a>.</p>'
        '</body></html>')
TEXT = "Hello, see https://shop.example/sale?a=1&b=2\n"


@pytest.fixture
def mx():
    m = FakeMX()
    yield m
    m.stop()


def start(tern_factory, mx, tracking=True, dkim_dir=None):
    port = free_port()
    conf = {
        "listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
        "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}", "tls": "none"}},
        "delivery": {"retry_base": 1, "retry_max": 2},
    }
    if tracking:
        conf["tracking"] = {"base_url": f"http://127.0.0.1:{port}/"}
    if dkim_dir:
        conf["dkim"] = {"keys": Raw(f'[{{ domain = "example.test"; selector = "s1"; '
                                    f'key_file = "{dkim_dir / "example.test.s1.key"}"; }}]')}
    t = tern_factory(conf, start=False)
    tok = create_key(t, "app", "--from-domain", "example.test")
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    a.tok = tok
    return a


def send(api, to, **extra):
    msg = {"from": f"News <{SENDER}>", "to": to, "subject": "hello", "text": TEXT,
           "html": HTML, **extra}
    return api.json("POST", "/api/v1/messages", msg, api.tok)


def parts(content):
    m = email.message_from_bytes(content, policy=email.policy.default)
    html = m.get_body(preferencelist=("html",)).get_content()
    plain = m.get_body(preferencelist=("plain",))
    text = plain.get_content() if plain is not None else None
    return m, html, text


def get(api, path):
    """One GET that does not follow redirects: (status, headers, body)."""
    c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()


def events(t, kind):
    r = t.cli("events", "tail", "--json", "--limit", "1000", "--type", kind, check=True)
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def wait_events(t, kind, n):
    deadline = time.monotonic() + DEADLINE
    while True:
        ev = events(t, kind)
        if len(ev) >= n:
            return ev
        if time.monotonic() > deadline:
            pytest.fail(f"no {n} {kind} events: {ev}\n{t.log_tail()}")
        time.sleep(0.1)


def test_opens_and_clicks_end_to_end(tern_factory, mx):
    api = start(tern_factory, mx)
    rcpt = "reader@remote.test"
    st, body = send(api, rcpt, track={"opens": True, "clicks": True})
    assert st == 202, body
    qid = body["id"]
    _, html, text = parts(mx.wait_message(rcpt, api.t)["content"])
    assert text.replace("\r\n", "\n") == TEXT  # the text part is left alone
    base = f"http://127.0.0.1:{api.port}"
    clicks = re.findall(r'href="(' + re.escape(base) + r'/t/c/[^"]+)"', html)
    assert len(clicks) == 1, html
    assert "shop.example" not in html
    assert 'href="mailto:help@example.test"' in html and 'href="#top"' in html
    pixel = re.findall(r'<img src="(' + re.escape(base) + r'/t/o/[^"]+)" width="1" height="1" '
                       r'alt="">\s*</body>', html)
    assert len(pixel) == 1, html

    st, hd, data = get(api, urllib.parse.urlsplit(pixel[0]).path)
    assert st == 200 and hd["Content-Type"] == "image/gif" and len(data) == 43
    assert data.startswith(b"GIF89a") and hd["Cache-Control"] == "no-store"
    ev = wait_events(api.t, "opened", 1)
    assert ev[0]["queue_id"] == qid and ev[0]["recipient"] == rcpt, ev

    st, hd, _ = get(api, urllib.parse.urlsplit(clicks[0]).path)
    assert st == 302 and hd["Location"] == "https://shop.example/sale?a=1&b=2"
    ev = wait_events(api.t, "clicked", 1)
    assert ev[0]["queue_id"] == qid and ev[0]["recipient"] == rcpt, ev
    assert "https://shop.example/sale?a=1&b=2" in json.dumps(ev[0]), ev


def test_tampered_tokens_are_404_without_redirect_or_event(tern_factory, mx):
    api = start(tern_factory, mx)
    rcpt = "victim@remote.test"
    st, body = send(api, rcpt, track={"clicks": True})
    assert st == 202, body
    _, html, _ = parts(mx.wait_message(rcpt, api.t)["content"])
    assert "/t/o/" not in html  # opens not asked: no pixel
    path = urllib.parse.urlsplit(re.search(r'href="([^"]*/t/c/[^"]+)"', html).group(1)).path
    tok = path.rsplit("/", 1)[1]
    payload, mac = tok.split(".")
    # the same message and recipient, another URL, under the old MAC
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    evil = raw.replace(b"https://shop.example/sale?a=1&b=2", b"https://evil.example/")
    evil_tok = base64.urlsafe_b64encode(evil).rstrip(b"=").decode() + "." + mac
    flip = "B" if tok[5] != "B" else "C"
    bad = ["/t/c/" + tok[:5] + flip + tok[6:],  # one byte changed
           "/t/c/" + evil_tok,
           "/t/c/" + payload + "." + "A" * len(mac),
           "/t/o/" + tok,  # a click token is no pixel token
           "/t/c/" + tok + "x",
           "/t/c/"]
    for p in bad:
        st, hd, _ = get(api, p)
        assert st == 404 and hd.get("Location") is None, (p, st)
    # the genuine one still works, so the ones above were refused for their tampering
    st, hd, _ = get(api, path)
    assert st == 302 and hd["Location"] == "https://shop.example/sale?a=1&b=2"
    wait_events(api.t, "clicked", 1)
    assert len(events(api.t, "clicked")) == 1 and events(api.t, "opened") == []


def test_several_recipients_share_tokens_that_name_none(tern_factory, mx):
    """The tokens name one recipient only when the message has one (documented)."""
    api = start(tern_factory, mx)
    st, body = send(api, ["a@remote.test", "b@remote.test"], track={"opens": True})
    assert st == 202, body
    _, html, _ = parts(mx.wait_message("a@remote.test", api.t)["content"])
    pixel = re.search(r'<img src="http://[^"/]+(/t/o/[^"]+)"', html).group(1)
    st, _, _ = get(api, pixel)
    assert st == 200
    ev = wait_events(api.t, "opened", 1)
    assert ev[0]["queue_id"] == body["id"] and not ev[0]["recipient"], ev


def test_a_batch_tracks_each_message_for_its_recipient(tern_factory, mx):
    """One message per recipient in one batch request: each pixel names its own reader."""
    api = start(tern_factory, mx)
    msg = lambda to: {"from": SENDER, "to": to, "subject": "s", "html": HTML,
                      "track": {"opens": True}}
    st, body = api.json("POST", "/api/v1/messages/batch",
                        {"messages": [msg("p@remote.test"), msg("q@remote.test"),
                                      dict(msg("r@remote.test"), track={"opens": 1})]},
                        api.tok)
    assert st == 200 and body["accepted"] == 2 and body["rejected"] == 1, body
    assert body["results"][2]["error"]["field"] == "track", body
    for rcpt in ("p@remote.test", "q@remote.test"):
        _, html, _ = parts(mx.wait_message(rcpt, api.t)["content"])
        st, _, _ = get(api, re.search(r'<img src="http://[^"/]+(/t/o/[^"]+)"', html).group(1))
        assert st == 200
    ev = wait_events(api.t, "opened", 2)
    assert sorted(e["recipient"] for e in ev) == ["p@remote.test", "q@remote.test"], ev
    assert mx.offered("r@remote.test") == 0


def test_without_track_nothing_is_rewritten(tern_factory, mx):
    api = start(tern_factory, mx)
    rcpt = "plain@remote.test"
    st, body = send(api, rcpt)
    assert st == 202, body
    _, html, text = parts(mx.wait_message(rcpt, api.t)["content"])
    assert html.strip() == HTML and text.replace("\r\n", "\n") == TEXT
    st, body = send(api, "x@remote.test", track={"opens": "yes"})
    assert st == 422 and body["error"]["field"] == "track", body


def test_track_without_base_url_is_refused(tern_factory, mx):
    api = start(tern_factory, mx, tracking=False)
    before = api.t.queue_list()
    st, body = send(api, "x@remote.test", track={"opens": True})
    assert st == 422 and body["error"]["code"] == "tracking_unavailable", body
    assert api.t.queue_list() == before and mx.offered("x@remote.test") == 0
    # not asking (or asking for nothing) still sends
    st, body = send(api, "y@remote.test", track={"opens": False, "clicks": False})
    assert st == 202, body


def test_rewritten_html_is_inside_the_dkim_signature(tern_factory, mx):
    dkim = pytest.importorskip("dkim")  # python3-dkim, in scripts/install-deps
    d = make_tmpdir("tern-track-dkim-")
    r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test", "s1", "--type", "rsa"],
                       cwd=d, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    api = start(tern_factory, mx, dkim_dir=d)
    rcpt = "signed@remote.test"
    st, body = send(api, rcpt, track={"opens": True, "clicks": True})
    assert st == 202, body
    got = mx.wait_message(rcpt, api.t)["content"]
    _, html, _ = parts(got)
    assert "/t/c/" in html and "/t/o/" in html
    txt = "".join(re.findall(r'"([^"]*)"', api.t.cli("dkim", "dns", check=True).stdout))
    assert dkim.DKIM(got).verify(dnsfunc=lambda name, timeout=5: txt.encode())
    shutil.rmtree(d, ignore_errors=True)
