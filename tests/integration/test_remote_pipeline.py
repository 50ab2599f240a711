"""The next message behind the end of data (delivery.pipeline_next, RFC 2920 §3.1): to a
next hop that offers PIPELINING, tern sends the next queued message's MAIL, RCPT and DATA
in the same write as the current message's end of data, so each message costs one round
trip instead of two. What a user depends on, asserted from the next hop's side:

- the next MAIL is there before the end of data is answered (and with the option off it
  never is: the peer waits a second for it and records that it did not come), and every
  message still arrives exactly, once, over one connection;
- a refused end of data (5xx or 4xx) is that message's result only: the message behind
  it is delivered, and no RSET goes out (it would undo the transaction already begun);
- a connection lost after an end of data, before its reply, loses nothing: that message
  is deferred and retried, and the message whose commands went out behind it goes back
  to its queue untried (event=remote_requeued) and is delivered once.

The next hop (PipeMX) reads with a buffer, as a real server does, holds its greeting
until the test has queued every message (so that they wait behind the first), and
answers each end of data only after looking, for up to a second, whether the next
command is already there.
"""

import re
import select
import socket
import ssl
import struct
import threading
import time

import pytest

from conftest import dot_stuff
from remote_harness import (DEADLINE, SENDER, ThreadedPeer, server_tls_context, submit,
                            wait_queue_empty)
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)

PIPE_IP = "127.0.0.53"
DOMAIN = "pipe.test"


class PipeMX(ThreadedPeer):
    """A next hop offering PIPELINING and 8BITMIME. dot_reply: {n: reply} for the nth
    message of the peer's life (1-based) instead of 250; drop_at: the nth message's end
    of data is met with a reset instead of a reply (once). self.tx: per message taken
    (data, pipelined: the next command was in before this one's end of data was
    answered, reply)."""

    def __init__(self, ip, dot_reply=None, drop_at=None, tls=None):
        super().__init__(ip)
        self.tls = tls  # an ssl.SSLContext (server side): STARTTLS offered, then required
        self.go = threading.Event()
        self.dot_reply = dict(dot_reply or {})
        self.drop_at = drop_at
        self.n_msgs = 0
        self.tx = []

    def route(self):
        tls = "require" if self.tls else "none"
        return {"routes": {DOMAIN: {"via": f"smtp://{self.ip}:{self.port}", "tls": tls}}}

    def taken(self):
        with self.lock:
            return list(self.tx)

    def _serve(self, sock, cmds):
        if not self.go.wait(DEADLINE):
            return
        sock.sendall(b"220 pipe.test ESMTP\r\n")
        buf = bytearray()
        conn = [sock]  # the socket, TLS-wrapped after STARTTLS

        def fill():
            b = conn[0].recv(65536)
            if not b:
                raise EOFError
            buf.extend(b)

        def line():
            while b"\r\n" not in buf:
                fill()
            i = buf.index(b"\r\n")
            ln = bytes(buf[:i]).decode("latin-1")
            del buf[:i + 2]
            return ln

        def body():
            while b"\r\n.\r\n" not in buf:
                fill()
            i = buf.index(b"\r\n.\r\n") + 5
            data = bytes(buf[:i])
            del buf[:i]
            return data

        def waiting():
            """Is the next command already here (or there within a second)?"""
            s = conn[0]
            if buf or (isinstance(s, ssl.SSLSocket) and s.pending()):
                return True
            return bool(select.select([s], [], [], 1.0)[0])

        try:
            while True:
                s = conn[0]
                cmd = line()
                cmds.append(cmd)
                verb = cmd.split(" ")[0].upper()
                if verb == "EHLO":
                    tls = b"250-STARTTLS\r\n" if self.tls and s is sock else b""
                    s.sendall(b"250-pipe.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n" + tls
                              + b"250 ENHANCEDSTATUSCODES\r\n")
                elif verb == "STARTTLS" and self.tls and s is sock:
                    s.sendall(b"220 2.0.0 go ahead\r\n")
                    conn[0] = self.tls.wrap_socket(s, server_side=True)
                elif verb in ("MAIL", "RCPT"):
                    s.sendall(b"250 2.1.0 ok\r\n")
                elif verb == "DATA":
                    s.sendall(b"354 go ahead\r\n")
                    data = body()
                    pipelined = waiting()
                    with self.lock:
                        self.n_msgs += 1
                        n = self.n_msgs
                        drop = n == self.drop_at
                        reply = self.dot_reply.get(n, "250 2.0.0 queued")
                    if drop:
                        with self.lock:
                            self.drop_at = None
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
                        return
                    with self.lock:
                        self.tx.append({"data": data, "pipelined": pipelined, "reply": reply})
                    s.sendall(reply.encode() + b"\r\n")
                elif not self._answer_rest(s, verb):
                    return
        except EOFError:
            return


def start(remote_tern, fake, **delivery):
    extra = fake.route()
    extra["log_level"] = "debug"
    return remote_tern(extra=extra, max_per_destination=1, **delivery)


def message(tag):
    return (f"From: <{SENDER}>\r\nTo: <a@{DOMAIN}>\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.org>\r\n\r\n{tag} body\r\n.{tag} dotted\r\n"
            ).encode()


def queue_behind(t, fake, msgs):
    """Submits msgs (a dict tag -> message); one of them takes the one connection (held
    at its greeting), the others wait in the destination's queue; then the peer greets.
    Returns the queue ids in the order they go out on the wire: the connection's first,
    then the queue's (first in, first out)."""
    qids = {submit(t, [f"a@{DOMAIN}"], m): tag for tag, m in msgs.items()}
    rx = re.compile(r"event=remote_queued id=(\S+) ")
    deadline = time.monotonic() + DEADLINE
    while True:
        queued = [q for q in rx.findall(t.log()) if q in qids]
        if len(queued) == len(qids) - 1:
            break
        assert time.monotonic() < deadline, t.log_tail()
        time.sleep(0.05)
    [first] = [q for q in qids if q not in queued]
    fake.go.set()
    return [(q, qids[q]) for q in [first] + queued]


def tx_of(taken, m):
    subject = m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
    got = [x for x in taken if b"Subject: " + subject + b"\r\n" in x["data"]]
    return got


def assert_exact(tx, m):
    assert tx["data"].startswith(b"Received: ")
    assert tx["data"].endswith(b"\r\n" + dot_stuff(m) + b".\r\n") or \
        tx["data"].endswith(dot_stuff(m) + b".\r\n"), tx["data"][-200:]


@pytest.mark.parametrize("pipeline", [True, False], ids=["on", "off"])
def test_next_mail_rides_behind_the_end_of_data(remote_tern, mx, pipeline):
    with PipeMX(PIPE_IP) as fake:
        t = start(remote_tern, fake, pipeline_next=pipeline)
        msgs = {f"pipe{i}-{pipeline}": message(f"pipe{i}-{pipeline}") for i in range(4)}
        order = queue_behind(t, fake, msgs)
        for q, _ in order:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        wait_queue_empty(t)
        taken = fake.taken()
        assert len(taken) == len(msgs)
        for (_, tag), tx in zip(order, taken):  # in the wire's order, each exact
            assert_exact(tx, msgs[tag])
        assert len(fake.conns) == 1, fake.conns
        verbs = [c.split(" ")[0].upper() for c in fake.conns[0]]
        if verbs[-1] == "QUIT":  # the connection is kept a moment for more: maybe not yet
            verbs.pop()
        assert verbs == ["EHLO"] + ["MAIL", "RCPT", "DATA"] * len(msgs), verbs
        # every message but the last had the next one's MAIL behind its end of data
        flags = [x["pipelined"] for x in taken]
        assert flags == ([True] * (len(msgs) - 1) + [False] if pipeline
                         else [False] * len(msgs)), flags


@pytest.mark.parametrize("code", ["554 5.7.1 not this one", "451 4.3.0 try later"],
                         ids=["5xx", "4xx"])
def test_refused_end_of_data_leaves_the_next_message_alone(remote_tern, mx, code):
    with PipeMX(PIPE_IP, dot_reply={1: code}) as fake:
        t = start(remote_tern, fake)
        msgs = {f"refused{i}-{code[0]}": message(f"refused{i}-{code[0]}") for i in range(3)}
        order = queue_behind(t, fake, msgs)
        first, rest = order[0][0], [q for q, _ in order[1:]]
        outcome = "bounced" if code[0] == "5" else "deferred"
        t.wait_log(rf"event={outcome} id={first} to=<a@{DOMAIN}>.*status={code[4:9]}",
                   timeout=DEADLINE)
        for q in rest:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        # no RSET after the refusal: the next transaction was under way
        first_conn = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert "RSET" not in first_conn, first_conn
        assert first_conn[:1 + 3 * len(msgs)] == ["EHLO"] + ["MAIL", "RCPT", "DATA"] * len(msgs)
        if code[0] == "4":  # retried, then taken
            t.wait_log(rf"event=delivered id={first} to=<a@{DOMAIN}>", timeout=DEADLINE)
        wait_queue_empty(t)
        taken = fake.taken()
        for i, (q, tag) in enumerate(order):
            txs = tx_of(taken, msgs[tag])
            assert len(txs) == (2 if (i == 0 and code[0] == "4") else 1), (i, len(txs))
            assert_exact(txs[-1], msgs[tag])
        if code[0] == "5":
            assert f"event=delivered id={first}" not in t.log()


def test_connection_lost_after_end_of_data_requeues_the_next(remote_tern, mx):
    with PipeMX(PIPE_IP, drop_at=1) as fake:
        t = start(remote_tern, fake)
        msgs = {f"lost{i}": message(f"lost{i}") for i in range(3)}
        order = queue_behind(t, fake, msgs)
        (first, _), (second, _) = order[0], order[1]
        qids = [q for q, _ in order]
        # the first: its end of data went out, no reply came: deferred, not lost
        t.wait_log(rf"event=deferred id={first} to=<a@{DOMAIN}> .*status=4\.4\.2",
                   timeout=DEADLINE)
        # the second went out behind it: back to its queue, untried, never deferred
        t.wait_log(rf"event=remote_requeued id={second} ", timeout=DEADLINE)
        for q in qids:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        wait_queue_empty(t)
        log = t.log()
        assert not re.search(rf"event=(deferred|bounced) id={second} ", log), log[-3000:]
        taken = fake.taken()
        for m in msgs.values():
            [tx] = tx_of(taken, m)  # each exactly once
            assert_exact(tx, m)


def test_next_mail_rides_behind_large_messages_over_tls(remote_tern, mx, tmp_path):
    # Under TLS the bytes queued behind the end of data are counted against encrypted
    # ones: the data phase must still end right, and nothing be taken for a reply that
    # came too early. Messages of ~300 KiB, so the data is still queued when the next
    # MAIL is added behind it.
    with PipeMX(PIPE_IP, tls=server_tls_context(tmp_path, DOMAIN)) as fake:
        t = start(remote_tern, fake)
        filler = "".join(f"line {n:06d} of a longer message\r\n" for n in range(9000))
        msgs = {f"tls{i}": message(f"tls{i}") + filler.encode() for i in range(3)}
        order = queue_behind(t, fake, msgs)
        for q, _ in order:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        assert not t.log_lines("event=protocol_error"), t.log_tail()
        taken = fake.taken()
        for (_, tag), tx in zip(order, taken):
            assert_exact(tx, msgs[tag])
        assert [x["pipelined"] for x in taken] == [True, True, False]
        verbs = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert verbs[:2] == ["EHLO", "STARTTLS"], verbs
