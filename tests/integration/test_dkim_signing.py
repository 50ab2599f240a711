"""
test_dkim_signing.py — tern DKIM-signs the mail it takes in from its own users (issue 9
item 1) and carries MAIL's AUTH= to the next hop (issue 8 item 3), checked as a receiver
would: dkimpy (python3-dkim) verifies every signature of what arrives (the key records
come from `tern dkim dns`), OpenDKIM (opendkim-tools' opendkim -t) verifies the RSA one.

Paths covered: submission over STARTTLS with AUTH (to a local mailbox and to a fake
relayhost that advertises AUTH and records MAIL's parameters), `tern sendmail`; and what
is not signed: unauthenticated mx mail, a From domain without a key, a message with two
From fields; a key that does not load refuses the message with 451 4.3.0, nothing stored.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import base64
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time

import pytest

from conftest import Client, Raw, dot_stuff, expect, free_port, make_tmpdir, tern_bin

dkim = pytest.importorskip("dkim")  # python3-dkim, in scripts/install-deps

ALICE = "alice@example.test"
PASSWORD = "secret-pw"
RELAY_USER = "relayuser"
RELAY_PASSWORD = "s3cret-relay-Pw!"
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
DEADLINE = 20.0


def message(subject, frm=ALICE, to="friend@remote.test", extra=""):
    return (f"From: Alice <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{subject}@example.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\r\n"
            f"Hello  there,\r\n\r\nsigned at receipt.  \r\n").encode()


# --------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def keys():
    """Keys for example.test (RSA 2048 and Ed25519) and their records, from tern itself."""
    d = make_tmpdir("tern-dkimsign-keys-")
    out = {}
    for sel, typ in (("rsa1", "rsa"), ("ed1", "ed25519")):
        r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test",
                            sel, "--type", typ], cwd=d, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out[sel] = d / f"example.test.{sel}.key"
    yield d, out
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def certs():
    d = make_tmpdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True, timeout=60)
    yield {"cert_file": str(cert), "key_file": str(key)}
    shutil.rmtree(d, ignore_errors=True)


class Relay:
    """A fake relayhost (aiosmtpd) that requires AUTH, takes MAIL's AUTH= parameter and
    records every message with its MAIL parameters."""

    def __init__(self):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

        self.port = free_port()
        self.lock = threading.Lock()
        self.messages = []
        relay = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with relay.lock:
                    relay.messages.append({
                        "mail_from": envelope.mail_from,
                        "rcpt_tos": list(envelope.rcpt_tos),
                        "mail_options": list(envelope.mail_options),
                        "content": bytes(envelope.original_content or b""),
                    })
                return "250 2.0.0 OK queued"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login == RELAY_USER.encode()
                  and auth_data.password == RELAY_PASSWORD.encode())
            return AuthResult(success=ok, handled=False)

        class AuthParamSMTP(SMTP):
            """aiosmtpd refuses unknown MAIL parameters; AUTH= (RFC 4954 §5) is taken."""

            def _getparams(self, params):
                r = super()._getparams(params)
                if r is not None:
                    r.pop("AUTH", None)
                return r

        class Ctl(Controller):
            def factory(self):
                return AuthParamSMTP(self.handler, **self.SMTP_kwargs)

        self.ctl = Ctl(Handler(), hostname="127.0.0.1", port=self.port, ready_timeout=10,
                       authenticator=authenticator, auth_required=True,
                       auth_require_tls=False, server_hostname="relay.test")
        self.ctl.start()

    def wait(self, count=1, tern=None):
        deadline = time.monotonic() + DEADLINE
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                pytest.fail(f"relay: {len(self.messages)}/{count} messages\n"
                            + (tern.log_tail() if tern else ""))
            time.sleep(0.05)

    def stop(self):
        self.ctl.stop()


@pytest.fixture
def relay():
    r = Relay()
    yield r
    r.stop()


def signing_tern(tern_factory, certs, keys, relay=None, extra=None, key_list=None):
    """A tern with an mx listener, a submission listener (t.sub_port) and the example.test
    keys; mail for remote.test goes to the fake relay."""
    keydir, paths = keys
    sub_port = free_port()
    kl = key_list or [
        {"domain": "example.test", "selector": "rsa1", "key_file": str(paths["rsa1"])},
        {"domain": "example.test", "selector": "ed1", "key_file": str(paths["ed1"])},
    ]
    cfg = {
        "listen": {"sub": {"address": f"127.0.0.1:{sub_port}", "profile": "submission"}},
        "auth": {"throttle": {"delay": Raw("0s")}},
        "tls": certs,
        "dkim": {"keys": Raw("[" + ", ".join(
            f'{{ domain = "{k["domain"]}"; selector = "{k["selector"]}"; '
            f'key_file = "{k["key_file"]}"; }}' for k in kl) + "]")},
    }
    if relay:
        pw = make_tmpdir("tern-dkimsign-pw-") / "relay.pw"
        pw.write_text(RELAY_PASSWORD + "\n")
        os.chmod(pw, 0o600)
        cfg["routes"] = {"remote.test": {"via": f"smtp://127.0.0.1:{relay.port}",
                                         "auth_user": RELAY_USER,
                                         "auth_password_file": str(pw), "tls": "none"}}
        cfg["delivery"] = {"retry_base": 1, "retry_max": 2}
    if extra:
        for k, v in extra.items():
            cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    t = tern_factory(cfg, start=False)
    t.sub_port = sub_port
    t.start()
    return t


def records(t):
    """{name: TXT value} from `tern dkim dns` for the configured keys."""
    r = t.cli("dkim", "dns", check=True)
    out = {}
    for block in re.split(r"\n(?=\S+\._domainkey\.)", r.stdout.strip()):
        m = re.match(r"(\S+?)\.?\s+IN\s+TXT", block)
        if not m:
            continue
        out[m.group(1).lower()] = "".join(re.findall(r'"([^"]*)"', block))
    assert out, r.stdout
    return out


def dnsfunc(recs):
    def f(name, timeout=5):
        return recs.get(name.decode().rstrip(".").lower(), "").encode()
    return f


def login_client(t):
    c = Client(t.sub_port)
    t.clients.append(c)
    c.ehlo()
    expect(c.cmd("STARTTLS"), 220)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")
    c.buf = b""
    c.ehlo()
    raw = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    expect(c.cmd(f"AUTH PLAIN {raw}"), 235, "2.7.0")
    return c


def send(c, rcpt, data, mail_from=ALICE, params="", code=250):
    expect(c.cmd(f"MAIL FROM:<{mail_from}>{(' ' + params) if params else ''}"), 250)
    expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send(dot_stuff(data) + b".\r\n")
    return expect(c.reply(), code)


def signatures(data):
    """The DKIM-Signature fields of a message, unfolded, as {tag: value} dicts."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.findall(r"^DKIM-Signature:(.*?)(?=\r\n\S|\Z)", head, re.M | re.S | re.I)
    out = []
    for f in fields:
        v = re.sub(r"\s+", "", f)
        out.append(dict(p.split("=", 1) for p in v.split(";") if "=" in p))
    return out


def verify_all(data, recs):
    sigs = signatures(data)
    for i in range(len(sigs)):
        d = dkim.DKIM(data)
        assert d.verify(idx=i, dnsfunc=dnsfunc(recs)), f"dkimpy, signature {i}: {sigs[i]}"
    return sigs


def opendkim_verify(work, recs, data):
    if not os.access(OPENDKIM, os.X_OK):
        pytest.skip("opendkim not installed (scripts/install-deps installs opendkim-tools)")
    table = work / "opendkim-dns.txt"
    table.write_text("".join(f"{n} {v}\n" for n, v in recs.items()))
    conf = work / "opendkim.conf"
    conf.write_text(f"Syslog no\nRequireSafeKeys no\nMode v\nTestDNSData file:{table}\n")
    msg = work / "opendkim-in.eml"
    msg.write_bytes(data)
    r = subprocess.run([OPENDKIM, "-x", conf, "-t", msg], capture_output=True, text=True,
                       timeout=30)
    return r.stdout + r.stderr


# --------------------------------------------------------------------------- signing


def test_a_login_is_not_signed_for_another_domains_from(tern_factory, certs, keys, relay):
    """tern holds keys for example.test and other.test. Alice (example.test) may sign her
    own domain and names below it, but a From of other.test written by her is sent
    unsigned: our other.test signature on it would make her forgery pass DMARC. Before
    the fix it was signed d=other.test."""
    keydir, paths = keys
    kl = [{"domain": d, "selector": "rsa1", "key_file": str(paths["rsa1"])}
          for d in ("example.test", "other.test")]
    t = signing_tern(tern_factory, certs, keys, relay, key_list=kl)
    c = login_client(t)
    forged = send(c, "friend@remote.test",
                  message("forged", frm="ceo@other.test")).queue_id()
    own_sub = send(c, "friend@remote.test",
                   message("own-sub", frm="alice@news.example.test")).queue_id()
    got = relay.wait(2, tern=t)
    by_subject = {re.search(rb"Subject: (\S+)", m["content"]).group(1): m["content"]
                  for m in got}
    assert signatures(by_subject[b"forged"]) == []
    assert [s["d"] for s in signatures(by_subject[b"own-sub"])] == ["example.test"]
    t.wait_log(rf"event=dkim_sign id={forged} dkim_sign=none from_domain=other\.test "
               r"owner=example\.test reason=from-not-owned")
    t.wait_log(rf"event=dkim_sign id={own_sub} dkim_sign=ok d=example\.test")


def test_submission_with_auth_is_signed_rsa_and_ed25519_and_both_verify(
        tern_factory, certs, keys, relay, scratch):
    t = signing_tern(tern_factory, certs, keys, relay)
    c = login_client(t)
    qid = send(c, "friend@remote.test", message("signed-1")).queue_id()
    got = relay.wait(1, tern=t)[0]
    data = got["content"]
    recs = records(t)
    sigs = verify_all(data, recs)
    assert sorted((s["a"], s["s"], s["d"]) for s in sigs) == [
        ("ed25519-sha256", "ed1", "example.test"), ("rsa-sha256", "rsa1", "example.test")]
    for s in sigs:
        assert s["c"] == "relaxed/relaxed"
        h = s["h"].lower().split(":")
        # present fields signed once plus once more (over-signed); absent ones of the
        # same kind named once, so adding one later breaks the signature
        for name in ("from", "to", "subject", "date", "message-id", "mime-version",
                     "content-type"):
            assert h.count(name) == 2, (name, h)
        for name in ("cc", "reply-to", "list-unsubscribe", "list-unsubscribe-post",
                     "content-transfer-encoding"):
            assert h.count(name) == 1, (name, h)
    # our signatures sit under our Received field, above the client's header
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.index(b"Received: ") < head.index(b"DKIM-Signature:") < head.index(b"From: ")
    t.wait_log(rf"event=dkim_sign id={qid} dkim_sign=ok d=example\.test s=rsa1,ed1 "
               r"a=rsa-sha256,ed25519-sha256")
    # OpenDKIM agrees on the RSA signature (its test mode checks the first field only)
    rsa_first = reorder_rsa_first(data)
    out = opendkim_verify(scratch, recs, rsa_first)
    assert re.search(r"verification \(s=rsa1, d=example\.test, .*\) succeeded", out), out
    # a changed body breaks both, for dkimpy
    forged = data.replace(b"signed at receipt.", b"signed at sea.")
    for i in range(2):
        try:
            ok = dkim.DKIM(forged).verify(idx=i, dnsfunc=dnsfunc(recs))
        except dkim.DKIMException:
            ok = False
        assert not ok, i


def reorder_rsa_first(data):
    """The message with the RSA DKIM-Signature field first (order does not matter to a
    verifier; OpenDKIM's -t mode reports only the first)."""
    head, body = data.split(b"\r\n\r\n", 1)
    fields = re.findall(rb"[^\r\n]+\r\n(?:[ \t][^\r\n]*\r\n)*", head + b"\r\n")
    rsa = [f for f in fields if f.lower().startswith(b"dkim-signature:") and b"rsa-sha256" in f]
    rest = [f for f in fields if f not in rsa]
    return b"".join(rsa + rest) + b"\r\n" + body


def test_local_recipient_mail_from_a_user_is_signed_too(tern_factory, certs, keys):
    t = signing_tern(tern_factory, certs, keys)
    c = login_client(t)
    send(c, "bob@example.test", message("signed-local", to="bob@example.test"))
    (_, data), = t.wait_mail_with("bob@example.test", "signed-local")
    assert len(verify_all(data, records(t))) == 2


def test_spilled_submission_is_signed_and_both_signatures_verify(tern_factory, certs, keys):
    """A 3 MiB message from a login (past the 1 MiB spill threshold: signed through the
    mapping of its spill file, hashed in pieces) is signed with both keys; dkimpy verifies
    both on what was delivered, and the sent bytes follow our fields unchanged."""
    t = signing_tern(tern_factory, certs, keys,
                     extra={"limits": {"max_message_size": Raw("8m")}})
    c = login_client(t)
    big = b"".join(b"line %07d of a long body,  with  runs \t \r\n" % i
                   for i in range(70000))
    msg = message("signed-spilled", to="bob@example.test") + big
    assert len(msg) > 3 * 1024 * 1024
    send(c, "bob@example.test", msg)
    (_, data), = t.wait_mail_with("bob@example.test", "signed-spilled", timeout=DEADLINE)
    assert data.endswith(msg)
    sigs = verify_all(data, records(t))
    assert sorted(s["a"] for s in sigs) == ["ed25519-sha256", "rsa-sha256"]
    t.wait_log(r"event=dkim_sign id=\S+ dkim_sign=ok d=example.test")


def test_sendmail_mail_is_signed(tern_factory, certs, keys):
    t = signing_tern(tern_factory, certs, keys)
    msg = (b"From: Alice <alice@example.test>\nTo: bob@example.test\n"
           b"Subject: from-sendmail\n\nhi from cron\n")
    r = subprocess.run([t.bin, "sendmail", "-C", str(t.config_path), "-t"], input=msg,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    (_, data), = t.wait_mail_with("bob@example.test", "from-sendmail")
    sigs = verify_all(data, records(t))
    assert sorted(s["s"] for s in sigs) == ["ed1", "rsa1"]
    t.wait_log(r"event=dkim_sign id=\S+ dkim_sign=ok d=example\.test")


def test_maildrop_mail_is_signed_when_picked_up(tern_factory, certs, keys):
    t = signing_tern(tern_factory, certs, keys)
    t.stop()
    msg = (b"From: Alice <alice@example.test>\nTo: bob@example.test\n"
           b"Subject: from-maildrop\n\nwritten while tern was down\n")
    r = subprocess.run([t.bin, "sendmail", "-C", str(t.config_path), "-t"], input=msg,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert list((t.data_dir / "maildrop").iterdir())
    t.start()
    (_, data), = t.wait_mail_with("bob@example.test", "from-maildrop")
    assert len(verify_all(data, records(t))) == 2
    t.wait_log(r"event=queued id=\S+ source=maildrop")


def test_bdat_from_a_logged_in_user_is_signed(tern_factory, certs, keys):
    t = signing_tern(tern_factory, certs, keys)
    c = login_client(t)
    data = message("by-bdat", to="bob@example.test")
    expect(c.cmd(f"MAIL FROM:<{ALICE}>"), 250)
    expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
    half = len(data) // 2
    c.send(f"BDAT {half}\r\n".encode() + data[:half])
    expect(c.reply(), 250)
    c.send(f"BDAT {len(data) - half} LAST\r\n".encode() + data[half:])
    expect(c.reply(), 250, "2.0.0")
    (_, got), = t.wait_mail_with("bob@example.test", "by-bdat")
    assert len(verify_all(got, records(t))) == 2


def test_unauthenticated_mx_mail_is_not_signed(tern_factory, certs, keys):
    t = signing_tern(tern_factory, certs, keys)
    with t.client() as c:
        c.ehlo()
        send(c, "bob@example.test", message("from-outside", to="bob@example.test"))
    (_, data), = t.wait_mail_with("bob@example.test", "from-outside")
    assert b"DKIM-Signature" not in data
    assert "dkim_sign=" not in t.log()


def test_relay_networks_signed_only_with_sign_relayed(tern_factory, certs, keys):
    t = signing_tern(tern_factory, certs, keys, extra={"dkim": {"sign_relayed": True},
                                                      "relay": {"networks": ["127.0.0.2/32"]}})
    with t.client(source="127.0.0.2") as c:
        c.ehlo()
        send(c, "bob@example.test", message("relayed-signed", to="bob@example.test"))
    with t.client() as c:  # 127.0.0.1: not in relay.networks, not logged in
        c.ehlo()
        send(c, "bob@example.test", message("outside-unsigned", to="bob@example.test"))
    (_, data), = t.wait_mail_with("bob@example.test", "relayed-signed")
    assert len(verify_all(data, records(t))) == 2
    (_, data), = t.wait_mail_with("bob@example.test", "outside-unsigned")
    assert b"DKIM-Signature" not in data


def test_from_domain_without_a_key_and_two_from_fields_are_not_signed(tern_factory, certs,
                                                                      keys):
    t = signing_tern(tern_factory, certs, keys)
    c = login_client(t)
    qid = send(c, "bob@example.test", message("other-domain", frm="a@other.test",
                                              to="bob@example.test"),
               mail_from=ALICE).queue_id()
    t.wait_log(rf"event=dkim_sign id={qid} dkim_sign=none from_domain=other\.test "
               r"reason=no-key")
    qid = send(c, "bob@example.test",
               message("two-froms", to="bob@example.test", extra="From: b@example.test\r\n"))\
        .queue_id()
    t.wait_log(rf"event=dkim_sign id={qid} dkim_sign=none reason=\"several From fields\"")
    for subj in ("other-domain", "two-froms"):
        (_, data), = t.wait_mail_with("bob@example.test", subj)
        assert b"DKIM-Signature" not in data


def test_subdomain_is_signed_with_the_parent_domains_keys(tern_factory, certs, keys):
    t = signing_tern(tern_factory, certs, keys)
    c = login_client(t)
    send(c, "bob@example.test", message("sub-domain", frm="n@news.example.test",
                                        to="bob@example.test"))
    (_, data), = t.wait_mail_with("bob@example.test", "sub-domain")
    assert {s["d"] for s in verify_all(data, records(t))} == {"example.test"}


def test_broken_key_refuses_with_451_stores_nothing_and_sighup_fixes_it(tern_factory, certs, keys, scratch):
    _, paths = keys
    bad = scratch / "broken.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    os.chmod(bad, 0o600)
    t = signing_tern(tern_factory, certs, keys, key_list=[
        {"domain": "example.test", "selector": "rsa1", "key_file": str(paths["rsa1"])},
        {"domain": "example.test", "selector": "bad", "key_file": str(bad)},
    ])
    t.wait_log(r"event=dkim_key_error d=example\.test s=bad ")
    c = login_client(t)
    r = send(c, "bob@example.test", message("never-stored", to="bob@example.test"), code=451)
    assert r.enh == "4.3.0", r
    assert "DKIM" in r.text and "selector bad" in r.text
    t.wait_log(r"event=dkim_sign id=\S+ dkim_sign=error d=example\.test s=bad reason=")
    # the session goes on; nothing was queued or delivered
    expect(c.cmd("NOOP"), 250)
    assert "queue is empty" in t.queue_list()
    assert not t.mail_files("bob@example.test")
    assert "event=queued" not in t.log()
    # `tern sendmail` is refused the same way: exit 75 (EX_TEMPFAIL), so it tries later
    r = subprocess.run([t.bin, "sendmail", "-C", str(t.config_path), "-t"],
                       input=b"From: alice@example.test\nTo: bob@example.test\nSubject: x\n\nx\n",
                       capture_output=True, timeout=30)
    assert r.returncode == 75, r
    assert b"could not be DKIM-signed" in r.stderr, r.stderr
    assert "event=queued" not in t.log()
    # the operator puts a real key there and reloads: the keys reload with the config
    shutil.copyfile(paths["ed1"], bad)
    os.chmod(bad, 0o600)
    t.signal(signal.SIGHUP)
    t.wait_log(r"event=reloaded ")
    c = login_client(t)
    send(c, "bob@example.test", message("after-reload", to="bob@example.test"))
    (_, data), = t.wait_mail_with("bob@example.test", "after-reload")
    assert sorted(s["s"] for s in verify_all(data, records(t))) == ["bad", "rsa1"]
# --------------------------------------------------------------------------- AUTH=


def test_mail_auth_parameter_reaches_the_next_hop(tern_factory, certs, keys, relay):
    t = signing_tern(tern_factory, certs, keys, relay)
    c = login_client(t)
    # given: the value (xtext) is kept and sent on, xtext-encoded
    send(c, "friend@remote.test", message("auth-given"), params="AUTH=alice+2Bapp@example.test")
    # not given: the logged-in identity
    send(c, "friend@remote.test", message("auth-implied"))
    # AUTH=<>: nothing to carry
    send(c, "friend@remote.test", message("auth-empty"), params="AUTH=<>")
    msgs = relay.wait(3, tern=t)
    by = {re.search(rb"Subject: (\S+)", m["content"]).group(1).decode(): m for m in msgs}
    assert "AUTH=ALICE+2BAPP@EXAMPLE.TEST" in by["auth-given"]["mail_options"]
    assert "AUTH=ALICE@EXAMPLE.TEST" in by["auth-implied"]["mail_options"]
    assert not any(o.startswith("AUTH=") for o in by["auth-empty"]["mail_options"])


def test_no_auth_parameter_without_a_login(tern_factory, certs, keys, relay):
    """A relay.networks client that did not log in names nobody: no AUTH= goes on, and its
    mail is not signed (sign_relayed is off)."""
    t = signing_tern(tern_factory, certs, keys, relay,
                     extra={"relay": {"networks": ["127.0.0.2/32"]}})
    with t.client(source="127.0.0.2") as c:
        c.ehlo()
        send(c, "friend@remote.test", message("no-login"))
    m = relay.wait(1, tern=t)[0]
    assert not any(o.startswith("AUTH=") for o in m["mail_options"]), m["mail_options"]
    assert b"DKIM-Signature" not in m["content"]


# --------------------------------------------------------------------------- check-config


def test_check_config_reports_a_key_that_does_not_load(tern_factory, keys, scratch):
    _, paths = keys
    bad = scratch / "bad.key"
    bad.write_text("not a key\n")
    os.chmod(bad, 0o600)
    kl = [{"domain": "example.test", "selector": "rsa1", "key_file": str(paths["rsa1"])},
          {"domain": "example.test", "selector": "bad", "key_file": str(bad)}]
    t = tern_factory({"dkim": {"keys": Raw("[" + ", ".join(
        f'{{ domain = "{k["domain"]}"; selector = "{k["selector"]}"; '
        f'key_file = "{k["key_file"]}"; }}' for k in kl) + "]")}}, start=False)
    r = t.cli("check-config")
    assert r.returncode == 1, r.stderr
    assert re.search(r"tern: error: dkim\.keys: the key of example\.test \(selector bad\) "
                     r"does not load: .*would get 451", r.stderr), r.stderr
    assert "rsa1" not in r.stderr and "does not sign mail" not in r.stderr
    bad.unlink()
    shutil.copyfile(paths["ed1"], bad)
    os.chmod(bad, 0o600)
    r = t.cli("check-config")
    assert r.returncode == 0, r.stderr
    assert "dkim" not in r.stderr, r.stderr


def test_client_leaving_while_its_message_is_signed(tern_factory, certs, keys):
    """The client hangs up right after its end of data, while the signing job runs on the
    pool: no crash, no sanitizer report at teardown (tern_factory checks), tern keeps
    serving. (Reading is off while the job runs, so the hang-up is usually seen only at
    the commit's reply: the message is queued, as after any end of data.)"""
    t = signing_tern(tern_factory, certs, keys)
    big = message("leaving", to="bob@example.test").replace(
        b"Hello  there,", b"Hello  there,\r\n" + b"x" * 70 * 12000 + b"\r\n")
    for _ in range(5):
        c = login_client(t)
        expect(c.cmd(f"MAIL FROM:<{ALICE}>"), 250)
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(dot_stuff(big) + b".\r\n")
        c.close()
    c = login_client(t)
    send(c, "bob@example.test", message("still-serving", to="bob@example.test"))
    t.wait_mail_with("bob@example.test", "still-serving")
