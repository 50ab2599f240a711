"""A burst of connections while tern is busy waits in the kernel's accept queue
instead of being dropped.

tern listens with a backlog of 4096 (src/cli/serve.c). libevent's
evconnlistener_new(..., backlog -1, fd) calls listen(fd, 128) again on a socket
that already listens, which silently cut that to 128: with thousands of senders
connecting at once, the rest of the SYNs were dropped and those clients waited
for SYN retransmits (1 s, 3 s, ... up to a minute). This test stops tern (so
nothing is accepted), opens more connections than 128 at once, and expects the
kernel to complete every handshake; then tern, resumed, greets them all.
"""
import os
import selectors
import signal
import socket
import time

import pytest

BURST = 600  # well over libevent's 128, well under the 4096 tern asks for


def somaxconn():
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except OSError:
        return 0


@pytest.mark.skipif(somaxconn() < BURST + 50,
                    reason="net.core.somaxconn caps every backlog below the burst")
@pytest.mark.tern_config({"workers": 1,
                          "limits": {"max_connections": 5000,
                                     "max_connections_per_ip": 5000}})
def test_burst_waits_in_the_accept_queue(tern):
    pid = tern.pid
    socks = []
    os.kill(pid, signal.SIGSTOP)
    try:
        sel = selectors.DefaultSelector()
        for _ in range(BURST):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            if s.connect_ex(("127.0.0.1", tern.port)) not in (0, 115):  # EINPROGRESS
                pytest.fail("connect refused outright")
            sel.register(s, selectors.EVENT_WRITE)
        # The handshakes complete in the kernel, tern stopped or not, as long as
        # the accept queue has room; a dropped SYN is retried only after 1 s, and
        # stays dropped while the queue is full. Bounded wait, then count.
        done = set()
        deadline = time.monotonic() + 5
        while len(done) < BURST and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sel.unregister(key.fileobj)
                done.add(key.fileobj)
        sel.close()
        errs = [s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for s in done]
        assert len(done) == BURST and not any(errs), \
            f"{len(done)} of {BURST} connections completed while tern was busy"
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        # resumed, tern accepts and greets every one of them
        for s in socks:
            s.setblocking(True)
            s.settimeout(20)
            assert s.recv(4).startswith(b"220")
    finally:
        for s in socks:
            s.close()
