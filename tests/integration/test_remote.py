"""Remote delivery (issue 3): MX routing, SMTP client, retries, DSNs, routes, queue control.

A real unbound serves the test zones (remote_harness.DNS_RECORDS); aiosmtpd servers on
127.0.0.N:P play the remote MXes; tern listens on 127.0.0.1:P and uses P as remote_port.
Each test gets its own tern (fresh spool and Maildirs); DNS and fake MXes live per module
and are reset between tests.
"""

import email
import email.policy
import re
import time

import pytest

from conftest import make_message
from remote_harness import (AUTH_PASSWORD, AUTH_USER, DEADLINE, HOSTNAME, IP, SENDER, Raw,
                            check_alive, dsns_in_maildir, submit, wait_dsn,
                            wait_queue_empty)
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)

# The smarthost fake requires AUTH without TLS on purpose (loopback, tls = "none").
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

# --------------------------------------------------------------------------
# Helpers.


def msg(subject, to, body="hello from alice\r\n", extra_headers=""):
    return make_message(subject, body=body, frm=SENDER, to=to, extra_headers=extra_headers)


def body_of(content):
    data = content.replace(b"\r\n", b"\n")
    return data.split(b"\n\n", 1)[1] if b"\n\n" in data else b""


def assert_failure_dsn(dsn, rcpt, status_rx, orig_needle):
    assert dsn.msg.get_content_type() == "multipart/report", dsn
    assert dsn.msg.get_param("report-type") == "delivery-status", dsn
    assert dsn.status_part is not None, f"no message/delivery-status part: {dsn!r}"
    assert HOSTNAME in dsn.per_message.get("reporting-mta", ""), dsn.per_message
    r = dsn.rcpt(rcpt)
    assert r is not None, f"no Final-Recipient {rcpt} in {dsn.recipients}"
    assert re.match(r"rfc822;\s*" + re.escape(rcpt) + r"$", r["final-recipient"], re.I), r
    assert r.get("action", "").lower() == "failed", r
    assert re.fullmatch(status_rx, r.get("status", "")), f"Status {r.get('status')!r}: {r}"
    assert dsn.original_part is not None, f"original message/headers not included: {dsn!r}"
    assert orig_needle in dsn.original_text(), dsn.original_text()[:2000]
    # From the null sender: the Maildir copy's Return-Path says so.
    head = dsn.raw.split(b"\n", 1)[0]
    assert head.startswith(b"Return-Path: <>"), head
    return r


def ws(s):
    return re.sub(r"\s+", " ", s or "")


# --------------------------------------------------------------------------
# 1-2. Routing by MX.


def test_mx_preference_and_fallback(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["x@pref.test"], msg("pref-1", "x@pref.test"))
    got = mx["up"].wait_messages(1, tern=t)
    assert len(got) == 1
    m = got[0]
    assert m.mail_from == SENDER and m.rcpt_tos == ["x@pref.test"], m
    assert b"Subject: pref-1" in m.content
    t.wait_log(rf"event=delivered id={qid}\b.*relay=mx-up\.pref\.test")
    assert mx["last"].messages == [] and mx["last"].ehlos == 0, \
        "preference 30 used although preference 20 accepted"
    wait_queue_empty(t)


def test_4xx_greeting_goes_to_next_mx(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["g@busy.test"], msg("busy-1", "g@busy.test"))
    m = mx["ok"].wait_messages(1, tern=t)[0]
    assert m.rcpt_tos == ["g@busy.test"]
    assert mx.busy.connections >= 1, "the preferred MX (421 greeting) was never tried"
    t.wait_log(rf"event=delivered id={qid}\b.*relay=mx\.ok\.test")
    wait_queue_empty(t)


def test_implicit_mx_from_a_record(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["y@implicit.test"], msg("implicit-1", "y@implicit.test"))
    m = mx["implicit"].wait_messages(1, tern=t)[0]
    assert m.rcpt_tos == ["y@implicit.test"] and m.mail_from == SENDER
    t.wait_log(rf"event=delivered id={qid}\b.*relay=implicit\.test")
    wait_queue_empty(t)


# --------------------------------------------------------------------------
# 3-5. Bounces with DSNs.


def test_null_mx_bounces_5_1_10(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["x@nullmx.test"], msg("nullmx-1", "x@nullmx.test"))
    dsn = wait_dsn(t, "x@nullmx.test")
    assert_failure_dsn(dsn, "x@nullmx.test", r"5\.1\.10", "nullmx-1")
    t.wait_log(rf"event=bounced id={qid}\b")
    wait_queue_empty(t)


def test_nxdomain_bounces_5_1_2(remote_tern, mx):
    t = remote_tern()
    submit(t, ["x@gone.test"], msg("gone-1", "x@gone.test"))
    dsn = wait_dsn(t, "x@gone.test")
    assert_failure_dsn(dsn, "x@gone.test", r"5\.1\.2", "gone-1")
    wait_queue_empty(t)


def test_dns_failure_defers_not_bounces(remote_tern, mx):
    t = remote_tern()
    rcpt = "x@servfail.test"
    qid = submit(t, [rcpt], msg("servfail-1", rcpt))
    t.wait_log(rf"event=deferred id={qid}\b")
    time.sleep(2.5)  # a few retries
    assert not t.log_lines("event=bounced", qid), t.log_tail()
    assert dsns_in_maildir(t) == []
    out = t.queue_list()
    assert re.search(r"to=<x@servfail\.test> state=(deferred|queued)", out), out


@pytest.mark.parametrize("where,domain,server,status,words", [
    ("rcpt", "reject.test", "reject", r"5\.1\.1", "no mailbox here by that name (zorglub-7781)"),
    ("data", "rejectdata.test", "rejectdata", r"5\.7\.1",
     "Message content refused by policy (quux-4410)"),
])
def test_remote_reject_bounces_with_diagnostic(remote_tern, mx, where, domain, server, status,
                                               words):
    t = remote_tern()
    rcpt = f"nobody@{domain}"
    qid = submit(t, [rcpt], msg(f"reject-{where}", rcpt))
    dsn = wait_dsn(t, rcpt)
    r = assert_failure_dsn(dsn, rcpt, status, f"reject-{where}")
    diag = ws(r.get("diagnostic-code"))
    assert diag.lower().startswith("smtp;"), r
    assert words in diag, f"remote's words missing from Diagnostic-Code: {diag!r}"
    remote = r.get("remote-mta", "")
    assert f"mx.{domain}" in remote or IP[server] in remote, f"Remote-MTA {remote!r}"
    assert mx[server].messages == []
    t.wait_log(rf"event=bounced id={qid}\b")
    wait_queue_empty(t)


# --------------------------------------------------------------------------
# 6-8. Retries.


def test_defer_then_deliver_on_retry(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["z@defer.test"], msg("defer-1", "z@defer.test"))
    saw_deferred = None
    deadline = time.monotonic() + DEADLINE
    while not mx["deferonce"].messages:
        check_alive(t)
        out = t.queue_list()
        if re.search(r"to=<z@defer\.test> state=deferred", out):
            saw_deferred = out
        assert time.monotonic() < deadline, f"not delivered after retry\n{t.log_tail()}"
        time.sleep(0.05)
    assert mx["deferonce"].attempts >= 2
    m = mx["deferonce"].messages
    assert len(m) == 1 and m[0].rcpt_tos == ["z@defer.test"]
    t.wait_log(rf"event=deferred id={qid}\b")
    t.wait_log(rf"event=delivered id={qid}\b")
    assert saw_deferred, "never saw state=deferred in `tern queue list` between the tries"
    assert "frobnitz-2291" in saw_deferred, \
        f"queue list does not show the last reply:\n{saw_deferred}"
    wait_queue_empty(t)


def test_lifetime_expiry_bounces_with_last_reason(remote_tern, mx):
    t = remote_tern(max_lifetime=Raw("3s"))
    qid = submit(t, ["late@lifetime.test"], msg("lifetime-1", "late@lifetime.test"))
    dsn = wait_dsn(t, "late@lifetime.test", timeout=15)
    r = assert_failure_dsn(dsn, "late@lifetime.test", r"4\.4\.7|5\.\d{1,3}\.\d{1,3}",
                           "lifetime-1")
    assert "blorpt-5512" in ws(r.get("diagnostic-code")) + ws(dsn.human), \
        f"last reason missing from DSN: {r}"
    assert mx["lifetime"].attempts >= 1
    t.wait_log(rf"event=bounced id={qid}\b")
    wait_queue_empty(t)


def test_drop_mid_transaction_then_delivered_once(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["d@drop.test"], msg("drop-1", "d@drop.test"))
    mx["drop"].wait_messages(1, tern=t)
    t.wait_log(rf"event=delivered id={qid}\b")
    wait_queue_empty(t)
    time.sleep(2.5)  # > retry_max: a spurious second try would show now
    assert len(mx["drop"].messages) == 1, mx["drop"].messages
    assert mx["drop"].attempts == 2, mx["drop"].attempts


# --------------------------------------------------------------------------
# 9. Smarthost route with AUTH.


def test_smarthost_route_with_auth(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["s@smart.test"], msg("smart-1", "s@smart.test"))
    m = mx["smart"].wait_messages(1, tern=t)[0]
    assert m.rcpt_tos == ["s@smart.test"] and m.mail_from == SENDER
    auths = mx["smart"].auths
    assert auths, "no AUTH seen"
    mech, user, pw, ok = auths[-1]
    assert (user, pw, ok) == (AUTH_USER, AUTH_PASSWORD, True), auths
    assert mech in ("PLAIN", "LOGIN"), mech
    t.wait_log(rf"event=delivered id={qid}\b")
    wait_queue_empty(t)


# --------------------------------------------------------------------------
# 10-11. 8BITMIME and SMTPUTF8.


TEXT_8BIT = "Grüße aus Köln – naïve café, ½ € ✓\r\nZweite Zeile: äöü ÄÖÜ ß\r\n"
HDR_8BIT = ("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n")


def test_8bit_downconverted_for_peer_without_8bitmime(remote_tern, mx):
    t = remote_tern()
    body = msg("eightbit-1", "e@no8bit.test", body=TEXT_8BIT, extra_headers=HDR_8BIT)
    submit(t, ["e@no8bit.test"], body, mail_params="BODY=8BITMIME")
    m = mx["no8bit"].wait_messages(1, tern=t)[0]
    assert all(b < 0x80 for b in m.content), "8-bit bytes sent to a peer without 8BITMIME"
    assert not any(o.startswith("BODY=8BITMIME") for o in m.mail_options), m.mail_options
    parsed = email.message_from_bytes(m.content, policy=email.policy.default)
    assert parsed["Content-Transfer-Encoding"].lower() == "quoted-printable", m.content[:1000]
    assert parsed.get_content().replace("\r\n", "\n") == TEXT_8BIT.replace("\r\n", "\n")
    assert parsed["Subject"] == "eightbit-1"


def test_8bit_passed_unchanged_to_peer_with_8bitmime(remote_tern, mx):
    t = remote_tern()
    body = msg("eightbit-2", "e@ok.test", body=TEXT_8BIT, extra_headers=HDR_8BIT)
    submit(t, ["e@ok.test"], body, mail_params="BODY=8BITMIME")
    m = mx["ok"].wait_messages(1, tern=t)[0]
    assert "BODY=8BITMIME" in m.mail_options, m.mail_options
    assert m.content.endswith(body), "message changed in transit to an 8BITMIME peer"


def test_smtputf8_needed_but_not_offered_bounces_5_6_7(remote_tern, mx):
    t = remote_tern()
    rcpt = "jürgen@noutf8.test"
    qid = submit(t, [rcpt], msg("utf8-1", rcpt), mail_params="SMTPUTF8")
    dsn = wait_dsn(t, "noutf8.test")
    recs = [r for r in dsn.recipients if "noutf8.test" in r.get("final-recipient", "")]
    assert recs, dsn.recipients
    assert recs[0].get("action", "").lower() == "failed", recs[0]
    assert recs[0].get("status") == "5.6.7", recs[0]
    assert mx["noutf8"].messages == []
    t.wait_log(rf"event=bounced id={qid}\b")


def test_smtputf8_passed_to_peer_that_offers_it(remote_tern, mx):
    t = remote_tern()
    rcpt = "jürgen@ok.test"
    submit(t, [rcpt], msg("utf8-2", rcpt), mail_params="SMTPUTF8")
    m = mx["ok"].wait_messages(1, tern=t)[0]
    assert "SMTPUTF8" in m.mail_options, m.mail_options
    assert m.rcpt_tos == [rcpt]


def test_message_too_big_for_peer_bounces_5_3_4(remote_tern, mx):
    t = remote_tern()
    rcpt = "big@small.test"
    qid = submit(t, [rcpt], msg("big-1", rcpt, body="0123456789abcdef" * 8 * 40 + "\r\n"))
    dsn = wait_dsn(t, rcpt)
    assert_failure_dsn(dsn, rcpt, r"5\.3\.4", "big-1")
    assert mx["small"].messages == []
    t.wait_log(rf"event=bounced id={qid}\b")
    wait_queue_empty(t)


def test_helo_fallback_and_8bit_downconverted(remote_tern, mx):
    t = remote_tern()
    body = msg("helo-1", "h@helo.test", body=TEXT_8BIT, extra_headers=HDR_8BIT)
    qid = submit(t, ["h@helo.test"], body, mail_params="BODY=8BITMIME")
    m = mx["helo"].wait_messages(1, tern=t)[0]
    assert mx["helo"].helos >= 1, "never fell back to HELO"
    assert m.mail_options == [], f"ESMTP parameters sent after HELO: {m.mail_options}"
    assert all(b < 0x80 for b in m.content), "8-bit bytes sent to a HELO-only peer"
    parsed = email.message_from_bytes(m.content, policy=email.policy.default)
    assert parsed.get_content().replace("\r\n", "\n") == TEXT_8BIT.replace("\r\n", "\n")
    t.wait_log(rf"event=delivered id={qid}\b")


# --------------------------------------------------------------------------
# 12-13. Transactions and connections.


def test_several_recipients_one_transaction(remote_tern, mx):
    t = remote_tern()
    rcpts = ["a@multi.test", "b@multi.test"]
    submit(t, rcpts, msg("multi-1", "a@multi.test"))
    got = mx["ok"].wait_messages(1, tern=t)
    time.sleep(0.5)
    got = mx["ok"].messages
    assert len(got) == 1, f"expected one transaction, got {got}"
    assert sorted(got[0].rcpt_tos) == rcpts, got[0]


def test_connection_reused_for_several_messages(remote_tern, mx):
    t = remote_tern(max_per_destination=1)
    ids = [submit(t, [f"r{i}@slow.test"], msg(f"slow-{i}", f"r{i}@slow.test")) for i in range(3)]
    mx["slow"].wait_messages(3, tern=t)
    for q in ids:
        t.wait_log(rf"event=delivered id={q}\b")
    n_sessions = len(mx["slow"].sessions)
    assert n_sessions < 3, (f"3 messages used {n_sessions} connections "
                            f"({mx['slow'].ehlos} EHLOs): no reuse")


# --------------------------------------------------------------------------
# 14. Restart with deferred mail.


def test_restart_keeps_deferred_mail(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["w@restart.test"], msg("restart-1", "w@restart.test"))
    mx["restart"].wait_attempts(1, tern=t)
    t.wait_log(rf"event=deferred id={qid}\b")
    rc = t.stop()
    assert rc == 0, f"tern exit code {rc} on SIGTERM\n{t.log_tail()}"
    assert mx["restart"].messages == []
    mx["restart"].set_mode("accept")
    t.start()
    m = mx["restart"].wait_messages(1, tern=t)[0]
    assert m.rcpt_tos == ["w@restart.test"]
    t.wait_log(rf"event=delivered id={qid}\b")
    wait_queue_empty(t)


# --------------------------------------------------------------------------
# 15. Loops.


@pytest.mark.parametrize("domain", ["loop.test", "loop2.test"])
def test_mx_pointing_at_ourselves_bounces_5_4_6(remote_tern, mx, domain):
    t = remote_tern()
    rcpt = f"x@{domain}"
    qid = submit(t, [rcpt], msg(f"loop-{domain}", rcpt))
    dsn = wait_dsn(t, rcpt)
    assert_failure_dsn(dsn, rcpt, r"5\.4\.6", f"loop-{domain}")
    r = dsn.rcpt(rcpt)
    assert "loops back to myself" in (ws(r.get("diagnostic-code")) + ws(dsn.human)).lower(), r
    queued_from_alice = t.log_lines("event=queued", f"from=<{SENDER}>")
    assert len(queued_from_alice) == 1, \
        "tern connected to itself and accepted its own relayed copy:\n" + \
        "\n".join(queued_from_alice)
    t.wait_log(rf"event=bounced id={qid}\b")
    wait_queue_empty(t)


# --------------------------------------------------------------------------
# 16. NOTIFY.


def test_notify_never_suppresses_bounce(remote_tern, mx):
    t = remote_tern()
    rcpt = "never@reject.test"
    qid = submit(t, [rcpt], msg("never-1", rcpt), rcpt_params={rcpt: "NOTIFY=NEVER"})
    t.wait_log(rf"event=bounced id={qid}\b")
    wait_queue_empty(t)
    time.sleep(1.5)
    assert dsns_in_maildir(t) == [], "a DSN was sent although NOTIFY=NEVER"


def test_notify_success_to_peer_without_dsn_gives_relayed(remote_tern, mx):
    t = remote_tern()
    rcpt = "happy@ok.test"
    qid = submit(t, [rcpt], msg("success-1", rcpt), mail_params="RET=HDRS ENVID=env-77",
                 rcpt_params={rcpt: "NOTIFY=SUCCESS ORCPT=rfc822;happy@ok.test"})
    m = mx["ok"].wait_messages(1, tern=t)[0]
    assert not any(o.startswith(("NOTIFY", "ORCPT")) for o in m.rcpt_options), \
        f"DSN parameters sent to a peer that does not offer DSN: {m.rcpt_options}"
    dsn = wait_dsn(t, rcpt)
    assert dsn.msg.get_param("report-type") == "delivery-status"
    r = dsn.rcpt(rcpt)
    assert r is not None, dsn.recipients
    assert r.get("action", "").lower() == "relayed", r
    assert re.fullmatch(r"2\.\d{1,3}\.\d{1,3}", r.get("status", "")), r
    assert dsn.per_message.get("original-envelope-id") == "env-77", dsn.per_message
    t.wait_log(rf"event=delivered id={qid}\b")


def test_dsn_parameters_passed_to_peer_that_offers_dsn(remote_tern, mx):
    t = remote_tern()
    rcpt = "pass@dsn.test"
    qid = submit(t, [rcpt], msg("dsnpass-1", rcpt), mail_params="RET=HDRS ENVID=env-88",
                 rcpt_params={rcpt: "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@dsn.test"})
    m = mx["dsn"].wait_messages(1, tern=t)[0]
    mo = [o.upper() for o in m.mail_options]
    ro = [o.upper() for o in m.rcpt_options]
    assert "RET=HDRS" in mo and "ENVID=ENV-88" in mo, m.mail_options
    assert any(o.startswith("NOTIFY=") and set(o[7:].split(",")) == {"SUCCESS", "FAILURE"}
               for o in ro), m.rcpt_options
    assert "ORCPT=RFC822;ORIG@DSN.TEST" in ro, m.rcpt_options
    t.wait_log(rf"event=delivered id={qid}\b")
    time.sleep(1.5)
    assert dsns_in_maildir(t) == [], \
        "tern sent a SUCCESS notice although the next hop took DSN over"


def test_bounce_of_null_sender_goes_to_postmaster(remote_tern, mx):
    t = remote_tern()
    rcpt = "nobody@reject.test"
    qid = submit(t, [rcpt], msg("nullsender-1", rcpt), mail_from="")
    t.wait_log(rf"event=bounced id={qid}\b")
    dsn = wait_dsn(t, rcpt)  # alice is postmaster@example.test (alias)
    assert "postmaster" in str(dsn.msg["To"]).lower(), dsn.msg["To"]
    assert dsn.raw.split(b"\n", 1)[0].startswith(b"Return-Path: <>")
    assert mx["reject"].rcpt_attempts == 1, "the notice itself went out to a remote server"
    wait_queue_empty(t)


def test_delay_notice_once_after_delay_warning(remote_tern, mx):
    t = remote_tern(delay_warning=Raw("1s"))
    rcpt = "slowpoke@delay.test"
    qid = submit(t, [rcpt], msg("delay-1", rcpt), rcpt_params={rcpt: "NOTIFY=DELAY,FAILURE"})
    dsn = wait_dsn(t, rcpt, timeout=10)
    r = dsn.rcpt(rcpt)
    assert r is not None, dsn.recipients
    assert r.get("action", "").lower() == "delayed", r
    assert re.fullmatch(r"4\.\d{1,3}\.\d{1,3}", r.get("status", "")), r
    assert "blorpt-5512" in ws(r.get("diagnostic-code")) + ws(dsn.human), r
    assert qid in t.queue_list(), "message left the queue after a delay notice"
    time.sleep(3.0)  # two or three more retries
    assert len(dsns_in_maildir(t)) == 1, "more than one delay notice for one message"
    assert mx["delay"].attempts >= 2


# --------------------------------------------------------------------------
# 17. Hold and release.


def test_hold_stops_retries_and_release_delivers(remote_tern, mx):
    t = remote_tern()
    qid = submit(t, ["h@hold.test"], msg("hold-1", "h@hold.test"))
    mx["hold"].wait_attempts(1, tern=t)
    t.wait_log(rf"event=deferred id={qid}\b")
    t.cli("queue", "hold", qid, check=True)
    time.sleep(0.3)  # an attempt already in flight may still finish
    before = mx["hold"].attempts
    show = t.cli("queue", "show", qid, check=True).stdout
    assert "state=held" in show, show
    time.sleep(5.0)  # retry_base 1s, retry_max 2s: at least two retries would have happened
    assert mx["hold"].attempts == before, \
        f"held message was tried {mx['hold'].attempts - before} more times\n{t.log_tail()}"
    show = t.cli("queue", "show", qid, check=True).stdout
    assert "state=held" in show, show
    mx["hold"].set_mode("accept")
    t.cli("queue", "release", qid, check=True)
    m = mx["hold"].wait_messages(1, timeout=10, tern=t)[0]
    assert m.rcpt_tos == ["h@hold.test"]
    t.wait_log(rf"event=delivered id={qid}\b")
    wait_queue_empty(t)


# --------------------------------------------------------------------------
# Transactions: a failed one must not lose its job; big jobs go in batches.


class ScriptedMX:
    """A fake MX of the test's own on 127.0.0.41 (reached through a route): refuses
    recipients whose local part starts with "bad", optionally offers PIPELINING and
    answers EHLO late (so that messages queue up behind one connection)."""

    IP = "127.0.0.41"

    def __init__(self, pipelining=False, ehlo_delay=0.0):
        import socket
        import threading
        self.pipelining = pipelining
        self.ehlo_delay = ehlo_delay
        self.lock = threading.Lock()
        self.sessions = []
        self.rcpt_cmds = []     # every address given in RCPT TO, in order
        self.transactions = []  # (sorted recipients, content) per accepted DATA
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((self.IP, 0))
            self.port = s.getsockname()[1]
        from aiosmtpd.controller import Controller
        self.controller = Controller(self, hostname=self.IP, port=self.port,
                                     ready_timeout=10, server_hostname="fake-scripted.test")

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def route(self, domain):
        return {"routes": {domain: {"via": f"smtp://{self.IP}:{self.port}", "tls": "none"}}}

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        import asyncio
        with self.lock:
            if not any(s is session for s in self.sessions):
                self.sessions.append(session)
        if self.ehlo_delay:
            await asyncio.sleep(self.ehlo_delay)
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_cmds.append(address)
        if address.split("@")[0].startswith("bad"):
            return f"550 5.1.1 <{address}>: no such user (scripted-3141)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.transactions.append((sorted(envelope.rcpt_tos),
                                      bytes(envelope.original_content or b"")))
        return "250 2.0.0 OK queued"


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_message_with_every_recipient_refused_still_bounces_when_the_connection_is_reused(
        remote_tern, mx, pipelining):
    # One connection (max_per_destination = 1, EHLO answered late so both messages
    # are queued): the first transaction ends in RSET with nothing accepted; its
    # job must still be finished (bounced), and the second message delivered.
    with ScriptedMX(pipelining=pipelining, ehlo_delay=1.0) as fake:
        t = remote_tern(extra=fake.route("scripted.test"), max_per_destination=1)
        bad = ["bad1@scripted.test", "bad2@scripted.test"]
        q1 = submit(t, bad, msg("all-refused", bad[0]))
        q2 = submit(t, ["good@scripted.test"], msg("accepted", "good@scripted.test"))
        t.wait_log(rf"event=delivered id={q2}\b", timeout=DEADLINE)
        for b in bad:
            t.wait_log(rf"event=bounced id={q1} to=<{b}>", timeout=DEADLINE)
        dsn = wait_dsn(t, bad[0])
        assert_failure_dsn(dsn, bad[0], r"5\.1\.1", "all-refused")
        assert "scripted-3141" in ws(dsn.rcpt(bad[0]).get("diagnostic-code")), dsn.recipients
        wait_queue_empty(t)
        assert len(fake.sessions) == 1, f"{len(fake.sessions)} sessions: not the reuse case"
        assert [r for r, _ in fake.transactions] == [["good@scripted.test"]]


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_250_recipients_go_in_transactions_of_100(remote_tern, mx, pipelining):
    # RFC 5321 §4.5.3.1.8: a server need take only 100 recipients per transaction.
    with ScriptedMX(pipelining=pipelining) as fake:
        t = remote_tern(extra={**fake.route("scripted.test"),
                               "limits": {"max_recipients": 1000}})
        rcpts = [f"u{i}@scripted.test" for i in range(250)]
        qid = submit(t, rcpts, msg("many-rcpts", rcpts[0]))
        wait_queue_empty(t, timeout=DEADLINE * 2)
        assert len(t.log_lines("event=delivered", f"id={qid}")) == 250, t.log_tail()
        assert not t.log_lines("event=bounced"), t.log_tail()
        assert not t.log_lines("event=deferred"), t.log_tail()
        sizes = [len(r) for r, _ in fake.transactions]
        assert sizes == [100, 100, 50], sizes
        got = [a for r, _ in fake.transactions for a in r]
        assert sorted(got) == sorted(rcpts), "a recipient missing or delivered twice"
        assert sorted(fake.rcpt_cmds) == sorted(rcpts), "a RCPT TO sent twice or never"
        assert all(b"Subject: many-rcpts" in c for _, c in fake.transactions)


def test_batches_keep_per_recipient_results(remote_tern, mx):
    # 150 recipients, every 7th refused: the refused ones bounce, the rest of both
    # batches is delivered, and a batch whose RCPTs were all refused would not stop
    # the next (u100..u149 are in the second transaction).
    with ScriptedMX(pipelining=True) as fake:
        t = remote_tern(extra={**fake.route("scripted.test"),
                               "limits": {"max_recipients": 1000}})
        rcpts = [f"{'bad' if i % 7 == 0 else 'u'}{i}@scripted.test" for i in range(150)]
        qid = submit(t, rcpts, msg("mixed-rcpts", rcpts[1]))
        wait_queue_empty(t, timeout=DEADLINE * 2)
        good = [r for r in rcpts if r.startswith("u")]
        bad = [r for r in rcpts if r.startswith("bad")]
        assert len(t.log_lines("event=delivered", f"id={qid}")) == len(good), t.log_tail()
        assert len(t.log_lines("event=bounced", f"id={qid}")) == len(bad), t.log_tail()
        assert len(fake.transactions) == 2
        assert sorted(a for r, _ in fake.transactions for a in r) == sorted(good)
        assert sorted(fake.rcpt_cmds) == sorted(rcpts)


# SMTP smuggling, outbound (a stored message with bare line ends or NUL, sent on to a
# lenient next hop): tests/integration/test_smuggling.py, test_release_to_a_lenient_next_hop_*.


# --------------------------------------------------------------------------
# Shutdown while address lookups are pending: nothing leaks (LeakSanitizer).


def test_shutdown_with_address_lookups_pending_frees_them(remote_tern, mx):
    import socket
    # A forwarder that never answers: the route's host lookups (A and AAAA) are still
    # pending when tern stops, and the resolver drops them without calling back.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        fwd = f"127.0.0.1@{silent.getsockname()[1]}"
        t = remote_tern(extra={"dns": {"forward": [fwd]},
                               "limits": {"shutdown_grace": Raw("1s")},
                               "routes": {"stall.test": {"via": "smtp://mx.stall.test:25",
                                                         "tls": "none"}}})
        qid = submit(t, ["x@stall.test"], msg("stall", "x@stall.test"))
        time.sleep(1.0)
        assert not t.log_lines("event=dns_timeout"), "the lookups ended before the stop"
        assert t.stop() == 0, t.log_tail()
        t.check_sanitizers()
        assert not t.log_lines("event=delivered", f"id={qid}")


# --------------------------------------------------------------------------
# STARTTLS to the next hop: the handshake and the data phase run through the TLS
# layer under the per-wait deadlines (the hostile cases are in test_fault_nexthop.py).


class TLSMX:
    """An aiosmtpd next hop on 127.0.0.43 that offers STARTTLS with a self-signed
    certificate and records, per accepted message, whether the session was TLS."""

    IP = "127.0.0.43"

    def __init__(self, certdir):
        import ssl
        import subprocess
        import threading
        cert, key = certdir / "mx.pem", certdir / "mx.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=mx.tls.test"],
                       check=True, capture_output=True, timeout=60)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        self.lock = threading.Lock()
        self.messages = []  # (rcpts, content, was_tls)
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((self.IP, 0))
            self.port = s.getsockname()[1]
        from aiosmtpd.controller import Controller
        self.controller = Controller(self, hostname=self.IP, port=self.port, ready_timeout=10,
                                     server_hostname="fake-tls.test", tls_context=ctx,
                                     require_starttls=True, data_size_limit=8 << 20)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def route(self, domain):
        return {"routes": {domain: {"via": f"smtp://{self.IP}:{self.port}", "tls": "require"}}}

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos),
                                  bytes(envelope.original_content or b""),
                                  session.ssl is not None))
        return "250 2.0.0 OK queued"


def test_starttls_to_next_hop_delivers_small_and_large(remote_tern, mx, scratch):
    with TLSMX(scratch) as fake:
        t = remote_tern(extra={**fake.route("tls.test"),
                               "limits": {"max_message_size": Raw("16m")}},
                        command_timeout=Raw("5s"))
        q1 = submit(t, ["a@tls.test"], msg("tls-small", "a@tls.test"))
        big = ("y" * 76 + "\r\n") * (3 * 1024 * 1024 // 78)
        q2 = submit(t, ["b@tls.test"], msg("tls-large", "b@tls.test", body=big))
        for q in (q1, q2):
            t.wait_log(rf"event=delivered id={q}\b", timeout=DEADLINE * 2)
        wait_queue_empty(t)
        got = {tuple(r): (len(c), tls) for r, c, tls in fake.messages}
        assert set(got) == {("a@tls.test",), ("b@tls.test",)}, got
        assert all(tls for _, tls in got.values()), "sent in clear"
        assert got[("b@tls.test",)][0] > 3_000_000
        assert not t.log_lines("event=tls_failed"), t.log_tail()
