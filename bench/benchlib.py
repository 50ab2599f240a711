"""benchlib.py — what tern's bench scripts share: finding (or building) the load generator, a
free loopback port, stopping a server they started.

Owns: locating bench/smtpload.c's binary — the one CMake builds beside tern (make build puts it
in build/smtpload), or a fresh `cc -O2` build of bench/smtpload.c in the caller's temp dir.
Never: downloads anything or reads outside the repository; the load generator only talks to
127.0.0.0/8 and ::1.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "smtpload.c")


def smtpload(tern_bin, tmpdir, given=None):
    """Path of a usable smtpload: given, else the one beside tern_bin, else built into tmpdir."""
    for cand in (given, os.path.join(os.path.dirname(os.path.abspath(tern_bin)), "smtpload")):
        if cand and os.access(cand, os.X_OK):
            return cand
    if given:
        sys.exit(f"bench: {given} is not an executable")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        sys.exit("bench: no C compiler to build bench/smtpload.c (scripts/install-deps)")
    exe = os.path.join(tmpdir, "smtpload")
    subprocess.run([cc, "-std=c17", "-D_GNU_SOURCE", "-O2", "-o", exe, SRC], check=True)
    return exe


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, timeout=120):
    """SIGTERM to a server this script started (by its Popen), then SIGKILL after timeout s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
