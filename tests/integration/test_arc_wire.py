"""
test_arc_wire.py — ARC (RFC 8617) in the mx session (src/smtp/verify.c, verify_arc.c):
the chain of received mail validated and reported as arc= in our Authentication-Results,
a trusted sealer's results overriding a DMARC failure (arc.trusted_sealers), and the ARC
Set tern seals onto mail it forwards (arc.seal_domain), cross-checked with an independent
ARC implementation: dkimpy (Debian's python3-dkim, arc_sign/arc_verify).

A real unbound (remote_harness.Unbound) serves the sealers' keys and the senders' SPF and
DMARC records; fake MXes (aiosmtpd, remote_harness.FakeMXes) take what tern forwards.
The client is 127.0.0.1 and relay.networks is 127.0.0.2/32, so the client is a stranger
whose mail is checked. Keys come from `tern dkim keygen`.

Never: wait without a bound, assert on elapsed time, or talk outside 127.0.0.0/8.
"""

import os
import re
import shutil
import subprocess

import pytest

from conftest import CLI_TIMEOUT, Raw, deep_merge, expect, make_tmpdir, tern_bin
from remote_harness import (DNS_RECORDS, IP, FakeMXes, Unbound, pick_shared_port,
                            remote_overrides)

dkim = pytest.importorskip("dkim")  # python3-dkim, in scripts/install-deps
authres = pytest.importorskip("authres")  # python3-authres, in scripts/install-deps

# The smarthost fake of remote_harness requires AUTH without TLS on purpose (loopback).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

HOST = "mx.tern.test"  # our authserv-id (remote_harness.HOSTNAME)
HELO = "client.helo.test"
LOCAL = "alice@example.test"
REMOTE = "carol@ok.test"  # its MX is the fake "ok"
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]

TXT = [
    (HELO, '"v=spf1 ip4:127.0.0.1 -all"'),
    # a sender whose mail passes SPF here, no DMARC record
    ("plain.test", '"v=spf1 ip4:127.0.0.0/8 -all"'),
    # a sender whose mail fails SPF here (it went through a forwarder) and asks p=reject
    ("strict.test", '"v=spf1 ip4:192.0.2.0/24 -all"'),
    ("_dmarc.strict.test", '"v=DMARC1; p=reject"'),
]


def keygen(work, domain, selector):
    r = subprocess.run([tern_bin(), "dkim", "keygen", domain, selector, "--type", "rsa"],
                       capture_output=True, timeout=CLI_TIMEOUT, cwd=work)
    assert r.returncode == 0, r.stderr
    record = "".join(re.findall(r'"([^"]*)"', r.stdout.decode()))
    return work / f"{domain}.{selector}.key", record


@pytest.fixture(scope="module")
def world():
    """(port, unbound, fake MXes, keys): sealers trusted.test and other.test (s1), and our
    own sealing key example.test (arc1), all published in the zone."""
    work = make_tmpdir("tern-arcwire-")
    keys, records = {}, {}
    for domain, sel in (("trusted.test", "s1"), ("other.test", "s1"), ("example.test", "arc1")):
        path, rec = keygen(work, domain, sel)
        keys[domain] = path
        records[f"{sel}._domainkey.{domain}"] = rec
    port = pick_shared_port(sorted(set(IP.values())))
    dns = Unbound(records=DNS_RECORDS)
    with open(dns.conf, "a") as f:
        for name, data in TXT:
            f.write(f"  local-data: '{name}. 60 IN TXT {data}'\n")
        for name, rec in records.items():
            value = " ".join(f'"{rec[i:i + 255]}"' for i in range(0, len(rec), 255))
            f.write(f"  local-data: '{name}. 60 IN TXT {value}'\n")
    dns.start()
    mxes = FakeMXes(port)
    try:
        mxes.start()
    except Exception:
        mxes.stop()
        dns.stop()
        raise
    yield port, dns, mxes, {"files": keys, "records": records}
    mxes.stop()
    dns.stop()
    if not os.environ.get("TERN_KEEP"):
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def start(world, tern_factory):
    """start(dmarc="mark", seal=True, trusted=(), forward=None, **auth_checks) -> a running
    tern wired to the world (forward: another DNS server; routes: more routes; key: another
    sealing key file; check=False: start even when check-config refuses; limits: more
    limits)."""
    port, dns, mxes, keys = world
    mxes.reset()

    def run(dmarc="mark", seal=True, trusted=(), forward=None, routes=None, key=None,
            check=True, limits=None, **more):
        t = tern_factory(None, (LOCAL,), start=False)
        cfg = remote_overrides(port, forward or dns.forward, t.root)
        checks = {"spf": True, "dkim": True, "arc": True, "dmarc": dmarc}
        checks.update(more)
        arc = {"trusted_sealers": list(trusted)}
        if seal:
            arc["seal_domain"] = "example.test"
        cfg = deep_merge(cfg, {
            "relay": {"networks": ["127.0.0.2/32"]},
            "auth_checks": checks,
            "aliases": {"fwd@example.test": [REMOTE],
                        "both@example.test": [LOCAL, REMOTE]},
            "dkim": {"keys": Raw('[ { domain = "example.test"; selector = "arc1"; '
                                 f'key_file = "{key or keys["files"]["example.test"]}"; }} ]')},
            "arc": arc,
            "routes": routes or {},
            "limits": limits or {},
        })
        t.write_config(deep_merge(t.config, cfg))
        t.port = port
        chk = t.cli("check-config")
        if check:
            assert chk.returncode == 0, chk.stderr + chk.stdout
        t.check_config_result = chk
        t.start()
        return t

    yield run
    mxes.reset()


def message(frm, subject, to=LOCAL):
    return (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 6 Dec 2026 03:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\n"
            f"Hello from {frm}.\r\n").encode()


def sealed(world, msg, domain, results, srv_id=None):
    """msg with an Authentication-Results of srv_id (default: the sealer) saying results,
    then an ARC Set by dkimpy for domain (selector s1) on top."""
    srv = srv_id or domain
    m = f"Authentication-Results: {srv}; {results}\r\n".encode() + msg
    key = world[3]["files"][domain].read_bytes()
    sig = dkim.arc_sign(m, b"s1", domain.encode(), key, srv.encode(),
                        include_headers=HEADERS)
    assert sig, "dkimpy made no ARC Set"
    return b"".join(sig) + m


def send(t, sender, rcpt, body, code=250, enh="2.0.0"):
    with t.client() as c:
        expect(c.greeting, 220)
        expect(c.cmd(f"EHLO {HELO}"), 250)
        expect(c.cmd(f"MAIL FROM:<{sender}>"), 250)
        expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        r = expect(c.reply(), code, enh)
        expect(c.cmd("QUIT"), 221)
        return r


def delivered(t, subject):
    [(_, data)] = t.wait_mail(LOCAL, lambda b: f"Subject: {subject}".encode() in b)
    return data


def forwarded(world, t, subject):
    msgs = world[2]["ok"].wait_messages(1, tern=t)
    [m] = [m for m in msgs if f"Subject: {subject}".encode() in m.content]
    assert m.rcpt_tos == [REMOTE]
    return m.content


def headers(data):
    """The header fields, unfolded, in order: [(name, value)]."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    out = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        else:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return out


def named(data, name):
    return [v for n, v in headers(data) if n.lower() == name.lower()]


def our_authres(data):
    ars = [v for v in named(data, "Authentication-Results") if v.startswith(HOST)]
    assert len(ars) == 1, named(data, "Authentication-Results")
    return authres.AuthenticationResultsHeader.parse_value(ars[0])


def result(ar, method):
    [r] = [r for r in ar.results if r.method == method]
    return r


def prop(r, ptype, name):
    for p in r.properties:
        if p.type == ptype and p.name == name:
            return p.value
    return None


def instances(data, name="ARC-Seal"):
    return sorted(int(re.search(r"\bi\s*=\s*(\d+)", v).group(1)) for v in named(data, name))


def dkimpy_verify(world, data):
    records = world[3]["records"]

    def dnsfunc(name, timeout=5):
        return records.get(name.decode().rstrip(".").lower(), "").encode()

    cv, res, why = dkim.arc_verify(data, dnsfunc=dnsfunc)
    return cv, res, why


# --------------------------------------------------------------------------- validation


def test_message_without_chain_is_arc_none(start):
    t = start()
    send(t, "bob@plain.test", LOCAL, message("bob@plain.test", "no chain"))
    data = delivered(t, "no chain")
    arc = result(our_authres(data), "arc")
    assert arc.result == "none"
    assert prop(arc, "smtp", "remote-ip") == "127.0.0.1"
    assert named(data, "ARC-Seal") == []  # not forwarded: nothing sealed
    t.wait_log(r"event=auth_checks .* arc=none ")


def test_valid_chain_passes_and_stays_on_the_message(start, world):
    t = start()
    body = sealed(world, message("bob@plain.test", "good chain"), "other.test",
                  "spf=pass smtp.mailfrom=plain.test")
    send(t, "bob@plain.test", LOCAL, body)
    data = delivered(t, "good chain")
    arc = result(our_authres(data), "arc")
    assert arc.result == "pass"
    assert prop(arc, "header", "oldest-pass") == "0"
    assert prop(arc, "smtp", "remote-ip") == "127.0.0.1"
    # the others' ARC Set and results are kept as they came
    assert instances(data) == [1]
    assert len(named(data, "ARC-Message-Signature")) == 1
    assert named(data, "ARC-Authentication-Results")[0].startswith("i=1; other.test")
    assert any(v.startswith("other.test") for v in named(data, "Authentication-Results"))
    # and what tern stored still validates for dkimpy
    cv, _, why = dkimpy_verify(world, data)
    assert cv == b"pass", why


def test_tampered_chain_fails(start, world):
    t = start()
    body = sealed(world, message("bob@plain.test", "bad chain"), "other.test",
                  "spf=pass smtp.mailfrom=plain.test")
    body = body.replace(b"Hello from", b"Hullo from")
    send(t, "bob@plain.test", LOCAL, body)
    data = delivered(t, "bad chain")
    assert result(our_authres(data), "arc").result == "fail"
    t.wait_log(r"event=auth_checks .* arc=fail ")


def test_forged_results_and_arc_set_claiming_us_are_removed(start, world):
    t = start()
    # an ARC Set whose AAR says it is ours (dkimpy seals what an A-R "from us" says)
    body = sealed(world, message("bob@plain.test", "forged set"), "other.test",
                  "dmarc=pass header.from=bank.test", srv_id=HOST)
    body = b"Authentication-Results: elsewhere.test; spf=pass smtp.mailfrom=x.test\r\n" + body
    send(t, "bob@plain.test", LOCAL, body)
    data = delivered(t, "forged set")
    ours = [v for v in named(data, "Authentication-Results") if v.startswith(HOST)]
    assert len(ours) == 1 and "bank.test" not in ours[0]
    for name in ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"):
        assert named(data, name) == [], name
    assert any(v.startswith("elsewhere.test") for v in named(data, "Authentication-Results"))
    # judged without the forged set: there is no chain left
    assert result(our_authres(data), "arc").result == "none"
    t.wait_log(r"event=auth_checks .*forged_results_removed=4")


# --------------------------------------------------------------------------- sealing


def test_forwarded_mail_carries_an_arc_set_dkimpy_validates(start, world):
    t = start()
    send(t, "bob@plain.test", "fwd@example.test",
         message("bob@plain.test", "forward one", to="fwd@example.test"))
    data = forwarded(world, t, "forward one")
    assert instances(data) == [1]
    assert instances(data, "ARC-Message-Signature") == [1]
    [aar] = named(data, "ARC-Authentication-Results")
    assert aar.startswith(f"i=1; {HOST};"), aar
    assert "arc=none" in aar and "spf=pass" in aar
    [seal] = named(data, "ARC-Seal")
    assert re.search(r"\bd=example\.test\b", seal) and re.search(r"\bcv=none\b", seal)
    cv, res, why = dkimpy_verify(world, data)
    assert cv == b"pass", why
    assert [r["instance"] for r in res] == [1]
    t.wait_log(r"event=arc_seal id=\S+ result=sealed cv=none domain=example.test")


def test_forwarded_mail_with_a_chain_gets_instance_two(start, world):
    t = start()
    body = sealed(world, message("bob@plain.test", "forward two", to="fwd@example.test"),
                  "other.test", "spf=pass smtp.mailfrom=plain.test")
    send(t, "bob@plain.test", "fwd@example.test", body)
    data = forwarded(world, t, "forward two")
    assert instances(data) == [1, 2]
    seal2 = [v for v in named(data, "ARC-Seal") if re.search(r"\bi=2\b", v)][0]
    assert re.search(r"\bcv=pass\b", seal2) and re.search(r"\bd=example\.test\b", seal2)
    aar2 = [v for v in named(data, "ARC-Authentication-Results") if v.startswith("i=2")][0]
    assert "arc=pass" in aar2
    cv, res, why = dkimpy_verify(world, data)
    assert cv == b"pass", why
    assert sorted(r["instance"] for r in res) == [1, 2]


def test_failed_chain_is_sealed_with_cv_fail(start, world):
    # RFC 8617 §5.1.2: the sealer that finds the chain broken says so, its seal covering
    # only its own set; dkimpy then calls the chain fail (nothing later can mend it)
    t = start()
    body = sealed(world, message("bob@plain.test", "forward broken", to="fwd@example.test"),
                  "other.test", "spf=pass smtp.mailfrom=plain.test")
    send(t, "bob@plain.test", "fwd@example.test", body.replace(b"Hello from", b"Hullo from"))
    data = forwarded(world, t, "forward broken")
    assert instances(data) == [1, 2]
    seal2 = [v for v in named(data, "ARC-Seal") if re.search(r"\bi=2\b", v)][0]
    assert re.search(r"\bcv=fail\b", seal2)
    cv, _, _ = dkimpy_verify(world, data)
    assert cv != b"pass"


def test_local_and_remote_recipients_both_get_the_sealed_copy(start, world):
    t = start()
    send(t, "bob@plain.test", "both@example.test",
         message("bob@plain.test", "forward both", to="both@example.test"))
    remote = forwarded(world, t, "forward both")
    local = delivered(t, "forward both")
    for data in (remote, local):
        assert instances(data) == [1]
        cv, _, why = dkimpy_verify(world, data)
        assert cv == b"pass", why


def test_nothing_is_sealed_without_seal_domain(start, world):
    t = start(seal=False)
    send(t, "bob@plain.test", "fwd@example.test",
         message("bob@plain.test", "forward unsealed", to="fwd@example.test"))
    data = forwarded(world, t, "forward unsealed")
    assert named(data, "ARC-Seal") == []
    assert result(our_authres(data), "arc").result == "none"


def test_large_message_is_validated_and_sealed_off_the_loop(start, world):
    # over 256 KiB: the chain's signatures are checked on the thread pool, as the seal is made
    big = "".join(f"line {i:06d} of a long digest, padded to be long enough to matter\r\n"
                  for i in range(9000)).encode()
    msg = message("bob@plain.test", "forward big", to="both@example.test") + big
    body = sealed(world, msg, "other.test", "spf=pass smtp.mailfrom=plain.test")
    assert len(body) > 512 * 1024
    t = start()
    send(t, "bob@plain.test", "both@example.test", body)
    local = delivered(t, "forward big")
    assert result(our_authres(local), "arc").result == "pass"
    remote = forwarded(world, t, "forward big")
    assert instances(remote) == [1, 2]
    cv, _, why = dkimpy_verify(world, remote)
    assert cv == b"pass", why
    # a flipped byte deep in the body breaks the chain
    send(t, "bob@plain.test", LOCAL, body.replace(b"line 008000", b"line 008001")
         .replace(b"Subject: forward big", b"Subject: broken big"))
    assert result(our_authres(delivered(t, "broken big")), "arc").result == "fail"


def test_client_leaving_while_arc_keys_are_looked_up(start, world):
    # the sealers' keys are asked of a DNS server that never answers. A client that leaves
    # while the verdict waits gets nothing queued (its retry must not be a duplicate), the
    # server keeps serving, and a client that waits out the lookups' timeout has its
    # message passed on as it came: a chain that could not be checked is not sealed cv=fail
    import socket
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        # ok.test by a route (no MX lookup): forwarding through an alias and a route
        t = start(dmarc="off", forward=f"127.0.0.1@{silent.getsockname()[1]}", spf=False,
                  timeout=1, routes={"ok.test": {"via": f"smtp://{IP['ok']}:{world[0]}",
                                                 "tls": "none"}})
        body = sealed(world, message("bob@plain.test", "left early", to="fwd@example.test"),
                      "other.test", "spf=pass smtp.mailfrom=plain.test")
        with t.client() as c:
            expect(c.greeting, 220)
            expect(c.cmd(f"EHLO {HELO}"), 250)
            expect(c.cmd("MAIL FROM:<bob@plain.test>"), 250)
            expect(c.cmd("RCPT TO:<fwd@example.test>"), 250)
            expect(c.cmd("DATA"), 354)
            c.send(body + b".\r\n")
        t.wait_log(r"event=aborted id=\S+ .*reason=client-gone stage=checks")
        # the one that stays: its lookups time out (1 s), then 250 and the forward
        body = sealed(world, message("bob@plain.test", "stayed", to="fwd@example.test"),
                      "other.test", "spf=pass smtp.mailfrom=plain.test")
        send(t, "bob@plain.test", "fwd@example.test", body)
        t.wait_log(r"event=arc_seal id=\S+ result=skipped reason=\"chain not checked")
        data = forwarded(world, t, "stayed")
        assert instances(data) == [1]
        # the message whose client left never went out
        assert not [m for m in world[2]["ok"].messages if b"Subject: left early" in m.content]
    finally:
        silent.close()


def test_a_sealing_key_that_is_not_rsa(start, world, scratch):
    # RFC 8617 seals with rsa-sha256 only: check-config says so; serve forwards unsealed
    r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test", "arc1", "--type",
                        "ed25519"], capture_output=True, timeout=CLI_TIMEOUT, cwd=scratch)
    assert r.returncode == 0, r.stderr
    t = start(key=scratch / "example.test.arc1.key", check=False)
    assert t.check_config_result.returncode == 1
    assert "is not RSA" in t.check_config_result.stderr
    send(t, "bob@plain.test", "fwd@example.test",
         message("bob@plain.test", "forward ed25519", to="fwd@example.test"))
    data = forwarded(world, t, "forward ed25519")
    assert named(data, "ARC-Seal") == []
    t.wait_log(r"event=arc_seal id=\S+ result=error reason=\".*is not RSA")


# --------------------------------------------------------------------------- trusted sealers


def test_trusted_sealer_overrides_a_dmarc_reject(start, world):
    t = start(dmarc="enforce", trusted=["trusted.test"])
    body = sealed(world, message("news@strict.test", "via trusted list"), "trusted.test",
                  "spf=pass smtp.mailfrom=strict.test; dmarc=pass header.from=strict.test")
    send(t, "bounces@strict.test", LOCAL, body)
    data = delivered(t, "via trusted list")
    ar = our_authres(data)
    assert result(ar, "arc").result == "pass"
    dm = result(ar, "dmarc")
    assert dm.result == "fail"  # what DMARC found stays said ...
    assert prop(dm, "policy", "override") == "arc"  # ... and why we delivered anyway
    assert "X-Tern-DMARC" not in dict(headers(data))
    t.wait_log(r"event=auth_checks id=\S+ dmarc_override=arc sealer=trusted.test instance=1 "
               r"vouched=(dmarc|spf)=pass")
    t.wait_log(r"event=auth_checks .*dmarc=fail arc=pass .*action=deliver")


def test_untrusted_sealer_does_not_override(start, world):
    t = start(dmarc="enforce", trusted=["trusted.test"])
    body = sealed(world, message("news@strict.test", "via other list"), "other.test",
                  "spf=pass smtp.mailfrom=strict.test; dmarc=pass header.from=strict.test")
    send(t, "bounces@strict.test", LOCAL, body, 550, "5.7.1")
    t.wait_log(r"event=rejected .*reason=dmarc")
    assert not t.log_lines("dmarc_override")


def test_trusted_sealer_of_a_broken_chain_does_not_override(start, world):
    t = start(dmarc="enforce", trusted=["trusted.test"])
    body = sealed(world, message("news@strict.test", "via broken list"), "trusted.test",
                  "dmarc=pass header.from=strict.test")
    send(t, "bounces@strict.test", LOCAL, body.replace(b"Hello from", b"Hullo from"),
         550, "5.7.1")
    assert not t.log_lines("dmarc_override")


def test_trusted_sealer_that_saw_a_failure_does_not_override(start, world):
    t = start(dmarc="enforce", trusted=["trusted.test"])
    body = sealed(world, message("news@strict.test", "trusted saw fail"), "trusted.test",
                  "spf=fail smtp.mailfrom=strict.test; dmarc=fail header.from=strict.test")
    send(t, "bounces@strict.test", LOCAL, body, 550, "5.7.1")
    assert not t.log_lines("dmarc_override")


# --------------------------------------------------------------------------- spilled


BIG_LIMITS = {"max_message_size": Raw("8m")}


def spilled_body(world, subject, to=LOCAL):
    """A 3 MiB message (past the 1 MiB spill threshold: checked through a mapping of its
    spill file) with an ARC Set of other.test on top."""
    big = b"".join(b"line %07d of a long digest,  with  runs \t \r\n" % i for i in range(70000))
    msg = message("bob@plain.test", subject, to=to) + big
    body = sealed(world, msg, "other.test", "spf=pass smtp.mailfrom=plain.test")
    assert len(body) > 3 * 1024 * 1024
    return body


def test_spilled_message_with_a_chain_passes_and_is_delivered_exact(start, world):
    # issue 11: the chain of a spilled message is validated from the mapping, the body
    # hashed once in pieces with DKIM's, never copied whole
    t = start(limits=BIG_LIMITS)
    body = spilled_body(world, "spilled chain")
    send(t, "bob@plain.test", LOCAL, body)
    data = delivered(t, "spilled chain")
    arc = result(our_authres(data), "arc")
    assert arc.result == "pass"
    assert prop(arc, "header", "oldest-pass") == "0"
    # what was sent follows our fields, byte for byte
    assert data.endswith(body), "the delivered message is not the sent one"
    assert b"\r\n\r\n" not in data[:len(data) - len(body)]
    t.wait_log(r"event=auth_checks .* arc=pass ")


def test_spilled_message_with_a_tampered_chain_fails(start, world):
    t = start(limits=BIG_LIMITS)
    body = spilled_body(world, "spilled broken").replace(b"line 0069000", b"line 0069001")
    send(t, "bob@plain.test", LOCAL, body)
    data = delivered(t, "spilled broken")
    assert result(our_authres(data), "arc").result == "fail"
    assert data.endswith(body)
    t.wait_log(r"event=auth_checks .* arc=fail ")


def test_spilled_forwarded_message_is_sealed_and_dkimpy_validates(start, world):
    # the seal's body hash comes from the same pass over the mapping
    t = start(limits=BIG_LIMITS)
    body = spilled_body(world, "spilled forward", to="both@example.test")
    send(t, "bob@plain.test", "both@example.test", body)
    remote = forwarded(world, t, "spilled forward")
    local = delivered(t, "spilled forward")
    for data in (remote, local):
        assert instances(data) == [1, 2]
        assert data.endswith(body)
        cv, _, why = dkimpy_verify(world, data)
        assert cv == b"pass", why
    t.wait_log(r"event=arc_seal id=\S+ result=sealed cv=pass domain=example.test")


def test_clients_leaving_while_a_spilled_chain_is_hashed(start, world):
    # three clients go right after the final dot of a spilled message with a chain (the
    # session stops reading while its checks run, so their checks go on); a fourth is
    # served meanwhile, and the fixture stops tern while those checks may still be
    # hashing the mapped bodies on the pool: no sanitizer report (the fixture fails the
    # test on one), no hang
    t = start(limits=BIG_LIMITS)
    body = spilled_body(world, "spilled left", to="fwd@example.test")
    for _ in range(3):
        with t.client() as c:
            expect(c.greeting, 220)
            expect(c.cmd(f"EHLO {HELO}"), 250)
            expect(c.cmd("MAIL FROM:<bob@plain.test>"), 250)
            expect(c.cmd("RCPT TO:<fwd@example.test>"), 250)
            expect(c.cmd("DATA"), 354)
            c.send(body + b".\r\n")
    send(t, "bob@plain.test", LOCAL, message("bob@plain.test", "after the leavers"))
    assert result(our_authres(delivered(t, "after the leavers")), "arc").result == "none"
