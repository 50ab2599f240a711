"""
test_api_tls.py — HTTPS on the sending API's listener (issue 12 item 1):
`listen { api { profile = "http"; tls = "implicit"; } }` speaks TLS from the first byte with
the certificates of `tls { }` (the SMTP listeners' context: SNI choice, SIGHUP reload).

Checked with curl (--cacert, the certificate verified, no -k): a send answers 202 and the
message is delivered; plain HTTP to the HTTPS port gets no HTTP answer and no request is
served, and the listener goes on serving; SIGHUP puts a new certificate in use for the next
connection; a key that cannot be loaded stops `tern serve` at start with a clear message, and
tls = "implicit" without a certificate, or "starttls" on an http listener, is a config error.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from conftest import free_port, make_tmpdir, start_on_free_port, tern_bin
from test_api import create_key


def make_cert(d, name, cn):
    """A self-signed EC certificate naming cn and 127.0.0.1 (curl checks the IP SAN)."""
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={cn}", "-addext",
                    f"subjectAltName=DNS:{cn},IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certdir():
    d = make_tmpdir()
    make_cert(d, "one", "api.example.test")
    make_cert(d, "two", "api2.example.test")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def curl(*args, timeout=20):
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=timeout)


def peer_cn(port, cafile):
    """The CN of the certificate the HTTPS listener shows, verified against cafile."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return dict(x[0] for x in t.getpeercert()["subject"])["commonName"]


def wait_https(port, cafile, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        r = curl("--cacert", str(cafile), f"https://127.0.0.1:{port}/healthz")
        if r.returncode == 0 and '"ok"' in r.stdout:
            return
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.1)


def https_tern(tern_factory, certdir, port, cert="one"):
    t = tern_factory(start=False)  # users are added with a config that loads as it is
    t.work = t.root / "certs"  # the certificate in use, replaced before a SIGHUP
    t.work.mkdir()
    shutil.copy(certdir / f"{cert}.pem", t.work / "cert.pem")
    shutil.copy(certdir / f"{cert}.key", t.work / "key.pem")
    t.config["tls"] = {"cert_file": str(t.work / "cert.pem"), "key_file": str(t.work / "key.pem")}
    t.config["listen"]["api"] = {"address": f"127.0.0.1:{port}", "profile": "http",
                                 "tls": "implicit"}
    t.write_config()
    return t


def test_send_over_https_is_verified_and_delivered(tern_factory, certdir):
    port = free_port()
    t = https_tern(tern_factory, certdir, port)
    token = create_key(t, "app", "--from-domain", "example.test")
    start_on_free_port(t)
    wait_https(port, certdir / "one.pem")
    assert "profile=http tls=implicit" in t.log()

    msg = {"from": "app@example.test", "to": ["alice@example.test"], "subject": "over https",
           "text": "sent with TLS\n"}
    r = curl("--cacert", str(certdir / "one.pem"), "-w", "\n%{http_code}",
             "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
             "--data-binary", json.dumps(msg), f"https://127.0.0.1:{port}/api/v1/messages")
    assert r.returncode == 0, r.stderr
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "202", r.stdout
    qid = json.loads(body)["id"]
    (_, data), = t.wait_mail("alice@example.test")
    assert b"Subject: over https" in data and qid.encode() in data

    # the same certificate is not accepted for another name: curl verifies it
    r = curl("--cacert", str(certdir / "two.pem"), f"https://127.0.0.1:{port}/healthz")
    assert r.returncode != 0


def test_plain_http_to_the_https_port_is_refused_cleanly(tern_factory, certdir):
    port = free_port()
    t = https_tern(tern_factory, certdir, port)
    token = create_key(t, "app", "--from-domain", "example.test")
    start_on_free_port(t)
    wait_https(port, certdir / "one.pem")

    # a plain request: no HTTP answer (the TLS handshake fails), the connection closes
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Authorization: Bearer " + token.encode() + b"\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        got = b""
        try:
            while len(got) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert not got.startswith(b"HTTP/"), got[:200]
    r = curl(f"http://127.0.0.1:{port}/healthz")
    assert r.returncode != 0 and "HTTP/" not in r.stdout
    assert "path=/api/v1/messages" not in t.log()  # nothing was served in clear

    # and the listener still serves HTTPS
    wait_https(port, certdir / "one.pem")


def test_sighup_puts_a_new_certificate_in_use(tern_factory, certdir):
    port = free_port()
    t = https_tern(tern_factory, certdir, port)
    start_on_free_port(t)
    wait_https(port, certdir / "one.pem")
    assert peer_cn(port, certdir / "one.pem") == "api.example.test"
    shutil.copy(certdir / "two.pem", t.work / "cert.pem")
    shutil.copy(certdir / "two.key", t.work / "key.pem")
    t.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while True:
        try:
            if peer_cn(port, certdir / "two.pem") == "api2.example.test":
                break
        except ssl.SSLError:
            pass  # the old certificate, still
        assert time.monotonic() < deadline, t.log_tail()
        time.sleep(0.1)


def test_bad_certificate_config_stops_the_start_with_a_clear_error(tern_factory, certdir,
                                                                    scratch):
    port = free_port()
    t = https_tern(tern_factory, certdir, port)
    (t.work / "key.pem").write_text("not a key\n")
    p = subprocess.run([t.bin, "serve", "-c", str(t.config_path)], capture_output=True,
                       timeout=30)
    assert p.returncode != 0
    assert b"tls: cannot load" in p.stderr, p.stderr[-400:]

    conf = scratch / "t.conf"
    conf.write_text(f'data_dir = "{scratch}/d";\nlisten {{ api {{ address = "127.0.0.1:{port}"; '
                    f'profile = "http"; tls = "implicit"; }} }}\n')
    r = subprocess.run([tern_bin(), "check-config", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    assert 'listen.api.tls: "implicit" needs a certificate' in r.stderr, r.stderr
    # a certificate: fine, and no warning even off loopback (HTTPS)
    conf.write_text(f'data_dir = "{scratch}/d";\ntls {{ cert_file = "{certdir}/one.pem"; '
                    f'key_file = "{certdir}/one.key"; }}\nlisten {{ api {{ address = '
                    f'"0.0.0.0:{port}"; profile = "http"; tls = "implicit"; }} }}\n')
    r = subprocess.run([tern_bin(), "check-config", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "listen.api" not in r.stderr, r.stderr


def test_self_signed_default_certificate_serves_https(tern_factory):
    """tls.self_signed (the embedded default's certificate) works for the API as for SMTP:
    curl trusts the generated certificate file and reaches the API by 127.0.0.1."""
    port = free_port()
    t = tern_factory(start=False)
    t.config["tls"] = {"self_signed": True}
    t.config["listen"]["api"] = {"address": f"127.0.0.1:{port}", "profile": "http",
                                 "tls": "implicit"}
    t.write_config()
    start_on_free_port(t)
    cert = t.data_dir / "tls" / "selfsigned-cert.pem"
    wait_https(port, cert)
    r = curl("--cacert", str(cert), "-w", "\n%{http_code}", f"https://127.0.0.1:{port}/readyz")
    assert r.returncode == 0 and r.stdout.endswith("\n200"), r.stdout + r.stderr
