"""Plain sessions read their socket with one recv per readable event
(src/smtp/wire_in.c): commands and message bytes arrive whole and in order
however the client's writes are cut, from one byte per segment to a
pipelined burst larger than one read, and the end of the stream is seen."""

import socket

from conftest import expect, make_message


def test_transaction_in_one_byte_writes(tern):
    body = b"line one\r\n..dot-stuffed\r\nlast line\r\n"
    msg = make_message("one-byte-writes").replace(b"hello\r\n", body)
    script = (b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n"
              b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
    with tern.client() as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(script)):  # every byte its own segment
            c.send(script[i:i + 1])
        expect(c.reply(), 250)
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 354)
        data = msg + b".\r\n"
        for i in range(len(data)):
            c.send(data[i:i + 1])
        assert expect(c.reply(), 250, "2.0.0").queue_id()
        expect(c.cmd("QUIT"), 221)
    (p, got), = tern.wait_mail_with("alice@example.test", "one-byte-writes")
    assert b"\r\n.dot-stuffed\r\nlast line\r\n" in got.replace(b"\n", b"\r\n").replace(
        b"\r\r\n", b"\r\n")


def test_pipelined_burst_larger_than_one_read(tern):
    n = 40  # 40 messages of ~4 KiB: ~170 KiB in one write, several 64 KiB reads
    filler = "".join(f"burst line {k:04d} {'x' * 60}\r\n" for k in range(55))
    batch = b""
    for i in range(n):
        batch += b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        batch += make_message(f"wire-burst-{i:02d}", body=filler) + b".\r\n"
    assert len(batch) > 2 * 65536
    with tern.client() as c:
        c.ehlo()
        c.send(batch)
        for i in range(n):
            expect(c.reply(), 250, "2.1.0")
            expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 354)
            expect(c.reply(), 250, "2.0.0")
        expect(c.cmd("QUIT"), 221)
    got = tern.wait_mail("alice@example.test", lambda d: b"wire-burst-" in d, count=n)
    for _, data in got:
        assert data.count(b"burst line ") == 55, data[:200]


def test_client_close_mid_data_delivers_nothing(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("wire-cut-short"))
    tern.wait_log(r"event=disconnect .*reason=peer-closed state=data")
    # the session is gone; the next one works and the cut message never came
    with tern.client() as c:
        c.ehlo()
        c.send_message("a@example.org", ["alice@example.test"], make_message("wire-after-cut"),
                       helo=False)
    tern.wait_mail_with("alice@example.test", "wire-after-cut")
    assert not [p for p in tern.mail_files("alice@example.test")
                if b"wire-cut-short" in open(p, "rb").read()]
