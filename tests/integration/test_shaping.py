"""Outbound shaping, back-off and IP pools (issue 12 items 6 and 7), seen from a fake MX.

What a user depends on:
- a destination never gets more concurrent SMTP sessions than shaping's `connections`
  allows, nor more messages over one session than `per_connection`;
- messages over `per_minute`, or over an IP pool's warm-up cap, wait in the queue: not
  sent, not deferred, no retry counted;
- a destination that answers 421 4.7.0 is backed off (logged event=backoff), and the
  message is retried and delivered later, never bounced;
- the IP pool chosen by sender domain or by the X-Tern-Tag header is the source address
  the fake MX sees, with that address's EHLO name, and the tag header never leaves.

The fake MX (aiosmtpd) listens on its own loopback address and is reached through a
route; tern binds pool addresses 127.0.0.2-4 (all of 127.0.0.0/8 is local on Linux).
Waits are bounded; nothing asserts how long anything took.
"""

import re
import threading
import time

import pytest

from conftest import Raw, dot_stuff, expect, free_port, make_message

MX_IP = "127.0.0.61"
SENDER = "alice@example.org"
DEADLINE = 30.0


class FakeMX:
    """An aiosmtpd server counting what shaping promises: sessions open at once (from
    EHLO to QUIT or hang-up), messages per session, the peer address and EHLO name.
    mode "accept", or "421" (the first `n421` MAIL commands get 421 4.7.0)."""

    def __init__(self, ip, slow=0.3, n421=0):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP

        self.lock = threading.Lock()
        self.slow = slow
        self.n421 = n421
        self.active = 0
        self.max_active = 0
        self.sessions = []  # dicts: peer, ehlo, msgs, open
        self.messages = []  # (peer, rcpts, data)
        fake = self

        class CountingSMTP(SMTP):
            def connection_lost(self, exc):
                fake._close(self.session)
                super().connection_lost(exc)

        class Ctl(Controller):
            def factory(self):
                return CountingSMTP(self.handler, **self.SMTP_kwargs)

        self.port = free_port(ip)
        self.ctl = Ctl(self, hostname=ip, port=self.port, ready_timeout=10,
                       server_hostname="fake-shape.test")

    def __enter__(self):
        self.ctl.start()
        return self

    def __exit__(self, *exc):
        self.ctl.stop()

    def _rec(self, session):
        for s in self.sessions:
            if s["session"] is session:
                return s
        return None

    def _close(self, session):
        with self.lock:
            s = self._rec(session)
            if s and s["open"]:
                s["open"] = False
                self.active -= 1

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            if not self._rec(session):
                self.sessions.append({"session": session, "peer": session.peer[0],
                                      "ehlo": hostname, "msgs": 0, "open": True})
                self.active += 1
                self.max_active = max(self.max_active, self.active)
        return responses

    async def handle_QUIT(self, server, session, envelope):
        self._close(session)  # before the reply: tern reconnects only after it
        return "221 2.0.0 bye"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            refuse = self.n421 > 0
            if refuse:
                self.n421 -= 1
        if refuse:
            return "421 4.7.0 Try again later, too many messages from you (shape-421)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_DATA(self, server, session, envelope):
        import asyncio
        if self.slow:
            await asyncio.sleep(self.slow)
        with self.lock:
            s = self._rec(session)
            if s:
                s["msgs"] += 1
            self.messages.append((session.peer[0], list(envelope.rcpt_tos),
                                  envelope.original_content or envelope.content))
        return "250 2.0.0 OK queued"

    def route(self, domain):
        return {domain: {"via": f"smtp://{MX_IP}:{self.port}", "tls": "none"}}

    def wait_messages(self, n, tern, timeout=DEADLINE):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = len(self.messages)
            if got >= n:
                return
            if tern.proc.poll() is not None:
                pytest.fail("tern died\n" + tern.log_tail(60))
            if time.monotonic() > deadline:
                pytest.fail(f"fake MX: {got}/{n} messages after {timeout}s\n" + tern.log_tail(60))
            time.sleep(0.05)


def start_tern(tern_factory, extra):
    cfg = {
        "relay": {"networks": ["127.0.0.0/8"]},
        "delivery": {"retry_base": Raw("1s"), "retry_max": Raw("2s"),
                     "max_lifetime": Raw("5min"), "delay_warning": 0,
                     "max_per_destination": 10},
    }
    from conftest import deep_merge
    t = tern_factory(deep_merge(cfg, extra), start=False)
    chk = t.cli("check-config")
    assert chk.returncode == 0, chk.stderr + chk.stdout + t.config_path.read_text()
    t.start()
    return t


def submit(t, rcpts, subject, headers=""):
    body = make_message(subject, body=f"body of {subject}\r\n", frm=SENDER, to=rcpts[0])
    if headers:
        body = headers.encode() + body
    with t.client() as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        for r in rcpts:
            expect(c.cmd(f"RCPT TO:<{r}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(dot_stuff(body) + b".\r\n")
        qid = expect(c.reply(), 250).queue_id()
        c.cmd("QUIT")
    return qid


def test_connections_and_per_connection_limits(tern_factory):
    """12 messages, shaping allows 2 sessions at once and 3 messages per session:
    the fake MX never sees more, and every message arrives."""
    with FakeMX(MX_IP, slow=0.3) as mx:
        t = start_tern(tern_factory, {
            "routes": mx.route("shape.test"),
            "shaping": {"shape.test": {"connections": 2, "per_connection": 3}},
        })
        for i in range(12):
            submit(t, [f"rcpt{i}@shape.test"], f"shape {i}")
        mx.wait_messages(12, t)
        with mx.lock:
            assert mx.max_active <= 2, f"{mx.max_active} sessions at once"
            per = [s["msgs"] for s in mx.sessions]
        assert max(per) <= 3, per
        assert sum(per) == 12, per
        assert len(per) >= 4, per


def test_builtin_provider_limit_without_config(tern_factory):
    """No shaping { } at all: googlemail.com counts as gmail.com, whose built-in limit is
    5 connections, below delivery.max_per_destination (10)."""
    with FakeMX(MX_IP, slow=0.5) as mx:
        t = start_tern(tern_factory, {"routes": mx.route("googlemail.com")})
        for i in range(12):
            submit(t, [f"user{i}@googlemail.com"], f"builtin {i}")
        mx.wait_messages(12, t)
        with mx.lock:
            assert mx.max_active <= 5, f"{mx.max_active} sessions at once"


def test_per_minute_holds_messages_without_deferring(tern_factory):
    """per_minute = 2: two messages go, the others wait in the queue as queued (no
    deferral, no attempt counted) and tern logs why."""
    with FakeMX(MX_IP, slow=0) as mx:
        t = start_tern(tern_factory, {
            "routes": mx.route("rate.test"),
            "shaping": {"rate.test": {"per_minute": 2}},
        })
        ids = [submit(t, [f"r{i}@rate.test"], f"rate {i}") for i in range(4)]
        mx.wait_messages(2, t)
        t.wait_log(r"event=shaping_wait dest=rate\.test pool=- reason=per-minute", timeout=DEADLINE)
        time.sleep(1.0)  # settle: anything wrongly let through would arrive now
        with mx.lock:
            assert len(mx.messages) == 2, mx.messages
        assert not t.log_lines("event=deferred"), t.log_tail()
        waiting = [q for q in ids if not t.log_lines("event=delivered", f"id={q}")]
        assert len(waiting) == 2, t.log_tail()
        for q in waiting:
            out = t.cli("queue", "show", q, check=True).stdout
            assert re.search(r"state=queued attempts=0\b", out), out


def test_421_backs_off_then_delivers(tern_factory):
    """The fake MX answers MAIL with 421 4.7.0 once: tern logs the back-off, defers (no
    bounce) until the back-off period is over (longer than delivery.retry_base here),
    and delivers on the retry."""
    with FakeMX(MX_IP, slow=0, n421=1) as mx:
        t = start_tern(tern_factory, {"routes": mx.route("backoff.test"),
                                      "shaping": {"backoff": Raw("3s")}})
        qid = submit(t, ["x@backoff.test"], "backoff")
        line = t.wait_log(r"event=backoff id=\S+ dest=backoff\.test level=1 .*$",
                          timeout=DEADLINE).group(0)
        assert "421 4.7.0" in line and "shape-421" in line, line
        assert "for=3s" in line, line
        m = t.wait_log(rf"event=deferred id={qid} .*status=4\.7\.0 retry_in=(\d+)s",
                       timeout=DEADLINE)
        assert int(m.group(1)) >= 3, m.group(0)  # not the 1s of retry_base
        mx.wait_messages(1, t)
        t.wait_log(rf"event=delivered id={qid}", timeout=DEADLINE)
        assert not t.log_lines("event=bounced"), t.log_tail()


POOLS = {
    "pools": {
        "transactional": {"addresses": ["127.0.0.2"],
                          "ehlo": {"127.0.0.2": "mta2.example.org"}},
        "bulk": {"addresses": ["127.0.0.3"], "ehlo": {"127.0.0.3": "mta3.example.org"}},
    },
    "pool_select": {"domains": {"example.org": "transactional"},
                    "tags": {"newsletter": "bulk"}},
}


def test_pool_by_sender_domain_and_tag(tern_factory):
    """Mail from example.org leaves from the transactional pool's 127.0.0.2 (EHLO
    mta2.example.org); the same sender tagged newsletter from bulk's 127.0.0.3 (EHLO
    mta3.example.org), and the X-Tern-Tag header is not in what the MX got."""
    with FakeMX(MX_IP, slow=0) as mx:
        t = start_tern(tern_factory, dict(POOLS, routes=mx.route("pool.test")))
        submit(t, ["a@pool.test"], "transactional one")
        mx.wait_messages(1, t)
        submit(t, ["b@pool.test"], "newsletter one", headers="X-Tern-Tag: newsletter\r\n")
        mx.wait_messages(2, t)
        with mx.lock:
            by_rcpt = {m[1][0]: m for m in mx.messages}
            sessions = [(s["peer"], s["ehlo"]) for s in mx.sessions]
        assert by_rcpt["a@pool.test"][0] == "127.0.0.2", by_rcpt
        assert by_rcpt["b@pool.test"][0] == "127.0.0.3", by_rcpt
        assert ("127.0.0.2", "mta2.example.org") in sessions, sessions
        assert ("127.0.0.3", "mta3.example.org") in sessions, sessions
        data = by_rcpt["b@pool.test"][2]
        assert b"X-Tern-Tag" not in data and b"newsletter one" in data, data


def test_warmup_cap_holds_the_rest(tern_factory):
    """A pool whose only address may send 2 messages on its first day: 2 of 4 go, the
    other 2 wait queued (not deferred), and the count is kept in DATA/pools/warmup."""
    with FakeMX(MX_IP, slow=0) as mx:
        t = start_tern(tern_factory, {
            "routes": mx.route("warm.test"),
            "pools": {"new": {"addresses": ["127.0.0.4"],
                              "warmup": {"start": 2, "growth": Raw("1.5")}}},
            "pool_select": {"default": "new"},
        })
        for i in range(4):
            submit(t, [f"w{i}@warm.test"], f"warm {i}")
        mx.wait_messages(2, t)
        t.wait_log(r"event=shaping_wait dest=warm\.test pool=new reason=warmup-cap",
                   timeout=DEADLINE)
        time.sleep(1.0)  # settle: anything wrongly let through would arrive now
        with mx.lock:
            assert len(mx.messages) == 2, mx.messages
            assert {m[0] for m in mx.messages} == {"127.0.0.4"}, mx.messages
        assert not t.log_lines("event=deferred"), t.log_tail()
        day = int(time.time()) // 86400
        deadline = time.monotonic() + DEADLINE
        f = t.data_dir / "pools" / "warmup"
        while not (f.exists() and f"127.0.0.4 {day} {day} 2" in f.read_text()):
            assert time.monotonic() < deadline, (f.read_text() if f.exists() else "no file")
            time.sleep(0.1)
