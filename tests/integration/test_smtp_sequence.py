"""The session's command sequence (RFC 5321 §4.1.4, RFC 3030, RFC 3207, RFC 4954), walked as a
table: every command in every state a client can reach. A command out of sequence gets
503 5.5.1 with the same words wherever the same thing is missing, changes nothing (the state
before it still works), and a refused BDAT's chunk is skipped, never run as commands."""

import base64
import shutil
import ssl
import subprocess

import pytest

from capture_harness import Capture
from conftest import Tern, expect, make_message, make_tmpdir
from remote_harness import DNS_RECORDS, Unbound

EHLO = "EHLO c.example.org"
MAIL = "MAIL FROM:<a@example.org>"
RCPT = "RCPT TO:<alice@example.test>"
# A chunk whose bytes would answer 214 if they were ever read as a command.
CHUNK = b"HELP\r\n"
BDAT = b"BDAT %d\r\n" % len(CHUNK) + CHUNK


def run_setup(c, steps):
    for step in steps:
        if isinstance(step, bytes):
            c.send(step)
            r = c.reply()
        elif step == "DATA":
            expect(c.cmd("DATA"), 354)
            c.send(make_message("sequence-walk") + b".\r\n")
            r = c.reply()
        else:
            r = c.cmd(step)
        assert r.code in (220, 221, 235, 250, 334), f"setup {step!r} -> {r!r}"


# The states a client reaches, as the commands that lead there.
STATES = {
    "greeted": [],
    "helo": ["HELO c.example.org"],
    "ehlo": [EHLO],
    "mail": [EHLO, MAIL],
    "rcpt": [EHLO, MAIL, RCPT],
    "chunking": [EHLO, MAIL, RCPT, BDAT],
    "after-message": [EHLO, MAIL, RCPT, "DATA"],
}

# A command that works in each state and needs exactly that state: after a refused command
# it shows the session was left where it was.
PROBES = {
    "greeted": ("MAIL FROM:<p@example.org>", 503, "5.5.1"),  # still no HELO
    "helo": ("MAIL FROM:<p@example.org>", 250, "2.1.0"),
    "ehlo": ("MAIL FROM:<p@example.org>", 250, "2.1.0"),
    "mail": ("RCPT TO:<bob@example.test>", 250, "2.1.5"),
    "rcpt": ("DATA", 354, None),
    "chunking": (b"BDAT 0 LAST\r\n", 250, "2.0.0"),
    "after-message": ("MAIL FROM:<p@example.org>", 250, "2.1.0"),
}

COMMANDS = {
    "HELO": "HELO c.example.org",
    "EHLO": EHLO,
    "MAIL": "MAIL FROM:<b@example.org>",
    "RCPT": "RCPT TO:<bob@example.test>",
    "DATA": "DATA",
    "BDAT": BDAT,
    "RSET": "RSET",
    "NOOP": "NOOP",
    "VRFY": "VRFY alice@example.test",
    "HELP": "HELP",
    "STARTTLS": "STARTTLS",  # no certificate here: never offered
    "AUTH": "AUTH PLAIN",    # not offered on an mx listener
    "FOO": "FOO bar",
    "QUIT": "QUIT",
}

# What is missing when a command comes out of sequence (the same words every time).
NEED_HELO, NEED_MAIL, NEED_RCPT, IN_TX, AFTER_BDAT = ("need-helo", "need-mail", "need-rcpt",
                                                       "in-transaction", "after-bdat")
ALL = tuple(STATES)
NO_TX = ("greeted", "helo", "ehlo", "after-message")


def expected(state, command):
    """(code, enhanced code, what is missing or None)."""
    seq = {
        "MAIL": {"greeted": NEED_HELO, "mail": IN_TX, "rcpt": IN_TX, "chunking": IN_TX},
        "RCPT": dict({s: NEED_MAIL for s in NO_TX}, chunking=AFTER_BDAT),
        "DATA": dict({s: NEED_MAIL for s in NO_TX}, mail=NEED_RCPT, chunking=AFTER_BDAT),
        "BDAT": dict({s: NEED_MAIL for s in NO_TX}, mail=NEED_RCPT),
    }
    if state in seq.get(command, {}):
        return 503, "5.5.1", seq[command][state]
    return {
        "HELO": (250, None, None), "EHLO": (250, None, None),
        "MAIL": (250, "2.1.0", None), "RCPT": (250, "2.1.5", None),
        "DATA": (354, None, None), "BDAT": (250, "2.0.0", None),
        "RSET": (250, "2.0.0", None), "NOOP": (250, "2.0.0", None),
        "VRFY": (252, "2.5.0", None), "HELP": (214, "2.0.0", None),
        "STARTTLS": (502, "5.5.1", None), "AUTH": (502, "5.5.1", None),
        "FOO": (500, "5.5.2", None), "QUIT": (221, "2.0.0", None),
    }[command]


def send(c, what):
    if isinstance(what, bytes):
        c.send(what)
        return c.reply()
    return c.cmd(what)


@pytest.fixture(scope="module")
def mx():
    t = Tern()
    t.start()
    yield t
    rc = t.stop()
    t.check_sanitizers()
    assert rc != "killed-after-timeout", t.log_tail()
    t.cleanup()


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("state", list(STATES))
def test_every_command_in_every_state(mx, state, command):
    code, enh, missing = expected(state, command)
    with mx.client() as c:
        run_setup(c, STATES[state])
        r = expect(send(c, COMMANDS[command]), code, enh)
        if command == "QUIT":
            assert c.closed_by_peer(5)
            return
        if r.code == 354:
            c.send(b".\r\n")
            expect(c.reply(), 250, "2.0.0")
        if missing or r.code >= 500:
            # refused: nothing changed, and no chunk byte ran as a command (a 214 here)
            probe, pcode, penh = PROBES[state]
            expect(send(c, probe), pcode, penh)
        else:
            expect(c.cmd("NOOP"), 250, "2.0.0")


def test_the_same_thing_missing_gets_the_same_words(mx):
    """One reply per missing step, whichever command found it missing (the verb may be named)."""
    words = {}
    for state in STATES:
        for command, line in COMMANDS.items():
            code, _, missing = expected(state, command)
            if not missing:
                continue
            with mx.client() as c:
                run_setup(c, STATES[state])
                r = expect(send(c, line), 503, "5.5.1")
            text = r.text.split(" ", 1)[1].replace(command, "<verb>")
            words.setdefault(missing, {})[(state, command)] = text
    for missing, seen in words.items():
        assert len(set(seen.values())) == 1, f"{missing}: different words {seen}"
    assert len({next(iter(s.values())) for s in words.values()}) == len(words), words


def test_refused_bdat_chunks_never_run_as_commands(mx):
    # A pipelined burst: each refused BDAT's bytes are skipped (RFC 3030 §4), so only the
    # replies to the commands themselves come back, in order.
    with mx.client() as c:
        c.send(BDAT + b"HELO x\r\n" + BDAT + b"MAIL FROM:<a@example.org>\r\n" + BDAT + b"NOOP\r\n")
        expect(c.reply(), 503, "5.5.1")  # BDAT before MAIL
        expect(c.reply(), 250)           # HELO
        expect(c.reply(), 503, "5.5.1")  # BDAT still before MAIL
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 503, "5.5.1")  # BDAT before RCPT
        expect(c.reply(), 250, "2.0.0")  # NOOP, not the 214 of a chunk
        assert c.pending(0.3) == b""


# ------------------------------------------------------------- refused at the greeting

LISTED = "127.0.0.5"  # in the test DNSBL: greeted with 554


@pytest.fixture(scope="module")
def refusing_mx():
    dns = Unbound(DNS_RECORDS + [("5.0.0.127.bl.test", "A", "127.0.0.2")]).start()
    t = Tern({"relay": {"networks": ["127.0.0.1/32"]}, "dns": {"forward": [dns.forward]},
              "policy": {"dnsbl": {"zones": ["bl.test"], "threshold": 1}}})
    t.start()
    yield t
    rc = t.stop()
    dns.stop()
    t.check_sanitizers()
    assert rc != "killed-after-timeout", t.log_tail()
    t.cleanup()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_after_a_554_greeting_only_quit(refusing_mx, command):
    # RFC 5321 §3.1: the server waits for QUIT and answers 503 to anything else; a BDAT's
    # chunk is skipped like any refused BDAT's (its HELP would answer a second 503 here).
    with refusing_mx.client(source=LISTED) as c:
        expect(c.greeting, 554, "5.7.1")
        if command == "QUIT":
            expect(c.cmd("QUIT"), 221, "2.0.0")
            return
        if command == "FOO":
            expect(c.cmd(COMMANDS[command]), 500, "5.5.2")  # not a command at all
        else:
            expect(send(c, COMMANDS[command]), 503, "5.7.1")
        expect(c.cmd("QUIT"), 221, "2.0.0")
        assert c.closed_by_peer(5)


# ---------------------------------------------------------------------------- STARTTLS


@pytest.fixture(scope="module")
def tls_mx():
    d = make_tmpdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True)
    t = Tern({"tls": {"cert_file": str(cert), "key_file": str(key)}})
    t.start()
    yield t
    rc = t.stop()
    t.check_sanitizers()
    assert rc != "killed-after-timeout", t.log_tail()
    t.cleanup()
    shutil.rmtree(d, ignore_errors=True)


def start_tls(c):
    """Puts the conftest client's socket under TLS (after 220 to STARTTLS)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed test certificate
    assert c.buf == b"", c.buf
    c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")


@pytest.mark.parametrize("before", [[], [EHLO], [EHLO, MAIL], [EHLO, MAIL, RCPT],
                                    [EHLO, MAIL, RCPT, BDAT]],
                         ids=["greeted", "ehlo", "mail", "rcpt", "chunking"])
def test_starttls_in_each_state_then_only_once(tls_mx, before):
    with tls_mx.client() as c:
        run_setup(c, before)
        expect(c.cmd("STARTTLS"), 220, "2.0.0")
        start_tls(c)
        # RFC 3207 §4.2: everything from before TLS is forgotten (4 refusals: under
        # limits.max_errors = 5, which would close the session)
        expect(c.cmd(MAIL), 503, "5.5.1")        # no HELO now
        expect(c.cmd("STARTTLS"), 503, "5.5.1")  # TLS is active
        c.ehlo()
        expect(c.cmd(RCPT), 503, "5.5.1")        # no transaction survived
        expect(c.cmd(MAIL), 250, "2.1.0")
        expect(c.cmd("STARTTLS"), 503, "5.5.1")  # in a transaction too
        expect(c.cmd(RCPT), 250, "2.1.5")         # which goes on
        expect(c.cmd("QUIT"), 221, "2.0.0")


# -------------------------------------------------------------------------------- AUTH


@pytest.fixture(scope="module")
def capture():
    cap = Capture().start()
    yield cap
    rc = cap.stop()
    assert cap.sanitizer_report() is None, cap.log_tail()
    assert rc != "killed-after-timeout", cap.log_tail()
    cap.cleanup()


PLAIN = "AUTH PLAIN " + base64.b64encode(b"\0user\0secret").decode()


@pytest.mark.parametrize("before,code,enh", [
    ([], 503, "5.5.1"),                                  # no EHLO yet
    (["HELO c.example.org"], 503, "5.5.1"),              # HELO is not enough (no ESMTP)
    ([EHLO], 235, "2.7.0"),
    ([EHLO, MAIL], 503, "5.5.1"),                        # not inside a transaction
    ([EHLO, MAIL, RCPT], 503, "5.5.1"),
    ([EHLO, PLAIN], 503, "5.5.1"),                       # already authenticated
], ids=["greeted", "helo", "ehlo", "mail", "rcpt", "authenticated"])
def test_auth_in_each_state(capture, before, code, enh):
    with capture.smtp() as c:
        run_setup(c, before)
        expect(c.cmd(PLAIN), code, enh)
        expect(c.cmd("NOOP"), 250, "2.0.0")


def test_auth_dialogue_reads_responses_not_commands(capture):
    with capture.smtp() as c:
        c.ehlo()
        expect(c.cmd("AUTH LOGIN"), 334)
        # inside the dialogue a line is a SASL response, even one that reads like a command
        expect(c.cmd(MAIL), 501, "5.5.2")  # not base64
        expect(c.cmd(MAIL), 250, "2.1.0")  # the dialogue is over, the session goes on
        expect(c.cmd("RSET"), 250, "2.0.0")
        expect(c.cmd("AUTH PLAIN"), 334)
        expect(c.cmd("*"), 501, "5.7.0")  # cancelled (RFC 4954 §4)
        expect(c.cmd(PLAIN), 235, "2.7.0")
