"""The operator's toolbox: every command's --help and usage errors in one style,
--version, what check-config catches before serve would, --changed, the reload
that needs a restart, and `tern log trace` over the log of a real run."""

import re
import signal
import subprocess

import pytest

from conftest import CLI_TIMEOUT, IS_ROOT, Tern, deep_merge, make_message, tern_bin


def run(*args, input=None, cwd=None):
    return subprocess.run([tern_bin(), *args], input=input, capture_output=True, text=True,
                          timeout=15, cwd=cwd, encoding="utf-8", errors="replace")


def listed_commands():
    """The commands `tern --help` lists: a command added later is tested too."""
    out = run("--help").stdout
    section = out.split("Commands:", 1)[1]
    names = re.findall(r"^  ([a-z][a-z-]+)", section, re.M)
    assert {"serve", "capture", "check-config", "user", "queue", "log"} <= set(names), out
    return [n for n in names if n not in ("sendmail", "version")]


# Every subcommand and sub-subcommand an operator may ask about.
SUBCOMMANDS = [("user", "add"), ("user", "passwd"), ("user", "del"), ("user", "list"),
               ("queue", "list"), ("queue", "show"), ("queue", "flush"), ("queue", "delete"),
               ("queue", "hold"), ("queue", "release"), ("queue", "damaged"), ("log", "trace")]


# ---------------------------------------------------------------- --help


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("help",)])
def test_top_level_help_is_stdout_exit_0(args):
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: tern "), r.stdout
    assert r.stderr == ""


def test_every_listed_command_answers_help():
    for cmd in listed_commands():
        for args in ((cmd, "--help"), (cmd, "-h"), ("help", cmd)):
            r = run(*args)
            assert r.returncode == 0, (args, r.stderr)
            assert r.stdout.startswith(f"usage: tern {cmd}"), (args, r.stdout)
            assert r.stderr == "", (args, r.stderr)


@pytest.mark.parametrize("cmd,sub", SUBCOMMANDS)
def test_every_subcommand_answers_help(cmd, sub):
    # --help wins over whatever else is on the line: nothing runs, nothing is asked
    r = run(cmd, sub, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: tern {cmd}"), r.stdout
    assert re.search(rf"^  {sub}\b|tern {cmd} ([a-z|]*\|)?{sub}\b", r.stdout, re.M), r.stdout
    assert r.stderr == ""


def test_help_does_not_start_the_daemon(scratch):
    # serve --help must print and exit, not bind ports or create a data dir
    d = scratch
    r = run("serve", "--help", cwd=d)
    assert r.returncode == 0
    assert "SIGHUP" in r.stdout
    assert not (d / "tern-data").exists()


def test_sendmail_keeps_its_own_convention():
    # sendmail(1) has no --help: an unknown option is EX_USAGE (64) as in Postfix;
    # its summary is under `tern help sendmail`
    r = run("sendmail", "--help")
    assert r.returncode == 64
    r = run("help", "sendmail")
    assert r.returncode == 0 and r.stdout.startswith("usage: tern sendmail"), r.stdout


# ---------------------------------------------------------------- --version


@pytest.mark.parametrize("args", [("-V",), ("--version",), ("version",)])
def test_version(args):
    r = run(*args)
    assert r.returncode == 0
    assert re.fullmatch(r"tern \d+\.\d+\.\d+\n", r.stdout), r.stdout


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [
    (), ("frobnicate",), ("serve", "extra"), ("serve", "-c"), ("capture", "--bogus"),
    ("capture", "--smtp"), ("check-config", "--nope"), ("user",), ("user", "frob", "a@b"),
    ("user", "add"), ("user", "list", "extra"), ("queue",), ("queue", "show"),
    ("queue", "nuke"), ("log",), ("log", "trace"), ("log", "grep", "x"),
    ("log", "trace", "a", "b", "c"), ("help", "nothing"),
])
def test_usage_error_is_stderr_exit_2(args):
    r = run(*args)
    assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", (args, r.stdout)
    assert "usage: tern" in r.stderr, (args, r.stderr)
    assert "--help" in r.stderr


# ---------------------------------------------------------------- check-config


@pytest.fixture
def offline():
    t = Tern(users=())
    yield t
    t.cleanup()


def check(t, overrides, *extra):
    t.write_config(deep_merge(t.config, overrides))
    return t.cli("check-config", *extra)


def test_check_config_clean_config_exits_0(offline):
    r = offline.cli("check-config")
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr


def test_check_config_names_a_missing_certificate(offline):
    r = check(offline, {"tls": {"cert_file": str(offline.root / "nope.pem"),
                                "key_file": str(offline.root / "nope.key")}})
    assert r.returncode == 1
    assert "nope.pem" in r.stderr and "No such file" in r.stderr, r.stderr


def test_check_config_names_a_missing_key(offline):
    cert, key = offline.root / "cert.pem", offline.root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=mx.example.test"],
                   check=True, capture_output=True)
    r = check(offline, {"tls": {"cert_file": str(cert), "key_file": str(key)}})
    assert r.returncode == 0, r.stderr
    r = check(offline, {"tls": {"cert_file": str(cert), "key_file": str(offline.root / "gone.key")}})
    assert r.returncode == 1
    assert "gone.key" in r.stderr, r.stderr
    # a key that is not the certificate's
    other = offline.root / "other.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", str(other)], check=True,
                   capture_output=True)
    r = check(offline, {"tls": {"cert_file": str(cert), "key_file": str(other)}})
    assert r.returncode == 1
    assert "other.key" in r.stderr, r.stderr


def test_check_config_names_an_unreadable_key(offline):
    key = offline.root / "key.pem"
    key.write_text("secret")
    key.chmod(0)
    offline.write_config(deep_merge(offline.config, {"tls": {"cert_file": str(key),
                                                             "key_file": str(key)}}))
    # root reads any file (and serve's parent reads keys as root): an operator who is not
    # root runs the check, so as root run it as nobody (setpriv, util-linux)
    as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if IS_ROOT else []
    r = subprocess.run([*as_user, offline.bin, "check-config", "-c", str(offline.config_path)],
                       capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert r.returncode == 1
    assert "key.pem" in r.stderr and "Permission denied" in r.stderr, r.stderr


def test_check_config_user_that_does_not_exist(offline):
    r = check(offline, {"user": "no-such-account-here"})
    assert "no-such-account-here" in r.stderr and "does not exist" in r.stderr, r.stderr
    # as root serve would refuse to start: an error; otherwise a warning
    assert r.returncode == (1 if IS_ROOT else 0)


def test_check_config_data_dir_not_writable(offline):
    closed = offline.root / "closed"
    closed.mkdir()
    closed.chmod(0o700 if IS_ROOT else 0o500)
    r = check(offline, {"data_dir": str(closed / "data")})
    closed.chmod(0o755)
    assert r.returncode == 1, r.stderr
    assert str(closed / "data") in r.stderr, r.stderr
    # serve agrees that this does not work
    if IS_ROOT:
        assert "nobody" in r.stderr


def test_check_config_data_dir_is_a_file(offline):
    f = offline.root / "afile"
    f.write_text("x")
    r = check(offline, {"data_dir": str(f)})
    assert r.returncode == 1
    assert "not a directory" in r.stderr, r.stderr


@pytest.mark.parametrize("net", ["0.0.0.0/0", "::/0", "10.0.0.0/7", "128.0.0.0/1"])
def test_check_config_open_relay_is_a_loud_warning(offline, net):
    r = check(offline, {"relay": {"networks": ["127.0.0.0/8", net]}})
    assert r.returncode == 0  # legal, but loud
    lines = [ln for ln in r.stderr.splitlines() if "relay.networks" in ln]
    assert len(lines) == 1, r.stderr
    assert "warning" in lines[0] and "OPEN RELAY" in lines[0] and net in lines[0]


def test_check_config_narrow_relay_is_quiet(offline):
    r = check(offline, {"relay": {"networks": ["10.0.0.0/8", "192.0.2.0/24", "::1/128"]}})
    assert r.returncode == 0
    assert "relay.networks" not in r.stderr


def test_serve_logs_the_open_relay_warning(tern_factory):
    t = tern_factory({"relay": {"networks": ["0.0.0.0/0"]}})
    t.wait_log(r"event=config_warning key=relay\.networks detail=\"OPEN RELAY")


def test_check_config_changed_prints_only_what_differs(offline):
    r = offline.cli("check-config", "--changed")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # what the harness config sets
    assert "mx.example.test" in out
    assert re.search(r"max_recipients = 5;", out)
    assert "127.0.0.2/32" in out
    # what it leaves at the default is not there
    for key in ("max_line_length", "max_received_headers", "retry_base", "greylist",
                "http_max_body", "vrfy", "expn"):
        assert key not in out, f"{key} printed although at its default:\n{out}"
    # and every key printed is one the full output has with that same value
    full = offline.cli("check-config", check=True).stdout
    for ln in out.splitlines():
        if "=" in ln:
            assert ln in full.splitlines(), ln


def test_check_config_changed_of_the_embedded_default_is_its_listeners_and_tls(scratch):
    # The embedded default is an empty file plus the submission and POP3 listeners
    # with TLS and the self-signed certificate (DESIGN §1; docs/config.md).
    r = run("check-config", "--changed", cwd=scratch)
    assert r.returncode == 0, r.stderr
    top = [ln for ln in r.stdout.splitlines() if ln and not ln[0].isspace() and ln != "}"]
    assert top == ["listen {", "tls {"], r.stdout
    assert "\tself_signed = true;" in r.stdout
    for name in ("submission", "submissions", "pop3s"):
        assert f'\t"{name}" {{' in r.stdout, r.stdout


# ---------------------------------------------------------------- reload


def test_reload_with_a_new_listener_says_restart(tern_factory):
    t = tern_factory()
    cfg = deep_merge(t.config, {"listen": {"extra": {"address": "127.0.0.1:1",
                                                     "profile": "mx"}}})
    t.write_config(cfg)
    t.signal(signal.SIGHUP)
    m = t.wait_log(r"event=reload_needs_restart .*")
    assert "+extra=127.0.0.1:1" in m.group(0), m.group(0)
    assert "restart" in m.group(0)
    # the rest of the reload applied; the daemon keeps serving
    assert t.proc.poll() is None
    with t.client() as c:
        c.ehlo()


def test_reload_without_listener_change_says_reloaded(tern_factory):
    t = tern_factory()
    t.signal(signal.SIGHUP)
    t.wait_log(r"event=reloaded ")
    assert "reload_needs_restart" not in t.log()


# ---------------------------------------------------------------- log trace


def test_queued_line_carries_message_id_and_log_trace_follows_it(tern_factory):
    t = tern_factory()
    with t.client() as c:
        c.send_message("a@example.org", ["alice@example.test"], make_message("trace one"))
        c.send_message("a@example.org", ["bob@example.test"], make_message("trace two"))
    t.wait_mail_with("alice@example.test", "trace one")
    t.wait_mail_with("bob@example.test", "trace two")
    m = t.wait_log(r"event=queued id=(\S+) .* msgid=<trace-one@example\.org>")
    qid = m.group(1)
    t.wait_log(rf"event=delivered id={qid} ")
    t.stop()
    log = str(t.log_path)

    # by queue id, from a file
    r = run("log", "trace", qid, log)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any("event=queued" in ln for ln in lines)
    assert any("event=delivered" in ln for ln in lines)
    assert all(re.search(rf"(^| )id={re.escape(qid)}( |$)", ln) for ln in lines), lines
    assert "trace-two" not in r.stdout

    # by Message-ID, with or without brackets, from stdin: the same lines
    text = t.log_path.read_text()
    for mid in ("<trace-one@example.org>", "trace-one@example.org"):
        r2 = run("log", "trace", mid, input=text)
        assert r2.returncode == 0, r2.stderr
        assert r2.stdout == r.stdout
        r3 = run("log", "trace", mid, "-", input=text)
        assert r3.stdout == r.stdout

    # nothing found: exit 1 and a word on stderr
    r = run("log", "trace", "<nobody-sent-this@example.org>", log)
    assert r.returncode == 1 and r.stdout == "" and "msgid" in r.stderr
    r = run("log", "trace", "NOSUCHID", log)
    assert r.returncode == 1 and r.stdout == ""
    r = run("log", "trace", qid, str(t.root / "missing.log"))
    assert r.returncode == 1 and "missing.log" in r.stderr


def test_log_trace_follows_the_bounce():
    # A bounce takes days of retries in a real run; a log in tern's vocabulary pins the
    # rules: the DSN's own lines come (dsn_id=), another message's and a capture_id= that
    # merely ends in "id=" do not
    log = ("ts level=info event=queued id=A1 from=<a@x> nrcpt=1 msgid=<m@x>\n"
           "ts level=info event=queued id=B2 from=<b@x> nrcpt=1 msgid=<n@x>\n"
           "ts level=info event=bounced id=A1 to=<z@y>\n"
           "ts level=info event=dsn id=A1 dsn_id=C3 kind=failure to=<a@x>\n"
           "ts level=info event=delivered id=C3 to=<a@x>\n"
           "ts level=info event=delivered id=B2 to=<b@x>\n"
           "ts level=info event=released capture_id=A1 id=D4\n")
    r = run("log", "trace", "<m@x>", input=log)
    assert r.returncode == 0
    assert r.stdout.splitlines() == [ln for ln in log.splitlines()
                                     if " id=A1 " in ln or " id=C3 " in ln]


@pytest.mark.skipif(not IS_ROOT, reason="serve hands data_dir to 'user' only when started as root")
def test_check_config_data_dir_serve_hands_over_is_fine(offline):
    # a root-owned 0750 data_dir (trailing slash and all) is what serve chowns to 'user'
    # at start: not a problem, whereas its parent must be open to that account
    offline.data_dir.chmod(0o750)
    r = check(offline, {"data_dir": str(offline.data_dir) + "/"})
    assert r.returncode == 0, r.stderr
