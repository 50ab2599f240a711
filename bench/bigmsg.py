#!/usr/bin/python3
"""bench/bigmsg.py — memory of large messages relayed (issue 11 item 2).

Starts the real tern binary (a Release build: `make build`) with a relayhost pointing at
a sink on loopback (a minimal asyncio SMTP sink here that discards what it reads, in its
own process; or Postfix's smtp-sink with --smtp-sink PATH), then
  1. sends N concurrent messages of SIZE bytes (default 100 x 25 MB) over N connections
     from 127.0.0.1 (in relay.networks) and waits until every one was delivered;
  2. on a fresh tern, sends one message of BIG bytes (default 200 MB, max_message_size
     raised) and waits until it was delivered;
  3. on a fresh tern, sends one DKIM-signed message of BIG bytes from 127.0.0.2 (not in
     relay.networks, so the mx listener's auth_checks run: the DKIM body hash reads the
     whole spilled message) to a local mailbox (--no-dkim: skipped);
  4. on a fresh tern with ARC on and sealing (arc.seal_domain), one message of BIG bytes
     with an ARC Set on top from 127.0.0.2, forwarded to the sink: the chain's body hash
     reads the whole spilled message (its keys are not published, so the chain fails
     temporarily and nothing is sealed); then one without a chain, sealed cv=none (the
     seal's body hash reads it all) (--no-arc: both skipped);
  5. on a fresh tern with dkim.sign_relayed, one message of BIG bytes from 127.0.0.1 (in
     relay.networks) signed and relayed to the sink (--no-sign: skipped).
--only-checks skips phases 1 and 2.
While each phase runs, tern's VmRSS is sampled every 20 ms (the privileged parent and the
serving child together, as /proc/PID/status says), and VmHWM is read at the end. Prints the
peak RSS of phase 1 and the RSS growth of the others (peak minus the idle RSS before it).

Figures are printed, never asserted. Only 127.0.0.1 is used; processes started here are
stopped by their PID.
"""
import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, stop  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)



def pids_of(pid):
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid):
    return sum(status_kb(p, "VmRSS") for p in pids_of(pid))


def hwm_kb(pid):
    return sum(status_kb(p, "VmHWM") for p in pids_of(pid))


def cpu_s(pid):
    """User + system CPU seconds of tern's processes so far (their threads included)."""
    total = 0
    for p in pids_of(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_ = pid, 0, threading.Event()

    def run(self):
        while not self.stop_.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.02)

    def finish(self):
        self.stop_.set()
        self.join()
        return self.peak


def wait_port(port, proc, deadline=20, log=None):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            tail = open(log, errors="replace").read()[-2000:] if log else ""
            sys.exit(f"bench: process exited ({proc.returncode})\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listens on {port}")


def start_tern(tern, work, port, sink_port, max_size, extra="", networks="127.0.0.0/8"):
    data = os.path.join(work, "data")
    conf = os.path.join(work, "tern.conf")
    with open(conf, "w") as f:
        f.write(f"""
hostname = "bench.tern.test";
data_dir = "{data}";
user = "{'nobody' if os.geteuid() == 0 else ''}";
log_level = "info";
local_domains = ["bench.test"];
relay {{ networks = ["{networks}"]; }}
relayhost {{ via = "smtp://127.0.0.1:{sink_port}"; tls = "none"; }}
dns {{ forward = ["127.0.0.1@9"]; }}
limits {{ max_connections = 2000; max_connections_per_ip = 2000;
          max_message_size = {max_size}; data_timeout = 600s; idle_timeout = 600s; }}
listen {{ mx {{ address = "127.0.0.1:{port}"; profile = "mx"; }} }}
{extra}
""")
    if os.geteuid() == 0:
        os.chmod(work, 0o755)
    if extra:  # the DKIM phase delivers to a local mailbox
        subprocess.run([tern, "user", "add", "u@bench.test", "--password-stdin", "-c", conf],
                       input=b"bench-password-1\n", check=True, capture_output=True)
    log = open(os.path.join(work, "tern.log"), "w")
    proc = subprocess.Popen([tern, "serve", "-c", conf], stdout=log, stderr=log)
    wait_port(port, proc, log=os.path.join(work, "tern.log"))
    return proc, os.path.join(work, "tern.log")



def make_message(size):
    """A dot-stuffed DATA body of about size bytes, with its end line."""
    head = b"From: bench@bench.test\r\nTo: sink@remote.test\r\nSubject: big\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    n = max(1, (size - len(head)) // len(line))
    return head + line * n + b".\r\n"


def recv(f):
    while True:
        ln = f.readline()
        if not ln:
            raise OSError("closed")
        if ln[3:4] != b"-":
            return int(ln[:3])


def send_one(port, body, results, i):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=600)
        f = s.makefile("rb")
        recv(f)
        for cmd, want in ((b"EHLO bench.test\r\n", 250), (b"MAIL FROM:<bench@bench.test>\r\n", 250),
                          (b"RCPT TO:<sink@remote.test>\r\n", 250), (b"DATA\r\n", 354)):
            s.sendall(cmd)
            code = recv(f)
            if code != want:
                raise OSError(f"{cmd!r} -> {code}")
        s.sendall(body)
        results[i] = recv(f)
        s.sendall(b"QUIT\r\n")
        s.close()
    except OSError as e:
        results[i] = str(e)


def delivered(log_path):
    with open(log_path, errors="replace") as f:
        return sum(1 for ln in f if "event=delivered" in ln)


async def sink_session(reader, writer):
    """EHLO/MAIL/RCPT/DATA/RSET/QUIT; message bytes are read and dropped."""
    writer.write(b"220 sink ESMTP\r\n")
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line[:4].upper()
        if verb == b"EHLO":
            writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        elif verb == b"DATA":
            writer.write(b"354 go\r\n")
            await writer.drain()
            tail = b""
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    return
                buf = tail + chunk
                if buf.find(b"\r\n.\r\n") >= 0:  # the end: nothing is pipelined past it here
                    break
                tail = buf[-4:]
            writer.write(b"250 2.0.0 dropped\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()
    writer.close()


def run_sink(port):
    async def main():
        srv = await asyncio.start_server(sink_session, "127.0.0.1", port, backlog=1024)
        async with srv:
            await srv.serve_forever()
    asyncio.run(main())


def phase(args, work, n, size, max_size):
    sink_port, port = free_port(), free_port()
    cmd = ([args.smtp_sink, "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"] if args.smtp_sink
           else [sys.executable, os.path.abspath(__file__), "--sink", str(sink_port)])
    sink = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = None
    try:
        wait_port(sink_port, sink)
        proc, log = start_tern(args.tern, work, port, sink_port, max_size)
        time.sleep(0.5)
        idle = rss_kb(proc.pid)
        body = make_message(size)
        sampler = Sampler(proc.pid)
        sampler.start()
        t0 = time.time()
        results = [None] * n
        threads = [threading.Thread(target=send_one, args=(port, body, results, i))
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = sum(1 for r in results if r == 250)
        deadline = time.time() + args.timeout
        while delivered(log) < accepted and time.time() < deadline:
            time.sleep(0.1)
        elapsed = time.time() - t0
        peak = sampler.finish()
        hwm = hwm_kb(proc.pid)
        return {"n": n, "size": len(body), "accepted": accepted, "delivered": delivered(log),
                "errors": [r for r in results if r != 250][:3], "idle_mb": idle / 1024,
                "peak_rss_mb": peak / 1024, "vmhwm_mb": hwm / 1024,
                "growth_mb": (max(peak, hwm) - idle) / 1024, "elapsed_s": elapsed}
    finally:
        if proc:
            stop(proc)
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=30)


def dkim_phase(args, work, size):
    """One DKIM-signed message (the key is not published: the result is temperror, but
    the body hash runs over every byte) from outside relay.networks to a local mailbox."""
    port = free_port()
    proc = None
    try:
        proc, log = start_tern(args.tern, work, port, 9, "512m", networks="127.0.0.1/32",
                               extra="auth_checks { spf = false; dkim = true; dmarc = false; "
                                     "timeout = 3s; }")
        time.sleep(0.5)
        idle = rss_kb(proc.pid)
        head = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=bench.example;\r\n"
                b" s=s1; h=from:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
                b" b=AAAA\r\nFrom: a@bench.example\r\nTo: u@bench.test\r\nSubject: big\r\n\r\n")
        line = b"x" * 76 + b"\r\n"
        body = head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"
        s = socket.create_connection(("127.0.0.1", port), timeout=600,
                                     source_address=("127.0.0.2", 0))
        f = s.makefile("rb")
        recv(f)
        for cmd in (b"EHLO bench.test\r\n", b"MAIL FROM:<a@bench.example>\r\n",
                    b"RCPT TO:<u@bench.test>\r\n", b"DATA\r\n"):
            s.sendall(cmd)
            recv(f)
        sampler = Sampler(proc.pid)
        sampler.start()
        s.sendall(body)
        code = recv(f)
        s.close()
        deadline = time.time() + args.timeout
        while code == 250 and delivered(log) < 1 and time.time() < deadline:
            time.sleep(0.1)
        peak = sampler.finish()
        hwm = hwm_kb(proc.pid)
        return {"size": len(body), "code": code, "idle_mb": idle / 1024,
                "peak_rss_mb": peak / 1024, "vmhwm_mb": hwm / 1024,
                "growth_mb": (max(peak, hwm) - idle) / 1024}
    finally:
        if proc:
            stop(proc)


def keygen(tern, work, domain, selector):
    """An RSA key from `tern dkim keygen`, readable by the serving child (nobody)."""
    subprocess.run([tern, "dkim", "keygen", domain, selector, "--type", "rsa"], cwd=work,
                   check=True, capture_output=True, timeout=60)
    path = os.path.join(work, f"{domain}.{selector}.key")
    if os.geteuid() == 0:
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return path


ARC_SET = (b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=sealer.example; s=s1; t=1700000000;\r\n"
           b" b=AAAA\r\n"
           b"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=sealer.example;\r\n"
           b" s=s1; t=1700000000; h=from:to:subject;\r\n"
           b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n"
           b"ARC-Authentication-Results: i=1; sealer.example; spf=pass smtp.mailfrom=a@x.example\r\n")


def check_phase(args, work, size, kind):
    """One message of size bytes checked and forwarded to the sink: kind "arc" (from
    127.0.0.2 with an ARC Set, sealing on), "seal" (the same without a chain: sealed
    cv=none) or "sign" (from 127.0.0.1 in relay.networks, DKIM-signed)."""
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sink", str(sink_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = None
    try:
        wait_port(sink_port, sink)
        key = keygen(args.tern, work, "bench.test", "k1")
        keys = (f'dkim {{ keys = [ {{ domain = "bench.test"; selector = "k1"; '
                f'key_file = "{key}"; }} ];')
        if kind == "sign":
            extra, networks, src = keys + " sign_relayed = true; }", "127.0.0.0/8", "127.0.0.1"
        else:
            # a stranger's mail to an alias that forwards it off this host
            extra = (keys + ' }\narc { seal_domain = "bench.test"; }\nauth_checks { '
                     "spf = false; dkim = false; dmarc = false; arc = true; timeout = 3s; }\n"
                     'aliases { "fwd@bench.test" = "sink@remote.test"; }')
            networks, src = "127.0.0.1/32", "127.0.0.2"
        proc, log = start_tern(args.tern, work, port, sink_port, "512m", extra=extra,
                               networks=networks)
        time.sleep(0.5)
        idle = rss_kb(proc.pid)
        head = ((ARC_SET if kind == "arc" else b"") +
                b"From: bench@bench.test\r\nTo: sink@remote.test\r\nSubject: big\r\n\r\n")
        line = b"x" * 76 + b"\r\n"
        body = head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"
        s = socket.create_connection(("127.0.0.1", port), timeout=600, source_address=(src, 0))
        f = s.makefile("rb")
        recv(f)
        rcpt = b"sink@remote.test" if kind == "sign" else b"fwd@bench.test"
        for cmd, want in ((b"EHLO bench.test\r\n", 250), (b"MAIL FROM:<bench@bench.test>\r\n", 250),
                          (b"RCPT TO:<" + rcpt + b">\r\n", 250), (b"DATA\r\n", 354)):
            s.sendall(cmd)
            code = recv(f)
            if code != want:
                sys.exit(f"bench: {cmd!r} -> {code}")
        sampler = Sampler(proc.pid)
        sampler.start()
        cpu0 = cpu_s(proc.pid)
        s.sendall(body)
        code = recv(f)
        s.close()
        deadline = time.time() + args.timeout
        while code == 250 and delivered(log) < 1 and time.time() < deadline:
            time.sleep(0.1)
        cpu = cpu_s(proc.pid) - cpu0
        peak = sampler.finish()
        hwm = hwm_kb(proc.pid)
        with open(log, errors="replace") as lf:
            text = lf.read()
        what = {"arc": " arc=", "seal": "event=arc_seal", "sign": "event=dkim_sign"}[kind]
        lines = [ln for ln in text.splitlines() if what in ln]
        note = lines[-1].split(" ", 2)[-1][:200] if lines else "(no log line)"
        return {"size": len(body), "code": code, "delivered": delivered(log),
                "idle_mb": idle / 1024, "peak_rss_mb": peak / 1024, "vmhwm_mb": hwm / 1024,
                "growth_mb": (max(peak, hwm) - idle) / 1024, "cpu_s": cpu, "log": note}
    finally:
        if proc:
            stop(proc)
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tern", default=os.path.join(REPO, "build", "tern"))
    ap.add_argument("--smtp-sink", help="Postfix's smtp-sink instead of the built-in sink")
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)  # run as the sink on this port
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--size", type=int, default=25 * 1000 * 1000)
    ap.add_argument("--big", type=int, default=200 * 1000 * 1000)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--no-dkim", action="store_true", help="skip the DKIM-checked phase")
    ap.add_argument("--no-arc", action="store_true", help="skip the ARC phases")
    ap.add_argument("--no-sign", action="store_true", help="skip the DKIM-signed phase")
    ap.add_argument("--only-checks", action="store_true",
                    help="skip phases 1 and 2 (the relays without checks)")
    args = ap.parse_args()
    if args.sink:
        run_sink(args.sink)
        return
    for p in (args.tern, args.smtp_sink or args.tern):
        if not os.access(p, os.X_OK):
            sys.exit(f"bench: {p} is not an executable (make build; scripts/install-deps)")
    print(f"tern {args.tern}")
    with tempfile.TemporaryDirectory(prefix="tern-bigmsg-") as tmp:
        if os.geteuid() == 0:
            os.chmod(tmp, 0o755)  # tern drops to nobody
        w1, w2, w3, w4, w5, w6 = (os.path.join(tmp, p)
                                  for p in ("p1", "p2", "p3", "p4", "p5", "p6"))
        for w in (w1, w2, w3, w4, w5, w6):
            os.makedirs(w)
        if not args.only_checks:
            relays(args, w1, w2)
        if not args.no_dkim:
            c = dkim_phase(args, w3, args.big)
            print(f"1 DKIM-checked message of {c['size'] / 1e6:.1f} MB to a mailbox: reply "
                  f"{c['code']}; tern RSS idle {c['idle_mb']:.1f} MB, peak "
                  f"{c['peak_rss_mb']:.1f} MB, VmHWM {c['vmhwm_mb']:.1f} MB: growth "
                  f"{c['growth_mb']:.1f} MB")
        for kind, w, skip, words in (
                ("arc", w4, args.no_arc, "with an ARC chain checked, forwarded"),
                ("seal", w5, args.no_arc, "ARC-sealed (no chain), forwarded"),
                ("sign", w6, args.no_sign, "DKIM-signed (relay.networks), relayed")):
            if skip:
                continue
            r = check_phase(args, w, args.big, kind)
            print(f"1 message of {r['size'] / 1e6:.1f} MB {words}: reply {r['code']}, "
                  f"delivered {r['delivered']}; tern RSS idle {r['idle_mb']:.1f} MB, peak "
                  f"{r['peak_rss_mb']:.1f} MB, VmHWM {r['vmhwm_mb']:.1f} MB: growth "
                  f"{r['growth_mb']:.1f} MB; tern CPU {r['cpu_s']:.2f} s; log: {r['log']}")


def relays(args, w1, w2):
    """Phases 1 and 2: relayed without checks."""
    a = phase(args, w1, args.concurrent, args.size, "64m")
    print(f"{a['n']} concurrent messages of {a['size'] / 1e6:.1f} MB: accepted "
          f"{a['accepted']}, delivered {a['delivered']} in {a['elapsed_s']:.1f} s; "
          f"tern RSS idle {a['idle_mb']:.1f} MB, peak {a['peak_rss_mb']:.1f} MB "
          f"(sampled every 20 ms), VmHWM {a['vmhwm_mb']:.1f} MB"
          + (f"; errors {a['errors']}" if a["errors"] else ""))
    b = phase(args, w2, 1, args.big, "512m")
    print(f"1 message of {b['size'] / 1e6:.1f} MB: accepted {b['accepted']}, delivered "
          f"{b['delivered']} in {b['elapsed_s']:.1f} s; tern RSS idle {b['idle_mb']:.1f} "
          f"MB, peak {b['peak_rss_mb']:.1f} MB, VmHWM {b['vmhwm_mb']:.1f} MB: growth "
          f"{b['growth_mb']:.1f} MB"
          + (f"; errors {b['errors']}" if b["errors"] else ""))


if __name__ == "__main__":
    main()
