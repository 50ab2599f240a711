"""test_commit_read.py — a plain session keeps reading while the spool commits a message
(issue 11 item 3: two epoll_ctl a message fewer), and nothing a client sees changes:

- a client that sends the end of data, QUIT and its end of the connection in one go (then
  only reads) still gets the 250 for its message and the 221, in that order, and the
  message is delivered;
- a client that pipelines its next transaction right behind the end of data gets the
  replies in order: the 250 for the first message before those of the next commands.

Never: sleeps for a fixed time, times anything, or talks beyond 127.0.0.1.
"""

import re
import socket

from conftest import QUEUED_AS_RE

ROUNDS = 12  # the end of the connection must land while a commit runs in some of them


def read_replies(f, n):
    """n complete replies (the last line of each), or fewer if the server closed first."""
    out = []
    while len(out) < n:
        ln = f.readline()
        if not ln:
            break
        if ln[3:4] != b"-":
            out.append(ln)
    return out


def open_session(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    assert read_replies(f, 1)[0].startswith(b"220")
    s.sendall(b"EHLO client.example.org\r\n")
    assert read_replies(f, 1)[0].startswith(b"250")
    return s, f


def start_message(s, f, n):
    s.sendall(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    r = read_replies(f, 3)
    assert [x[:3] for x in r] == [b"250", b"250", b"354"], r


def test_end_of_connection_during_the_commit_still_gets_250_and_221(tern):
    ids = []
    for i in range(ROUNDS):
        s, f = open_session(tern.port)
        try:
            start_message(s, f, i)
            s.sendall(b"Subject: half-close %d\r\n\r\nbody %d\r\n.\r\nQUIT\r\n" % (i, i))
            s.shutdown(socket.SHUT_WR)
            r = read_replies(f, 2)
            assert len(r) == 2, f"round {i}: replies {r}\n{tern.log_tail()}"
            assert r[0].startswith(b"250"), r
            m = QUEUED_AS_RE.search(r[0].decode("ascii", "replace"))
            assert m, r
            ids.append(m.group(1))
            assert r[1].startswith(b"221"), r
            assert f.readline() == b""  # and then the end
        finally:
            f.close()
            s.close()
    assert len(set(ids)) == ROUNDS
    tern.wait_mail("alice@example.test", count=ROUNDS)
    got = b"".join(p.read_bytes() for p in tern.mail_files("alice@example.test"))
    for i in range(ROUNDS):
        assert b"Subject: half-close %d\r\n" % i in got or b"Subject: half-close %d\n" % i in got


def test_commands_pipelined_behind_the_end_of_data_are_answered_in_order(tern):
    s, f = open_session(tern.port)
    try:
        for i in range(ROUNDS):
            start_message(s, f, i)
            # the next transaction's commands right behind the end of data
            s.sendall(b"Subject: pipelined %d\r\n\r\nbody\r\n.\r\n"
                      b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@example.test>\r\nRSET\r\n"
                      % i)
            r = read_replies(f, 4)
            assert [x[:3] for x in r] == [b"250", b"250", b"250", b"250"], r
            assert QUEUED_AS_RE.search(r[0].decode("ascii", "replace")), r
            assert not re.search(rb"queued", r[1]), r  # MAIL's reply, not another commit's
        s.sendall(b"QUIT\r\n")
        assert read_replies(f, 1)[0].startswith(b"221")
    finally:
        f.close()
        s.close()
    tern.wait_mail("alice@example.test", count=ROUNDS)
