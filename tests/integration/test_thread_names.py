"""Operators tell tern's threads apart in top -H, ps -L and perf by their names:
the event-loop threads are worker-N (one per `workers`), the spool's committer and
preparer spool-commit and spool-prep."""
import os

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
def test_worker_and_spool_threads_are_named(tern):
    names = thread_names(serving_pid(tern.proc.pid))
    assert sorted(n for n in names if n.startswith("worker-")) == ["worker-0", "worker-1",
                                                                   "worker-2"]
    assert "spool-commit" in names
    assert "spool-prep" in names
