"""Outbound bytes sent straight to the socket (issue 11 item 3): on a plain connection tern
collects what one step sends (MAIL, RCPTs and DATA pipelined; the message; BDAT LAST with
it; a chunk of a spilled file) and hands it to the kernel with one sendmsg when nothing is
queued ahead, queueing only what the socket does not take for libevent to write.

What a user depends on, asserted from the next hop's side byte for byte: nothing is lost,
doubled or reordered, whatever the socket takes at once. The next hop here (WireMX, a
raw-socket server on its own loopback address) reads commands a byte at a time and the
message in small pieces through a 4 KiB receive buffer, and announces a 1 KiB MSS, so a
direct send of a large message is cut short and the rest must follow from libevent's
queue, in order (a direct send that dropped the rest fails them; one that went
ahead of queued bytes is caught by tests/unit/test_remote_wire.c, whose socket can be
filled at will):
- several messages over one connection arrive as MAIL, RCPT, RCPT, DATA (or BDAT) each, in
  order, and every message is exactly what was submitted (plus tern's Received header),
  dot-stuffed for DATA, as it is for BDAT, with the announced size its length;
- a spilled message (> 1 MiB, sent from its file as the socket takes it) arrives exact;
- a next hop that hangs up (reset) in the middle of the message gets it again later, once,
  exact: the message is deferred (4.4.2), never counted delivered, never lost.
"""

import re
import socket
import struct
import time

import pytest

from conftest import Raw, dot_stuff
from remote_harness import DEADLINE, SENDER, ThreadedPeer, submit, wait_queue_empty
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)

WIRE_IP = "127.0.0.52"
DOMAIN = "wire.test"


class WireMX(ThreadedPeer):
    """A next hop offering PIPELINING, 8BITMIME, SIZE and (chunking=True) CHUNKING that
    answers every command at once. mode (for transactions begun from now on): "accept", or
    "reset_mid_body" (after close_after bytes of the message, the connection is reset).
    self.conns: per connection, its commands in order; self.tx: per message taken, dict
    (how, size (BDAT's), data (the bytes as they came, DATA's end line included))."""

    def __init__(self, ip, chunking=False, mode="accept", close_after=64 * 1024):
        # A small receive buffer and a small MSS (announced in the SYN-ACK): on loopback
        # tern's send buffer starts at about 20 segments of the MSS (64 KiB ones: over
        # 1 MiB, a whole message at once); of 1 KiB ones, a few dozen KiB, so a large
        # message is cut short and the rest waits in the queue.
        super().__init__(ip, rcvbuf=4096, mss=1024)
        self.chunking, self.mode, self.close_after = chunking, mode, close_after
        self.tx, self.resets = [], 0

    def route(self):
        return {"routes": {DOMAIN: {"via": f"smtp://{self.ip}:{self.port}", "tls": "none"}}}

    def set_mode(self, mode):
        with self.lock:
            self.mode = mode

    def taken(self):
        with self.lock:
            return list(self.tx)

    @staticmethod
    def _line(s):
        """One command line, read a byte at a time."""
        b = bytearray()
        while not b.endswith(b"\n"):
            c = s.recv(1)
            if not c:
                return None
            b += c
            if len(b) > 4096:
                raise OSError("line too long")
        return bytes(b).rstrip(b"\r\n").decode("latin-1")

    def _body(self, s, done, limit=None):
        """Message bytes in small, varying pieces until done(data); None when the peer
        left, or (limit) once limit bytes are in and this side resets the connection."""
        data = bytearray()
        k = 0
        while not done(data):
            k += 1
            piece = s.recv(1 + (k * 37) % 700)
            if not piece:
                return None
            data += piece
            if limit is not None and len(data) >= limit:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with self.lock:
                    self.resets += 1
                return None
            if k % 64 == 0:
                time.sleep(0.001)  # a slow reader: the sender's queue fills up
        return bytes(data)

    def _serve(self, s, cmds):
        s.sendall(b"220 wire.test ESMTP\r\n")
        mode = "accept"
        while True:
            cmd = self._line(s)
            if cmd is None:
                return
            cmds.append(cmd)
            verb = cmd.split(" ")[0].upper()
            if verb == "EHLO":
                caps = ["wire.test", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE"]
                if self.chunking:
                    caps.append("CHUNKING")
                s.sendall("".join(f"250-{c}\r\n" for c in caps[:-1]).encode()
                          + f"250 {caps[-1]}\r\n".encode())
            elif verb == "MAIL":
                with self.lock:
                    mode = self.mode
                s.sendall(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                s.sendall(b"250 2.1.5 ok\r\n")
            elif verb == "DATA":
                s.sendall(b"354 go ahead\r\n")
                limit = self.close_after if mode == "reset_mid_body" else None
                data = self._body(s, lambda d: d.endswith(b"\r\n.\r\n"), limit)
                if data is None:
                    return
                with self.lock:
                    self.tx.append({"how": "DATA", "size": None, "data": data})
                s.sendall(b"250 2.0.0 queued\r\n")
            elif verb == "BDAT":
                m = re.match(r"BDAT (\d+) LAST$", cmd, re.I)
                if not m:
                    s.sendall(b"554 5.5.1 BDAT LAST only here\r\n")
                    return
                n = int(m.group(1))
                limit = self.close_after if mode == "reset_mid_body" else None
                data = self._body(s, lambda d: len(d) >= n, limit)
                if data is None:
                    return
                with self.lock:
                    self.tx.append({"how": "BDAT", "size": n, "data": data})
                s.sendall(b"250 2.0.0 queued\r\n")
            elif not self._answer_rest(s, verb):
                return


def start(remote_tern, fake):
    extra = fake.route()
    extra["limits"] = {"max_message_size": Raw("4m")}
    return remote_tern(extra=extra, command_timeout=Raw("10s"))


def message(tag, size):
    """A message of about size bytes whose every line is numbered (a lost, doubled or
    moved piece shows), with lines DATA must dot-stuff."""
    head = (f"From: <{SENDER}>\r\nTo: <a@{DOMAIN}>\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.org>\r\n\r\n").encode()
    lines = []
    n = 0
    total = len(head)
    while total < size:
        dot = "." if n % 97 == 5 else ""
        ln = f"{dot}{tag} line {n:07d} " + "abcdefghij" * 6 + "\r\n"
        lines.append(ln)
        total += len(ln)
        n += 1
    lines.append(".\r\n" if size > 0 else "")  # a line that is a lone dot
    lines.append("end\r\n")
    return head + "".join(lines).encode()


def assert_exact(tx, msg):
    """tx carries msg exactly: tern's Received header, then msg (stuffed for DATA)."""
    data = tx["data"]
    assert data.startswith(b"Received: "), data[:200]
    if tx["how"] == "DATA":
        body = dot_stuff(msg) + b".\r\n"
    else:
        assert tx["size"] == len(data), (tx["size"], len(data))
        body = msg
    assert data.endswith(body), f"{tx['how']}: {len(data)} bytes, not the message's end"
    head = data[:len(data) - len(body)]
    assert head.endswith(b"\r\n") and b"\r\n\r\n" not in head, head[-300:]
    # only trace fields before the message: nothing of it doubled in front
    assert b"Subject:" not in head and b" line " not in head, head[-300:]




@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_slow_reader_gets_commands_in_order_and_messages_byte_exact(remote_tern, mx,
                                                                       chunking):
    with WireMX(WIRE_IP, chunking=chunking) as fake:
        t = start(remote_tern, fake)
        # 200 B goes whole in one send; 300 KiB and 900 KiB do not: the rest is queued
        msgs = [message(f"m{i}-{chunking}", size)
                for i, size in enumerate([200, 300 * 1024, 900 * 1024])]
        rcpts = [f"a@{DOMAIN}", f"b@{DOMAIN}"]
        # submitted back to back: the later ones wait for the connection already open,
        # which carries them on (reuse), each after the previous one's final reply
        qids = [submit(t, rcpts, m) for m in msgs]
        for qid in qids:
            for r in rcpts:
                t.wait_log(rf"event=delivered id={qid} to=<{re.escape(r)}>", timeout=DEADLINE)
        wait_queue_empty(t)
        taken = fake.taken()
        assert len(taken) == len(msgs), [len(x["data"]) for x in taken]
        how = "BDAT" if chunking else "DATA"
        # delivered in submission order on one connection, or spread over several: match
        # each message by its subject, then check it and its transaction's commands
        for m in msgs:
            subject = m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
            [tx] = [x for x in taken if b"Subject: " + subject + b"\r\n" in x["data"]]
            assert tx["how"] == how
            assert_exact(tx, m)
        for cmds in fake.conns:
            verbs = [c.split(" ")[0].upper() for c in cmds]
            assert verbs[0] == "EHLO", verbs
            body = verbs[1:-1] if verbs[-1] == "QUIT" else verbs[1:]
            # MAIL, RCPT, RCPT, DATA|BDAT per message, nothing between, nothing else
            assert len(body) % 4 == 0, verbs
            for k in range(0, len(body), 4):
                assert body[k:k + 4] == ["MAIL", "RCPT", "RCPT", how], verbs
        got = [c for cmds in fake.conns for c in cmds if c.upper().startswith("RCPT")]
        assert sorted(got) == sorted(f"RCPT TO:<{r}>" for r in rcpts * len(msgs)), got


def test_spilled_message_to_slow_reader_is_byte_exact(remote_tern, mx):
    with WireMX(WIRE_IP) as fake:
        t = start(remote_tern, fake)
        m = message("spilled", 3 * 1024 * 1024 // 2)  # > 1 MiB: streamed from its file
        qid = submit(t, [f"a@{DOMAIN}"], m)
        t.wait_log(rf"event=delivered id={qid} to=<a@{DOMAIN}>", timeout=DEADLINE)
        [tx] = fake.taken()
        assert tx["how"] == "DATA"
        assert_exact(tx, m)
        wait_queue_empty(t)


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_reset_mid_body_defers_then_delivers_once_exact(remote_tern, mx, chunking):
    with WireMX(WIRE_IP, chunking=chunking, mode="reset_mid_body") as fake:
        t = start(remote_tern, fake)
        m = message(f"reset-{chunking}", 400 * 1024)
        qid = submit(t, [f"a@{DOMAIN}"], m)
        t.wait_log(rf"event=deferred id={qid} to=<a@{DOMAIN}> .*status=4\.4\.2",
                   timeout=DEADLINE)
        assert fake.resets >= 1 and fake.taken() == []
        assert f"event=delivered id={qid}" not in t.log()
        fake.set_mode("accept")
        t.wait_log(rf"event=delivered id={qid} to=<a@{DOMAIN}>", timeout=DEADLINE)
        wait_queue_empty(t)
        [tx] = fake.taken()
        assert tx["how"] == ("BDAT" if chunking else "DATA")
        assert_exact(tx, m)
