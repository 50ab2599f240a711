"""Outbound TLS you can rely on (issue 8 item 5): tls = verify / require per route, the
relayhost's credentials only over a verified channel, DANE, and the reasons of TLS
failures in `tern queue show` and in the DSN.

The world: a real unbound serving the test zones (remote_harness.Unbound), fake MXes
(aiosmtpd with STARTTLS) on 127.0.0.6N:P with certificates of a test CA made here with
the openssl command, and tern delivering to port P with delivery.ca_file naming that CA.
Every fake records the commands it got and whether they came inside TLS.

Never: talk outside 127.0.0.0/8, wait without a bound, kill what it did not start.
"""

import re
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import deep_merge, make_message, make_tmpdir
from remote_harness import (AUTH_PASSWORD, AUTH_USER, DEADLINE, DNS_RECORDS, SENDER, Raw,
                            Unbound, pick_shared_port, remote_overrides, submit, wait_dsn,
                            wait_queue_empty)

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

# Fake next hops: name -> (address, certificate kind or None for no STARTTLS)
HOSTS = {
    "good": ("127.0.0.61", "ca"),           # a test-CA certificate for its own name
    "wrong": ("127.0.0.62", "wrongname"),   # a test-CA certificate for another name
    "self": ("127.0.0.63", "selfsigned"),   # a self-signed certificate for its own name
    "plain": ("127.0.0.64", None),          # no STARTTLS at all
    "relay": ("127.0.0.65", "selfsigned"),  # AUTH offered (even in clear), untrusted cert
    "relayok": ("127.0.0.66", "ca"),        # AUTH offered, test-CA certificate
    # DANE (self-signed certificates: DANE-EE needs no CA)
    "dok": ("127.0.0.67", "selfsigned"),     # signed zone, TLSA 3 1 1 of its key
    "dbad": ("127.0.0.68", "selfsigned"),    # signed zone, TLSA of another key
    "dins": ("127.0.0.69", "selfsigned"),    # unsigned zone, TLSA of another key
    "dbogus": ("127.0.0.70", "selfsigned"),  # signed zone, TLSA changed after signing
    "dta": ("127.0.0.72", "ca-chain"),       # signed zone, TLSA 2 0 1 of the test CA
    "smtps": ("127.0.0.73", "ca"),          # implicit TLS (smtps://, RFC 8314): no STARTTLS
}

DANE_NAMES = {"dok": "mx-ok.sec.example", "dbad": "mx-bad.sec.example",
              "dins": "mx-ins.insec.example", "dbogus": "mx-bogus.sec.example",
              "dta": "mx-ta.sec.example"}


def host_name(key):
    return DANE_NAMES.get(key, f"mx-{key}.tls.test")


RECORDS = [(host_name(k), "A", ip) for k, (ip, _) in HOSTS.items() if k not in DANE_NAMES] + [
    # MX delivery (no route): opportunistic to an untrusted certificate
    ("opp.tls.test", "MX", f"10 {host_name('self')}."),
    # MX delivery where the MX has no STARTTLS: plaintext is fine when opportunistic
    ("plainmx.tls.test", "MX", f"10 {host_name('plain')}."),
]

# MTA-STS: domain -> (MX host key, TXT id, policy text). The policy server answers
# for mta-sts.DOMAIN at STS_IP.
STS_IP = "127.0.0.71"
STS = {
    "sts-enforce.test": ("good", "e1", "version: STSv1\r\nmode: enforce\r\nmx: *.tls.test\r\n"
                         "max_age: 86400\r\n"),
    "sts-bad.test": ("self", "b1", "version: STSv1\nmode: enforce\nmx: mx-self.tls.test\n"
                     "max_age: 86400\n"),
    "sts-mismatch.test": ("good", "m1", "version: STSv1\nmode: enforce\n"
                          "mx: mx.elsewhere.example\nmax_age: 86400\n"),
    "sts-testing.test": ("self", "t1", "version: STSv1\nmode: testing\n"
                         "mx: mx.elsewhere.example\nmax_age: 86400\n"),
}
for _d, (_k, _id, _p) in STS.items():
    RECORDS += [(_d, "MX", f"10 {host_name(_k)}."), (f"mta-sts.{_d}", "A", STS_IP)]
STS_TXT = [f"_mta-sts.{d}. 60 IN TXT \"v=STSv1; id={i};\"" for d, (_, i, _) in STS.items()]

ROUTES = {
    "verify-good.test": ("good", "verify"),
    "verify-wrong.test": ("wrong", "verify"),
    "verify-self.test": ("self", "verify"),
    "require-plain.test": ("plain", "require"),
    "require-self.test": ("self", "require"),
}

# --------------------------------------------------------------------------
# Certificates (the openssl command; EC P-256, valid two days).


def _run(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class PKI:
    def __init__(self):
        self.dir = make_tmpdir("tern-pki-")
        d = self.dir
        self.ca = d / "ca.pem"
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(d / "ca.key"), "-out", str(self.ca), "-days", "2",
             "-subj", "/CN=tern outbound test CA", "-addext",
             "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")

    def leaf(self, name, cert_name=None, self_signed=False, sans=None):
        """(cert, key) paths for a server certificate naming cert_name (default name),
        or every name in sans."""
        cn = cert_name or name
        d = self.dir
        cert, key = d / f"{name}-{cn}{'-ss' if self_signed else ''}.pem", d / f"{name}.key"
        if self_signed:
            _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                 "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}")
            return cert, key
        csr = d / f"{name}.csr"
        ext = d / f"{name}.ext"
        alt = ",".join(f"DNS:{n}" for n in (sans or [cn]))
        ext.write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\n"
                       "extendedKeyUsage=serverAuth\n")
        _run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
        _run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey",
             str(d / "ca.key"), "-CAcreateserial", "-out", str(cert), "-days", "2",
             "-extfile", str(ext))
        return cert, key


# --------------------------------------------------------------------------
# Fake next hops that record what they got.


class Recorder:
    """aiosmtpd handler: records (command, inside_tls) and the accepted messages."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.commands = []
            self.messages = []
            self.auths = []

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  bytes(envelope.original_content or b"")))
        return "250 2.0.0 OK queued"

    def names(self):
        with self.lock:
            return [c for c, _ in self.commands]

    def wait_messages(self, n=1, tern=None, timeout=DEADLINE):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        pytest.fail(f"{self.name}: no message after {timeout}s; commands {self.names()}\n"
                    + (tern.log_tail() if tern else ""))


def _smtp_class():
    from aiosmtpd.smtp import SMTP

    class RecordingSMTP(SMTP):
        def _note(self, cmd):
            h = self.event_handler
            with h.lock:
                h.commands.append((cmd, self._tls_protocol is not None))

        async def smtp_STARTTLS(self, arg):
            self._note("STARTTLS")
            return await super().smtp_STARTTLS(arg)

        async def smtp_AUTH(self, arg):
            self._note("AUTH")
            return await super().smtp_AUTH(arg)

        async def smtp_MAIL(self, arg):
            self._note("MAIL")
            return await super().smtp_MAIL(arg)

    return RecordingSMTP


class Auth:
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
            self.handler.auths.append((login, password, ok))
        return AuthResult(success=ok, handled=False)


class Fakes:
    def __init__(self, port, pki):
        from aiosmtpd.controller import Controller
        self.handlers = {k: Recorder(k) for k in HOSTS}
        self.controllers = []
        smtp_cls = _smtp_class()

        class RecCtl(Controller):
            def factory(self):
                return smtp_cls(self.handler, **self.SMTP_kwargs)

        self.certs = {}
        for k, (ip, kind) in HOSTS.items():
            kw = dict(hostname=ip, port=port, ready_timeout=10,
                      server_hostname=host_name(k))
            if kind:
                if kind == "ca":
                    cert, key = pki.leaf(host_name(k))
                elif kind == "ca-chain":  # the leaf, then the CA (DANE-TA needs it sent)
                    leaf, key = pki.leaf(host_name(k))
                    cert = pki.dir / f"{host_name(k)}-chain.pem"
                    cert.write_text(leaf.read_text() + pki.ca.read_text())
                elif kind == "wrongname":
                    cert, key = pki.leaf(host_name(k), cert_name="other.example.net")
                else:
                    cert, key = pki.leaf(host_name(k), self_signed=True)
                self.certs[k] = cert
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(str(cert), str(key))
                # smtps: TLS from the first byte; the others offer STARTTLS
                kw["ssl_context" if k == "smtps" else "tls_context"] = ctx
            if k.startswith("relay"):
                h = self.handlers[k]
                # AUTH is offered in clear too: a client that skipped TLS would be
                # tempted; tern must still never send it there.
                kw.update(authenticator=Auth(h), auth_required=True, auth_require_tls=False)
            c = RecCtl(self.handlers[k], **kw)
            c.start()
            self.controllers.append(c)

    def reset(self):
        for h in self.handlers.values():
            h.reset()

    def __getitem__(self, k):
        return self.handlers[k]

    def stop(self):
        for c in self.controllers:
            try:
                c.stop()
            except Exception:
                pass


# --------------------------------------------------------------------------
# Fixtures.


# --------------------------------------------------------------------------
# DNSSEC: zones signed at test time with ldns-signzone, served by the test unbound as
# auth-zones; tern's resolver gets sec.example's key as its trust anchor, so
# sec.example answers are secure and insec.example ones insecure (no anchor covers
# them).


def spki_sha256(cert):
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                         check=True, capture_output=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True, timeout=30).stdout
    import hashlib
    return hashlib.sha256(der).hexdigest()


ZONE_HEAD = """$ORIGIN {origin}.
$TTL 300
@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300
@ IN NS ns.{origin}.
ns IN A 127.0.0.1
"""


def cert_sha256(cert):
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"],
                         check=True, capture_output=True, timeout=30).stdout
    import hashlib
    return hashlib.sha256(der).hexdigest()


def make_zones(d, port, certs, ca):
    """Writes sec.example (signed) and insec.example (unsigned); returns (zone files,
    trust anchor file)."""
    if not Path("/usr/bin/ldns-signzone").exists():
        pytest.skip("ldns-signzone (ldnsutils) not installed")
    good = spki_sha256(certs["dok"])
    other = spki_sha256(certs["dins"])  # mx-bad's record names another server's key
    sec = ZONE_HEAD.format(origin="sec.example") + f"""
ok IN MX 10 mx-ok.sec.example.
mx-ok IN A {HOSTS['dok'][0]}
_{port}._tcp.mx-ok IN TLSA 3 1 1 {good}
bad IN MX 10 mx-bad.sec.example.
mx-bad IN A {HOSTS['dbad'][0]}
_{port}._tcp.mx-bad IN TLSA 3 1 1 {other}
bogus IN MX 10 mx-bogus.sec.example.
mx-bogus IN A {HOSTS['dbogus'][0]}
_{port}._tcp.mx-bogus IN TLSA 3 1 1 {spki_sha256(certs['dbogus'])}
ta IN MX 10 mx-ta.sec.example.
mx-ta IN A {HOSTS['dta'][0]}
_{port}._tcp.mx-ta IN TLSA 2 0 1 {cert_sha256(ca)}
pkix IN MX 10 mx-pkix.sec.example.
mx-pkix IN A {HOSTS['dok'][0]}
_{port}._tcp.mx-pkix IN TLSA 1 1 1 {good}
"""
    ins = ZONE_HEAD.format(origin="insec.example") + f"""
@ IN MX 10 mx-ins.insec.example.
mx-ins IN A {HOSTS['dins'][0]}
_{port}._tcp.mx-ins IN TLSA 3 1 1 {good}
"""
    (d / "sec.example.zone").write_text(sec)
    (d / "insec.example.zone").write_text(ins)
    out = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "sec.example"],
                         cwd=d, check=True, capture_output=True, text=True, timeout=60)
    key = out.stdout.strip()
    subprocess.run(["ldns-signzone", "-f", "sec.example.signed", "sec.example.zone", key],
                   cwd=d, check=True, capture_output=True, timeout=60)
    signed = (d / "sec.example.signed").read_text()
    # Bogus: the TLSA record of mx-bogus changed after signing (its RRSIG no longer fits).
    lines = []
    for ln in signed.splitlines():
        if ln.startswith(f"_{port}._tcp.mx-bogus.sec.example.") and "\tTLSA\t" in ln:
            ln = re.sub(r"[0-9a-fA-F]{64}$", "00" * 32, ln)
        lines.append(ln)
    tampered = "\n".join(lines) + "\n"
    assert tampered != signed, "the TLSA record of mx-bogus was not found in the signed zone"
    (d / "sec.example.signed").write_text(tampered)
    anchor = d / "anchor.key"
    anchor.write_text((d / f"{key}.key").read_text())
    return d / "sec.example.signed", d / "insec.example.zone", anchor


class DnssecUnbound(Unbound):
    def __init__(self, records, zones):
        super().__init__(records)
        extra = [f"  local-data: '{rr}'" for rr in STS_TXT]
        for name, path in zones:
            extra += ["auth-zone:", f'  name: "{name}."', f'  zonefile: "{path}"',
                      "  for-downstream: yes", "  for-upstream: yes"]
        self.conf.write_text(self.conf.read_text() + "\n".join(extra) + "\n")


class PolicyServer:
    """HTTPS on STS_IP: /.well-known/mta-sts.txt of the domain the Host header names
    (a test-CA certificate for every mta-sts.DOMAIN); counts the fetches."""

    def __init__(self, pki):
        import http.server
        cert, key = pki.leaf("mta-sts", cert_name=None, sans=[f"mta-sts.{d}" for d in STS])
        self.fetches = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                outer.fetches.append((host, self.path))
                dom = host[len("mta-sts."):] if host.startswith("mta-sts.") else ""
                if self.path != "/.well-known/mta-sts.txt" or dom not in STS:
                    self.send_error(404)
                    return
                body = STS[dom][2].encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((STS_IP, 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def tls_world():
    port = pick_shared_port(sorted(ip for ip, _ in HOSTS.values()))
    pki = PKI()
    fakes = dns = None
    try:
        fakes = Fakes(port, pki)
        sec, ins, anchor = make_zones(pki.dir, port, fakes.certs, pki.ca)
        dns = DnssecUnbound(DNS_RECORDS + RECORDS,
                            [("sec.example", sec), ("insec.example", ins)])
        dns.anchor = anchor
        dns.start()
        dns.sts = PolicyServer(pki)
    except BaseException:
        if fakes:
            fakes.stop()
        if dns:
            dns.stop()
        raise
    yield port, dns, fakes, pki
    dns.sts.stop()
    fakes.stop()
    dns.stop()


@pytest.fixture
def fakes(tls_world):
    tls_world[2].reset()
    yield tls_world[2]


def routes(pwfile):
    r = {dom: {"via": f"smtp://{host_name(k)}", "tls": lvl}
         for dom, (k, lvl) in ROUTES.items()}
    # A relay route with credentials and no tls key: verify is the default.
    r["relay.test"] = {"via": f"smtp://{host_name('relay')}", "auth_user": AUTH_USER,
                       "auth_password_file": str(pwfile)}
    r["relayok.test"] = {"via": f"smtp://{host_name('relayok')}", "auth_user": AUTH_USER,
                         "auth_password_file": str(pwfile)}
    r["smtps.test"] = {"via": f"smtps://{host_name('smtps')}", "tls": "verify"}
    return r


@pytest.fixture
def tls_tern(tls_world, tern_factory, fakes):
    port, dns, _, pki = tls_world

    def start(**delivery):
        t = tern_factory(None, ("alice@example.test",), start=False)
        cfg = remote_overrides(port, dns.forward, t.root, **delivery)
        cfg["delivery"]["ca_file"] = str(pki.ca)
        cfg["dns"]["trust_anchor_file"] = str(dns.anchor)
        cfg["delivery"]["mta_sts_port"] = dns.sts.port
        # via names carry no port: the route port is the fakes' port
        cfg["routes"] = {dom: dict(v, via=v["via"] + f":{port}")
                         for dom, v in routes(Path(t.root) / "relay.pw").items()}
        t.write_config(deep_merge(t.config, cfg))
        t.port = port
        chk = t.cli("check-config")
        assert chk.returncode == 0, chk.stderr + chk.stdout + t.config_path.read_text()
        t.start()
        return t

    return start


def msg(subject, to):
    return make_message(subject, body=f"body of {subject}\r\n", frm=SENDER, to=to)


def deferred_line(t, qid, rcpt, status):
    return t.wait_log(rf"event=deferred id={qid} to=<{re.escape(rcpt)}> .*status={status}\b.*$",
                      timeout=DEADLINE).group(0)


def show_line(t, qid, rcpt):
    out = t.cli("queue", "show", qid, check=True).stdout
    m = re.search(rf"to=<{re.escape(rcpt)}> state=(\w+).*$", out, re.M)
    assert m, f"recipient missing from `tern queue show`:\n{out}"
    assert m.group(1) == "deferred", out
    return m.group(0)


# --------------------------------------------------------------------------
# verify


def test_verify_right_name_delivers(tls_tern, fakes):
    t = tls_tern()
    qid = submit(t, ["a@verify-good.test"], msg("verify-good", "a@verify-good.test"))
    fakes["good"].wait_messages(1, tern=t)
    line = t.wait_log(rf"event=tls id={qid} relay=mx-good\.tls\.test .*$").group(0)
    assert "tls_verify=verified" in line and "level=verify" in line, line
    assert fakes["good"].commands[0] == ("STARTTLS", False)
    assert ("MAIL", True) in fakes["good"].commands
    t.wait_log(rf"event=delivered id={qid}\b")
    wait_queue_empty(t)


def test_verify_wrong_name_defers_with_reason(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@verify-wrong.test"
    qid = submit(t, [rcpt], msg("verify-wrong", rcpt))
    line = deferred_line(t, qid, rcpt, r"4\.7\.5")
    want = 'certificate name mismatch: expected "mx-wrong.tls.test"'
    # (the log quotes a '"' as \x22)
    assert "TLS required but" in line and want.replace('"', "\\x22") in line, line
    assert want in show_line(t, qid, rcpt)
    # never in clear after the failed handshake: no MAIL at all
    assert "MAIL" not in fakes["wrong"].names(), fakes["wrong"].commands
    assert fakes["wrong"].messages == []


def test_verify_self_signed_defers(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@verify-self.test"
    qid = submit(t, [rcpt], msg("verify-self", rcpt))
    deferred_line(t, qid, rcpt, r"4\.7\.5")
    assert "self-signed certificate" in show_line(t, qid, rcpt)
    assert "MAIL" not in fakes["self"].names(), fakes["self"].commands


def test_require_without_starttls_defers(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@require-plain.test"
    qid = submit(t, [rcpt], msg("require-plain", rcpt))
    deferred_line(t, qid, rcpt, r"4\.7\.10")
    assert "TLS required but mx-plain.tls.test does not offer STARTTLS" in \
        show_line(t, qid, rcpt)
    assert "MAIL" not in fakes["plain"].names(), fakes["plain"].commands


def test_require_accepts_untrusted_certificate_and_logs_it(tls_tern, fakes):
    t = tls_tern()
    qid = submit(t, ["a@require-self.test"], msg("require-self", "a@require-self.test"))
    fakes["self"].wait_messages(1, tern=t)
    line = t.wait_log(rf"event=tls id={qid} .*$").group(0)
    assert "tls_verify=untrusted" in line and "level=require" in line, line


def test_opportunistic_mx_untrusted_and_plain(tls_tern, fakes):
    """MX delivery (no route) stays opportunistic: an untrusted certificate is used
    and logged as such, a server without STARTTLS gets the mail in clear."""
    t = tls_tern()
    q1 = submit(t, ["a@opp.tls.test"], msg("opp", "a@opp.tls.test"))
    q2 = submit(t, ["a@plainmx.tls.test"], msg("plainmx", "a@plainmx.tls.test"))
    fakes["self"].wait_messages(1, tern=t)
    fakes["plain"].wait_messages(1, tern=t)
    line = t.wait_log(rf"event=tls id={q1} .*$").group(0)
    assert "tls_verify=untrusted" in line and "level=opportunistic" in line, line
    assert ("MAIL", True) in fakes["self"].commands
    assert ("MAIL", False) in fakes["plain"].commands
    t.wait_log(rf"event=delivered id={q2}\b")


# --------------------------------------------------------------------------
# The relayhost's credentials


def test_auth_route_never_sends_credentials_over_untrusted_tls(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@relay.test"
    qid = submit(t, [rcpt], msg("relay-untrusted", rcpt))
    deferred_line(t, qid, rcpt, r"4\.7\.5")
    assert "self-signed certificate" in show_line(t, qid, rcpt)
    names = fakes["relay"].names()
    assert "STARTTLS" in names, names
    assert "AUTH" not in names and fakes["relay"].auths == [], fakes["relay"].commands
    assert "MAIL" not in names
    assert AUTH_PASSWORD not in t.log()


def test_auth_route_verified_sends_credentials_inside_tls(tls_tern, fakes):
    t = tls_tern()
    qid = submit(t, ["a@relayok.test"], msg("relay-ok", "a@relayok.test"))
    fakes["relayok"].wait_messages(1, tern=t)
    cmds = fakes["relayok"].commands
    assert ("AUTH", True) in cmds and ("AUTH", False) not in cmds, cmds
    assert fakes["relayok"].auths == [(AUTH_USER, AUTH_PASSWORD, True)]
    line = t.wait_log(rf"event=tls id={qid} .*$").group(0)
    assert "tls_verify=verified" in line and "level=verify" in line, line


def test_auth_with_tls_none_to_a_name_is_refused(tern_factory):
    t = tern_factory(None, ("alice@example.test",), start=False)
    pw = Path(t.root) / "pw"
    pw.write_text("x\n")
    t.write_config(deep_merge(t.config, {"relayhost": {
        "via": "smtp://relay.example.net:587", "auth_user": "u",
        "auth_password_file": str(pw), "tls": "none"}}))
    r = t.cli("check-config")
    assert r.returncode != 0
    assert 'relayhost.tls: "none" with auth_user would send the password without TLS' in \
        r.stderr + r.stdout


def test_check_config_loads_ca_file(tern_factory):
    t = tern_factory(None, ("alice@example.test",), start=False)
    empty = Path(t.root) / "empty-ca.pem"
    empty.write_text("no certificate here\n")
    for path, why in ((Path(t.root) / "absent.pem", "cannot read ca_file"),
                      (empty, "no PEM certificate in it")):
        t.write_config(deep_merge(t.config, {"delivery": {"ca_file": str(path)}}))
        r = t.cli("check-config")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "tern: error: delivery.ca_file: tls: " in r.stderr and why in r.stderr, r.stderr


# --------------------------------------------------------------------------
# The DSN carries the reason


def test_dsn_carries_tls_reason(tls_tern, fakes):
    t = tls_tern(max_lifetime=Raw("3s"))
    rcpt = "late@verify-wrong.test"
    submit(t, [rcpt], msg("verify-wrong-dsn", rcpt))
    dsn = wait_dsn(t, rcpt, timeout=15)
    r = dsn.rcpt(rcpt)
    assert r is not None, dsn
    diag = re.sub(r"\s+", " ", r.get("diagnostic-code", ""))
    assert "certificate name mismatch" in diag and "mx-wrong.tls.test" in diag, r
    assert fakes["wrong"].messages == []


# --------------------------------------------------------------------------
# DANE (MX delivery: opportunistic raised to DANE by secure TLSA records)


def test_dane_ee_match_delivers(tls_tern, fakes):
    t = tls_tern()
    qid = submit(t, ["a@ok.sec.example"], msg("dane-ok", "a@ok.sec.example"))
    fakes["dok"].wait_messages(1, tern=t)
    look = t.wait_log(rf"event=dane_lookup id={qid} host=mx-ok\.sec\.example .*$").group(0)
    assert "secure=yes" in look and "dane=usable" in look, look
    line = t.wait_log(rf"event=tls id={qid} .*$").group(0)
    assert "tls_verify=dane" in line and "level=dane" in line, line


def test_dane_ta_match_delivers(tls_tern, fakes):
    """DANE-TA(2): the TLSA record names the CA; the chain the MX sends reaches it."""
    t = tls_tern()
    qid = submit(t, ["a@ta.sec.example"], msg("dane-ta", "a@ta.sec.example"))
    fakes["dta"].wait_messages(1, tern=t)
    line = t.wait_log(rf"event=tls id={qid} .*$").group(0)
    assert "tls_verify=dane" in line and "level=dane" in line, line


def test_dane_mismatch_defers(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@bad.sec.example"
    qid = submit(t, [rcpt], msg("dane-bad", rcpt))
    deferred_line(t, qid, rcpt, r"4\.7\.5")
    assert "no certificate matches the TLSA records of _%d._tcp.mx-bad.sec.example" % t.port \
        in show_line(t, qid, rcpt)
    assert "MAIL" not in fakes["dbad"].names(), fakes["dbad"].commands


def test_insecure_zone_means_no_dane(tls_tern, fakes):
    """TLSA records that do not match, but in an unsigned zone: no DANE, opportunistic
    TLS, delivered."""
    t = tls_tern()
    qid = submit(t, ["a@insec.example"], msg("dane-insecure", "a@insec.example"))
    fakes["dins"].wait_messages(1, tern=t)
    line = t.wait_log(rf"event=tls id={qid} .*$").group(0)
    assert "level=opportunistic" in line and "tls_verify=untrusted" in line, line
    assert not t.log_lines("event=dane_lookup", f"id={qid}"), "TLSA looked up under an insecure MX"


def test_bogus_tlsa_defers(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@bogus.sec.example"
    qid = submit(t, [rcpt], msg("dane-bogus", rcpt))
    deferred_line(t, qid, rcpt, r"4\.7\.5")
    assert "TLSA records of _%d._tcp.mx-bogus.sec.example could not be validated" % t.port \
        in show_line(t, qid, rcpt)
    assert fakes["dbogus"].names() == [], "connected although the TLSA answer is bogus"


def test_pkix_usage_only_makes_tls_mandatory_unauthenticated(tls_tern, fakes):
    """Secure TLSA records none of which is usable (PKIX-EE, usage 1): TLS is required
    but not authenticated (RFC 7672 §2.2)."""
    t = tls_tern()
    qid = submit(t, ["a@pkix.sec.example"], msg("dane-pkix", "a@pkix.sec.example"))
    fakes["dok"].wait_messages(1, tern=t)
    look = t.wait_log(rf"event=dane_lookup id={qid} .*$").group(0)
    assert "dane=unusable" in look, look
    line = t.wait_log(rf"event=tls id={qid} .*$").group(0)
    assert "level=require" in line, line


# --------------------------------------------------------------------------
# MTA-STS (MX delivery): TXT record and policy host in the test zone, the policy over
# HTTPS from a loopback server with a test-CA certificate


def test_mta_sts_enforce_verified_mx_delivers_and_caches(tls_tern, fakes, tls_world):
    t = tls_tern()
    sts = tls_world[1].sts
    before = len(sts.fetches)
    q1 = submit(t, ["a@sts-enforce.test"], msg("sts-enforce-1", "a@sts-enforce.test"))
    fakes["good"].wait_messages(1, tern=t)
    line = t.wait_log(rf"event=mta_sts id={q1} .*$").group(0)
    assert "mode=enforce" in line and "source=fetched" in line and "txt_id=e1" in line, line
    tl = t.wait_log(rf"event=tls id={q1} .*$").group(0)
    assert "level=verify" in tl and "tls_verify=verified" in tl, tl
    cache = Path(t.root) / "data" / "mta-sts" / "sts-enforce.test"
    assert cache.exists() and "mode: enforce" in cache.read_text()
    # the second message uses the cached policy: no second fetch. (Restarted, so that
    # it goes over a new connection: tern keeps one open between messages otherwise.)
    assert t.stop() == 0
    t.start()
    q2 = submit(t, ["b@sts-enforce.test"], msg("sts-enforce-2", "b@sts-enforce.test"))
    fakes["good"].wait_messages(2, tern=t)
    line = t.wait_log(rf"event=mta_sts id={q2} .*$").group(0)
    assert "source=cache" in line, line
    assert [f for f in sts.fetches[before:] if f[0] == "mta-sts.sts-enforce.test"] == \
        [("mta-sts.sts-enforce.test", "/.well-known/mta-sts.txt")], sts.fetches


def test_mta_sts_enforce_unverified_mx_defers(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@sts-bad.test"
    qid = submit(t, [rcpt], msg("sts-bad", rcpt))
    deferred_line(t, qid, rcpt, r"4\.7\.5")
    shown = show_line(t, qid, rcpt)
    assert "self-signed certificate" in shown and "MTA-STS policy of sts-bad.test" in shown, \
        shown
    assert "MAIL" not in fakes["self"].names(), fakes["self"].commands


def test_mta_sts_enforce_mx_mismatch_defers(tls_tern, fakes):
    t = tls_tern()
    rcpt = "a@sts-mismatch.test"
    qid = submit(t, [rcpt], msg("sts-mismatch", rcpt))
    deferred_line(t, qid, rcpt, r"4\.7\.5")
    assert "no MX host of sts-mismatch.test matches its MTA-STS policy" in \
        show_line(t, qid, rcpt)
    assert fakes["good"].names() == [], "connected to an MX the policy does not allow"


def test_mta_sts_testing_logs_and_delivers(tls_tern, fakes):
    t = tls_tern()
    qid = submit(t, ["a@sts-testing.test"], msg("sts-testing", "a@sts-testing.test"))
    fakes["self"].wait_messages(1, tern=t)
    t.wait_log(rf"event=mta_sts_testing id={qid} domain=sts-testing\.test "
               r"mx=mx-self\.tls\.test would_fail=")
    line = t.wait_log(rf"event=mta_sts_testing id={qid} domain=sts-testing\.test "
                      r"relay=.*$").group(0)
    assert "certificate not verified (self-signed certificate" in line, line
    t.wait_log(rf"event=delivered id={qid}\b")


# --------------------------------------------------------------------------
# smtps:// (implicit TLS, RFC 8314)


def test_smtps_route_speaks_tls_from_the_first_byte(tls_tern, fakes):
    # The server greets only inside TLS. Before, tern waited in clear for a greeting that
    # never came (it spoke STARTTLS's way to an implicit-TLS port) and the mail waited.
    t = tls_tern()
    qid = submit(t, ["a@smtps.test"], msg("smtps", "a@smtps.test"))
    got = fakes["smtps"].wait_messages(1, tern=t)
    assert b"body of smtps" in got[0][2]
    line = t.wait_log(rf"event=tls id={qid} relay=mx-smtps\.tls\.test .*$").group(0)
    assert "tls_verify=verified" in line and "level=verify" in line, line
    assert "STARTTLS" not in fakes["smtps"].names()
    t.wait_log(rf"event=delivered id={qid}\b")
    wait_queue_empty(t)
