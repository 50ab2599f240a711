"""
test_capture_mime.py — `tern capture` reading classic hard MIME messages (issue 14 item 1):
parts served by /api/v1/message/{ID}/part/{PartID} exactly as they are in the raw message,
decoded only per their own Content-Transfer-Encoding (an attached message/rfc822 byte for byte,
CRLF kept, its Size counted on those bytes); the first text/plain of a multipart/alternative is
Text; a header block with two Content-Type fields is read by the first. Checked against Python's
email package reading the very bytes tern stored (GET .../raw), over tests/data/mime-hard/
(own messages and Apache mime4j's test messages; see its SOURCE.md).

Never: reach beyond 127.0.0.1 or wait without a bound.
"""

import email
import email.policy
import re
import time
from pathlib import Path

import pytest

from capture_harness import capture, capture_factory, quote  # noqa: F401

DATA = Path(__file__).resolve().parents[1] / "data" / "mime-hard"
POLL = 10.0


def send_file(cap, raw):
    # SMTP takes CRLF lines only (a bare LF is refused with 554 5.6.0): files with LF lines
    # are sent with CRLF; every comparison below reads the bytes tern stored back (GET raw)
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    before = {m["ID"] for m in cap.request("GET", "/api/v1/messages").json()["messages"]}
    with cap.smtp() as c:
        c.send_message("sender@example.org", ["alice@example.test"], raw)
    deadline = time.monotonic() + POLL
    while time.monotonic() < deadline:
        ids = [m["ID"] for m in cap.request("GET", "/api/v1/messages").json()["messages"]
               if m["ID"] not in before]
        if ids:
            return ids[0]
        time.sleep(0.03)
    pytest.fail(f"message not listed within {POLL}s")


def get(cap, path):
    r = cap.request("GET", path)
    assert r.status == 200, f"GET {path}: {r!r}"
    return r


def py_parts(msg):
    """{PartID: part} in Mailpit's numbering; message/rfc822 parts are leaves."""
    out = {}

    def walk(part, pid, top):
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            for i, sub in enumerate(part.get_payload(), 1):
                walk(sub, str(i) if top else f"{pid}.{i}", False)
        else:
            out[pid] = part

    walk(msg, "0", True)
    return out


def nl(s):
    return s.replace("\r\n", "\n").strip()


INNER = (b"From: Inner <inner@example.org>\r\nTo: alice@example.test\r\nSubject: inner one\r\n"
         b"Date: Sun, 06 Dec 2026 01:00:00 +0000\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: text/plain; charset=us-ascii\r\n\r\nLine one\r\nLine two\r\n\r\n")
INNER2 = b"From: Other <other@example.org>\r\nSubject: inner two\r\n\r\nSecond\r\nbody\r\n"


@pytest.mark.parametrize("name,part,want", [
    ("rfc822-attached.eml", "2", INNER),
    ("digest.eml", "2.1", INNER),
    ("digest.eml", "2.2", INNER2),
    ("forward-nested.eml", "2", INNER2),
])
def test_attached_message_is_served_as_sent(capture, name, part, want):
    mid = send_file(capture, (DATA / name).read_bytes())
    r = get(capture, f"/api/v1/message/{quote(mid)}/part/{part}")
    assert r.body == want, (r.body[:200], want[:200])
    m = get(capture, f"/api/v1/message/{quote(mid)}").json()
    listed = {p["PartID"]: p for p in m["Attachments"] + m["Inline"]}
    assert listed[part]["ContentType"] == "message/rfc822"
    assert listed[part]["Size"] == len(want)


def test_first_text_plain_of_an_alternative_is_the_text(capture):
    raw_file = (DATA / "alternative-two-plain.eml").read_bytes()
    mid = send_file(capture, raw_file)
    raw = get(capture, f"/api/v1/message/{quote(mid)}/raw").body
    py = email.message_from_bytes(raw, policy=email.policy.default)
    m = get(capture, f"/api/v1/message/{quote(mid)}").json()
    assert nl(m["Text"]) == nl(py.get_body(preferencelist=("plain",)).get_content())
    assert nl(m["Text"]) == "First plain version."
    assert nl(m["HTML"]) == nl(py.get_body(preferencelist=("html",)).get_content())


def test_two_content_types_the_first_wins(capture):
    mid = send_file(capture, (DATA / "two-content-types.eml").read_bytes())
    raw = get(capture, f"/api/v1/message/{quote(mid)}/raw").body
    py = email.message_from_bytes(raw, policy=email.policy.default)
    assert py.get_content_type() == "text/plain"
    m = get(capture, f"/api/v1/message/{quote(mid)}").json()
    assert nl(m["Text"]) == "<p>shown as text</p>" and m["HTML"] == ""
    # the Headers tab still shows both fields as sent
    h = get(capture, f"/api/v1/message/{quote(mid)}/headers").json()
    assert h["Content-Type"] == ["text/plain; charset=utf-8", "text/html; charset=utf-8"]


def test_two_content_types_in_a_part_the_first_wins(capture):
    mid = send_file(capture, (DATA / "two-content-types-part.eml").read_bytes())
    m = get(capture, f"/api/v1/message/{quote(mid)}").json()
    att = {p["PartID"]: p for p in m["Attachments"]}
    assert att["2"]["ContentType"] == "application/pdf" and att["2"]["FileName"] == "a.pdf"
    r = get(capture, f"/api/v1/message/{quote(mid)}/part/2")
    assert r.body == b"%PDF-1.4\n"
    assert nl(m["Text"]) == "body"


CORPUS = sorted(p.name for p in DATA.glob("*.eml")) + \
    sorted("mime4j/" + p.name for p in (DATA / "mime4j").glob("*.msg"))


@pytest.mark.parametrize("name", CORPUS)
def test_parts_agree_with_pythons_email_package(capture, name):
    mid = send_file(capture, (DATA / name).read_bytes())
    raw = get(capture, f"/api/v1/message/{quote(mid)}/raw").body
    py = py_parts(email.message_from_bytes(raw, policy=email.policy.compat32))
    m = get(capture, f"/api/v1/message/{quote(mid)}").json()
    for p in m["Attachments"] + m["Inline"]:
        pid = p["PartID"]
        body = get(capture, f"/api/v1/message/{quote(mid)}/part/{quote(pid)}").body
        assert p["Size"] == len(body), (name, pid)
        part = py.get(pid)
        if part is None or part.get_content_type() == "message/rfc822":
            continue  # Python regenerates attached messages; checked byte-exact above
        want = part.get_payload(decode=True)
        if want is None:
            continue
        assert body == want, (name, pid, body[:120], want[:120])
