"""
test_policy.py — the abuse defences of mx listeners (policy { } in docs/config.md):
DNSBL/DNSWL scoring with value filters, early talkers, forward-confirmed reverse DNS,
greylisting and per-client rate limits.

A real unbound (remote_harness.Unbound) serves the test DNSBL zones and reverse records on
loopback; clients bind to different 127.0.0.x source addresses to be different hosts.
relay.networks is 127.0.0.1/32 only, so every other loopback address is a stranger (and
127.0.0.1, which conftest's readiness probe uses, is exempt from every check).

Never: wait without a bound, assert on elapsed time, or talk outside 127.0.0.0/8 and ::1.
"""

import ipaddress
import signal
import smtplib
import socket
import time

import pytest

from conftest import Client, Raw, expect, make_message
from remote_harness import DNS_RECORDS, Unbound

TRUSTED = "127.0.0.1"
CLEAN = "127.0.0.3"        # in no list
LISTED = "127.0.0.5"       # bl.test
OFFSET = "127.0.0.6"       # bl.test and the whitelist wl.test: the scores cancel
VALUE_MATCH = "127.0.0.8"  # bl2.test answers 127.0.0.2, which the filter wants
VALUE_OTHER = "127.0.0.9"  # bl2.test answers 127.0.0.4, which the filter does not want
FC_GOOD = "127.0.0.10"     # PTR good.test, and good.test has this address
FC_LIAR = "127.0.0.11"     # PTR liar.test, but liar.test points elsewhere
FC_NONE = "127.0.0.12"     # no PTR record at all

SENDER = "sender@example.org"
RCPT = "alice@example.test"


def rev4(ip, zone):
    return ".".join(reversed(ip.split("."))) + "." + zone


def rev6(ip, zone):
    nibbles = ipaddress.IPv6Address(ip).exploded.replace(":", "")
    return ".".join(reversed(nibbles)) + "." + zone


POLICY_RECORDS = [
    (rev4(TRUSTED, "bl.test"), "A", "127.0.0.2"),  # listed, but relay.networks is exempt
    (rev4(LISTED, "bl.test"), "A", "127.0.0.2"),
    (rev4(OFFSET, "bl.test"), "A", "127.0.0.2"),
    (rev4(OFFSET, "wl.test"), "A", "127.0.0.2"),
    (rev4(VALUE_MATCH, "bl2.test"), "A", "127.0.0.2"),
    (rev4(VALUE_OTHER, "bl2.test"), "A", "127.0.0.4"),
    (rev6("::1", "bl.test"), "A", "127.0.0.2"),
    (rev4(FC_GOOD, "in-addr.arpa"), "PTR", "good.test."),
    ("good.test", "A", FC_GOOD),
    (rev4(FC_LIAR, "in-addr.arpa"), "PTR", "liar.test."),
    ("liar.test", "A", "127.0.0.99"),
]

DNSBL = {"zones": ["bl.test*2", "wl.test*-2", "bl2.test=127.0.0.2*2"], "threshold": 2}


@pytest.fixture(scope="module")
def dns():
    d = Unbound(DNS_RECORDS + POLICY_RECORDS).start()
    yield d
    d.stop()


@pytest.fixture
def policy_tern(tern_factory, dns):
    """start(policy_section, **more_overrides) -> a running tern with that policy."""

    def start(policy, forward=None, ipv6_port=None, limits=None):
        cfg = {
            "relay": {"networks": [f"{TRUSTED}/32"]},
            "dns": {"forward": [forward or dns.forward]},
            "policy": policy,
        }
        if limits:
            cfg["limits"] = limits
        t = tern_factory(cfg, start=False)
        if ipv6_port:
            t.config["listen"]["mx6"] = {"address": f"[::1]:{ipv6_port}", "profile": "mx"}
            t.write_config()
        return t.start()

    return start


def send_ok(t, source, rcpt=RCPT, subject="policy test"):
    with t.client(source=source) as c:
        expect(c.greeting, 220)
        return c.send_message(SENDER, [rcpt], make_message(subject, to=rcpt))


# --------------------------------------------------------------------------
# DNSBL / DNSWL


def test_listed_client_is_refused_with_the_zone_in_the_greeting(policy_tern):
    t = policy_tern({"dnsbl": DNSBL})
    with t.client(source=LISTED) as c:
        r = expect(c.greeting, 554, "5.7.1")
        assert "bl.test" in r.text and f"[{LISTED}]" in r.text, r
        # RFC 5321 §3.1: after a 554 greeting the server waits for QUIT and answers 503
        expect(c.cmd("EHLO client.example.org"), 503)
        expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 503)
        expect(c.cmd("QUIT"), 221)
    line = t.wait_log(rf"event=policy .*client={LISTED} check=dnsbl .*action=refuse").group(0)
    assert "score=2" in line and "bl.test*2" in line, line


def test_listed_client_refused_for_a_real_client(policy_tern):
    t = policy_tern({"dnsbl": DNSBL})
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP("127.0.0.1", t.port, source_address=(LISTED, 0), timeout=10)
    assert e.value.smtp_code == 554
    assert b"blocked using bl.test" in e.value.smtp_error


def test_unlisted_and_whitelisted_clients_pass(policy_tern):
    t = policy_tern({"dnsbl": DNSBL})
    send_ok(t, CLEAN, subject="clean")
    # listed in bl.test (+2) and in the whitelist wl.test (-2): score 0 < 2
    send_ok(t, OFFSET, subject="offset")
    t.wait_mail(RCPT, count=2)
    line = t.wait_log(rf"client={OFFSET} check=dnsbl .*").group(0)
    assert "score=0" in line and "action=pass" in line, line


def test_value_filter_matches_only_its_address(policy_tern):
    t = policy_tern({"dnsbl": DNSBL})
    with t.client(source=VALUE_MATCH) as c:
        r = expect(c.greeting, 554, "5.7.1")
        assert "bl2.test" in r.text, r
    # listed in the same zone, but with a value the filter does not accept
    send_ok(t, VALUE_OTHER)


def test_trusted_network_is_exempt(policy_tern):
    t = policy_tern({"dnsbl": DNSBL})
    send_ok(t, TRUSTED)  # 1.0.0.127.bl.test exists, yet relay.networks skip the checks


def test_ipv6_client_is_looked_up_by_nibbles(policy_tern):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        port6 = probe.getsockname()[1]
    policy_tern({"dnsbl": DNSBL}, ipv6_port=port6)
    with socket.create_connection(("::1", port6), timeout=10) as s:
        s.settimeout(10)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"554 5.7.1"), data
    assert b"[::1] blocked using bl.test" in data, data


def test_dns_that_never_answers_does_not_block_mail(policy_tern):
    # a UDP socket that takes queries and never answers them
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        fwd = f"127.0.0.1@{silent.getsockname()[1]}"
        t = policy_tern({"dns_timeout": Raw("1s"), "dnsbl": DNSBL,
                         "fcrdns": {"enabled": True}}, forward=fwd)
        send_ok(t, LISTED)  # would be refused if the DNSBL had answered
        t.wait_mail(RCPT)
        line = t.wait_log(rf"client={LISTED} check=dnsbl .*").group(0)
        assert "failed=bl.test(timeout)" in line and "action=pass" in line, line
        t.wait_log(rf"client={LISTED} check=fcrdns result=temperror .*reason=timeout")
    finally:
        silent.close()


# --------------------------------------------------------------------------
# Early talkers


def read_line(sock, timeout=10):
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def test_early_talker_is_refused(policy_tern):
    # a long delay leaves no doubt that the client spoke first; the refusal comes at once
    t = policy_tern({"pregreet": {"delay": Raw("30s"), "action": "reject"}})
    with socket.create_connection(("127.0.0.1", t.port), timeout=10,
                                  source_address=("127.0.0.20", 0)) as s:
        first = read_line(s)
        assert first.startswith(b"220-"), first
        s.sendall(b"EHLO bot.example\r\n")  # before the greeting is complete
        rest = b""
        s.settimeout(10)
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break  # the server closed the connection
            rest += chunk
        assert b"554 5.5.1" in rest, rest
        assert b"250" not in rest, rest  # the EHLO was never executed
    t.wait_log(r"client=127.0.0.20 check=pregreet result=early-talker action=close")


def test_patient_client_gets_the_two_line_greeting(policy_tern):
    t = policy_tern({"pregreet": {"delay": Raw("1s"), "action": "reject"}})
    with t.client(source="127.0.0.21") as c:
        assert c.greeting.code == 220 and len(c.greeting.lines) == 2, c.greeting
        c.send_message(SENDER, [RCPT], make_message("patient"))
    t.wait_mail(RCPT)


def test_early_talker_ignored_is_only_logged(policy_tern):
    t = policy_tern({"pregreet": {"delay": Raw("1s"), "action": "ignore"}})
    with socket.create_connection(("127.0.0.1", t.port), timeout=10,
                                  source_address=("127.0.0.22", 0)) as s:
        assert read_line(s).startswith(b"220-")
        s.sendall(b"NOOP\r\n")
        assert read_line(s).startswith(b"220 ")
        assert read_line(s).startswith(b"250")  # executed once the greeting was out
    t.wait_log(r"client=127.0.0.22 check=pregreet result=early-talker action=ignore")


# --------------------------------------------------------------------------
# Forward-confirmed reverse DNS


@pytest.mark.parametrize("code", [450, 550])
def test_fcrdns_required(policy_tern, code):
    t = policy_tern({"fcrdns": {"require": True, "reject_code": code}})
    for ip in (FC_LIAR, FC_NONE):
        with t.client(source=ip) as c:
            c.ehlo()
            r = expect(c.cmd(f"MAIL FROM:<{SENDER}>"), code, f"{code // 100}.7.25")
            assert f"[{ip}]" in r.text, r
    t.wait_log(rf"client={FC_LIAR} check=fcrdns .*result=fail action=reject code={code}")
    t.wait_log(rf"client={FC_NONE} check=fcrdns .*result=none action=reject code={code}")
    # the confirmed one passes, and its name goes into Received
    send_ok(t, FC_GOOD)
    (_, data), = t.wait_mail(RCPT)
    assert f"(good.test [{FC_GOOD}])".encode() in data, data[:400]
    t.wait_log(rf"client={FC_GOOD} check=fcrdns result=pass name=good.test")


# --------------------------------------------------------------------------
# Greylisting


def rcpt_reply(t, source, rcpt=RCPT, sender=SENDER):
    with t.client(source=source) as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{sender}>"), 250)
        return c.cmd(f"RCPT TO:<{rcpt}>")


def test_greylisting_defers_then_accepts_and_survives_a_restart(policy_tern):
    t = policy_tern({"greylist": {"enabled": True, "delay": Raw("4s")}})
    src = "127.0.0.30"
    r = expect(rcpt_reply(t, src), 451, "4.7.1")
    assert "Greylisted" in r.text and "try again in" in r.text, r
    # too early (well within the 4 s): still deferred
    expect(rcpt_reply(t, src), 451, "4.7.1")
    # another recipient is another triplet; the trusted network is never greylisted
    expect(rcpt_reply(t, src, rcpt="bob@example.test"), 451, "4.7.1")
    send_ok(t, TRUSTED, subject="trusted")
    # after the delay the same triplet passes (bounded retry loop)
    deadline = time.monotonic() + 20
    while True:
        r = rcpt_reply(t, src)
        if r.code == 250:
            break
        assert r.is_(451, "4.7.1"), r
        assert time.monotonic() < deadline, "greylisting never let the retry through"
        time.sleep(0.5)
    t.wait_log(r"client=127.0.0.30 check=greylist net=127.0.0.0/24 .*result=passed")
    # the neighbour in the same /24 counts as the same sender network
    send_ok(t, "127.0.0.31", subject="neighbour")
    # the passed triplet is remembered across a restart (DATA/policy.db)
    t.stop()
    assert (t.data_dir / "policy.db").exists()
    t.start()
    send_ok(t, src, subject="after restart")


def test_greylisting_comes_after_recipient_validation(policy_tern):
    """An unknown local recipient gets its 550 5.1.1 and a relay-denied one its
    550 5.7.1 at the first attempt, not a 451 that invites a pointless retry
    (postgrey's order); nothing is greylisted for them. A known recipient in
    the same transaction is still greylisted."""
    t = policy_tern({"greylist": {"enabled": True, "delay": Raw("60s")}})
    src = "127.0.0.32"
    with t.client(source=src) as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        r = expect(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
        assert "Greylisted" not in r.text, r
        r = expect(c.cmd("RCPT TO:<someone@elsewhere.example>"), 550, "5.7.1")
        assert "Greylisted" not in r.text, r
        # the known one is deferred, and DATA finds no recipient taken
        expect(c.cmd(f"RCPT TO:<{RCPT}>"), 451, "4.7.1")
        expect(c.cmd("DATA"), 503)
    t.wait_log(rf"client={src} check=greylist .*{RCPT}.* result=new")
    assert not t.log_lines(f"client={src} ", "check=greylist", "nobody@example.test"), \
        "an unknown recipient was greylisted"
    assert not t.log_lines(f"client={src} ", "check=greylist", "someone@elsewhere"), \
        "a relay-denied recipient was greylisted"


def test_a_greylisted_alias_gives_back_its_members(policy_tern):
    """Greylisting now decides after the alias is expanded: a deferred alias must take its
    members back out of the transaction, or they would get the message of the recipients
    that were accepted."""
    t = policy_tern({"greylist": {"enabled": True, "delay": Raw("0s")}})
    src = "127.0.0.33"
    with t.client(source=src) as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        expect(c.cmd(f"RCPT TO:<{RCPT}>"), 451, "4.7.1")
        expect(c.cmd(f"RCPT TO:<{RCPT}>"), 250)  # delay 0: the retry passes
        expect(c.cmd("RCPT TO:<team@example.test>"), 451, "4.7.1")  # alice and bob
        expect(c.cmd("DATA"), 354)
        c.send(make_message("greylisted alias") + b".\r\n")
        expect(c.reply(), 250)
    # queued for alice alone (bob, a member of the deferred alias, is not in it)
    t.wait_log(r"event=queued .*client=127\.0\.0\.33 .*nrcpt=1 ")
    t.wait_mail_with(RCPT, "greylisted alias")
    assert t.mail_files("bob@example.test") == [], "a greylisted alias's member got it"


# --------------------------------------------------------------------------
# Rate limits


def test_connection_rate_limit(policy_tern):
    t = policy_tern({"ratelimit": {"connections_per_minute": 3}})
    for _ in range(3):
        with t.client(source="127.0.0.40") as c:
            expect(c.greeting, 220)
            c.cmd("QUIT")
    with t.client(source="127.0.0.40") as c:
        r = expect(c.greeting, 421, "4.7.0")
        assert "3 per minute" in r.text, r
        assert c.closed_by_peer()
    # another address has its own count
    with t.client(source="127.0.0.41") as c:
        expect(c.greeting, 220)
    t.wait_log(r"client=127.0.0.40 check=ratelimit limit=connections per_minute=3 "
               r"action=close code=421")


def test_message_and_recipient_rate_limits(policy_tern):
    t = policy_tern({"ratelimit": {"messages_per_minute": 2, "recipients_per_minute": 3}})
    with t.client(source="127.0.0.42") as c:
        c.ehlo()
        for _ in range(2):
            expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
            expect(c.cmd("RSET"), 250)
        r = expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 452, "4.7.1")
        assert "2 per minute" in r.text, r
    with t.client(source="127.0.0.43") as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        for _ in range(3):
            expect(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        r = expect(c.cmd("RCPT TO:<bob@example.test>"), 451, "4.7.1")
        assert "3 per minute" in r.text, r
        # the recipients already accepted still make a message
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: rate\r\n\r\nhi\r\n.\r\n")
        expect(c.reply(), 250)
    t.wait_log(r"client=127.0.0.42 check=ratelimit limit=messages per_minute=2 .*code=452")
    t.wait_log(r"client=127.0.0.43 check=ratelimit limit=recipients per_minute=3 .*code=451")


def test_check_config_prints_the_policy_section(policy_tern, dns):
    t = policy_tern({"dnsbl": {"zones": ["Bl.Test.=127.0.0.[2..4;9]*3"], "threshold": 3}})
    out = t.cli("check-config", check=True).stdout
    assert '"bl.test=127.0.0.[2..4;9]*3"' in out, out
    assert "threshold = 3;" in out
    bad = t.config_path.read_text().replace("[2..4;9]", "[4..2]")
    t.config_path.write_text(bad)
    r = t.cli("check-config")
    assert r.returncode != 0 and "policy.dnsbl.zones" in r.stderr and "upwards" in r.stderr, r


def test_idle_timeout_while_the_greeting_waits_closes_cleanly(policy_tern):
    # the greeting waits 30 s, the session's idle timeout is 1 s: the timeout wins, and the
    # verdict that arrives later must not greet (or touch) the closing session
    t = policy_tern({"pregreet": {"delay": Raw("30s"), "action": "reject"}},
                    limits={"idle_timeout": Raw("1s")})
    with socket.create_connection(("127.0.0.1", t.port), timeout=10,
                                  source_address=("127.0.0.50", 0)) as s:
        s.settimeout(10)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"220-"), data
    assert b"421 4.4.2" in data, data
    assert b"\r\n220 " not in data, data  # no greeting after the timeout
    t.wait_log(r"client=127.0.0.50 reason=(idle|data)-timeout")
    # the daemon is still well (the trusted network skips the wait)
    send_ok(t, TRUSTED)


def test_sighup_applies_a_new_policy_to_new_sessions(policy_tern):
    t = policy_tern({})
    send_ok(t, LISTED, subject="before reload")  # no lists configured yet
    t.config["policy"] = {"dnsbl": DNSBL}
    t.write_config()
    t.signal(signal.SIGHUP)
    t.wait_log(r"event=reloaded")
    with t.client(source=LISTED) as c:
        expect(c.greeting, 554, "5.7.1")
