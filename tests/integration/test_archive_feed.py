"""
test_archive_feed.py — how committed messages reach the archive (issue 13 item 6): the spool
hands its record to the archive's queue with no copy, a spilled message (past the 1 MiB spill
threshold) goes through DATA/archive/incoming/ with its spill file hard-linked, and a message
that was both in incoming/ and still in the spool at a kill -9 is archived exactly once.

What a user depends on: every committed message is archived whole and byte-exact, whatever
its size and even after its local delivery removed the spool's copy; a crash never makes two
archive entries of one message.

Never: a timed assertion; every wait is a bounded poll.
"""

from conftest import Raw
from test_archive import message, search, show_bytes, wait_for


def big_body(size, word):
    """CRLF lines of about size bytes, word on the first and the last line."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    n = size // len(line)
    return (f"{word} starts here\r\n".encode() + line * n + f"{word} ends here\r\n".encode())


def test_a_spilled_message_is_archived_whole_and_byte_exact(tern_factory):
    t = tern_factory({"archive": {"enabled": True},
                      "limits": {"max_message_size": Raw("8m")}})
    body = big_body(3 * 1024 * 1024, "spilledword")
    msg = message("spilled", body.decode())
    with t.client() as c:  # a local recipient: delivered (spill file unlinked) at once
        qid = c.send_message("sender@example.org", ["alice@example.test"], msg)
    got = wait_for(lambda: search(t, "spilledword")["messages"], "the spilled message", t)
    assert [m["ID"] for m in got] == [qid]
    assert got[0]["Size"] > len(msg)  # with tern's Received line
    raw = show_bytes(t, qid)
    assert raw.endswith(msg) and len(raw) == got[0]["Size"]
    assert t.log_lines("event=archive_deferred", qid, "reason=spilled")
    wait_for(lambda: not list((t.data_dir / "archive" / "incoming").iterdir()),
             "incoming/ emptied (the .msg and the linked .tail)", t)
    # its local delivery is byte-exact too: the link did not disturb the spool's file
    wait_for(lambda: t.mail_files("alice@example.test"), "the Maildir copy", t)
    assert t.mail_files("alice@example.test")[0].read_bytes().endswith(msg)


def test_in_incoming_and_in_the_spool_at_a_kill_archived_exactly_once(tern_factory,
                                                                       monkeypatch):
    monkeypatch.setenv("TERN_TEST_ARCHIVE_QUEUE_MAX", "1")  # the copy goes to incoming/
    t = tern_factory({"archive": {"enabled": True}})
    # relayed to an address that cannot be resolved here: it stays queued after the kill
    with t.client(source="127.0.0.2") as c:
        qid = c.send_message("sender@example.org", ["far@remote.example"],
                             message("twice", "onceword\r\n", to="far@remote.example"))
    t.kill9()
    t.proc = None
    t.start()  # the catch-up (from the spool) and incoming/ may both hold it
    got = wait_for(lambda: search(t, "onceword")["messages"], "the copy after restart", t)
    wait_for(lambda: not list((t.data_dir / "archive" / "incoming").iterdir()),
             "incoming/ emptied", t)
    assert [m["ID"] for m in search(t, "onceword")["messages"]] == [qid]
    assert search(t, "")["total"] == 1
    assert show_bytes(t, qid).endswith(message("twice", "onceword\r\n", to="far@remote.example"))
    assert got[0]["ID"] == qid
