"""Submission (issue 8, items 3 and 4): a listener with profile "submission" is for people's
mail programs. AUTH is offered only inside TLS (538 5.7.11 before, unless
auth.allow_plaintext), MAIL needs AUTH (530 5.7.0), a logged-in user may relay to any domain
and send only as the addresses it owns (553 5.7.1), Received says ESMTPSA, MAIL's AUTH= is
believed only from a logged-in client. Real clients log in with every mechanism: swaks
(PLAIN, LOGIN, CRAM-MD5), smtplib, SCRAM-SHA-256 computed here with hashlib over a TLS
socket, XOAUTH2 and OAUTHBEARER with JWTs signed here (PyJWT) against a JWKS file. Failures
get 535 5.7.8 after the throttle's delay, then 454 4.7.0 and 421 4.7.0; each is logged as
one event=auth_failed line, which the shipped fail2ban filter matches.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import jwt  # python3-jwt, with python3-cryptography for RS256 and ES256
import pytest

from conftest import (REPO, Client, Raw, dot_stuff, expect, free_port, make_message,
                      make_tmpdir)
from remote_harness import mx, remote_tern, world  # noqa: F401 (fixtures)

# remote_harness's smarthost fake requires AUTH without TLS on purpose (loopback).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

ALICE, BOB = "alice@example.test", "bob@example.test"
PASSWORD = "secret-pw"  # what conftest's Tern.user_add gives every user
ISSUER, AUDIENCE = "https://id.example.test/", "tern-submission"
FAIL2BAN_FILTER = REPO / "contrib" / "fail2ban" / "tern-auth.conf"


# --------------------------------------------------------------------------
# the world: a certificate, users with each kind of stored secret, OAuth keys


@pytest.fixture(scope="module")
def certs():
    d = make_tmpdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True, timeout=60)
    yield {"cert_file": str(cert), "key_file": str(key)}
    shutil.rmtree(d, ignore_errors=True)


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the self-signed test certificate
    return ctx


def scram_stored(password, salt=b"tern-test-salt!!", iterations=4096):
    """Dovecot's {SCRAM-SHA-256} form (iterations,salt,StoredKey,ServerKey), from hashlib."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b = lambda x: base64.b64encode(x).decode()  # noqa: E731
    return (f"{{SCRAM-SHA-256}}{iterations},{b(salt)},{b(hashlib.sha256(client_key).digest())},"
            f"{b(server_key)}")


# Stored secrets written into the users file as they are. The {CRAM-MD5} value is
# Dovecot's `doveadm pw -s CRAM-MD5 -p tanstaaftanstaaf` (the RFC 2195 password), as in
# tests/data/sasl/SOURCE.md.
EXTRA_USERS = {
    "carol@example.test": ("{PLAIN}carol-pw", "carol-pw"),
    "cram@example.test": ("{CRAM-MD5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b",
                          "tanstaaftanstaaf"),
    "scram@example.test": (scram_stored("pencil"), "pencil"),
}


def submission(tern_factory, certs, extra=None, start=True, tls=True):
    """A tern with its usual mx listener and a submission listener (t.sub_port); users alice
    and bob (crypt), carol ({PLAIN}), cram ({CRAM-MD5}), scram ({SCRAM-SHA-256})."""
    sub_port = free_port()
    cfg = {"listen": {"sub": {"address": f"127.0.0.1:{sub_port}", "profile": "submission"}},
           "auth": {"throttle": {"delay": Raw("100ms")}}}
    if tls:
        cfg["tls"] = certs
    t = tern_factory(deep_merge_all(cfg, extra or {}), start=False)
    t.sub_port = sub_port
    with open(t.data_dir / "users", "a") as f:
        for addr, (stored, _) in EXTRA_USERS.items():
            f.write(f"{addr}:{stored}\n")
    if start:
        t.start()
    return t


def deep_merge_all(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge_all(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                                  dict) else v
    return out


class Sub(Client):
    """A raw client of the submission listener that can STARTTLS."""

    def starttls(self):
        expect(self.cmd("STARTTLS"), 220, "2.0.0")
        self.sock = tls_context().wrap_socket(self.sock, server_hostname="mx.example.test")
        self.buf = b""

    def login(self, user=ALICE, password=PASSWORD):
        raw = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {raw}")


def sub_client(t, tls=True, login=None, **kw):
    c = Sub(t.sub_port, **kw)
    t.clients.append(c)
    c.ehlo()
    if tls:
        c.starttls()
        c.ehlo()
    if login:
        expect(c.login(*login), 235, "2.7.0")
    return c


def ehlo_keywords(reply):
    return [ln.upper() for ln in reply.texts[1:]]


def auth_keyword(reply):
    kws = [k for k in ehlo_keywords(reply) if k.startswith("AUTH ")]
    return kws[0].split()[1:] if kws else None


def send(c, mail_from, rcpts, subject, params=""):
    expect(c.cmd(f"MAIL FROM:<{mail_from}>{(' ' + params) if params else ''}"), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(dot_stuff(make_message(subject, frm=mail_from, to=rcpts[0])) + b".\r\n")
    return expect(c.reply(), 250, "2.0.0").queue_id()


def received_header(data):
    """Our Received header (the first one after Return-Path and Delivered-To), unfolded."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    m = re.search(r"^Received: .*?(?=\n\S)", text, re.M | re.S)
    assert m, text[:500]
    return re.sub(r"\n[ \t]+", " ", m.group(0))


# --------------------------------------------------------------------------
# TLS first, AUTH next, then MAIL


def test_auth_only_inside_tls_and_mail_only_after_auth(tern_factory, certs):
    t = submission(tern_factory, certs)
    c = sub_client(t, tls=False)
    r = c.ehlo()
    assert "STARTTLS" in ehlo_keywords(r), r
    assert auth_keyword(r) is None, f"AUTH offered before TLS: {r!r}"
    # tried anyway: 538 (RFC 4954 §4), and the password was never looked at
    expect(c.login(), 538, "5.7.11")
    assert "Encryption required" in c.cmd("AUTH LOGIN").text
    expect(c.cmd(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")
    assert not t.log_lines("event=auth ", "client=127.0.0.1")
    c.starttls()
    r = c.ehlo()
    assert auth_keyword(r) == ["PLAIN", "LOGIN"], r
    assert "STARTTLS" not in ehlo_keywords(r)
    # inside TLS, still no MAIL before AUTH (relay.networks included: 127.0.0.1 is in
    # the default, and the submission listener asks everyone)
    r = expect(c.cmd(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")
    assert "Authentication required" in r.text
    expect(c.cmd(f"RCPT TO:<{BOB}>"), 503, "5.5.1")
    expect(c.login(), 235, "2.7.0")
    expect(c.cmd(f"MAIL FROM:<{ALICE}>"), 250, "2.1.0")
    expect(c.cmd("QUIT"), 221)
    t.wait_log(r"event=auth sess=\S+ client=127\.0\.0\.1 user=alice@example\.test "
               r"mechanism=PLAIN")
    # the mx listener is unchanged: no AUTH there
    with t.client() as m:
        r = m.ehlo()
        assert auth_keyword(r) is None
        expect(m.cmd("AUTH PLAIN AGFsaWNlAHB3"), 502, "5.5.1")


def test_allow_plaintext_offers_auth_without_tls_and_warns(tern_factory, certs):
    t = submission(tern_factory, certs, {"auth": {"allow_plaintext": True}}, tls=False)
    c = sub_client(t, tls=False)
    r = c.ehlo()
    assert auth_keyword(r) == ["PLAIN", "LOGIN"], r
    expect(c.login(), 235, "2.7.0")
    send(c, ALICE, [BOB], "plaintext-auth")
    (_, data), = t.wait_mail_with(BOB, "plaintext-auth")
    assert "with ESMTPA id" in received_header(data), received_header(data)
    assert t.log_lines("event=config_warning", "key=auth.allow_plaintext"), t.log_tail()


def test_smtplib_starttls_login_delivers_with_esmtpsa(tern_factory, certs):
    t = submission(tern_factory, certs)
    with smtplib.SMTP("127.0.0.1", t.sub_port, timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("auth")
        s.starttls(context=tls_context())
        s.ehlo()
        assert s.has_extn("auth")
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, [BOB], make_message("smtplib-submission", frm=ALICE, to=BOB))
    (_, data), = t.wait_mail_with(BOB, "smtplib-submission")
    rec = received_header(data)
    assert "with ESMTPSA id" in rec, rec
    # as Postfix by default: the Received header does not name the login
    assert "alice" not in rec.lower() and "Authenticated" not in rec, rec
    t.wait_log(r"event=queued .* from=<alice@example\.test> .* user=alice@example\.test")


def test_received_header_names_the_user_when_configured(tern_factory, certs):
    t = submission(tern_factory, certs, {"auth": {"received_header_user": True}})
    c = sub_client(t, login=(ALICE, PASSWORD))
    send(c, ALICE, [BOB], "named-in-received")
    (_, data), = t.wait_mail_with(BOB, "named-in-received")
    rec = received_header(data)
    assert "(Authenticated sender: alice@example.test)" in rec and "ESMTPSA" in rec, rec


# --------------------------------------------------------------------------
# every mechanism, with a real client


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
@pytest.mark.parametrize("mech,user", [
    ("PLAIN", ALICE), ("LOGIN", ALICE), ("PLAIN", "carol@example.test"),
    ("CRAM-MD5", "carol@example.test"), ("CRAM-MD5", "cram@example.test"),
    ("LOGIN", "scram@example.test"),
])
def test_swaks_auth(tern_factory, certs, mech, user):
    t = submission(tern_factory, certs,
                   {"auth": {"mechanisms": ["PLAIN", "LOGIN", "CRAM-MD5"]}})
    password = EXTRA_USERS[user][1] if user in EXTRA_USERS else PASSWORD
    subject = f"swaks-{mech}-{user.split('@')[0]}"
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{t.sub_port}", "--tls",
                        "--auth", mech, "--auth-user", user, "--auth-password", password,
                        "--from", user, "--to", BOB, "--header", f"Subject: {subject}",
                        "--timeout", "10"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0" in r.stdout, r.stdout
    t.wait_mail_with(BOB, subject)
    t.wait_log(rf"event=auth .*user={re.escape(user)} mechanism={mech}\b")


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_cram_md5_refused_for_a_crypt_user(tern_factory, certs):
    """A crypt hash cannot answer a challenge: CRAM-MD5 fails for alice (and says why in the
    log), PLAIN still works."""
    t = submission(tern_factory, certs, {"auth": {"mechanisms": ["PLAIN", "CRAM-MD5"]}})
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{t.sub_port}", "--tls",
                        "--auth", "CRAM-MD5", "--auth-user", ALICE, "--auth-password",
                        PASSWORD, "--from", ALICE, "--to", BOB, "--timeout", "10"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "535 5.7.8" in r.stdout, r.stdout
    t.wait_log(r"event=auth_failed .*mechanism=CRAM-MD5 user=alice@example\.test")


def scram_login(c, user, password, nonce=None):
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) as a client, over c; returns the last reply."""
    b64 = lambda x: base64.b64encode(x).decode()  # noqa: E731
    cnonce = nonce or b64(os.urandom(18))
    gs2 = "n,,"
    first_bare = f"n={user},r={cnonce}"
    r = expect(c.cmd("AUTH SCRAM-SHA-256 " + b64((gs2 + first_bare).encode())), 334)
    server_first = base64.b64decode(r.text).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert attrs["r"].startswith(cnonce) and len(attrs["r"]) > len(cnonce), server_first
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    final_wo_proof = f"c={b64(gs2.encode())},r={attrs['r']}"
    auth_msg = f"{first_bare},{server_first},{final_wo_proof}".encode()
    sig = hmac.new(hashlib.sha256(client_key).digest(), auth_msg, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    r = c.cmd(b64(f"{final_wo_proof},p={b64(proof)}".encode()))
    if r.code != 334:
        return r
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    want = "v=" + b64(hmac.new(server_key, auth_msg, hashlib.sha256).digest())
    assert base64.b64decode(r.text).decode() == want, "the server's signature is wrong"
    return c.cmd("")


@pytest.mark.parametrize("user", ["scram@example.test", "carol@example.test"])
def test_scram_sha256(tern_factory, certs, user):
    """With Dovecot's {SCRAM-SHA-256} form (no cleartext stored) and with {PLAIN}."""
    t = submission(tern_factory, certs, {"auth": {"mechanisms": ["SCRAM-SHA-256", "PLAIN"]}})
    c = sub_client(t)
    assert auth_keyword(c.ehlo()) == ["PLAIN", "SCRAM-SHA-256"]
    expect(scram_login(c, user, EXTRA_USERS[user][1]), 235, "2.7.0")
    send(c, user, [BOB], f"scram-{user}")
    t.wait_mail_with(BOB, f"scram-{user}")
    # a wrong password: the proof does not verify
    c2 = sub_client(t)
    expect(scram_login(c2, user, "wrong"), 535, "5.7.8")
    t.wait_log(r"event=auth_failed .*mechanism=SCRAM-SHA-256 user=\S+ reason=\"wrong password")


# --------------------------------------------------------------------------
# OAuth 2.0 bearer tokens


class Issuer:
    """Signs JWT access tokens (RS256 and ES256) and writes their JWKS file."""

    def __init__(self, path):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        self.path = Path(path)
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.write()

    def jwk(self, key, kid, alg):
        b64u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
        pub = key.public_key().public_numbers()
        if alg == "RS256":
            n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
            d = {"kty": "RSA", "n": b64u(n), "e": b64u(pub.e.to_bytes(3, "big"))}
        else:
            # RFC 7518 §6.2.1.2: each coordinate the full 32 bytes of P-256, leading zeros
            # kept (PyJWT 2.6's to_jwk drops them, 1 key in 128, and tern rightly refuses)
            d = {"kty": "EC", "crv": "P-256", "x": b64u(pub.x.to_bytes(32, "big")),
                 "y": b64u(pub.y.to_bytes(32, "big"))}
        d.update(kid=kid, alg=alg, use="sig")
        return d

    def write(self):
        keys = [self.jwk(self.rsa, "rsa-1", "RS256"), self.jwk(self.ec, "ec-1", "ES256")]
        self.path.write_text(json.dumps({"keys": keys}))

    def rotate(self):
        from cryptography.hazmat.primitives.asymmetric import rsa
        self.old_rsa = self.rsa
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.write()

    def token(self, email=ALICE, alg="RS256", key=None, pad=0, **over):
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300,
                  "email": email, "sub": "user-1"}
        if pad:
            claims["padding"] = "x" * pad  # a token longer than a command line may be
        claims.update(over)
        if alg == "RS256":
            return jwt.encode(claims, key or self.rsa, algorithm="RS256",
                              headers={"kid": "rsa-1"})
        return jwt.encode(claims, self.ec, algorithm="ES256", headers={"kid": "ec-1"})


@pytest.fixture
def issuer(scratch):
    return Issuer(scratch / "jwks.json")


def oauth_tern(tern_factory, certs, issuer):
    return submission(tern_factory, certs, {"auth": {"oauth": {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(issuer.path)}}})


def xoauth2(user, token):
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def oauthbearer(user, token):
    return base64.b64encode(f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode()).decode()


def test_oauth_mechanisms_with_jwts(tern_factory, certs, issuer):
    t = oauth_tern(tern_factory, certs, issuer)
    c = sub_client(t)
    assert auth_keyword(c.ehlo()) == ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"]
    # XOAUTH2 (Google's form), RS256; a token with a big claim makes the AUTH line longer
    # than limits.max_line_length (2048): RFC 4954 allows 12288
    tok = issuer.token(pad=3000)
    line = f"AUTH XOAUTH2 {xoauth2(ALICE, tok)}"
    assert len(line) > 4000
    expect(c.cmd(line), 235, "2.7.0")
    send(c, ALICE, [BOB], "via-xoauth2")
    t.wait_mail_with(BOB, "via-xoauth2")
    t.wait_log(r"event=auth .*user=alice@example\.test mechanism=XOAUTH2")
    # OAUTHBEARER (RFC 7628), ES256, the response on its own line after a 334
    c = sub_client(t)
    expect(c.cmd("AUTH OAUTHBEARER"), 334)
    expect(c.cmd(oauthbearer(BOB, issuer.token(email=BOB, alg="ES256"))), 235, "2.7.0")
    send(c, BOB, [ALICE], "via-oauthbearer")
    t.wait_mail_with(ALICE, "via-oauthbearer")


@pytest.mark.parametrize("why,over,reason", [
    ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200,
                 "nbf": int(time.time()) - 7200}, "expired"),
    ("wrong audience", {"aud": "someone-else"}, "audience"),
    ("wrong issuer", {"iss": "https://evil.example/"}, "issuer"),
])
def test_oauth_refused_tokens(tern_factory, certs, issuer, why, over, reason):
    t = oauth_tern(tern_factory, certs, issuer)
    c = sub_client(t)
    # RFC 7628 §3.2.2: the error status comes as a challenge, the client's dummy
    # answer ends it with 535
    r = expect(c.cmd(f"AUTH OAUTHBEARER {oauthbearer(ALICE, issuer.token(**over))}"), 334)
    status = json.loads(base64.b64decode(r.text))
    assert status.get("status") == "invalid_token", status
    expect(c.cmd(base64.b64encode(b"\x01").decode()), 535, "5.7.8")
    t.wait_log(rf"event=auth_failed .*mechanism=OAUTHBEARER .*reason=\"?[^\"]*{reason}")
    expect(c.cmd(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")


def test_sighup_reloads_oauth_keys(tern_factory, certs, issuer):
    t = oauth_tern(tern_factory, certs, issuer)
    old = issuer.token()
    issuer.rotate()
    t.signal(signal.SIGHUP)
    t.wait_log(r"event=reloaded .*oauth_keys=2")
    c = sub_client(t)
    expect(c.cmd(f"AUTH XOAUTH2 {xoauth2(ALICE, old)}"), 334)  # signed by the old key
    expect(c.cmd(""), 535, "5.7.8")
    expect(c.cmd(f"AUTH XOAUTH2 {xoauth2(ALICE, issuer.token())}"), 235, "2.7.0")


# --------------------------------------------------------------------------
# failures: a delay, a log line, a cancel


def test_wrong_password_gets_535_after_the_delay_and_one_log_line(tern_factory, certs):
    t = submission(tern_factory, certs, {"auth": {"throttle": {"delay": Raw("1s")}}})
    c = sub_client(t)
    start = time.monotonic()
    r = c.login(ALICE, "not-the-password")
    elapsed = time.monotonic() - start
    expect(r, 535, "5.7.8")
    assert "Authentication credentials invalid" in r.text
    # the reply waited for the throttle's timer (a lower bound: never sooner)
    assert elapsed >= 0.9, f"535 after {elapsed:.3f}s, before the 1s delay"
    lines = t.log_lines("event=auth_failed")
    assert len(lines) == 1, lines
    assert re.search(r"event=auth_failed sess=\d+\.\d+ client=127\.0\.0\.1 mechanism=PLAIN "
                     r"user=alice@example\.test reason=\"wrong password\" failures=1 "
                     r"delay_ms=1000$", lines[0]), lines[0]
    assert "not-the-password" not in t.log()
    # the session goes on: the right password now
    expect(c.login(), 235, "2.7.0")


def test_unknown_user_and_the_quoted_login(tern_factory, certs):
    t = submission(tern_factory, certs)
    c = sub_client(t)
    expect(c.login("nobody@example.test", "x"), 535, "5.7.8")
    t.wait_log(r"event=auth_failed .*user=nobody@example\.test reason=\"unknown user\"")
    # a login with spaces, quotes and a forged field is quoted, never a second field
    expect(c.login('evil" client=6.6.6.6 x="', "x"), 535, "5.7.8")
    t.wait_log(r"event=auth_failed .*6\.6\.6\.6")
    lines = t.log_lines("event=auth_failed", "6.6.6.6")
    assert len(lines) == 1 and " client=127.0.0.1 " in lines[0], lines
    assert re.search(r'user="evil\\x22 client=6\.6\.6\.6 x=\\x22"', lines[0]), lines[0]


def test_cancelled_and_malformed_auth(tern_factory, certs):
    t = submission(tern_factory, certs)
    c = sub_client(t)
    r = expect(c.cmd("AUTH LOGIN"), 334)
    assert base64.b64decode(r.text) == b"Username:"
    expect(c.cmd("*"), 501, "5.7.0")
    expect(c.cmd("AUTH PLAIN"), 334)
    expect(c.cmd("not base64!"), 501, "5.5.2")
    expect(c.cmd("AUTH DIGEST-MD5"), 504, "5.5.4")
    # CRAM-MD5 is not in the default list (clients try it first and crypt users fail it)
    assert "offered: PLAIN LOGIN" in c.cmd("AUTH CRAM-MD5").text
    expect(c.cmd("NOOP"), 250)
    expect(c.login(), 235, "2.7.0")
    expect(c.cmd("AUTH PLAIN"), 503, "5.5.1")  # once per session
    assert t.log_lines("event=auth_failed", "reason=\"cancelled by the client\"")


def test_clients_that_leave_while_their_password_is_checked(tern_factory, certs):
    """The session waits for the pool (crypt) with reading off: a client that sends AUTH and
    hangs up at once, or sends commands behind it, leaves nothing dangling (the sanitizers
    would say) and the server goes on serving."""
    t = submission(tern_factory, certs, {"auth": {"allow_plaintext": True}})
    raw = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    bad = base64.b64encode(f"\0{ALICE}\0wrong".encode()).decode()
    for i in range(12):
        c = Sub(t.sub_port)
        c.ehlo()
        # a wrong password waits out a delay; a right one waits for crypt
        c.send(f"AUTH PLAIN {raw if i % 2 else bad}\r\nMAIL FROM:<{ALICE}>\r\nNOOP\r\n")
        c.close()
    c = sub_client(t, tls=False)
    # pipelined behind AUTH: read only once the check is done, in order
    c.send(f"AUTH PLAIN {raw}\r\nMAIL FROM:<{ALICE}>\r\n")
    expect(c.reply(), 235, "2.7.0")
    expect(c.reply(), 250, "2.1.0")
    t.wait_log(r"event=disconnect .*sess=")
    assert t.proc.poll() is None


# --------------------------------------------------------------------------
# the throttle


def test_throttle_blocks_the_address_454_then_421(tern_factory, certs):
    t = submission(tern_factory, certs, {"auth": {"throttle": {
        "delay": Raw("0s"), "addr_block_after": 3, "user_block_after": 100}}})
    c = sub_client(t)
    expect(c.login(ALICE, "bad-1"), 535, "5.7.8")
    expect(c.login(BOB, "bad-2"), 535, "5.7.8")
    r = expect(c.login(ALICE, "bad-3"), 454, "4.7.0")  # the one that blocks
    assert "Too many failed logins" in r.text
    # the address is blocked now: AUTH is answered 421 and the connection closed, even
    # with the right password
    r = expect(c.login(), 421, "4.7.0")
    assert "from your address" in r.text
    assert c.closed_by_peer()
    c2 = sub_client(t)
    expect(c2.login(), 421, "4.7.0")
    # another address is not concerned
    c3 = sub_client(t, source="127.0.0.2")
    expect(c3.login(), 235, "2.7.0")
    assert len(t.log_lines("event=auth_failed", "throttled: addr=127.0.0.1")) == 2, t.log_tail()


def test_throttle_blocks_a_user_from_every_address(tern_factory, certs):
    t = submission(tern_factory, certs, {"auth": {"throttle": {
        "delay": Raw("0s"), "addr_block_after": 100, "user_block_after": 2}}})
    c = sub_client(t, source="127.0.0.3")
    expect(c.login(BOB, "guess-1"), 535, "5.7.8")
    expect(c.login(BOB, "guess-2"), 454, "4.7.0")
    # bob is blocked from everywhere, even with his password; the session goes on
    c2 = sub_client(t, source="127.0.0.4")
    expect(c2.login(BOB, PASSWORD), 454, "4.7.0")
    expect(c2.login(ALICE, PASSWORD), 235, "2.7.0")
    t.wait_log(r"event=auth_failed .*user=bob@example\.test reason=\"throttled: user=")


# --------------------------------------------------------------------------
# who may send what


@pytest.fixture
def senders_tern(tern_factory, certs):
    return submission(tern_factory, certs, {
        "senders": {ALICE: ["sales@example.test", "@example.net"]},
    })


@pytest.mark.parametrize("sender,ok", [
    (ALICE, True),
    ("ALICE@Example.Test", True),
    ("team@example.test", True),      # an alias that reaches alice (conftest: alice, bob)
    ("postmaster@example.test", True),  # alias -> alice
    ("alice+lists@example.test", True),  # recipient_delimiter: a tag of her own
    ("sales@example.test", True),     # senders map: an address
    ("anyone@example.net", True),     # senders map: "@domain"
    (BOB, False),
    ("someone@example.org", False),
    ("x@sub.example.net", False),
    ("", True),                       # the null sender: bounces and receipts from clients
])
def test_sender_ownership(senders_tern, sender, ok):
    c = sub_client(senders_tern, login=(ALICE, PASSWORD))
    r = c.cmd(f"MAIL FROM:<{sender}>")
    if ok:
        expect(r, 250, "2.1.0")
    else:
        expect(r, 553, "5.7.1")
        assert r.text.endswith("Sender address not owned by user alice@example.test"), r
        senders_tern.wait_log(r"event=rejected .*user=alice@example\.test .*code=553 "
                              r"reason=sender-not-owned")


def test_bob_owns_only_his_own(senders_tern):
    c = sub_client(senders_tern, login=(BOB, PASSWORD))
    expect(c.cmd("MAIL FROM:<sales@example.test>"), 553, "5.7.1")  # alice's, not bob's
    expect(c.cmd("MAIL FROM:<team@example.test>"), 250, "2.1.0")  # reaches bob too


def test_sighup_reloads_senders(tern_factory, certs):
    t = submission(tern_factory, certs)
    c = sub_client(t, login=(ALICE, PASSWORD))
    expect(c.cmd("MAIL FROM:<news@example.test>"), 553, "5.7.1")
    t.config["senders"] = {ALICE: "news@example.test"}
    t.write_config()
    t.signal(signal.SIGHUP)
    t.wait_log(r"event=reloaded .*senders=1")
    c = sub_client(t, login=(ALICE, PASSWORD))
    expect(c.cmd("MAIL FROM:<news@example.test>"), 250, "2.1.0")


def test_mail_auth_parameter(tern_factory, certs):
    """RFC 4954 §5: AUTH= is believed from a logged-in client (recorded with the message),
    and is no parameter at all where AUTH is not offered."""
    t = submission(tern_factory, certs)
    c = sub_client(t, login=(ALICE, PASSWORD))
    qid = send(c, ALICE, [BOB], "auth-param", params="AUTH=alice+2Bapp@example.test")
    t.wait_log(rf"event=queued id={qid} .*user=alice@example\.test "
               r"auth=<alice\+app@example\.test>")
    send(c, ALICE, [BOB], "auth-param-empty", params="AUTH=<>")
    with t.client() as m:  # the mx listener offers no AUTH
        m.ehlo()
        expect(m.cmd(f"MAIL FROM:<{ALICE}> AUTH=<>"), 555, "5.5.4")


# --------------------------------------------------------------------------
# relaying: only after AUTH (DESIGN §5.2), to a fake MX of remote_harness


def test_relay_to_a_remote_domain_only_after_auth(remote_tern, mx, certs):  # noqa: F811
    sub_port = free_port()
    t = remote_tern({
        "relay": {"networks": []},  # nobody is trusted without a login
        "listen": {"sub": {"address": f"127.0.0.1:{sub_port}", "profile": "submission"}},
        "tls": certs,
    })
    t.sub_port = sub_port
    # the mx listener: no relaying for an unauthenticated client
    with t.client() as m:
        m.ehlo()
        expect(m.cmd("MAIL FROM:<someone@example.org>"), 250)
        r = expect(m.cmd("RCPT TO:<friend@ok.test>"), 550, "5.7.1")
        assert "Relay access denied" in r.text
    # the submission listener without AUTH: not even MAIL
    c = sub_client(t)
    expect(c.cmd(f"MAIL FROM:<{ALICE}>"), 530, "5.7.0")
    # after AUTH: relayed, and delivered by the fake MX of ok.test
    expect(c.login(ALICE, PASSWORD), 235, "2.7.0")
    send(c, ALICE, ["friend@ok.test"], "relayed-after-auth")
    m = mx["ok"].wait_messages(1, tern=t)[0]
    assert m.mail_from == ALICE and m.rcpt_tos == ["friend@ok.test"]
    assert b"Subject: relayed-after-auth" in m.content
    assert b"with ESMTPSA id" in m.content


# --------------------------------------------------------------------------
# fail2ban


@pytest.mark.skipif(not shutil.which("fail2ban-regex"), reason="fail2ban not installed")
def test_fail2ban_filter_matches_the_auth_failed_lines(tern_factory, certs, scratch):
    t = submission(tern_factory, certs, {"auth": {"throttle": {"delay": Raw("0s")}}})
    c = sub_client(t)
    expect(c.login(ALICE, "wrong"), 535)
    expect(c.login('x" client=6.6.6.6 y="', "wrong"), 535)
    c2 = sub_client(t, source="127.0.0.5")
    expect(c2.cmd("AUTH LOGIN"), 334)
    expect(c2.cmd(base64.b64encode(b"bob@example.test").decode()), 334)
    expect(c2.cmd(base64.b64encode(b"nope").decode()), 535)
    expect(c2.login(), 235)  # a success is not a failure
    t.wait_log(r"event=auth_failed .*client=127\.0\.0\.5")
    log = scratch / "tern.log"
    log.write_text(t.log())
    hosts = fail2ban_hosts(log)
    assert hosts == {"127.0.0.1": 2, "127.0.0.5": 1}, hosts


# What operators' logs look like: tern's stderr in a file, and the same lines through syslog.
# The forged client= is inside a quoted login; the last two lines are not failures.
SAMPLE_LOG = """\
2026-12-01T10:00:00.123Z info event=connect sess=0.7 client=192.0.2.7
2026-12-01T10:00:01.123Z warn event=auth_failed sess=0.7 client=192.0.2.7 mechanism=PLAIN \
user=alice@example.org reason="wrong password" failures=1 delay_ms=1000
2026-12-01T10:00:02.456Z warn event=auth_failed sess=1.9 client=2001:db8::25 mechanism=LOGIN \
user="x\\x22 client=6.6.6.6 y=\\x22" reason="unknown user" failures=2 delay_ms=2000
Dec  1 10:00:04 mx tern[4242]: 2026-12-01T10:00:04.000Z warn event=auth_failed sess=2.1 \
client=198.51.100.9 mechanism=XOAUTH2 user="" reason="throttled: addr=198.51.100.9 \
failures=10 blocked_for=900s"
2026-12-01T10:00:05.000Z info event=auth sess=0.7 client=192.0.2.7 user=alice@example.org \
mechanism=PLAIN
2026-12-01T10:00:06.000Z info event=auth_refused sess=0.8 client=192.0.2.8 reason=tls-required
"""


@pytest.mark.skipif(not shutil.which("fail2ban-regex"), reason="fail2ban not installed")
def test_fail2ban_filter_on_sample_lines(scratch):
    log = scratch / "sample.log"
    log.write_text(SAMPLE_LOG)
    hosts = fail2ban_hosts(log)
    assert hosts == {"192.0.2.7": 1, "2001:db8::25": 1, "198.51.100.9": 1}, hosts


def fail2ban_hosts(logfile):
    """{address: failures} as fail2ban-regex finds them with the shipped filter."""
    r = subprocess.run(["fail2ban-regex", "-v", str(logfile), str(FAIL2BAN_FILTER)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    hosts = {}
    for m in re.finditer(r"^\|\s+(\S+)\s+\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\s*$", r.stdout,
                         re.M):
        hosts[m.group(1)] = hosts.get(m.group(1), 0) + 1
    m = re.search(r"^Lines: \d+ lines, \d+ ignored, (\d+) matched", r.stdout, re.M)
    assert m and int(m.group(1)) == sum(hosts.values()), r.stdout
    return hosts
