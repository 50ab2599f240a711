"""RFC 5321 receiving side: replies, sequence, syntax, extensions, limits, pipelining."""

import os
import re
import signal
import socket
import threading
import time

import pytest

from conftest import (ConnectionClosed, Raw, expect, make_message, split_trace,
                      QUEUED_AS_RE)

ENH_5_5_X = re.compile(r"5\.5\.\d+")
ENH_5_1_OR_5 = re.compile(r"5\.[15]\.\d+")
ENH_2_X = re.compile(r"2\.\d+\.\d+")


def test_greeting_is_220_with_hostname(tern):
    with tern.client() as c:
        assert c.greeting.code == 220
        assert "mx.example.test" in c.greeting.lines[0]


def test_ehlo_advertises_extensions(tern):
    with tern.client() as c:
        r = c.ehlo()
        assert "mx.example.test" in r.lines[0]
        kws = {ln.split()[0].upper(): ln for ln in r.texts[1:]}
        for kw in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                   "CHUNKING", "DSN"):
            assert kw in kws, f"{kw} not in EHLO: {r.lines}"
        # max_message_size = 1m, documented as 1024*1024
        assert kws["SIZE"].split() == ["SIZE", "1048576"], kws["SIZE"]
        assert "BINARYMIME" in kws, "BDAT with BINARYMIME is required; advertise it"


def test_helo_accepted(tern):
    with tern.client() as c:
        r = c.cmd("HELO client.example.org")
        assert r.code == 250 and len(r.lines) == 1


def test_full_transaction_reply_codes(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("codes") + b".\r\n")
        r = expect(c.reply(), 250, "2.0.0")
        m = QUEUED_AS_RE.search(r.text)
        assert m, f"no 'queued as ID' (16 chars 0-9A-Z) in {r!r}"
        expect(c.cmd("RSET"), 250, "2.0.0")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        expect(c.cmd("HELP"), 214)
        expect(c.cmd("QUIT"), 221, "2.0.0")
        assert c.closed_by_peer(5)


def test_every_reply_carries_enhanced_code_after_ehlo(tern):
    with tern.client() as c:
        c.ehlo()
        for line in ("NOOP", "RSET", "HELP", "VRFY alice@example.test", "EXPN team@example.test",
                     "FOO", "MAIL FROM:<a@example.org>", "RCPT TO:<alice@example.test>",
                     "RCPT TO:<nobody@example.test>", "DATA"):
            r = c.cmd(line)
            if r.code == 354:
                c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
                r = c.reply()
            assert r.enh is not None, f"{line!r} -> {r!r} has no enhanced status code"
            assert r.enh[0] == str(r.code)[0], f"{line!r} -> {r!r}: class mismatch"


def test_vrfy_252_and_expn_502(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("VRFY alice@example.test"), 252, ENH_2_X)
        expect(c.cmd("VRFY nobody-here@example.test"), 252, ENH_2_X)
        expect(c.cmd("EXPN team@example.test"), 502, "5.5.1")


@pytest.mark.tern_config({"vrfy": False, "expn": True})
def test_vrfy_and_expn_are_configurable(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("VRFY alice@example.test"), 502, "5.5.1")
        # enabled EXPN may list the members (250) or decline to disclose (252)
        r = c.cmd("EXPN team@example.test")
        assert r.code in (250, 252) and r.enh and r.enh.startswith("2."), r


def test_unknown_command_500(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("FOOBAR baz"), 500, "5.5.2")
        expect(c.cmd("NOOP"), 250, "2.0.0")


@pytest.mark.parametrize("setup,line,code,enh", [
    ([], "MAIL FROM:<alice@example.test>", 503, "5.5.1"),          # before EHLO/HELO
    (["EHLO c.example.org"], "RCPT TO:<alice@example.test>", 503, "5.5.1"),
    (["EHLO c.example.org"], "DATA", 503, "5.5.1"),
    (["EHLO c.example.org", "MAIL FROM:<a@example.org>"], "DATA", 503, "5.5.1"),
    (["EHLO c.example.org", "MAIL FROM:<a@example.org>"], "MAIL FROM:<b@example.org>", 503, "5.5.1"),
    (["EHLO c.example.org", "MAIL FROM:<a@example.org>", "RCPT TO:<nobody@example.test>"],
     "DATA", 503, "5.5.1"),  # every RCPT refused: no valid recipient
    (["EHLO c.example.org", "MAIL FROM:<a@example.org>", "RSET"],
     "RCPT TO:<alice@example.test>", 503, "5.5.1"),  # RSET ends the transaction
    (["EHLO c.example.org", "MAIL FROM:<a@example.org>", "EHLO c.example.org"],
     "RCPT TO:<alice@example.test>", 503, "5.5.1"),  # so does a new EHLO
], ids=["mail-before-helo", "rcpt-before-mail", "data-before-mail", "data-before-rcpt",
        "nested-mail", "data-after-only-refused-rcpt", "rcpt-after-rset", "rcpt-after-ehlo"])
def test_sequence_errors_503(tern, setup, line, code, enh):
    with tern.client() as c:
        for s in setup:
            c.cmd(s)
        expect(c.cmd(line), code, enh)
        # the session is still usable
        expect(c.cmd("NOOP"), 250, "2.0.0")


SYNTAX_ERRORS = [
    ([], "EHLO"),
    ([], "HELO"),
    (["EHLO c"], "MAIL FROM:<alice@example.test"),
    (["EHLO c"], "MAIL TO:<alice@example.test>"),
    (["EHLO c"], "MAIL FROM:<alice@@example.test>"),
    (["EHLO c"], "MAIL FROM:<alice@example.test> SIZE=abc"),
    (["EHLO c"], "MAIL FROM:<alice@example.test> BODY=9BIT"),
    (["EHLO c"], "MAIL FROM:<alice@example.test> RET=SOMETIMES"),
    (["EHLO c", "MAIL FROM:<a@example.org>"], "RCPT TO:<>"),
    (["EHLO c", "MAIL FROM:<a@example.org>"], "RCPT TO:alice"),
    (["EHLO c", "MAIL FROM:<a@example.org>"], "RCPT TO:<alice@example.test> NOTIFY=SOMETIMES"),
    (["EHLO c", "MAIL FROM:<a@example.org>"], "RCPT FROM:<alice@example.test>"),
    (["EHLO c"], "VRFY"),
]


@pytest.mark.parametrize("setup,line", SYNTAX_ERRORS, ids=[l for _, l in SYNTAX_ERRORS])
def test_syntax_errors_501(tern, setup, line):
    with tern.client() as c:
        for s in setup:
            c.cmd(s)
        expect(c.cmd(line), 501, ENH_5_1_OR_5)
        expect(c.cmd("NOOP"), 250, "2.0.0")


def test_unknown_mail_parameter_555(tern):
    # RFC 5321 4.1.1.11: unrecognised parameters get 555
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org> X-FROB=1"), 555, "5.5.4")
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test> X-FROB=1"), 555, "5.5.4")


def test_command_line_too_long_500_and_session_usable(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("NOOP " + "x" * 1000), 250, "2.0.0")  # well under 2048
        expect(c.cmd("NOOP " + "x" * 5000), 500, "5.5.2")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        expect(c.cmd("MAIL FROM:<" + "a" * 4000 + "@example.org>"), 500, "5.5.2")
        qid = c.send_message("s@example.org", ["alice@example.test"], make_message("after-long"),
                             helo=False)
        assert qid


def test_size_parameter_over_limit_552(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org> SIZE=2000000"), 552, "5.3.4")
        expect(c.cmd("MAIL FROM:<a@example.org> SIZE=1000"), 250, "2.1.0")


def test_data_over_max_size_552_then_new_transaction_works(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        line = b"y" * 998 + b"\r\n"
        c.send(b"Subject: too big\r\n\r\n" + line * 1200 + b".\r\n")  # ~1.2 MB
        expect(c.reply(), 552, "5.3.4")
        c.send_message("a@example.org", ["alice@example.test"],
                       make_message("after-too-big"), helo=False)
    tern.wait_mail_with("alice@example.test", "after-too-big")
    time.sleep(0.3)
    assert not any(b"too big" in p.read_bytes() for p in tern.mail_files())


def test_bdat_over_max_size_552(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        chunk = b"Subject: bdat-too-big\r\n\r\n" + b"z" * 700000
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        expect(c.reply(), 250, "2.0.0")  # 700 kB: under the 1 MiB limit so far
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        expect(c.reply(), 552, "5.3.4")  # 1.4 MB in total
        expect(c.cmd("RSET"), 250, "2.0.0")
        c.send_message("a@example.org", ["alice@example.test"], make_message("after-bdat-big"),
                       helo=False)
    tern.wait_mail_with("alice@example.test", "after-bdat-big")
    assert not any(b"bdat-too-big" in p.read_bytes() for p in tern.mail_files())


def test_max_recipients_452(tern):
    rcpts = ["alice@example.test", "bob@example.test", "team@example.test",
             "postmaster@example.test", "postmaster@localhost"]
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        for r in rcpts:
            expect(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<Postmaster>"), 452, "4.5.3")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("five-rcpts") + b".\r\n")
        expect(c.reply(), 250, "2.0.0")


@pytest.mark.tern_config({"limits": {"max_errors": 5}})
def test_too_many_errors_421_and_close(tern):
    with tern.client() as c:
        c.ehlo()
        got = []
        try:
            for _ in range(7):
                got.append(c.cmd("BOGUS"))
                if got[-1].code == 421:
                    break
        except ConnectionClosed:
            pass
        assert got and got[-1].code == 421, f"no 421 after {len(got)} bad commands: {got}"
        expect(got[-1], 421, "4.7.0")
        assert len(got) <= 6, got
        assert all(r.code == 500 for r in got[:-1])
        assert c.closed_by_peer(5)


@pytest.mark.tern_config({"limits": {"idle_timeout": Raw("2s")}})
def test_idle_timeout_421_and_close(tern):
    with tern.client() as c:
        c.ehlo()
        t0 = time.monotonic()
        c.sock.settimeout(10)
        r = c.reply()
        waited = time.monotonic() - t0
        expect(r, 421, "4.4.2")
        assert 1.5 <= waited <= 6, waited
        assert c.closed_by_peer(5)


@pytest.mark.tern_config({"limits": {"data_timeout": Raw("2s")}})
def test_data_timeout_421_and_close_and_nothing_delivered(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: stalled\r\n\r\nhalf a mess")
        c.sock.settimeout(10)
        r = c.reply()
        expect(r, 421, re.compile(r"4\.4\.\d+"))
        assert c.closed_by_peer(5)
    time.sleep(0.5)
    assert not any(b"stalled" in p.read_bytes() for p in tern.mail_files())


@pytest.mark.tern_config({"limits": {"max_connections_per_ip": 3}})
def test_connections_per_ip_limit_421_at_greeting(tern):
    held = [tern.client() for _ in range(3)]
    for c in held:
        assert c.greeting.code == 220
    extra = tern.client()
    expect(extra.greeting, 421, "4.7.0")
    assert extra.closed_by_peer(5)
    # another address is not affected
    other = tern.client(source="127.0.0.2")
    assert other.greeting.code == 220
    # when one closes, a new connection from the same IP is allowed again
    held[0].cmd("QUIT")
    held[0].close()
    deadline = time.monotonic() + 5
    while True:
        c = tern.client()
        if c.greeting.code == 220:
            break
        c.close()
        assert time.monotonic() < deadline, "slot not released after QUIT"
        time.sleep(0.1)


@pytest.mark.tern_config({"limits": {"max_connections": 3, "max_connections_per_ip": 20}})
def test_total_connections_limit_421(tern):
    held = [tern.client() for _ in range(3)]
    for c in held:
        assert c.greeting.code == 220
    extra = tern.client(source="127.0.0.3")
    expect(extra.greeting, 421, "4.7.0")


def test_null_sender_accepted(tern):
    with tern.client() as c:
        qid = c.send_message("", ["alice@example.test"], make_message("null-sender"))
    (p, data), = tern.wait_mail_with("alice@example.test", "null-sender")
    assert data.startswith(b"Return-Path: <>"), data[:80]
    assert qid.encode() in data


@pytest.mark.parametrize("rcpt", ["<Postmaster>", "<postmaster>", "<POSTMASTER@example.test>",
                                  "<postmaster@localhost>", "<Postmaster@LocalHost>"])
def test_postmaster_always_accepted(tern, rcpt):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd(f"RCPT TO:{rcpt}"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("to-postmaster") + b".\r\n")
        expect(c.reply(), 250, "2.0.0")


def test_unknown_local_user_550_511(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<nobody-here@example.test>"), 550, "5.1.1")
        expect(c.cmd("RCPT TO:<nobody-here@localhost>"), 550, "5.1.1")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
    tern.wait_log(r"event=rejected.*client=127\.0\.0\.1|client=127\.0\.0\.1.*event=rejected")


def test_recipient_case_insensitive_domain(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@EXAMPLE.TEST>"), 250, "2.1.5")


def test_quoted_local_part_is_valid_syntax(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd('MAIL FROM:<"john doe"@example.org>'), 250, "2.1.0")
        # no such user, but the syntax is fine: 550 5.1.1, never 501
        expect(c.cmd('RCPT TO:<"john doe"@example.test>'), 550, "5.1.1")
        expect(c.cmd('RCPT TO:<alice@example.test>'), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("quoted-sender", frm="john doe@example.org") + b".\r\n")
        expect(c.reply(), 250, "2.0.0")
    (p, data), = tern.wait_mail_with("alice@example.test", "quoted-sender")
    assert data.startswith(b'Return-Path: <"john doe"@example.org>'), data[:80]


@pytest.mark.tern_users(["alice@example.test", "bob@example.test", "jøran@example.test"])
def test_utf8_address_needs_smtputf8(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<jøran@example.org>"), 553, "5.6.7")
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<jøran@example.test>"), 553, "5.6.7")
        expect(c.cmd("RSET"), 250, "2.0.0")
        expect(c.cmd("MAIL FROM:<jøran@example.org> SMTPUTF8"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<jøran@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("utf8-ok", frm="jøran@example.org", to="jøran@example.test",
                            body="grüße\r\n") + b".\r\n")
        qid = expect(c.reply(), 250, "2.0.0").queue_id()
    files = tern.wait_mail("jøran@example.test", lambda d: b"utf8-ok" in d)
    nl, hdrs, rest = split_trace(files[0][1])
    assert hdrs[0] == "Return-Path: <jøran@example.org>"
    assert re.fullmatch(r"Delivered-To: <?jøran@example\.test>?", hdrs[1]), hdrs[1]
    assert re.search(rf"with UTF8SMTP id {qid}\b", hdrs[2]), hdrs[2]


def test_dsn_parameters_accepted(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=x"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE "
                     "ORCPT=rfc822;alice@example.test"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<bob@example.test> NOTIFY=NEVER"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("dsn-params") + b".\r\n")
        expect(c.reply(), 250, "2.0.0")
        expect(c.cmd("MAIL FROM:<a@example.org> RET=FULL ENVID=QQ+2Bid SIZE=100 BODY=8BITMIME"),
               250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test> NOTIFY=DELAY ORCPT=rfc822;x+40y@example.org"),
               250, "2.1.5")
    tern.wait_mail_with("alice@example.test", "dsn-params")
    tern.wait_mail_with("bob@example.test", "dsn-params")


def test_body_8bitmime_accepted(tern):
    with tern.client() as c:
        c.ehlo()
        msg = "Subject: eight-bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nçà va\r\n"
        c.send_message("a@example.org", ["alice@example.test"], msg.encode(),
                       mail_params="BODY=8BITMIME", helo=False)
    (p, data), = tern.wait_mail_with("alice@example.test", "eight-bit")
    assert "çà va".encode() in data


def test_bdat_two_chunks(tern):
    chunk1 = b"From: <a@example.org>\r\nSubject: bdat-two\r\n\r\nfirst part\r\n.leading dot\r\n"
    chunk2 = b"inside\r\n.\r\nnot the end\r\nlast line\r\n"
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        expect(c.reply(), 250, "2.0.0")
        c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        r = expect(c.reply(), 250, "2.0.0")
        qid = r.queue_id()
        assert qid, r
        expect(c.cmd("NOOP"), 250, "2.0.0")
    (p, data), = tern.wait_mail_with("alice@example.test", "bdat-two")
    nl, hdrs, rest = split_trace(data)
    sent = chunk1 + chunk2
    assert rest == (sent if nl == b"\r\n" else sent.replace(b"\r\n", b"\n")), rest
    assert f"id {qid}" in hdrs[2]


def test_bdat_zero_last_and_pipelined(tern):
    chunk = b"Subject: bdat-pipelined\r\n\r\nbody\r\n"
    with tern.client() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
               + b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT 0 LAST\r\n")
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 250, "2.0.0")
        assert c.reply().queue_id()
    tern.wait_mail_with("alice@example.test", "bdat-pipelined")


def test_bdat_binarymime(tern):
    payload = bytes(b for b in range(256) if b != 0x0D) * 4
    head = b"Subject: binary-mime\r\nContent-Type: application/octet-stream\r\n\r\n"
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(head) + head)
        expect(c.reply(), 250, "2.0.0")
        c.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
        expect(c.reply(), 250, "2.0.0")
    (p, data), = tern.wait_mail_with("alice@example.test", "binary-mime")
    nl, hdrs, rest = split_trace(data)
    assert rest.endswith(payload), "binary body altered"


def test_binarymime_refuses_data(tern):
    # RFC 3030: BODY=BINARYMIME can only be sent with BDAT
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 503, "5.5.1")
        expect(c.cmd("RSET"), 250, "2.0.0")


def test_bdat_without_transaction_consumes_chunk(tern):
    with tern.client() as c:
        c.ehlo()
        c.send(b"BDAT 12 LAST\r\nNOOP\r\nNOOP\r\n")
        expect(c.reply(), 503, "5.5.1")
        expect(c.cmd("HELP"), 214)  # the chunk was not read as commands
        assert c.pending(0.3) == b""


def test_rcpt_between_bdat_chunks_refused(tern):
    # Once BDAT has begun the message (and its Received header, which names
    # the only recipient) is on its way: a recipient added now would get a
    # copy written for someone else.
    chunk1 = b"From: <a@example.org>\r\nSubject: bdat-rcpt-late\r\n\r\nfirst\r\n"
    chunk2 = b"second\r\n"
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        expect(c.reply(), 250, "2.0.0")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 503, "5.5.1")
        c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        qid = expect(c.reply(), 250, "2.0.0").queue_id()
    (p, data), = tern.wait_mail_with("alice@example.test", "bdat-rcpt-late")
    nl, hdrs, rest = split_trace(data)
    assert f"id {qid}" in hdrs[2] and "for <alice@example.test>" in hdrs[2], hdrs[2]
    tern.wait_log(rf"event=delivered id={qid} ")
    assert not tern.mail_files("bob@example.test"), "the late recipient got the message"
    assert len(tern.log_lines("event=delivered", f"id={qid}")) == 1


def test_bdat_with_bad_keyword_skips_its_chunk(tern):
    # "BDAT n LASTX" is refused, but its n bytes follow all the same: they
    # are message data and must never run as commands.
    chunk = b"MAIL FROM:<evil@example.org>\r\n"
    with tern.client() as c:
        c.ehlo()
        c.send(b"BDAT %d LASTX\r\n" % len(chunk) + chunk + b"NOOP\r\n")
        expect(c.reply(), 501, "5.5.4")
        expect(c.reply(), 250, "2.0.0")  # the NOOP; a 2.1.0 would be the smuggled MAIL
        assert c.pending(0.3) == b""
        # The session is in sync: a real transaction works.
        c.send_message("a@example.org", ["alice@example.test"], make_message("after-lastx"),
                       helo=False)
    tern.wait_mail_with("alice@example.test", "after-lastx")


def test_bad_bdat_inside_transaction_drops_it(tern):
    # A refused chunk cannot be left out of the message: the transaction is
    # dropped and the chunks pipelined behind are skipped, not delivered.
    bad = b"Subject: bdat-bad-middle\r\n\r\n"
    last = b"tail\r\n"
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d LAST NOW\r\n" % len(bad) + bad + b"BDAT %d LAST\r\n" % len(last)
               + last)
        expect(c.reply(), 501, "5.5.4")
        expect(c.reply(), 503, "5.5.1")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        c.send_message("a@example.org", ["alice@example.test"], make_message("after-bad-middle"),
                       helo=False)
    tern.wait_mail_with("alice@example.test", "after-bad-middle")
    assert not tern.mail_files("bob@example.test")
    for p in tern.mail_files("alice@example.test"):
        assert b"tail" not in p.read_bytes(), "a message missing its refused chunk was delivered"


def test_bdat_without_readable_size_closes(tern):
    with tern.client() as c:
        c.ehlo()
        c.send(b"BDAT 1x LAST\r\nMAIL FROM:<evil@example.org>\r\n")
        expect(c.reply(), 501, "5.5.4")
        expect(c.reply(), 421, "4.5.0")
        assert c.closed_by_peer(5)  # and the MAIL behind it was never answered


LOG_FIELD_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def log_fields(line):
    """The key=value fields of a log line as a logfmt reader sees them: a value
    is quoted only if it starts with a quote, else it ends at the first space."""
    rest = line.split(" ", 2)[2]  # after the timestamp and the level
    fields, pos = [], 0
    while pos < len(rest):
        m = LOG_FIELD_RE.match(rest, pos)
        assert m and m.end() > pos, f"not key=value at {rest[pos:]!r} in {line!r}"
        fields.append((m.group(1), m.group(2)))
        pos = m.end()
    return fields


def test_envelope_addresses_cannot_forge_log_fields(tern):
    # A quoted local part may hold spaces and '=': logged bare, from=<"x id=..."@d>
    # gave a log reader an extra id= field.
    sender = '"x id=FAKE1 event=bounced y"@example.org'
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{sender}>"), 250, "2.1.0")
        expect(c.cmd('RCPT TO:<"nobody id=FAKE2 z"@example.test>'), 550, "5.1.1")
        expect(c.cmd('RCPT TO:<"far id=FAKE3 z"@remote.example.org>'), 550, "5.7.1")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("forged-fields") + b".\r\n")
        qid = expect(c.reply(), 250, "2.0.0").queue_id()
    tern.wait_mail_with("alice@example.test", "forged-fields")
    tern.wait_log(rf"event=delivered id={qid} ")
    seen = 0
    for ln in tern.log().splitlines():
        if "event=" not in ln:
            continue
        f = log_fields(ln)
        assert not [kv for kv in f if kv[1].startswith("FAKE")], f"forged log field: {ln}"
        assert [k for k, _ in f].count("event") == 1, f"forged event field: {ln}"
        seen += "FAKE" in ln
    assert seen >= 3, tern.log_tail()  # the queued line and both rejections name them, quoted
    queued = tern.wait_log(rf"^.*event=queued id={qid} .*$").group(0)
    assert dict(log_fields(queued))["from"].startswith('"<'), queued


def _received_headers(n):
    return "".join(f"Received: from h{i}.example.org by h{i+1}.example.org; "
                   f"Mon, 1 Jan 2024 00:00:00 +0000\r\n" for i in range(n))


def test_mail_loop_101_received_554(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send((_received_headers(101) + "Subject: looping\r\n\r\nloop\r\n.\r\n").encode())
        expect(c.reply(), 554, "5.4.6")
        # 100 is still fine (the default limit is "more than 100")
        qid = c.send_message("a@example.org", ["alice@example.test"],
                             (_received_headers(100) + "Subject: hundred\r\n\r\nok\r\n").encode(),
                             helo=False)
        assert qid
    tern.wait_mail_with("alice@example.test", "hundred")
    assert not any(b"looping" in p.read_bytes() for p in tern.mail_files())


@pytest.mark.tern_config({"limits": {"max_received_headers": 3}})
def test_mail_loop_limit_is_configurable(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send((_received_headers(4) + "Subject: loop4\r\n\r\nloop\r\n.\r\n").encode())
        expect(c.reply(), 554, "5.4.6")
        c.send_message("a@example.org", ["alice@example.test"],
                       (_received_headers(3) + "Subject: three\r\n\r\nok\r\n").encode(),
                       helo=False)


def test_pipelined_mail_rcpt_rcpt_data(tern):
    with tern.client() as c:
        c.ehlo()
        c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
               "RCPT TO:<bob@example.test>\r\nDATA\r\n")
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 354)
        c.send(make_message("pipelined-1") + b".\r\n")
        expect(c.reply(), 250, "2.0.0")
    tern.wait_mail_with("alice@example.test", "pipelined-1")
    tern.wait_mail_with("bob@example.test", "pipelined-1")


def test_pipelined_rset_with_bad_rcpt(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<x@example.org>"), 250, "2.1.0")
        c.send("RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nobody-here@example.test>\r\n"
               "RCPT TO:<alice@example.test>\r\nDATA\r\n")
        expect(c.reply(), 250, "2.0.0")
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 550, "5.1.1")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 354)
        c.send(make_message("pipelined-2") + b".\r\n")
        expect(c.reply(), 250, "2.0.0")
        assert c.pending(0.3) == b""


def test_pipelined_next_transaction_after_end_of_data(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("pipe-a") + b".\r\nMAIL FROM:<b@example.org>\r\n"
               b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
        q1 = expect(c.reply(), 250, "2.0.0").queue_id()
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 354)
        c.send(make_message("pipe-b") + b".\r\nQUIT\r\n")
        q2 = expect(c.reply(), 250, "2.0.0").queue_id()
        expect(c.reply(), 221, "2.0.0")
        assert q1 != q2
    tern.wait_mail_with("alice@example.test", "pipe-a")
    tern.wait_mail_with("bob@example.test", "pipe-b")


def test_many_pipelined_transactions_in_one_write(tern):
    n = 20
    batch = b""
    for i in range(n):
        batch += (b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        batch += make_message(f"burst-{i:02d}") + b".\r\n"
    # Not legal for a client to send data before 354 under RFC 2920, but a server
    # must never desynchronise on it: every reply appears once, in order.
    with tern.client() as c:
        c.ehlo()
        c.send(batch)
        for i in range(n):
            expect(c.reply(), 250, "2.1.0")
            expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 354)
            expect(c.reply(), 250, "2.0.0")
        assert c.pending(0.3) == b""
    tern.wait_mail("alice@example.test", lambda d: b"burst-" in d, count=n)


def test_empty_message_keeps_session_in_sync(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(b".\r\n")  # empty message: still a message
        r = c.reply()
        assert r.code in (250, 554), r  # accepting or refusing an empty message are both sane
        expect(c.cmd("NOOP"), 250, "2.0.0")


def _vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def small_asan_quarantine(monkeypatch):
    # A sanitizer build keeps up to 256 MB of freed memory in quarantine, which
    # would hide what this measures; a plain build ignores the variable.
    monkeypatch.setenv("ASAN_OPTIONS", os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8")


def test_pipelined_flood_without_reading_keeps_memory_bounded(small_asan_quarantine, tern):
    # A client that pipelines commands and never reads its replies must not
    # make the server buffer replies without bound: it stops reading.
    per_block, blocks = 999, 3500  # ~21 MB of commands, 3.5M replies (~50 MB)
    block = b"NOOP\r\n" * per_block + b"HELP\r\n"
    rss_before = _vm_rss_kb(tern.pid)
    c = tern.client()
    c.ehlo()
    # the exact bytes each reply is, to check the flood's replies fast
    raw = lambda r: "".join(ln + "\r\n" for ln in r.lines).encode()
    expected_block = raw(c.cmd("NOOP")) * per_block + raw(c.cmd("HELP"))
    sent = [0]
    err = []

    def sender():
        try:
            for _ in range(blocks):
                c.sock.sendall(block)
                sent[0] += 1
        except OSError as e:  # the test failed and closed the socket
            err.append(e)

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    # The server stops reading: the sender stalls long before the end.
    stalled_at, deadline = -1, time.monotonic() + 20
    while time.monotonic() < deadline and th.is_alive():
        n = sent[0]
        time.sleep(1.0)
        if sent[0] == n:
            stalled_at = n
            break
    assert stalled_at >= 0 and stalled_at < blocks, "sender never stalled: no backpressure"
    rss_stalled = _vm_rss_kb(tern.pid)
    assert rss_stalled < 100 * 1024, f"VmRSS {rss_stalled} kB while the client does not read"
    # Now read everything: every reply arrives, in order.
    c.sock.settimeout(30)
    total, pos = len(expected_block) * blocks, 0
    L = len(expected_block)
    assert c.buf == b""
    while pos < total:
        data = c.sock.recv(1 << 16)
        assert data, f"connection closed after {pos} of {total} reply bytes"
        start = pos % L
        want = (expected_block * (len(data) // L + 2))[start:start + len(data)]
        assert data == want, f"replies out of order or wrong at byte {pos}"
        pos += len(data)
    th.join(30)
    assert not th.is_alive() and not err, err
    expect(c.cmd("QUIT"), 221, "2.0.0")
    c.close()
    rss_after = _vm_rss_kb(tern.pid)
    assert rss_after < 100 * 1024, f"VmRSS {rss_after} kB after the flood (before {rss_before})"


def test_sigterm_with_transaction_open_lets_it_finish(tern):
    # Between MAIL/RCPT and DATA the transaction is in flight: shutdown lets the
    # client finish it (within shutdown_grace), then closes with 421.
    c = tern.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
    tern.signal(signal.SIGTERM)
    tern.wait_log(r"event=stopping")
    time.sleep(0.5)
    assert c.pending(0.2) == b"", "the session was closed with its transaction open"
    assert tern.proc.poll() is None, "exited with a transaction open"
    expect(c.cmd("DATA"), 354)
    c.send(make_message("open-at-sigterm") + b".\r\n")
    r = expect(c.reply(), 250, "2.0.0")
    qid = r.queue_id()
    expect(c.reply(), 421, "4.3.2")
    assert c.closed_by_peer(5)
    rc = tern.proc.wait(12)
    assert rc == 0, tern.log_tail()
    # acknowledged means delivered: now, or from the spool after a restart
    tern.start()
    tern.wait_mail_with("alice@example.test", qid)
