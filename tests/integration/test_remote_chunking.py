"""One write and one round trip per relayed message (issue 11 item 3): to a next hop that
offers CHUNKING and PIPELINING, tern sends MAIL, the RCPTs and the message as one
`BDAT <n> LAST` chunk together (RFC 3030, RFC 2920), and judges the replies in order.

The next hop here (ChunkMX, a raw-socket server on its own loopback address) holds its
replies to MAIL and RCPT until it reads a command that ends a pipelined group (BDAT, DATA,
RSET, ...), as RFC 2920 lets a server do: a client that waited for MAIL's reply before
sending the chunk would never get it, so every delivery here proves the single round trip.

What a user depends on, each asserted from the peer's side (what it got, byte for byte) and
from tern's (per-recipient outcome in the log and `tern queue show`, DSNs):
- the chunk carries the message as DATA would after unstuffing: not dot-stuffed, CRLF line
  ends, and its announced size is exactly its length;
- a refused RCPT is judged by its RCPT reply, the accepted ones by the BDAT's reply; no
  recipient is delivered unless the BDAT got a 250 (4xx defers, 5xx bounces with a DSN);
- all RCPTs or the MAIL refused: RSET follows, nothing is delivered, the connection goes on;
- a peer that hangs up before the BDAT's reply delivers nobody (deferred, tried again);
- messages on a reused connection need no RSET between them;
- `delivery { chunking = false; }` and spilled messages (> 1 MiB) keep DATA.
"""

import re
import ssl
import time

import pytest

from conftest import make_message
from remote_harness import (DEADLINE, SENDER, Raw, ThreadedPeer, check_alive,
                            server_tls_context, submit, wait_dsn, wait_queue_empty)
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

CHUNK_IP = "127.0.0.51"
TIMEOUT = 3  # delivery.command_timeout for these tests, seconds


class ChunkMX(ThreadedPeer):
    """A next hop offering PIPELINING, CHUNKING, 8BITMIME, DSN, SIZE (size) and, unless
    chunking=False, CHUNKING. Recipients whose local part starts with "reject" get 550,
    with "defer" 451. mode (for transactions begun from now on):
      accept          BDAT LAST: 250 when a recipient was accepted, else 554
      mail_550        MAIL refused
      bdat_451        BDAT LAST answered 451
      bdat_554        BDAT LAST answered 554
      close_at_bdat   reads the chunk, hangs up without any reply
      close_after_rcpt_replies  reads the chunk, sends MAIL's and the RCPTs' replies,
                      hangs up before the BDAT's
    Records every transaction in self.tx: dict(mail, rcpts, how ("BDAT"/"DATA"), size (the
    BDAT's announced size), data, result (the reply code given)) and each connection's
    commands in self.conns."""

    def __init__(self, ip, mode="accept", size=0, chunking=True, eager=False, tls=None):
        super().__init__(ip, rcvbuf=4096 if eager else None)
        self.mode, self.size, self.chunking = mode, size, chunking
        self.tls = tls  # an ssl.SSLContext (server side): STARTTLS offered
        self.tls_used = False
        # eager: every reply at once, and the chunk read slowly through a small
        # receive buffer (MAIL's and RCPT's replies reach tern while it still sends)
        self.eager = eager
        self.tx = []

    def route(self, domain):
        tls = "require" if self.tls else "none"
        return {"routes": {domain: {"via": f"smtp://{self.ip}:{self.port}", "tls": tls}}}

    def set_mode(self, mode):
        with self.lock:
            self.mode = mode

    def delivered(self):
        with self.lock:
            return [t for t in self.tx if t["result"] == 250]

    def _serve(self, s, cmds):
        f = s.makefile("rb")
        held = []  # replies held until a command that ends a pipelined group

        def flush(*more):
            held.extend(more)
            if held:
                s.sendall("".join(f"{r}\r\n" for r in held).encode())
                held.clear()

        flush("220 chunk.test ESMTP")
        tx = None
        while True:
            line = f.readline(4096)
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("latin-1")
            cmds.append(cmd)
            verb = cmd.split(" ")[0].upper()
            if verb == "EHLO":
                caps = ["chunk.test", "PIPELINING", "8BITMIME", "DSN", "ENHANCEDSTATUSCODES",
                        f"SIZE {self.size}" if self.size else "SIZE"]
                if self.chunking:
                    caps += ["CHUNKING", "BINARYMIME"]
                if self.tls and not isinstance(s, ssl.SSLSocket):
                    caps.append("STARTTLS")
                flush(*[f"250-{c}" for c in caps[:-1]], f"250 {caps[-1]}")
            elif verb == "MAIL":
                with self.lock:
                    mode = self.mode
                tx = {"mail": cmd, "rcpts": [], "accepted": 0, "how": None, "size": None,
                      "data": b"", "result": None, "mode": mode, "mail_ok": mode != "mail_550"}
                held.append("250 2.1.0 sender ok" if tx["mail_ok"]
                            else "550 5.7.1 sender refused here (mail-550-test)")
            elif verb == "RCPT":
                local = re.sub(r"^RCPT TO:<([^@>]*).*$", r"\1", cmd, flags=re.I)
                if tx is None or not tx["mail_ok"]:
                    held.append("503 5.5.1 MAIL first")
                    continue
                tx["rcpts"].append(cmd)
                if local.startswith("reject"):
                    held.append(f"550 5.1.1 <{local}>: no such user (rcpt-550-test)")
                elif local.startswith("defer"):
                    held.append(f"451 4.2.0 <{local}>: mailbox busy (rcpt-451-test)")
                else:
                    tx["accepted"] += 1
                    held.append("250 2.1.5 recipient ok")
            elif verb == "BDAT":
                m = re.match(r"BDAT (\d+)( LAST)?$", cmd, re.I)
                n = int(m.group(1))
                if self.eager:
                    data = bytearray()
                    while len(data) < n:
                        more = f.read(min(4096, n - len(data)))
                        if not more:
                            return
                        data += more
                        time.sleep(0.002)
                    data = bytes(data)
                else:
                    data = f.read(n)
                if len(data) < n:
                    return
                if not m.group(2):
                    flush("554 5.5.1 this test server takes BDAT LAST only")
                    continue
                mode = tx["mode"] if tx else "accept"
                if mode == "close_at_bdat":
                    return
                if mode == "close_after_rcpt_replies":
                    flush()
                    return
                if tx is None or not tx["mail_ok"]:
                    code, reply = 503, "503 5.5.1 no transaction (bdat-503-test)"
                elif tx["accepted"] == 0:
                    code, reply = 554, "554 5.5.1 no valid recipients (bdat-554-test)"
                elif mode == "bdat_451":
                    code, reply = 451, "451 4.3.0 try again later (bdat-451-test)"
                elif mode == "bdat_554":
                    code, reply = 554, "554 5.7.1 content refused (bdat-554-test)"
                else:
                    code, reply = 250, "250 2.0.0 queued as BDAT"
                if tx is not None:
                    tx.update(how="BDAT", size=n, data=data, result=code)
                    with self.lock:
                        self.tx.append(tx)
                tx = None
                flush(reply)
            elif verb == "DATA":
                if tx is None or not tx["mail_ok"] or tx["accepted"] == 0:
                    flush("554 5.5.1 no valid recipients")
                    continue
                flush("354 go ahead")
                data = bytearray()
                while not data.endswith(b"\r\n.\r\n"):
                    more = f.readline(1 << 20)
                    if not more:
                        return
                    data += more
                tx.update(how="DATA", data=bytes(data), result=250)
                with self.lock:
                    self.tx.append(tx)
                tx = None
                flush("250 2.0.0 queued as DATA")
            elif verb == "STARTTLS" and self.tls:
                flush("220 2.0.0 ready")
                s = self.tls.wrap_socket(s, server_side=True)
                f = s.makefile("rb")
                self.tls_used, tx = True, None
            elif verb == "RSET":
                tx = None
                flush("250 2.0.0 reset")
            elif verb == "QUIT":
                flush("221 2.0.0 bye")
                return
            else:
                flush("502 5.5.2 not here")
            if self.eager:
                flush()


def start(remote_tern, fake, domain="chunk.test", limits=None, **delivery):
    extra = fake.route(domain)
    if limits:
        extra["limits"] = limits
    return remote_tern(extra=extra, command_timeout=Raw(f"{TIMEOUT}s"), **delivery)


def wait_for(cond, what, t=None):
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if t is not None:
            check_alive(t)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f"\n{t.log_tail()}" if t else ""))
        time.sleep(0.05)


def outcome(t, qid, rcpt):
    """The recipient's state in `tern queue show`, or None when the message left the queue."""
    out = t.cli("queue", "show", qid).stdout
    m = re.search(rf"to=<{re.escape(rcpt)}> state=(\w+)", out)
    return m.group(1) if m else None


# A body with lines that DATA must stuff, and the BDAT chunk must not.
BODY = (b"first line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n")


def test_one_write_carries_the_message_unstuffed_and_byte_exact(remote_tern, mx):
    with ChunkMX(CHUNK_IP) as fake:
        t = start(remote_tern, fake)
        msg = make_message("chunked", body=BODY.decode(), frm=SENDER, to="a@chunk.test")
        qid = submit(t, ["a@chunk.test", "b@chunk.test"], msg)
        t.wait_log(rf"event=delivered id={qid} to=<a@chunk.test>", timeout=DEADLINE)
        t.wait_log(rf"event=delivered id={qid} to=<b@chunk.test>", timeout=DEADLINE)
        [tx] = fake.delivered()
        assert tx["how"] == "BDAT", tx
        assert tx["size"] == len(tx["data"])
        # tern adds its Received header on top; the rest is the message as submitted.
        assert tx["data"].endswith(msg), tx["data"]
        assert tx["data"].startswith(b"Received: "), tx["data"][:200]
        assert b"\r\n..leading dot" not in tx["data"]
        assert re.search(rb"(?<!\r)\n", tx["data"]) is None, "bare LF in the chunk"
        assert len(tx["rcpts"]) == 2
        # One connection, no DATA, no RSET: MAIL, RCPT, RCPT, BDAT.
        cmds = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert cmds[cmds.index("MAIL"):cmds.index("MAIL") + 4] == ["MAIL", "RCPT", "RCPT",
                                                                    "BDAT"], cmds
        assert "DATA" not in cmds and "RSET" not in cmds, cmds
        wait_queue_empty(t)


def test_refused_rcpt_judged_by_its_reply_the_others_by_the_bdat(remote_tern, mx):
    with ChunkMX(CHUNK_IP) as fake:
        t = start(remote_tern, fake)
        rcpts = ["ok@chunk.test", "reject1@chunk.test", "defer1@chunk.test"]
        qid = submit(t, rcpts, make_message("mixed", frm=SENDER, to=rcpts[0]))
        t.wait_log(rf"event=delivered id={qid} to=<ok@chunk.test>", timeout=DEADLINE)
        t.wait_log(rf"event=bounced id={qid} to=<reject1@chunk.test> .*status=5\.1\.1",
                   timeout=DEADLINE)
        t.wait_log(rf"event=deferred id={qid} to=<defer1@chunk.test> .*status=4\.2\.0",
                   timeout=DEADLINE)
        assert outcome(t, qid, "defer1@chunk.test") == "deferred"
        dsn = wait_dsn(t, "reject1@chunk.test")
        r = dsn.rcpt("reject1@chunk.test")
        assert r and r.get("action") == "failed" and r.get("status") == "5.1.1", dsn
        assert "rcpt-550-test" in r.get("diagnostic-code", ""), r
        assert not dsn.rcpt("ok@chunk.test"), dsn
        [tx] = fake.delivered()
        assert tx["how"] == "BDAT" and tx["accepted"] == 1


@pytest.mark.parametrize("mode,rcpts,status", [
    pytest.param("accept", ["reject1@chunk.test", "reject2@chunk.test"], "5.1.1",
                 id="all_rcpts_refused"),
    pytest.param("mail_550", ["x@chunk.test", "y@chunk.test"], "5.7.1", id="mail_refused"),
])
def test_nothing_accepted_bounces_resets_and_goes_on(remote_tern, mx, mode, rcpts, status):
    with ChunkMX(CHUNK_IP, mode=mode) as fake:
        t = start(remote_tern, fake)
        qid = submit(t, rcpts, make_message(f"refused-{mode}", frm=SENDER, to=rcpts[0]))
        for r in rcpts:
            t.wait_log(rf"event=bounced id={qid} to=<{re.escape(r)}> .*status={status}",
                       timeout=DEADLINE)
        assert not t.log_lines("event=delivered", f"id={qid}"), t.log_tail()
        assert fake.delivered() == []
        # The chunk's refusal is followed by RSET, and the connection takes the next one.
        wait_for(lambda: "RSET" in fake.conns[0], "RSET after the refused chunk", t)
        fake.set_mode("accept")
        q2 = submit(t, ["later@chunk.test"], make_message("after", frm=SENDER,
                                                          to="later@chunk.test"))
        t.wait_log(rf"event=delivered id={q2} to=<later@chunk.test>", timeout=DEADLINE)
        wait_dsn(t, rcpts[0])


@pytest.mark.parametrize("mode,event,status", [
    pytest.param("bdat_451", "deferred", "4.3.0", id="bdat_451"),
    pytest.param("bdat_554", "bounced", "5.7.1", id="bdat_554"),
])
def test_bdat_reply_decides_for_the_accepted(remote_tern, mx, mode, event, status):
    with ChunkMX(CHUNK_IP, mode=mode) as fake:
        t = start(remote_tern, fake)
        rcpts = ["a@chunk.test", "reject9@chunk.test"]
        qid = submit(t, rcpts, make_message(f"bdat-{mode}", frm=SENDER, to=rcpts[0]))
        line = t.wait_log(rf"event={event} id={qid} to=<a@chunk.test> .*status={status}.*$",
                          timeout=DEADLINE).group(0)
        assert "BDAT LAST" in line, line
        t.wait_log(rf"event=bounced id={qid} to=<reject9@chunk.test> .*status=5\.1\.1",
                   timeout=DEADLINE)
        assert not t.log_lines("event=delivered", f"id={qid}"), t.log_tail()
        if mode == "bdat_451":
            assert outcome(t, qid, "a@chunk.test") == "deferred"
            fake.set_mode("accept")
            t.wait_log(rf"event=delivered id={qid} to=<a@chunk.test>", timeout=DEADLINE)
            wait_queue_empty(t)
            assert len(fake.delivered()) == 1
            # the retry carries only the recipient still owed
            assert len(fake.delivered()[0]["rcpts"]) == 1
        else:
            dsn = wait_dsn(t, "bdat-554-test")
            assert dsn.rcpt("a@chunk.test").get("action") == "failed", dsn


@pytest.mark.parametrize("mode", ["close_at_bdat", "close_after_rcpt_replies"])
def test_peer_hangs_up_before_the_bdat_reply_nobody_delivered(remote_tern, mx, mode):
    with ChunkMX(CHUNK_IP, mode=mode) as fake:
        t = start(remote_tern, fake)
        rcpts = ["a@chunk.test", "reject3@chunk.test"]
        qid = submit(t, rcpts, make_message(f"hangup-{mode}", frm=SENDER, to=rcpts[0]))
        t.wait_log(rf"event=deferred id={qid} to=<a@chunk.test> .*status=4\.4\.2",
                   timeout=DEADLINE)
        if mode == "close_after_rcpt_replies":
            # Its RCPT reply came, in order: it stands.
            t.wait_log(rf"event=bounced id={qid} to=<reject3@chunk.test>", timeout=DEADLINE)
        else:
            t.wait_log(rf"event=deferred id={qid} to=<reject3@chunk.test>", timeout=DEADLINE)
        assert not t.log_lines("event=delivered", f"id={qid}"), t.log_tail()
        assert outcome(t, qid, "a@chunk.test") == "deferred"
        fake.set_mode("accept")
        t.wait_log(rf"event=delivered id={qid} to=<a@chunk.test>", timeout=DEADLINE)
        wait_queue_empty(t)
        assert len(fake.delivered()) == 1


def test_replies_while_the_chunk_still_goes_out(remote_tern, mx):
    # A large message held in memory, a peer that answers MAIL and RCPT as soon as it
    # reads them and takes the chunk slowly: where the kernel cannot buffer the whole
    # chunk, those replies reach tern while it still sends (legitimate); the BDAT's
    # only after it. (On loopback the send buffer usually takes all of it.)
    with ChunkMX(CHUNK_IP, eager=True) as fake:
        t = start(remote_tern, fake)
        body = ("0123456789abcdef" * 4 + "\r\n") * 12000  # ~790 KB: not spilled
        msg = make_message("eager", body=body, frm=SENDER, to="e@chunk.test")
        qid = submit(t, ["e@chunk.test", "reject5@chunk.test"], msg)
        t.wait_log(rf"event=delivered id={qid} to=<e@chunk.test>", timeout=DEADLINE)
        t.wait_log(rf"event=bounced id={qid} to=<reject5@chunk.test>", timeout=DEADLINE)
        assert not t.log_lines("event=protocol_error"), t.log_tail()
        [tx] = fake.delivered()
        assert tx["how"] == "BDAT" and tx["data"].endswith(msg)


def test_one_write_after_starttls(remote_tern, mx, tmp_path):
    with ChunkMX(CHUNK_IP, tls=server_tls_context(tmp_path, "chunk.test")) as fake:
        t = start(remote_tern, fake)
        msg = make_message("tls", body=BODY.decode(), frm=SENDER, to="t@chunk.test")
        qid = submit(t, ["t@chunk.test", "reject7@chunk.test"], msg)
        t.wait_log(rf"event=delivered id={qid} to=<t@chunk.test>", timeout=DEADLINE)
        t.wait_log(rf"event=bounced id={qid} to=<reject7@chunk.test>", timeout=DEADLINE)
        assert fake.tls_used
        [tx] = fake.delivered()
        assert tx["how"] == "BDAT" and tx["data"].endswith(msg)
        cmds = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert cmds.index("STARTTLS") < cmds.index("MAIL") and "DATA" not in cmds, cmds


def test_binarymime_in_one_write_as_is(remote_tern, mx):
    # BINARYMIME bytes go as they are (no line-end change), still in one write.
    with ChunkMX(CHUNK_IP) as fake:
        t = start(remote_tern, fake)
        msg = (b"From: <alice@example.test>\r\nTo: <b@chunk.test>\r\nSubject: bin\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\rbare\nlf\xff.\r\n.")
        from conftest import expect
        with t.client() as c:
            c.ehlo()
            expect(c.cmd(f"MAIL FROM:<{SENDER}> BODY=BINARYMIME"), 250)
            expect(c.cmd("RCPT TO:<b@chunk.test>"), 250)
            c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
            qid = expect(c.reply(), 250).queue_id()
            c.cmd("QUIT")
        t.wait_log(rf"event=delivered id={qid}\b", timeout=DEADLINE)
        [tx] = fake.delivered()
        assert tx["how"] == "BDAT" and "BODY=BINARYMIME" in tx["mail"], tx["mail"]
        assert tx["data"].endswith(msg), tx["data"][-80:]


def test_reused_connection_no_rset_between_messages(remote_tern, mx):
    with ChunkMX(CHUNK_IP) as fake:
        t = start(remote_tern, fake)
        qids = []
        for i in range(3):
            qids.append(submit(t, [f"m{i}@chunk.test"],
                               make_message(f"reuse-{i}", frm=SENDER, to=f"m{i}@chunk.test")))
            t.wait_log(rf"event=delivered id={qids[-1]}\b", timeout=DEADLINE)
        assert len(fake.conns) == 1, fake.conns
        cmds = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert cmds.count("BDAT") == 3 and "RSET" not in cmds and "DATA" not in cmds, cmds


def test_dsn_and_size_parameters_ride_along(remote_tern, mx):
    with ChunkMX(CHUNK_IP, size=100000) as fake:
        t = start(remote_tern, fake)
        qid = submit(t, ["n@chunk.test"], make_message("dsn-params", frm=SENDER,
                                                      to="n@chunk.test"),
                     mail_params="RET=HDRS ENVID=env-77",
                     rcpt_params={"n@chunk.test": "NOTIFY=SUCCESS,FAILURE"})
        t.wait_log(rf"event=delivered id={qid}\b", timeout=DEADLINE)
        [tx] = fake.delivered()
        assert re.search(r" SIZE=\d+", tx["mail"]) and "RET=HDRS" in tx["mail"], tx["mail"]
        assert "ENVID=env-77" in tx["mail"], tx["mail"]
        assert "NOTIFY=SUCCESS,FAILURE" in tx["rcpts"][0], tx["rcpts"]
        # Too large for the peer: bounced before any transaction (5.3.4).
        big = make_message("too-big", body=("z" * 76 + "\r\n") * 1400,
                           frm=SENDER, to="n@chunk.test")
        q2 = submit(t, ["n@chunk.test"], big)
        t.wait_log(rf"event=bounced id={q2} to=<n@chunk.test> .*status=5\.3\.4", timeout=DEADLINE)
        assert len(fake.tx) == 1


@pytest.mark.parametrize("how", ["chunking_off", "no_chunking_offered"])
def test_data_when_chunking_is_off_or_not_offered(remote_tern, mx, how):
    with ChunkMX(CHUNK_IP, chunking=how == "chunking_off") as fake:
        if how == "chunking_off":
            t = start(remote_tern, fake, chunking=False)
        else:
            t = start(remote_tern, fake)
        msg = make_message(f"data-{how}", body=BODY.decode(), frm=SENDER, to="d@chunk.test")
        qid = submit(t, ["d@chunk.test"], msg)
        t.wait_log(rf"event=delivered id={qid}\b", timeout=DEADLINE)
        [tx] = fake.delivered()
        assert tx["how"] == "DATA", tx
        assert b"\r\n..leading dot\r\n" in tx["data"]  # stuffed on the wire
        assert not any(c.upper().startswith("BDAT") for c in fake.conns[0])


def test_spilled_message_keeps_data_byte_exact(remote_tern, mx):
    with ChunkMX(CHUNK_IP) as fake:
        t = start(remote_tern, fake, limits={"max_message_size": Raw("4m")})
        line = b"0123456789" * 7 + b"abcdef\r\n"
        body = (b".dot at the start\r\n" + line * 16000).decode()  # ~1.2 MiB: spilled
        msg = make_message("spilled", body=body, frm=SENDER, to="s@chunk.test")
        qid = submit(t, ["s@chunk.test"], msg)
        t.wait_log(rf"event=delivered id={qid}\b", timeout=DEADLINE)
        assert not t.log_lines("event=spill_unavailable"), t.log_tail()
        [tx] = fake.delivered()
        assert tx["how"] == "DATA", {k: v for k, v in tx.items() if k != "data"}
        assert tx["data"].endswith(b"\r\n.\r\n")
        got = tx["data"][:-3].replace(b"\r\n..", b"\r\n.")  # unstuffed
        assert got.endswith(msg)
