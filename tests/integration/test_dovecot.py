"""IMAP through Dovecot on tern's mailboxes and users (issue 10): Debian's Dovecot 2.3,
started as root with the configuration `tern dovecot-config` prints, on loopback ports with
its base and state directories in a temp dir, logs in as users made by `tern user add`,
reads over IMAP what tern delivered and moves it to Junk, sees a delivery while IDLE, and
agrees with tern's POP3 on UIDLs and on the POP3 session lock. Also the operator's one
manual step: the users file opened to Dovecot's group stays so across `tern user add` and
daemon starts."""
import grp
import imaplib
import os
import poplib
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import IS_ROOT, Tern, free_port, make_message, make_tmpdir, tern_bin

PASSWORD = "secret-pw"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

pytestmark = pytest.mark.skipif(
    not IS_ROOT or not os.access(DOVECOT, os.X_OK),
    reason="needs root and Debian's dovecot-imapd/dovecot-pop3d (scripts/install-deps)")


def wait_port(port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Dovecot:
    """Dovecot run in the foreground (-F) from the printed config; stopped by PID."""

    def __init__(self, tern):
        self.dir = make_tmpdir("tern-dovecot-")
        self.imap_port, self.pop3_port = free_port(), free_port()
        self.conf = self.dir / "dovecot.conf"
        self.log = self.dir / "dovecot.log"
        r = tern.cli("dovecot-config", "--listen", "127.0.0.1",
                     "--imap-port", str(self.imap_port), "--pop3-port", str(self.pop3_port),
                     "--base-dir", str(self.dir / "run"), "--state-dir", str(self.dir / "state"),
                     "--log-path", str(self.log))
        assert r.returncode == 0, r.stderr
        self.text = r.stdout
        self.conf.write_text(self.text)
        (self.dir / "state").mkdir()
        self.out = open(self.dir / "stdout", "wb")
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        try:
            wait_port(self.imap_port)
            wait_port(self.pop3_port)
        except AssertionError:
            self.stop()
            raise AssertionError(f"dovecot did not start:\n{self.logtext()}")

    def logtext(self):
        parts = []
        for p in (self.dir / "stdout", self.log):
            try:
                parts.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def env():
    """tern (SMTP + POP3) and Dovecot on the same data directory, users made by `tern user
    add`, the users file opened to Dovecot as the printed config says."""
    t = Tern(users=())
    t.pop3_port = free_port()
    t.config["listen"]["pop3"] = {"address": f"127.0.0.1:{t.pop3_port}", "profile": "pop3"}
    t.write_config()
    users = t.data_dir / "users"
    t.user_add("alice@example.test", PASSWORD)
    # The one manual step (README): open the file to Dovecot's auth process.
    dgid = grp.getgrnam("dovecot").gr_gid
    os.chown(users, -1, dgid)
    os.chmod(users, 0o640)
    for u in ("bob@example.test", "carol@example.test", "dave@example.test"):
        t.user_add(u, PASSWORD)
    t.start()
    d = None
    try:
        d = Dovecot(t)
        yield t, d
    finally:
        if d:
            d.stop()
        t.stop()
        t.check_sanitizers()
        t.cleanup()


def deliver(t, to, subject):
    with t.client() as c:
        c.send_message("sender@example.org", [to], make_message(subject, to=to))
    return t.wait_mail_with(to, subject)[0]


def test_users_file_keeps_dovecot_group_across_user_add_and_start(env):
    """`tern user add` rewrote the file 0600 and the daemon's start gave it to its own
    group: either made Dovecot's passdb unreadable."""
    t, d = env
    dgid = grp.getgrnam("dovecot").gr_gid
    st = os.stat(t.data_dir / "users")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == dgid
    # once the daemon owns the data directory, `tern user add` (as root) hands the file
    # to the daemon's account: the group stays Dovecot's
    assert os.stat(t.data_dir).st_uid != 0
    t.user_add("erin@example.test", PASSWORD)
    st = os.stat(t.data_dir / "users")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == dgid
    m = imaplib.IMAP4("127.0.0.1", d.imap_port, timeout=15)
    m.login("erin@example.test", PASSWORD)
    m.logout()


def test_printed_config_matches_tern_layout(env):
    t, d = env
    text = d.text
    nobody = pwd.getpwnam("nobody")
    assert f"args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={t.data_dir}/mail/%Ld/%Ln" in text
    assert f"args = scheme=CRYPT {t.data_dir}/users" in text
    assert "mail_location = maildir:~" in text
    assert re.search(r"mailbox Junk \{\s+special_use = \\Junk\s+auto = subscribe", text)
    assert "pop3_uidl_format = %f" in text and "pop3_lock_session = yes" in text
    # the same settings Dovecot itself reads back
    r = subprocess.run(["doveconf", "-c", str(d.conf), "-n"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert "pop3_uidl_format = %f" in r.stdout


def test_imap_reads_what_tern_delivered_and_moves_it_to_junk(env):
    t, d = env
    path, data = deliver(t, "alice@example.test", "for imap")
    m = imaplib.IMAP4("127.0.0.1", d.imap_port, timeout=15)
    try:
        m.login("alice@example.test", PASSWORD)
        typ, boxes = m.list()
        assert any(b"\\Junk" in b and b"Junk" in b for b in boxes), boxes
        typ, cnt = m.select("INBOX")
        assert typ == "OK" and int(cnt[0]) == 1
        typ, uids = m.uid("SEARCH", None, "ALL")
        uid = uids[0].split()[0].decode()
        typ, fetched = m.uid("FETCH", uid, "(RFC822)")
        assert fetched[0][1] == data
        typ, _ = m.uid("MOVE", uid, "Junk")
        assert typ == "OK"
        typ, cnt = m.select("Junk")
        assert int(cnt[0]) == 1
        m.logout()
    except Exception:
        print(d.logtext())
        raise
    junk = t.maildir("alice@example.test") / ".Junk" / "cur"
    files = list(junk.iterdir())
    assert len(files) == 1 and files[0].read_bytes() == data
    inbox = t.maildir("alice@example.test")
    assert list((inbox / "new").iterdir()) == [] and list((inbox / "cur").iterdir()) == []


def test_wrong_password_and_unknown_user_refused_by_dovecot(env):
    _, d = env
    m = imaplib.IMAP4("127.0.0.1", d.imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice@example.test", "wrong")
    m.logout()


def test_delivery_while_idle_shows_up(env):
    t, d = env
    m = imaplib.IMAP4("127.0.0.1", d.imap_port, timeout=15)
    m.login("dave@example.test", PASSWORD)
    typ, cnt = m.select("INBOX")
    before = int(cnt[0])
    m.send(b"i1 IDLE\r\n")
    assert m.readline().startswith(b"+ ")
    deliver(t, "dave@example.test", "while idle")
    m.sock.settimeout(15)
    seen = b""
    while b"EXISTS" not in seen:
        line = m.readline()
        assert line, "connection closed while idling"
        seen += line
    assert f"* {before + 1} EXISTS".encode() in seen
    m.send(b"DONE\r\n")
    while not m.readline().startswith(b"i1 OK"):
        pass
    m.logout()


def pop3_uidls(port):
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    p.user("bob@example.test")
    p.pass_(PASSWORD)
    got = {ln.split()[1].decode() for ln in p.uidl()[1]}
    sizes = sorted(int(ln.split()[1]) for ln in p.list()[1])
    p.quit()
    return got, sizes


def test_dovecot_pop3_and_tern_pop3_report_the_same_uidls(env):
    t, d = env
    for i in range(3):
        deliver(t, "bob@example.test", f"uidl {i}")
    ours, our_sizes = pop3_uidls(t.pop3_port)
    theirs, their_sizes = pop3_uidls(d.pop3_port)
    assert len(ours) == 3
    assert ours == theirs and our_sizes == their_sizes
    # and again after Dovecot moved and flagged files in its own way
    m = imaplib.IMAP4("127.0.0.1", d.imap_port, timeout=15)
    m.login("bob@example.test", PASSWORD)
    m.select("INBOX")
    m.store("1:*", "+FLAGS", "(\\Flagged)")
    m.logout()
    assert pop3_uidls(t.pop3_port)[0] == ours


def test_one_pop3_session_across_tern_and_dovecot(env):
    t, d = env
    deliver(t, "carol@example.test", "locked")
    # tern holds the mailbox: Dovecot waits for its lock (10 s) and refuses
    ours = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    ours.user("carol@example.test")
    ours.pass_(PASSWORD)
    theirs = poplib.POP3("127.0.0.1", d.pop3_port, timeout=40)
    theirs.user("carol@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        theirs.pass_(PASSWORD)
    ours.quit()
    # Dovecot holds it: tern refuses at once
    theirs = poplib.POP3("127.0.0.1", d.pop3_port, timeout=15)
    theirs.user("carol@example.test")
    theirs.pass_(PASSWORD)
    ours = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
    ours.user("carol@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        ours.pass_(PASSWORD)
    # a deletion through Dovecot's POP3 is seen by tern's
    assert theirs.dele(1).startswith(b"+OK")
    theirs.quit()
    deadline = time.monotonic() + 10
    while True:
        p = poplib.POP3("127.0.0.1", t.pop3_port, timeout=15)
        p.user("carol@example.test")
        try:
            p.pass_(PASSWORD)
            break
        except poplib.error_proto:
            assert time.monotonic() < deadline
            p.close()
            time.sleep(0.1)
    assert p.stat()[0] == 0
    p.quit()


def test_dovecot_config_refuses_what_cannot_work(tmp_path):
    conf = tmp_path / "t.conf"
    conf.write_text(f'data_dir = "{tmp_path}/data";\nuser = "no-such-account-here";\n')
    r = subprocess.run([tern_bin(), "dovecot-config", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "does not exist here" in r.stderr
    conf.write_text(f'data_dir = "{tmp_path}/data";\nuser = "root";\n')
    r = subprocess.run([tern_bin(), "dovecot-config", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "root" in r.stderr


def test_plus_address_lands_in_a_folder_made_over_imap(env):
    t, d = env
    m = imaplib.IMAP4("127.0.0.1", d.imap_port, timeout=15)
    m.login("dave@example.test", PASSWORD)
    assert m.create("Lists")[0] == "OK"
    with t.client() as c:
        c.send_message("sender@example.org", ["dave+lists@example.test"],
                       make_message("for the list", to="dave+lists@example.test"))
    deadline = time.monotonic() + 10
    while True:
        typ, cnt = m.select("Lists")
        if int(cnt[0]) == 1:
            break
        assert time.monotonic() < deadline, t.log_tail()
        time.sleep(0.1)
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT DELIVERED-TO)])")
    assert b"Subject: for the list" in data[0][1]
    assert b"Delivered-To: dave+lists@example.test" in data[0][1]
    m.logout()
