"""bench/smtpload -b: the load generator spreads its connections over source
addresses 127.0.0.2 and up (one source address reaches one server port from
about 28,000 ephemeral ports, so make bench-scale's 50,000 idle sessions need
several), and refuses -b where it cannot work.

The generator is the one built beside tern (CMake's smtpload target), else
bench/smtpload.c compiled here with cc.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, tern_bin


@pytest.fixture(scope="module")
def smtpload(tmp_path_factory):
    beside = os.path.join(os.path.dirname(os.path.abspath(tern_bin())), "smtpload")
    if os.access(beside, os.X_OK):
        return beside
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (scripts/install-deps) and no smtpload beside tern"
    exe = str(tmp_path_factory.mktemp("smtpload") / "smtpload")
    subprocess.run([cc, "-std=c17", "-D_GNU_SOURCE", "-O2", "-o", exe,
                    str(REPO / "bench" / "smtpload.c")], check=True)
    return exe


@pytest.mark.tern_config({"log_level": "info"})
def test_hold_spreads_over_source_addresses(tern, smtpload):
    r = subprocess.run([smtpload, "hold", "127.0.0.1", str(tern.port), "-k", "6", "-H", "0",
                        "-b", "3", "-T", "60"], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["held"] == 6 and res["errors"] == {}, res
    tern.wait_log(r"client=127\.0\.0\.4")
    clients = re.findall(r"event=connect sess=\S+ client=(\S+)", tern.log())
    # the harness's own start-up probe connects from 127.0.0.1
    ours = sorted(c for c in clients if c != "127.0.0.1")
    assert ours == ["127.0.0.2"] * 2 + ["127.0.0.3"] * 2 + ["127.0.0.4"] * 2, clients


def test_source_addresses_need_ipv4(smtpload):
    r = subprocess.run([smtpload, "hold", "::1", "25", "-k", "1", "-b", "2"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "-b needs an IPv4 destination" in r.stderr
