"""The next message behind the end of data (delivery.pipeline_next, RFC 2920 §3.1): to a
next hop that offers PIPELINING, tern sends the next queued message's MAIL, RCPT and DATA
in the same write as the current message's end of data, so each message costs one round
trip instead of two. What a user depends on, asserted from the next hop's side:

- the next MAIL is there before the end of data is answered (and with the option off it
  never is: the peer waits a second for it and records that it did not come), and every
  message still arrives exactly, once, over one connection;
- a refused end of data (5xx or 4xx) is that message's result only: the message behind
  it is delivered, and no RSET goes out (it would undo the transaction already begun);
- a connection lost after an end of data, before its reply, loses nothing: that message
  is deferred and retried, and the message whose commands went out behind it goes back
  to its queue untried (event=remote_requeued) and is delivered once.

The next hop (PipeMX) reads with a buffer, as a real server does, holds its greeting
until the test has queued every message (so that they wait behind the first), and
answers each end of data only after looking, for up to a second, whether the next
command is already there.
"""

import re

import pytest

from remote_harness import (DEADLINE, DOMAIN, PIPE_IP, PipeMX, assert_exact, message,
                            queue_behind, server_tls_context, start_behind, tx_of,
                            wait_all_taken, wait_queue_empty)
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)

@pytest.mark.parametrize("pipeline", [True, False], ids=["on", "off"])
def test_next_mail_rides_behind_the_end_of_data(remote_tern, mx, pipeline):
    with PipeMX(PIPE_IP) as fake:
        t = start_behind(remote_tern, fake, pipeline_next=pipeline)
        msgs = {f"pipe{i}-{pipeline}": message(f"pipe{i}-{pipeline}") for i in range(4)}
        order = queue_behind(t, fake, msgs)
        taken = wait_all_taken(t, fake, order)
        for (_, tag), tx in zip(order, taken):  # in the wire's order, each exact
            assert_exact(tx, msgs[tag])
        assert len(fake.conns) == 1, fake.conns
        verbs = [c.split(" ")[0].upper() for c in fake.conns[0]]
        if verbs[-1] == "QUIT":  # the connection is kept a moment for more: maybe not yet
            verbs.pop()
        assert verbs == ["EHLO"] + ["MAIL", "RCPT", "DATA"] * len(msgs), verbs
        # every message but the last had the next one's MAIL behind its end of data
        flags = [x["pipelined"] for x in taken]
        assert flags == ([True] * (len(msgs) - 1) + [False] if pipeline
                         else [False] * len(msgs)), flags


@pytest.mark.parametrize("code", ["554 5.7.1 not this one", "451 4.3.0 try later"],
                         ids=["5xx", "4xx"])
def test_refused_end_of_data_leaves_the_next_message_alone(remote_tern, mx, code):
    with PipeMX(PIPE_IP, dot_reply={1: code}) as fake:
        t = start_behind(remote_tern, fake)
        msgs = {f"refused{i}-{code[0]}": message(f"refused{i}-{code[0]}") for i in range(3)}
        order = queue_behind(t, fake, msgs)
        first, rest = order[0][0], [q for q, _ in order[1:]]
        outcome = "bounced" if code[0] == "5" else "deferred"
        t.wait_log(rf"event={outcome} id={first} to=<a@{DOMAIN}>.*status={code[4:9]}",
                   timeout=DEADLINE)
        for q in rest:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        # no RSET after the refusal: the next transaction was under way
        first_conn = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert "RSET" not in first_conn, first_conn
        assert first_conn[:1 + 3 * len(msgs)] == ["EHLO"] + ["MAIL", "RCPT", "DATA"] * len(msgs)
        if code[0] == "4":  # retried, then taken
            t.wait_log(rf"event=delivered id={first} to=<a@{DOMAIN}>", timeout=DEADLINE)
        wait_queue_empty(t)
        taken = fake.taken()
        for i, (q, tag) in enumerate(order):
            txs = tx_of(taken, msgs[tag])
            assert len(txs) == (2 if (i == 0 and code[0] == "4") else 1), (i, len(txs))
            assert_exact(txs[-1], msgs[tag])
        if code[0] == "5":
            assert f"event=delivered id={first}" not in t.log()


def test_connection_lost_after_end_of_data_requeues_the_next(remote_tern, mx):
    with PipeMX(PIPE_IP, drop_at=1) as fake:
        t = start_behind(remote_tern, fake)
        msgs = {f"lost{i}": message(f"lost{i}") for i in range(3)}
        order = queue_behind(t, fake, msgs)
        (first, _), (second, _) = order[0], order[1]
        qids = [q for q, _ in order]
        # the first: its end of data went out, no reply came: deferred, not lost
        t.wait_log(rf"event=deferred id={first} to=<a@{DOMAIN}> .*status=4\.4\.2",
                   timeout=DEADLINE)
        # the second went out behind it: back to its queue, untried, never deferred
        t.wait_log(rf"event=remote_requeued id={second} ", timeout=DEADLINE)
        for q in qids:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        wait_queue_empty(t)
        log = t.log()
        assert not re.search(rf"event=(deferred|bounced) id={second} ", log), log[-3000:]
        taken = fake.taken()
        for m in msgs.values():
            [tx] = tx_of(taken, m)  # each exactly once
            assert_exact(tx, m)


def test_next_mail_rides_behind_large_messages_over_tls(remote_tern, mx, tmp_path):
    # Under TLS the bytes queued behind the end of data are counted against encrypted
    # ones: the data phase must still end right, and nothing be taken for a reply that
    # came too early. Messages of ~300 KiB, so the data is still queued when the next
    # MAIL is added behind it.
    with PipeMX(PIPE_IP, tls=server_tls_context(tmp_path, DOMAIN)) as fake:
        t = start_behind(remote_tern, fake)
        filler = "".join(f"line {n:06d} of a longer message\r\n" for n in range(9000))
        msgs = {f"tls{i}": message(f"tls{i}") + filler.encode() for i in range(3)}
        order = queue_behind(t, fake, msgs)
        for q, _ in order:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        assert not t.log_lines("event=protocol_error"), t.log_tail()
        taken = fake.taken()
        for (_, tag), tx in zip(order, taken):
            assert_exact(tx, msgs[tag])
        assert [x["pipelined"] for x in taken] == [True, True, False]
        verbs = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert verbs[:2] == ["EHLO", "STARTTLS"], verbs
