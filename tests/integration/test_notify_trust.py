"""NOTIFY=SUCCESS and NOTIFY=DELAY are answered only for trusted clients.

From anyone, NOTIFY=SUCCESS made tern mail a notice carrying the client's headers
(Subject included) to whatever sender address the client named: backscatter. tern
now sends SUCCESS and DELAY notices only when the message came from a client in
relay.networks or an authenticated one (a fact kept with the message in the spool);
for everyone else the NOTIFY request still travels to the next hop when the message
is relayed (here: a local alias forwarding to a remote address), but tern itself
sends no such notice. FAILURE notices are unchanged.

The checks that a notice was *not* sent read the log after a clean stop: the
scheduler logs event=dsn in the same step that logs the delivery (or deferral) it is
about, and SIGTERM lets that step finish, so nothing here waits for a non-event.
"""
import re

import pytest

from conftest import Raw, dot_stuff, expect, make_message
from remote_harness import (SENDER, dsns_in_maildir, mx, remote_tern, wait_dsn,  # noqa: F401
                            wait_queue_empty, world)

TRUSTED = "127.0.0.2"    # the only address in relay.networks below
UNTRUSTED = "127.0.0.1"

# The harness's smarthost fake requires AUTH without TLS on purpose (loopback).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

POLICY = {
    "relay": {"networks": [f"{TRUSTED}/32"]},
    "aliases": {
        "fwd@example.test": ["x@ok.test"],       # next hop without DSN
        "fwd-dsn@example.test": ["y@dsn.test"],  # next hop that offers DSN
        "fwd-slow@example.test": ["z@delay.test"],  # always 451
        "fwd-hold@example.test": ["h@hold.test"],   # 451 until switched
    },
}


def send(t, source, rcpt, subject, notify):
    """One message from SENDER, from the given client address; returns its queue id."""
    with t.client(source=source) as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{SENDER}> RET=HDRS"), 250, "2.1.0")
        expect(c.cmd(f"RCPT TO:<{rcpt}> NOTIFY={notify}"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(dot_stuff(make_message(subject, frm=SENDER, to=rcpt)) + b".\r\n")
        qid = expect(c.reply(), 250, "2.0.0").queue_id()
        c.cmd("QUIT")
    return qid


def stop_cleanly(t):
    rc = t.stop()
    assert rc == 0, f"tern exit code {rc}\n{t.log_tail()}"


def notices_logged(t, qid):
    return re.findall(rf"event=dsn id={qid} .*", t.log())


def test_success_notice_only_for_trusted_clients(remote_tern, mx):
    t = remote_tern(extra=POLICY)
    bad = send(t, UNTRUSTED, "fwd@example.test", "probe-untrusted-success", "SUCCESS")
    passed = send(t, UNTRUSTED, "fwd-dsn@example.test", "probe-untrusted-pass", "SUCCESS")
    good = send(t, TRUSTED, "fwd@example.test", "probe-trusted-success", "SUCCESS")
    # The trusted client gets its "relayed" notice (the next hop has no DSN) ...
    dsn = wait_dsn(t, "probe-trusted-success")
    assert dsn.rcpt("x@ok.test").get("action", "").lower() == "relayed", dsn.recipients
    # ... the untrusted one's message is relayed as well, its NOTIFY passed on
    # to the next hop that offers DSN.
    m = mx["dsn"].wait_messages(1, tern=t)[0]
    assert any(o.upper() == "NOTIFY=SUCCESS" for o in m.rcpt_options), m.rcpt_options
    for qid in (bad, passed, good):
        t.wait_log(rf"event=delivered id={qid} ")
    assert len(mx["ok"].messages) == 2
    stop_cleanly(t)
    assert notices_logged(t, bad) == [], "a SUCCESS notice for an untrusted client"
    assert notices_logged(t, passed) == []
    assert len(notices_logged(t, good)) == 1
    assert not [d for d in dsns_in_maildir(t) if b"probe-untrusted" in d]


def test_delay_notice_only_for_trusted_clients(remote_tern, mx):
    t = remote_tern(extra=POLICY, delay_warning=Raw("1s"))
    bad = send(t, UNTRUSTED, "fwd-slow@example.test", "probe-untrusted-delay", "DELAY,FAILURE")
    good = send(t, TRUSTED, "fwd-slow@example.test", "probe-trusted-delay", "DELAY,FAILURE")
    dsn = wait_dsn(t, "probe-trusted-delay")
    assert dsn.rcpt("z@delay.test").get("action", "").lower() == "delayed", dsn.recipients
    # Three deferrals at least a second apart (retry_base 1s): from the second
    # on, the message is older than delay_warning, so a notice was due by now.
    for _ in range(50):
        if len(re.findall(rf"event=deferred id={bad} ", t.log())) >= 3:
            break
        mx["delay"].wait_attempts(mx["delay"].attempts + 1, tern=t)
    assert len(re.findall(rf"event=deferred id={bad} ", t.log())) >= 3, t.log_tail()
    stop_cleanly(t)
    assert notices_logged(t, bad) == [], "a DELAY notice for an untrusted client"
    assert notices_logged(t, good), t.log_tail()


def test_trust_is_kept_with_the_message_across_a_restart(remote_tern, mx):
    # The trust fact is stored in the spool record: a message deferred before a
    # restart and delivered after it keeps what its client was.
    t = remote_tern(extra=POLICY)
    bad = send(t, UNTRUSTED, "fwd-hold@example.test", "probe-untrusted-restart", "SUCCESS")
    good = send(t, TRUSTED, "fwd-hold@example.test", "probe-trusted-restart", "SUCCESS")
    for qid in (bad, good):
        t.wait_log(rf"event=deferred id={qid} ")
    stop_cleanly(t)
    mx["hold"].set_mode("accept")
    t.start()
    dsn = wait_dsn(t, "probe-trusted-restart")
    assert dsn.rcpt("h@hold.test").get("action", "").lower() == "relayed", dsn.recipients
    for qid in (bad, good):
        t.wait_log(rf"event=delivered id={qid} ")
    wait_queue_empty(t)
    stop_cleanly(t)
    assert notices_logged(t, bad) == [], "the restart lost the client's trust level"
    assert len(notices_logged(t, good)) == 1


def test_local_delivery_success_notice_only_for_trusted_clients(tern):
    # The plain test config: relay.networks is 127.0.0.2/32; bob is the sender,
    # so a notice would land in his Maildir.
    def one(source, subject):
        with tern.client(source=source) as c:
            c.ehlo()
            expect(c.cmd("MAIL FROM:<bob@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test> NOTIFY=SUCCESS"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(make_message(subject) + b".\r\n")
            return expect(c.reply(), 250, "2.0.0").queue_id()

    bad = one(UNTRUSTED, "Please wire 1000 EUR (untrusted)")
    good = one(TRUSTED, "trusted local success")
    tern.wait_mail_with("bob@example.test", "trusted local success")  # the notice
    tern.wait_log(rf"event=delivered id={bad} ")
    stop_cleanly(tern)
    assert notices_logged(tern, bad) == []
    assert len(notices_logged(tern, good)) == 1
    assert not [p for p in tern.mail_files("bob@example.test") if b"wire 1000" in p.read_bytes()]
