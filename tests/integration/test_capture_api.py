"""
test_capture_api.py — `tern capture` against Mailpit's REST API v1 (issue 4, items 1, 2, 4, 5).

Owns: black-box tests of the real daemon: SMTP accepts anything and captures it; every JSON
answer is checked against its swagger shape (capture_harness.check_shape); listing, paging,
message details (MIME: encoded words, RFC 2231 names, cid: inline images), headers, raw,
parts, views, search, delete, read status, tags, send, release, chaos, retention, live
events, AUTH and durability across kill -9.

Never: reach beyond 127.0.0.1, wait without a bound, or depend on test order (each test has
its own daemon and data dir).
"""

import base64
import hashlib
import json
import re
import smtplib
import socket
import time
from datetime import datetime

import pytest

from capture_harness import (capture, capture_factory, check_definition, check_shape,  # noqa: F401
                             quote, response_schema, smtp_sink)
from conftest import expect, make_message

POLL = 10.0  # seconds: every wait below is bounded by this


# --------------------------------------------------------------------------
# API helpers: status and swagger shape checked on every call.


def api(cap, method, route, status=200, body=None, query=None, headers=None, **params):
    path = route.format(**{k: quote(v) for k, v in params.items()})
    r = cap.request(method, path, body, headers=headers, query=query)
    assert r.status == status, (f"{method} {path} body={json.dumps(body)[:300] if body is not None else None} "
                                f"query={query}: expected {status}, got {r!r}")
    return r


def japi(cap, method, route, status=200, body=None, query=None, **params):
    """A JSON call: checks status, Content-Type and the swagger's shape for (route, status)."""
    r = api(cap, method, route, status, body, query, **params)
    assert "application/json" in r.headers.get("content-type", ""), \
        f"{method} {route}: Content-Type {r.headers.get('content-type')!r}, want application/json"
    v = r.json()
    schema = response_schema(method, route, status)
    if schema:
        check_shape(v, schema, f"{method} {route} -> {status}")
    return v


def ok(cap, method, route, body=None, query=None, **params):
    """A call whose swagger answer is OKResponse (plain text "ok")."""
    r = api(cap, method, route, 200, body, query, **params)
    assert r.text.strip() == "ok", f"{method} {route}: want plain 'ok', got {r!r}"
    return r


def listing(cap, **query):
    return japi(cap, "GET", "/api/v1/messages", query=query or None)


def search(cap, q, **extra):
    return japi(cap, "GET", "/api/v1/search", query=dict(query=q, **extra))


def subjects(summary):
    return [m["Subject"] for m in summary["messages"]]


def wait_for(fn, what, timeout=POLL):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.03)


def find_subject(cap, subject):
    for m in listing(cap, limit=500)["messages"]:
        if m["Subject"] == subject:
            return m
    return None


def wait_subject(cap, subject):
    return wait_for(lambda: find_subject(cap, subject), f"message {subject!r} in GET /api/v1/messages")


def smtp_send(cap, body, mail_from="sender@example.org", rcpts=("alice@example.test",)):
    with cap.smtp() as c:
        return c.send_message(mail_from, list(rcpts), body)


def send_and_wait(cap, subject, **kw):
    """Sends make_message(subject) over SMTP and returns its summary once listed."""
    frm = kw.pop("frm", "sender@example.org")
    to = kw.pop("to", "alice@example.test")
    rcpts = kw.pop("rcpts", (to,))
    smtp_send(cap, make_message(subject, frm=frm, to=to, **kw), mail_from=frm, rcpts=rcpts)
    return wait_subject(cap, subject)


def msg(cap, mid):
    return japi(cap, "GET", "/api/v1/message/{ID}", ID=mid)


# --------------------------------------------------------------------------
# A rich MIME message: encoded-word subject and From name, multipart/mixed with an RFC 2231
# named attachment, multipart/related with a cid: inline image, alternative text/HTML.

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PDF = b"%PDF-1.4\n% fake pdf for tern tests\n" + bytes(range(256)) + b"\n%%EOF\n"
ATT_NAME = "résumé ✓.pdf"
SUBJECT_UTF8 = "Café résumé ✓ — ünïcode"


def b64lines(data):
    s = base64.b64encode(data).decode()
    return "\r\n".join(s[i:i + 76] for i in range(0, len(s), 76))


def rich_message():
    enc_subject = "=?UTF-8?B?" + base64.b64encode(SUBJECT_UTF8.encode()).decode() + "?="
    fn2231 = "UTF-8''" + quote(ATT_NAME)
    text = (
        f"From: =?UTF-8?Q?Zo=C3=AB_Sender?= <zoe@sender.example>\r\n"
        f"To: Bob Builder <bob@one.example>, carol@two.example\r\n"
        f"Cc: Dave <dave@three.example>\r\n"
        f"Reply-To: replies@sender.example\r\n"
        f"Subject: {enc_subject}\r\n"
        f"Date: Tue, 03 Mar 2026 10:20:30 +0100\r\n"
        f"Message-ID: <rich-1@sender.example>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/mixed; boundary=\"MIX-b0undary\"\r\n"
        f"\r\n"
        f"preamble\r\n"
        f"--MIX-b0undary\r\n"
        f"Content-Type: multipart/related; boundary=\"REL-b0undary\"\r\n"
        f"\r\n"
        f"--REL-b0undary\r\n"
        f"Content-Type: multipart/alternative; boundary=\"ALT-b0undary\"\r\n"
        f"\r\n"
        f"--ALT-b0undary\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: quoted-printable\r\n"
        f"\r\n"
        f"Plain text: the quick brown fox =E2=80=94 caf=C3=A9 marker-text\r\n"
        f"--ALT-b0undary\r\n"
        f"Content-Type: text/html; charset=utf-8\r\n"
        f"\r\n"
        f"<html><body><p>HTML <b>body</b> marker-html</p>"
        f"<img src=\"cid:logo@rich.example\"><img src=\"http://remote.example/track.png\">"
        f"</body></html>\r\n"
        f"--ALT-b0undary--\r\n"
        f"--REL-b0undary\r\n"
        f"Content-Type: image/png\r\n"
        f"Content-Transfer-Encoding: base64\r\n"
        f"Content-ID: <logo@rich.example>\r\n"
        f"Content-Disposition: inline; filename=\"logo.png\"\r\n"
        f"\r\n"
        f"{b64lines(PNG)}\r\n"
        f"--REL-b0undary--\r\n"
        f"--MIX-b0undary\r\n"
        f"Content-Type: application/pdf; name*={fn2231}\r\n"
        f"Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename*={fn2231}\r\n"
        f"\r\n"
        f"{b64lines(PDF)}\r\n"
        f"--MIX-b0undary--\r\n"
    )
    return text.encode("utf-8")


@pytest.fixture
def rich(capture):
    raw = rich_message()
    smtp_send(capture, raw, mail_from="bounces@env.example",
              rcpts=["bob@one.example", "carol@two.example", "dave@three.example"])
    summary = wait_subject(capture, SUBJECT_UTF8)
    return capture, summary, raw


def addrs(lst):
    return [a["Address"] for a in lst]


def instant(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_shape_checker_is_not_vacuous():
    """The checker every test relies on must see missing, extra and mistyped fields."""
    from capture_harness import shape_errors
    good = {"Name": "a", "Address": "a@b"}
    assert shape_errors(good, {"$ref": "#/definitions/Address"}) == []
    errs = shape_errors({"Name": 1, "Extra": True}, {"$ref": "#/definitions/Address"})
    assert any("missing property 'Address'" in e for e in errs)
    assert any("undeclared property 'Extra'" in e for e in errs)
    assert any("$.Name: expected string" in e for e in errs)
    errs = shape_errors({"Sender": {"ErrorCode": "451", "Probability": 5}},
                        response_schema("GET", "/api/v1/chaos", 200))
    assert any("ErrorCode: expected integer" in e for e in errs), errs
    errs = shape_errors({"ID": "x", "Created": "yesterday", "Read": 0},
                        {"$ref": "#/definitions/MessageSummary"}, all_declared=False)
    assert any("RFC 3339" in e for e in errs) and any("Read: expected boolean" in e for e in errs)


# --------------------------------------------------------------------------
# SMTP capture and the list.


def test_smtp_accepts_any_sender_and_recipient_and_lists_it(capture):
    body = make_message("any-domains", frm="someone@nowhere.invalid", to="x@a-domain.example",
                        extra_headers="Cc: y@b-domain.test\r\n")
    with capture.smtp() as c:
        c.ehlo()
        for sender in ("", "someone@nowhere.invalid"):
            expect(c.cmd(f"MAIL FROM:<{sender}>"), 250)
            for r in ("x@a-domain.example", "y@b-domain.test", "postmaster@localhost",
                      "z@unrouted.zz"):
                expect(c.cmd(f"RCPT TO:<{r}>"), 250)
            expect(c.cmd("RSET"), 250)
        c.send_message("someone@nowhere.invalid", ["x@a-domain.example", "y@b-domain.test",
                                                   "z@unrouted.zz"], body, helo=False)
    m = wait_subject(capture, "any-domains")
    assert m["From"]["Address"] == "someone@nowhere.invalid"
    assert addrs(m["To"]) == ["x@a-domain.example"]
    assert addrs(m["Cc"]) == ["y@b-domain.test"]
    assert m["Read"] is False
    assert m["Attachments"] == 0
    assert m["Snippet"].strip() == "hello"
    assert m["MessageID"] == "any-domains@example.org"
    raw = api(capture, "GET", "/api/v1/message/{ID}/raw", ID=m["ID"]).body
    assert m["Size"] == len(raw), f"Size {m['Size']} != raw length {len(raw)}"
    lst = listing(capture)
    assert (lst["total"], lst["unread"], lst["messages_count"], lst["start"]) == (1, 1, 1, 0)
    assert lst["count"] == 1


def test_envelope_only_recipients_are_reported_as_bcc(capture):
    """Mailpit (internal/smtpd/main.go SaveToDatabase) lists envelope recipients that are in
    none of To/Cc/Bcc as Bcc: that is how Laravel-style mail without headers shows who got it."""
    body = make_message("bcc-from-envelope", to="x@a-domain.example")
    smtp_send(capture, body, rcpts=["x@a-domain.example", "hidden@b-domain.test"])
    m = wait_subject(capture, "bcc-from-envelope")
    assert addrs(m["To"]) == ["x@a-domain.example"]
    assert addrs(m["Bcc"]) == ["hidden@b-domain.test"], f"summary Bcc {m['Bcc']}"
    assert addrs(msg(capture, m["ID"])["Bcc"]) == ["hidden@b-domain.test"]


def test_list_counts_paging_and_newest_first(capture):
    names = [f"page-{i}" for i in range(7)]
    ids = [send_and_wait(capture, s)["ID"] for s in names]
    newest_first = list(reversed(names))
    lst = listing(capture)
    assert subjects(lst) == newest_first
    assert (lst["total"], lst["unread"], lst["count"], lst["messages_count"], lst["start"]) == \
        (7, 7, 7, 7, 0)
    page = listing(capture, start=2, limit=3)
    assert subjects(page) == newest_first[2:5]
    assert (page["start"], page["count"], page["total"], page["messages_count"]) == (2, 3, 7, 7)
    tail = listing(capture, start=6, limit=50)
    assert subjects(tail) == newest_first[6:] and tail["count"] == 1
    beyond = listing(capture, start=20, limit=5)
    assert beyond["messages"] == [] and beyond["total"] == 7
    assert len(set(ids)) == 7 and all(re.fullmatch(r"[0-9A-Za-z]{22}", i) for i in ids), ids


def test_rich_summary_fields(rich):
    cap, m, raw = rich
    check_definition(m, "MessageSummary")
    assert m["Subject"] == SUBJECT_UTF8
    assert m["From"] == {"Name": "Zoë Sender", "Address": "zoe@sender.example"}
    assert m["To"] == [{"Name": "Bob Builder", "Address": "bob@one.example"},
                       {"Name": "", "Address": "carol@two.example"}]
    assert m["Cc"] == [{"Name": "Dave", "Address": "dave@three.example"}]
    assert addrs(m["ReplyTo"]) == ["replies@sender.example"]
    assert m["Attachments"] == 1, "the inline image is not an attachment (Mailpit counts Attachments only)"
    assert "the quick brown fox — café" in m["Snippet"] and len(m["Snippet"]) <= 250
    assert m["MessageID"] == "rich-1@sender.example"
    assert m["Size"] > len(raw)  # tern's Received header is stored too


def test_message_detail_mime(rich):
    cap, s, raw = rich
    m = msg(cap, s["ID"])
    assert m["ID"] == s["ID"]
    assert m["Subject"] == SUBJECT_UTF8
    assert m["From"]["Name"] == "Zoë Sender"
    assert addrs(m["To"]) == ["bob@one.example", "carol@two.example"]
    assert addrs(m["Cc"]) == ["dave@three.example"]
    assert addrs(m["ReplyTo"]) == ["replies@sender.example"]
    assert m["MessageID"] == "rich-1@sender.example"
    assert m["ReturnPath"] == "bounces@env.example"
    assert instant(m["Date"]) == instant("2026-03-03T10:20:30+01:00"), m["Date"]
    assert "the quick brown fox — café marker-text" in m["Text"]
    assert "marker-html" in m["HTML"] and "cid:logo@rich.example" in m["HTML"]
    assert m["Size"] == s["Size"]
    assert len(m["Attachments"]) == 1, m["Attachments"]
    att = m["Attachments"][0]
    assert att["FileName"] == ATT_NAME, "RFC 2231 file name not decoded"
    assert att["ContentType"] == "application/pdf"
    assert att["Size"] == len(PDF)
    assert att["Checksums"] == {"MD5": hashlib.md5(PDF).hexdigest(),
                                "SHA1": hashlib.sha1(PDF).hexdigest(),
                                "SHA256": hashlib.sha256(PDF).hexdigest()}
    assert len(m["Inline"]) == 1, m["Inline"]
    inl = m["Inline"][0]
    assert inl["ContentID"] == "logo@rich.example"
    assert inl["ContentType"] == "image/png"
    assert inl["FileName"] == "logo.png"
    assert inl["Size"] == len(PNG)
    assert att["PartID"] != inl["PartID"]


def test_reading_marks_read_and_put_messages_sets_read_status(capture):
    a = send_and_wait(capture, "read-a")["ID"]
    b = send_and_wait(capture, "read-b")["ID"]
    send_and_wait(capture, "read-c")
    assert listing(capture)["unread"] == 3
    msg(capture, a)
    lst = listing(capture)
    assert lst["unread"] == 2
    assert {m["ID"]: m["Read"] for m in lst["messages"]}[a] is True
    ok(capture, "PUT", "/api/v1/messages", {"IDs": [a], "Read": False})
    assert listing(capture)["unread"] == 3
    ok(capture, "PUT", "/api/v1/messages", {"IDs": [a, b], "Read": True})
    lst = listing(capture)
    assert lst["unread"] == 1 and lst["messages_unread"] == 1
    ok(capture, "PUT", "/api/v1/messages", {"Read": False})
    assert listing(capture)["unread"] == 3
    ok(capture, "PUT", "/api/v1/messages", {"Read": True})
    lst = listing(capture)
    assert lst["unread"] == 0 and all(m["Read"] for m in lst["messages"])
    info = japi(capture, "GET", "/api/v1/info")
    assert (info["Messages"], info["Unread"]) == (3, 0)


def test_headers_raw_and_latest(rich):
    cap, s, raw = rich
    h = japi(cap, "GET", "/api/v1/message/{ID}/headers", ID=s["ID"])
    low = {k.lower(): v for k, v in h.items()}
    assert low["to"] == ["Bob Builder <bob@one.example>, carol@two.example"]
    assert low["message-id"] == ["<rich-1@sender.example>"]
    assert low["subject"][0].startswith("=?UTF-8?B?")
    assert len(low["received"]) == 1 and "(tern)" in low["received"][0]
    r = api(cap, "GET", "/api/v1/message/{ID}/raw", ID=s["ID"])
    assert r.headers["content-type"].startswith("text/plain")
    assert r.body.startswith(b"Received: "), r.body[:100]
    assert r.body.endswith(raw), "raw source is not the sent bytes after tern's Received header"
    prefix = r.body[:-len(raw)]
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", prefix)
    assert unfolded.startswith(b"Received: ") and unfolded.count(b"\r\n") == 1 and \
        unfolded.endswith(b"\r\n"), f"more than one Received header was added: {prefix!r}"
    latest = msg(cap, "latest")
    assert latest["ID"] == s["ID"]


def test_part_download(rich):
    cap, s, raw = rich
    m = msg(cap, s["ID"])
    att, inl = m["Attachments"][0], m["Inline"][0]
    r = api(cap, "GET", "/api/v1/message/{ID}/part/{PartID}", ID=s["ID"], PartID=att["PartID"])
    assert r.body == PDF
    assert r.headers["content-type"].startswith("application/pdf")
    cd = r.headers.get("content-disposition", "").encode("latin-1").decode("utf-8", "replace")
    assert (quote(ATT_NAME) in cd or quote(ATT_NAME).lower() in cd.lower() or ATT_NAME in cd), \
        f"file name missing from Content-Disposition {cd!r}"
    r = api(cap, "GET", "/api/v1/message/{ID}/part/{PartID}", ID=s["ID"], PartID=inl["PartID"])
    assert r.body == PNG and r.headers["content-type"].startswith("image/png")


def test_unknown_message_and_part_are_404(rich):
    cap, s, raw = rich
    unknown = "AAAAAAAAAAAAAAAAAAAAAA"
    for route in ("/api/v1/message/{ID}", "/api/v1/message/{ID}/headers",
                  "/api/v1/message/{ID}/raw", "/view/{ID}.html", "/view/{ID}.txt"):
        api(cap, "GET", route, 404, ID=unknown)
    api(cap, "GET", "/api/v1/message/{ID}/part/{PartID}", 404, ID=unknown, PartID="1")
    for part in ("99", "1.9", "7.7.7"):
        api(cap, "GET", "/api/v1/message/{ID}/part/{PartID}", 404, ID=s["ID"], PartID=part)
    # the 404s neither created, deleted nor marked anything read
    lst = listing(cap)
    assert (lst["total"], lst["unread"]) == (1, 1)


def test_view_html_has_strict_csp_and_view_txt_gives_text(rich):
    cap, s, raw = rich
    r = api(cap, "GET", "/view/{ID}.html", ID=s["ID"])
    assert r.headers["content-type"].startswith("text/html")
    assert "marker-html" in r.text
    csp = r.headers.get("content-security-policy")
    assert csp, f"no Content-Security-Policy on /view/ID.html: {r.headers}"
    directives = {d.split()[0].lower(): d.split()[1:] for d in csp.split(";") if d.strip()}
    img = directives.get("img-src", directives.get("default-src"))
    assert img is not None, csp
    for src in img:
        assert not re.match(r"(?i)^(https?:|\*|'?unsafe)", src) and "." not in src, \
            f"img-src allows remote images: {csp}"
    assert "*" not in directives.get("default-src", []), csp
    t = api(cap, "GET", "/view/{ID}.txt", ID=s["ID"])
    assert t.headers["content-type"].startswith("text/plain")
    assert "the quick brown fox — café marker-text" in t.text
    # a message without an HTML part: 404 on .html (swagger), text still served
    p = send_and_wait(cap, "plain-only", body="just text body\r\n")
    api(cap, "GET", "/view/{ID}.html", 404, ID=p["ID"])
    assert "just text body" in api(cap, "GET", "/view/{ID}.txt", ID=p["ID"]).text


# --------------------------------------------------------------------------
# Search.


def _attachment_message(subject, frm, to, text):
    return (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
            f"--B\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
            f"--B\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=\"n.csv\"\r\n"
            f"\r\na,b\r\n1,2\r\n--B--\r\n").encode()


@pytest.fixture
def corpus(capture):
    cap = capture
    ids = {}
    ids["A"] = send_and_wait(cap, "Invoice alpha", frm="alice@search-a.example",
                             to="x@dest-one.example", body="the turquoise elephant dances\r\n")["ID"]
    smtp_send(cap, _attachment_message("Meeting notes beta", "bob@search-b.example",
                                       "y@dest-two.example", "quarterly numbers attached"),
              mail_from="bob@search-b.example", rcpts=["y@dest-two.example"])
    ids["B"] = wait_subject(cap, "Meeting notes beta")["ID"]
    ids["C"] = send_and_wait(cap, "Lunch gamma", frm="carol@search-c.example", to="z@dest-one.example",
                             extra_headers="Cc: <w@dest-three.example>\r\n",
                             body="turquoise sandwich, then an elephant\r\n")["ID"]
    return cap, ids


def found(cap, ids, q):
    res = search(cap, q)
    names = {n for n, i in ids.items() if i in {m["ID"] for m in res["messages"]}}
    assert res["messages_count"] == len(res["messages"]), res
    assert res["total"] == len(ids)
    return names


@pytest.mark.parametrize("q,want", [
    ("from:alice@search-a.example", {"A"}),
    ("from:search-b.example", {"B"}),
    ("to:dest-one.example", {"A", "C"}),
    ("to:w@dest-three.example", {"C"}),
    ("subject:Meeting", {"B"}),
    ('subject:"notes beta"', {"B"}),
    ("has:attachment", {"B"}),
    ("turquoise", {"A", "C"}),
    ("turquoise elephant", {"A", "C"}),
    ('"turquoise elephant"', {"A"}),
    ("turquoise -sandwich", {"A"}),
    ("-from:alice@search-a.example", {"B", "C"}),
    ("-has:attachment", {"A", "C"}),
    ("quarterly", {"B"}),
    ("nosuchwordanywhere", set()),
])
def test_search_query_syntax(corpus, q, want):
    cap, ids = corpus
    assert found(cap, ids, q) == want, f"query {q!r}"


def test_search_read_status_and_delete_by_search(corpus):
    cap, ids = corpus
    msg(cap, ids["A"])
    assert found(cap, ids, "is:read") == {"A"}
    assert found(cap, ids, "is:unread") == {"B", "C"}
    res = search(cap, "is:unread")
    assert res["unread"] == 2 and res["messages_unread"] == 2
    ok(cap, "DELETE", "/api/v1/search", query={"query": "to:dest-one.example"})
    left = listing(cap)
    assert [m["ID"] for m in left["messages"]] == [ids["B"]] and left["total"] == 1
    api(cap, "GET", "/api/v1/message/{ID}", 404, ID=ids["A"])


# --------------------------------------------------------------------------
# Delete.


@pytest.mark.parametrize("delete_all", [None, {"IDs": []}, {}])
def test_delete_by_ids_then_all(capture, delete_all):
    ids = [send_and_wait(capture, f"del-{i}")["ID"] for i in range(3)]
    ok(capture, "DELETE", "/api/v1/messages", {"IDs": [ids[0], ids[2]]})
    lst = listing(capture)
    assert [m["ID"] for m in lst["messages"]] == [ids[1]] and lst["total"] == 1
    api(capture, "GET", "/api/v1/message/{ID}", 404, ID=ids[0])
    api(capture, "GET", "/api/v1/message/{ID}/raw", 404, ID=ids[2])
    send_and_wait(capture, "del-3")
    ok(capture, "DELETE", "/api/v1/messages", delete_all)
    lst = listing(capture)
    assert (lst["total"], lst["unread"], lst["messages"]) == (0, 0, [])


# --------------------------------------------------------------------------
# Tags.


def test_tags_set_list_rename_delete_and_search(capture):
    x = send_and_wait(capture, "tag-x")["ID"]
    y = send_and_wait(capture, "tag-y")["ID"]
    z = send_and_wait(capture, "tag-z")["ID"]
    ok(capture, "PUT", "/api/v1/tags", {"IDs": [x, y], "Tags": ["alpha", "Beta Two"]})
    tags = japi(capture, "GET", "/api/v1/tags")
    assert sorted(tags) == ["Beta Two", "alpha"], tags
    assert sorted(msg(capture, x)["Tags"]) == ["Beta Two", "alpha"]
    assert msg(capture, z)["Tags"] == []
    assert sorted(listing(capture)["tags"]) == ["Beta Two", "alpha"]
    got = {m["ID"] for m in search(capture, "tag:alpha")["messages"]}
    assert got == {x, y}
    got = {m["ID"] for m in search(capture, 'tag:"Beta Two"')["messages"]}
    assert got == {x, y}
    assert japi(capture, "GET", "/api/v1/info")["Tags"] == {"alpha": 2, "Beta Two": 2}

    ok(capture, "PUT", "/api/v1/tags/{Tag}", {"Name": "gamma"}, Tag="alpha")
    assert sorted(japi(capture, "GET", "/api/v1/tags")) == ["Beta Two", "gamma"]
    assert sorted(msg(capture, y)["Tags"]) == ["Beta Two", "gamma"]
    assert {m["ID"] for m in search(capture, "tag:gamma")["messages"]} == {x, y}
    assert search(capture, "tag:alpha")["messages"] == []

    ok(capture, "DELETE", "/api/v1/tags/{Tag}", Tag="Beta Two")
    assert japi(capture, "GET", "/api/v1/tags") == ["gamma"]
    assert listing(capture)["total"] == 3, "deleting a tag must not delete messages"

    ok(capture, "PUT", "/api/v1/tags", {"IDs": [x], "Tags": []})
    assert msg(capture, x)["Tags"] == []
    assert {m["ID"] for m in search(capture, "tag:gamma")["messages"]} == {y}


# --------------------------------------------------------------------------
# Send.


def test_send_api_captures_message_with_all_fields(capture):
    doc = b"report line 1\nreport line 2\n\x00\xff binary tail"
    body = {
        "From": {"Email": "api-sender@send.example", "Name": "API Sender"},
        "To": [{"Email": "to1@send.example", "Name": "To One"}, {"Email": "to2@send.example"}],
        "Cc": [{"Email": "cc@send.example", "Name": "Cee"}],
        "Bcc": ["hidden@send.example"],
        "ReplyTo": [{"Email": "reply@send.example"}],
        "Subject": "Sent via API ✓",
        "Text": "API text body marker-api-text",
        "HTML": "<p>API <b>html</b> marker-api-html <img src=\"cid:logo-api\"></p>",
        "Attachments": [
            {"Filename": "report.bin", "Content": base64.b64encode(doc).decode(),
             "ContentType": "application/octet-stream"},
            {"Filename": "logo.png", "Content": base64.b64encode(PNG).decode(),
             "ContentType": "image/png", "ContentID": "logo-api"},
        ],
        "Headers": {"X-Custom-Header": "custom value 42"},
        "Tags": ["from-api"],
    }
    res = japi(capture, "POST", "/api/v1/send", body=body)
    mid = res["ID"]
    assert re.fullmatch(r"[0-9A-Za-z]{22}", mid), res
    m = msg(capture, mid)
    assert m["From"] == {"Name": "API Sender", "Address": "api-sender@send.example"}
    assert m["To"] == [{"Name": "To One", "Address": "to1@send.example"},
                       {"Name": "", "Address": "to2@send.example"}]
    assert m["Cc"] == [{"Name": "Cee", "Address": "cc@send.example"}]
    assert addrs(m["ReplyTo"]) == ["reply@send.example"]
    assert m["Subject"] == "Sent via API ✓"
    assert m["Text"].strip() == "API text body marker-api-text"
    assert "marker-api-html" in m["HTML"]
    assert m["Tags"] == ["from-api"]
    assert [(a["FileName"], a["ContentType"], a["Size"]) for a in m["Attachments"]] == \
        [("report.bin", "application/octet-stream", len(doc))]
    assert [(a["FileName"], a["ContentID"]) for a in m["Inline"]] == [("logo.png", "logo-api")]
    part = api(capture, "GET", "/api/v1/message/{ID}/part/{PartID}", ID=mid,
               PartID=m["Attachments"][0]["PartID"])
    assert part.body == doc
    h = {k.lower(): v for k, v in japi(capture, "GET", "/api/v1/message/{ID}/headers", ID=mid).items()}
    assert h["x-custom-header"] == ["custom value 42"]
    assert "bcc" not in h or h["bcc"] == ["hidden@send.example"]
    raw = api(capture, "GET", "/api/v1/message/{ID}/raw", ID=mid).body
    assert b"hidden@send.example" not in raw.split(b"\r\n\r\n", 1)[1]
    s = wait_subject(capture, "Sent via API ✓")
    assert s["ID"] == mid and s["Attachments"] == 1
    assert addrs(m["Bcc"]) == ["hidden@send.example"], \
        f"Bcc of a message sent with Bcc is {m['Bcc']}; Mailpit reports the Bcc addresses"


@pytest.mark.parametrize("body", [
    {"To": [{"Email": "a@b.example"}], "Subject": "no from", "Text": "x"},
    {"From": {"Email": "a@b.example"}, "Subject": "no recipients", "Text": "x"},
    {"From": {"Email": "not an address"}, "To": [{"Email": "a@b.example"}], "Text": "x"},
    {"From": {"Email": "a@b.example"}, "To": [{"Email": "c@d.example"}],
     "Attachments": [{"Filename": "x", "Content": "***not base64***"}]},
], ids=["no-from", "no-recipients", "bad-from", "bad-base64"])
def test_send_api_rejects_bad_requests(capture, body):
    r = api(capture, "POST", "/api/v1/send", 400, body=body)
    v = r.json()
    check_shape(v, response_schema("POST", "/api/v1/send", 400), "POST /api/v1/send -> 400")
    assert v.get("Error"), v
    assert listing(capture)["total"] == 0


def test_send_api_rejects_malformed_json(capture):
    api(capture, "POST", "/api/v1/send", 400, body="{not json",
        headers={"Content-Type": "application/json"})
    assert listing(capture)["total"] == 0


# --------------------------------------------------------------------------
# Release.


def test_release_through_relayhost(capture_factory, smtp_sink):
    cap = capture_factory({"relayhost": {"via": f"smtp://127.0.0.1:{smtp_sink.port}",
                                         "tls": "none"}})
    ui = japi(cap, "GET", "/api/v1/webui")
    assert ui["MessageRelay"]["Enabled"] is True
    s = send_and_wait(cap, "release-me", body="release body marker-release\r\n")
    ok(cap, "POST", "/api/v1/message/{ID}/release", {"To": ["x@example.org"]}, ID=s["ID"])
    got = smtp_sink.wait(1, timeout=POLL)
    assert got, f"relayhost sink received nothing within {POLL}s\n{cap.log_tail()}"
    mail_from, rcpts, data = got[0]
    assert rcpts == ["x@example.org"]
    assert b"Subject: release-me" in data and b"marker-release" in data
    assert mail_from == "sender@example.org"
    api(cap, "POST", "/api/v1/message/{ID}/release", 404, {"To": ["x@example.org"]},
        ID="AAAAAAAAAAAAAAAAAAAAAA")
    api(cap, "POST", "/api/v1/message/{ID}/release", 400, {"To": []}, ID=s["ID"])
    time.sleep(0.5)
    assert len(smtp_sink.messages) == 1
    assert listing(cap)["total"] == 1, "release must not add or remove captured messages"


def test_release_without_relayhost_is_refused(capture, smtp_sink):
    s = send_and_wait(capture, "no-release")
    r = capture.request("POST", f"/api/v1/message/{s['ID']}/release", {"To": ["x@example.org"]})
    assert 400 <= r.status < 500, f"release without relayhost: want 4xx, got {r!r}"
    time.sleep(1.0)
    assert smtp_sink.messages == []
    assert listing(capture)["total"] == 1


def test_webui_says_release_disabled_without_relayhost(capture):
    """Mailpit's UI shows the Release button only when MessageRelay.Enabled is true."""
    ui = japi(capture, "GET", "/api/v1/webui")
    assert ui["MessageRelay"]["Enabled"] is False, \
        f"GET /api/v1/webui says release is enabled without a relayhost: {ui['MessageRelay']}"


# --------------------------------------------------------------------------
# Chaos.


def test_chaos_triggers_apply_to_smtp(capture):
    cur = japi(capture, "GET", "/api/v1/chaos")
    assert all(cur[k]["Probability"] == 0 for k in ("Sender", "Recipient", "Authentication")), cur
    got = japi(capture, "PUT", "/api/v1/chaos",
               body={"Sender": {"ErrorCode": 451, "Probability": 100}})
    assert got["Sender"] == {"ErrorCode": 451, "Probability": 100}
    assert got["Recipient"]["Probability"] == 0 and got["Authentication"]["Probability"] == 0
    assert japi(capture, "GET", "/api/v1/chaos") == got
    with capture.smtp() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@b.example>")
        assert r.code == 451, r

    # omitted triggers reset to 0 (swagger); the recipient trigger now fires
    got = japi(capture, "PUT", "/api/v1/chaos",
               body={"Recipient": {"ErrorCode": 550, "Probability": 100}})
    assert got["Sender"]["Probability"] == 0 and got["Recipient"] == {"ErrorCode": 550,
                                                                      "Probability": 100}
    with capture.smtp() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@b.example>"), 250)
        r = c.cmd("RCPT TO:<c@d.example>")
        assert r.code == 550, r

    got = japi(capture, "PUT", "/api/v1/chaos",
               body={"Authentication": {"ErrorCode": 535, "Probability": 100}})
    with capture.smtp() as c:
        c.ehlo()
        r = c.cmd("AUTH PLAIN " + base64.b64encode(b"\0u\0p").decode())
        assert r.code == 535, r

    got = japi(capture, "PUT", "/api/v1/chaos", body={})
    assert all(got[k]["Probability"] == 0 for k in ("Sender", "Recipient", "Authentication"))
    send_and_wait(capture, "after-chaos")


@pytest.mark.parametrize("body", [
    {"Sender": {"ErrorCode": 250, "Probability": 100}},
    {"Sender": {"ErrorCode": 451, "Probability": 101}},
    {"Recipient": {"ErrorCode": 600, "Probability": 10}},
    {"Authentication": {"ErrorCode": 535, "Probability": -1}},
], ids=["code-2xx", "prob-101", "code-600", "prob-negative"])
def test_chaos_rejects_invalid_triggers(capture, body):
    before = japi(capture, "GET", "/api/v1/chaos")
    r = capture.request("PUT", "/api/v1/chaos", body)
    assert r.status == 400, f"PUT /api/v1/chaos {body}: want 400, got {r!r}"
    assert japi(capture, "GET", "/api/v1/chaos") == before


def test_chaos_defaults_like_mailpit(capture):
    """Mailpit's defaults: 451 for Sender and Recipient, 535 for Authentication; a trigger sent
    without ErrorCode gets its default (chaos.SetFromStruct)."""
    cur = japi(capture, "GET", "/api/v1/chaos")
    got = japi(capture, "PUT", "/api/v1/chaos", body={"Sender": {"Probability": 50}})
    assert got["Sender"] == {"ErrorCode": 451, "Probability": 50}
    assert (cur["Sender"]["ErrorCode"], cur["Recipient"]["ErrorCode"]) == (451, 451)
    assert cur["Authentication"]["ErrorCode"] == 535, f"Authentication default: {cur}"


# --------------------------------------------------------------------------
# Retention.


def test_retention_max_messages_keeps_newest(capture_factory):
    cap = capture_factory({"capture": {"max_messages": 5}})
    names = [f"keep-{i:02d}" for i in range(12)]
    for n in names:
        send_and_wait(cap, n)
    wait_for(lambda: listing(cap)["total"] <= 5,
             f"pruning to max_messages = 5 (total right after the 12th: {listing(cap)['total']}; "
             f"a prune must not wait for the next message to arrive)")
    lst = listing(cap)
    assert subjects(lst) == list(reversed(names))[:5], subjects(lst)
    assert lst["total"] == 5
    assert japi(cap, "GET", "/api/v1/info")["Messages"] == 5


# --------------------------------------------------------------------------
# Live events.


class SSE:
    """A raw-socket reader of GET /api/events (handles chunked transfer coding)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=POLL)
        self.sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
        self.raw = b""
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        self.chunked = bool(re.search(r"(?im)^transfer-encoding:\s*chunked", self.head))
        self.text = ""

    def _recv(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError(f"event stream closed; got {self.raw[-500:]!r}")
        self.raw += d

    def _decode(self):
        if not self.chunked:
            self.text += self.raw.decode("utf-8", "replace")
            self.raw = b""
            return
        while b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self.text += rest[:size].decode("utf-8", "replace")
            self.raw = rest[size + 2:]

    def wait_event(self, etype, needle, timeout=POLL):
        deadline = time.monotonic() + timeout
        while True:
            self._decode()
            for block in re.split(r"\r?\n\r?\n", self.text):
                lines = block.splitlines()
                if f"event: {etype}" in lines:
                    data = "\n".join(ln[5:].lstrip() for ln in lines if ln.startswith("data:"))
                    if needle in data:
                        return data
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no '{etype}' event containing {needle!r} within {timeout}s; "
                            f"stream so far: {self.text[-1500:]!r}")
            self.sock.settimeout(left)
            try:
                self._recv()
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


def test_events_stream_announces_new_message(capture):
    ev = SSE(capture.http_port)
    try:
        assert ev.head.startswith("HTTP/1.1 200"), ev.head
        assert re.search(r"(?im)^content-type:\s*text/event-stream", ev.head), ev.head
        smtp_send(capture, make_message("live-event-subject"))
        data = ev.wait_event("new", "live-event-subject")
        summary = json.loads(data)
        check_definition(summary, "MessageSummary")
        assert summary["Subject"] == "live-event-subject"
        ok(capture, "DELETE", "/api/v1/messages", {"IDs": [summary["ID"]]})
        assert summary["ID"] in ev.wait_event("delete", summary["ID"])
    finally:
        ev.close()


# --------------------------------------------------------------------------
# AUTH.


def test_auth_any_credentials_and_esmtpa(capture):
    s = smtplib.SMTP("127.0.0.1", capture.smtp_port, timeout=POLL)
    try:
        s.ehlo("client.example")
        assert s.has_extn("auth"), s.esmtp_features
        mechs = s.esmtp_features["auth"].upper().split()
        assert "PLAIN" in mechs and "LOGIN" in mechs, mechs
        code, _ = s.login("any-user@whatever.example", "any password at all")
        assert code == 235
        s.sendmail("auth@sender.example", ["rcpt@anywhere.example"],
                   make_message("authenticated-plain", frm="auth@sender.example"))
    finally:
        s.quit()
    s = smtplib.SMTP("127.0.0.1", capture.smtp_port, timeout=POLL)
    try:
        s.ehlo("client.example")
        s.user, s.password = "login-user", "x"
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235
        s.sendmail("auth@sender.example", ["rcpt@anywhere.example"],
                   make_message("authenticated-login", frm="auth@sender.example"))
    finally:
        s.quit()
    for subject, user in (("authenticated-plain", "any-user@whatever.example"),
                          ("authenticated-login", "login-user")):
        m = wait_subject(capture, subject)
        h = {k.lower(): v for k, v in
             japi(capture, "GET", "/api/v1/message/{ID}/headers", ID=m["ID"]).items()}
        assert "with ESMTPA" in h["received"][0], h["received"]
    plain = send_and_wait(capture, "not-authenticated")
    h = japi(capture, "GET", "/api/v1/message/{ID}/headers", ID=plain["ID"])
    rec = next(v for k, v in h.items() if k.lower() == "received")
    assert "ESMTPA" not in rec[0] and plain["Username"] == ""
    # swagger: Username is "used for authentication (if provided) with the SMTP or Send API"
    got = {s: wait_subject(capture, s)["Username"] for s in ("authenticated-plain",
                                                             "authenticated-login")}
    assert got == {"authenticated-plain": "any-user@whatever.example",
                   "authenticated-login": "login-user"}, f"Username per message: {got}"


# --------------------------------------------------------------------------
# info, webui.


def test_info_and_webui_shapes(capture):
    send_and_wait(capture, "info-1")
    m = send_and_wait(capture, "info-2", body="x" * 1000 + "\r\n")
    msg(capture, m["ID"])
    info = japi(capture, "GET", "/api/v1/info")
    assert info["Version"]
    assert (info["Messages"], info["Unread"]) == (2, 1)
    assert info["DatabaseSize"] > 0
    assert info["RuntimeStats"]["Memory"] > 0
    ui = japi(capture, "GET", "/api/v1/webui")
    assert isinstance(ui["ChaosEnabled"], bool)
    ok(capture, "DELETE", "/api/v1/messages", {"IDs": [m["ID"]]})
    assert japi(capture, "GET", "/api/v1/info")["Messages"] == 1
    with capture.smtp() as c:  # one message the chaos trigger rejects
        japi(capture, "PUT", "/api/v1/chaos", body={"Sender": {"ErrorCode": 451,
                                                                "Probability": 100}})
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.example>").code == 451
    rs = japi(capture, "GET", "/api/v1/info")["RuntimeStats"]
    got = {k: rs[k] for k in ("SMTPAccepted", "MessagesDeleted")}
    assert got == {"SMTPAccepted": 2, "MessagesDeleted": 1} and rs["SMTPAcceptedSize"] > 1000, \
        f"RuntimeStats do not count this run's traffic: {rs}"


# --------------------------------------------------------------------------
# Durability.


def test_accepted_message_survives_kill9_and_restart(capture):
    qid = smtp_send(capture, make_message("durable-after-kill9"))
    assert qid
    capture.kill9()
    capture.start()
    m = wait_subject(capture, "durable-after-kill9")
    assert m["From"]["Address"] == "sender@example.org"
    lst = listing(capture)
    assert subjects(lst).count("durable-after-kill9") == 1, "captured twice after recovery"
    raw = api(capture, "GET", "/api/v1/message/{ID}/raw", ID=m["ID"]).body
    assert raw.endswith(make_message("durable-after-kill9"))
