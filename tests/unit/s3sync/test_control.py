"""The control-plane client's pure parts: SigV4 signatures against botocore's signer, credential sources, retries."""

from __future__ import annotations

import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreKeys

from hortacloud.s3sync import control
from hortacloud.s3sync.control import (
    BotocoreCredentials,
    ChainCredentials,
    ControlClient,
    Credentials,
    S3Error,
    S3Location,
    StaticCredentials,
    canonical_query,
    default_credentials,
    sign,
)

NOW = dt.datetime(2026, 12, 2, 6, 30, 15, tzinfo=dt.UTC)


def _botocore_authorization(method: str, host: str, target: str, headers: dict[str, str], keys: Credentials) -> str:
    request = AWSRequest(method=method, url=f"http://{host}{target}", headers=dict(headers))
    signer = S3SigV4Auth(BotocoreKeys(keys.access_key, keys.secret_key, keys.token or None), "s3", "eu-west-2")
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        signer.add_auth(request)
    return str(request.headers["Authorization"])


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "headers"),
    [
        ("GET", "b", "", {"list-type": "2", "prefix": "images/2023-05-10/ktx/", "encoding-type": "url"}, {}),
        ("GET", "b", "", {"list-type": "2", "prefix": "a b/é~(1)+", "continuation-token": "x/y+z=="}, {}),
        ("GET", "b", "", {"uploads": "", "prefix": "p/", "key-marker": "k a", "upload-id-marker": "u"}, {}),
        ("HEAD", "bucket", "images/2023-05-10/ktx/1/2/block 8 xy.ktx", None, {"x-amz-checksum-mode": "ENABLED"}),
        ("DELETE", "bucket", "a//b/./c~d%e", {"uploadId": "2~abc_DEF-1.x"}, {}),
    ],
)
@pytest.mark.parametrize("token", ["", "session-token/with+chars="])
def test_signatures_equal_botocores(method, bucket, key, query, headers, token):  # type: ignore[no-untyped-def]
    location = S3Location("http", "127.0.0.1:8333", "eu-west-2", path_style=True)
    keys = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    host, target = location.request_target(bucket, key, query)
    ours = sign(method, host, target, headers, keys, "eu-west-2", NOW)
    assert ours["authorization"] == _botocore_authorization(method, host, target, headers, keys)
    assert ("x-amz-security-token" in ours) == bool(token)


def test_the_canonical_query_sorts_by_encoded_name_then_value():
    assert canonical_query({"uploads": "", "prefix": "a b", "key-marker": "k"}) == "key-marker=k&prefix=a%20b&uploads="
    assert canonical_query(None) == ""


def test_credentials_never_show_the_secret_or_the_token():
    shown = repr(Credentials("AKID", "the-secret", "the-token"))
    assert "AKID" in shown and "the-secret" not in shown and "the-token" not in shown


def test_the_environments_keys_are_used_without_the_crt(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    source = default_credentials()
    assert isinstance(source, StaticCredentials)
    assert source.current() == Credentials("AKID", "secret", "token")


def test_without_both_keys_the_default_chain_is_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert isinstance(default_credentials(), ChainCredentials)
    # A profile file is the chain's next link.
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = FROMFILE\naws_secret_access_key = s3cr3t\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert default_credentials(timeout=10).current() == Credentials("FROMFILE", "s3cr3t", "")


class _Answers(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script; records the paths asked."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        status, body = self.server.script.pop(0) if self.server.script else (200, b"")  # type: ignore[attr-defined]
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization", "")))  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted():  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    server.script, server.seen = [], []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(server: Any) -> ControlClient:
    location = S3Location("http", f"127.0.0.1:{server.server_address[1]}", "us-east-1", path_style=True)
    return ControlClient(location, StaticCredentials(Credentials("AKID", "secret")), timeout=5)


def test_5xx_answers_are_retried_then_the_answer_is_returned(scripted, monkeypatch):
    monkeypatch.setattr(control, "_backoff", lambda attempt, retry_after=None: None)
    slow_down = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    scripted.script[:] = [(503, slow_down), (500, b""), (200, b"<ok/>")]
    client = _client(scripted)
    host, target = client.location.request_target("b", "k")
    status, _, body = client.request("GET", host, target, "GetObject")
    assert (status, body) == (200, b"<ok/>")
    assert [path for _, path, _ in scripted.seen] == ["/b/k"] * 3
    assert all(auth.startswith("AWS4-HMAC-SHA256 Credential=AKID/") for _, _, auth in scripted.seen)


def test_a_5xx_on_every_try_fails_with_the_servers_words(scripted, monkeypatch):
    monkeypatch.setattr(control, "_backoff", lambda attempt, retry_after=None: None)
    slow_down = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    scripted.script[:] = [(503, slow_down)] * control.ATTEMPTS
    client = _client(scripted)
    host, target = client.location.request_target("b", "k")
    with pytest.raises(S3Error, match=r"GetObject to http://127\.0\.0\.1:\d+ failed: HTTP 503 SlowDown: Please"):
        client.request("GET", host, target, "GetObject")
    assert len(scripted.seen) == control.ATTEMPTS


def test_a_4xx_is_not_retried(scripted):
    scripted.script[:] = [(404, b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>")]
    client = _client(scripted)
    host, target = client.location.request_target("b", "k")
    with pytest.raises(S3Error, match="HTTP 404 NoSuchKey: gone"):
        client.request("GET", host, target, "GetObject")
    assert len(scripted.seen) == 1


def test_a_kept_alive_connection_is_reused_and_a_dropped_one_is_reopened(scripted):
    client = _client(scripted)
    host, target = client.location.request_target("b", "k")
    client.request("HEAD", host, target, "HeadObject")
    first = client._connection(host)
    client.request("HEAD", host, target, "HeadObject")
    assert client._connection(host) is first
    first.sock.close()  # type: ignore[union-attr]  # the server or a proxy dropped it while idle
    client.request("HEAD", host, target, "HeadObject")
    assert len(scripted.seen) == 3


def test_keys_lose_surrounding_whitespace():
    assert Credentials(" AKID\n", "secret\n", "token\r\n") == Credentials("AKID", "secret", "token")


def test_a_key_no_header_can_carry_fails_in_one_line_without_showing_it(scripted):
    client = _client(scripted)
    client.credentials = StaticCredentials(Credentials("AKID", "secret", "tok\nen-part-two"))
    host, target = client.location.request_target("b", "k")
    with pytest.raises(S3Error) as raised:
        client.request("GET", host, target, "GetObject")
    assert "cannot carry (check the AWS keys)" in str(raised.value)
    assert "en-part-two" not in str(raised.value) and raised.value.__cause__ is None
    assert scripted.seen == []


def test_a_refresh_that_fails_names_its_type_not_its_words(scripted):
    class Refusing:
        def get_frozen_credentials(self) -> None:
            raise RuntimeError("sts said no to key AKIA-SECRET-LOOKING")

    client = _client(scripted)
    client.credentials = BotocoreCredentials(Refusing())
    host, target = client.location.request_target("b", "k")
    with pytest.raises(S3Error, match=r"credentials could not be refreshed \(RuntimeError\)") as raised:
        client.request("GET", host, target, "GetObject")
    assert "AKIA" not in str(raised.value)


def test_retry_after_is_honoured_and_backoff_is_capped(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(control.time, "sleep", slept.append)
    control._backoff(1, "2")
    control._backoff(30)
    assert slept[0] == 2.0 and 0 <= slept[1] <= 20.0


def test_an_idle_connection_is_not_reused(scripted, monkeypatch):
    monkeypatch.setattr(control, "IDLE_SECONDS", 0.0)
    client = _client(scripted)
    host, target = client.location.request_target("b", "k")
    client.request("HEAD", host, target, "HeadObject")
    first = client._connection(host)
    client.request("HEAD", host, target, "HeadObject")
    assert client._connection(host) is not first


def test_aborting_an_upload_that_is_already_gone_is_not_an_error(scripted):
    from hortacloud.s3sync.remote import CrtS3, MultipartUpload

    s3 = CrtS3(
        _client(scripted).location,
        StaticCredentials(Credentials("AKID", "secret")),
        part_size=1,
        multipart_threshold=1,
        memory_limit=1,
    )
    scripted.script[:] = [(404, b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"), (403, b"")]
    s3.abort_multipart_upload("b", MultipartUpload("k", "id", 0.0))
    with pytest.raises(S3Error, match="HTTP 403"):
        s3.abort_multipart_upload("b", MultipartUpload("k", "id", 0.0))
    assert [(method, path) for method, path, _ in scripted.seen] == [("DELETE", "/b/k?uploadId=id")] * 2
