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
