"""SMTP smuggling (DESIGN §5.4): no malformed end-of-data sequence ever ends a message.

Every row of ../shared/conformance/smtp-smuggling/eod-sequences.tsv is sent inside one DATA,
followed by a complete hidden second transaction, all in one write. tern must answer the
whole thing with one 5xx (it refuses data containing bare CR, bare LF or NUL with 554 5.6.0),
answer none of the hidden commands, stay usable, and never deliver the hidden message.
"""

import codecs
import time

import pytest

from conftest import SHARED, expect, header_section, make_message

TSV = SHARED / "conformance" / "smtp-smuggling" / "eod-sequences.tsv"


def load_rows():
    if not TSV.exists():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{TSV} missing"))]
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
