"""
test_milter_session.py — a listener's milters asked by the SMTP session (issue 9 item 8):
`listen { mx { milters = [...]; milter_default_action = ...; } }`.

Two kinds of milter:
  - MilterServer: this file's own milter on raw sockets (libmilter's mfdef.h: 4-byte length,
    command byte, data), one thread per connection (every SMTP session opens its own),
    scripted per test for every action: add, insert, change and delete a header, reject a
    recipient, reject the message with its own reply code, tempfail, discard, accept,
    quarantine, a hang; it records every packet each connection received.
  - a real rspamd from Debian (the harness of test_milter.py), whose milter_headers module
    adds X-Spamd-Result / X-Spam-Status and which rejects GTUBE.

Each test asserts what the SMTP client hears and what is delivered to the Maildir.
Never: talks to anything outside 127.0.0.0/8, waits without a bound, kills a process it did
not start.
"""

import base64
import smtplib
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import CLI_TIMEOUT, Client, Raw, expect, free_port, make_message, tern_bin
from test_milter import GTUBE, HAM, rspamd  # noqa: F401  (rspamd is a fixture)

ALICE = "alice@example.test"
BOB = "bob@example.test"


def packet(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def z(*strings):
    return b"".join(s.encode() + b"\0" for s in strings)


CONT = [packet(b"c")]
NR_BITS = {b"C": 0x1000, b"H": 0x2000, b"M": 0x4000, b"R": 0x8000, b"T": 0x10000,
           b"N": 0x40000, b"B": 0x80000, b"L": 0x80}


class MilterServer:
    """A scripted milter for many connections. replies maps a command byte to a list of
    packets to answer with (default: CONTINUE), or to a callable (data) -> list. None in
    the list means: go silent (hang) until the MTA closes. conns holds, per connection, the
    (cmd, data) packets received in order."""

    def __init__(self, replies=None, actions=0x21 | 0x10 | 0x01, protocol=0):
        self.replies = replies or {}
        self.actions = actions
        self.protocol = protocol
        self.conns = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.spec = "inet:127.0.0.1:%d" % self.port
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.threads = []
        self.socks = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            rec = []
            with self.lock:
                self.conns.append(rec)
                self.socks.append(c)
            t = threading.Thread(target=self._serve, args=(c, rec), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _recv_exact(c, n):
        buf = b""
        while len(buf) < n:
            chunk = c.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _serve(self, c, rec):
        c.settimeout(CLI_TIMEOUT)
        try:
            while not self.stopping:
                (n,) = struct.unpack(">I", self._recv_exact(c, 4))
                body = self._recv_exact(c, n)
                cmd, data = body[:1], body[1:]
                rec.append((cmd, data))
                if cmd == b"O":
                    c.sendall(packet(b"O", struct.pack(">III", 6, self.actions, self.protocol)))
                    continue
                if cmd in (b"D", b"A"):
                    continue
                if cmd in (b"Q", b"K"):
                    break
                if self.protocol & NR_BITS.get(cmd, 0):
                    continue
                r = self.replies.get(cmd, CONT)
                if callable(r):
                    r = r(data)
                for p in r:
                    if p is None:
                        # hang: read (and drop) until the MTA gives up and closes
                        while c.recv(65536):
                            pass
                        return
                    c.sendall(p)
        except (EOFError, OSError, socket.timeout):
            pass
        finally:
            c.close()

    def sessions(self):
        """The connections that got past CONNECT with a MAIL (the harness's own probe
        connection, greeted and gone, has none)."""
        with self.lock:
            return [list(r) for r in self.conns if any(c == b"M" for c, _ in r)]

    def wait_cmd(self, cmd, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for r in self.conns:
                    if any(c == cmd for c, _ in r):
                        return
            time.sleep(0.05)
        raise AssertionError("milter never received %r" % cmd)

    def close(self):
        self.stopping = True
        self.sock.close()
        self.acceptor.join(5)
        # This runs before tern stops (fixture teardown order), while tern may still hold
        # an idle session's milter connection open: end the reads at once rather than each
        # thread waiting out its 15 s socket timeout against join's 5 s.
        with self.lock:
            for c in self.socks:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self.threads:
            t.join(5)


@pytest.fixture
def milter():
    made = []
    yield lambda **kw: made.append(MilterServer(**kw)) or made[-1]
    for m in made:
        m.close()


def start(tern_factory, specs, default="tempfail", timeout="10s", eom_timeout="10s"):
    return tern_factory({"listen": {"mx": {
        "milters": specs,
        "milter_default_action": default, "milter_timeout": Raw(timeout),
        "milter_eom_timeout": Raw(eom_timeout)}}})


def send(t, body, rcpts=(ALICE,), frm="sender@example.org"):
    """A whole transaction; returns the reply to the end of data."""
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<%s>" % frm), 250)
    for r in rcpts:
        expect(c.cmd("RCPT TO:<%s>" % r), 250)
    expect(c.cmd("DATA"), 354)
    c.send(body + b".\r\n")
    return c, c.reply()


def delivered(t, addr, needle):
    return t.wait_mail_with(addr, needle)[0][1]


def headers_of(data):
    return data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()


# ---------------------------------------------------------------------------
# Header changes at end of message


def test_add_header_and_the_milter_sees_the_whole_dialogue(tern_factory, milter):
    m = milter(replies={b"E": [packet(b"h", z("X-Milter", "checked by test")), packet(b"a")]})
    t = start(tern_factory, [m.spec])
    c, r = send(t, make_message("add header"))
    expect(r, 250, "2.0.0")
    qid = r.queue_id()
    data = delivered(t, ALICE, "add header")
    hdrs = headers_of(data)
    assert "\nX-Milter: checked by test" in hdrs
    # added after the last header of the message, before the body
    assert hdrs.index("Message-ID:") < hdrs.index("X-Milter:")
    c.cmd("QUIT")
    (conv,) = m.sessions()
    cmds = b"".join(cm for cm, _ in conv if cm not in (b"D", b"Q"))  # QUIT may be in or not
    assert cmds.startswith(b"OCHMRTL") and cmds.endswith(b"NBE"), cmds
    data_of = {cm: [d for cc, d in conv if cc == cm] for cm, _ in conv}
    assert data_of[b"H"] == [b"client.example.org\0"]
    assert data_of[b"M"] == [b"<sender@example.org>\0"]
    assert data_of[b"R"] == [b"<alice@example.test>\0"]
    # our Received comes first, then the client's fields, values without the leading space
    names = [d.split(b"\0")[0] for d in data_of[b"L"]]
    assert names[0] == b"Received" and names[1:5] == [b"From", b"To", b"Subject", b"Message-ID"]
    assert b"Subject\0add header\0" in data_of[b"L"]
    assert b"".join(data_of[b"B"]) == b"hello\r\n"
    # macros: the client at CONNECT, the queue id at end of message
    macros = b"".join(data_of[b"D"])
    for pair in (("{client_addr}", "127.0.0.1"), ("{if_addr}", "127.0.0.1"),
                 ("{client_name}", "[127.0.0.1]"), ("{daemon_name}", "tern"),
                 ("j", "mx.example.test"), ("{mail_addr}", "sender@example.org"),
                 ("{rcpt_addr}", "alice@example.test"), ("i", qid)):
        assert z(*pair) in macros, (pair, macros)


def test_insert_change_and_delete_headers(tern_factory, milter):
    eom = [
        packet(b"i", struct.pack(">I", 0) + z("X-Top", "first")),
        packet(b"m", struct.pack(">I", 1) + z("Subject", "[changed] subject")),
        packet(b"m", struct.pack(">I", 1) + z("X-Remove-Me", "")),
        packet(b"m", struct.pack(">I", 2) + z("X-Twice", " second changed")),
        packet(b"c"),
    ]
    m = milter(replies={b"E": eom})
    t = start(tern_factory, [m.spec])
    body = make_message("original subject", extra_headers=(
        "X-Remove-Me: yes\r\nX-Twice: one\r\nX-Twice: two\r\n"))
    _, r = send(t, body)
    expect(r, 250, "2.0.0")
    data = delivered(t, ALICE, "hello")
    hdrs = headers_of(data)
    assert "Subject: [changed] subject" in hdrs and "original subject" not in hdrs
    assert "X-Remove-Me" not in hdrs
    assert "X-Twice: one\nX-Twice: second changed" in hdrs
    # inserted at the very top of what the milter saw: above our Received
    assert hdrs.index("X-Top: first") < hdrs.index("Received: from client.example.org")


def test_header_changes_with_bdat(tern_factory, milter):
    m = milter(replies={b"E": [packet(b"h", z("X-Chunked", "yes")), packet(b"c")]})
    t = start(tern_factory, [m.spec])
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(c.cmd("RCPT TO:<%s>" % ALICE), 250)
    msg = make_message("chunked")
    c.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
    expect(c.reply(), 250, "2.0.0")
    assert "X-Chunked: yes" in headers_of(delivered(t, ALICE, "chunked"))


def test_header_lines_without_a_name_are_not_shown(tern_factory, milter):
    # 200,000 header lines without a colon (600 kB): not shown to the milter, one after
    # the other, and the session lives
    m = milter(protocol=0x80)  # NR_HDR: no reply per header
    t = start(tern_factory, [m.spec])
    junk = "x\r\n" * 200000
    _, r = send(t, make_message("nameless", extra_headers=junk))
    expect(r, 250, "2.0.0")
    (conv,) = m.sessions()
    names = [d.split(b"\0")[0] for c, d in conv if c == b"L"]
    assert names == [b"Received", b"From", b"To", b"Subject", b"Message-ID"], names[:10]


# ---------------------------------------------------------------------------
# Verdicts


def test_reject_at_rcpt_refuses_that_recipient_only(tern_factory, milter):
    def rcpt(data):
        if data.startswith(b"<bob@"):
            return [packet(b"y", z("550 5.7.1 Bob does not want mail from you"))]
        return CONT

    m = milter(replies={b"R": rcpt})
    t = start(tern_factory, [m.spec])
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    r = c.cmd("RCPT TO:<%s>" % BOB)
    assert r.lines == ["550 5.7.1 Bob does not want mail from you"], r
    expect(c.cmd("RCPT TO:<%s>" % ALICE), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(make_message("rcpt reject") + b".\r\n")
    expect(c.reply(), 250)
    delivered(t, ALICE, "rcpt reject")
    time.sleep(0.3)
    assert t.mail_files(BOB) == []
    assert t.log_lines("event=rejected", "step=rcpt", "reason=milter", "code=550")


def test_reject_at_eom_with_its_own_reply_code(tern_factory, milter):
    m = milter(replies={b"E": [packet(b"y", z("554 5.7.1 Go away, spammer"))]})
    t = start(tern_factory, [m.spec])
    c, r = send(t, make_message("custom reply"))
    assert r.lines == ["554 5.7.1 Go away, spammer"], r
    # the session goes on, and its idle timeout (5 s here) is back on
    expect(c.cmd("RSET"), 250)
    assert c.closed_by_peer(wait=15)
    assert t.log_lines("event=disconnect", "reason=idle-timeout")
    assert t.mail_files(ALICE) == []
    assert t.log_lines("event=rejected", "step=eom", "reason=milter", "code=554")


def test_smtplib_client_sees_the_milters_replies(tern_factory, milter):
    def rcpt(data):
        return [packet(b"t")] if data.startswith(b"<bob@") else CONT

    m = milter(replies={b"R": rcpt, b"E": [packet(b"y", z("550 5.7.1 Not this one"))]})
    t = start(tern_factory, [m.spec])
    with smtplib.SMTP("127.0.0.1", t.port, timeout=15) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("sender@example.org", [ALICE, BOB], make_message("smtplib"))
        assert e.value.smtp_code == 550 and e.value.smtp_error == b"5.7.1 Not this one"
    m2 = milter(replies={b"R": rcpt})
    t2 = start(tern_factory, [m2.spec])
    with smtplib.SMTP("127.0.0.1", t2.port, timeout=15) as s:
        refused = s.sendmail("sender@example.org", [ALICE, BOB], make_message("smtplib ok"))
    assert refused == {BOB: (451, b"4.7.1 Deferred by content filter, try again later")}
    delivered(t2, ALICE, "smtplib ok")


def test_reply_code_without_enhanced_code_gets_one(tern_factory, milter):
    m = milter(replies={b"E": [packet(b"y", z("550 not today"))]})
    t = start(tern_factory, [m.spec])
    _, r = send(t, make_message("no enhanced"))
    assert r.lines == ["550 5.7.1 not today"], r


def test_421_from_a_milter_closes_the_session(tern_factory, milter):
    m = milter(replies={b"E": [packet(b"y", z("421 4.3.2 Scanner overloaded"))]})
    t = start(tern_factory, [m.spec])
    c, r = send(t, make_message("busy"))
    assert r.lines == ["421 4.3.2 Scanner overloaded"], r
    assert c.closed_by_peer(wait=5)
    assert t.mail_files(ALICE) == []


def test_tempfail_at_mail(tern_factory, milter):
    m = milter(replies={b"M": [packet(b"t")]})
    t = start(tern_factory, [m.spec])
    c = t.client()
    c.ehlo()
    r = expect(c.cmd("MAIL FROM:<sender@example.org>"), 451, "4.7.1")
    # the transaction was not opened: RCPT needs MAIL
    expect(c.cmd("RCPT TO:<%s>" % ALICE), 503)


def test_reject_at_helo(tern_factory, milter):
    m = milter(replies={b"H": [packet(b"r")]})
    t = start(tern_factory, [m.spec])
    c = t.client()
    expect(c.cmd("EHLO client.example.org"), 550, "5.7.1")
    # the milter's verdict holds for the session
    expect(c.cmd("EHLO client.example.org"), 550, "5.7.1")


def test_discard_at_eom(tern_factory, milter):
    m = milter(replies={b"E": [packet(b"d")]})
    t = start(tern_factory, [m.spec])
    c, r = send(t, make_message("discard me"))
    expect(r, 250, "2.0.0")
    qid = r.queue_id()
    assert qid
    t.wait_log(r"event=milter_discard id=%s" % qid)
    # a second message in the same session is asked again (and discarded again)
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    time.sleep(0.3)
    assert t.mail_files(ALICE) == []
    assert not t.log_lines("event=queued", qid)


def test_discard_at_mail_still_takes_the_message(tern_factory, milter):
    m = milter(replies={b"M": [packet(b"d")]})
    t = start(tern_factory, [m.spec])
    _, r = send(t, make_message("discard at mail"))
    expect(r, 250, "2.0.0")
    t.wait_log(r"event=milter_discard id=%s" % r.queue_id())
    time.sleep(0.3)
    assert t.mail_files(ALICE) == []
    # nothing more was asked about that message
    (conv,) = m.sessions()
    after = b"".join(c for c, _ in conv).split(b"M", 1)[1]
    assert b"R" not in after and b"E" not in after


def test_accept_skips_the_rest_of_the_message(tern_factory, milter):
    m = milter(replies={b"M": [packet(b"a")]})
    t = start(tern_factory, [m.spec])
    _, r = send(t, make_message("accepted early"))
    expect(r, 250, "2.0.0")
    delivered(t, ALICE, "accepted early")
    (conv,) = m.sessions()
    after = b"".join(c for c, _ in conv).split(b"M", 1)[1]
    assert not set(after.decode()) & set("RTLNBE"), after


def test_quarantine_goes_to_the_junk_folder(tern_factory, milter):
    m = milter(replies={b"E": [packet(b"q", z("suspicious")), packet(b"c")]})
    t = start(tern_factory, [m.spec])
    _, r = send(t, make_message("quarantined"))
    expect(r, 250, "2.0.0")
    junk = t.maildir(ALICE) / ".Junk" / "new"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (junk.exists() and any(junk.iterdir())):
        time.sleep(0.05)
    assert junk.exists() and len(list(junk.iterdir())) == 1
    assert t.mail_files(ALICE) == []
    assert t.log_lines("event=milter_quarantine", 'reason="suspicious"') or \
        t.log_lines("event=milter_quarantine", "reason=suspicious")


def test_rset_aborts_the_milters_transaction(tern_factory, milter):
    m = milter()
    t = start(tern_factory, [m.spec])
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(c.cmd("RSET"), 250)
    m.wait_cmd(b"A")
    expect(c.cmd("MAIL FROM:<other@example.org>"), 250)
    expect(c.cmd("RCPT TO:<%s>" % ALICE), 250)
    c.cmd("QUIT")
    m.wait_cmd(b"Q")
    (conv,) = m.sessions()
    order = b"".join(cm for cm, _ in conv if cm != b"D")
    assert order.startswith(b"OCHMAMRQ") or order.startswith(b"OCHMAMR"), order


def test_pipelined_commands_wait_for_the_milter(tern_factory, milter):
    m = milter()
    t = start(tern_factory, [m.spec])
    c = t.client()
    c.ehlo()
    msg = make_message("pipelined")
    c.send(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<%s>\r\nRSET\r\n"
           b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<%s>\r\nDATA\r\n"
           % (ALICE.encode(), ALICE.encode()))
    for code in (250, 250, 250, 250, 250, 354):
        expect(c.reply(), code)
    c.send(msg + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    delivered(t, ALICE, "pipelined")


def test_two_milters_first_refusal_wins(tern_factory, milter):
    first = milter(replies={b"E": [packet(b"h", z("X-First", "1")), packet(b"c")]})
    second = milter(replies={b"E": [packet(b"y", z("550 5.7.1 second says no"))]})
    t = start(tern_factory, [first.spec, second.spec])
    _, r = send(t, make_message("two milters"))
    assert r.lines == ["550 5.7.1 second says no"], r
    # the second saw the first's header change
    (conv,) = second.sessions()
    assert b"X-First\x001\x00" in [d for c, d in conv if c == b"L"]


def test_two_milters_both_change_headers(tern_factory, milter):
    first = milter(replies={b"E": [packet(b"h", z("X-First", "1")), packet(b"c")]})
    second = milter(replies={b"E": [packet(b"h", z("X-Second", "2")), packet(b"c")]})
    t = start(tern_factory, [first.spec, second.spec])
    _, r = send(t, make_message("both milters"))
    expect(r, 250, "2.0.0")
    hdrs = headers_of(delivered(t, ALICE, "both milters"))
    assert hdrs.index("X-First: 1") < hdrs.index("X-Second: 2")


def test_first_milter_rejecting_means_the_second_is_not_asked(tern_factory, milter):
    first = milter(replies={b"M": [packet(b"r")]})
    second = milter()
    t = start(tern_factory, [first.spec, second.spec])
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 550, "5.7.1")
    assert second.sessions() == []


def test_reject_at_connect_is_heard_at_ehlo(tern_factory, milter):
    m = milter(replies={b"C": [packet(b"y", z("554 5.7.1 You are not welcome here"))]})
    t = start(tern_factory, [m.spec])
    c = t.client()
    expect(c.greeting, 220)  # greeted all the same, as Postfix does
    r = c.cmd("EHLO client.example.org")
    assert r.lines == ["554 5.7.1 You are not welcome here"], r
    r = c.cmd("MAIL FROM:<sender@example.org>")
    assert r.code in (503, 554), r
    expect(c.cmd("QUIT"), 221)


def test_no_reply_and_skip_flags_are_honoured(tern_factory, milter):
    # NOHELO (0x2): no HELO packet; NR_HDR (0x80): headers unanswered; SKIP (0x400): the
    # milter stops the body after its first chunk
    m = milter(protocol=0x2 | 0x80 | 0x400, replies={
        b"B": [packet(b"s")], b"E": [packet(b"h", z("X-Seen", "yes")), packet(b"c")]})
    t = start(tern_factory, [m.spec])
    body = ("x" * 998 + "\r\n") * 200  # about 200 kB: four body chunks
    _, r = send(t, make_message("flags", body=body))
    expect(r, 250, "2.0.0")
    assert "X-Seen: yes" in headers_of(delivered(t, ALICE, "flags"))
    (conv,) = m.sessions()
    cmds = b"".join(c for c, _ in conv if c != b"D")
    assert b"H" not in cmds
    assert cmds.count(b"B") == 1, cmds


def test_header_changes_past_the_limit_are_refused(tern_factory, milter):
    big = "v" * 60000
    m = milter(replies={b"E": [packet(b"h", z("X-Big-%d" % i, big)) for i in range(5)]
               + [packet(b"c")]})
    t = start(tern_factory, [m.spec])
    _, r = send(t, make_message("too big changes"))
    expect(r, 451, "4.3.0")
    time.sleep(0.3)
    assert t.mail_files(ALICE) == []


def test_only_the_listeners_own_milters_and_auth_macro(tern_factory, milter):
    # milters on the submission listener only: mail on the mx listener is not shown them;
    # a logged-in sender is named in {auth_authen} at MAIL
    m = milter()
    sub_port = free_port()
    t = tern_factory({"auth": {"allow_plaintext": True}, "listen": {"sub": {
        "address": "127.0.0.1:%d" % sub_port, "profile": "submission", "tls": "none",
        "milters": [m.spec]}}})
    _, r = send(t, make_message("via mx"))
    expect(r, 250, "2.0.0")
    assert m.sessions() == []
    c = Client(sub_port)
    try:
        c.ehlo()
        token = base64.b64encode(b"\0%s\0secret-pw" % ALICE.encode()).decode()
        expect(c.cmd("AUTH PLAIN " + token), 235)
        expect(c.cmd("MAIL FROM:<%s>" % ALICE), 250)
        expect(c.cmd("RCPT TO:<%s>" % BOB), 250)
        expect(c.cmd("DATA"), 354)
        c.send(make_message("via submission", frm=ALICE, to=BOB) + b".\r\n")
        expect(c.reply(), 250, "2.0.0")
    finally:
        c.close()
    (conv,) = m.sessions()
    mail_macros = [d for cm, d in conv if cm == b"D" and d[:1] == b"M"]
    assert z("{auth_authen}", ALICE) in mail_macros[0], mail_macros
    delivered(t, BOB, "via submission")


@pytest.fixture
def signing_key(scratch):
    """A TLS certificate and an RSA DKIM key for example.test, made by openssl and tern."""
    cert, key = scratch / "cert.pem", scratch / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True, timeout=60)
    r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test", "rsa1", "--type", "rsa"],
                       cwd=scratch, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {"cert_file": str(cert), "key_file": str(key)}, scratch / "example.test.rsa1.key"


def test_our_dkim_signature_covers_the_milters_changes(tern_factory, milter, signing_key):
    # a logged-in user's mail: the milter rewrites Subject and adds a field, then tern signs
    # (helpers from test_dkim_signing.py, imported here: only this test needs python3-dkim)
    from test_dkim_signing import login_client, records, verify_all
    from test_dkim_signing import message as signed_message
    from test_dkim_signing import send as send_logged_in

    certs, rsa_key = signing_key
    m = milter(replies={b"E": [
        packet(b"m", struct.pack(">I", 1) + z("Subject", "[checked] milter-signed")),
        packet(b"h", z("X-Scanned", "yes")), packet(b"c")]})
    sub_port = free_port()
    t = tern_factory({
        "listen": {"sub": {"address": "127.0.0.1:%d" % sub_port, "profile": "submission",
                           "milters": [m.spec]}},
        "auth": {"throttle": {"delay": Raw("0s")}}, "tls": certs,
        "dkim": {"keys": Raw('[{ domain = "example.test"; selector = "rsa1"; '
                             'key_file = "%s"; }]' % rsa_key)}}, start=False)
    t.sub_port = sub_port
    t.start()
    c = login_client(t)
    send_logged_in(c, BOB, signed_message("milter-signed", to=BOB))
    data = delivered(t, BOB, "[checked] milter-signed")
    assert b"\r\nX-Scanned: yes\r\n" in data
    sigs = verify_all(data, records(t))
    assert len(sigs) == 1 and "subject" in sigs[0]["h"].lower()


# ---------------------------------------------------------------------------
# A milter that is down, or hangs: the listener's milter_default_action


def dead_spec():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return "inet:127.0.0.1:%d" % port


@pytest.mark.parametrize("default,code,enh", [
    ("tempfail", 451, "4.7.1"),
    ("reject", 550, "5.7.1"),
])
def test_milter_down_refuses_with_the_default_action(tern_factory, default, code, enh):
    t = start(tern_factory, [dead_spec()], default=default)
    c = t.client()
    expect(c.greeting, 220)
    expect(c.cmd("EHLO client.example.org"), code, enh)
    expect(c.cmd("MAIL FROM:<sender@example.org>"), code, enh)
    assert t.log_lines("event=milter_fail", "action=%s" % default)


def test_milter_down_with_accept_delivers(tern_factory):
    t = start(tern_factory, [dead_spec()], default="accept")
    _, r = send(t, make_message("milter down accept"))
    expect(r, 250, "2.0.0")
    delivered(t, ALICE, "milter down accept")
    assert t.log_lines("event=milter_fail", "action=accept")


def test_milter_that_hangs_at_eom_times_out(tern_factory, milter):
    m = milter(replies={b"E": [None]})
    t = start(tern_factory, [m.spec], eom_timeout="1s")
    c, r = send(t, make_message("hang"))
    expect(r, 451, "4.7.1")
    assert t.log_lines("event=milter_fail", "reason=timeout", "step=eom")
    # the session is still usable, and the dead milter now answers with the default at once
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 451, "4.7.1")
    time.sleep(0.3)
    assert t.mail_files(ALICE) == []


def test_milter_that_hangs_at_rcpt_with_accept_default(tern_factory, milter):
    m = milter(replies={b"R": [None]})
    t = start(tern_factory, [m.spec], default="accept", timeout="1s")
    _, r = send(t, make_message("hang accept"))
    expect(r, 250, "2.0.0")
    delivered(t, ALICE, "hang accept")


def test_client_leaving_while_the_milter_thinks(tern_factory, milter):
    m = milter(replies={b"E": [None]})
    t = start(tern_factory, [m.spec], eom_timeout="2s")
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(c.cmd("RCPT TO:<%s>" % ALICE), 250)
    expect(c.cmd("DATA"), 354)
    c.send(make_message("leaving") + b".\r\n")
    m.wait_cmd(b"E")
    c.close()
    # nothing is read while the milter thinks (bounded by its timeout); then the session
    # sees the client gone and is freed with its milter connection (sanitizers check)
    t.wait_log(r"event=disconnect .*reason=(peer-closed|io-error)")
    assert t.mail_files(ALICE) == []


def slow_eom(data):
    """The milter thinks for a second at end of message, then lets it through."""
    time.sleep(1.0)
    return [packet(b"c")]


def test_client_gone_before_the_checks_end_gets_nothing_queued(tern_factory, milter):
    """A client that closes after the final dot, while a milter still thinks, never got
    a 250 and will send the message again: tern must not queue it (a duplicate)."""
    m = milter(replies={b"E": slow_eom})
    t = start(tern_factory, [m.spec])
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(c.cmd("RCPT TO:<%s>" % ALICE), 250)
    expect(c.cmd("DATA"), 354)
    c.send(make_message("gone before the answer") + b".\r\n")
    m.wait_cmd(b"E")
    c.close()
    # after the milter's answer (1 s): the abort is logged instead of a commit
    t.wait_log(r"event=aborted id=\S+ .*reason=client-gone stage=checks")
    deadline = time.monotonic() + 1.0  # bounded: nothing may turn up in the Maildir
    while time.monotonic() < deadline:
        assert t.mail_files(ALICE) == []
        time.sleep(0.1)
    assert not t.log_lines("event=queued")


def test_half_closed_client_with_a_pipelined_quit_still_gets_its_message(tern_factory,
                                                                          milter):
    """A client that pipelines QUIT after the dot and closes its sending side still reads
    our replies (test_commit_read's pattern): it has not gone, the message is queued and
    it hears 250 and 221."""
    m = milter(replies={b"E": slow_eom})
    t = start(tern_factory, [m.spec])
    c = t.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(c.cmd("RCPT TO:<%s>" % ALICE), 250)
    expect(c.cmd("DATA"), 354)
    c.send(make_message("half closed") + b".\r\nQUIT\r\n")
    m.wait_cmd(b"E")
    c.sock.shutdown(socket.SHUT_WR)
    expect(c.reply(), 250, "2.0.0")
    expect(c.reply(), 221)
    delivered(t, ALICE, "half closed")
    assert not t.log_lines("reason=client-gone")


def test_client_waiting_for_slow_checks_gets_its_message_queued(tern_factory, milter):
    """The control: the same slow milter, a client that waits, a delivered message."""
    m = milter(replies={b"E": slow_eom})
    t = start(tern_factory, [m.spec])
    _, r = send(t, make_message("waited for the answer"))
    expect(r, 250, "2.0.0")
    delivered(t, ALICE, "waited for the answer")
    assert not t.log_lines("reason=client-gone")


def test_the_milters_copies_are_charged_to_the_memory_budget(tern_factory, milter):
    """limits.inflight_memory counts the copies a message at the milters makes (the
    milter client's body, the rewritten message), not just its buffer: while a 300 kB
    message waits for a slow milter, a second DATA is refused 452 4.3.1 (before, only its
    512 kB buffer was counted and the second message fit under 1 MiB); once the first
    is answered its memory is back and the second goes through."""
    m = milter(replies={b"E": slow_eom})
    t = tern_factory({"limits": {"inflight_memory": Raw("1m")},
                      "listen": {"mx": {"milters": [m.spec],
                                        "milter_default_action": "tempfail"}}})
    big = make_message("big at the milter", body=("x" * 98 + "\r\n") * 3000)
    a = t.client()
    a.ehlo()
    expect(a.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(a.cmd("RCPT TO:<%s>" % ALICE), 250)
    expect(a.cmd("DATA"), 354)
    a.send(big + b".\r\n")
    m.wait_cmd(b"E")  # a's message is at the milter, which answers a second later
    b = t.client()
    b.ehlo()
    expect(b.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(b.cmd("RCPT TO:<%s>" % ALICE), 250)
    expect(b.cmd("DATA"), 452, "4.3.1")
    expect(a.reply(), 250, "2.0.0")
    delivered(t, ALICE, "big at the milter")
    # everything given back: the same transaction's DATA is taken now
    expect(b.cmd("DATA"), 354)
    b.send(make_message("after the budget came back") + b".\r\n")
    expect(b.reply(), 250, "2.0.0")


# ---------------------------------------------------------------------------
# A real rspamd


# rspamd compiles its TLD list at start (CPU-bound, ~30 s on a loaded machine): the tests
# that start one share an xdist group so that two never compile at once (conftest.py).
@pytest.mark.xdist_group("rspamd")
def test_rspamd_adds_its_headers_to_delivered_mail(tern_factory, rspamd):  # noqa: F811
    t = start(tern_factory, [rspamd], timeout="30s", eom_timeout="60s")
    msg = HAM.replace(b"To: Bob <bob@example.com>", b"To: Alice <alice@example.test>")
    _, r = send(t, msg, frm="alice@example.org")
    expect(r, 250, "2.0.0")
    hdrs = headers_of(delivered(t, ALICE, "lunch tomorrow"))
    assert "X-Spamd-Result:" in hdrs, hdrs
    assert "X-Spam-Status: No, score=" in hdrs, hdrs


@pytest.mark.xdist_group("rspamd")
def test_rspamd_rejects_gtube(tern_factory, rspamd):  # noqa: F811
    t = start(tern_factory, [rspamd], timeout="30s", eom_timeout="60s")
    msg = HAM.replace(b"shall we meet at noon?", GTUBE)
    _, r = send(t, msg, frm="alice@example.org")
    assert r.code in (550, 554) and r.enh == "5.7.1", r
    time.sleep(0.3)
    assert t.mail_files(ALICE) == []
