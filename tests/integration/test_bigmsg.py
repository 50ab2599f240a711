"""Messages of any size in bounded memory (issue 11 item 2): a message past the spill
threshold (1 MiB) goes to its own file in the spool as it arrives, is delivered from it,
and survives a crash after its 250 like any other.

What a user depends on: a large message arrives at the next hop and in a Maildir byte for
byte as sent (DATA and BDAT), after kill -9 right after the 250 it is delivered once,
a spill file no record names is removed at start, and a DKIM signature over a large
message still verifies after the relay.
"""

import hashlib
import os
import socket
import threading
import time

import pytest

from conftest import Raw, free_port

BIG = 30 * 1024 * 1024
DEADLINE = 60.0


def big_message(size, subject="big", seed=0):
    """A CRLF message of about size bytes; some lines start with '.' (dot-stuffing)."""
    head = (f"From: carol@example.test\r\nTo: bob@remote.example.org\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject}.{seed}@example.test>\r\n\r\n")
    out = [head.encode()]
    n = len(out[0])
    i = 0
    while n < size:
        prefix = b"." if i % 97 == 0 else b""
        ln = prefix + (b"%08d-%d " % (i, seed)) * 7 + b"\r\n"
        out.append(ln)
        n += len(ln)
        i += 1
    return b"".join(out)


class Sink:
    """An aiosmtpd next hop that keeps each message's bytes; defers (451) while hold."""

    def __init__(self, hold=False, reject=False, tls_context=None):
        from aiosmtpd.controller import Controller
        self.messages = []
        self.hold = hold
        self.reject = reject
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                if sink.hold:
                    return "451 4.3.0 held by the test"
                if sink.reject:
                    return "554 5.7.1 refused by the test"
                with sink.lock:
                    sink.messages.append(bytes(envelope.original_content))
                return "250 2.0.0 kept"

        self.port = free_port()
        kw = {"tls_context": tls_context} if tls_context else {}
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                              data_size_limit=0, enable_SMTPUTF8=True, **kw)
        self.ctl.start()

    def stop(self):
        self.ctl.stop()

    def wait(self, count=1, timeout=DEADLINE, tern=None):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if tern is not None and tern.proc.poll() is not None:
                pytest.fail("tern died\n" + tern.log_tail(60))
            assert time.monotonic() < deadline, "nothing arrived at the sink\n" + (
                tern.log_tail(40) if tern else "")
            time.sleep(0.1)


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.stop()


def config(sink_port, extra=None):
    c = {
        "relayhost": {"via": f"smtp://127.0.0.1:{sink_port}", "tls": "none"},
        "limits": {"max_message_size": Raw("40m"), "data_timeout": Raw("60s"),
                   "idle_timeout": Raw("60s")},
    }
    if extra:
        c.update(extra)
    return c


def smtp_recv(f):
    lines = []
    while True:
        ln = f.readline()
        assert ln, "connection closed"
        lines.append(ln)
        if ln[3:4] != b"-":
            return int(ln[:3]), b"".join(lines)


def send_data(port, msg, rcpt="bob@remote.example.org", sender="carol@example.test"):
    """Sends msg with DATA (dot-stuffed); returns the final reply."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=("127.0.0.2", 0))
    f = s.makefile("rb")
    try:
        assert smtp_recv(f)[0] == 220
        s.sendall(b"EHLO client.example.org\r\n")
        assert smtp_recv(f)[0] == 250
        s.sendall(f"MAIL FROM:<{sender}>\r\n".encode())
        assert smtp_recv(f)[0] == 250
        s.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
        assert smtp_recv(f)[0] == 250
        s.sendall(b"DATA\r\n")
        assert smtp_recv(f)[0] == 354
        stuffed = msg.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        s.sendall(stuffed + b".\r\n")
        code, text = smtp_recv(f)
        s.sendall(b"QUIT\r\n")
        return code, text
    finally:
        f.close()
        s.close()


def send_bdat(port, msg, rcpt="bob@remote.example.org", chunk=3 * 1024 * 1024 + 17):
    s = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=("127.0.0.2", 0))
    f = s.makefile("rb")
    try:
        assert smtp_recv(f)[0] == 220
        s.sendall(b"EHLO client.example.org\r\n")
        code, text = smtp_recv(f)
        assert code == 250 and b"CHUNKING" in text, text
        s.sendall(b"MAIL FROM:<carol@example.test>\r\n")
        assert smtp_recv(f)[0] == 250
        s.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
        assert smtp_recv(f)[0] == 250
        off = 0
        while True:
            part = msg[off:off + chunk]
            off += len(part)
            last = off >= len(msg)
            s.sendall(b"BDAT %d%s\r\n" % (len(part), b" LAST" if last else b"") + part)
            code, text = smtp_recv(f)
            if last:
                break
            assert code == 250, text
        s.sendall(b"QUIT\r\n")
        return code, text
    finally:
        f.close()
        s.close()


def assert_same(got, sent):
    """got is sent with our trace fields on top, and nothing else changed."""
    assert len(got) >= len(sent)
    assert hashlib.sha256(got[-len(sent):]).hexdigest() == hashlib.sha256(sent).hexdigest()
    assert got.startswith(b"Received: "), got[:200]
    assert b"\r\n\r\n" not in got[:len(got) - len(sent)], "something other than trace fields was added"


def spill_files(t):
    d = t.data_dir / "spool" / "spill"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize("how", ["data", "bdat"])
def test_30mb_message_relayed_byte_identical(tern_factory, sink, how):
    t = tern_factory(config(sink.port))
    msg = big_message(BIG, subject=how)
    code, text = (send_data if how == "data" else send_bdat)(t.port, msg)
    assert code == 250, text
    got = sink.wait(1, tern=t)
    assert_same(got[0], msg)
    # spilled on the way (the file went once the message was finished)
    assert t.log_lines("event=queued", f"size={len(msg)}"), t.log_tail()
    t.wait_log(r"event=delivered", timeout=DEADLINE)
    deadline = time.monotonic() + 10
    while spill_files(t):
        assert time.monotonic() < deadline, spill_files(t)
        time.sleep(0.1)


def test_large_message_delivered_to_maildir_byte_identical(tern_factory, sink):
    t = tern_factory(config(sink.port))
    msg = big_message(5 * 1024 * 1024 + 3, subject="local")
    code, text = send_data(t.port, msg, rcpt="alice@example.test")
    assert code == 250, text
    deadline = time.monotonic() + DEADLINE
    while not t.mail_files("alice@example.test"):
        assert time.monotonic() < deadline, t.log_tail()
        time.sleep(0.1)
    got = t.mail_files("alice@example.test")[0].read_bytes()
    assert got.endswith(msg[msg.index(b"\r\n\r\n"):]), "body changed on the way to the Maildir"
    assert hashlib.sha256(got[-len(msg):]).hexdigest() == hashlib.sha256(msg).hexdigest()


def test_kill9_after_250_delivered_once_after_restart(tern_factory):
    held = Sink(hold=True)
    try:
        t = tern_factory(config(held.port))
        msg = big_message(8 * 1024 * 1024, subject="crash")
        code, text = send_data(t.port, msg)
        assert code == 250, text
        assert spill_files(t), "the message was not spilled"
        t.kill9()
        held.hold = False
        t.start()
        got = held.wait(1, tern=t)
        assert_same(got[0], msg)
        t.wait_log(r"event=delivered", timeout=DEADLINE)
        time.sleep(0.5)  # a duplicate would come right after
        assert len(held.messages) == 1
    finally:
        held.stop()


def test_spill_file_without_record_removed_at_start(tern_factory, sink):
    t = tern_factory(config(sink.port))
    t.stop()
    spool = t.data_dir / "spool"
    d = spool / "spill"
    d.mkdir(exist_ok=True)
    orphan = d / "0123456789ABCDEF.msg"
    orphan.write_bytes(b"x" * 4096)
    st = spool.stat()  # tern may run as another user: the files are its
    os.chown(d, st.st_uid, st.st_gid)
    os.chown(orphan, st.st_uid, st.st_gid)
    t.start()
    t.wait_log(r"event=spill_orphan_removed file=0123456789ABCDEF\.msg")
    assert not orphan.exists()


def test_large_message_dkim_signatures_verify_after_relay(tern_factory, sink, scratch):
    """A 5 MB message signed by its sender (dkimpy) and by tern (dkim.sign_relayed, over
    the mapping of the spill file) arrives with both signatures valid."""
    dkim = pytest.importorskip("dkim")  # python3-dkim, in scripts/install-deps
    import base64
    import re
    import subprocess

    from conftest import tern_bin
    # the sender's key (another domain than tern's)
    key = scratch / "sender.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=60).stdout
    recs = {"s1._domainkey.sender.test": "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()}
    # tern's key
    r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test", "t1", "--type", "rsa"],
                       cwd=scratch, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    t = tern_factory(config(sink.port, {
        "dkim": {"sign_relayed": True,
                 "keys": Raw(f'[{{ domain = "example.test"; selector = "t1"; '
                             f'key_file = "{scratch / "example.test.t1.key"}"; }}]')}}))
    out = t.cli("dkim", "dns", check=True).stdout
    for block in re.split(r"\n(?=\S+\._domainkey\.)", out.strip()):
        m = re.match(r"(\S+?)\.?\s+IN\s+TXT", block)
        if m:
            recs[m.group(1).lower()] = "".join(re.findall(r'"([^"]*)"', block))

    body = big_message(5 * 1024 * 1024, subject="signed")
    head, rest = body.split(b"\r\n\r\n", 1)
    msg = head + b"\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n" + rest
    sig = dkim.sign(msg, b"s1", b"sender.test", key.read_bytes(),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    signed = sig + msg
    code, text = send_data(t.port, signed)
    assert code == 250, text
    got = sink.wait(1, tern=t)[0]
    assert got.endswith(signed)

    def dnsfunc(name, timeout=5):
        return recs.get(name.decode().rstrip(".").lower(), "").encode()

    n = len(re.findall(rb"^DKIM-Signature:", got.split(b"\r\n\r\n", 1)[0], re.M | re.I))
    assert n == 2, got[:2000]  # the sender's and tern's
    for i in range(n):
        assert dkim.DKIM(got).verify(idx=i, dnsfunc=dnsfunc), f"signature {i} fails"


def wait_no_spill(t):
    deadline = time.monotonic() + 10
    while spill_files(t):
        assert time.monotonic() < deadline, spill_files(t)
        time.sleep(0.05)


def test_spilled_bdat_with_a_bare_lf_is_refused_and_leaves_no_file(tern_factory, sink):
    """BDAT that is not BINARYMIME follows the DATA rules (DESIGN §5.4) past the spill
    threshold too: a bare LF deep in the message (in the file, not in memory) is refused."""
    t = tern_factory(config(sink.port))
    msg = big_message(3 * 1024 * 1024, subject="barelf")
    at = 2 * 1024 * 1024
    cut = msg.index(b"\r\n", at)
    bad = msg[:cut] + b"\n" + msg[cut + 2:]
    code, text = send_bdat(t.port, bad, chunk=700 * 1024)
    assert code == 554, text
    wait_no_spill(t)
    code, text = send_bdat(t.port, msg, chunk=700 * 1024)  # the same without it passes
    assert code == 250, text
    assert_same(sink.wait(1, tern=t)[0], msg)


def test_spilled_message_over_max_size_gets_552_and_leaves_no_file(tern_factory, sink):
    cfg = config(sink.port)
    cfg["limits"]["max_message_size"] = Raw("3m")
    t = tern_factory(cfg)
    code, text = send_data(t.port, big_message(4 * 1024 * 1024, subject="toobig"))
    assert code == 552, text
    wait_no_spill(t)
    assert not sink.messages


@pytest.mark.parametrize("how", ["data", "bdat"])
def test_header_section_past_the_spill_threshold_gets_552(tern_factory, sink, how):
    """The header block stays in memory (the checks rewrite it): one that does not end
    within the first 1 MiB is too large, whatever max_message_size says."""
    t = tern_factory(config(sink.port))
    pad = b"".join(b"X-Pad-%06d: %s\r\n" % (i, b"p" * 60) for i in range(20000))
    msg = b"Subject: fat head\r\n" + pad + b"\r\nbody\r\n"
    assert len(msg) > 1024 * 1024
    code, text = (send_data if how == "data" else send_bdat)(t.port, msg)
    assert code == 552, text
    t.wait_log(r"event=rejected .*reason=header-too-big")
    wait_no_spill(t)
    assert not sink.messages


def test_bounce_of_a_spilled_message_carries_its_headers_only(tern_factory):
    refusing = Sink(reject=True)
    try:
        t = tern_factory(config(refusing.port))
        msg = big_message(3 * 1024 * 1024, subject="bounced-big")
        code, text = send_data(t.port, msg, sender="alice@example.test")
        assert code == 250, text
        deadline = time.monotonic() + DEADLINE
        while not t.mail_files("alice@example.test"):
            assert time.monotonic() < deadline, t.log_tail()
            time.sleep(0.1)
        dsn = t.mail_files("alice@example.test")[0].read_bytes()
        assert b"multipart/report" in dsn and b"text/rfc822-headers" in dsn, dsn[:3000]
        assert b"Subject: bounced-big" in dsn
        assert len(dsn) < 64 * 1024, len(dsn)
    finally:
        refusing.stop()


def test_large_message_relayed_over_starttls_byte_identical(tern_factory, scratch):
    """The file is streamed through the TLS layer too (tls = "require")."""
    import ssl
    import subprocess
    cert, key = scratch / "cert.pem", scratch / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=sink.test"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    tls_sink = Sink(tls_context=ctx)
    try:
        cfg = config(tls_sink.port)
        cfg["relayhost"]["tls"] = "require"
        t = tern_factory(cfg)
        msg = big_message(12 * 1024 * 1024, subject="tls")
        code, text = send_data(t.port, msg)
        assert code == 250, text
        assert_same(tls_sink.wait(1, tern=t)[0], msg)
        t.wait_log(r"event=tls id=\S+ relay=")
    finally:
        tls_sink.stop()
