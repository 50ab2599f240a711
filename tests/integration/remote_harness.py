"""
remote_harness.py — the outside world for tern's remote delivery tests (issue 3).

Owns: a real unbound serving the test zones on a loopback port, fake remote MXes
(aiosmtpd) on 127.0.0.10-40 that accept, reject, defer, drop, stall, require AUTH or
lack 8BITMIME/SMTPUTF8, a tern config wired to both, and DSN parsing helpers.

The trick: tern listens on 127.0.0.1:P and delivers to remote MXes on port P too
(delivery.remote_port), and every fake MX listens on 127.0.0.N:P. So an MX record that
points at 127.0.0.1 leads back to tern itself.

Never: talk to anything outside 127.0.0.0/8, wait without a bound, or kill a process it
did not start (unbound is stopped by the PID we spawned).
"""

import asyncio
import email
import email.policy
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import IS_ROOT, Raw, deep_merge, dot_stuff, make_tmpdir

UNBOUND = os.environ.get("TERN_UNBOUND", "/usr/sbin/unbound")
HOSTNAME = "mx.tern.test"
SENDER = "alice@example.test"

# --------------------------------------------------------------------------
# Addresses of the fake MXes. Every one listens on the module's port P.

IP = {
    "down": "127.0.0.11",      # nothing listens: connection refused
    "up": "127.0.0.12",        # accepts
    "implicit": "127.0.0.13",  # accepts; reached through an A record only
    "reject": "127.0.0.14",    # 550 5.1.1 at RCPT
    "deferonce": "127.0.0.15", # 451 the first time, then 250
    "lifetime": "127.0.0.16",  # always 451
    "drop": "127.0.0.17",      # drops the connection after the data, once; then accepts
    "no8bit": "127.0.0.18",    # no 8BITMIME in EHLO
    "noutf8": "127.0.0.19",    # no SMTPUTF8 in EHLO
    "smart": "127.0.0.20",     # smarthost requiring AUTH
    "slow": "127.0.0.21",      # 0.6 s per message
    "restart": "127.0.0.22",   # defers until switched to accept
    "hold": "127.0.0.23",      # defers until switched to accept
    "ok": "127.0.0.24",        # accepts (several recipients, 8-bit, SMTPUTF8, DSN notices)
    "rejectdata": "127.0.0.25",  # 554 5.7.1 at end of data
    "last": "127.0.0.26",      # accepts; lowest preference of pref.test, must stay unused
    "busy": "127.0.0.27",      # greets with 421 and closes (a raw socket, not aiosmtpd)
    "small": "127.0.0.28",     # SIZE 2000
    "helo": "127.0.0.29",      # answers EHLO with 502: HELO only
    "dsn": "127.0.0.30",       # offers DSN and takes RET/ENVID/NOTIFY/ORCPT
    "delay": "127.0.0.31",     # always 451 (DELAY notices)
}

REJECT_RCPT_TEXT = "550 5.1.1 <{rcpt}>: no mailbox here by that name (zorglub-7781)"
REJECT_DATA_TEXT = "554 5.7.1 Message content refused by policy (quux-4410)"
DEFER_TEXT = "451 4.3.0 Temporarily unable to accept (frobnitz-2291)"
LIFETIME_TEXT = "451 4.7.1 Greylisted, come back much later (blorpt-5512)"
AUTH_USER = "relayuser"
AUTH_PASSWORD = "s3cret-relay-Pw!"

# (name, type, data) for unbound local-data, all inside the static zone "test."
DNS_RECORDS = [
    # preference order and fallback: 10 refuses connections, 20 accepts, 30 must not be used
    ("pref.test", "MX", "10 mx-down.pref.test."),
    ("pref.test", "MX", "20 mx-up.pref.test."),
    ("pref.test", "MX", "30 mx-last.pref.test."),
    ("mx-down.pref.test", "A", IP["down"]),
    ("mx-up.pref.test", "A", IP["up"]),
    ("mx-last.pref.test", "A", IP["last"]),
    # implicit MX: an A record and no MX
    ("implicit.test", "A", IP["implicit"]),
    # null MX (RFC 7505)
    ("nullmx.test", "MX", "0 ."),
    # gone.test: nothing at all -> NXDOMAIN inside the static zone
    ("reject.test", "MX", "10 mx.reject.test."),
    ("mx.reject.test", "A", IP["reject"]),
    ("rejectdata.test", "MX", "10 mx.rejectdata.test."),
    ("mx.rejectdata.test", "A", IP["rejectdata"]),
    ("defer.test", "MX", "10 mx.defer.test."),
    ("mx.defer.test", "A", IP["deferonce"]),
    ("lifetime.test", "MX", "10 mx.lifetime.test."),
    ("mx.lifetime.test", "A", IP["lifetime"]),
    ("drop.test", "MX", "10 mx.drop.test."),
    ("mx.drop.test", "A", IP["drop"]),
    ("no8bit.test", "MX", "10 mx.no8bit.test."),
    ("mx.no8bit.test", "A", IP["no8bit"]),
    ("noutf8.test", "MX", "10 mx.noutf8.test."),
    ("mx.noutf8.test", "A", IP["noutf8"]),
    ("slow.test", "MX", "10 mx.slow.test."),
    ("mx.slow.test", "A", IP["slow"]),
    ("restart.test", "MX", "10 mx.restart.test."),
    ("mx.restart.test", "A", IP["restart"]),
    ("hold.test", "MX", "10 mx.hold.test."),
    ("mx.hold.test", "A", IP["hold"]),
    ("ok.test", "MX", "10 mx.ok.test."),
    ("mx.ok.test", "A", IP["ok"]),
    ("multi.test", "MX", "10 mx.ok.test."),
    # loops: an MX host that is 127.0.0.1 (where tern listens on port P) ...
    ("loop.test", "MX", "10 mx.loop.test."),
    ("mx.loop.test", "A", "127.0.0.1"),
    # ... and an MX that is tern's own host name
    ("loop2.test", "MX", "10 mx.tern.test."),
    ("mx.tern.test", "A", "127.0.0.1"),
    # a 4xx greeting at the best MX: go on to the next one
    ("busy.test", "MX", "10 mx-busy.busy.test."),
    ("busy.test", "MX", "20 mx.ok.test."),
    ("mx-busy.busy.test", "A", IP["busy"]),
    ("small.test", "MX", "10 mx.small.test."),
    ("mx.small.test", "A", IP["small"]),
    ("helo.test", "MX", "10 mx.helo.test."),
    ("mx.helo.test", "A", IP["helo"]),
    ("dsn.test", "MX", "10 mx.dsn.test."),
    ("mx.dsn.test", "A", IP["dsn"]),
    ("delay.test", "MX", "10 mx.delay.test."),
    ("mx.delay.test", "A", IP["delay"]),
    # smart.test has no records: only the route can deliver it
]

DEADLINE = 20.0  # default bound for waiting on deliveries


def check_alive(tern):
    """Fails at once (instead of at the deadline) when tern has died."""
    if tern is not None and tern.proc is not None and tern.proc.poll() is not None:
        pytest.fail(f"tern serve died (exit {tern.proc.returncode}) while the test waited\n"
                    + tern.log_tail(60))


# --------------------------------------------------------------------------
# Ports.


def pick_shared_port(ips, tries=50):
    """A TCP port free on 127.0.0.1 and on every address in ips."""
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        socks = []
        ok = True
        try:
            for ip in ["127.0.0.1", *ips]:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((ip, port))
        except OSError:
            ok = False
        finally:
            for s in socks:
                s.close()
        if ok:
            return port
    raise RuntimeError("no TCP port free on all of 127.0.0.1 and " + ", ".join(ips))


def free_udp_port():
    """A port free for UDP and TCP on 127.0.0.1 (unbound binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


# --------------------------------------------------------------------------
# DNS: a real unbound with static local zones.


def dns_query(port, name, qtype=15, timeout=0.5):
    """Minimal raw UDP query; returns (rcode, ancount) or None on timeout."""
    qid = os.getpid() & 0xFFFF
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(4096)
        except socket.timeout:
            return None
    _, flags, _, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    return flags & 0xF, an


class Unbound:
    def __init__(self, records=DNS_RECORDS):
        self.dir = make_tmpdir("tern-unbound-")
        self.port = free_udp_port()
        self.conf = self.dir / "unbound.conf"
        self.logfile = self.dir / "unbound.log"
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  do-not-query-localhost: no",
            '  chroot: ""',
            '  username: ""',
            f'  directory: "{self.dir}"',
            f'  pidfile: "{self.dir}/unbound.pid"',
            f'  logfile: "{self.logfile}"',
            "  use-syslog: no",
            "  verbosity: 1",
            "  num-threads: 1",
            '  module-config: "iterator"',
            "  access-control: 127.0.0.0/8 allow",
            '  local-zone: "test." static',
        ]
        # A resolver failure (REFUSED from our forwarder; libunbound turns it into
        # SERVFAIL): mail must wait, never bounce.
        lines.append('  local-zone: "servfail.test." always_refuse')
        for name, typ, data in records:
            lines.append(f'  local-data: "{name}. 60 IN {typ} {data}"')
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = None

    @property
    def forward(self):
        return f"127.0.0.1@{self.port}"

    def start(self, timeout=10.0, attempts=5):
        """Starts unbound; a port taken between choosing and binding it (another
        process's ephemeral port) is not a failure: choose again, a bounded
        number of times."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError as e:
                if "can't bind socket" not in str(e) or attempt == attempts - 1:
                    raise
                old = self.port
                self.port = free_udp_port()
                self.conf.write_text(self.conf.read_text().replace(
                    f"  port: {old}\n", f"  port: {self.port}\n"))
        raise AssertionError("unreachable")

    def _start_once(self, timeout):
        if not os.access(UNBOUND, os.X_OK):
            pytest.skip(f"{UNBOUND} not installed")
        chk = subprocess.run(["/usr/sbin/unbound-checkconf", str(self.conf)],
                             capture_output=True, text=True, timeout=10)
        assert chk.returncode == 0, f"unbound config refused:\n{chk.stdout}{chk.stderr}"
        self.out = open(self.dir / "unbound.stderr", "ab")
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited {self.proc.returncode}: {self.diag()}")
            r = dns_query(self.port, "pref.test", 15, 0.3)
            if r is not None and r == (0, 3):
                # and the NXDOMAIN case answers as such
                assert dns_query(self.port, "gone.test", 15)[0] == 3
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"unbound did not answer within {timeout}s: {self.diag()}")

    def diag(self):
        out = []
        for f in (self.dir / "unbound.stderr", self.logfile):
            try:
                out.append(f.read_text(errors="replace")[-3000:])
            except FileNotFoundError:
                pass
        return "\n".join(out)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self.out.close()
        if not os.environ.get("TERN_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# Fake remote MXes.


class Received:
    def __init__(self, envelope, session):
        self.mail_from = envelope.mail_from
        self.rcpt_tos = list(envelope.rcpt_tos)
        self.content = bytes(envelope.original_content or b"")
        self.mail_options = list(envelope.mail_options)
        self.rcpt_options = list(envelope.rcpt_options)
        self.session = session
        self.auth = getattr(session, "auth_data", None)

    def __repr__(self):
        return (f"Received(from={self.mail_from!r}, to={self.rcpt_tos!r}, "
                f"mail_options={self.mail_options!r}, rcpt_options={self.rcpt_options!r}, "
                f"{len(self.content)} bytes)")


class MXHandler:
    """One fake MX. mode: accept | reject_rcpt | reject_data | defer_once | defer |
    drop_once | slow. Everything it sees is recorded; reset() between tests."""

    def __init__(self, name, mode="accept", no8bit=False, slow=0.0, no_ehlo=False, dsn=False):
        self.name = name
        self.initial_mode = mode
        self.no8bit = no8bit
        self.slow = slow
        self.no_ehlo = no_ehlo
        self.dsn = dsn
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.mode = self.initial_mode
            self.messages = []       # accepted transactions
            self.attempts = 0        # DATA attempts (accepted or not) + RCPT rejections
            self.rcpt_attempts = 0
            self.sessions = []       # distinct SMTP sessions that said EHLO/HELO
            self.ehlos = 0
            self.helos = 0
            self.auths = []          # (mechanism, login, password, ok)
            self.deferred_once = set()
            self.dropped_once = set()
            self.events = []         # (time, what)

    def set_mode(self, mode):
        with self.lock:
            self.mode = mode

    def _note_session(self, session):
        with self.lock:
            self.ehlos += 1
            if not any(s is session for s in self.sessions):
                self.sessions.append(session)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self._note_session(session)
        if self.no_ehlo:
            session.extended_smtp = False
            return ["502 5.5.1 EHLO not implemented here, try HELO"]
        session.host_name = hostname
        if self.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        if self.no8bit:
            responses = [r for r in responses if "8BITMIME" not in r.upper()]
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        self._note_session(session)
        with self.lock:
            self.helos += 1
        return f"250 {server.hostname}"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_attempts += 1
            mode = self.mode
            self.events.append((time.monotonic(), "rcpt " + address))
        if mode == "reject_rcpt":
            with self.lock:
                self.attempts += 1
            return REJECT_RCPT_TEXT.format(rcpt=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        key = (envelope.mail_from, tuple(envelope.rcpt_tos))
        with self.lock:
            self.attempts += 1
            mode = self.mode
            self.events.append((time.monotonic(), "data"))
        if mode == "reject_data":
            return REJECT_DATA_TEXT
        if mode == "defer":
            return LIFETIME_TEXT
        if mode == "defer_once":
            with self.lock:
                first = key not in self.deferred_once
                self.deferred_once.add(key)
            if first:
                return DEFER_TEXT
        if mode == "drop_once":
            with self.lock:
                first = key not in self.dropped_once
                self.dropped_once.add(key)
            if first:
                # No reply to the end of data: the client cannot know whether we took it.
                server.transport.abort()
                await asyncio.sleep(30)  # cancelled by connection_lost
                return "421 4.3.0 unreachable"
        if self.slow:
            await asyncio.sleep(self.slow)
        with self.lock:
            self.messages.append(Received(envelope, session))
        return "250 2.0.0 OK queued"

    # --- observation
    def wait_messages(self, count=1, timeout=DEADLINE, tern=None):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                msgs = list(self.messages)
            if len(msgs) >= count:
                return msgs
            check_alive(tern)
            if time.monotonic() > deadline:
                tail = tern.log_tail() if tern is not None else ""
                pytest.fail(f"fake MX {self.name}: {len(msgs)}/{count} messages after "
                            f"{timeout}s (attempts={self.attempts}, ehlos={self.ehlos})\n{tail}")
            time.sleep(0.05)

    def wait_attempts(self, count=1, timeout=DEADLINE, tern=None):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                n = self.attempts
            if n >= count:
                return n
            check_alive(tern)
            if time.monotonic() > deadline:
                tail = tern.log_tail() if tern is not None else ""
                pytest.fail(f"fake MX {self.name}: {n}/{count} attempts after {timeout}s\n{tail}")
            time.sleep(0.05)


class Authenticator:
    def __init__(self, handler):
        self.handler = handler

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword
        login = password = None
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
        ok = login == AUTH_USER and password == AUTH_PASSWORD
        with self.handler.lock:
            self.handler.auths.append((mechanism, login, password, ok))
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)


class BusyGreeter:
    """Answers every connection with a 421 greeting and closes it; counts connections."""

    def __init__(self, ip, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            try:
                c.sendall(b"421 4.3.2 fake-busy.test too busy, try another MX\r\n")
            except OSError:
                pass
            c.close()

    def reset(self):
        self.connections = 0

    def stop(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


def _dsn_smtp_class():
    from aiosmtpd.smtp import SMTP

    class DSNSMTP(SMTP):
        """aiosmtpd refuses every RCPT parameter and unknown MAIL parameters; this one
        takes the DSN ones (RFC 3461) so that they show up in the recorded options."""

        def _getparams(self, params):
            r = super()._getparams(params)
            if r is not None:
                for k in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                    r.pop(k, None)
            return r

    return DSNSMTP


class FakeMXes:
    def __init__(self, port):
        self.port = port
        self.handlers = {
            "up": MXHandler("up"),
            "implicit": MXHandler("implicit"),
            "reject": MXHandler("reject", "reject_rcpt"),
            "rejectdata": MXHandler("rejectdata", "reject_data"),
            "deferonce": MXHandler("deferonce", "defer_once"),
            "lifetime": MXHandler("lifetime", "defer"),
            "drop": MXHandler("drop", "drop_once"),
            "no8bit": MXHandler("no8bit", no8bit=True),
            "noutf8": MXHandler("noutf8"),
            "smart": MXHandler("smart"),
            "slow": MXHandler("slow", slow=0.6),
            "restart": MXHandler("restart", "defer"),
            "hold": MXHandler("hold", "defer"),
            "ok": MXHandler("ok"),
            "last": MXHandler("last"),
            "small": MXHandler("small"),
            "helo": MXHandler("helo", no_ehlo=True),
            "dsn": MXHandler("dsn", dsn=True),
            "delay": MXHandler("delay", "defer"),
        }
        self.controllers = []
        self.busy = None

    def start(self):
        self.busy = BusyGreeter(IP["busy"], self.port)
        from aiosmtpd.controller import Controller
        for name, h in self.handlers.items():
            kw = dict(hostname=IP[name], port=self.port, ready_timeout=10,
                      server_hostname=f"fake-{name}.test")
            if name == "noutf8":
                kw["enable_SMTPUTF8"] = False
            if name == "smart":
                kw.update(authenticator=Authenticator(h), auth_required=True,
                          auth_require_tls=False)
            if name == "small":
                kw["data_size_limit"] = 2000
            if name == "dsn":
                smtp_cls = _dsn_smtp_class()

                class DSNController(Controller):
                    def factory(self):
                        return smtp_cls(self.handler, **self.SMTP_kwargs)

                c = DSNController(h, **kw)
            else:
                c = Controller(h, **kw)
            c.start()
            self.controllers.append(c)
        return self

    def reset(self):
        for h in self.handlers.values():
            h.reset()
        if self.busy:
            self.busy.reset()

    def __getitem__(self, name):
        return self.handlers[name]

    def stop(self):
        if self.busy:
            self.busy.stop()
        for c in self.controllers:
            try:
                c.stop()
            except Exception:
                pass


# --------------------------------------------------------------------------
# tern configuration for these tests.


def remote_overrides(port, dns_forward, root, **delivery):
    d = {
        "remote_port": port,
        "retry_base": Raw("1s"),
        "retry_max": Raw("2s"),
        "max_lifetime": Raw("30s"),
        "delay_warning": 0,
    }
    d.update(delivery)
    pwfile = Path(root) / "relay.pw"
    pwfile.write_text(AUTH_PASSWORD + "\n")
    os.chmod(pwfile, 0o600)
    if IS_ROOT:
        import pwd
        try:
            nb = pwd.getpwnam("nobody")
            os.chown(pwfile, nb.pw_uid, nb.pw_gid)
        except KeyError:
            pass
    return {
        "hostname": HOSTNAME,
        "local_domains": ["example.test"],
        "relay": {"networks": ["127.0.0.0/8"]},
        "listen": {"mx": {"address": f"127.0.0.1:{port}", "profile": "mx"}},
        "dns": {"forward": [dns_forward]},
        "delivery": d,
        "routes": {
            "smart.test": {
                "via": f"smtp://{IP['smart']}:{port}",
                "auth_user": AUTH_USER,
                "auth_password_file": str(pwfile),
                "tls": "none",
            },
        },
    }


def wait_queue_empty(t, timeout=DEADLINE):
    """Waits (bounded) until `tern queue list` says the queue is empty."""
    deadline = time.monotonic() + timeout
    while True:
        check_alive(t)
        out = t.queue_list()
        if "queue is empty" in out:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"queue not empty after {timeout}s:\n{out}\n{t.log_tail()}")
        time.sleep(0.1)


def submit(tern, rcpts, body, mail_from=SENDER, mail_params="", rcpt_params=None, smtputf8=False):
    """Submits one message from 127.0.0.1 (a relay network); returns the queue id.
    rcpt_params: {rcpt: "NOTIFY=..."}."""
    from conftest import dot_stuff, expect
    rcpt_params = rcpt_params or {}
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{mail_from}>{(' ' + mail_params) if mail_params else ''}"),
               250, "2.1.0")
        for r in rcpts:
            p = rcpt_params.get(r)
            expect(c.cmd(f"RCPT TO:<{r}>{(' ' + p) if p else ''}"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(dot_stuff(body) + b".\r\n")
        r = expect(c.reply(), 250, "2.0.0")
        qid = r.queue_id()
        assert qid, f"no queue id in {r!r}"
        c.cmd("QUIT")
    return qid


# --------------------------------------------------------------------------
# DSNs.


class DSN:
    """A parsed delivery status notification (RFC 3464)."""

    def __init__(self, data):
        self.raw = data
        self.msg = email.message_from_bytes(data, policy=email.policy.default)
        self.parts = list(self.msg.iter_parts()) if self.msg.is_multipart() else []
        self.status_part = None
        self.original_part = None
        self.human = ""
        for p in self.parts:
            ct = p.get_content_type()
            if ct in ("message/delivery-status", "message/global-delivery-status"):
                self.status_part = p
            elif ct in ("message/rfc822", "text/rfc822-headers", "message/global",
                        "message/global-headers"):
                self.original_part = p
            elif ct == "text/plain" and not self.human:
                self.human = p.get_content()
        self.per_message = {}
        self.recipients = []
        if self.status_part is not None:
            blocks = self._blocks(self.status_part)
            if blocks:
                self.per_message = blocks[0]
                self.recipients = blocks[1:]

    @staticmethod
    def _blocks(part):
        payload = part.get_payload()
        if isinstance(payload, list):
            return [{k.lower(): str(v) for k, v in m.items()} for m in payload]
        text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        text = text.replace("\r\n", "\n")
        blocks = []
        for chunk in re.split(r"\n\s*\n", text.strip()):
            d = {}
            for ln in re.sub(r"\n[ \t]+", " ", chunk).split("\n"):
                if ":" in ln:
                    k, v = ln.split(":", 1)
                    d[k.strip().lower()] = v.strip()
            blocks.append(d)
        return blocks

    def original_text(self):
        if self.original_part is None:
            return ""
        return self.original_part.as_string() if hasattr(self.original_part, "as_string") else ""

    def rcpt(self, needle):
        for r in self.recipients:
            if needle.lower() in r.get("final-recipient", "").lower():
                return r
        return None

    def __repr__(self):
        return f"DSN({self.raw[:3000]!r})"


def is_dsn(data):
    return b"report-type=delivery-status" in data.replace(b"\"", b"").replace(b"'", b"")


def wait_dsn(tern, about, timeout=DEADLINE, address=SENDER):
    """Waits for a DSN in address's Maildir that mentions about; returns DSN."""
    needle = about.encode("utf-8") if isinstance(about, str) else about
    deadline = time.monotonic() + timeout
    while True:
        for d in dsns_in_maildir(tern, address):
            if needle in d:
                return DSN(d)
        check_alive(tern)
        if time.monotonic() > deadline:
            pytest.fail(f"no DSN about {about!r} in {address}'s Maildir after {timeout}s; "
                        f"files: {[p.name for p in tern.mail_files(address)]}\n{tern.log_tail()}")
        time.sleep(0.05)


def dsns_in_maildir(tern, address=SENDER):
    out = []
    for p in tern.mail_files(address):
        try:
            d = p.read_bytes()
        except FileNotFoundError:
            continue
        if is_dsn(d):
            out.append(d)
    return out


# --------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def world():
    """(port, unbound, fake MXes), shared by the module."""
    port = pick_shared_port(sorted(set(IP.values())))
    dns = Unbound().start()
    mxes = FakeMXes(port)
    try:
        mxes.start()
    except Exception:
        mxes.stop()
        dns.stop()
        raise
    yield port, dns, mxes
    mxes.stop()
    dns.stop()


@pytest.fixture
def mx(world):
    _, _, mxes = world
    mxes.reset()
    yield mxes
    mxes.reset()


@pytest.fixture
def remote_tern(world, tern_factory, mx):
    """Returns start(**delivery_overrides) -> a running tern wired to the world."""
    port, dns, _ = world

    def start(extra=None, **delivery):
        t = tern_factory(None, ("alice@example.test",), start=False)
        cfg = remote_overrides(port, dns.forward, t.root, **delivery)
        if extra:
            cfg = deep_merge(cfg, extra)
        t.write_config(deep_merge(t.config, cfg))
        t.port = port
        chk = t.cli("check-config")
        if chk.returncode != 0:
            pytest.fail("tern check-config refuses the remote-delivery config "
                        f"(rc={chk.returncode}):\n{chk.stderr}{chk.stdout}\n"
                        + t.config_path.read_text())
        t.start()
        return t

    return start


# --------------------------------------------------------------------------
# Hostile next hops and a silent resolver (fault injection, issue 7).


def server_tls_context(tmp_path, cn):
    """A server-side SSLContext with a fresh self-signed P-256 certificate for cn (a test
    next hop offering STARTTLS; tern's `require` level takes an untrusted one)."""
    cert, key = tmp_path / f"{cn}.crt", tmp_path / f"{cn}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={cn}"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


class ThreadedPeer:
    """A TCP next hop on ip for one test: a thread accepts, and a thread per connection
    runs self._serve(sock, commands) (subclasses write _serve; a subclass with its own
    bookkeeping per connection overrides _run). self.conns lists each connection's
    commands. rcvbuf / mss: options of the listening socket, inherited by accepted
    sockets (a receiver that backs the sender up; small segments, so tern's send buffer
    stays small). Use as a context manager."""

    def __init__(self, ip, rcvbuf=None, mss=None):
        self.ip = ip
        self.lock = threading.Lock()
        self.conns = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if mss:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        self.sock.bind((ip, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.threads = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join(5)
        self.sock.close()
        for t in self.threads:
            t.join(5)

    def _run(self):
        while self.running:
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            th = threading.Thread(target=self._conn, args=(s,), daemon=True)
            self.threads.append(th)
            th.start()

    @staticmethod
    def _answer_rest(s, verb):
        """Answers RSET, QUIT and any verb the peer does not take, as every test peer
        does; False after QUIT (the connection is done)."""
        if verb == "RSET":
            s.sendall(b"250 2.0.0 reset\r\n")
        elif verb == "QUIT":
            s.sendall(b"221 2.0.0 bye\r\n")
            return False
        else:
            s.sendall(b"502 5.5.2 not here\r\n")
        return True

    def _conn(self, s):
        s.settimeout(30)
        cmds = []
        with self.lock:
            self.conns.append(cmds)
        try:
            self._serve(s, cmds)
        except OSError:
            pass
        finally:
            s.close()

    def _serve(self, s, cmds):
        raise NotImplementedError


class HostileMX(ThreadedPeer):
    """A raw-socket next hop on its own loopback address and port (reach it with
    route(domain)) that misbehaves on purpose until heal() makes it an ordinary
    server. Every connection is served in its own thread and recorded in
    self.conns (a Conn each): the commands it got, whether it got a whole message,
    and whether tern hung up on it while it was dripping or stalling.

    mode (the misbehaviour, on every connection until healed):
      accept              an ordinary server
      data_250            answers DATA with 250 instead of 354
      surplus_after_mail  answers MAIL with two replies (no PIPELINING offered)
      surplus_after_final answers the end of data with two replies
      pipelined_shift     offers PIPELINING and answers MAIL twice: every later reply
                          lands on the wrong command (DATA gets a 250)
      rcpt_354            answers RCPT with 354
      garbage_mail        answers MAIL with bytes that are no SMTP reply
      drip_greeting, drip_ehlo, drip_mail, drip_data
                          sends that reply (the greeting, the EHLO reply, the MAIL
                          reply, the 354) one byte every `drip` seconds
      tls_stall           offers STARTTLS, answers 220, then never speaks TLS
      tls_drip            the same, but drips a TLS record header and its body
      starttls_inject     offers STARTTLS and sends a plaintext reply right after its
                          220, as a man in the middle would (CVE-2011-0411, client side)
      close_mid_data      answers DATA with 354, reads part of the data, hangs up
      slow_reader         answers DATA with 354, then takes the data 100 bytes every
                          0.5 s through a small receive buffer
      idle_421            an ordinary server that closes a connection with a 421 when
                          no command follows a message's 250 within 0.3 s (an idle
                          timeout)
    """

    def __init__(self, ip, mode, drip=0.7, drip_len=40):
        # slow_reader: a small receive buffer, so the sender's data backs up at once
        super().__init__(ip, rcvbuf=4096 if mode == "slow_reader" else None)
        self.mode = mode
        self.drip = drip
        self.drip_len = drip_len
        self.messages = []  # (mail_from, rcpts, data) taken while healed

    class Conn:
        def __init__(self):
            self.commands = []
            self.got_message = False    # a whole message up to CRLF.CRLF
            self.data_bytes = 0         # message bytes seen after a 354
            self.hung_up_on_us = False  # tern closed while we dripped or stalled
            self.finished_drip = False  # we got the whole slow reply out
            self.tls_bytes = 0          # bytes tern sent while we dripped or stalled
            self.closed = threading.Event()

    def route(self, domain, tls="none"):
        return {"routes": {domain: {"via": f"smtp://{self.ip}:{self.port}", "tls": tls}}}

    def heal(self):
        self.set_mode("accept")

    def set_mode(self, mode):
        """For connections made, and transactions begun, from now on."""
        with self.lock:
            self.mode = mode

    # --- observation
    def wait_conns(self, n, timeout=DEADLINE, tern=None):
        """Waits until n connections were made and the first n have ended."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                conns = list(self.conns)
            if len(conns) >= n and all(c.closed.is_set() for c in conns[:n]):
                return conns
            check_alive(tern)
            if time.monotonic() > deadline:
                tail = tern.log_tail() if tern is not None else ""
                pytest.fail(f"hostile MX ({self.mode}): {len(conns)} connections, "
                            f"{sum(c.closed.is_set() for c in conns)} ended, "
                            f"after {timeout}s (wanted {n} ended)\n{tail}")
            time.sleep(0.05)

    # --- serving
    def _run(self):
        while self.running:
            try:
                s, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            conn = HostileMX.Conn()
            with self.lock:
                self.conns.append(conn)
                mode = self.mode
            t = threading.Thread(target=self._serve_guarded, args=(s, conn, mode), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve_guarded(self, s, conn, mode):
        try:
            s.settimeout(60)
            self._serve(s, conn, mode)
        except OSError:
            pass
        finally:
            s.close()
            conn.closed.set()

    def _drip(self, s, conn, data):
        """Sends data a byte at a time; False when tern hung up first."""
        for i in range(len(data)):
            try:
                s.sendall(data[i:i + 1])
            except OSError:
                conn.hung_up_on_us = True
                return False
            r, _, _ = select.select([s], [], [], self.drip)
            if r:
                try:
                    got = s.recv(4096)
                except OSError:
                    got = b""
                if not got:
                    conn.hung_up_on_us = True
                    return False
                conn.tls_bytes += len(got)
        conn.finished_drip = True
        return True

    def _slow_reply(self, text):
        """A reply padded to drip_len bytes so that dripping it outlasts any test bound."""
        pad = max(0, self.drip_len - len(text) - 2)
        return (text + " " + "x" * pad + "\r\n").encode()

    def _wait_hangup(self, s, conn):
        """Holds the connection, reading and dropping, until tern closes it."""
        s.settimeout(None)
        while self.running:
            r, _, _ = select.select([s], [], [], 1)
            if not r:
                continue
            try:
                got = s.recv(65536)
            except OSError:
                got = b""
            if not got:
                conn.hung_up_on_us = True
                return
            conn.tls_bytes += len(got)

    def _read_slowly(self, s, conn):
        """Takes the message data 100 bytes every 0.5 s until tern hangs up."""
        s.settimeout(None)
        while self.running:
            r, _, _ = select.select([s], [], [], 1)
            if not r:
                continue
            try:
                got = s.recv(100)
            except OSError:
                got = b""
            if not got:
                conn.hung_up_on_us = True
                return
            conn.data_bytes += len(got)
            time.sleep(0.5)

    def _serve(self, s, conn, mode):
        f = s.makefile("rb")

        def send(b):
            s.sendall(b)

        if mode == "drip_greeting":
            if not self._drip(s, conn, self._slow_reply("220 drip.test ESMTP")):
                return
        else:
            send(b"220 hostile.test ESMTP\r\n")
        mail_from, rcpts = None, []
        while True:
            line = f.readline(4096)
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("latin-1")
            conn.commands.append(cmd)
            verb = cmd.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                caps = ["hostile.test"]
                if mode == "pipelined_shift":
                    caps.append("PIPELINING")
                if mode in ("tls_stall", "tls_drip", "starttls_inject"):
                    caps.append("STARTTLS")
                caps.append("8BITMIME")
                text = "".join(f"250-{c}\r\n" for c in caps[:-1]) + f"250 {caps[-1]}\r\n"
                if mode == "drip_ehlo":
                    slow = f"250-hostile.test {'x' * self.drip_len}\r\n250 8BITMIME\r\n"
                    if not self._drip(s, conn, slow.encode()):
                        return
                    continue
                send(text.encode())
            elif verb == "STARTTLS":
                if mode == "starttls_inject":
                    send(b"220 2.0.0 ready to start TLS\r\n250 2.0.0 injected in clear\r\n")
                    self._wait_hangup(s, conn)
                    return
                send(b"220 2.0.0 ready to start TLS\r\n")
                if mode == "tls_drip":
                    # A TLS record header announcing 16 KiB, then its body, slowly.
                    if not self._drip(s, conn, b"\x16\x03\x03\x40\x00" + b"\x00" * 200):
                        return
                self._wait_hangup(s, conn)
                return
            elif verb == "MAIL":
                mail_from, rcpts = cmd, []
                # tern keeps a connection open between messages: a mode set
                # meanwhile applies from the next transaction on it too.
                with self.lock:
                    mode = self.mode
                if mode == "drip_mail":
                    if not self._drip(s, conn, self._slow_reply("250 2.1.0 sender ok")):
                        return
                elif mode == "surplus_after_mail":
                    send(b"250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n")
                elif mode == "pipelined_shift":
                    send(b"250 2.1.0 sender ok\r\n250 2.1.0 sender ok again\r\n")
                elif mode == "garbage_mail":
                    send(b"\x00\xffHTTP/1.1 400 Bad Request\r\n")
                else:
                    send(b"250 2.1.0 sender ok\r\n")
            elif verb == "RCPT":
                rcpts.append(cmd)
                if mode == "rcpt_354":
                    send(b"354 go ahead\r\n")
                else:
                    send(b"250 2.1.5 recipient ok\r\n")
            elif verb == "DATA":
                if mode == "data_250":
                    send(b"250 2.0.0 OK\r\n")
                    continue
                if mode == "drip_data":
                    if not self._drip(s, conn, self._slow_reply("354 go ahead")):
                        return
                else:
                    send(b"354 go ahead\r\n")
                if mode == "slow_reader":
                    self._read_slowly(s, conn)
                    return
                data = bytearray()  # (bytes += would copy the whole message per line)
                while not (data == b".\r\n" or data.endswith(b"\r\n.\r\n")):
                    if mode == "close_mid_data" and len(data) >= 100:
                        conn.data_bytes = len(data)
                        return  # hang up without a reply
                    more = f.readline(65536)
                    if not more:
                        conn.data_bytes = len(data)
                        return
                    data += more
                conn.data_bytes = len(data)
                conn.got_message = True
                if mode == "surplus_after_final":
                    send(b"250 2.0.0 queued\r\n250 2.0.0 queued twice\r\n")
                    continue
                # In clear, the TLS modes behave (tern's retry without STARTTLS).
                if mode in ("accept", "tls_stall", "tls_drip", "idle_421"):
                    with self.lock:
                        self.messages.append((mail_from, list(rcpts), bytes(data)))
                send(b"250 2.0.0 queued\r\n")
                if mode == "idle_421" and not select.select([s], [], [], 0.3)[0]:
                    send(b"421 4.4.2 idle connections are closed here\r\n")
                    return
            elif verb == "RSET":
                send(b"250 2.0.0 reset\r\n")
            elif verb == "QUIT":
                send(b"221 2.0.0 bye\r\n")
                return
            else:
                send(b"502 5.5.2 not here\r\n")


class SilentDNS:
    """A DNS "server" on a loopback UDP port that reads every query and answers none
    (a resolver that times out), counting them; heal(port) makes it relay queries
    to a real server (the test unbound) and pass the answers back."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.queries = 0
        self.upstream = None
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def forward(self):
        return f"127.0.0.1@{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join(5)
        self.sock.close()

    def heal(self, upstream_port):
        with self.lock:
            self.upstream = upstream_port

    def _run(self):
        while self.running:
            try:
                q, addr = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            with self.lock:
                self.queries += 1
                up = self.upstream
            if up is None:
                continue  # drop: the resolver never answers
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(2)
                try:
                    u.sendto(q, ("127.0.0.1", up))
                    a, _ = u.recvfrom(65536)
                    self.sock.sendto(a, addr)
                except OSError:
                    pass


# --------------------------------------------------------------------------
# A next hop that greets when told, so that jobs wait behind its one connection
# (test_remote_pipeline.py, test_remote_readback.py).

PIPE_IP = "127.0.0.53"
DOMAIN = "pipe.test"


class PipeMX(ThreadedPeer):
    """A next hop offering PIPELINING and 8BITMIME. dot_reply: {n: reply} for the nth
    message of the peer's life (1-based) instead of 250; drop_at: the nth message's end
    of data is met with a reset instead of a reply (once); refuse_rcpt: the RCPT of
    every MAIL FROM whose address contains it gets 550 (and its DATA 554, as no
    recipient was taken). self.tx: per message taken (data, pipelined: the next command
    was in before this one's end of data was answered, reply)."""

    def __init__(self, ip, dot_reply=None, drop_at=None, tls=None, refuse_rcpt=None):
        super().__init__(ip)
        self.refuse_rcpt = refuse_rcpt
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

        refusing = False  # this transaction's sender is refuse_rcpt's
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
                elif verb == "MAIL":
                    refusing = bool(self.refuse_rcpt) and self.refuse_rcpt in cmd
                    s.sendall(b"250 2.1.0 ok\r\n")
                elif verb == "RCPT":
                    s.sendall(b"550 5.1.1 no such user here\r\n" if refusing
                              else b"250 2.1.5 ok\r\n")
                elif verb == "DATA" and refusing:
                    s.sendall(b"554 5.5.1 no valid recipients\r\n")
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


def start_behind(remote_tern, fake, extra=None, **delivery):
    """tern with one connection per destination to fake, and the debug log queue_behind
    reads; extra: more configuration."""
    extra = deep_merge(fake.route(), extra or {})
    extra["log_level"] = "debug"
    return remote_tern(extra=extra, max_per_destination=1, **delivery)


def message(tag):
    return (f"From: <{SENDER}>\r\nTo: <a@{DOMAIN}>\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.org>\r\n\r\n{tag} body\r\n.{tag} dotted\r\n"
            ).encode()


def submit_behind(t, first, rest, first_from=None):
    """Submits first and waits until the one connection has taken it, then each message of
    rest, waiting until it is in the destination's queue before the next. Returns their
    queue ids, first's first: the order they go out. Each waits for its own log line: the
    scheduler's delivery threads may hand a destination its messages in another order than
    they were submitted, and they log after the queue's lock."""
    kw = {"mail_from": first_from} if first_from else {}
    qids = [submit(t, [f"a@{DOMAIN}"], first, **kw)]
    t.wait_log(rf"event=remote_state id={qids[0]} ", timeout=DEADLINE)
    for m in rest:
        qids.append(submit(t, [f"a@{DOMAIN}"], m))
        t.wait_log(rf"event=remote_queued id={qids[-1]} ", timeout=DEADLINE)
    return qids


def queue_behind(t, fake, msgs):
    """Submits msgs (a dict tag -> message) behind one connection held at its greeting
    (submit_behind), then lets the peer greet. Returns (queue id, tag) in the order they go
    out on the wire."""
    tags = list(msgs)
    qids = submit_behind(t, msgs[tags[0]], [msgs[tag] for tag in tags[1:]])
    fake.go.set()
    return list(zip(qids, tags))


def wait_all_taken(t, fake, order):
    """Waits until every message of order (queue_behind's) is delivered and the queue is
    empty; returns what fake took, one entry per message."""
    for q, _ in order:
        t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
    wait_queue_empty(t)
    taken = fake.taken()
    assert len(taken) == len(order), taken
    return taken


def tx_of(taken, m):
    subject = m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
    got = [x for x in taken if b"Subject: " + subject + b"\r\n" in x["data"]]
    return got


def assert_exact(tx, m):
    assert tx["data"].startswith(b"Received: ")
    assert tx["data"].endswith(b"\r\n" + dot_stuff(m) + b".\r\n") or \
        tx["data"].endswith(dot_stuff(m) + b".\r\n"), tx["data"][-200:]
