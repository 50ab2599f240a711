"""`tern sendmail` as applications use it: from a shell as root and as an unprivileged
user (www-data, while the daemon runs as nobody), by its argv[0] names (sendmail, mailq,
newaliases), from real PHP mail() and real git send-email, in -bs mode, with the daemon
down (the maildrop), and the submit socket itself (framing, limits, a slow client)."""

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import time

import pytest

from conftest import CLI_TIMEOUT, IS_ROOT, Raw, split_trace

HOST = "mx.example.test"  # hostname in BASE_CONFIG
WWW = "www-data"

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="runs commands as other users: needs root")


def submit_ready(t, timeout=10.0):
    """Waits until the daemon's latest start opened submit.sock (the SMTP greeting that
    Tern.start waits for can come first)."""
    deadline = time.monotonic() + timeout
    while True:
        log = t.log()
        if log.count("event=starting") <= log.count("event=listening name=submit"):
            return t
        assert time.monotonic() < deadline, "submit.sock not opened\n" + t.log_tail()
        time.sleep(0.02)


@pytest.fixture
def tern(tern):
    return submit_ready(tern)


def uid_of(name):
    return pwd.getpwnam(name).pw_uid


def sendmail(tern, *args, data=b"", user=None, argv0=None, env=None, config=True,
             timeout=CLI_TIMEOUT):
    """Runs `tern sendmail [-C CONFIG] ARGS` (or argv0 ARGS) with data on stdin."""
    cmd = [argv0] if argv0 else [tern.bin, "sendmail"]
    if config:
        cmd += ["-C", str(tern.config_path)]
    cmd += list(args)
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    if isinstance(data, str):
        data = data.encode()
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, env=full_env)


def delivered(tern, address, needle, count=1):
    """The delivered copies holding needle, as (trace headers, rest) with LF line ends."""
    out = []
    for _, data in tern.wait_mail_with(address, needle, count=count):
        nl, trace, rest = split_trace(data)
        out.append((trace, rest.replace(b"\r\n", b"\n").decode("utf-8", "replace")))
    return out


def headers(rest):
    return rest.split("\n\n", 1)[0]


def queued_id(tern, needle):
    m = tern.wait_log(r"event=queued id=([0-9A-Z]{16}) source=(sendmail|maildrop) " + needle)
    return m.group(1)


# --------------------------------------------------------------------------- basics


def test_t_as_root_delivers_with_envelope_received_and_added_headers(tern):
    r = sendmail(tern, "-t", data="To: alice@example.test\nSubject: cron says hi\n\nline one\nline two\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    (trace, rest), = delivered(tern, "alice@example.test", "cron says hi")
    assert trace[0] == f"Return-Path: <root@{HOST}>"
    qid = queued_id(tern, r"uid=0 user=root")
    assert re.fullmatch(
        rf"Received: from local user \(uid 0\) by {HOST} \(tern\) with local id {qid} "
        r"for <alice@example\.test>; .+", trace[2]), trace[2]
    h = headers(rest)
    # From, Date and Message-ID are added when the application left them out.
    assert f'From: "root" <root@{HOST}>' in h
    assert re.search(r"^Date: \w{3}, \d\d \w{3} \d{4} ", h, re.M)
    assert re.search(rf"^Message-ID: <\d{{14}}\.{qid}@{re.escape(HOST)}>$", h, re.M)
    assert rest.endswith("\n\nline one\nline two\n")


def test_line_ends_become_crlf_in_the_spool(tern):
    r = sendmail(tern, "alice@example.test", data=b"Subject: bare lf\n\na\nb\rc\r\n")
    assert r.returncode == 0, r.stderr
    (_, data), = tern.wait_mail_with("alice@example.test", "bare lf")
    nl, _, rest = split_trace(data)
    # Whatever style the Maildir writer uses, every line of the message ended one way.
    body = rest.split(nl + nl, 1)[1]
    assert body == nl.join([b"a", b"b", b"c", b""])
    assert b"\r" not in rest.replace(b"\r\n", b"") and b"\n" not in rest.replace(nl, b"")


def test_unprivileged_user_submits_as_itself(tern):
    r = sendmail(tern, "-t", user=WWW, data="To: Alice <alice@example.test>\nSubject: from the web\n\nhi\n")
    assert r.returncode == 0, r.stderr
    (trace, rest), = delivered(tern, "alice@example.test", "from the web")
    assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"
    assert f"Received: from local user (uid {uid_of(WWW)}) by {HOST} (tern)" in trace[2]
    assert f"<{WWW}@{HOST}>" in headers(rest)
    queued_id(tern, rf"uid={uid_of(WWW)} user={WWW} from=<{WWW}@{HOST}>")


def test_recipients_on_the_command_line(tern):
    r = sendmail(tern, "alice@example.test", "Bob <bob@example.test>, team", user=WWW,
                 data="Subject: to three\n\nx\n")
    assert r.returncode == 0, r.stderr
    # "team" (no domain) is a local name: team@example.test, an alias of alice and bob.
    delivered(tern, "alice@example.test", "to three")
    delivered(tern, "bob@example.test", "to three")
    assert len(tern.mail_files("alice@example.test")) == 1  # named twice, delivered once


def test_t_adds_header_recipients_and_removes_bcc(tern):
    msg = ("From: App <app@example.test>\nTo: alice@example.test\nCc: \nBcc: bob@example.test,\n"
           "  carol@elsewhere.example\nSubject: hidden copies\n\nbody\n")
    r = sendmail(tern, "-t", data=msg)
    assert r.returncode == 0, r.stderr
    for who in ("alice@example.test", "bob@example.test"):
        (_, rest), = delivered(tern, who, "hidden copies")
        h = headers(rest)
        assert "Bcc" not in h and "carol" not in h and "bob@" not in h, h
        assert "From: App <app@example.test>" in h  # the application's From is kept
        assert h.count("From:") == 1
    tern.wait_log(r"event=queued .* nrcpt=3 .*bcc_removed=yes")
    # carol is remote: local submission may relay, it waits in the queue.
    assert "carol@elsewhere.example" in tern.queue_list()


def test_remote_recipient_from_unprivileged_user_is_queued(tern):
    r = sendmail(tern, "someone@remote.example", user=WWW, data="Subject: out\n\nx\n")
    assert r.returncode == 0, r.stderr
    ql = tern.queue_list()
    assert f"from=<{WWW}@{HOST}>" in ql and "someone@remote.example" in ql


# --------------------------------------------------------------------------- -f and -F


def test_f_honoured_for_root(tern):
    r = sendmail(tern, "-f", "billing@example.org", "alice@example.test", data="Subject: f root\n\nx\n")
    assert r.returncode == 0, r.stderr
    (trace, rest), = delivered(tern, "alice@example.test", "f root")
    assert trace[0] == "Return-Path: <billing@example.org>"
    assert "From: \"root\" <billing@example.org>" in headers(rest)


def test_f_null_sender_for_root(tern):
    r = sendmail(tern, "-f", "<>", "alice@example.test", data="Subject: null sender\n\nx\n")
    assert r.returncode == 0, r.stderr
    (trace, _), = delivered(tern, "alice@example.test", "null sender")
    assert trace[0] == "Return-Path: <>"


def test_f_ignored_for_another_user_with_a_log_line(tern):
    r = sendmail(tern, "-f", "ceo@example.org", "alice@example.test", user=WWW,
                 data="Subject: spoof attempt\n\nx\n")
    assert r.returncode == 0, r.stderr
    (trace, _), = delivered(tern, "alice@example.test", "spoof attempt")
    assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"
    tern.wait_log(rf"event=sender_ignored source=sendmail uid={uid_of(WWW)} user={WWW} "
                  rf"requested=ceo@example\.org used=<{WWW}@{HOST}>")


def test_f_own_address_allowed_for_a_user(tern):
    # The user's login at a local domain, and a bare login (qualified with the hostname).
    r = sendmail(tern, "-f", f"{WWW}@example.test", "alice@example.test", user=WWW,
                 data="Subject: own addr\n\nx\n")
    assert r.returncode == 0, r.stderr
    (trace, _), = delivered(tern, "alice@example.test", "own addr")
    assert trace[0] == f"Return-Path: <{WWW}@example.test>"
    r = sendmail(tern, "-f", WWW, "alice@example.test", user=WWW, data="Subject: bare login\n\nx\n")
    assert r.returncode == 0, r.stderr
    (trace, _), = delivered(tern, "alice@example.test", "bare login")
    assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"
    assert "event=sender_ignored" not in tern.log()


def test_f_any_address_for_the_daemon_user(tern):
    r = sendmail(tern, "-f", "robot@example.org", "alice@example.test", user="nobody",
                 data="Subject: daemon user\n\nx\n")
    assert r.returncode == 0, r.stderr
    (trace, _), = delivered(tern, "alice@example.test", "daemon user")
    assert trace[0] == "Return-Path: <robot@example.org>"


def test_F_sets_the_name_of_a_generated_from(tern):
    r = sendmail(tern, "-F", 'Web "Shop"', "alice@example.test", user=WWW, data="Subject: named\n\nx\n")
    assert r.returncode == 0, r.stderr
    (_, rest), = delivered(tern, "alice@example.test", "named")
    assert f'From: "Web \\"Shop\\"" <{WWW}@{HOST}>' in headers(rest)
    r = sendmail(tern, "-FJosé Ñandú", "alice@example.test", data="Subject: utf8 name\n\nx\n")
    assert r.returncode == 0, r.stderr
    (_, rest), = delivered(tern, "alice@example.test", "utf8 name")
    m = re.search(r"^From: (=\?UTF-8\?B\?[A-Za-z0-9+/=]+\?=) <root@", headers(rest), re.M)
    assert m, headers(rest)
    import email.header
    assert str(email.header.make_header(email.header.decode_header(m.group(1)))) == "José Ñandú"


def test_F_does_not_replace_the_messages_from(tern):
    r = sendmail(tern, "-F", "Ignored", "alice@example.test",
                 data="From: Real <real@example.test>\nSubject: has from\n\nx\n")
    assert r.returncode == 0, r.stderr
    (_, rest), = delivered(tern, "alice@example.test", "has from")
    assert "Ignored" not in rest and "From: Real <real@example.test>" in rest


# --------------------------------------------------------------------------- the lone dot


def test_lone_dot_ends_input_without_i(tern):
    r = sendmail(tern, "alice@example.test", data="Subject: dot ends\n\nbefore\n.\nafter\n")
    assert r.returncode == 0, r.stderr
    (_, rest), = delivered(tern, "alice@example.test", "dot ends")
    assert rest.endswith("\n\nbefore\n") and "after" not in rest


def test_lone_dot_is_data_with_i_and_oi(tern):
    for flag, subject in (("-i", "dot data i"), ("-oi", "dot data oi")):
        r = sendmail(tern, flag, "alice@example.test",
                     data=f"Subject: {subject}\n\nbefore\n.\n..\nafter\n.")
        assert r.returncode == 0, r.stderr
        (_, rest), = delivered(tern, "alice@example.test", subject)
        # No dot-stuffing applies: the lines arrive exactly as written.
        assert rest.endswith("\n\nbefore\n.\n..\nafter\n.\n"), rest


# --------------------------------------------------------------------------- names


@pytest.fixture
def links(scratch, tern):
    """sendmail, mailq and newaliases as symlinks to the tern binary."""
    d = scratch / "bin"
    d.mkdir()
    os.chmod(d, 0o755)
    for name in ("sendmail", "mailq", "newaliases"):
        (d / name).symlink_to(os.path.abspath(tern.bin))
    return d


def test_invoked_as_sendmail_by_symlink(tern, links):
    r = sendmail(tern, "-t", "-i", argv0=str(links / "sendmail"), config=False,
                 env={"TERN_CONFIG": str(tern.config_path)},
                 data="To: alice@example.test\nSubject: via symlink\n\nx\n")
    assert r.returncode == 0, r.stderr
    delivered(tern, "alice@example.test", "via symlink")


def test_mailq_and_bp_show_the_queue(tern, links):
    r = sendmail(tern, "someone@remote.example", data="Subject: for mailq\n\nx\n")
    assert r.returncode == 0, r.stderr
    qid = queued_id(tern, "uid=0")
    r = subprocess.run([str(links / "mailq"), "-C", str(tern.config_path)], capture_output=True,
                       text=True, timeout=CLI_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert qid in r.stdout and "someone@remote.example" in r.stdout
    r = sendmail(tern, "-bp")
    assert r.returncode == 0 and qid.encode() in r.stdout


def test_newaliases_says_what_to_do(tern, links):
    r = subprocess.run([str(links / "newaliases")], capture_output=True, text=True,
                       timeout=CLI_TIMEOUT)
    assert r.returncode == 0
    assert "aliases" in r.stdout and "SIGHUP" in r.stdout


# --------------------------------------------------------------------------- real applications


@pytest.mark.skipif(shutil.which("php") is None, reason="php-cli not installed (scripts/install-deps)")
def test_php_mail_function(tern, links):
    env = {"TERN_CONFIG": str(tern.config_path)}
    script = ('$ok = mail("alice@example.test", "php subject", "Hello from PHP\\n.\\nstill here",'
              ' "From: Shop <shop@example.test>\\r\\nBcc: bob@example.test");'
              ' exit($ok ? 0 : 3);')
    r = subprocess.run(["runuser", "-u", WWW, "--", "php", "-n", "-d",
                        f"sendmail_path={links / 'sendmail'} -t -i", "-r", script],
                       capture_output=True, text=True, timeout=CLI_TIMEOUT,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stdout + r.stderr
    for who in ("alice@example.test", "bob@example.test"):
        (trace, rest), = delivered(tern, who, "php subject")
        assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"
        assert "Bcc" not in headers(rest)
        assert rest.endswith("\n\nHello from PHP\n.\nstill here\n")


def have_git_send_email():
    r = subprocess.run(["git", "send-email", "-h"], capture_output=True)
    return b"not a git command" not in r.stderr


@pytest.mark.skipif(not have_git_send_email(), reason="git send-email not installed "
                    "(scripts/install-deps: git-email)")
def test_git_send_email(tern, links, scratch):
    repo = scratch / "repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.test",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.test",
           "TERN_CONFIG": str(tern.config_path), "HOME": str(scratch)}
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,
                                    env=env, timeout=CLI_TIMEOUT, check=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "f.txt").write_text("one\n.\ntwo\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "a patch by mail")
    patch = git("format-patch", "-1", "-o", str(scratch)).stdout.strip()
    # git runs: sendmail -i -f <envelope sender> alice@example.test
    r = subprocess.run(["git", "send-email", "--confirm=never", "--quiet", "--suppress-cc=all",
                        f"--smtp-server={links / 'sendmail'}",
                        "--envelope-sender=dev@example.test",
                        "--to=alice@example.test", patch],
                       capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    (trace, rest), = delivered(tern, "alice@example.test", "a patch by mail")
    # root may choose the envelope sender; the patch's lone dot survives (-i).
    assert trace[0] == "Return-Path: <dev@example.test>"
    assert "\n+.\n" in rest


def test_git_send_email_style_arguments(tern):
    r = sendmail(tern, "-i", "-f", "dev@example.test", "--", "alice@example.test", user=WWW,
                 data="From: Dev <dev@example.test>\nSubject: [PATCH] style\n\n.\n")
    assert r.returncode == 0, r.stderr
    (trace, rest), = delivered(tern, "alice@example.test", "[PATCH] style")
    assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"  # not its own address: ignored
    assert rest.endswith("\n\n.\n")


# --------------------------------------------------------------------------- -bs


def test_bs_speaks_smtp_on_stdin_and_stdout(tern):
    session = ("EHLO app.example\r\nMAIL FROM:<root@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
               "RCPT TO:<nosuch@example.test>\r\nDATA\r\nSubject: over bs\r\n\r\n..dotted\r\n.\r\n"
               "MAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: second bs\r\n\r\nb\r\n.\r\n"
               "QUIT\r\n")
    r = sendmail(tern, "-bs", user=WWW, data=session)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split("\r\n")
    assert lines[0].startswith("220 ")
    codes = [ln[:3] for ln in lines if re.match(r"^\d{3} ", ln)]
    # greeting, EHLO, MAIL, RCPT, RCPT, DATA 354, end: refused (nosuch), MAIL, RCPT, 354, 250, QUIT
    assert codes == ["220", "250", "250", "250", "250", "354", "550", "250", "250", "354",
                     "250", "221"], lines
    assert "no such user" in r.stdout.decode()
    (trace, rest), = delivered(tern, "bob@example.test", "second bs")
    assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"  # MAIL FROM follows the -f rule
    assert not tern.mail_files("alice@example.test")


def test_bs_dot_unstuffing_and_queue_id(tern):
    session = ("HELO x\r\nMAIL FROM:<root@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
               "Subject: stuffed\r\n\r\n..one\r\n.\r\nQUIT\r\n")
    r = sendmail(tern, "-bs", data=session)
    assert r.returncode == 0, r.stderr
    m = re.search(rb"250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", r.stdout)
    assert m, r.stdout
    (_, rest), = delivered(tern, "alice@example.test", "stuffed")
    assert rest.endswith("\n\n.one\n")
    assert f"event=queued id={m.group(1).decode()} source=sendmail uid=0" in tern.log()


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("args", [
    [],                      # no recipient, no -t
    ["-i"],
    ["-Q", "alice@example.test"],
    ["-bs", "-t"],
    ["-bp", "alice@example.test"],
    ["-f"],
    ["-B", "BINARYMIME", "alice@example.test"],
    ["-bd"],
])
def test_bad_usage_exits_64(tern, args):
    r = sendmail(tern, *args, data="Subject: x\n\nx\n")
    assert r.returncode == 64, (args, r.stderr)
    assert b"usage:" in r.stderr


def test_unknown_local_user_exits_67_and_nothing_is_sent(tern):
    r = sendmail(tern, "alice@example.test", "nosuch@example.test", data="Subject: half\n\nx\n")
    assert r.returncode == 67, r.stderr
    assert b"<nosuch@example.test>: no such user here" in r.stderr
    tern.wait_log(r"event=rejected source=sendmail uid=0 user=root code=67")
    assert not tern.mail_files("alice@example.test")


def test_t_without_recipient_headers_exits_64(tern):
    r = sendmail(tern, "-t", data="Subject: nobody\n\nx\n")
    assert r.returncode == 64, r.stderr
    assert b"no recipients" in r.stderr


def test_bad_address_exits_65(tern):
    r = sendmail(tern, "-t", data="To: a@b c@d\nSubject: bad\n\nx\n")
    assert r.returncode == 65, r.stderr
    r = sendmail(tern, "alice@example.test", data=b"Subject: nul\n\na\0b\n")
    assert r.returncode == 65 and b"NUL" in r.stderr


def test_huge_message_exits_69_with_a_clear_error(tern):
    big = b"Subject: huge\n\n" + (b"x" * 999 + b"\n") * 1100  # > 1m (limits.max_message_size)
    r = sendmail(tern, "alice@example.test", data=big)
    assert r.returncode == 69, r.stderr
    assert b"message too big" in r.stderr and b"1048576" in r.stderr
    # The daemon refuses it too, whatever the client believed the limit was.
    reply = raw_submit(tern, b"TERN-SUBMIT 1\nRCPT alice@example.test\nDATA 2000000\n")
    assert reply.startswith(b"ERR 69 message too big"), reply
    assert not tern.mail_files("alice@example.test")


def test_lf_to_crlf_growth_counts_against_the_limit(tern_factory):
    t = submit_ready(tern_factory({"limits": {"max_message_size": 2000}}))
    r = sendmail(t, "alice@example.test", data=b"\n" * 1500)  # 1500 bytes, 3000 with CRs
    assert r.returncode == 69, r.stderr


def test_what_follows_the_lone_dot_does_not_count_against_the_limit(tern_factory):
    t = submit_ready(tern_factory({"limits": {"max_message_size": 2000}}))
    r = sendmail(t, "alice@example.test", data=b"Subject: small\n\nx\n.\n" + b"y" * 100000)
    assert r.returncode == 0, r.stderr
    (_, rest), = delivered(t, "alice@example.test", "small")
    assert rest.endswith("\n\nx\n")


def test_empty_input_is_a_message_with_our_headers(tern):
    r = sendmail(tern, "alice@example.test", data=b"")
    assert r.returncode == 0, r.stderr
    (_, rest), = delivered(tern, "alice@example.test", "Message-ID:")
    assert re.match(r'From: "root" <root@mx\.example\.test>\nDate: .+\nMessage-ID: <.+>\n$', rest), rest


# --------------------------------------------------------------------------- daemon down


def test_daemon_down_maildrop_then_delivery_after_start(tern):
    tern.stop()
    r = sendmail(tern, "-t", user=WWW, data="To: alice@example.test\nSubject: while down\n\nx\n")
    assert r.returncode == 0, r.stderr
    drop = tern.data_dir / "maildrop"
    files = [p for p in drop.iterdir()]
    assert len(files) == 1 and files[0].name.startswith("m."), files
    st = files[0].stat()
    assert st.st_uid == uid_of(WWW) and stat.S_IMODE(st.st_mode) == 0o644
    assert not tern.mail_files("alice@example.test")
    tern.start()
    (trace, _), = delivered(tern, "alice@example.test", "while down")
    assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"
    assert f"Received: from local user (uid {uid_of(WWW)})" in trace[2]
    tern.wait_log(rf"event=queued id=\w+ source=maildrop uid={uid_of(WWW)} user={WWW}")
    deadline = time.monotonic() + 10
    while list(drop.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(drop.iterdir()) == []


def test_daemon_never_started_exits_75(tern_factory):
    t = tern_factory(start=False)
    r = sendmail(t, "alice@example.test", data="Subject: lost?\n\nx\n")
    assert r.returncode == 75, r.stderr
    assert b"not running" in r.stderr and b"maildrop" in r.stderr


def test_maildrop_file_cannot_claim_another_sender(tern):
    """A user writes a request by hand into the maildrop: the owner is the sender."""
    tern.stop()
    req = (b"TERN-SUBMIT 1\nFROM root@example.test\nRCPT alice@example.test\nDATA 26\n"
           b"Subject: forged maildrop\n\nEND\n")
    path = tern.data_dir / "maildrop" / "m.handmade"
    subprocess.run(["runuser", "-u", WWW, "--", "sh", "-c", f"cat > {path}"], input=req,
                   check=True, timeout=CLI_TIMEOUT)
    # Hostile entries next to it: a symlink and garbage; both are set aside.
    os.symlink("/etc/passwd", tern.data_dir / "maildrop" / "m.link")
    (tern.data_dir / "maildrop" / "m.garbage").write_bytes(b"HELLO\n")
    tern.start()
    (trace, _), = delivered(tern, "alice@example.test", "forged maildrop")
    assert trace[0] == f"Return-Path: <{WWW}@{HOST}>"
    tern.wait_log(r"event=sender_ignored source=maildrop")
    tern.wait_log(r"event=maildrop_quarantined file=\S+/bad\.m\.link")
    tern.wait_log(r"event=maildrop_quarantined file=\S+/bad\.m\.garbage")


def test_maildrop_unknown_recipient_bounces_to_the_sender(tern):
    tern.stop()
    r = sendmail(tern, "-f", "alice@example.test", "bob@example.test", "ghost@example.test",
                 data="Subject: partly lost\n\nx\n")
    assert r.returncode == 0, r.stderr
    tern.start()
    delivered(tern, "bob@example.test", "partly lost")
    (_, dsn), = delivered(tern, "alice@example.test", "ghost@example.test")
    assert "Final-Recipient: rfc822; ghost@example.test" in dsn
    assert "Status: 5.1.1" in dsn


# --------------------------------------------------------------------------- the socket


def raw_submit(tern, request, half_close=True):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(tern.data_dir / "submit.sock"))
        try:
            s.sendall(request)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_socket_modes(tern):
    mode = lambda p: stat.S_IMODE(os.lstat(tern.data_dir / p).st_mode)
    assert mode("submit.sock") == 0o666
    assert mode("control.sock") & 0o077 == 0  # queue control stays private
    assert mode("maildrop") == 0o1733
    assert mode(".") & 0o001  # others may search the data dir, not list it


def test_socket_refuses_bad_requests_and_lives_on(tern):
    assert raw_submit(tern, b"HELO there\n").startswith(b"ERR 76 bad request")
    assert raw_submit(tern, b"TERN-SUBMIT 1\nRCPT a@b\nDATA 3\nabcXXXX\n").startswith(b"ERR 76")
    assert raw_submit(tern, b"TERN-SUBMIT 1\nRCPT alice@example.test\nDATA 2\nabEND\nmore").startswith(
        b"ERR 76 bad request: bytes after END")
    # an incomplete request: the client gave up, nothing is queued
    raw_submit(tern, b"TERN-SUBMIT 1\nRCPT alice@example.test\nDATA 100\nshort")
    good = raw_submit(tern, b"TERN-SUBMIT 1\nRCPT alice@example.test\nDATA 21\nSubject: raw socket\n\nEND\n")
    assert re.fullmatch(rb"OK [0-9A-Z]{16}\n", good), good
    delivered(tern, "alice@example.test", "raw socket")


def test_slow_submitter_stalls_neither_queue_control_nor_other_submitters(tern_factory):
    # A long data_timeout keeps the slow request pending for the whole test: the other
    # commands must complete while it is half sent, and it still completes afterwards.
    t = submit_ready(tern_factory({"limits": {"data_timeout": Raw("10min")}}))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(CLI_TIMEOUT)
        slow.connect(str(t.data_dir / "submit.sock"))
        slow.sendall(b"TERN-SUBMIT 1\nRCPT alice@example.test\nDATA 22\nSubject: ")
        r = t.cli("queue", "list")
        assert r.returncode == 0, r.stderr
        r = sendmail(t, "alice@example.test", data="Subject: not stalled\n\nx\n")
        assert r.returncode == 0, r.stderr
        delivered(t, "alice@example.test", "not stalled")
        slow.sendall(b"slow client\n\nEND\n")
        slow.shutdown(socket.SHUT_WR)
        assert re.fullmatch(rb"OK [0-9A-Z]{16}\n", slow.recv(4096))
    delivered(t, "alice@example.test", "slow client")
