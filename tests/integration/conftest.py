"""
conftest.py — shared machinery for tern's integration tests.

Owns: finding the binary and the test vectors (tests/data, or $TERN_TESTDATA), writing a
per-test config and data dir, starting/stopping `tern serve` on a free loopback port, a raw
SMTP client that shows exact reply codes, and Maildir/log helpers.

Never: touch anything outside its own temp dirs, talk to anything but 127.0.0.0/8,
wait without a bound, or kill a process it did not start.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Test vectors copied into the repository, a SOURCE.md per set: the project stands alone
# (nothing outside the repository is read). ctest passes TERN_TESTDATA; by hand the default
# is right.
DATA = Path(os.environ.get("TERN_TESTDATA") or REPO / "tests" / "data")
IS_ROOT = os.geteuid() == 0

QUEUE_ID_RE = re.compile(r"\b([0-9A-Z]{16})\b")
QUEUED_AS_RE = re.compile(r"queued as <?([0-9A-Z]{16})>?")
ENH_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 15.0
REPLY_TIMEOUT = 10.0


def tern_bin():
    b = os.environ.get("TERN_BIN")
    if b:
        return b
    for cand in (REPO / "build-lead" / "tern", REPO / "build-test" / "tern", REPO / "build" / "tern"):
        if cand.exists():
            return str(cand)
    return str(REPO / "build-lead" / "tern")


# --------------------------------------------------------------------------
# Config rendering (UCL subset).


class Raw(str):
    """A value written bare (sizes like 1m, times like 5s, numbers)."""


def _ucl_key(k):
    return k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", k) else _ucl_str(k)


def _ucl_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ucl_value(v):
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _ucl_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_ucl_value(x) for x in v) + "]"
    raise TypeError(v)


def render_ucl(d, indent=0):
    pad = "  " * indent
    out = []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            out.append(f"{pad}{_ucl_key(k)} {{")
            out.append(render_ucl(v, indent + 1))
            out.append(f"{pad}}}")
        else:
            out.append(f"{pad}{_ucl_key(k)} = {_ucl_value(v)};")
    return "\n".join(x for x in out if x != "")


def deep_merge(base, over):
    res = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(res.get(k), dict):
            res[k] = deep_merge(res[k], v)
        else:
            res[k] = v
    return res


_PORTS_GIVEN = set()


def free_port(host="127.0.0.1"):
    """A port free now, and never handed out before by this process: a port is only bound
    when tern starts, so the kernel may offer one given out a moment ago again (a test once
    got its POP3 port equal to the SMTP port of the same tern, not yet listening)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise AssertionError("no fresh loopback port in 1000 tries")


def serving_pid(pid):
    """The process that serves the network. Started as root, tern runs as a privileged
    parent (pid) and one unprivileged child that does all the work (src/core/privsep.h);
    otherwise it is one process."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return pid
    return int(kids[0]) if kids else pid


def kill9_tern(proc):
    """kill -9 of the process holding the spool (the child of a split tern: its parent
    then reaps it and exits by itself), and waits until every tern process is gone."""
    child = serving_pid(proc.pid)
    if child != proc.pid:
        os.kill(child, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(10)


def make_tmpdir(prefix="tern-it-"):
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    # The daemon drops to "nobody" when started as root: it must traverse this.
    os.chmod(d, 0o755)
    return Path(d)


# --------------------------------------------------------------------------
# Raw SMTP client: exact bytes in, exact replies out.


class Reply:
    def __init__(self, lines):
        self.lines = lines  # list of str, without CRLF
        self.code = int(lines[-1][:3])
        texts = [ln[4:] for ln in lines]
        self.texts = texts
        self.text = "\n".join(texts)
        m = ENH_RE.match(texts[0]) if texts else None
        self.enh = ".".join(m.groups()) if m else None

    def __repr__(self):
        return "Reply(%r)" % (self.lines,)

    def is_(self, code, enh=None):
        if self.code != code:
            return False
        if enh is None:
            return True
        if isinstance(enh, re.Pattern):
            return bool(self.enh and enh.fullmatch(self.enh))
        return self.enh == enh

    def queue_id(self):
        m = QUEUED_AS_RE.search(self.text)
        return m.group(1) if m else None


def expect(reply, code, enh=None):
    assert reply.is_(code, enh), f"expected {code} {enh or ''}, got {reply!r}"
    return reply


class ConnectionClosed(Exception):
    pass


class Client:
    def __init__(self, port, host="127.0.0.1", source=None, timeout=REPLY_TIMEOUT, greet=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _readline(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self):
        lines = []
        while True:
            ln = self._readline()
            assert re.match(r"^\d{3}[ -]", ln) or re.fullmatch(r"\d{3}", ln), f"bad reply line {ln!r}"
            lines.append(ln)
            if len(ln) == 3 or ln[3] == " ":
                return Reply(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def ehlo(self, name="client.example.org"):
        return expect(self.cmd(f"EHLO {name}"), 250)

    def pending(self, wait=0.5):
        """Bytes the server sent without being asked (within wait seconds)."""
        data = self.buf
        self.buf = b""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        finally:
            self.sock.settimeout(old)
        return data

    def closed_by_peer(self, wait=5.0):
        """True if the server closes the connection within wait seconds."""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        finally:
            self.sock.settimeout(old)
        return False

    def send_message(self, mail_from, rcpts, body, mail_params="", helo=True):
        """A full transaction; returns the queue id. body is the message (CRLF lines),
        dot-stuffing is applied here."""
        if helo:
            self.ehlo()
        expect(self.cmd(f"MAIL FROM:<{mail_from}>{(' ' + mail_params) if mail_params else ''}"), 250, "2.1.0")
        for r in rcpts:
            expect(self.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
        expect(self.cmd("DATA"), 354)
        self.send(dot_stuff(body) + b".\r\n")
        r = expect(self.reply(), 250, "2.0.0")
        qid = r.queue_id()
        assert qid, f"no queue id in {r!r}"
        return qid


def dot_stuff(body):
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    lines = body.split(b"\r\n")
    return b"\r\n".join((b"." + ln) if ln.startswith(b".") else ln for ln in lines)


def make_message(subject, body="hello\r\n", frm="sender@example.org", to="alice@example.test",
                 extra_headers=""):
    msg = (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n{extra_headers}\r\n{body}")
    return msg.encode("utf-8")


# --------------------------------------------------------------------------
# Maildir helpers.


def split_trace(data):
    """Splits a delivered file into (style, [trace header lines unfolded], rest) where the
    first three headers are Return-Path, Delivered-To, Received. style is b"\\r\\n" or b"\\n"."""
    nl = b"\r\n" if data.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    pos = 0
    headers = []
    for _ in range(3):
        end = data.index(nl, pos)
        # unfold continuation lines
        while data[end + len(nl):end + len(nl) + 1] in (b" ", b"\t"):
            end = data.index(nl, end + len(nl))
        raw = data[pos:end]
        headers.append(re.sub(rb"\r?\n[ \t]+", b" ", raw).decode("utf-8", "replace"))
        pos = end + len(nl)
    return nl, headers, data[pos:]


def header_section(data):
    data = data.replace(b"\r\n", b"\n")
    return data.split(b"\n\n", 1)[0]


# --------------------------------------------------------------------------
# The server under test.


BASE_CONFIG = {
    "hostname": "mx.example.test",
    "local_domains": ["example.test", "localhost"],
    "aliases": {
        "postmaster@example.test": ["alice@example.test"],
        "team@example.test": ["alice@example.test", "bob@example.test"],
    },
    "relay": {"networks": ["127.0.0.2/32"]},
    # Remote delivery never leaves loopback in these tests: DNS goes to a
    # closed port on 127.0.0.1, so remote recipients wait in the queue
    # (deferred after the first try); test_remote.py runs a real unbound.
    "dns": {"forward": ["127.0.0.1@9"]},
    # SPF/DKIM/DMARC of received mail (on by default) would only wait on that dead DNS
    # for every message and add trace fields the other suites do not expect;
    # test_auth_checks.py turns them on against a real unbound.
    "auth_checks": {"spf": False, "dkim": False, "arc": False, "dmarc": "off"},
    "limits": {
        "max_message_size": Raw("1m"),
        "max_recipients": 5,
        "max_connections": 50,
        "max_connections_per_ip": 20,
        "max_errors": 5,
        "idle_timeout": Raw("5s"),
        "data_timeout": Raw("5s"),
        "shutdown_grace": Raw("5s"),
    },
}

DEFAULT_USERS = ("alice@example.test", "bob@example.test")


class Tern:
    def __init__(self, overrides=None, users=DEFAULT_USERS, root=None):
        self.bin = tern_bin()
        self.root = root or make_tmpdir()
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(exist_ok=True)
        os.chmod(self.data_dir, 0o755)
        self.config_path = self.root / "tern.conf"
        self.log_path = self.root / "tern.log"
        self.port = free_port()
        cfg = deep_merge(BASE_CONFIG, {
            "data_dir": str(self.data_dir),
            "listen": {"mx": {"address": f"127.0.0.1:{self.port}", "profile": "mx"}},
        })
        if IS_ROOT:
            cfg["user"] = "nobody"
        self.config = deep_merge(cfg, overrides or {})
        self.write_config()
        self.proc = None
        self.clients = []
        for u in users:
            self.user_add(u)

    # --- config / cli
    def write_config(self, config=None):
        if config is not None:
            self.config = config
        # key order: scalars first reads better; not required
        self.config_path.write_text(render_ucl(self.config) + "\n", encoding="utf-8")

    def cli(self, *args, input=None, check=False, timeout=CLI_TIMEOUT):
        r = subprocess.run([self.bin, *args, "-c", str(self.config_path)], input=input,
                           capture_output=True, timeout=timeout,
                           text=True, encoding="utf-8", errors="replace")
        if check:
            assert r.returncode == 0, f"tern {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def user_add(self, address, password="secret-pw"):
        self.cli("user", "add", address, "--password-stdin", input=password + "\n", check=True)

    def queue_list(self):
        return self.cli("queue", "list", check=True).stdout

    # --- process
    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None or self.proc.poll() is not None
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin, "serve", "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tern serve exited with {self.proc.returncode} during start\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    # Connected: the greeting follows, however busy the machine. Waiting for
                    # it here (rather than 2 s, then a new connection) keeps this probe one
                    # connection, as tests that count connections expect.
                    s.settimeout(max(2.0, deadline - time.monotonic()))
                    data = s.recv(512)
                    if data.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        # Read to tern's end of the connection: it frees the session (and
                        # its max_connections_per_ip slot) before closing, so a test that
                        # counts connections from 127.0.0.1 never meets this probe's.
                        s.settimeout(5.0)
                        try:
                            while s.recv(512):
                                pass
                        except OSError:
                            pass
                        return
                    last = data
            except OSError as e:
                last = e
            time.sleep(0.05)
        pytest.fail(f"tern did not greet with 220 within {timeout}s (last: {last!r})\n{self.log_tail()}")

    @property
    def pid(self):
        """The network-facing process (see serving_pid); signals go to self.proc."""
        return serving_pid(self.proc.pid)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM; returns the exit code (kills by PID if it does not exit in time)."""
        for c in self.clients:
            c.close()
        self.clients = []
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self.logf.close()
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return "killed-after-timeout"
        finally:
            self.logf.close()

    def kill9(self):
        kill9_tern(self.proc)
        self.logf.close()

    def client(self, **kw):
        c = Client(self.port, **kw)
        self.clients.append(c)
        return c

    # --- observation
    def log(self):
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "---- tern log tail ----\n" + "\n".join(self.log().splitlines()[-n:])

    def wait_log(self, pattern, timeout=10.0):
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() > deadline:
                pytest.fail(f"no log line matching {pattern!r} within {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def log_lines(self, *needles):
        return [ln for ln in self.log().splitlines() if all(n in ln for n in needles)]

    def maildir(self, address):
        local, domain = address.rsplit("@", 1)
        return self.data_dir / "mail" / domain / local

    def mail_files(self, address=None):
        if address is None:
            base = self.data_dir / "mail"
            if not base.exists():
                return []
            return sorted(p for p in base.glob("*/*/new/*") if p.is_file())
        d = self.maildir(address) / "new"
        return sorted(p for p in d.iterdir() if p.is_file()) if d.exists() else []

    def wait_mail(self, address, predicate=None, count=1, timeout=10.0):
        """Waits until count files in address's new/ satisfy predicate(bytes)."""
        deadline = time.monotonic() + timeout
        while True:
            found = []
            for p in self.mail_files(address):
                try:
                    data = p.read_bytes()
                except FileNotFoundError:
                    continue
                if predicate is None or predicate(data):
                    found.append((p, data))
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"{address}: {len(found)}/{count} matching files in Maildir after "
                            f"{timeout}s; files: {[p.name for p in self.mail_files(address)]}\n"
                            f"{self.log_tail()}")
            time.sleep(0.05)

    def wait_mail_with(self, address, needle, count=1, timeout=10.0):
        if isinstance(needle, str):
            needle = needle.encode("utf-8")
        return self.wait_mail(address, lambda d: needle in d, count, timeout)

    def check_sanitizers(self):
        text = self.log()
        for bad in ("AddressSanitizer", "runtime error", "LeakSanitizer", "UndefinedBehaviorSanitizer"):
            assert bad not in text, f"sanitizer report in tern log:\n{self.log_tail(80)}"

    def cleanup(self, keep=False):
        if not keep and not os.environ.get("TERN_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------
# Fixtures.


def pytest_configure(config):
    config.addinivalue_line("markers", "tern_config(dict): overrides merged into the test config")
    config.addinivalue_line("markers", "tern_users(list): users added before start")
    config.addinivalue_line("markers", "xdist_group(name): run with the other tests of this "
                            "group in one pytest-xdist worker (see SLOW_FIRST)")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# --------------------------------------------------------------------------
# Parallel runs: ctest runs this suite with pytest-xdist (`-n N --dist loadgroup`, see
# CMakeLists.txt). Each test module is one xdist group, so its tests run in one worker, in
# file order, and a module-scoped fixture (unbound, Dovecot, rspamd, a shared tern) starts
# once. A test or module (pytestmark) marked xdist_group("NAME") joins group NAME instead:
# give tests in different files that share something outside their own temp dirs (say an
# npm install into one node_modules) the same name and they never run at the same time.
# Everything else a test uses must be its own: free ports (free_port, start_on_free_port),
# temp dirs (make_tmpdir), processes stopped by PID.
#
# Workers take groups in collection order; the groups below (a file's group is its name) go
# first, longest first (per-file times of serial and 4-worker runs, pytest --junitxml), so
# that none of them starts last and keeps the run going alone. Other groups follow in file
# order. "rspamd": three rspamd starts of 50-90 s each in a loaded 4-worker run.
SLOW_FIRST = (
    "rspamd",
    "e2e",
    "test_fault_nexthop.py",
    "test_smtp_protocol.py",
    "test_sendmail.py",
    "test_remote.py",
    "test_submission.py",
    "test_smuggling.py",
    "test_milter_session.py",
    "test_fault_disk.py",
    "test_api.py",
    "test_pop3.py",
    "test_milter.py",
    "test_tls.py",
    "test_relay_queue.py",
    "test_events.py",
    "test_policy.py",
    "test_outbound_tls.py",
    "test_webui_e2e.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    if not hasattr(config, "workerinput"):  # not an xdist worker: file order, no groups
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}

    def group(item):
        m = item.get_closest_marker("xdist_group")
        return m.args[0] if m.args else m.kwargs.get("name", "default")

    items.sort(key=lambda it: rank.get(group(it), len(rank)))  # stable: file order kept


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    b = tern_bin()
    if not os.access(b, os.X_OK):
        pytest.exit(f"tern binary not found at {b} (set TERN_BIN)", returncode=1)


def start_on_free_port(t, attempts=3):
    """Starts t. free_port() closes the port it found before tern binds it, so
    another process may take it in between; then, when t listens on the port
    this harness chose, choose another (a bounded number of times)."""
    for attempt in range(attempts):
        try:
            return t.start()
        except pytest.fail.Exception:
            mx = t.config.get("listen", {}).get("mx", {})
            ours = mx.get("address") == f"127.0.0.1:{t.port}"
            if (attempt == attempts - 1 or not ours
                    or "Address already in use" not in t.log_tail()):
                raise
            t.port = free_port()
            mx["address"] = f"127.0.0.1:{t.port}"
            t.write_config()
    raise AssertionError("unreachable")


@pytest.fixture
def tern_factory(request):
    """Creates (not started) Tern instances; stops and checks all of them at teardown."""
    made = []

    def make(overrides=None, users=DEFAULT_USERS, start=True):
        t = Tern(overrides, users)
        made.append(t)
        if start:
            start_on_free_port(t)
        return t

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    errors = []
    for t in made:
        rc = t.stop()
        if rc == "killed-after-timeout":
            errors.append(f"tern did not exit within {STOP_TIMEOUT}s of SIGTERM; killed\n"
                          + t.log_tail())
        if failed:
            print(f"\n[tern data kept at {t.root}; exit {rc}]\n{t.log_tail()}")
        try:
            t.check_sanitizers()
        except AssertionError as e:
            errors.append(str(e))
        t.cleanup(keep=failed or bool(errors))
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def tern(request, tern_factory):
    m = request.node.get_closest_marker("tern_config")
    overrides = m.args[0] if m else None
    u = request.node.get_closest_marker("tern_users")
    users = u.args[0] if u else DEFAULT_USERS
    return tern_factory(overrides, users)


@pytest.fixture
def scratch():
    """A 0755 temp dir under /tmp, removed afterwards (unless TERN_KEEP)."""
    d = make_tmpdir()
    yield d
    if not os.environ.get("TERN_KEEP"):
        shutil.rmtree(d, ignore_errors=True)
