"""
test_milter.py — tern's milter client (src/policy/milter*.c) against milters on loopback.

`tern milter test --milter SPEC < message` runs the same client a session drives (one
event base, connect/helo/mail/rcpt/data/header/eoh/body/eom) and prints each step's verdict
and the header changes. Two kinds of milter:

  - FakeMilter: this file's own milter, written on raw sockets from the protocol
    (libmilter's mfdef.h: 4-byte length, command byte, data), scripted per test: it
    answers each command as told, records every packet tern sent, and can misbehave
    (garbage, a huge length, silence) on purpose. It exercises every action.
  - a real rspamd from Debian, started by the test with a minimal config under a temp dir
    (its proxy worker in milter mode on a free port, self-scanning, no redis), stopped by PID.

Never: talks to anything outside 127.0.0.0/8, waits without a bound, kills a process it
did not start.
"""

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import CLI_TIMEOUT, free_port, tern_bin

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: hello\r\n"
    b"  folded\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"this is a test.\r\n"
)

OFFERED_PROTOCOL_MIN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x400


def packet(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def z(*strings):
    return b"".join(s.encode() + b"\0" for s in strings)


class FakeMilter:
    """A scripted milter. replies maps a command byte (b"C", b"H", b"M", b"R", b"T",
    b"L", b"N", b"B", b"E") to a list of raw packets to send in answer (default: one
    CONTINUE); a callable gets the packet data and returns the list. Records (cmd,
    data) of everything received."""

    def __init__(self, replies=None, actions=0x31, protocol=0, optneg=None, unix_path=None):
        self.replies = replies or {}
        self.actions = actions
        self.protocol = protocol
        self.optneg = optneg
        self.received = []
        self.offered = None
        self.done = threading.Event()
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.spec = "unix:" + unix_path
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.spec = "inet:127.0.0.1:%d" % self.sock.getsockname()[1]
        self.sock.listen(4)
        self.sock.settimeout(CLI_TIMEOUT)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv_exact(self, c, n):
        buf = b""
        while len(buf) < n:
            chunk = c.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _run(self):
        try:
            c, _ = self.sock.accept()
        except OSError:
            self.done.set()
            return
        c.settimeout(CLI_TIMEOUT)
        try:
            while True:
                (n,) = struct.unpack(">I", self._recv_exact(c, 4))
                body = self._recv_exact(c, n)
                cmd, data = body[:1], body[1:]
                self.received.append((cmd, data))
                if cmd == b"O":
                    self.offered = struct.unpack(">III", data[:12])
                    c.sendall(self.optneg if self.optneg is not None else packet(
                        b"O", struct.pack(">III", 6, self.actions, self.protocol)))
                    continue
                if cmd in (b"D", b"A"):
                    continue
                if cmd in (b"Q", b"K"):
                    break
                if self.protocol & self._nr_bit(cmd):
                    continue
                r = self.replies.get(cmd, [packet(b"c")])
                if callable(r):
                    r = r(data)
                for p in r:
                    if p is None:  # go silent: read (and drop) until the MTA gives up
                        while c.recv(65536):
                            pass
                        return
                    c.sendall(p)
        except (EOFError, OSError, socket.timeout):
            pass
        finally:
            c.close()
            self.done.set()

    @staticmethod
    def _nr_bit(cmd):
        return {b"C": 0x1000, b"H": 0x2000, b"M": 0x4000, b"R": 0x8000, b"T": 0x10000,
                b"N": 0x40000, b"B": 0x80000, b"L": 0x80}.get(cmd, 0)

    def cmds(self):
        return b"".join(c for c, _ in self.received)

    def close(self):
        self.sock.close()
        self.done.wait(CLI_TIMEOUT)


@pytest.fixture
def milters():
    made = []
    yield lambda **kw: made.append(FakeMilter(**kw)) or made[-1]
    for m in made:
        m.close()


def run(spec, message=MESSAGE, *args):
    p = subprocess.run([tern_bin(), "milter", "test", "--milter", spec, *args],
                       input=message, capture_output=True, timeout=CLI_TIMEOUT * 2)
    return p


def steps(out):
    """{step: [line, ...]} and the mod lines, from tern milter test's stdout."""
    lines = out.decode().splitlines()
    return [l for l in lines if l.startswith("step=")], [l for l in lines if l.startswith("mod=")]


def test_all_continue_and_wire_format(milters):
    m = milters()
    p = run(m.spec, MESSAGE, "--from", "sender@example.org", "--rcpt", "a@example.com",
            "--rcpt", "b@example.com", "--helo", "client.test", "--client-ip", "192.0.2.7")
    assert p.returncode == 0, p.stderr
    st, mods = steps(p.stdout)
    assert st[-1] == "step=eom action=continue"
    assert all(l.endswith("action=continue") for l in st)
    assert mods == []
    m.close()
    version, actions, protocol = m.offered
    assert version == 6
    assert actions & 0x01 and actions & 0x10  # ADDHDRS, CHGHDRS offered
    assert protocol & OFFERED_PROTOCOL_MIN == OFFERED_PROTOCOL_MIN
    data = {c: [d for cc, d in m.received if cc == c] for c, _ in m.received}
    # CONNECT: hostname, family '4', port (16 bits), address
    host, rest = data[b"C"][0].split(b"\0", 1)
    assert rest[:1] == b"4" and rest[3:] == b"192.0.2.7\0"
    assert data[b"H"] == [b"client.test\0"]
    assert data[b"M"] == [b"<sender@example.org>\0"]
    assert data[b"R"] == [b"<a@example.com>\0", b"<b@example.com>\0"]
    # headers: no leading space, folds as LF
    assert data[b"L"] == [b"From\0Alice <alice@example.org>\0", b"To\0bob@example.com\0",
                          b"Subject\0hello\n  folded\0"]
    assert b"".join(data[b"B"]) == b"Hello Bob,\r\nthis is a test.\r\n"
    # order, and QUIT at the end; macros (D) come before their command
    order = m.cmds().replace(b"D", b"")
    assert order == b"OCHMRRTLLLNBEQ"
    macros = data[b"D"]
    assert any(d.startswith(b"M") and b"{mail_addr}\0sender@example.org\0" in d for d in macros)


@pytest.mark.parametrize("protocol,lines", [(0, 200), (0x80000, 1500)])
def test_body_is_chunked(milters, protocol, lines):
    # with NR_BODY (0x80000) no chunk is answered: 1.5 MB goes out without a pause
    m = milters(protocol=protocol)
    body = (b"x" * 998 + b"\r\n") * lines
    p = run(m.spec, b"Subject: big\r\n\r\n" + body)
    assert p.returncode == 0, p.stderr
    m.close()
    chunks = [d for c, d in m.received if c == b"B"]
    assert len(chunks) == -(-len(body) // 65535) and all(len(c) <= 65535 for c in chunks)
    assert b"".join(chunks) == body


def test_skip_stops_the_body(milters):
    m = milters(protocol=0x400, replies={b"B": [packet(b"s")]})
    big = b"Subject: big\r\n\r\n" + b"y" * 200000
    p = run(m.spec, big)
    assert p.returncode == 0, p.stderr
    st, _ = steps(p.stdout)
    assert st[-1] == "step=eom action=continue"
    m.close()
    assert m.cmds().replace(b"D", b"").count(b"B") == 1


def test_steps_the_milter_declines_and_no_reply_steps(milters):
    # NOHELO (0x2) and NR_HDR (0x80): no HELO packet, headers unanswered
    m = milters(protocol=0x2 | 0x80)
    p = run(m.spec)
    assert p.returncode == 0, p.stderr
    st, _ = steps(p.stdout)
    assert st[-1] == "step=eom action=continue"
    m.close()
    assert b"H" not in m.cmds()
    assert m.cmds().count(b"L") == 3


def test_eom_header_changes_and_quarantine(milters):
    eom = [
        packet(b"p"),  # progress first
        packet(b"h", z("X-Spam", "Yes")),
        packet(b"i", struct.pack(">I", 0) + z("Authentication-Results", "mx.test;\n\tspf=pass")),
        packet(b"m", struct.pack(">I", 1) + z("Subject", "[SPAM] hello")),
        packet(b"m", struct.pack(">I", 2) + z("Received", "")),
        packet(b"q", z("looks bad")),
        packet(b"a"),
    ]
    m = milters(replies={b"E": eom})
    p = run(m.spec)
    assert p.returncode == 0, p.stderr
    st, mods = steps(p.stdout)
    assert st[-1] == "step=eom action=accept"
    assert mods == [
        'mod=add index=0 name="X-Spam" value="Yes"',
        'mod=insert index=0 name="Authentication-Results" value="mx.test;\\r\\n\\tspf=pass"',
        'mod=change index=1 name="Subject" value="[SPAM] hello"',
        'mod=delete index=2 name="Received" value=""',
    ]
    assert 'quarantine reason="looks bad"' in p.stdout.decode()


@pytest.mark.parametrize("cmd,reply,step,expect", [
    (b"C", packet(b"a"), "connect", "action=accept"),
    (b"H", packet(b"r"), "helo", 'action=reject reply="550 5.7.1 '),
    (b"M", packet(b"r"), "mail", 'action=reject reply="550 5.7.1 '),
    (b"M", packet(b"t"), "mail", 'action=tempfail reply="451 4.7.1 '),
    (b"L", packet(b"d"), "header", "action=discard"),
    (b"E", packet(b"d"), "eom", "action=discard"),
    (b"E", packet(b"r"), "eom", 'action=reject reply="550 5.7.1 '),
    (b"E", packet(b"y", z("554 5.7.1 Spam message rejected")), "eom",
     'action=reject reply="554 5.7.1 Spam message rejected"'),
    (b"E", packet(b"y", z("550 go away")), "eom", 'action=reject reply="550 5.7.1 go away"'),
    (b"E", packet(b"y", z("421 4.3.2 busy\r\n421 later")), "eom",
     'action=tempfail reply="421 4.3.2 busy"'),
    (b"B", packet(b"y", z("452 4.3.1 full")), "body", 'action=tempfail reply="452 4.3.1 full"'),
])
def test_each_verdict(milters, cmd, reply, step, expect):
    m = milters(replies={cmd: [reply]})
    p = run(m.spec)
    assert p.returncode == 0, p.stderr
    st, _ = steps(p.stdout)
    assert st[-1].startswith("step=%s %s" % (step, expect)), st
    assert "failed" not in st[-1]


def test_rcpt_reject_refuses_only_that_recipient(milters):
    def rcpt(data):
        return [packet(b"r")] if data.startswith(b"<bad@") else [packet(b"c")]

    m = milters(replies={b"R": rcpt})
    p = run(m.spec, MESSAGE, "--rcpt", "bad@example.com", "--rcpt", "good@example.com")
    assert p.returncode == 0, p.stderr
    st, _ = steps(p.stdout)
    rc = [l for l in st if l.startswith("step=rcpt")]
    assert rc[0].startswith("step=rcpt action=reject") and rc[1] == "step=rcpt action=continue"
    assert st[-1] == "step=eom action=continue"


@pytest.mark.parametrize("default,expect", [
    ("tempfail", 'action=tempfail failed=1 reply="451 4.7.1 '),
    ("reject", 'action=reject failed=1 reply="550 5.7.1 '),
    ("accept", "action=accept failed=1"),
])
def test_default_action_when_down(default, expect):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    p = run("inet:127.0.0.1:%d" % port, MESSAGE, "--default-action", default)
    assert p.returncode == 0, p.stderr
    st, _ = steps(p.stdout)
    assert st == ["step=connect " + expect] or st[0].startswith("step=connect " + expect), st
    assert b"event=milter_fail" in p.stderr


@pytest.mark.parametrize("name,kw", [
    ("garbage_length", dict(replies={b"M": [b"\xff\xff\xff\xff" + b"x" * 16]})),
    ("zero_length", dict(replies={b"M": [b"\0\0\0\0"]})),
    ("unknown_reply", dict(replies={b"M": [packet(b"Z")]})),
    ("header_mod_before_eom", dict(replies={b"M": [packet(b"h", z("X", "y"))]})),
    ("header_injection", dict(replies={b"E": [packet(b"h", z("X-A", "1\r\nBcc: x@y")),
                                               packet(b"a")]})),
    ("bad_header_name", dict(replies={b"E": [packet(b"h", z("X A", "1")), packet(b"a")]})),
    ("unoffered_action", dict(replies={b"E": [packet(b"+", z("<x@y>")), packet(b"a")]})),
    ("replycode_2xx", dict(replies={b"M": [packet(b"y", z("250 ok"))]})),
    ("replycode_no_nul", dict(replies={b"M": [packet(b"y", b"550 5.7.1 no nul")]})),
    ("skip_not_negotiated", dict(replies={b"B": [packet(b"s")]})),
    ("bad_version", dict(optneg=packet(b"O", struct.pack(">III", 1, 0, 0)))),
    ("short_optneg", dict(optneg=packet(b"O", b"\0\0\0\6"))),
    ("closes", dict(replies={b"M": []}, optneg=None)),
    ("shutdown", dict(replies={b"M": [packet(b"4")]})),
])
def test_nonsense_gets_the_default_action(milters, name, kw):
    if name == "closes":
        # answer nothing to MAIL and close: the reply loop sees EOF
        kw = dict(replies={b"M": lambda d: (_ for _ in ()).throw(EOFError())})
    m = milters(**kw)
    p = run(m.spec, MESSAGE, "--default-action", "reject")
    assert p.returncode == 0, p.stderr
    st, mods = steps(p.stdout)
    assert "failed=1" in st[-1] and "action=reject" in st[-1], (name, st)
    assert mods == []
    assert b"event=milter_fail" in p.stderr


def test_silent_milter_times_out(milters):
    m = milters(replies={b"E": [None]})
    p = run(m.spec, MESSAGE, "--timeout", "500")
    assert p.returncode == 0, p.stderr
    st, _ = steps(p.stdout)
    assert st[-1].startswith("step=eom action=tempfail failed=1")
    assert b"reason=timeout" in p.stderr


def test_unix_socket(milters, tmp_path):
    m = milters(unix_path=str(tmp_path / "m.sock"), replies={b"E": [packet(b"h", z("X-U", "1")),
                                                                      packet(b"c")]})
    p = run(m.spec)
    assert p.returncode == 0, p.stderr
    _, mods = steps(p.stdout)
    assert mods == ['mod=add index=0 name="X-U" value="1"']


def test_bad_spec_is_a_usage_error():
    for spec in ("127.0.0.1:1", "inet:127.0.0.1", "inet:mail.example:25", "unix:rel/path"):
        p = run(spec)
        assert p.returncode == 2, spec


# --------------------------------------------------------------------------
# A real rspamd.

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def rspamd():
    if not os.path.exists(RSPAMD) or not os.path.exists("/etc/rspamd/rspamd.conf"):
        pytest.fail("rspamd is not installed (scripts/install-deps installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="tern-rspamd-"))
    port = free_port()
    conf = tmp / "conf"
    for d in ("conf/local.d", "conf/override.d", "db", "run", "log"):
        (tmp / d).mkdir(parents=True)
    # Only the proxy worker, in milter mode, scanning by itself; the normal, controller
    # and fuzzy workers stay off; DNS goes to a closed loopback port (no network here).
    (conf / "override.d" / "worker-proxy.inc").write_text(
        'bind_socket = "127.0.0.1:%d";\nmilter = yes;\ntimeout = 60s;\n'
        'upstream "local" { default = yes; self_scan = yes; }\ncount = 1;\n'
        'spam_header = "X-Spam";\nreject_message = "Spam message rejected";\n' % port)
    (conf / "override.d" / "worker-normal.inc").write_text("enabled = false;\n")
    (conf / "override.d" / "worker-controller.inc").write_text("enabled = false;\n")
    (conf / "local.d" / "options.inc").write_text(
        'dns { nameserver = ["127.0.0.1:%d"]; timeout = 1s; retransmits = 1; }\n'
        "enable_test_patterns = true;\n" % free_port())
    (conf / "local.d" / "milter_headers.conf").write_text(
        'use = ["x-spamd-result", "x-spam-status", "authentication-results"];\n'
        "skip_local = false;\nskip_authenticated = false;\n")
    (conf / "local.d" / "logging.inc").write_text(
        'type = "file";\nfilename = "%s";\nlevel = "info";\n' % (tmp / "log" / "rspamd.log"))
    proc = subprocess.Popen(
        [RSPAMD, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf",
         "--var=LOCAL_CONFDIR=%s" % conf, "--var=DBDIR=%s" % (tmp / "db"),
         "--var=RUNDIR=%s" % (tmp / "run"), "--var=LOGDIR=%s" % (tmp / "log")],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr", "wb"))
    # It compiles its TLD list and Lua modules first: wait (bounded) for the port.
    deadline = time.monotonic() + 180  # a bound: it takes ~30 s on a busy machine
    up = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            up = True
            break
        except OSError:
            time.sleep(0.2)
    if not up:
        proc.kill()
        proc.wait(10)
        log = (tmp / "log" / "rspamd.log")
        pytest.fail("rspamd did not start: %s" % (log.read_text()[-2000:] if log.exists() else ""))
    yield "inet:127.0.0.1:%d" % port
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    shutil.rmtree(tmp, ignore_errors=True)


HAM = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: lunch tomorrow\r\n"
    b"Date: Sun, 06 Dec 2026 03:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\nshall we meet at noon?\r\nAlice\r\n"
)


# rspamd compiles its TLD list at start (CPU-bound, ~30 s on a loaded machine): the tests
# that start one share an xdist group so that two never compile at once (conftest.py).
@pytest.mark.xdist_group("rspamd")
def test_rspamd_adds_its_headers(rspamd):
    p = run(rspamd, HAM, "--from", "alice@example.org", "--rcpt", "bob@example.com",
            "--timeout", "30000", "--queue-id", "0123456789ABCDEF")
    assert p.returncode == 0, p.stderr
    st, mods = steps(p.stdout)
    assert "failed" not in "".join(st), (st, p.stderr)
    assert st[-1] in ("step=eom action=accept", "step=eom action=continue"), st
    names = [re.search(r'name="([^"]*)"', l).group(1) for l in mods]
    assert "X-Spamd-Result" in names and "X-Spam-Status" in names, mods
    assert "Authentication-Results" in names, mods
    status = [l for l in mods if 'name="X-Spam-Status"' in l][0]
    assert 'value="No, score=' in status


@pytest.mark.xdist_group("rspamd")
def test_rspamd_rejects_gtube(rspamd):
    msg = HAM.replace(b"shall we meet at noon?", GTUBE)
    p = run(rspamd, msg, "--from", "alice@example.org", "--rcpt", "bob@example.com",
            "--timeout", "30000")
    assert p.returncode == 0, p.stderr
    st, _ = steps(p.stdout)
    assert st[-1].startswith('step=eom action=reject reply="5'), (st, p.stderr)
    # rspamd names the reason: its GTUBE rule, or the configured reject_message
    assert re.search(r'reply="554 5\.7\.1 (Gtube pattern|Spam message rejected)"', st[-1]), st
    assert "failed" not in st[-1]
