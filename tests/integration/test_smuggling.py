"""SMTP smuggling (DESIGN §5.4): no malformed end-of-data sequence ever ends a message.

Every row of tests/data/smtp-smuggling/eod-sequences.tsv (the public scanners' sequences) is
sent inside one DATA, followed by a complete hidden second transaction, all in one write. tern
must answer the whole thing with one 5xx (it refuses data containing bare CR, bare LF or NUL
with 554 5.6.0), answer none of the hidden commands, stay usable, and never deliver the hidden
message.

Outbound, the same rows sit inside a stored message that tern sends on to a lenient next hop
(one that takes a bare LF or CR as a line end and drops NUL bytes, as the vulnerable servers
did): the hop must see exactly one transaction and no smuggled command. Such a message gets in
the only ways tern allows bare line ends: BDAT with BODY=BINARYMIME, here into capture mode,
whose release (POST /api/v1/message/{ID}/release) sends the stored bytes on with DATA.
"""

import codecs
import json
import re
import socket
import threading
import time

import pytest

from capture_harness import capture_factory  # noqa: F401  (fixture)
from conftest import DATA, expect, header_section, make_message

TSV = DATA / "smtp-smuggling" / "eod-sequences.tsv"
DEADLINE = 20.0  # seconds: every wait below is bounded by this


def load_rows():
    rows = []
    for line in TSV.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        seq = codecs.decode(cols[1], "unicode_escape").encode("latin-1")
        rows.append(pytest.param(cols[0], seq, id=cols[0]))
    assert len(rows) >= 12, "eod-sequences.tsv lost rows?"
    return rows


HIDDEN = (b"MAIL FROM:<evil@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
          b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")


def has_smuggled_header(data):
    return any(ln.strip().lower() == b"subject: smuggled"
               for ln in header_section(data).split(b"\n"))


@pytest.mark.parametrize("name,seq", load_rows())
def test_smuggling_sequence_never_ends_data(tern, name, seq):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"DATA\r\nSubject: first\r\n\r\nhello" + seq + HIDDEN)
        expect(c.reply(), 354)
        r = c.reply()
        assert r.code // 100 == 5, f"{name}: message with {seq!r} answered {r!r}"
        expect(r, 554, "5.6.0")
        extra = c.pending(0.7)
        assert extra == b"", f"{name}: server answered hidden commands: {extra!r}"
        # the connection is still in sync and usable
        expect(c.cmd("RSET"), 250, "2.0.0")
        c.send_message("sender@example.org", ["alice@example.test"],
                             make_message(f"after-{name}"), helo=False)
        expect(c.cmd("QUIT"), 221, "2.0.0")
    tern.wait_mail_with("alice@example.test", f"after-{name}")
    time.sleep(0.5)
    for p in tern.mail_files():
        data = p.read_bytes()
        assert not has_smuggled_header(data), f"{name}: smuggled message delivered in {p}"
        assert b"Subject: first" not in data, f"{name}: the malformed message was delivered"
    assert len(tern.mail_files()) == 1
    assert "evil@example.test" not in tern.log(), "hidden MAIL FROM was processed as a command"


# BDAT (RFC 3030) has no end-of-data line, but a message sent without
# BODY=BINARYMIME must still be valid DATA content: a relay hop that sends it on
# with DATA would otherwise carry the smuggled "\n.\r\n" to the next server.
BDAT_SMUGGLE = (b"Subject: bdat-smuggle\r\n\r\nhello\n.\r\nMAIL FROM:<evil@example.test>\r\n"
                b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n")


@pytest.mark.parametrize("body", ["", " BODY=8BITMIME", " BODY=7BIT"])
@pytest.mark.parametrize("split", [False, True], ids=["one-chunk", "two-chunks"])
def test_bdat_with_bare_lf_refused_unless_binarymime(tern, body, split):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<sender@example.org>{body}"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        if split:
            # the bare LF is the last byte of one chunk, the dot the next one's first
            cut = BDAT_SMUGGLE.index(b"\n.\r\n") + 1
            first, rest = BDAT_SMUGGLE[:cut], BDAT_SMUGGLE[cut:]
            c.send(b"BDAT %d\r\n" % len(first) + first)
            expect(c.reply(), 250, "2.0.0")
            c.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        else:
            c.send(b"BDAT %d LAST\r\n" % len(BDAT_SMUGGLE) + BDAT_SMUGGLE)
        expect(c.reply(), 554, "5.6.0")
        assert c.pending(0.3) == b"", "server answered bytes of the chunk as commands"
        # the session is in sync and usable
        c.send_message("sender@example.org", ["alice@example.test"],
                       make_message("after-bdat"), helo=False)
        expect(c.cmd("QUIT"), 221, "2.0.0")
    tern.wait_mail_with("alice@example.test", "after-bdat")
    time.sleep(0.3)
    assert len(tern.mail_files()) == 1
    for p in tern.mail_files():
        data = p.read_bytes()
        assert b"Subject: bdat-smuggle" not in data, "the refused BDAT message was delivered"
        assert not has_smuggled_header(data)


@pytest.mark.parametrize("name,bad", [("bare-cr", b"a\rb\r\n"), ("nul", b"a\x00b\r\n"),
                                      ("final-bare-cr", b"end\r")])
def test_bdat_with_bare_cr_or_nul_refused(tern, name, bad):
    msg = b"Subject: bdat-" + name.encode() + b"\r\n\r\n" + bad
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
        expect(c.reply(), 554, "5.6.0")
        expect(c.cmd("NOOP"), 250, "2.0.0")
    time.sleep(0.3)
    assert tern.mail_files() == []


def test_bdat_binarymime_keeps_bare_lf_byte_exact(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<sender@example.org> BODY=BINARYMIME"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d LAST\r\n" % len(BDAT_SMUGGLE) + BDAT_SMUGGLE)
        expect(c.reply(), 250, "2.0.0")
        assert c.pending(0.3) == b""
        expect(c.cmd("NOOP"), 250, "2.0.0")
        expect(c.cmd("QUIT"), 221, "2.0.0")
    (p, data), = tern.wait_mail_with("alice@example.test", "bdat-smuggle")
    assert data.endswith(BDAT_SMUGGLE), "BINARYMIME body altered"
    assert "evil@example.test" not in tern.log(), "chunk bytes were processed as commands"


# --------------------------------------------------------------------------
# Towards a lenient next hop.


class LenientNextHop:
    """A raw SMTP server on 127.0.0.1 that reads the way the vulnerable servers did: CRLF, a
    bare LF and a bare CR all end a line, NUL bytes are dropped, and "." alone on a line ends
    the data. It records every command line and every message; a smuggled command shows up as
    a second MAIL or RCPT. It answers 250 to everything but DATA (354) and QUIT (221)."""

    EOL = re.compile(rb"\r\n|\n|\r")
    END = re.compile(rb"(?:\r\n|\n|\r)\.(?:\r\n|\n|\r)")

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.commands = []  # every command line, in order
        self.raw_data = []  # the bytes of each message as sent, up to the end it saw
        self.sessions_done = threading.Semaphore(0)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join(5)
        self.sock.close()

    def _run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                self._serve(c)
            except OSError:
                pass
            finally:
                c.close()
                self.sessions_done.release()

    @staticmethod
    def _raw_len(buf, n):
        """How many bytes of buf hold its first n bytes once NULs are dropped."""
        i = k = 0
        while k < n:
            k += buf[i] != 0
            i += 1
        return i

    def _serve(self, c):
        c.settimeout(DEADLINE)
        c.sendall(b"220 lenient.test ESMTP\r\n")
        buf, in_data = b"", False  # buf: bytes as received, NULs included
        while True:
            view = buf.replace(b"\0", b"")  # what this server reads: NUL bytes vanish
            if in_data:
                # the data begins after DATA's line end, so a "." line first ends it too
                m = self.END.search(b"\r\n" + view)
                if m:
                    n = self._raw_len(buf, max(m.end() - 2, 0))
                    self.raw_data.append(buf[:n])
                    buf, in_data = buf[n:], False
                    c.sendall(b"250 2.0.0 queued\r\n")
                    continue
            else:
                m = self.EOL.search(view)
                if m:
                    line = view[:m.start()].decode("latin-1")
                    buf = buf[self._raw_len(buf, m.end()):]
                    if not line:
                        continue
                    self.commands.append(line)
                    verb = line.split(" ")[0].upper()
                    if verb in ("EHLO", "HELO"):
                        c.sendall(b"250-lenient.test\r\n250 8BITMIME\r\n")
                    elif verb == "DATA":
                        in_data = True
                        c.sendall(b"354 go ahead\r\n")
                    elif verb == "QUIT":
                        c.sendall(b"221 2.0.0 bye\r\n")
                        return
                    else:
                        c.sendall(b"250 2.0.0 ok\r\n")
                    continue
            d = c.recv(65536)
            if not d:
                return
            buf += d


HIDDEN_FOR_HOP = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@lenient.test>\r\n"
                  b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\nQUIT\r\n")


def capture_id_of(cap, subject):
    """The capture ID of the message with this subject, once the API lists it (bounded)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        r = cap.request("GET", "/api/v1/messages", query={"limit": 50})
        assert r.status == 200, r
        for m in json.loads(r.body)["messages"]:
            if m["Subject"] == subject:
                return m["ID"]
        time.sleep(0.05)
    pytest.fail(f"{subject!r} not captured within {DEADLINE}s\n{cap.log_tail()}")


@pytest.mark.parametrize("name,seq", load_rows())
def test_release_to_a_lenient_next_hop_carries_exactly_one_transaction(capture_factory, name,
                                                                        seq):
    subject = f"lenient-{name}"
    msg = (b"Subject: " + subject.encode() + b"\r\n\r\nhello" + seq + HIDDEN_FOR_HOP
           + b"after\r\n")
    with LenientNextHop() as hop:
        cap = capture_factory({"relayhost": {"via": f"smtp://127.0.0.1:{hop.port}",
                                             "tls": "none"}})
        # In: BINARYMIME is the one way bare line ends (and NUL) are accepted, byte for byte.
        with cap.smtp() as c:
            c.ehlo()
            expect(c.cmd("MAIL FROM:<sender@example.org> BODY=BINARYMIME"), 250)
            expect(c.cmd("RCPT TO:<dev@example.test>"), 250)
            c.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
            expect(c.reply(), 250)
            expect(c.cmd("QUIT"), 221)
        mid = capture_id_of(cap, subject)
        raw = cap.request("GET", f"/api/v1/message/{mid}/raw")
        assert raw.status == 200 and raw.body.endswith(msg), "the captured body is not byte-exact"

        # Out: released with DATA to the lenient hop.
        r = cap.request("POST", f"/api/v1/message/{mid}/release", {"To": ["good@lenient.test"]})
        assert r.status == 200, f"release: {r!r}\n{cap.log_tail()}"
        assert hop.sessions_done.acquire(timeout=DEADLINE), \
            f"the next hop saw no complete session within {DEADLINE}s\n{cap.log_tail()}"
        time.sleep(0.3)  # a smuggled second session would have started by now

        verbs = [cmd.split(" ")[0].upper() for cmd in hop.commands]
        assert [v for v in verbs if v in ("MAIL", "RCPT", "DATA")] == ["MAIL", "RCPT", "DATA"], \
            f"{name}: the next hop saw {hop.commands}"
        assert not any("evil" in cmd or "victim" in cmd for cmd in hop.commands), hop.commands
        assert verbs[-1] == "QUIT" and verbs.count("QUIT") == 1, hop.commands
        assert len(hop.raw_data) == 1, hop.raw_data
        sent = hop.raw_data[0]
        # the hidden transaction arrived as text of the one message, its "." line stuffed ...
        assert b"\r\nMAIL FROM:<evil@attacker.test>\r\n" in sent, sent
        assert b"\r\nsmuggled body\r\n..\r\nQUIT\r\nafter\r\n.\r\n" in sent, sent
        # ... and every line end went out as CRLF
        assert re.search(rb"(?<!\r)\n|\r(?!\n)", sent) is None, f"bare line end sent: {sent!r}"
