"""Local delivery to Maildir: trace headers, exact content, aliases, logs, default config."""

import re
import socket
import subprocess
import time

import pytest

from conftest import Client, expect, make_message, split_trace, tern_bin


def check_trace(data, sender, rcpt, qid, proto):
    nl, hdrs, rest = split_trace(data)
    assert hdrs[0] == f"Return-Path: <{sender}>", hdrs
    assert re.fullmatch(rf"Delivered-To: <?{re.escape(rcpt)}>?", hdrs[1]), hdrs
    rec = hdrs[2]
    assert rec.startswith("Received: from "), rec
    assert re.search(rf"\bby mx\.example\.test \(tern\) with {proto} id {qid}\b", rec), rec
    assert "127.0.0.1" in rec, f"client address missing from {rec}"
    assert re.search(r";\s*\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", rec), \
        f"no RFC 5322 date in {rec}"
    return nl, rest


def same_content(nl, rest, sent):
    return rest == (sent if nl == b"\r\n" else sent.replace(b"\r\n", b"\n"))


def test_delivered_file_has_trace_headers_and_exact_message(tern):
    body = (b"line one\r\n.starts with a dot\r\n..two dots\r\n.\r\n"
            b" leading space\r\nlast\r\n")
    msg = make_message("exact-content", body=body.decode())
    with tern.client() as c:
        qid = c.send_message("sender@example.org", ["alice@example.test"], msg)
    (p, data), = tern.wait_mail_with("alice@example.test", "exact-content")
    nl, rest = check_trace(data, "sender@example.org", "alice@example.test", qid, "ESMTP")
    assert same_content(nl, rest, msg), f"message altered:\n{rest!r}\n!=\n{msg!r}"
    # Maildir layout
    md = tern.maildir("alice@example.test")
    for sub in ("tmp", "new", "cur"):
        assert (md / sub).is_dir(), f"{md / sub} missing"
    assert list((md / "tmp").iterdir()) == []
    # queue empties once delivered
    deadline = time.monotonic() + 10
    while qid in tern.queue_list():
        assert time.monotonic() < deadline, "delivered message still in queue"
        time.sleep(0.1)


def test_helo_gives_protocol_smtp(tern):
    msg = make_message("helo-proto")
    with tern.client() as c:
        expect(c.cmd("HELO client.example.org"), 250)
        qid = c.send_message("sender@example.org", ["alice@example.test"], msg, helo=False)
    (p, data), = tern.wait_mail_with("alice@example.test", "helo-proto")
    check_trace(data, "sender@example.org", "alice@example.test", qid, "SMTP")


def test_smtputf8_gives_protocol_utf8smtp(tern):
    msg = make_message("utf8-proto")
    with tern.client() as c:
        qid = c.send_message("sender@example.org", ["alice@example.test"], msg,
                             mail_params="SMTPUTF8")
    (p, data), = tern.wait_mail_with("alice@example.test", "utf8-proto")
    check_trace(data, "sender@example.org", "alice@example.test", qid, "UTF8SMTP")


def test_alias_expands_to_each_user(tern):
    msg = make_message("to-team", to="team@example.test")
    with tern.client() as c:
        qid = c.send_message("sender@example.org", ["team@example.test"], msg)
    for u in ("alice@example.test", "bob@example.test"):
        (p, data), = tern.wait_mail_with(u, "to-team")
        nl, rest = check_trace(data, "sender@example.org", u, qid, "ESMTP")
        assert same_content(nl, rest, msg)


def test_alias_and_direct_recipient_same_user(tern):
    msg = make_message("alias-plus-direct")
    with tern.client() as c:
        c.send_message("sender@example.org", ["postmaster@example.test", "alice@example.test",
                                              "bob@example.test"], msg)
    files = tern.wait_mail_with("alice@example.test", "alias-plus-direct")
    tern.wait_mail_with("bob@example.test", "alias-plus-direct")
    assert len(files) in (1, 2)  # one copy is nicer; two are acceptable


def test_postmaster_alias_delivers_to_alice(tern):
    with tern.client() as c:
        c.send_message("sender@example.org", ["postmaster@example.test"],
                       make_message("pm-alias"))
    tern.wait_mail_with("alice@example.test", "pm-alias")


def test_unique_file_names_for_identical_messages(tern):
    msg = make_message("twice")
    with tern.client() as c:
        c.send_message("sender@example.org", ["alice@example.test"], msg)
        c.send_message("sender@example.org", ["alice@example.test"], msg, helo=False)
    files = tern.wait_mail_with("alice@example.test", "twice", count=2)
    assert len({p.name for p, _ in files}) == 2


def test_log_lines_for_queued_delivered_rejected(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<nobody-here@example.test>"), 550, "5.1.1")
        expect(c.cmd("RSET"), 250, "2.0.0")
        qid = c.send_message("sender@example.org", ["alice@example.test", "bob@example.test"],
                             make_message("logged"), helo=False)
    tern.wait_mail_with("alice@example.test", "logged")
    tern.wait_mail_with("bob@example.test", "logged")
    q = tern.wait_log(rf"^.*event=queued\b.*\bid={qid}\b.*$").group(0)
    assert "client=127.0.0.1" in q, q
    for u in ("alice@example.test", "bob@example.test"):
        tern.wait_log(rf"event=delivered\b(?=.*\bid={qid}\b)(?=.*\bto=<?{re.escape(u)}>?(\s|$))")
    rej = tern.log_lines("event=rejected")
    assert rej, tern.log_tail()
    assert any("client=127.0.0.1" in ln and "nobody-here@example.test" in ln for ln in rej), rej
    # every line is key=value after the timestamp and level
    for ln in tern.log().splitlines():
        if "event=" in ln:
            assert re.search(r"\bevent=[a-z_]+", ln), ln


def test_log_values_from_network_are_quoted(tern):
    with tern.client() as c:
        c.cmd("EHLO evil event=delivered id=FAKE")
        c.cmd("QUIT")
    time.sleep(0.3)
    for ln in tern.log().splitlines():
        unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', ln)
        assert not re.search(r"(^|\s)id=FAKE(\s|$)", unquoted), f"forged log field: {ln}"


def test_embedded_default_delivers_postmaster_at_localhost(scratch):
    """`tern serve` with no config: SMTP on 127.0.0.1:2525, data in ./tern-data."""
    for port in (2525, 2587, 2465, 2110, 2995):  # submission and POP3 too (test_tls.py)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tern binds
            try:
                s.bind(("127.0.0.1", port))
                s.listen(1)
            except OSError:
                pytest.skip(f"127.0.0.1:{port} busy")
    d = scratch
    log = open(d / "tern.log", "wb")
    proc = subprocess.Popen([tern_bin(), "serve"], cwd=d, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        c = None
        while c is None:
            assert proc.poll() is None, (d / "tern.log").read_text()
            try:
                c = Client(2525)
            except OSError:
                assert time.monotonic() < deadline, "no greeting on 127.0.0.1:2525"
                time.sleep(0.1)
        with c:
            expect(c.greeting, 220)
            c.send_message("someone@example.org", ["postmaster@localhost"],
                           make_message("default-config", to="postmaster@localhost"))
        deadline = time.monotonic() + 10
        while True:
            hits = [p for p in (d / "tern-data" / "mail").glob("**/new/*")
                    if p.is_file() and b"default-config" in p.read_bytes()]
            if hits:
                break
            assert time.monotonic() < deadline, \
                f"postmaster@localhost mail not in any Maildir\n{(d / 'tern.log').read_text()}"
            time.sleep(0.1)
        data = hits[0].read_bytes()
        assert data.startswith(b"Return-Path: <someone@example.org>")
    finally:
        proc.terminate()
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            rc = "killed"
        log.close()
    text = (d / "tern.log").read_text(errors="replace")
    assert "AddressSanitizer" not in text and "runtime error" not in text, text
    assert rc == 0, f"exit {rc}\n{text[-3000:]}"
