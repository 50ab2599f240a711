"""limits.queued_memory also bounds the jobs waiting in a destination's queue: when the
budget is full, a job behind busy connections drops its copy of the message and a
connection reads it back from the spool when it takes the job (event=remote_body_dropped,
then event=remote_body_reread; tern_bodies_reread_total{stage="remote"}). What a user
depends on, asserted from the next hop's side and from the sender's mailbox:

- every message read back arrives exactly once, byte for byte,
  with tern's own X-Tern-Tag header taken off as it is from a message kept in memory,
  and still rides behind the previous message's end of data (delivery.pipeline_next);
- with room in the budget (the default, 128 MiB) nothing is dropped;
- a job that ends without ever being sent (its destination does not exist) still gets
  its failure notice with the original message in it: the bytes come back from the spool.
"""

import re
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Raw, deep_merge, free_port
from remote_harness import (DEADLINE, DOMAIN, PIPE_IP, PipeMX, assert_exact, message,
                            queue_behind, start_behind, submit, submit_behind, tx_of,
                            wait_all_taken, wait_dsn, wait_queue_empty)
from remote_harness import mx, remote_tern, world  # noqa: F401  (fixtures)


def metric(port, name, **labels):
    """One sample of tern's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                return smp.value
    return 0


def dropped_and_reread(t):
    log = t.log()
    return (set(re.findall(r"event=remote_body_dropped id=(\S+) ", log)),
            set(re.findall(r"event=remote_body_reread id=(\S+) ", log)))


@pytest.mark.parametrize("queued_memory", ["0", None], ids=["no-budget", "default"])
def test_waiting_jobs_past_the_budget_are_read_back_exactly(remote_tern, mx, queued_memory):
    with PipeMX(PIPE_IP) as fake:
        mport = free_port()
        extra = {"metrics": {"address": f"127.0.0.1:{mport}"}}
        if queued_memory:
            extra = deep_merge(extra, {"limits": {"queued_memory": Raw(queued_memory)}})
        t = start_behind(remote_tern, fake, extra=extra)
        msgs = {}
        for i in range(5):
            tag = f"readback{i}-{queued_memory}"
            # X-Tern-Tag picks an IP pool; it is ours and never leaves tern
            # sizes from 3 KB to 300 KB: what is read back is the whole message
            filler = b"".join(b"line %06d of the readback filler\r\n" % n
                              for n in range(100 * 3 ** i))
            msgs[tag] = b"X-Tern-Tag: newsletter\r\n" + message(tag) + filler
        order = queue_behind(t, fake, msgs)
        taken = wait_all_taken(t, fake, order)
        for tag, m in msgs.items():  # each exactly once, byte for byte
            want = m.replace(b"X-Tern-Tag: newsletter\r\n", b"")
            [tx] = tx_of(taken, want)
            assert_exact(tx, want)
            assert b"X-Tern-Tag" not in tx["data"]
        # each but the last went out behind the previous end of data, read back or not
        # (the next job's bytes are read while the current message goes out)
        flags = [x["pipelined"] for x in taken]
        assert flags == [True] * (len(msgs) - 1) + [False], flags
        dropped, reread = dropped_and_reread(t)
        qids = {q for q, _ in order}
        if queued_memory == "0":
            # the jobs that waited behind the busy connection, at least, went without
            # their bytes, and every one dropped was read back once to be sent
            assert {q for q, _ in order[1:]} <= dropped, (dropped, order)
            assert dropped == reread and dropped <= qids
            assert len(t.log_lines("event=remote_body_reread")) == len(dropped)
        else:
            assert dropped == set() and reread == set()
        # what /metrics shows: each drop counted, and every byte kept given back once the
        # queue is empty (the scheduler's and the destination's holds alike)
        assert metric(mport, "tern_bodies_reread_total", stage="remote") == len(dropped)
        deadline = time.monotonic() + DEADLINE
        while metric(mport, "tern_queued_memory_bytes") != 0:
            assert time.monotonic() < deadline, metric(mport, "tern_queued_memory_bytes")
            time.sleep(0.05)


def test_a_job_never_sent_gets_its_notice_with_the_original(remote_tern, mx):
    # gone.test has no DNS records: the job ends bounced without a connection ever taking
    # it, so its bytes were never read back; the notice needs them all the same.
    t = remote_tern(extra={"limits": {"queued_memory": Raw("0")}, "log_level": "debug"})
    body = (b"From: <sender@example.org>\r\nTo: <x@gone.test>\r\nSubject: readback-gone\r\n"
            b"\r\nthe original text readback-gone-8841\r\n")
    qid = submit(t, ["x@gone.test"], body)
    dsn = wait_dsn(t, "x@gone.test")
    assert "readback-gone-8841" in dsn.original_text(), dsn
    t.wait_log(rf"event=bounced id={qid}\b")
    assert re.search(rf"event=remote_body_dropped id={qid} ", t.log()), t.log_tail()
    wait_queue_empty(t)


def test_a_message_deleted_while_it_waits_is_never_sent(remote_tern, mx):
    # `tern queue delete` while the job waits without its bytes: the read-back finds
    # nothing, the job is given up (nothing is sent for it, nothing recorded: the message
    # is gone), and the connection goes on with the next message.
    with PipeMX(PIPE_IP) as fake:
        t = start_behind(remote_tern, fake, extra={"limits": {"queued_memory": Raw("0")}})
        tags = [f"deleted{i}" for i in range(3)]
        msgs = {tag: message(tag) for tag in tags}
        qids = submit_behind(t, msgs[tags[0]], [msgs[tag] for tag in tags[1:]])
        gone = qids[1]
        out = t.cli("queue", "delete", gone)
        assert out.returncode == 0, out.stderr + out.stdout
        fake.go.set()
        for q in (qids[0], qids[2]):
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        t.wait_log(rf"event=spool_read_failed id={gone} ")
        wait_queue_empty(t)
        taken = fake.taken()
        assert len(taken) == 2, taken
        for tag in (tags[0], tags[2]):
            [tx] = tx_of(taken, msgs[tag])
            assert_exact(tx, msgs[tag])
        assert not tx_of(taken, msgs[tags[1]])
        assert not re.search(rf"event=(delivered|bounced) id={gone} ", t.log())


def test_a_job_taken_early_goes_on_after_a_refused_transaction(remote_tern, mx):
    # The job behind the first was taken early and read back while the first went out
    # (pipelined=1); the first's only recipient is refused, so nothing rides behind its
    # DATA: after the RSET the early job is begun as the current one, exactly once.
    with PipeMX(PIPE_IP, refuse_rcpt="refused@") as fake:
        t = start_behind(remote_tern, fake, extra={"limits": {"queued_memory": Raw("0")}})
        first = message("early-refused")
        rest = {f"early{i}": message(f"early{i}") for i in range(2)}
        qids = submit_behind(t, first, list(rest.values()), first_from="refused@example.test")
        fake.go.set()
        t.wait_log(rf"event=bounced id={qids[0]} to=<a@{DOMAIN}>.*status=5\.1\.1",
                   timeout=DEADLINE)
        for q in qids[1:]:
            t.wait_log(rf"event=delivered id={q} to=<a@{DOMAIN}>", timeout=DEADLINE)
        wait_queue_empty(t)
        assert re.search(rf"event=remote_body_reread id={qids[1]} .*pipelined=1", t.log()), \
            t.log_tail()
        taken = fake.taken()
        assert len(taken) == len(rest), taken
        for m in rest.values():
            [tx] = tx_of(taken, m)
            assert_exact(tx, m)
        verbs = [c.split(" ")[0].upper() for c in fake.conns[0]]
        assert verbs[:6] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL"], verbs
