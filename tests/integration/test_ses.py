"""
test_ses.py — the Amazon SES v2 compatible API of `tern serve` (issue 12 item 3), driven by
the real AWS SDK: Debian's python3-boto3 `sesv2` client with endpoint_url pointing at tern,
signing with AWS Signature Version 4 and the pair `tern apikey create NAME --sigv4` prints.

SendEmail (Simple, Raw with an attachment, Template) is delivered to a fake MX (aiosmtpd)
and parsed back with Python's email package; the template calls, GetAccount and the
suppression calls are checked against what the SDK returns; a wrong secret, an unknown
access key id and a signature 20 minutes old raise ClientError with SES's codes, and
nothing of a refused message reaches the MX.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import datetime
import json
import time
from email.message import EmailMessage

import pytest

from conftest import free_port, start_on_free_port
from test_api import FakeMX, parse, wait_ready_http

boto3 = pytest.importorskip("boto3")  # python3-boto3, in scripts/install-deps
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

BLOB = bytes(range(256)) * 40 + b"\x00\r\n\r\x00end"


def create_pair(t, name, *extra):
    r = t.cli("apikey", "create", name, "--sigv4", *extra)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    akid, secret = lines[1].split(" ")
    assert akid.startswith("AKTERN") and len(akid) == 22 and len(secret) == 64, r.stdout
    return akid, secret


def client(port, pair):
    return boto3.client("sesv2", endpoint_url=f"http://127.0.0.1:{port}",
                        region_name="us-east-1", aws_access_key_id=pair[0],
                        aws_secret_access_key=pair[1],
                        config=Config(retries={"max_attempts": 1}))


@pytest.fixture
def ses(tern_factory):
    mx = FakeMX()
    port = free_port()
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
                      "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}"}}},
                     start=False)
    pairs = {"send": create_pair(t, "app", "--from-domain", "example.test"),
             "admin": create_pair(t, "ops", "--scope", "admin"),
             "read": create_pair(t, "reader", "--scope", "read"),
             "capped": create_pair(t, "capped", "--from-domain", "example.test",
                                   "--per-day", "5", "--per-second", "100")}
    start_on_free_port(t)
    wait_ready_http(port)

    class S:
        pass
    s = S()
    s.t, s.port, s.mx, s.pairs = t, port, mx, pairs
    s.c = {k: client(port, v) for k, v in pairs.items()}
    yield s
    mx.stop()


def wait_mx(mx, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while len(mx.messages) < n:
        assert time.monotonic() < deadline, f"{len(mx.messages)} of {n} messages at the MX"
        time.sleep(0.1)
    return mx.messages


def test_send_simple_text_and_html(ses):
    r = ses.c["send"].send_email(
        FromEmailAddress="Shop <shop@example.test>",
        Destination={"ToAddresses": ["ann@remote.test"], "CcAddresses": ["cc@remote.test"]},
        ReplyToAddresses=["help@example.test"],
        Content={"Simple": {"Subject": {"Data": "Grüße"},
                            "Body": {"Text": {"Data": "plain words\n"},
                                     "Html": {"Data": "<p>html words</p>"}}}},
        EmailTags=[{"Name": "campaign", "Value": "x1"}])
    assert len(r["MessageId"]) == 16
    (frm, rcpts, data), = wait_mx(ses.mx, 1)
    assert frm == "shop@example.test" and sorted(rcpts) == ["ann@remote.test", "cc@remote.test"]
    m = parse(data)
    assert m["Subject"] == "Grüße" and m["Reply-To"] == "help@example.test"
    assert m.get_body(("plain",)).get_content().replace("\r\n", "\n") == "plain words\n"
    assert "<p>html words</p>" in m.get_body(("html",)).get_content()


def test_send_raw_attachment_intact(ses):
    """The bar: boto3's send_email delivers to a fake MX with the attachment intact."""
    msg = EmailMessage()
    msg["From"] = "app@example.test"
    msg["To"] = "bob@remote.test"
    msg["Subject"] = "raw with a blob"
    msg.set_content("see the attachment\n")
    msg.add_attachment(BLOB, maintype="application", subtype="octet-stream",
                       filename="blob.bin")
    r = ses.c["send"].send_email(FromEmailAddress="app@example.test",
                                 Destination={"ToAddresses": ["bob@remote.test"]},
                                 Content={"Raw": {"Data": msg.as_bytes()}})
    assert r["MessageId"]
    (frm, rcpts, data), = wait_mx(ses.mx, 1)
    assert frm == "app@example.test" and rcpts == ["bob@remote.test"]
    m = parse(data)
    assert [p.get_payload(decode=True) for p in m.walk() if p.get_filename()] == [BLOB]
    assert m["Subject"] == "raw with a blob"


def test_templates_crud_and_send_escapes_html(ses):
    c = ses.c["send"]
    c.create_email_template(TemplateName="welcome", TemplateContent={
        "Subject": "Hi {{name}}", "Text": "Hello {{name}}, code {{ code }}{{missing}}.",
        "Html": "<p>Hello {{name}} {{{raw}}}</p>"})
    with pytest.raises(ClientError) as e:
        c.create_email_template(TemplateName="welcome",
                                TemplateContent={"Subject": "x", "Text": "y"})
    assert e.value.response["Error"]["Code"] == "AlreadyExistsException"
    got = c.get_email_template(TemplateName="welcome")
    assert got["TemplateName"] == "welcome"
    assert got["TemplateContent"]["Subject"] == "Hi {{name}}"
    c.update_email_template(TemplateName="welcome", TemplateContent={
        "Subject": "Hi {{name}}!", "Text": "Hello {{name}}, code {{ code }}{{missing}}.",
        "Html": "<p>Hello {{name}} {{{raw}}}</p>"})
    assert c.get_email_template(TemplateName="welcome")["TemplateContent"]["Subject"] == \
        "Hi {{name}}!"
    c.create_email_template(TemplateName="other", TemplateContent={"Subject": "s", "Text": "t"})
    page = c.list_email_templates(PageSize=1)
    assert [x["TemplateName"] for x in page["TemplatesMetadata"]] == ["other"]
    page2 = c.list_email_templates(PageSize=1, NextToken=page["NextToken"])
    assert [x["TemplateName"] for x in page2["TemplatesMetadata"]] == ["welcome"]
    assert isinstance(page2["TemplatesMetadata"][0]["CreatedTimestamp"], datetime.datetime)

    c.send_email(FromEmailAddress="app@example.test",
                 Destination={"ToAddresses": ["tina@remote.test"]},
                 Content={"Template": {"TemplateName": "welcome", "TemplateData": json.dumps(
                     {"name": "<Tom & \"Jerry\">", "code": 42, "raw": "<b>bold</b>"})}})
    (frm, rcpts, data), = wait_mx(ses.mx, 1)
    m = parse(data)
    assert m["Subject"] == "Hi <Tom & \"Jerry\">!"
    assert m.get_body(("plain",)).get_content().strip() == 'Hello <Tom & "Jerry">, code 42.'
    html = m.get_body(("html",)).get_content()
    assert "<p>Hello &lt;Tom &amp; &quot;Jerry&quot;&gt; <b>bold</b></p>" in html

    c.delete_email_template(TemplateName="welcome")
    with pytest.raises(ClientError) as e:
        c.get_email_template(TemplateName="welcome")
    assert e.value.response["Error"]["Code"] == "NotFoundException"
    with pytest.raises(ClientError) as e:
        c.send_email(FromEmailAddress="app@example.test",
                     Destination={"ToAddresses": ["tina@remote.test"]},
                     Content={"Template": {"TemplateName": "welcome", "TemplateData": "{}"}})
    assert e.value.response["Error"]["Code"] == "NotFoundException"


def test_account(ses):
    a = ses.c["read"].get_account()
    assert a["SendingEnabled"] is True and a["ProductionAccessEnabled"] is True
    q = a["SendQuota"]
    # a key without quotas: -1, SES's "unlimited"
    assert q["Max24HourSend"] == -1 and q["MaxSendRate"] == -1 and q["SentLast24Hours"] == 0
    # two recipients delivered: the sending key's count, not the reader's
    simple(ses.c["send"], to="one@remote.test")
    simple(ses.c["send"], to="two@remote.test")
    wait_mx(ses.mx, 2)
    deadline = time.monotonic() + 30
    while ses.c["send"].get_account()["SendQuota"]["SentLast24Hours"] != 2:
        assert time.monotonic() < deadline, ses.c["send"].get_account()
        time.sleep(0.1)
    assert ses.c["read"].get_account()["SendQuota"]["SentLast24Hours"] == 0


def test_account_quota_of_a_limited_key(ses):
    q = ses.c["capped"].get_account()["SendQuota"]
    assert (q["Max24HourSend"], q["MaxSendRate"], q["SentLast24Hours"]) == (5, 100, 0)
    # a message sent is counted against the day at once (charged at acceptance)
    simple(ses.c["capped"])
    q = ses.c["capped"].get_account()["SendQuota"]
    assert (q["Max24HourSend"], q["SentLast24Hours"]) == (5, 1)
    # the sending key's count, not another key's
    assert ses.c["send"].get_account()["SendQuota"]["SentLast24Hours"] == 0
    # and the quota holds for SES-signed sends: the sixth of the day is refused
    for _ in range(4):
        simple(ses.c["capped"])
    with pytest.raises(ClientError) as e:
        simple(ses.c["capped"])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert ses.c["capped"].get_account()["SendQuota"]["SentLast24Hours"] == 5


def test_suppression_list(ses):
    c = ses.c["admin"]
    c.put_suppressed_destination(EmailAddress="gone+x@remote.test", Reason="BOUNCE")
    c.put_suppressed_destination(EmailAddress="angry@remote.test", Reason="COMPLAINT")
    d = c.get_suppressed_destination(EmailAddress="gone+x@remote.test")["SuppressedDestination"]
    assert d["EmailAddress"] == "gone+x@remote.test" and d["Reason"] == "BOUNCE"
    assert isinstance(d["LastUpdateTime"], datetime.datetime)
    got = c.list_suppressed_destinations()["SuppressedDestinationSummaries"]
    assert sorted((x["EmailAddress"], x["Reason"]) for x in got) == [
        ("angry@remote.test", "COMPLAINT"), ("gone+x@remote.test", "BOUNCE")]
    only = c.list_suppressed_destinations(Reasons=["COMPLAINT"])
    c.delete_suppressed_destination(EmailAddress="gone+x@remote.test")
    with pytest.raises(ClientError) as e:
        c.get_suppressed_destination(EmailAddress="gone+x@remote.test")
    assert e.value.response["Error"]["Code"] == "NotFoundException"
    assert only is not None
    # the account list is the global one: a sending key may not touch it
    with pytest.raises(ClientError) as e:
        ses.c["send"].list_suppressed_destinations()
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    # and a suppressed recipient gets nothing
    ses.c["send"].send_email(FromEmailAddress="app@example.test",
                             Destination={"ToAddresses": ["angry@remote.test",
                                                          "fine@remote.test"]},
                             Content={"Simple": {"Subject": {"Data": "s"},
                                                 "Body": {"Text": {"Data": "t"}}}})
    (frm, rcpts, data), = wait_mx(ses.mx, 1)
    assert rcpts == ["fine@remote.test"]


def simple(c, to="x@remote.test", frm="app@example.test"):
    return c.send_email(FromEmailAddress=frm, Destination={"ToAddresses": [to]},
                        Content={"Simple": {"Subject": {"Data": "s"},
                                            "Body": {"Text": {"Data": "t"}}}})


def test_refusals(ses):
    akid, secret = ses.pairs["send"]
    bad = client(ses.port, (akid, "0" * 64))
    with pytest.raises(ClientError) as e:
        simple(bad)
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = client(ses.port, ("AKTERN" + "0" * 16, secret))
    with pytest.raises(ClientError) as e:
        simple(unknown)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    # the from-domain rule holds as for bearer keys
    with pytest.raises(ClientError) as e:
        simple(ses.c["send"], frm="app@elsewhere.test")
    assert e.value.response["Error"]["Code"] == "MessageRejected"
    # a read key may not send
    with pytest.raises(ClientError) as e:
        simple(ses.c["read"])
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    # a request signed 20 minutes ago, by botocore's own signer
    import urllib.error
    import urllib.request
    body = json.dumps({"FromEmailAddress": "app@example.test",
                       "Destination": {"ToAddresses": ["late@remote.test"]},
                       "Content": {"Simple": {"Subject": {"Data": "s"},
                                              "Body": {"Text": {"Data": "t"}}}}}).encode()
    url = f"http://127.0.0.1:{ses.port}/v2/email/outbound-emails"
    req = AWSRequest(method="POST", url=url, data=body,
                     headers={"Content-Type": "application/json"})

    class Old(SigV4Auth):
        def _modify_request_before_signing(self, request):
            super()._modify_request_before_signing(request)
            old = datetime.datetime.utcnow() - datetime.timedelta(minutes=20)
            request.context["timestamp"] = old.strftime("%Y%m%dT%H%M%SZ")
            request.headers.replace_header("X-Amz-Date", request.context["timestamp"])

    Old(Credentials(akid, secret), "ses", "us-east-1").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(url, data=body, method="POST", headers=dict(p.headers))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(r, timeout=30)
    assert e.value.code == 403 and e.value.headers["x-amzn-ErrorType"] == "RequestExpired"
    # the same request signed now is taken: the refusal above was the date alone
    req2 = AWSRequest(method="POST", url=url, data=body,
                      headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(akid, secret), "ses", "us-east-1").add_auth(req2)
    r2 = urllib.request.Request(url, data=body, method="POST",
                                headers=dict(req2.prepare().headers))
    with urllib.request.urlopen(r2, timeout=30) as resp:
        assert resp.status == 200 and json.loads(resp.read())["MessageId"]
    (frm, rcpts, data), = wait_mx(ses.mx, 1)
    assert rcpts == ["late@remote.test"]  # nothing of the refused ones arrived


def signed_post(ses, path, body, pair=None, when=None):
    """A request signed by botocore's own SigV4Auth (for fields Debian's SDK model lacks)."""
    import urllib.error
    import urllib.request
    akid, secret = pair or ses.pairs["send"]
    url = f"http://127.0.0.1:{ses.port}{path}"
    data = json.dumps(body).encode()
    req = AWSRequest(method="POST", url=url, data=data,
                     headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(akid, secret), "ses", "us-east-1").add_auth(req)
    r = urllib.request.Request(url, data=data, method="POST", headers=dict(req.prepare().headers))
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_simple_attachments_and_headers_of_newer_sdks(ses):
    import base64
    st, hd, body = signed_post(ses, "/v2/email/outbound-emails", {
        "FromEmailAddress": "app@example.test",
        "Destination": {"ToAddresses": ["att@remote.test"]},
        "Content": {"Simple": {
            "Subject": {"Data": "with files"},
            "Body": {"Text": {"Data": "see files"}, "Html": {"Data": '<img src="cid:logo">'}},
            "Headers": [{"Name": "X-Campaign", "Value": "spring"}],
            "Attachments": [
                {"RawContent": base64.b64encode(BLOB).decode(), "FileName": "blob.bin",
                 "ContentType": "application/octet-stream"},
                {"RawContent": base64.b64encode(b"PNGDATA").decode(), "FileName": "logo.png",
                 "ContentType": "image/png", "ContentDisposition": "INLINE",
                 "ContentId": "logo"}]}}})
    assert st == 200 and body["MessageId"], body
    (frm, rcpts, data), = wait_mx(ses.mx, 1)
    m = parse(data)
    assert m["X-Campaign"] == "spring"
    files = {p.get_filename(): p.get_payload(decode=True) for p in m.walk() if p.get_filename()}
    assert files["blob.bin"] == BLOB and files["logo.png"] == b"PNGDATA"
    assert [p["Content-ID"] for p in m.walk() if p.get_filename() == "logo.png"] == ["<logo>"]
    # a header the native API refuses is refused here too, with SES's shape
    st, hd, body = signed_post(ses, "/v2/email/outbound-emails", {
        "FromEmailAddress": "app@example.test",
        "Destination": {"ToAddresses": ["att@remote.test"]},
        "Content": {"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}},
                               "Headers": [{"Name": "X-A", "Value": "v\r\nBcc: evil@remote.test"}]}}})
    assert st == 400 and hd["x-amzn-ErrorType"] == "BadRequestException" and body["message"]
    assert len(ses.mx.messages) == 1


def test_raw_without_destination_reads_the_header_fields(ses):
    """As SES does: no Destination and no FromEmailAddress, the message's own From, To, Cc
    and Bcc make the envelope."""
    msg = EmailMessage()
    msg["From"] = "App <app@example.test>"
    msg["To"] = "Ann <ann@remote.test>, bob@remote.test"
    msg["Cc"] = "cid@remote.test"
    msg["Subject"] = "raw, envelope from the header"
    msg.set_content("body\n")
    r = ses.c["send"].send_email(Content={"Raw": {"Data": msg.as_bytes()}})
    assert r["MessageId"]
    (frm, rcpts, data), = wait_mx(ses.mx, 1)
    assert frm == "app@example.test"
    assert sorted(rcpts) == ["ann@remote.test", "bob@remote.test", "cid@remote.test"]
    # nothing to send to: refused
    msg2 = EmailMessage()
    msg2["From"] = "app@example.test"
    msg2.set_content("x")
    with pytest.raises(ClientError) as e:
        ses.c["send"].send_email(Content={"Raw": {"Data": msg2.as_bytes()}})
    assert e.value.response["Error"]["Code"] == "BadRequestException"


def test_pair_storage_and_revocation(ses):
    """The secret access key is stored nowhere: apikeys.db does not hold it, the master it
    is derived from is 0600; revoking the key revokes the pair at once."""
    import os
    import stat
    from pathlib import Path
    data = Path(ses.t.data_dir)
    akid, secret = ses.pairs["admin"]
    assert secret.encode() not in (data / "apikeys.db").read_bytes()
    assert stat.S_IMODE(os.stat(data / "apikeys.master").st_mode) == 0o600
    assert ses.c["admin"].get_account()["SendingEnabled"] is True
    r = ses.t.cli("apikey", "revoke", "ops")
    assert r.returncode == 0, r.stderr
    with pytest.raises(ClientError) as e:
        ses.c["admin"].get_account()
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
