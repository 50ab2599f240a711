"""Scheduler regressions: retry timers that must not be lost, and notices that
must not loop. Uses the remote-delivery world (real unbound, fake MXes)."""
import re
import time

import pytest

from conftest import Raw, make_message
from remote_harness import DEADLINE, SENDER, check_alive, submit, wait_queue_empty
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def msg(subject, to):
    return make_message(subject, body="scheduler test\r\n", frm=SENDER, to=to)


def test_deferred_recipient_is_retried_while_another_is_on_the_wire(remote_tern, mx):
    # One message, two destinations: defer.test answers 451 once (quickly),
    # slow.test takes its time. The retry of the deferred recipient comes due
    # while the slow delivery is still on the wire; it must still get a timer
    # once that delivery reports, not stay deferred forever.
    t = remote_tern()
    qid = submit(t, ["a@defer.test", "b@slow.test"],
                 msg("busy-retry", "a@defer.test, b@slow.test"))
    mx["slow"].wait_messages(1, tern=t)
    mx["deferonce"].wait_messages(1, tern=t, timeout=DEADLINE)
    t.wait_log(rf"event=delivered id={qid} to=<a@defer\.test>")
    wait_queue_empty(t)


def test_no_notice_about_our_own_notice(remote_tern, mx):
    # The postmaster is an alias for a remote address that rejects mail. A
    # failed message from the null sender is reported to the postmaster; that
    # notice fails too, and must then be dropped, not reported again (a loop).
    t = remote_tern(extra={"aliases": {"postmaster@example.test": ["pm@reject.test"]}})
    qid = submit(t, ["x@reject.test"], msg("null-sender", "x@reject.test"), mail_from="")
    t.wait_log(rf"event=bounced id={qid}\b")
    t.wait_log(r"event=dsn_dropped id=\w+ kind=failure")
    time.sleep(2.0)  # a loop would have produced several notices by now
    notices = re.findall(r"event=dsn id=", t.log())
    assert len(notices) == 1, f"{len(notices)} notices (expected exactly one):\n{t.log_tail()}"
    wait_queue_empty(t)


def test_many_recipients_are_all_recorded(remote_tern, mx):
    # More recipients than any fixed-size table in the scheduler: every one
    # must be delivered and recorded, none left queued.
    t = remote_tern(extra={"limits": {"max_recipients": 300}})
    rcpts = [f"r{i}@ok.test" for i in range(300)]
    qid = submit(t, rcpts, msg("many", "list@ok.test"))
    deadline = time.monotonic() + DEADLINE
    while sum(len(m.rcpt_tos) for m in mx["ok"].messages) < 300:
        check_alive(t)
        assert time.monotonic() < deadline, (
            f"{sum(len(m.rcpt_tos) for m in mx['ok'].messages)}/300 received\n{t.log_tail()}")
        time.sleep(0.1)
    seen = [r for m in mx["ok"].messages for r in m.rcpt_tos]
    assert sorted(seen) == sorted(rcpts), "a recipient was sent twice or not at all"
    wait_queue_empty(t)
    assert len(t.log_lines(f"event=delivered id={qid}")) == 300


def test_flush_retries_deferred_recipients_before_their_time(remote_tern, mx):
    # defer.test answers 451 the first time. With an hour between retries the
    # recipient would wait; `tern queue flush` must try it now (the operator's
    # "the remote side is fixed, go"), as postqueue -f does.
    t = remote_tern(retry_base=Raw("1h"), retry_max=Raw("2h"), max_lifetime=Raw("5d"))
    qid = submit(t, ["a@defer.test"], msg("flush-now", "a@defer.test"))
    t.wait_log(rf"event=deferred id={qid} to=<a@defer\.test>")
    assert mx["deferonce"].messages == []
    r = t.cli("queue", "flush")
    assert r.returncode == 0, r.stderr
    mx["deferonce"].wait_messages(1, tern=t, timeout=DEADLINE)
    t.wait_log(rf"event=delivered id={qid} to=<a@defer\.test>")
    wait_queue_empty(t)


def test_one_message_to_two_next_hops_and_a_mailbox(remote_tern, mx):
    # The last remote job of a message takes the delivery's own copy of the bytes,
    # every other job (and the local delivery after them) reads its own: all three
    # places get the whole message. Its only 8-bit bytes sit at the very end, past
    # the last 32-byte step of the 8-bit scan: the peer without 8BITMIME must still
    # get it converted (a wrong scan sends the raw bytes).
    t = remote_tern()
    sent = []
    for pad in range(8):  # different lengths: the bytes land at each offset of a step
        text = "plain ascii\r\n" + "x" * pad + " Gr\u00fc\u00dfe\r\n"
        body = make_message(f"three-ways-{pad}", body=text, frm=SENDER,
                            to="a@ok.test",
                            extra_headers="MIME-Version: 1.0\r\nContent-Type: text/plain; "
                                          "charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
        submit(t, ["a@ok.test", "b@no8bit.test", "alice@example.test"], body,
               mail_params="BODY=8BITMIME")
        sent.append(body)
    got_ok = mx["ok"].wait_messages(len(sent), tern=t)
    got_no8 = mx["no8bit"].wait_messages(len(sent), tern=t)
    for body in sent:
        assert any(m.content.endswith(body) for m in got_ok), "changed on the way to ok.test"
    for m in got_no8:
        assert all(b < 0x80 for b in m.content), "8-bit bytes sent to a peer without 8BITMIME"
    assert len(t.wait_mail("alice@example.test", count=len(sent),
                           predicate=lambda d: "Grüße".encode() in d)) == len(sent)
    wait_queue_empty(t)
