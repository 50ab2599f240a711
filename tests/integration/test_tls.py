"""TLS on tern's listeners (src/tls/): STARTTLS and implicit TLS (RFC 8314) with
TLS 1.2 and 1.3 and TLS 1.1 refused, the certificate chosen by SNI, certificates
reloaded on SIGHUP without dropping sessions, the embedded default's self-signed
certificate and its submission listeners on 2587/2465, Python's SMTP_SSL, and the
tls=/cipher= words in the log lines of inbound and outbound connections."""
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import time

import pytest

from conftest import (IS_ROOT, Client, Raw, deep_merge, expect, free_port, make_message,
                      make_tmpdir, tern_bin)

TLS_LINE = re.compile(r"event=tls sess=\S+ client=127\.0\.0\.1 tls=(TLSv1\.[23]) "
                      r"cipher=(TLS_\w+|[A-Z0-9-]+)")


def make_cert(d, name, cn, sans):
    """A self-signed EC certificate with subject CN=cn and these DNS names."""
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={cn}", "-addext",
                    "subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certdir():
    d = make_tmpdir()
    make_cert(d, "default", "mx.example.test", ["mx.example.test"])
    make_cert(d, "other", "mail.other.test", ["mail.other.test", "*.wild.test"])
    yield d
    shutil.rmtree(d, ignore_errors=True)


def certificates(*pairs):
    """tls.certificates as UCL text (conftest's renderer has no list of sections)."""
    return Raw("[ " + " ".join(f'{{ cert_file = "{c}"; key_file = "{k}"; }},'
                               for c, k in pairs) + " ]")


def tls_config(certdir, implicit_port, extra_pairs=()):
    pairs = [(certdir / "default.pem", certdir / "default.key"), *extra_pairs]
    return {
        "tls": {"certificates": certificates(*pairs)},
        "listen": {"smtps": {"address": f"127.0.0.1:{implicit_port}", "profile": "submission",
                             "tls": "implicit"}},
    }


def any_cert():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-made test certificates
    return ctx


def s_client(*args, stdin=b"", timeout=30):
    """openssl s_client; with input, it waits for tern to close (after QUIT's 221)."""
    extra = ["-ign_eof"] if stdin else []
    return subprocess.run(["openssl", "s_client", *extra, *args], input=stdin,
                          capture_output=True, timeout=timeout)


def negotiated(out):
    """(protocol, cipher) s_client reports, or None if no session was made."""
    m = re.search(rb"New, (TLSv1\.[0-3]), Cipher is (\S+)", out)
    return (m.group(1).decode(), m.group(2).decode()) if m else None


def subject_cn(out):
    m = re.search(rb"^subject=.*?CN = ([^,\n]+)", out, re.M)
    return m.group(1).decode() if m else None


def cn_of_der(der):
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                       capture_output=True, check=True)
    return re.search(rb"CN = ([^,\n]+)", p.stdout).group(1).decode()


def implicit(port, ctx=None, server_hostname=None):
    """A TLS socket to an implicit-TLS listener, after reading its 220."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = (ctx or any_cert()).wrap_socket(raw, server_hostname=server_hostname)
    f = s.makefile("rb")
    line = f.readline()
    assert line.startswith(b"220 "), line
    return s, f


def reply(f):
    lines = [f.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(f.readline())
    return lines


def count(tern, pattern):
    return len(re.findall(pattern, tern.log(), re.M))


def wait_count(tern, pattern, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while count(tern, pattern) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"{pattern!r} not seen {n} times\n{tern.log_tail()}")
        time.sleep(0.05)


# --------------------------------------------------------------------------
# Versions: 1.2 and 1.3 on both kinds of listener, 1.1 refused.


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_starttls_and_implicit_negotiate_tls12_and_tls13(tern_factory, certdir, version):
    p2 = free_port()
    tern = tern_factory(tls_config(certdir, p2))
    want = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    r = s_client("-starttls", "smtp", "-connect", f"127.0.0.1:{tern.port}", version)
    assert r.returncode == 0, r.stderr[-500:]
    assert negotiated(r.stdout)[0] == want, r.stdout[-800:]
    r = s_client("-connect", f"127.0.0.1:{p2}", version, stdin=b"QUIT\r\n")
    assert r.returncode == 0, r.stderr[-500:]
    assert negotiated(r.stdout)[0] == want, r.stdout[-800:]
    assert b"220 mx.example.test ESMTP" in r.stdout  # the greeting comes inside TLS
    wait_count(tern, rf"event=tls sess=\S+ client=127\.0\.0\.1 tls={want} cipher=\S+", 2)


def test_tls11_is_refused(tern_factory, certdir):
    p2 = free_port()
    tern = tern_factory(tls_config(certdir, p2))
    # SECLEVEL=0: so that it is the server that refuses, not the client's own policy
    old = ("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    r = s_client("-starttls", "smtp", "-connect", f"127.0.0.1:{tern.port}", *old)
    assert r.returncode != 0 and negotiated(r.stdout) is None, r.stdout[-800:]
    r = s_client("-connect", f"127.0.0.1:{p2}", *old)
    assert r.returncode != 0 and negotiated(r.stdout) is None, r.stdout[-800:]
    assert b"220 " not in r.stdout
    wait_count(tern, r'event=tls_failed sess=\S+ client=127\.0\.0\.1 reason="unsupported '
                     r'protocol"', 2)
    # and the listener is fine afterwards
    r = s_client("-connect", f"127.0.0.1:{p2}", stdin=b"QUIT\r\n")
    assert r.returncode == 0 and b"221 " in r.stdout, r.stdout[-500:]


def test_implicit_listener_does_not_offer_starttls(tern_factory, certdir):
    p2 = free_port()
    tern = tern_factory(tls_config(certdir, p2))
    s, f = implicit(p2)
    s.sendall(b"EHLO client.example.org\r\n")
    ehlo = b"".join(reply(f))
    assert b"STARTTLS" not in ehlo
    s.sendall(b"STARTTLS\r\n")
    assert reply(f)[-1].startswith(b"503 5.5.1"), "TLS is already active"
    s.close()
    tern.wait_log(r"event=connect sess=\S+ client=127\.0\.0\.1 tls=implicit")


def test_listener_tls_none_offers_nothing(tern_factory, certdir):
    tern = tern_factory(deep_merge(tls_config(certdir, free_port()),
                                   {"listen": {"mx": {"tls": "none"}}}))
    with tern.client() as c:
        assert "STARTTLS" not in c.ehlo().text.upper()
        r = c.cmd("STARTTLS")
        assert r.code == 502 and r.enh == "5.5.1", r


# --------------------------------------------------------------------------
# SNI


def test_sni_picks_the_certificate(tern_factory, certdir):
    p2 = free_port()
    tern = tern_factory(tls_config(certdir, p2, [(certdir / "other.pem",
                                                  certdir / "other.key")]))
    cases = [
        ("mx.example.test", "mx.example.test"),
        ("mail.other.test", "mail.other.test"),
        ("MAIL.Other.Test", "mail.other.test"),   # names are case-insensitive
        ("smtp.wild.test", "mail.other.test"),    # wildcard: one label
        ("a.b.wild.test", "mx.example.test"),     # not two: the default
        ("unknown.example", "mx.example.test"),   # nobody's name: the default
    ]
    for name, want in cases:
        r = s_client("-connect", f"127.0.0.1:{p2}", "-servername", name)
        assert subject_cn(r.stdout) == want, (name, r.stdout[-800:])
        r = s_client("-starttls", "smtp", "-connect", f"127.0.0.1:{tern.port}",
                     "-servername", name)
        assert subject_cn(r.stdout) == want, (name, r.stdout[-800:])
    r = s_client("-connect", f"127.0.0.1:{p2}", "-noservername")
    assert subject_cn(r.stdout) == "mx.example.test", r.stdout[-800:]
    # the name asked for is in the log line
    tern.wait_log(r"event=tls sess=\S+ client=127\.0\.0\.1 tls=TLSv1\.3 cipher=\S+ "
                  r"sni=smtp\.wild\.test$")


# --------------------------------------------------------------------------
# Reload on SIGHUP


@pytest.mark.parametrize("processes", ["split", "single"])
def test_certificate_reload_keeps_sessions(tern_factory, scratch, processes):
    """As root tern splits (the parent reads the files, the child reloads from its
    copies); with user = root, or as anyone else, one process does both."""
    if processes == "split" and not IS_ROOT:
        pytest.skip("the privileged parent exists only when started as root")
    before = make_cert(scratch, "before", "before.example.test", ["mx.example.test"])
    after = make_cert(scratch, "after", "after.example.test", ["mx.example.test"])
    live_cert, live_key = scratch / "live.pem", scratch / "live.key"
    shutil.copy(before[0], live_cert)
    shutil.copy(before[1], live_key)
    p2 = free_port()
    tern = tern_factory({
        "tls": {"cert_file": str(live_cert), "key_file": str(live_key)},
        "listen": {"smtps": {"address": f"127.0.0.1:{p2}", "profile": "submission",
                             "tls": "implicit"}},
        **({"user": "root"} if processes == "single" and IS_ROOT else {}),
    })
    assert (tern.pid != tern.proc.pid) == (processes == "split")
    # Two sessions open across the reloads: one in TLS, one not upgraded yet.
    old, oldf = implicit(p2)
    assert cn_of_der(old.getpeercert(binary_form=True)) == "before.example.test"
    old.sendall(b"EHLO client.example.org\r\n")
    assert reply(oldf)[-1].startswith(b"250 ")
    plain = tern.client()
    plain.ehlo()

    # A reload that fails (the new key is not the certificate's) keeps the
    # certificate in use and says why.
    shutil.copy(after[1], live_key)
    tern.signal(signal.SIGHUP)
    tern.wait_log(r'event=reload_failed reason="tls: cannot load .*live\.pem.*" '
                  r"keeping=old-config")
    r = s_client("-connect", f"127.0.0.1:{p2}")
    assert subject_cn(r.stdout) == "before.example.test", r.stdout[-800:]

    # A good one: new connections get the new certificate ...
    shutil.copy(after[0], live_cert)
    tern.signal(signal.SIGHUP)
    tern.wait_log(r"event=tls_reloaded certificates=1")
    r = s_client("-connect", f"127.0.0.1:{p2}")
    assert subject_cn(r.stdout) == "after.example.test", r.stdout[-800:]
    # ... so does a handshake that starts now on a connection made before ...
    r = plain.cmd("STARTTLS")
    assert r.code == 220, r
    t = any_cert().wrap_socket(plain.sock, server_hostname="mx.example.test")
    assert cn_of_der(t.getpeercert(binary_form=True)) == "after.example.test"
    t.sendall(b"EHLO client.example.org\r\n")
    assert reply(t.makefile("rb"))[-1].startswith(b"250 ")
    t.close()
    # ... and the session made before both reloads is still up.
    old.sendall(b"NOOP\r\n")
    assert reply(oldf)[-1].startswith(b"250 ")
    old.sendall(b"QUIT\r\n")
    assert reply(oldf)[-1].startswith(b"221 ")
    old.close()


# --------------------------------------------------------------------------
# Clients


def test_smtplib_smtp_ssl_delivers(tern_factory, certdir):
    p2 = free_port()
    tern = tern_factory(tls_config(certdir, p2))
    with smtplib.SMTP_SSL("127.0.0.1", p2, context=any_cert(), timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        # a submission listener: AUTH (offered at once, inside TLS) before MAIL
        assert s.has_extn("auth")
        s.login("bob@example.test", "secret-pw")
        s.sendmail("bob@example.test", ["alice@example.test"], make_message("over smtps"))
    (_, data), = tern.wait_mail_with("alice@example.test", "over smtps")
    assert b"with ESMTPSA id" in data
    m = tern.wait_log(TLS_LINE.pattern)
    assert m.group(1) == "TLSv1.3"


def test_outbound_log_line_carries_tls(tern_factory, certdir):
    """Two terns: A relays mail for other.test to B, which offers STARTTLS."""
    b = tern_factory(deep_merge(tls_config(certdir, free_port()),
                                {"local_domains": ["other.test"]}),
                     users=("bob@other.test",))
    a = tern_factory({"routes": {"other.test": {"via": f"smtp://127.0.0.1:{b.port}"}}})
    with a.client(source="127.0.0.2") as c:  # 127.0.0.2 may relay (conftest)
        c.send_message("a@example.org", ["bob@other.test"],
                       make_message("relayed over tls", to="bob@other.test"))
    (_, data), = b.wait_mail_with("bob@other.test", "relayed over tls")
    assert b"with ESMTPS id" in data
    # no sni=: a relay named by its address is not named in SNI (RFC 6066 §3)
    # and what the certificate was worth (not checked at opportunistic: only logged)
    a.wait_log(r"event=tls id=\w+ relay=127\.0\.0\.1 tls=TLSv1\.3 cipher=TLS_\w+ "
               r"tls_verify=untrusted level=opportunistic$")
    a.wait_log(r"event=delivered .*to=<bob@other\.test>")


# --------------------------------------------------------------------------
# The embedded default (DESIGN §1): fixed ports, ./tern-data


EMBEDDED_PORTS = (2525, 2587, 2465, 2110, 2995, 2580)


def run_embedded(d):
    log = open(d / "tern.log", "ab")
    proc = subprocess.Popen([tern_bin(), "serve"], cwd=d, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, (d / "tern.log").read_text(errors="replace")
        try:
            with Client(2525) as c:
                expect(c.greeting, 220)
            return proc, log
        except OSError:
            assert time.monotonic() < deadline, "no greeting on 127.0.0.1:2525"
            time.sleep(0.1)


def stop_embedded(proc, log):
    proc.terminate()
    try:
        rc = proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        rc = "killed"
    log.close()
    return rc


def test_embedded_default_makes_its_certificate_once(scratch):
    for port in EMBEDDED_PORTS:
        with socket.socket() as s:
            # as tern binds: a connection of an earlier run in TIME-WAIT is no obstacle
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen(1)
            except OSError:
                pytest.skip(f"127.0.0.1:{port} is busy: the embedded default needs it")
    d = scratch
    cert = d / "tern-data" / "tls" / "selfsigned-cert.pem"
    key = d / "tern-data" / "tls" / "selfsigned-key.pem"
    proc, log = run_embedded(d)
    try:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        if IS_ROOT:  # written by the privileged parent for the unprivileged child
            assert key.stat().st_uid == cert.stat().st_uid != 0
        first = cert.read_bytes()
        # A client that trusts exactly this certificate verifies it, by name
        # and by address (SAN localhost, 127.0.0.1).
        ctx = ssl.create_default_context(cafile=str(cert))
        s, f = implicit(2465, ctx, server_hostname="localhost")
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        s.sendall(b"QUIT\r\n")
        assert reply(f)[-1].startswith(b"221 ")
        s.close()
        with smtplib.SMTP_SSL("127.0.0.1", 2465, context=ctx, timeout=10) as c:
            c.ehlo()
            assert not c.has_extn("starttls")
        with smtplib.SMTP("127.0.0.1", 2587, timeout=10) as c:
            c.ehlo()
            assert c.has_extn("starttls")
            c.starttls(context=ctx)
            assert c.ehlo()[0] == 250
        # POP3 uses the same certificate: TLS on 2995, STLS on 2110
        p = poplib.POP3_SSL("127.0.0.1", 2995, context=ctx, timeout=10)
        assert p.getwelcome().startswith(b"+OK")
        p.quit()
        p = poplib.POP3("127.0.0.1", 2110, timeout=10)
        try:
            p.stls(context=ctx)
            assert p.sock.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            p.quit()
        # A pair that is no longer good (here: its key is gone) is made anew
        # on SIGHUP, and served from then on.
        key.unlink()
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "event=tls_reloaded" not in (d / "tern.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, (d / "tern.log").read_text(errors="replace")
            time.sleep(0.05)
        assert cert.read_bytes() != first
        first = cert.read_bytes()
        ctx = ssl.create_default_context(cafile=str(cert))
        s, f = implicit(2465, ctx, server_hostname="localhost")
        s.close()
    finally:
        rc = stop_embedded(proc, log)
    text = (d / "tern.log").read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert re.search(r"event=tls_self_signed cert=\./tern-data/tls/selfsigned-cert\.pem "
                     r"hostname=\S+ reason=missing", text), text[-3000:]
    assert re.search(r"event=tls_self_signed cert=\S+ hostname=\S+ reason=key-missing", text)
    assert re.search(r"event=listening name=submissions address=127\.0\.0\.1:2465 "
                     r"profile=submission tls=implicit", text)
    assert re.search(r"event=listening name=submission address=127\.0\.0\.1:2587 "
                     r"profile=submission tls=starttls", text)
    assert len(TLS_LINE.findall(text)) >= 3, text[-3000:]

    # The second start uses the same certificate, even when an earlier run as
    # root in one process (user = "root") left it root's 0600.
    owner = key.stat().st_uid
    if IS_ROOT:
        os.chown(key, 0, 0)
        os.chown(cert, 0, 0)
    (d / "tern.log").rename(d / "first.log")
    proc, log = run_embedded(d)
    try:
        assert cert.read_bytes() == first
        assert key.stat().st_uid == owner
        r = s_client("-connect", "127.0.0.1:2465", stdin=b"QUIT\r\n")
        assert b"221 " in r.stdout, r.stdout[-500:]
    finally:
        rc = stop_embedded(proc, log)
    text = (d / "tern.log").read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert "event=tls_self_signed" not in text, text[-3000:]
    assert "AddressSanitizer" not in text and "runtime error" not in text, text
