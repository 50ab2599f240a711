"""Operators tell tern's threads apart in top -H, ps -L and perf by their names:
the event-loop threads are worker-N (one per `workers`), the spool's committer and
preparer spool-commit and spool-prep, the scheduler's delivery threads delivery, the
events writer events, the thread pool's threads pool."""
import os
import time

import pytest

from conftest import serving_pid


def thread_names(pid):
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass  # a thread that ended meanwhile
    return names


@pytest.mark.tern_config({"workers": 3})
def test_threads_are_named(tern):
    # A thread names itself when it starts, which may be just after tern greets: poll.
    want = {"worker-0", "worker-1", "worker-2", "spool-commit", "spool-prep", "delivery",
            "events", "pool"}
    deadline = time.monotonic() + 10
    while True:
        names = thread_names(serving_pid(tern.proc.pid))
        if want <= set(names) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert want <= set(names), sorted(names)
    assert sorted(n for n in names if n.startswith("worker-")) == ["worker-0", "worker-1",
                                                                   "worker-2"]
