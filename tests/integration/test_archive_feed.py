"""
test_archive_feed.py — how committed messages reach the archive (issue 13 item 6): the archive
follows the spool. The spool hands it a locator (segment, offset, length) and keeps the
segment, and a spilled message's file (past the 1 MiB spill threshold), until the archive has
stored the message, even after delivery; at a restart the spool's recovery hands the archive
every record of the surviving segments. An export over the API is written to an unnamed file
and sent from it.

What a user depends on: every committed message is archived whole and byte-exact, whatever
its size and even after its local delivery; a kill -9 after the 250 and after delivery but
before the archive's transaction commits (a debug fault point holds the writer there) loses
nothing: after the restart the message is archived exactly once, byte-exact, and the spool
then lets go of what it kept; a crash never makes two archive entries of one message; a large
export does not hold the server's memory (its heap, RssAnon sampled while the export is
served, does not grow by the export's size) and has the CLI export's bytes exactly.

Never: a timed assertion; every wait is a bounded poll.
"""

import io
import threading
import time
import zipfile

import pytest

from conftest import Raw, free_port, start_on_free_port
from test_api import Api, create_key, wait_ready_http
from test_archive import message, search, show_bytes, wait_for
from test_metrics import scrape


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
    assert not list((t.data_dir / "archive" / "incoming").iterdir())  # nothing copied there
    wait_for(lambda: t.mail_files("alice@example.test"), "the Maildir copy", t)
    assert t.mail_files("alice@example.test")[0].read_bytes().endswith(msg)
    # delivered and archived: the spill file the archive kept is gone
    wait_for(lambda: not list((t.data_dir / "spool" / "spill").iterdir()),
             "the spill file released", t)


def segment_files(t):
    return sorted(p.name for p in (t.data_dir / "spool").glob("seg-*.log"))


@pytest.mark.parametrize("spilled", [False, True], ids=["small", "spilled"])
def test_a_kill_after_delivery_before_the_archive_commits_loses_nothing(tern_factory,
                                                                        monkeypatch, spilled):
    monkeypatch.setenv("TERN_TEST_FAULT", "archive_commit")  # the writer stops before COMMIT
    monkeypatch.setenv("TERN_TEST_SEGMENT_MAX", "1024")  # a segment per message: reapable
    t = tern_factory({"archive": {"enabled": True},
                      "limits": {"max_message_size": Raw("8m")}})
    if not t.log_lines("event=fault_armed", "point=archive_commit"):
        pytest.skip("this tern binary has no fault points (a release build, NDEBUG)")
    body = big_body(2 * 1024 * 1024, "heldword").decode() if spilled else "heldword\r\n"
    msg = message("held", body)
    with t.client() as c:
        qid = c.send_message("sender@example.org", ["alice@example.test"], msg)
    # delivered (its queue entry is finished) while the archive's batch is held
    wait_for(lambda: t.mail_files("alice@example.test"), "the Maildir copy", t)
    wait_for(lambda: t.log_lines("event=fault_point", "point=archive_commit"),
             "the writer held before its commit", t)
    wait_for(lambda: qid not in t.queue_list(), "the message finished in the spool", t)
    # a second message: the first one's segment is no longer the current one, so only the
    # archive's pin keeps it (without it, the committer unlinks it with this batch)
    with t.client() as c:
        qid2 = c.send_message("sender@example.org", ["alice@example.test"],
                              message("after", "afterword\r\n"))
    wait_for(lambda: len(t.mail_files("alice@example.test")) == 2, "the second delivery", t)
    wait_for(lambda: qid2 not in t.queue_list(), "the second message finished", t)
    t.kill9()
    t.proc = None
    monkeypatch.delenv("TERN_TEST_FAULT")
    monkeypatch.delenv("TERN_TEST_SEGMENT_MAX")
    t.start()
    got = wait_for(lambda: search(t, "heldword")["messages"], "archived after the restart", t)
    assert [m["ID"] for m in got] == [qid]
    wait_for(lambda: search(t, "")["total"] == 2, "both archived", t)
    raw = show_bytes(t, qid)
    assert raw.endswith(msg)
    assert len(raw) == got[0]["Size"]
    # archived: the spool lets go of the segment (and spill file) it kept
    wait_for(lambda: len(segment_files(t)) == 1, "one segment left", t)
    if spilled:
        wait_for(lambda: not list((t.data_dir / "spool" / "spill").iterdir()),
                 "the spill file released", t)
    # a second restart archives nothing twice
    t.stop()
    t.start()
    wait_for(lambda: t.log_lines("event=archive_caught_up"), "the catch-up", t)
    assert search(t, "")["total"] == 2
    assert [m["ID"] for m in search(t, "heldword")["messages"]] == [qid]


def test_a_stuck_writer_keeps_a_backlog_in_the_spool_shown_on_metrics(tern_factory,
                                                                       monkeypatch):
    """The backlog bound: a writer that cannot store (held here by the fault point) drops
    nothing; the backlog is on /metrics; the messages wait in the spool's segments (one per
    message here) after delivery, and are archived after a restart; then the metric is 0."""
    monkeypatch.setenv("TERN_TEST_FAULT", "archive_commit")
    monkeypatch.setenv("TERN_TEST_SEGMENT_MAX", "1024")
    mport = free_port()
    t = tern_factory({"archive": {"enabled": True},
                      "metrics": {"address": f"127.0.0.1:{mport}"}})
    if not t.log_lines("event=fault_armed", "point=archive_commit"):
        pytest.skip("this tern binary has no fault points (a release build, NDEBUG)")
    qids = []
    with t.client() as c:
        for i in range(3):
            qids.append(c.send_message("sender@example.org", ["alice@example.test"],
                                       message(f"backlog {i}", f"backlogword {i}\r\n")))
            c.cmd("RSET")
    wait_for(lambda: len(t.mail_files("alice@example.test")) == 3, "three deliveries", t)
    s = wait_for(lambda: (lambda x: x.v("tern_archive_backlog_messages") == 3 and x)(
        scrape(mport, token=None)), "a backlog of 3 on /metrics", t)
    assert s.v("tern_archive_backlog_bytes") > 3 * 60
    wait_for(lambda: all(q not in t.queue_list() for q in qids), "all finished", t)
    t.kill9()
    t.proc = None
    monkeypatch.delenv("TERN_TEST_FAULT")
    monkeypatch.delenv("TERN_TEST_SEGMENT_MAX")
    t.start()
    got = wait_for(lambda: len(search(t, "backlogword")["messages"]) == 3 and
                   search(t, "backlogword")["messages"], "all three archived", t)
    assert sorted(m["ID"] for m in got) == sorted(qids)
    wait_for(lambda: scrape(mport, token=None).v("tern_archive_backlog_messages") == 0,
             "no backlog", t)
    wait_for(lambda: len(segment_files(t)) == 1, "the kept segments released", t)


def test_in_the_spool_at_a_kill_archived_exactly_once(tern_factory):
    t = tern_factory({"archive": {"enabled": True}})
    # relayed to an address that cannot be resolved here: it stays queued after the kill
    with t.client(source="127.0.0.2") as c:
        qid = c.send_message("sender@example.org", ["far@remote.example"],
                             message("twice", "onceword\r\n", to="far@remote.example"))
    t.kill9()
    t.proc = None
    t.start()  # archived before the kill or by the catch-up, once either way
    got = wait_for(lambda: search(t, "onceword")["messages"], "the copy after restart", t)
    assert [m["ID"] for m in search(t, "onceword")["messages"]] == [qid]
    assert search(t, "")["total"] == 1
    assert show_bytes(t, qid).endswith(message("twice", "onceword\r\n", to="far@remote.example"))
    assert got[0]["ID"] == qid


def anon_kb(pid):
    """The process's anonymous resident memory (RssAnon, KiB): its heap, not page cache."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


class PeakAnon:
    """Samples anon_kb(pid) every few milliseconds while in the with-block; .peak is the most."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, anon_kb(pid), threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, anon_kb(self.pid))
            time.sleep(0.002)

    def __enter__(self):
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join(timeout=10)
        self.peak = max(self.peak, anon_kb(self.pid))


def test_an_api_export_is_streamed_from_a_file_not_built_in_memory(tern_factory, monkeypatch):
    port = free_port()
    t = tern_factory({"archive": {"enabled": True},
                      "listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}},
                     start=False)
    admin = create_key(t, "ops", "--scope", "admin")
    start_on_free_port(t)
    wait_ready_http(port)
    api = Api(t, port)
    n, size = 48, 512 * 1024  # 24 MiB of messages, each under the spill threshold
    with t.client() as c:
        for i in range(n):
            c.send_message("sender@example.org", ["alice@example.test"],
                           message(f"export {i}", big_body(size, f"streamword{i}").decode()))
            c.cmd("RSET")
    wait_for(lambda: search(t, "subject:export")["messages_count"] == n, "all archived", t,
             timeout=120)
    wait_for(lambda: len(t.mail_files("alice@example.test")) == n, "all delivered", t,
             timeout=120)  # so that nothing else runs while the peak is watched
    time.sleep(0.5)
    pid = t.pid
    before = anon_kb(pid)
    with PeakAnon(pid) as mem:
        st, hd, mbox = api.call("GET", "/api/v1/archive/export?query=subject%3Aexport",
                                token=admin)
        assert st == 200 and hd["Content-Type"] == "application/mbox"
        st, hd, zipped = api.call(
            "GET", "/api/v1/archive/export?query=subject%3Aexport&format=zip", token=admin)
        assert st == 200 and hd["Content-Type"] == "application/zip"
    grown = mem.peak - before
    assert len(mbox) > n * size and len(zipped) > n * size
    # built whole in memory, the heap would hold the export (24 MiB) at least once
    assert grown < 8 * 1024, f"the heap grew by {grown} KiB for a {len(mbox)} byte export"
    # the same bytes as the CLI's export of the same query
    for fmt, got in (("mbox", mbox), ("zip", zipped)):
        out = t.root / f"cli.{fmt}"
        t.cli("archive", "export", "--format", fmt, "-o", str(out), "subject:export",
              check=True)
        assert out.read_bytes() == got, fmt
    assert zipfile.ZipFile(io.BytesIO(zipped)).testzip() is None
