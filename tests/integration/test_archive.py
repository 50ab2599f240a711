"""
test_archive.py — the message archive (issue 13 items 6 and 7): `archive { enabled; }` keeps
every message the spool commits, compressed, indexed with the capture store's search.

A message sent over SMTP is found by one word of its body (CLI and API), shown and exported
(zip, API and CLI) as exactly the bytes tern accepted (the same bytes the Maildir copy ends
with); mbox exports quote "From " lines (mboxrd) and Python's mailbox reads them; legal hold
and release work from the CLI and the API; a remote recipient's delivery result (deferred,
here) is recorded with the archived copy; retention (2 s here) deletes old messages and
never a held one; a burst loses nothing and writes nothing to DATA/archive/incoming/ (the
archive reads each message from the spool); include = ["outbound"] skips local-only mail; a
message whose archiving a kill -9 interrupted is archived from the spool at restart.

Never: a timed assertion; every wait is a bounded poll.
"""

import io
import json
import mailbox
import re
import subprocess
import time
import zipfile

import pytest

from conftest import Raw, free_port, start_on_free_port
from test_api import Api, create_key, send_ok, wait_ready_http  # noqa: F401

DEADLINE = 30.0


def wait_for(pred, what, t, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{t.log_tail(60)}")
        time.sleep(0.1)


def search(t, query):
    r = t.cli("archive", "search", "--json", "--limit", "1000", "--", query, check=True)
    return json.loads(r.stdout)


def ids_of(res):
    return [m["ID"] for m in res["messages"]]


def show_bytes(t, qid):
    """`tern archive show ID` as bytes (t.cli reads text, which would fold CRLF)."""
    r = subprocess.run([t.bin, "archive", "show", qid, "-c", str(t.config_path)],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def unstuffed(body):
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def message(subject, body, to="alice@example.test"):
    return (f"From: Sender Person <sender@example.org>\r\nTo: <{to}>\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '-')}@example.org>\r\n"
            f"\r\n{body}").encode()


@pytest.fixture
def arch(tern_factory):
    """tern with the archive on and an API listener with an admin and a sending key."""
    port = free_port()
    t = tern_factory({"archive": {"enabled": True},
                      "listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}},
                     start=False)
    keys = {"admin": create_key(t, "ops", "--scope", "admin"),
            "send": create_key(t, "app", "--from-domain", "example.test")}
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    a.keys = keys
    return a


def test_found_by_a_body_word_and_exported_as_the_original_bytes(arch):
    t = arch.t
    body = ("Quarterly numbers attached.\r\nThe codeword is zanzibarquokka today.\r\n"
            "From here on, mbox readers need quoting.\r\n")
    raw = message("Budget review", body)
    with t.client() as c:
        qid = c.send_message("sender@example.org", ["alice@example.test"], raw)
    other = message("Lunch", "Nothing to see.\r\n", to="bob@example.test")
    with t.client() as c:
        qid2 = c.send_message("sender@example.org", ["bob@example.test"], other)

    # found by a word of its body, and only it
    res = wait_for(lambda: search(t, "zanzibarquokka")["messages"], "the archived copy", t)
    assert [m["ID"] for m in res] == [qid]
    m = res[0]
    assert m["Subject"] == "Budget review" and m["From"]["Address"] == "sender@example.org"
    assert m["Direction"] == "inbound" and m["Hold"] is False
    assert m["EnvelopeTo"] == ["alice@example.test"]
    # the capture search syntax: prefixes, a word prefix, negation
    wait_for(lambda: qid2 in ids_of(search(t, "")), "the second message", t)
    assert ids_of(search(t, "subject:budget")) == [qid]
    assert ids_of(search(t, "from:sender to:alice zanzibar")) == [qid]
    assert ids_of(search(t, "to:bob")) == [qid2]
    assert qid not in ids_of(search(t, "-zanzibarquokka"))

    # the original bytes: what tern accepted (its Received field, then the message as sent)
    data = show_bytes(t, qid)
    st, hd, api_raw = arch.call("GET", f"/api/v1/archive/{qid}/raw", token=arch.keys["admin"])
    assert st == 200 and hd["Content-Type"] == "message/rfc822"
    assert api_raw.startswith(b"Received: ") and api_raw.endswith(unstuffed(raw))
    assert data == api_raw
    delivered = t.wait_mail_with("alice@example.test", "zanzibarquokka")[0][1]
    assert delivered.replace(b"\r\n", b"\n").endswith(api_raw.replace(b"\r\n", b"\n"))

    # zip export (API and CLI): one ID.eml per message, byte for byte
    st, hd, z = arch.call("GET", "/api/v1/archive/export?query=zanzibarquokka&format=zip",
                          token=arch.keys["admin"])
    assert st == 200 and hd["Content-Type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(z))
    assert zf.testzip() is None
    assert zf.namelist() == [f"{qid}.eml"] and zf.read(f"{qid}.eml") == api_raw
    out = t.root / "all.zip"
    r = t.cli("archive", "export", "--format", "zip", "-o", str(out), "", check=True)
    zf = zipfile.ZipFile(out)
    assert sorted(zf.namelist()) == sorted([f"{qid}.eml", f"{qid2}.eml"])
    assert zf.read(f"{qid}.eml") == api_raw

    # mbox export: Python's mailbox reads it; "From " in the body is quoted
    st, hd, mb = arch.call("GET", "/api/v1/archive/export?query=subject%3Abudget",
                           token=arch.keys["admin"])
    assert st == 200 and hd["Content-Type"] == "application/mbox"
    assert b"\n>From here on" in mb and b"\nFrom here on" not in mb
    path = t.root / "x.mbox"
    path.write_bytes(mb)
    msgs = list(mailbox.mbox(str(path)))
    assert len(msgs) == 1 and msgs[0]["Subject"] == "Budget review"
    assert msgs[0].get_from().startswith("sender@example.org ")


def test_api_list_hold_and_errors(arch):
    t = arch.t
    qid = send_ok(arch, {"from": "app@example.test", "to": ["someone@remote.example"],
                         "subject": "Outbound invoice", "text": "pelicanbrief\n"})["id"]
    admin = arch.keys["admin"]

    def listed():
        st, body = arch.json("GET", "/api/v1/archive?query=pelicanbrief", token=admin)
        assert st == 200, body
        return body["messages"]

    got = wait_for(listed, "the API-sent message in the archive", t)
    assert [m["ID"] for m in got] == [qid] and got[0]["Direction"] == "outbound"
    # the remote recipient's result is recorded with the copy (DNS is dead here: deferred)
    got = wait_for(lambda: [m for m in listed() if m["Outcomes"]], "the delivery outcome", t)
    o = got[0]["Outcomes"][0]
    assert o["Recipient"] == "someone@remote.example" and o["State"] == "deferred"
    assert o["Reply"] and re.match(r"\d{4}-\d\d-\d\dT", o["Time"])
    st, body = arch.json("GET", "/api/v1/archive?query=&start=0&limit=1", token=admin)
    assert st == 200 and body["count"] == 1 and body["total"] >= 1 and body["start"] == 0

    assert arch.call("PUT", f"/api/v1/archive/{qid}/hold", token=admin)[0] == 204
    assert listed()[0]["Hold"] is True
    assert "hold" in t.cli("archive", "search", "pelicanbrief", check=True).stdout
    assert arch.call("DELETE", f"/api/v1/archive/{qid}/hold", token=admin)[0] == 204
    assert listed()[0]["Hold"] is False

    # admin keys only; errors in the API's shape
    assert arch.call("GET", "/api/v1/archive", token=arch.keys["send"])[0] == 403
    assert arch.call("GET", "/api/v1/archive")[0] == 401
    st, e = arch.json("GET", "/api/v1/archive?query=before:2026-13-45", token=admin)
    assert st == 400 and e["error"]["code"] == "invalid_request"
    st, e = arch.json("GET", "/api/v1/archive/export?format=tar", token=admin)
    assert st == 400 and e["error"]["code"] == "invalid_request"
    assert arch.call("GET", "/api/v1/archive/AAAAAAAAAAAAAAAA/raw", token=admin)[0] == 404
    assert arch.call("PUT", "/api/v1/archive/AAAAAAAAAAAAAAAA/hold", token=admin)[0] == 404
    assert arch.call("GET", "/api/v1/archive/../../etc/raw", token=admin)[0] == 404
    assert arch.call("POST", "/api/v1/archive", token=admin, raw=b"{}")[0] == 405
    # the CLI's errors
    r = t.cli("archive", "show", "AAAAAAAAAAAAAAAA")
    assert r.returncode == 1 and "no such message" in r.stderr
    assert t.cli("archive", "search", "before:nope").returncode == 2


def test_retention_deletes_old_messages_but_never_held_ones(tern_factory):
    t = tern_factory({"archive": {"enabled": True, "retention": Raw("2s")}})
    qids = []
    for i in range(2):
        with t.client() as c:
            qids.append(c.send_message("sender@example.org", ["alice@example.test"],
                                       message(f"keep {i}", f"retentionword number{i}\r\n")))
    wait_for(lambda: len(search(t, "retentionword")["messages"]) == 2, "both archived", t)
    t.cli("archive", "hold", qids[0], check=True)
    # the timer removes the other one; the held one stays, however long we look
    wait_for(lambda: ids_of(search(t, "retentionword")) == [qids[0]], "retention", t)
    assert t.log_lines("event=archive_expired")
    r = t.cli("archive", "show", qids[1])
    assert r.returncode == 1
    assert "number0" in t.cli("archive", "show", qids[0], check=True).stdout
    # released, it goes at the next run
    t.cli("archive", "release", qids[0], check=True)
    wait_for(lambda: search(t, "retentionword")["messages"] == [], "retention after release", t)


def test_a_burst_loses_nothing_and_include_filters(tern_factory):
    t = tern_factory({"archive": {"enabled": True, "include": ["inbound"]}})
    qids = []
    with t.client() as c:
        for i in range(5):
            qids.append(c.send_message("sender@example.org", ["alice@example.test"],
                                       message(f"burst {i}", f"overflowword {i}\r\n")))
            c.cmd("RSET")
    got = wait_for(lambda: len(search(t, "overflowword")["messages"]) == 5 and
                   search(t, "overflowword"), "all five archived", t)
    assert sorted(ids_of(got)) == sorted(qids)
    assert not t.log_lines("event=archive_deferred")
    assert not list((t.data_dir / "archive" / "incoming").iterdir())


def test_include_outbound_only_skips_local_mail(tern_factory):
    t = tern_factory({"archive": {"enabled": True, "include": ["outbound"]}})
    with t.client() as c:
        local = c.send_message("sender@example.org", ["alice@example.test"],
                               message("local only", "skippedword\r\n"))
    # then one relayed to a remote address (127.0.0.2 is in relay.networks): it is archived,
    # and since the writer takes messages in commit order, the local one was seen before it
    with t.client(source="127.0.0.2") as c:
        remote = c.send_message("sender@example.org", ["far@remote.example"],
                                message("relayed", "keptword\r\n", to="far@remote.example"))
    got = wait_for(lambda: search(t, "keptword")["messages"], "the relayed message", t)
    assert [m["ID"] for m in got] == [remote] and got[0]["Direction"] == "outbound"
    assert search(t, "skippedword")["messages"] == []
    assert search(t, "")["total"] == 1
    assert not t.log_lines("event=archived", local)
    r = t.cli("check-config", check=True)
    assert re.search(r'include = \[\s*"outbound"\s*\]', r.stdout), r.stdout


def test_a_copy_lost_to_a_kill_is_taken_from_the_spool_at_restart(tern_factory):
    t = tern_factory({"archive": {"enabled": True}})
    # relayed to a remote address that cannot be resolved here: it stays queued (deferred)
    with t.client(source="127.0.0.2") as c:
        qid = c.send_message("sender@example.org", ["far@remote.example"],
                             message("killed", "survivorword\r\n", to="far@remote.example"))
    t.kill9()  # within the writer's batch window: its copy was most likely only in memory
    t.proc = None
    t.start()
    got = wait_for(lambda: search(t, "survivorword")["messages"], "the copy after restart", t)
    assert [m["ID"] for m in got] == [qid]
    assert show_bytes(t, qid).endswith(message("killed", "survivorword\r\n",
                                               to="far@remote.example"))

