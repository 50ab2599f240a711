"""The capture-mode web UI end to end, in headless Chromium (tests/e2e/run.sh).

Owns: running tests/e2e/run.sh (which starts its own `tern capture` on free loopback ports,
drives Debian's /usr/bin/chromium with playwright-core and stops that tern by PID) under a
time limit, and turning its result into a pytest result.

Never: skip for any reason but node, chromium or playwright-core being impossible to install
(run.sh exits 77 and says why); a tern that fails to start or a UI that misbehaves fails.
"""

import os
import subprocess

import pytest

from conftest import REPO, tern_bin

RUN = REPO / "tests" / "e2e" / "run.sh"
TIMEOUT = 900  # generous: the first run may apt-get chromium and npm-install playwright-core


# tests/e2e: this and the other Chromium test (test_serve_ui.py) npm-install playwright-core into
# the same tests/e2e/node_modules when it is missing: one xdist group, never at once.
@pytest.mark.xdist_group("e2e")
def test_webui_end_to_end_in_chromium():
    env = dict(os.environ, TERN_BIN=tern_bin())
    try:
        r = subprocess.run(["bash", str(RUN)], env=env, cwd=str(RUN.parent),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=TIMEOUT, text=True)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"tests/e2e/run.sh took longer than {TIMEOUT}s\n{out[-4000:]}")
    out = r.stdout
    if r.returncode == 77:
        reason = [ln for ln in out.splitlines() if ln.startswith("SKIP:")]
        pytest.skip(reason[-1] if reason else "e2e prerequisites unavailable")
    print(out)
    assert r.returncode == 0, f"web UI e2e failed (rc {r.returncode}):\n{out[-6000:]}"
    assert "PASS" in out
    assert (RUN.parent / "artifacts" / "capture-reader.png").is_file(), "no screenshot saved"
