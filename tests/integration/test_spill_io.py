"""Large messages off the event loop (issue 11 item 2, what it left): a stop while a
spill write is in flight, a damaged spill file found while streaming it out.

What a user depends on: a stop in the middle of a large DATA ends cleanly (the client is
told 421, no spill file and no leaked state is left behind), and a spill file damaged on
disk is never delivered: the next hop gets no message, the log names the queue id.
"""

import os
import re
import signal
import socket
import threading
import time

import pytest

from conftest import Raw
from test_bigmsg import (DEADLINE, Sink, big_message, config, send_data,  # noqa: F401
                         sink, smtp_recv, spill_files)  # sink: a fixture


def open_data(port):
    """A session in DATA (354 received): the socket and its reader."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.2", 0))
    f = s.makefile("rb")
    assert smtp_recv(f)[0] == 220
    s.sendall(b"EHLO client.example.org\r\n")
    assert smtp_recv(f)[0] == 250
    s.sendall(b"MAIL FROM:<carol@example.test>\r\n")
    assert smtp_recv(f)[0] == 250
    s.sendall(b"RCPT TO:<bob@remote.example.org>\r\n")
    assert smtp_recv(f)[0] == 250
    s.sendall(b"DATA\r\n")
    assert smtp_recv(f)[0] == 354
    return s, f


def test_stop_during_a_spilled_data_is_clean(tern_factory, sink):
    """SIGTERM while a 20 MB DATA streams in (half sent, the rest going): a 421 for the
    client, a clean exit with no sanitizer (leak) report, and no spill file left behind,
    not even one for the next start's orphan sweep. shutdown_grace = 0: the stop lands
    while the writer is busy with a chunk."""
    cfg = config(sink.port)
    cfg["limits"]["shutdown_grace"] = Raw("0s")
    t = tern_factory(cfg)
    msg = big_message(20 * 1024 * 1024, subject="stopped").replace(b"\r\n.", b"\r\n..")
    s, f = open_data(t.port)
    rest = threading.Thread(target=send_quietly, args=(s, msg[len(msg) // 2:]), daemon=True)
    try:
        s.sendall(msg[:len(msg) // 2])
        deadline = time.monotonic() + DEADLINE
        while not spill_files(t):  # the spill has begun
            assert time.monotonic() < deadline, t.log_tail()
            time.sleep(0.01)
        rest.start()
        t.signal(signal.SIGTERM)
        code = t.proc.wait(60)
        t.logf.close()
        assert code == 0, t.log_tail(60)
        t.check_sanitizers()
        assert spill_files(t) == [], t.log_tail(60)
        assert t.log_lines("event=disconnect", "reason=shutdown", "message=not-queued"), t.log_tail()
        s.settimeout(10)
        got = b""
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
        except OSError:
            pass
        assert got.startswith(b"421 4.3.2 "), got
    finally:
        f.close()
        s.close()
        rest.join(10)
    assert not sink.messages


def send_quietly(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass  # tern closed the connection: expected


def test_damaged_spill_file_is_never_delivered(tern_factory):
    """A byte changed in the middle of a queued message's spill file: the retry streams
    it, finds the CRC differs before the end of data and resets the connection; the next
    hop keeps nothing, the log names the queue id, the file stays for the operator."""
    held = Sink(hold=True)
    try:
        t = tern_factory(config(held.port))
        msg = big_message(3 * 1024 * 1024 + 5, subject="damaged")
        code, text = send_data(t.port, msg)
        assert code == 250, text
        qid = re.search(r"event=queued id=(\S+)", t.wait_log(r"event=queued id=\S+").group(0)).group(1)
        t.wait_log(rf"event=deferred id={qid}", timeout=DEADLINE)
        path = t.data_dir / "spool" / "spill" / f"{qid}.msg"
        assert path.exists(), spill_files(t)
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid] = ord("#") if data[mid] != ord("#") else ord("%")
        path.write_bytes(bytes(data))  # same size: only the CRC can tell
        held.hold = False
        t.cli("queue", "flush", check=True)
        t.wait_log(rf"event=spool_spill_corrupt id={qid} ", timeout=DEADLINE)
        # the attempt is over (deferred again), and the sink kept nothing
        deadline = time.monotonic() + DEADLINE
        while len(t.log_lines("event=deferred", f"id={qid}")) < 2:
            assert time.monotonic() < deadline, t.log_tail(60)
            time.sleep(0.05)
        assert not held.messages, "a damaged message was delivered"
        last = t.log_lines("event=deferred", f"id={qid}")[-1]
        assert "status=4.3.0" in last and "damaged" in last, last
        assert path.exists(), "the damaged file was removed"
        assert qid in t.queue_list()
    finally:
        held.stop()


def test_damaged_spill_file_is_never_put_in_a_maildir(tern_factory, sink):
    """The same for local delivery: the copy into the Maildir checks the CRC before the
    file is moved into new/; the recipient gets nothing, the message stays queued."""
    t = tern_factory(config(sink.port))
    mdir = t.data_dir / "mail" / "example.test"
    mdir.mkdir(parents=True, exist_ok=True)
    os.chmod(mdir, 0o500)  # tern (another user, or root without the bits) cannot write
    shadow = os.getuid() == 0  # root ignores modes: tern runs as nobody then (conftest)
    msg = big_message(3 * 1024 * 1024 + 9, subject="damaged-local")
    code, text = send_data(t.port, msg, rcpt="alice@example.test")
    assert code == 250, text
    qid = re.search(r"event=queued id=(\S+)", t.wait_log(r"event=queued id=\S+").group(0)).group(1)
    t.wait_log(rf"event=deferred id={qid}", timeout=DEADLINE)
    path = t.data_dir / "spool" / "spill" / f"{qid}.msg"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 1] ^= 0x01
    path.write_bytes(bytes(data))
    os.chmod(mdir, 0o755)
    if shadow:
        st = (t.data_dir / "spool").stat()
        os.chown(mdir, st.st_uid, st.st_gid)
    t.cli("queue", "flush", check=True)
    deadline = time.monotonic() + DEADLINE
    while len(t.log_lines("event=deferred", f"id={qid}")) < 2:
        assert time.monotonic() < deadline, t.log_tail(60)
        time.sleep(0.05)
    last = t.log_lines("event=deferred", f"id={qid}")[-1]
    assert "corrupt" in last or "damaged" in last, last
    assert not t.mail_files("alice@example.test")
    assert path.exists()


def test_spilled_message_in_two_transactions_reads_its_file_twice(tern_factory, sink):
    """More recipients than one transaction takes (100): the second transaction reads the
    file again from its start (a new read-ahead), and both copies arrive whole."""
    cfg = config(sink.port)
    cfg["limits"]["max_recipients"] = 200
    t = tern_factory(cfg)
    msg = big_message(2 * 1024 * 1024 + 11, subject="two-tx")
    s, f = open_data_to(t.port, [f"r{i}@remote.example.org" for i in range(130)])
    try:
        s.sendall(msg.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        code, text = smtp_recv(f)
        assert code == 250, text
    finally:
        f.close()
        s.close()
    got = sink.wait(2, tern=t)
    assert len(got) == 2
    for g in got:
        assert g.endswith(msg), g[:300]


def open_data_to(port, rcpts):
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.2", 0))
    f = s.makefile("rb")
    assert smtp_recv(f)[0] == 220
    s.sendall(b"EHLO client.example.org\r\n")
    assert smtp_recv(f)[0] == 250
    s.sendall(b"MAIL FROM:<carol@example.test>\r\n")
    assert smtp_recv(f)[0] == 250
    for r in rcpts:
        s.sendall(f"RCPT TO:<{r}>\r\n".encode())
        assert smtp_recv(f)[0] == 250
    s.sendall(b"DATA\r\n")
    assert smtp_recv(f)[0] == 354
    return s, f
