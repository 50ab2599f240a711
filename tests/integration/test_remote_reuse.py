"""Outbound connection reuse (issue 11, relay speed): a connection whose destination has
nothing more to carry stays open for a short while and takes that destination's next
message, instead of a TCP handshake, greeting, EHLO and QUIT per relayed message.

Next hops are remote_harness.HostileMX servers (raw sockets, every connection and command
recorded). What a user depends on: messages that follow each other go over one
connection; a peer that closes a connection tern keeps open loses nothing (the next
message goes over a new one, never deferred); a stopping tern QUITs its parked
connections.
"""

import re
import time

from conftest import make_message
from remote_harness import DEADLINE, SENDER, HostileMX, check_alive, submit, wait_queue_empty
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)

HOP_IP = "127.0.0.51"


def msg(subject, to):
    return make_message(subject, body=f"body of {subject}\r\n" * 5, frm=SENDER, to=to)


def wait_for(pred, what, t, timeout=DEADLINE):
    end = time.monotonic() + timeout
    while not pred():
        check_alive(t)
        assert time.monotonic() < end, f"{what}\n{t.log_tail()}"
        time.sleep(0.05)


def test_following_messages_share_one_connection(remote_tern, mx):
    with HostileMX(HOP_IP, "accept") as hop:
        t = remote_tern(extra=hop.route("reuse.test"))
        q1 = submit(t, ["a@reuse.test"], msg("first", "a@reuse.test"))
        t.wait_log(rf"event=delivered id={q1}\b")
        q2 = submit(t, ["b@reuse.test"], msg("second", "b@reuse.test"))
        t.wait_log(rf"event=delivered id={q2}\b")
        wait_queue_empty(t)
        assert [m[1] for m in hop.messages] == [["RCPT TO:<a@reuse.test>"],
                                                ["RCPT TO:<b@reuse.test>"]]
        assert len(hop.conns) == 1, [c.commands for c in hop.conns]
        verbs = [c.split()[0].upper() for c in hop.conns[0].commands]
        assert verbs.count("EHLO") == 1 and verbs.count("MAIL") == 2, verbs
        # Stopping tern QUITs the connection it kept open, and exits cleanly.
        assert t.stop() == 0
        assert hop.conns[0].closed.wait(DEADLINE)
        assert [c.split()[0].upper() for c in hop.conns[0].commands][-1] == "QUIT"


def test_peer_closing_a_kept_connection_loses_nothing(remote_tern, mx):
    with HostileMX(HOP_IP, "idle_421") as hop:
        t = remote_tern(extra=hop.route("reuse.test"))
        q1 = submit(t, ["a@reuse.test"], msg("first", "a@reuse.test"))
        t.wait_log(rf"event=delivered id={q1}\b")
        wait_for(lambda: hop.conns and hop.conns[0].closed.is_set(),
                 "the next hop did not close its first connection", t)
        q2 = submit(t, ["b@reuse.test"], msg("second", "b@reuse.test"))
        t.wait_log(rf"event=delivered id={q2}\b")
        wait_queue_empty(t)
        assert not t.log_lines("event=deferred", f"id={q2}"), t.log_tail()
        assert len(hop.messages) == 2 and len(hop.conns) == 2, \
            [c.commands for c in hop.conns]
        assert not re.search(r"event=protocol_error", t.log()), t.log_tail()
