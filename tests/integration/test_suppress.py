"""
test_suppress.py — the suppression list (issue 12 items 8 and 9): a hard bounce at RCPT, an
asynchronous DSN to the VERP return path and an ARF complaint each put the address on the
list; the next message to it is not attempted (the fake MX never sees it) and its recipient
is finished as suppressed; a 4xx and a forged VERP token suppress nothing; `tern suppress
list|add|del` and the global list against a sending domain's list.

The world: tern relays mail for remote.test to a fake MX (aiosmtpd) on 127.0.0.1 through a
route; the clients that relay come from 127.0.0.2 (relay.networks). Reports come back to
tern's own mx listener, as they would from the Internet.

Never: talks to anything but 127.0.0.0/8, waits without a bound, or kills a process it did
not start.
"""

import json
import re
import threading
import time

import pytest

from conftest import Client, dot_stuff, expect, free_port, make_message

pytest.importorskip("aiosmtpd")  # python3-aiosmtpd, in scripts/install-deps

SENDER = "carol@example.test"
VERP_DOMAIN = "bounces.example.test"
FBL = "fbl@example.test"
DEADLINE = 20.0


class FakeMX:
    """Accepts mail for remote.test, except gone-*@ (550 5.1.1 at RCPT), soft-*@
    (451 4.2.0 at RCPT) and dataref-*@ (554 5.7.1 after DATA); records every RCPT it is offered and every message it took."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.lock = threading.Lock()
        self.rcpts = []     # every RCPT TO offered, accepted or not
        self.messages = []  # {"mail_from", "rcpt_tos", "content"}
        mx = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                with mx.lock:
                    mx.rcpts.append(address)
                if address.startswith("gone-"):
                    return f"550 5.1.1 <{address}>: no mailbox here by that name"
                if address.startswith("soft-"):
                    return "451 4.2.0 mailbox busy, try later"
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server, session, envelope):
                if any(r.startswith("dataref-") for r in envelope.rcpt_tos):
                    return "554 5.7.1 message refused by policy"
                with mx.lock:
                    mx.messages.append({"mail_from": envelope.mail_from,
                                        "rcpt_tos": list(envelope.rcpt_tos),
                                        "content": bytes(envelope.original_content or b"")})
                return "250 2.0.0 OK queued"

        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port, ready_timeout=10,
                              server_hostname="mx.remote.test")
        self.ctl.start()

    def offered(self, addr):
        with self.lock:
            return self.rcpts.count(addr)

    def wait_message(self, rcpt, tern):
        deadline = time.monotonic() + DEADLINE
        while True:
            with self.lock:
                for m in self.messages:
                    if rcpt in m["rcpt_tos"]:
                        return m
            if tern.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fake MX: no message for {rcpt}\n{tern.log_tail()}")
            time.sleep(0.05)

    def stop(self):
        self.ctl.stop()


@pytest.fixture
def mx():
    m = FakeMX()
    yield m
    m.stop()


@pytest.fixture
def tern(tern_factory, mx):
    return tern_factory({
        "local_domains": ["example.test", "localhost", VERP_DOMAIN],
        "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}", "tls": "none"}},
        "delivery": {"retry_base": 1, "retry_max": 2},
        "suppression": {"verp_domain": VERP_DOMAIN, "feedback_address": FBL},
    })


def relay(tern, rcpt, subject, sender=SENDER):
    with tern.client(source="127.0.0.2") as c:
        return c.send_message(sender, [rcpt], make_message(subject, frm=sender, to=rcpt))


def entries(tern, *args):
    r = tern.cli("suppress", "list", "--json", *args, check=True)
    return json.loads(r.stdout)


def entry(tern, addr):
    found = [e for e in entries(tern) if e["address"] == addr]
    return found[0] if found else None


def wait_entry(tern, addr):
    deadline = time.monotonic() + DEADLINE
    while True:
        e = entry(tern, addr)
        if e:
            return e
        if tern.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{addr} never got on the suppression list\n{tern.log_tail()}")
        time.sleep(0.1)


def wait_event(tern, etype, rcpt):
    """The first event of etype about rcpt in the event store (`tern events tail`)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        r = tern.cli("events", "tail", "--json", "--type", etype, check=True)
        got = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        got = [e for e in got if e["recipient"] == rcpt]
        if got:
            return got[0]
        if tern.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {etype} event for {rcpt}\n{tern.log_tail()}")
        time.sleep(0.1)


def send_report(tern, to, body):
    """A report as a remote MTA sends it: null sender, to tern's mx listener."""
    with tern.client() as c:
        c.ehlo("mta.remote.test")
        expect(c.cmd("MAIL FROM:<>"), 250)
        expect(c.cmd(f"RCPT TO:<{to}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(dot_stuff(body.encode()) + b".\r\n")
        return expect(c.reply(), 250).queue_id()


def dsn(final_rcpt, action, status, orig_from, orig_to):
    return (
        "From: Mail Delivery Subsystem <MAILER-DAEMON@mx.remote.test>\r\n"
        f"To: <{orig_from}>\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status;\r\n'
        '\tboundary="RPT-42"\r\n\r\n'
        "--RPT-42\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--RPT-42\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.remote.test\r\nArrival-Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {final_rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} mailbox quota disabled permanently\r\n"
        "\r\n--RPT-42\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: <{orig_from}>\r\nTo: <{orig_to}>\r\nSubject: hello\r\n"
        "--RPT-42--\r\n")


def arf(rcpt, mail_from, feedback_type="abuse", return_path=None):
    return (
        "From: <feedback@isp.remote.test>\r\nTo: <fbl@example.test>\r\n"
        "Subject: FW: hello\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="part1_13d"\r\n'
        "\r\n--part1_13d\r\nContent-Type: text/plain; charset=\"US-ASCII\"\r\n\r\n"
        "This is an email abuse report for an email message received from IP 192.0.2.1\r\n"
        "\r\n--part1_13d\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {feedback_type}\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{mail_from}>\r\n"
        + (f"Original-Rcpt-To: <{rcpt}>\r\n" if rcpt else "") +
        "Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\r\nSource-IP: 192.0.2.1\r\n"
        "\r\n--part1_13d\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
        + (f"Return-Path: <{return_path}>\r\n" if return_path else "")
        + f"From: <{mail_from}>\r\nTo: <{rcpt or 'undisclosed-recipients:;'}>\r\n"
        "Subject: hello\r\nDate: Thu, 8 Mar 2005 12:00:00 -0500\r\n\r\nbuy now\r\n"
        "--part1_13d--\r\n")


def wait_suppressed(tern, qid, rcpt):
    return tern.wait_log(rf"event=suppressed id={qid} to=<{re.escape(rcpt)}> status=suppressed",
                         timeout=DEADLINE)


# --------------------------------------------------------------------------- the bar


def test_hard_bounce_suppresses_and_next_send_is_not_attempted(tern, mx):
    rcpt = "gone-1@remote.test"
    qid = relay(tern, rcpt, "first")
    tern.wait_log(rf"event=bounced id={qid} to=<{re.escape(rcpt)}>", timeout=DEADLINE)
    e = wait_entry(tern, rcpt)
    assert e["scope"] == "example.test" and e["reason"] == "bounce", e
    assert "5.1.1" in e["detail"] and e["queue_id"] == qid, e
    assert mx.offered(rcpt) == 1
    # The plain listing says it too.
    listing = tern.cli("suppress", "list", check=True).stdout
    assert re.search(rf"example\.test\s+{re.escape(rcpt)}\s+bounce", listing), listing

    qid2 = relay(tern, rcpt, "second")
    line = wait_suppressed(tern, qid2, rcpt).group(0)
    assert line
    assert "bounce" in tern.log_lines(f"id={qid2}", "event=suppressed")[0]
    # Not attempted: the fake MX was offered the address once only, and no DSN went to
    # the sender for the suppressed recipient.
    assert mx.offered(rcpt) == 1
    assert not tern.log_lines(f"event=dsn id={qid2}")
    # Finished: the message left the queue.
    assert qid2 not in tern.queue_list()


def test_queue_show_reports_the_suppressed_recipient(tern, mx):
    """A message with a suppressed recipient and one still being tried: `tern queue show`
    names the first suppressed, with the list it is on."""
    tern.cli("suppress", "add", "blocked@remote.test", "--reason", "complaint", check=True)
    with tern.client(source="127.0.0.2") as c:
        qid = c.send_message(SENDER, ["blocked@remote.test", "soft-2@remote.test"],
                             make_message("mixed", frm=SENDER, to="blocked@remote.test"))
    wait_suppressed(tern, qid, "blocked@remote.test")
    tern.wait_log(rf"event=deferred id={qid} to=<soft-2@remote\.test>", timeout=DEADLINE)
    show = tern.cli("queue", "show", qid, check=True).stdout
    line = [ln for ln in show.splitlines() if "blocked@remote.test" in ln][0]
    assert "state=suppressed" in line and "global suppression list (complaint" in line, show
    assert mx.offered("blocked@remote.test") == 0
    assert "state=deferred" in [ln for ln in show.splitlines() if "soft-2@" in ln][0], show


def test_soft_failure_does_not_suppress(tern, mx):
    rcpt = "soft-1@remote.test"
    qid = relay(tern, rcpt, "soft")
    tern.wait_log(rf"event=deferred id={qid} to=<{re.escape(rcpt)}>", timeout=DEADLINE)
    assert entry(tern, rcpt) is None
    # Tried again (still offered to the MX), never suppressed.
    deadline = time.monotonic() + DEADLINE
    while mx.offered(rcpt) < 2:
        assert time.monotonic() < deadline, tern.log_tail()
        time.sleep(0.1)
    assert entry(tern, rcpt) is None
    assert not tern.log_lines(f"id={qid}", "event=suppressed")


# --------------------------------------------------------------------------- VERP + DSN


def test_async_dsn_to_verp_address_suppresses(tern, mx):
    rcpt = "later@remote.test"
    qid = relay(tern, rcpt, "verp")
    m = mx.wait_message(rcpt, tern)
    rp = m["mail_from"]
    assert re.fullmatch(rf"bounce\+[0-9a-z]+-0-[0-9a-f]{{16}}@{re.escape(VERP_DOMAIN)}", rp), rp
    assert qid.lower() in rp
    tern.wait_log(rf"event=delivered id={qid}", timeout=DEADLINE)
    assert entry(tern, rcpt) is None

    # Days later the remote side bounces it after all, to the return path.
    # A delayed (4.x.x) notice suppresses nothing ...
    dq = send_report(tern, rp, dsn(rcpt, "delayed", "4.2.2", SENDER, rcpt))
    tern.wait_log(rf"event=suppress_intake id={dq} .*result=dsn-not-permanent", timeout=DEADLINE)
    assert entry(tern, rcpt) is None
    # ... a failure does; the DSN names the recipient only through the token.
    dq2 = send_report(tern, rp, dsn("someone-else@remote.test", "failed", "5.2.1", SENDER,
                                    rcpt))
    tern.wait_log(rf"event=suppress_intake id={dq2} .*result=\"?dsn 5\.2\.1", timeout=DEADLINE)
    e = wait_entry(tern, rcpt)
    assert e["reason"] == "bounce" and e["scope"] == "example.test" and "5.2.1" in e["detail"]
    assert entry(tern, "someone-else@remote.test") is None
    # Consumed: it is in nobody's mailbox and not relayed anywhere.
    tern.wait_log(rf"event=delivered id={dq2} .*relay=suppression", timeout=DEADLINE)
    assert not list(tern.root.glob("data/mail/bounces.example.test/*"))

    # The next message to it is suppressed.
    qid3 = relay(tern, rcpt, "after")
    wait_suppressed(tern, qid3, rcpt)
    assert mx.offered(rcpt) == 1


def test_forged_verp_token_suppresses_nothing(tern, mx):
    rcpt = "victim@remote.test"
    relay(tern, rcpt, "verp2")
    rp = mx.wait_message(rcpt, tern)["mail_from"]
    local, dom = rp.split("@")
    mac = local[-16:]
    forged = local[:-16] + ("0" if mac[0] != "0" else "1") + mac[1:] + "@" + dom
    q = send_report(tern, forged, dsn(rcpt, "failed", "5.1.1", SENDER, rcpt))
    tern.wait_log(rf"event=suppress_intake id={q} .*result=forged-token", timeout=DEADLINE)
    # A made-up token for another queue id fails too.
    q2 = send_report(tern, f"bounce+aaaaaaaaaaaaaaaa-0-0123456789abcdef@{VERP_DOMAIN}",
                     dsn(rcpt, "failed", "5.1.1", SENDER, rcpt))
    tern.wait_log(rf"event=suppress_intake id={q2} .*result=forged-token", timeout=DEADLINE)
    assert entries(tern) == []


# --------------------------------------------------------------------------- ARF


def test_arf_complaint_suppresses(tern, mx):
    rcpt = "angry@remote.test"
    q = send_report(tern, FBL, arf(rcpt, SENDER))
    tern.wait_log(rf"event=suppress_intake id={q} .*result=\"?arf abuse", timeout=DEADLINE)
    e = wait_entry(tern, rcpt)
    assert e["reason"] == "complaint" and e["scope"] == "example.test", e
    assert "abuse" in e["detail"]
    # the complaint is an event (webhooks see it), with the report's queue id
    ev = wait_event(tern, "complained", rcpt)
    assert ev["queue_id"] == q and "abuse" in ev["reply"], ev
    assert ev["metadata"] == {"domain": "example.test"}, ev
    qid = relay(tern, rcpt, "again")
    wait_suppressed(tern, qid, rcpt)
    # and the message not attempted is one too
    assert wait_event(tern, "suppressed", rcpt)["queue_id"] == qid
    assert mx.offered(rcpt) == 0
    # Not an ARF report: consumed, nothing suppressed.
    q2 = send_report(tern, FBL, make_message("hi", to=FBL).decode())
    tern.wait_log(rf"event=suppress_intake id={q2} .*result=not-arf", timeout=DEADLINE)
    assert [x["address"] for x in entries(tern)] == [rcpt]


def test_arf_with_redacted_recipient_uses_the_verp_token(tern, mx):
    """Feedback loops often redact the recipient: the returned message's Return-Path (our
    VERP address) names it; a report carrying a forged token suppresses nothing."""
    rcpt = "reader@remote.test"
    relay(tern, rcpt, "newsletter")
    rp = mx.wait_message(rcpt, tern)["mail_from"]
    local, dom = rp.split("@")
    forged = local[:-1] + ("0" if local[-1] != "0" else "1") + "@" + dom
    q = send_report(tern, FBL, arf(None, "list@elsewhere.test", return_path=forged))
    tern.wait_log(rf"event=suppress_intake id={q} .*result=forged-token", timeout=DEADLINE)
    assert entries(tern) == []
    q2 = send_report(tern, FBL, arf(None, "list@elsewhere.test", return_path=rp))
    tern.wait_log(rf"event=suppress_intake id={q2} .*result=\"?arf abuse", timeout=DEADLINE)
    e = wait_entry(tern, rcpt)
    # the sending domain is the token's (the original envelope sender's), not the report's
    assert e["reason"] == "complaint" and e["scope"] == "example.test", e


def test_rejection_after_data_suppresses(tern, mx):
    rcpt = "dataref-1@remote.test"
    qid = relay(tern, rcpt, "content")
    tern.wait_log(rf"event=bounced id={qid} to=<{re.escape(rcpt)}>", timeout=DEADLINE)
    e = wait_entry(tern, rcpt)
    assert e["reason"] == "bounce" and "5.7.1" in e["detail"], e


# --------------------------------------------------------------------------- CLI, scopes


def test_cli_add_del_list_and_scopes(tern, mx):
    glob_rcpt, dom_rcpt, other_rcpt = ("g@remote.test", "d@remote.test", "o@remote.test")
    tern.cli("suppress", "add", "g@Remote.TEST", check=True)
    tern.cli("suppress", "add", dom_rcpt, "--domain", "example.test", "--reason",
             "unsubscribe", check=True)
    tern.cli("suppress", "add", other_rcpt, "--domain", "other.test", check=True)
    listed = {(e["scope"], e["address"], e["reason"]) for e in entries(tern)}
    assert listed == {("", glob_rcpt, "manual"), ("example.test", dom_rcpt, "unsubscribe"),
                      ("other.test", other_rcpt, "manual")}
    assert [e["address"] for e in entries(tern, "--domain", "example.test")] == [dom_rcpt]
    assert [e["address"] for e in entries(tern, "--global")] == [glob_rcpt]

    # The global list applies to every sender, a domain's list to that domain's mail.
    q1 = relay(tern, glob_rcpt, "g1")
    wait_suppressed(tern, q1, glob_rcpt)
    q2 = relay(tern, dom_rcpt, "d1")
    wait_suppressed(tern, q2, dom_rcpt)
    q3 = relay(tern, other_rcpt, "o1")  # suppressed for other.test only
    mx.wait_message(other_rcpt, tern)
    tern.wait_log(rf"event=delivered id={q3}", timeout=DEADLINE)
    q4 = relay(tern, dom_rcpt, "d2", sender="dave@elsewhere.test")
    mx.wait_message(dom_rcpt, tern)
    assert mx.offered(glob_rcpt) == 0 and mx.offered(dom_rcpt) == 1
    assert not tern.log_lines(f"id={q4}", "event=suppressed")

    # del: the running daemon sees it at the next attempt, no reload.
    tern.cli("suppress", "del", glob_rcpt, check=True)
    r = tern.cli("suppress", "del", glob_rcpt)
    assert r.returncode == 1 and "not on the global list" in r.stderr
    relay(tern, glob_rcpt, "g2")
    mx.wait_message(glob_rcpt, tern)

    # usage errors
    assert tern.cli("suppress", "add", "not-an-address").returncode == 2
    assert tern.cli("suppress", "add", "x@y.test", "--reason", "whim").returncode == 2
    assert tern.cli("suppress", "frobnicate").returncode == 2


def test_cli_add_while_serving_stops_the_next_message(tern, mx):
    """serve answers "on no list" from memory (store/suppress_filter.h) once it has looked
    an address up: `tern suppress add` from another process must still stop the very next
    message to that address (DATA/suppress.gen tells serve to rebuild), and `del` must let
    the one after go again."""
    rcpt = "later-added@remote.test"
    q1 = relay(tern, rcpt, "before")
    mx.wait_message(rcpt, tern)
    tern.wait_log(rf"event=delivered id={q1}", timeout=DEADLINE)
    tern.cli("suppress", "add", rcpt, "--domain", "example.test", check=True)
    q2 = relay(tern, rcpt, "after")
    wait_suppressed(tern, q2, rcpt)
    assert "example.test suppression list (manual" in \
        tern.log_lines(f"id={q2}", "event=suppressed")[0]
    assert mx.offered(rcpt) == 1
    tern.cli("suppress", "del", rcpt, "--domain", "example.test", check=True)
    q3 = relay(tern, rcpt, "again")
    tern.wait_log(rf"event=delivered id={q3}", timeout=DEADLINE)
    assert mx.offered(rcpt) == 2


def test_intake_address_needs_local_domain(tern_factory):
    t = tern_factory({"suppression": {"verp_domain": "nowhere.test"}}, users=(), start=False)
    r = t.cli("check-config")
    assert r.returncode != 0 and "local_domains" in (r.stderr + r.stdout)
