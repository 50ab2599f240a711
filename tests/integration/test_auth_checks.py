"""
test_auth_checks.py — SPF, DKIM and DMARC of mail received on an mx listener
(auth_checks { } in docs/config.md; src/smtp/verify.c): what tern records in
Authentication-Results and Received-SPF, and what it does with the message (deliver,
the Junk folder, 550, 451).

A real unbound (remote_harness.Unbound) serves the test zones; dkimpy signs the
incoming messages with a key `tern dkim keygen` made and the zone publishes. The
client is 127.0.0.1; relay.networks is 127.0.0.2/32 (conftest), so 127.0.0.1 is a
stranger whose mail is checked, except where a test says otherwise.

Never: wait without a bound, assert on elapsed time, or talk outside 127.0.0.0/8.
"""

import os
import re
import shutil
import socket
import subprocess

import authres
import dkim
import pytest

from conftest import CLI_TIMEOUT, Raw, expect, make_tmpdir, tern_bin
from remote_harness import DNS_RECORDS, Unbound

HOST = "mx.example.test"  # our authserv-id (conftest's hostname)
RCPT = "alice@example.test"
HELO = "client.helo.test"

# Sender domains, each with SPF and DMARC records. The client is 127.0.0.1.
TXT = [
    (HELO, '"v=spf1 ip4:127.0.0.1 -all"'),
    ("spfpass.test", '"v=spf1 ip4:127.0.0.0/8 -all"'),
    ("_dmarc.spfpass.test", '"v=DMARC1; p=reject"'),
    ("spffail.test", '"v=spf1 ip4:192.0.2.0/24 -all"'),
    ("_dmarc.spffail.test", '"v=DMARC1; p=reject"'),
    ("signed.test", '"v=spf1 ip4:192.0.2.0/24 -all"'),
    ("_dmarc.signed.test", '"v=DMARC1; p=reject"'),
    ("quar.test", '"v=spf1 ip4:192.0.2.0/24 -all"'),
    ("_dmarc.quar.test", '"v=DMARC1; p=quarantine"'),
]


def keygen(work, domain, selector):
    r = subprocess.run([tern_bin(), "dkim", "keygen", domain, selector, "--type", "rsa"],
                       capture_output=True, timeout=CLI_TIMEOUT, cwd=work)
    assert r.returncode == 0, r.stderr
    strings = re.findall(r'"([^"]*)"', r.stdout.decode())
    return (work / f"{domain}.{selector}.key").read_bytes(), "".join(strings)


@pytest.fixture(scope="module")
def zone():
    work = make_tmpdir("tern-authchecks-")
    key, record = keygen(work, "signed.test", "s1")
    u = Unbound(records=DNS_RECORDS)
    with open(u.conf, "a") as f:
        for name, data in TXT:
            f.write(f"  local-data: '{name}. 60 IN TXT {data}'\n")
        value = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
        f.write(f"  local-data: 's1._domainkey.signed.test. 60 IN TXT {value}'\n")
    u.start()
    yield u, key
    u.stop()
    if not os.environ.get("TERN_KEEP"):
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def start(tern_factory, zone):
    """start(dmarc="mark", **auth_checks) -> a tern checking mail against the zone."""

    def run(dmarc="mark", forward=None, relay=None, limits=None, **more):
        checks = {"spf": True, "dkim": True, "dmarc": dmarc}
        checks.update(more)
        cfg = {"dns": {"forward": [forward or zone[0].forward]}, "auth_checks": checks}
        if relay:
            cfg["relay"] = {"networks": relay}
        if limits:
            cfg["limits"] = limits
        return tern_factory(cfg)

    return run


def message(frm, subject, extra=""):
    return (f"From: <{frm}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 6 Dec 2026 03:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n{extra}\r\n"
            f"Hello from {frm}.\r\n").encode()


def signed(key, msg):
    return dkim.sign(msg, b"s1", b"signed.test", key,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + msg


def send(t, sender, body, code=250, enh="2.0.0"):
    """One transaction from 127.0.0.1; returns the final reply."""
    with t.client() as c:
        expect(c.greeting, 220)
        expect(c.cmd(f"EHLO {HELO}"), 250)
        expect(c.cmd(f"MAIL FROM:<{sender}>"), 250)
        expect(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        r = expect(c.reply(), code, enh)
        expect(c.cmd("QUIT"), 221)
        return r


def delivered(t, subject, folder="new"):
    d = t.maildir(RCPT) / folder
    [(_, data)] = t.wait_mail(RCPT, lambda b: f"Subject: {subject}".encode() in b) \
        if folder == "new" else [(None, wait_file(t, d, subject))]
    return data


def wait_file(t, d, subject, timeout=10.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.exists():
            for p in d.iterdir():
                data = p.read_bytes()
                if f"Subject: {subject}".encode() in data:
                    return data
        time.sleep(0.05)
    pytest.fail(f"no message {subject!r} in {d}\n{t.log_tail()}")


def headers(data):
    """The header fields of a delivered file, unfolded, in order: [(name, value)]."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    out = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        else:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return out


def our_authres(data):
    """Our Authentication-Results, parsed by python3-authres."""
    ars = [v for n, v in headers(data) if n.lower() == "authentication-results"]
    assert ars, data[:600]
    ar = authres.AuthenticationResultsHeader.parse_value(ars[0])
    assert ar.authserv_id == HOST
    return ar, ars


def results(ar, method):
    return [r for r in ar.results if r.method == method]


def prop(r, ptype, name):
    for p in r.properties:
        if p.type == ptype and p.name == name:
            return p.value
    return None


# --------------------------------------------------------------------------- SPF


def test_spf_pass_is_recorded_above_our_received(start):
    t = start()
    send(t, "bob@spfpass.test", message("bob@spfpass.test", "spf pass"))
    data = delivered(t, "spf pass")
    names = [n.lower() for n, _ in headers(data)]
    # Return-Path, Delivered-To, then ours: A-R, Received-SPF, our Received
    assert names[2:5] == ["authentication-results", "received-spf", "received"], names
    ar, _ = our_authres(data)
    [spf] = [r for r in results(ar, "spf") if prop(r, "smtp", "mailfrom")]
    assert spf.result == "pass"
    assert prop(spf, "smtp", "mailfrom") == "spfpass.test"
    rs = dict(headers(data))["Received-SPF"]
    assert rs.startswith("pass") and "client-ip=127.0.0.1" in rs, rs
    [dm] = results(ar, "dmarc")
    assert dm.result == "pass"


def test_spf_fail_is_recorded_and_dmarc_fail_marked(start):
    t = start(dmarc="mark")
    send(t, "eve@spffail.test", message("eve@spffail.test", "spf fail mark"))
    data = delivered(t, "spf fail mark")
    ar, _ = our_authres(data)
    [spf] = [r for r in results(ar, "spf") if prop(r, "smtp", "mailfrom")]
    assert spf.result == "fail"
    assert dict(headers(data))["Received-SPF"].startswith("fail")
    [dm] = results(ar, "dmarc")
    assert dm.result == "fail"
    assert prop(dm, "header", "from") == "spffail.test"
    # mark mode says what it did not do
    assert "X-Tern-DMARC" in dict(headers(data))


# --------------------------------------------------------------------------- DKIM


def test_dkim_signed_message_passes_and_aligns(start, zone):
    t = start(dmarc="enforce")
    body = signed(zone[1], message("news@signed.test", "dkim good"))
    send(t, "bounces@spffail.test", body)  # SPF fails and is not aligned: DKIM carries it
    data = delivered(t, "dkim good")
    ar, _ = our_authres(data)
    [dk] = results(ar, "dkim")
    assert dk.result == "pass"
    assert prop(dk, "header", "d") == "signed.test"
    assert prop(dk, "header", "s") == "s1"
    b = re.search(rb"b=([A-Za-z0-9+/=\s]+)", body.split(b"\r\n\r\n")[0].split(b"bh=")[1])
    assert prop(dk, "header", "b") and b.group(1).replace(b" ", b"").replace(
        b"\r\n", b"").replace(b"\t", b"").decode().startswith(prop(dk, "header", "b"))
    [dm] = results(ar, "dmarc")
    assert dm.result == "pass"


def test_dkim_tampered_message_fails_and_p_reject_refuses_it(start, zone):
    t = start(dmarc="enforce")
    body = signed(zone[1], message("news@signed.test", "dkim tampered"))
    body = body.replace(b"Hello from", b"Hullo from")
    r = send(t, "bounces@spffail.test", body, 550, "5.7.1")
    assert "signed.test" in r.text
    t.wait_log(r"event=auth_checks .*spf=fail dkim=fail dmarc=fail .*action=reject")
    t.wait_log(r"event=rejected .*code=550 reason=dmarc")
    assert t.mail_files(RCPT) == []


def test_dkim_tampered_is_marked_in_mark_mode(start, zone):
    t = start(dmarc="mark")
    body = signed(zone[1], message("news@signed.test", "dkim tampered mark"))
    body = body.replace(b"Hello from", b"Hullo from")
    send(t, "bounces@spffail.test", body)
    data = delivered(t, "dkim tampered mark")
    ar, _ = our_authres(data)
    [dk] = results(ar, "dkim")
    assert dk.result == "fail"
    [dm] = results(ar, "dmarc")
    assert dm.result == "fail"


# --------------------------------------------------------------------------- DMARC


def test_p_reject_without_aligned_pass_is_refused_in_enforce_mode(start):
    t = start(dmarc="enforce")
    r = send(t, "eve@spffail.test", message("eve@spffail.test", "forged"), 550, "5.7.1")
    assert "DMARC" in r.text
    t.wait_log(r"event=rejected .*reason=dmarc")
    assert t.mail_files(RCPT) == []
    assert not (t.maildir(RCPT) / ".Junk").exists()


def test_p_quarantine_goes_to_the_junk_folder(start):
    t = start(dmarc="enforce")
    send(t, "eve@quar.test", message("eve@quar.test", "quarantined"))
    data = wait_file(t, t.maildir(RCPT) / ".Junk" / "new", "quarantined")
    assert (t.maildir(RCPT) / ".Junk" / "maildirfolder").exists()
    ar, _ = our_authres(data)
    [dm] = results(ar, "dmarc")
    assert dm.result == "fail"
    assert "quarantine" in dict(headers(data))["X-Tern-DMARC"]
    assert t.mail_files(RCPT) == []  # not in the inbox


def test_forged_authentication_results_claiming_us_are_removed(start):
    t = start()
    forged = (f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=bank.test;\r\n"
              f"  dmarc=pass header.from=bank.test\r\n"
              f"Authentication-Results: other.example; spf=pass smtp.mailfrom=x.test\r\n"
              f"X-Tern-DMARC: none\r\n")
    send(t, "bob@spfpass.test", message("bob@spfpass.test", "forged ar", extra=forged))
    data = delivered(t, "forged ar")
    ars = [v for n, v in headers(data) if n.lower() == "authentication-results"]
    ours = [v for v in ars if v.startswith(HOST)]
    assert len(ours) == 1 and "bank.test" not in ours[0], ars
    assert any(v.startswith("other.example") for v in ars), "others' results stay"
    assert "X-Tern-DMARC" not in dict(headers(data))
    t.wait_log(r"event=auth_checks .*forged_results_removed=2")


# --------------------------------------------------------------------------- exemptions


def test_relay_networks_client_is_not_checked(start):
    t = start(dmarc="enforce", relay=["127.0.0.1/32"])
    send(t, "eve@spffail.test", message("eve@spffail.test", "from our network"))
    data = delivered(t, "from our network")
    names = [n.lower() for n, _ in headers(data)]
    assert "authentication-results" not in names and "received-spf" not in names, names
    assert not t.log_lines("event=auth_checks")


# --------------------------------------------------------------------------- DNS trouble


@pytest.fixture
def silent_dns():
    """A UDP port that takes queries and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield f"127.0.0.1@{s.getsockname()[1]}"
    s.close()


def test_dns_timeout_is_temperror_and_delivered(start, silent_dns):
    t = start(dmarc="enforce", forward=silent_dns, timeout=1)
    send(t, "eve@spffail.test", message("eve@spffail.test", "dns down"))
    data = delivered(t, "dns down", )
    ar, _ = our_authres(data)
    [spf] = [r for r in results(ar, "spf") if prop(r, "smtp", "mailfrom")]
    assert spf.result == "temperror"
    [dm] = results(ar, "dmarc")
    assert dm.result == "temperror"


def test_dns_timeout_defers_with_defer_on_temperror(start, silent_dns):
    t = start(dmarc="enforce", forward=silent_dns, timeout=1, defer_on_temperror=True)
    send(t, "eve@spffail.test", message("eve@spffail.test", "dns down defer"), 451, "4.7.1")
    t.wait_log(r"event=rejected .*code=451 reason=dmarc")
    assert t.mail_files(RCPT) == []


# --------------------------------------------------------------------------- paths


def test_bdat_message_is_checked_too(start, zone):
    t = start(dmarc="enforce")
    body = signed(zone[1], message("news@signed.test", "bdat good"))
    with t.client() as c:
        expect(c.greeting, 220)
        expect(c.cmd(f"EHLO {HELO}"), 250)
        expect(c.cmd("MAIL FROM:<bounces@spffail.test>"), 250)
        expect(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        half = len(body) // 2
        c.send(f"BDAT {half}\r\n".encode() + body[:half])
        expect(c.reply(), 250)
        c.send(f"BDAT {len(body) - half} LAST\r\n".encode() + body[half:])
        expect(c.reply(), 250, "2.0.0")
    data = delivered(t, "bdat good")
    ar, _ = our_authres(data)
    assert [r.result for r in results(ar, "dkim")] == ["pass"]
    # and a forged one over BDAT is refused like over DATA
    with t.client() as c:
        expect(c.greeting, 220)
        expect(c.cmd(f"EHLO {HELO}"), 250)
        expect(c.cmd("MAIL FROM:<eve@spffail.test>"), 250)
        expect(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        m = message("eve@spffail.test", "bdat forged")
        c.send(f"BDAT {len(m)} LAST\r\n".encode() + m)
        expect(c.reply(), 550, "5.7.1")


def test_large_signed_body_is_hashed_off_the_loop_and_passes(start, zone):
    # over 256 KiB: verify.c hashes the body on the thread pool
    big = "".join(f"line {i:06d} of a long newsletter, padded to be long enough\r\n"
                  for i in range(9000))
    body = signed(zone[1], message("news@signed.test", "big signed") + big.encode())
    assert len(body) > 512 * 1024
    t = start(dmarc="enforce")
    send(t, "bounces@spffail.test", body)
    data = delivered(t, "big signed")
    ar, _ = our_authres(data)
    assert [r.result for r in results(ar, "dkim")] == ["pass"]
    # a flipped byte deep in the body fails it
    bad = body.replace(b"line 008000", b"line 008001")
    send(t, "bounces@spffail.test", bad, 550, "5.7.1")


def test_spilled_signed_message_verifies_and_forged_results_go(start, zone):
    # past the 1 MiB spill threshold (issue 11 item 2): the body is in its own spool file
    # and the checks read it through a mapping; the client's header block stays in memory,
    # where a forged result claiming us is removed
    big = "".join(f"line {i:07d} of a very long newsletter, padded to be long enough\r\n"
                  for i in range(50000)).encode()
    forged = f"Authentication-Results: {HOST}; dkim=pass header.d=bank.test\r\n"
    body = signed(zone[1], message("news@signed.test", "spilled signed", extra=forged) + big)
    assert len(body) > 3 * 1024 * 1024
    t = start(dmarc="enforce", limits={"max_message_size": Raw("8m"),
                                       "data_timeout": Raw("30s")})
    send(t, "bounces@spffail.test", body)
    data = delivered(t, "spilled signed")
    ar, ars = our_authres(data)
    assert [r.result for r in results(ar, "dkim")] == ["pass"]
    assert not any("bank.test" in v for v in ars), ars
    assert data.endswith(big)
    # a flipped byte deep in the file fails it
    bad = body.replace(b"line 0040000", b"line 0040001")
    send(t, "bounces@spffail.test", bad, 550, "5.7.1")


def test_spf_off_adds_no_received_spf(start):
    t = start(spf=False)
    send(t, "bob@spfpass.test", message("bob@spfpass.test", "no spf"))
    data = delivered(t, "no spf")
    names = [n.lower() for n, _ in headers(data)]
    assert "received-spf" not in names, names
    ar, _ = our_authres(data)
    assert results(ar, "spf") == []
    # DMARC still ran, without SPF: no aligned pass for a p=reject domain, but mark mode
    assert [r.result for r in results(ar, "dmarc")] == ["fail"]


def test_rset_and_disconnect_while_checks_wait_on_dns(start, silent_dns):
    t = start(forward=silent_dns, timeout=1)
    # RSET and a new MAIL while SPF waits on a DNS server that never answers: the first
    # check is cancelled (it never reports), the second runs to its end
    with t.client() as c:
        expect(c.greeting, 220)
        expect(c.cmd(f"EHLO {HELO}"), 250)
        expect(c.cmd("MAIL FROM:<a@spffail.test>"), 250)
        expect(c.cmd("RSET"), 250)
        expect(c.cmd("MAIL FROM:<b@spffail.test>"), 250)
        expect(c.cmd("MAIL FROM:<c@spffail.test>"), 503)
        expect(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(message("b@spffail.test", "gone") + b".\r\n")
        # the client leaves while the verdict waits on DNS; like a client leaving during
        # the spool commit, the message goes on (at least once: it may come again)
    t.wait_log(r"event=auth_checks .*spf=temperror .*dmarc=temperror")
    assert len(t.log_lines("event=auth_checks")) == 1
    # the server goes on
    with t.client() as c:
        expect(c.greeting, 220)
        expect(c.cmd(f"EHLO {HELO}"), 250)
        expect(c.cmd("MAIL FROM:<a@spffail.test>"), 250)
        expect(c.cmd("QUIT"), 221)
