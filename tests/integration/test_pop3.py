"""POP3 (src/pop3/): RFC 1939 with CAPA and response codes (RFC 2449), STLS (RFC 2595),
implicit TLS, SASL AUTH (RFC 5034), driven by Python's poplib, curl and raw sockets. The
contracts: UIDLs are stable across sessions and restarts, DELE takes effect at QUIT only
(a dropped connection deletes nothing), a mailbox has one POP3 session at a time, messages
come with CRLF and dot-stuffing, and bad input gets a clear -ERR."""
import base64
import poplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import Raw, free_port, make_message, make_tmpdir

PASSWORD = "secret-pw"  # conftest's Tern.user_add default
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def certs():
    d = make_tmpdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True)
    return {"cert_file": str(cert), "key_file": str(key)}


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed test certificate
    return ctx


def start_pop3(tern_factory, certs=None, overrides=None):
    """tern with a pop3 listener (and, with certs, STLS and an implicit-TLS pop3s one)."""
    pop3_port = free_port()
    listen = {"pop3": {"address": f"127.0.0.1:{pop3_port}", "profile": "pop3"}}
    cfg = {"listen": listen, "limits": {"max_message_size": Raw("8m")}}
    pop3s_port = None
    if certs:
        pop3s_port = free_port()
        listen["pop3s"] = {"address": f"127.0.0.1:{pop3s_port}", "profile": "pop3",
                           "tls": "implicit"}
        cfg["tls"] = certs
    if overrides:
        cfg.update(overrides)
    t = tern_factory(cfg)
    t.pop3_port = pop3_port
    t.pop3s_port = pop3s_port
    return t


def deliver(tern, subject, body="hello\r\n", to=ALICE):
    with tern.client() as c:
        c.send_message("sender@example.org", [to], make_message(subject, body=body, to=to))
    tern.wait_mail_with(to, subject)


def login(tern, user=ALICE, password=PASSWORD):
    p = poplib.POP3("127.0.0.1", tern.pop3_port, timeout=15)
    p.user(user)
    p.pass_(password)
    return p


def login_when_free(tern, deadline=10.0):
    """Logs in, retrying while the previous session's lock is still being released (the
    release runs on the server's thread pool after the connection is gone)."""
    end = time.monotonic() + deadline
    while True:
        try:
            return login(tern)
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0] or time.monotonic() > end:
                raise
            time.sleep(0.05)


def cur_files(tern, address=ALICE):
    d = tern.maildir(address) / "cur"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def base(name):
    return name.split(":", 1)[0]


class Raw3:
    """A raw POP3 client: exact lines out, exact lines back."""

    def __init__(self, port, tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        if tls:
            self.sock = tls_context().wrap_socket(self.sock)
        self.buf = b""
        self.greeting = self.line()

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln.decode("utf-8", "replace")

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self):
        out = []
        while True:
            ln = self.line()
            if ln == ".":
                return out
            out.append(ln)

    def closed(self, wait=5.0):
        self.sock.settimeout(wait)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------


def test_greeting_and_capa_without_tls(tern_factory):
    t = start_pop3(tern_factory)
    p = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    assert p.getwelcome().startswith(b"+OK")
    assert b"<" not in p.getwelcome(), "no APOP timestamp: APOP is not offered"
    caps = p.capa()
    for c in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER"):
        assert c in caps, caps
    assert "PLAIN" in caps["SASL"]
    assert "STLS" not in caps, "no STLS without a certificate"
    with pytest.raises(poplib.error_proto, match=r"-ERR STLS is not offered here"):
        p._shortcmd("STLS")
    p.quit()


def test_every_command(tern_factory):
    t = start_pop3(tern_factory, overrides={"limits": {"max_errors": 20,
                                                       "max_message_size": Raw("8m")}})
    deliver(t, "first")
    deliver(t, "second", body="line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n")
    deliver(t, "third")
    files = {p.name: p.read_bytes() for p in t.mail_files(ALICE)}
    assert len(files) == 3

    p = login(t)
    # new/ -> cur/ with ":2," as Dovecot does when it opens a mailbox
    assert t.mail_files(ALICE) == []
    assert sorted(base(n) for n in cur_files(t)) == sorted(files)
    count, size = p.stat()
    assert count == 3 and size == sum(len(d) for d in files.values())

    resp, listing, _ = p.list()
    assert resp.startswith(b"+OK 3 messages")
    sizes = {int(n): int(s) for n, s in (ln.split() for ln in listing)}
    resp, uidls, _ = p.uidl()
    uidl = {int(n): u.decode() for n, u in (ln.split() for ln in uidls)}
    # UIDL is the Maildir base name: what Dovecot reports with pop3_uidl_format = %f
    assert set(uidl.values()) == set(files)
    for n in (1, 2, 3):
        assert sizes[n] == len(files[uidl[n]])
        assert p.uidl(n) == f"+OK {n} {uidl[n]}".encode()
        assert p.list(n) == f"+OK {n} {sizes[n]}".encode()
        resp, lines, octets = p.retr(n)
        assert resp == f"+OK {sizes[n]} octets".encode()
        # poplib undoes the dot-stuffing; the lines are the file's, CRLF-separated
        assert b"\r\n".join(lines) + b"\r\n" == files[uidl[n]]
    second = [n for n in uidl if b"second" in files[uidl[n]]][0]
    resp, lines, _ = p.retr(second)
    assert b".starts with a dot" in lines and b"..two dots" in lines and b"." in lines

    resp, top, _ = p.top(1, 0)
    assert top[-1] == b"" and any(ln.startswith(b"Subject:") for ln in top)
    assert not any(ln == b"hello" for ln in top)
    resp, top1, _ = p.top(1, 1)
    assert top1[-1] == b"hello" and top1[:-1] == top

    assert p.noop() == b"+OK"
    assert p.dele(3).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match=r"-ERR Message 3 is deleted"):
        p.retr(3)
    with pytest.raises(poplib.error_proto, match=r"-ERR Message 3 is deleted"):
        p.dele(3)
    assert p.stat() == (2, size - sizes[3])
    assert p.rset().startswith(b"+OK")
    assert p.stat() == (3, size)
    for bad, why in (("RETR 4", r"no message 4"), ("RETR 0", r"invalid message number"),
                     ("TOP 1", r"number of lines expected"), ("LIST x", r"invalid message"),
                     ("XTND", r"Unknown command"), ("USER bob", r"Already logged in"),
                     ("STLS", r"only allowed before")):
        with pytest.raises(poplib.error_proto, match=r"-ERR.*" + why):
            p._shortcmd(bad)
    assert p.quit().startswith(b"+OK")
    # nothing was deleted; retrieved messages carry the S flag now
    names = cur_files(t)
    assert len(names) == 3 and all(n.endswith(":2,S") for n in names), names


def test_commands_before_login_and_apop(tern_factory):
    t = start_pop3(tern_factory, overrides={"limits": {"max_errors": 20}})
    c = Raw3(t.pop3_port)
    assert c.cmd("STAT").startswith("-ERR Not logged in")
    assert c.cmd("PASS x").startswith("-ERR Give USER first")
    assert c.cmd("APOP alice c4c9334bac560ecc979e58001b3e22fb").startswith("-ERR APOP is not offered")
    assert c.cmd("USER").startswith("-ERR USER: user name expected")
    assert c.cmd("NOOP").startswith("-ERR Not logged in")
    assert c.cmd("QUIT").startswith("+OK")
    assert c.closed()


def test_wrong_password_is_refused_with_auth_code(tern_factory):
    t = start_pop3(tern_factory)
    p = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    p.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        p.pass_("wrong")
    p.user(ALICE)
    assert p.pass_(PASSWORD).startswith(b"+OK Logged in")
    p.quit()
    t.wait_log(r"event=pop3_auth .*user=alice@example.test result=fail reason=\"wrong password\"")
    assert "wrong" not in "".join(t.log_lines("event=pop3_auth")).replace("wrong password", "")


def test_too_many_failures_close_the_connection(tern_factory):
    t = start_pop3(tern_factory)
    c = Raw3(t.pop3_port)
    for _ in range(3):
        assert c.cmd(f"USER {ALICE}") == "+OK"
        assert c.cmd("PASS nope").startswith("-ERR [AUTH]")
    assert c.closed()


def test_dele_then_quit_removes_the_file(tern_factory):
    t = start_pop3(tern_factory)
    deliver(t, "keep me")
    deliver(t, "delete me")
    p = login(t)
    resp, uidls, _ = p.uidl()
    by_subject = {}
    for ln in uidls:
        n, u = ln.split()
        data = b"\r\n".join(p.retr(int(n))[1])
        by_subject[b"delete me" in data] = (int(n), u.decode())
    p.dele(by_subject[True][0])
    assert any(base(n) == by_subject[True][1] for n in cur_files(t)), "not before QUIT"
    assert p.quit() == b"+OK Logging out: 1 messages deleted."
    left = [base(n) for n in cur_files(t)]
    assert left == [by_subject[False][1]]
    t.wait_log(r"event=pop3_disconnect .*reason=quit .*dele=1")


def test_dropped_connection_deletes_nothing(tern_factory):
    t = start_pop3(tern_factory)
    deliver(t, "survivor")
    p = login(t)
    assert p.dele(1).startswith(b"+OK")
    p.close()  # gone without QUIT
    t.wait_log(r"event=pop3_disconnect .*reason=peer-closed state=transaction")
    p = login_when_free(t)
    assert p.stat()[0] == 1
    p.quit()
    assert len(cur_files(t)) == 1


def test_uidl_stable_across_sessions_and_restart(tern_factory):
    t = start_pop3(tern_factory)
    deliver(t, "one")
    deliver(t, "two")
    p = login(t)
    first = p.uidl()[1]
    p.quit()
    p = login_when_free(t)
    assert p.uidl()[1] == first
    p.quit()
    assert t.stop() == 0
    t.start()
    deliver(t, "three")
    p = login_when_free(t)
    after = p.uidl()[1]
    p.quit()
    assert after[:2] == first and len(after) == 3
    assert len({ln.split()[1] for ln in after}) == 3


def test_second_session_for_the_same_mailbox_is_refused(tern_factory):
    t = start_pop3(tern_factory)
    deliver(t, "locked")
    a = login(t)
    b = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    b.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        b.pass_(PASSWORD)
    # the lock is Dovecot's pop3_lock_session file, holding "PID:HOSTNAME"
    lock = t.maildir(ALICE) / "dovecot-pop3-session.lock"
    pid, host = lock.read_text().split(":", 1)
    assert int(pid) == t.pid and host == socket.gethostname()
    # another user is not affected
    bob = login(t, user="bob@example.test")
    bob.quit()
    a.quit()
    c = login_when_free(t)
    assert c.stat()[0] == 1
    c.quit()


def test_bad_input_gets_clear_errors(tern_factory):
    t = start_pop3(tern_factory, overrides={"limits": {"max_errors": 4,
                                                       "max_message_size": Raw("8m")}})
    c = Raw3(t.pop3_port)
    assert c.cmd("HELO x") == "-ERR Unknown command."
    c.sock.sendall(b"NOOP " + b"x" * 20000 + b"\r\n")
    assert c.line().startswith("-ERR Line too long")
    assert c.cmd("USER a\x01b").startswith("-ERR USER: invalid user name")
    assert c.cmd("LIST 1").startswith("-ERR Not logged in")
    assert c.line().startswith("-ERR Too many errors")
    assert c.closed()


def test_large_message_is_streamed_whole(tern_factory):
    t = start_pop3(tern_factory)
    body = "".join(f"{i:07d} " + ("." if i % 3 == 0 else "x") * 90 + "\r\n" for i in range(40000))
    deliver(t, "big one", body=body)
    data = t.mail_files(ALICE)[0].read_bytes()
    assert len(data) > 3_000_000
    p = login(t)
    resp, lines, _ = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == data
    p.quit()


def test_pipelined_commands(tern_factory):
    t = start_pop3(tern_factory)
    deliver(t, "pipe")
    c = Raw3(t.pop3_port)
    c.sock.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nUIDL\r\nRETR 1\r\nNOOP\r\nQUIT\r\n".encode())
    assert c.line() == "+OK"
    assert c.line().startswith("+OK Logged in: 1 messages")
    assert c.line().startswith("+OK 1 ")
    assert c.line() == "+OK"
    assert len(c.multiline()) == 1
    ln = c.line()
    assert ln.startswith("+OK ") and ln.endswith(" octets")
    msg = c.multiline()
    assert any("pipe" in ln for ln in msg)
    assert c.line() == "+OK"
    assert c.line().startswith("+OK Logging out")


def test_sasl_auth_plain_and_login(tern_factory):
    t = start_pop3(tern_factory)
    c = Raw3(t.pop3_port)
    lst = c.cmd("AUTH")
    assert lst == "+OK"
    assert set(c.multiline()) >= {"PLAIN", "LOGIN"}
    bad = base64.b64encode(f"\0{ALICE}\0wrong".encode()).decode()
    assert c.cmd(f"AUTH PLAIN {bad}").startswith("-ERR [AUTH]")
    good = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    assert c.cmd("AUTH PLAIN") == "+ "
    assert c.cmd(good).startswith("+OK Logged in")
    assert c.cmd("QUIT").startswith("+OK")
    c = Raw3(t.pop3_port)
    assert c.cmd("AUTH LOGIN").startswith("+ ")
    assert c.cmd(base64.b64encode(b"bob@example.test").decode()).startswith("+ ")
    assert c.cmd(base64.b64encode(PASSWORD.encode()).decode()).startswith("+OK Logged in")
    c.cmd("QUIT")
    c = Raw3(t.pop3_port)
    assert c.cmd("AUTH PLAIN") == "+ "
    assert c.cmd("*") == "-ERR Authentication cancelled."
    assert c.cmd("AUTH NOPE") == "-ERR Unsupported authentication mechanism."
    assert c.cmd("AUTH PLAIN !!!").startswith("-ERR Invalid SASL response")
    c.cmd("QUIT")


def test_stls(tern_factory, certs):
    t = start_pop3(tern_factory, certs)
    deliver(t, "over stls")
    p = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    assert "STLS" in p.capa()
    p.stls(tls_context())
    assert "STLS" not in p.capa(), "STLS must not be offered again inside TLS"
    p.user(ALICE)
    p.pass_(PASSWORD)
    assert any(b"over stls" in ln for ln in p.retr(1)[1])
    p.quit()
    t.wait_log(r"event=tls sess=p\S+ .*tls=TLSv1\.[23] cipher=")


def test_input_pipelined_after_stls_is_discarded(tern_factory, certs):
    t = start_pop3(tern_factory, certs)
    c = Raw3(t.pop3_port)
    # USER injected in clear after STLS must not survive into the TLS session
    c.sock.sendall(f"USER {ALICE}\r\nSTLS\r\nUSER mallory@example.test\r\n".encode())
    assert c.line() == "+OK"
    assert c.line().startswith("+OK Begin TLS")
    assert c.buf == b""
    c.sock = tls_context().wrap_socket(c.sock)
    assert c.cmd(f"PASS {PASSWORD}").startswith("-ERR Give USER first")
    assert c.cmd("QUIT").startswith("+OK")
    t.wait_log(r"event=stls_injection sess=p\S+ .*discarded=\d+")


def test_pop3_ssl_implicit_tls(tern_factory, certs):
    t = start_pop3(tern_factory, certs)
    deliver(t, "implicit")
    p = poplib.POP3_SSL("127.0.0.1", t.pop3s_port, context=tls_context(), timeout=15)
    assert p.getwelcome().startswith(b"+OK")
    assert "STLS" not in p.capa()
    p.user(ALICE)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    assert any(b"implicit" in ln for ln in p.retr(1)[1])
    p.quit()


def test_implicit_tls_needs_a_certificate(tern_factory):
    t = tern_factory({"listen": {"pop3s": {"address": f"127.0.0.1:{free_port()}",
                                           "profile": "pop3", "tls": "implicit"}}},
                     users=(), start=False)
    r = t.cli("check-config")
    assert r.returncode != 0
    assert 'tls: "implicit" needs a certificate' in r.stderr


def curl(*args):
    return subprocess.run(["curl", "-s", "-S", "--max-time", "20", *args],
                          capture_output=True, timeout=30)


def test_curl_pop3_and_pop3s(tern_factory, certs):
    t = start_pop3(tern_factory, certs)
    deliver(t, "for curl")
    data = t.mail_files(ALICE)[0].read_bytes()
    r = curl("-u", f"{ALICE}:{PASSWORD}", f"pop3://127.0.0.1:{t.pop3_port}/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"1", str(len(data)).encode()]
    r = curl("-u", f"{ALICE}:{PASSWORD}", f"pop3://127.0.0.1:{t.pop3_port}/1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    r = curl("-k", "-u", f"{ALICE}:{PASSWORD}", f"pop3s://127.0.0.1:{t.pop3s_port}/1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    # STLS on the plain port when asked for
    r = curl("-k", "--ssl-reqd", "-u", f"{ALICE}:{PASSWORD}", f"pop3://127.0.0.1:{t.pop3_port}/1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    r = curl("-u", f"{ALICE}:wrong", f"pop3://127.0.0.1:{t.pop3_port}/1")
    assert r.returncode != 0


def test_sigterm_ends_sessions_without_deleting(tern_factory):
    t = start_pop3(tern_factory)
    deliver(t, "shutdown")
    p = login(t)
    p.dele(1)
    assert t.stop() == 0
    assert len(cur_files(t)) == 1
    assert not (t.maildir(ALICE) / "dovecot-pop3-session.lock").exists()


def test_connections_per_address_are_limited_and_given_back(tern_factory):
    # limits.max_connections_per_ip counts POP3 clients too (core/peer.c, shared with
    # SMTP): past it the client hears why and the log says so; once one of its
    # connections ends it gets in again.
    t = start_pop3(tern_factory, overrides={
        "limits": {"max_message_size": Raw("8m"), "max_connections_per_ip": 2}})
    a = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    b = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    with socket.create_connection(("127.0.0.1", t.pop3_port), timeout=15) as s:
        assert s.makefile("rb").readline().startswith(b"-ERR [SYS/TEMP] Too many connections")
    t.wait_log(r"event=pop3_refused client=127\.0\.0\.1 reason=max-connections-per-ip")
    a.quit()
    deadline = time.monotonic() + 10
    while True:  # the count is given back when tern sees the QUIT through
        try:
            c = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
            break
        except poplib.error_proto:
            assert time.monotonic() < deadline, "no room again after a QUIT"
            time.sleep(0.05)
    assert c.getwelcome().startswith(b"+OK")
    c.quit()
    b.quit()
