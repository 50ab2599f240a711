"""STARTTLS on the server side (RFC 3207): offered only with a certificate,
clients can upgrade (openssl s_client, smtplib, swaks), the session forgets
everything from before TLS, and commands pipelined after STARTTLS in clear
are discarded (CVE-2011-0411 family, DESIGN §5.4)."""
import os
import select
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import Raw, deep_merge, make_message, make_tmpdir


@pytest.fixture(scope="module")
def certs():
    d = make_tmpdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True)
    return {"tls": {"cert_file": str(cert), "key_file": str(key)}}


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed test certificate
    return ctx


def test_starttls_not_offered_without_certificate(tern):
    with tern.client() as c:
        r = c.ehlo()
        assert "STARTTLS" not in r.text.upper()
        r = c.cmd("STARTTLS")
        assert r.code == 502 and r.enh == "5.5.1", r


def test_smtplib_starttls_delivers_with_esmtps(tern_factory, certs):
    tern = tern_factory(certs)
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=tls_context())
        s.ehlo()
        assert not s.has_extn("starttls"), "STARTTLS must not be offered again inside TLS"
        s.sendmail("a@example.org", ["alice@example.test"], make_message("over tls"))
    (_, data), = tern.wait_mail_with("alice@example.test", "over tls")
    assert b"with ESMTPS id" in data
    tern.wait_log(r"event=tls .*tls=TLSv1\.[23] cipher=")


def test_openssl_s_client_starttls(tern_factory, certs):
    tern = tern_factory(certs)
    # s_client does its own EHLO and STARTTLS; our EHLO then runs inside TLS.
    # stdin stays open until the answer is in (s_client quits on EOF).
    p = subprocess.Popen(["openssl", "s_client", "-starttls", "smtp", "-connect",
                          f"127.0.0.1:{tern.port}", "-quiet", "-no_ign_eof"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = b""
    try:
        p.stdin.write(b"EHLO client.example.org\r\n")
        p.stdin.flush()
        deadline = time.monotonic() + 15
        while b"250 DSN" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
    finally:
        p.stdin.close()
        p.wait(timeout=10)
    assert b"250 DSN" in out, out
    tern.wait_log(r"event=tls .*tls=TLSv1\.3 cipher=")


def starttls(port, pipelined=b""):
    """A raw session upgraded with STARTTLS (pipelined: what rides in clear behind it);
    returns (plain socket, TLS socket, TLS reader)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"EHLO x\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\n" + pipelined)
    assert f.readline().startswith(b"220 2.0.0")
    f.close()
    tls = tls_context().wrap_socket(sock, server_hostname="mx.example.test")
    return sock, tls, tls.makefile("rb")


def tls_cmd(tls, tf, cmd):
    """Sends cmd in TLS; returns the last line of its reply."""
    tls.sendall(cmd + b"\r\n")
    line = tf.readline()
    while line[3:4] == b"-":
        line = tf.readline()
    return line


def test_commands_pipelined_after_starttls_are_discarded(tern_factory, certs):
    tern = tern_factory(certs)
    # The injected MAIL FROM rides in the same packet, in clear: it must not
    # be executed inside the TLS session.
    _, tls, tf = starttls(tern.port, pipelined=b"MAIL FROM:<evil@example.org>\r\n")
    line = tls_cmd(tls, tf, b"EHLO y")
    assert line.startswith(b"250 "), line
    # Had the injected MAIL been kept, this would be a nested MAIL (503).
    tls.sendall(b"MAIL FROM:<good@example.org>\r\n")
    r = tf.readline()
    assert r.startswith(b"250 2.1.0"), r
    tls.sendall(b"QUIT\r\n")
    assert tf.readline().startswith(b"221")
    tls.close()
    tern.wait_log(r"event=starttls_injection .*discarded=\d+")


def test_session_state_resets_after_starttls(tern_factory, certs):
    tern = tern_factory(certs)
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=10) as s:
        s.ehlo()
        s.starttls(context=tls_context())
        # No EHLO after TLS: MAIL must be refused, the old EHLO is forgotten.
        code, _ = s.docmd("MAIL", "FROM:<a@example.org>")
        assert code == 503


def test_starttls_twice_is_refused(tern_factory, certs):
    tern = tern_factory(certs)
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=10) as s:
        s.ehlo()
        s.starttls(context=tls_context())
        s.ehlo()
        code, _ = s.docmd("STARTTLS")
        assert code == 503


def test_bad_key_refuses_to_start(tern_factory, certs, scratch):
    bad = scratch / "bad.pem"
    bad.write_text("not a key\n")
    t = tern_factory({"tls": {"cert_file": certs["tls"]["cert_file"], "key_file": str(bad)}},
                     users=(), start=False)
    p = subprocess.run([t.bin, "serve", "-c", str(t.config_path)], capture_output=True, timeout=30)
    assert p.returncode != 0
    assert b"tls: cannot load" in p.stderr, p.stderr[-400:]


def test_swaks_tls(tern_factory, certs):
    tern = tern_factory(certs)
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{tern.port}", "--tls", "--from",
                        "a@example.org", "--to", "bob@example.test", "--body", "swaks over tls"],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stdout[-800:]
    tern.wait_mail_with("bob@example.test", "swaks over tls")


def test_check_config_requires_both_files(tern_factory, certs):
    t = tern_factory({"tls": {"cert_file": certs["tls"]["cert_file"]}}, users=(), start=False)
    p = t.cli("check-config")
    assert p.returncode != 0 and "cert_file and key_file go together" in p.stderr, p.stderr


# --------------------------------------------------------------------------
# Closing TLS sessions. Each STARTTLS session used to stay open after QUIT
# (CLOSE-WAIT once the client left), counted against max_connections_per_ip
# until a restart and held SIGTERM for the whole shutdown_grace.


def close_wait_sockets(port):
    """Server-side sockets of tern's port in CLOSE-WAIT (the client has gone)."""
    out = subprocess.run(["ss", "-Htn", "state", "close-wait", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def wait_no_close_wait(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    left = close_wait_sockets(port)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = close_wait_sockets(port)
    return left


def smtplib_session(port, i):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        s.starttls(context=tls_context())
        s.ehlo()
        if i % 10 == 0:
            s.sendmail("a@example.org", ["alice@example.test"], make_message(f"tls-close {i}"))
        # the with block sends QUIT and closes without close_notify


def close_notify_session(port):
    """QUIT, then close_notify both ways: tern must answer with its own."""
    sock, tls, tf = starttls(port)
    try:
        tls.sendall(b"QUIT\r\n")
        assert tf.readline().startswith(b"221")
        tf.close()
        plain = tls.unwrap()  # sends ours, returns once tern's close_notify is in
        assert plain.recv(16) == b"", "tern did not end its side of the connection"
        plain.close()
    finally:
        sock.close()


def test_starttls_sessions_are_closed(tern_factory, certs):
    # A per-IP limit well under the number of sessions: one leaked socket per
    # session would reach it long before the end.
    tern = tern_factory(deep_merge(certs, {"limits": {"max_connections_per_ip": 40,
                                                          "shutdown_grace": Raw("30s")}}))
    n = 0
    for i in range(150):
        smtplib_session(tern.port, i)
        n += 1
    for _ in range(20):
        close_notify_session(tern.port)
        n += 1
    for _ in range(15):
        p = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                            f"127.0.0.1:{tern.port}", "-quiet"],
                           input=b"EHLO s-client.example.org\r\nQUIT\r\n",
                           capture_output=True, timeout=30)
        assert p.returncode == 0 and b"221 2.0.0" in p.stdout, p.stdout[-300:]
        n += 1
    for i in range(15):
        p = subprocess.run(["swaks", "--server", f"127.0.0.1:{tern.port}", "--tls", "--from",
                            "a@example.org", "--to", "bob@example.test", "--body",
                            f"swaks tls-close {i}"], capture_output=True, timeout=30)
        assert p.returncode == 0, p.stdout[-800:]
        n += 1
    assert n == 200
    left = wait_no_close_wait(tern.port)
    assert not left, f"{len(left)} sockets left in CLOSE-WAIT:\n" + "\n".join(left[:5])
    assert not tern.log_lines("reason=max-connections-per-ip")
    # The address is still welcome.
    with tern.client() as c:
        assert c.greeting.code == 220, c.greeting
    tern.wait_mail_with("alice@example.test", "tls-close", count=15)
    tern.wait_mail_with("bob@example.test", "swaks tls-close", count=15)
    # SIGTERM finds no session left to wait for: it exits at once, drained,
    # well inside the 30 s grace (the log says so; nothing here is timed).
    tern.signal(signal.SIGTERM)
    rc = tern.proc.wait(25)
    assert rc == 0, tern.log_tail()
    tern.wait_log(r"event=smtp_drained")
    assert "shutdown_grace_expired" not in tern.log(), tern.log_tail()


def test_close_notify_after_quit_gets_ours(tern_factory, certs):
    tern = tern_factory(certs)
    close_notify_session(tern.port)
    assert not wait_no_close_wait(tern.port)


def test_tls_session_cut_by_shutdown_grace_hears_421(tern_factory, certs):
    """SIGTERM with shutdown_grace = 0 while a TLS client is inside DATA: the message is
    not queued, and the client hears so in TLS (421 4.3.2, then close_notify), as a plain
    client does, rather than a bare close it could take for a network fault."""
    tern = tern_factory(deep_merge(certs, {"limits": {"shutdown_grace": Raw("0s")}}))
    _, tls, tf = starttls(tern.port)
    for cmd, code in ((b"EHLO y", b"250 "), (b"MAIL FROM:<a@example.org>", b"250 "),
                      (b"RCPT TO:<alice@example.test>", b"250 "), (b"DATA", b"354 ")):
        line = tls_cmd(tls, tf, cmd)
        assert line.startswith(code), (cmd, line)
    tls.sendall(b"Subject: cut short\r\n\r\nhalf a message\r\n")
    tern.signal(signal.SIGTERM)
    assert tern.proc.wait(30) == 0, tern.log_tail(40)
    assert tf.readline().startswith(b"421 4.3.2 "), tern.log_tail(40)
    assert tf.read() == b""  # close_notify: a clean end of the TLS stream
    tls.close()
    assert tern.log_lines("event=disconnect", "reason=shutdown", "message=not-queued"), \
        tern.log_tail()
