"""S3 requests that move no file bytes: listings, HEAD, a manifest's GET, aborts; signed here, sent by http.client.

The CRT client (:class:`hortacloud.s3sync.remote.CrtS3`) moves the bytes. Loading its native library and building
its credentials chain takes about 100 ms, most of a re-sync that finds nothing to do (README, *Benchmarks*), and
it does nothing for these requests that Python does not do as well: they carry no body and their answers are
parsed in Python either way. So they go through this module, and the CRT is started only when a file must go up.

Signing is AWS Signature Version 4 as S3 applies it: the path encoded once and never normalized, the query sorted
and percent-encoded (a space is ``%20``), the SHA-256 of the empty body. ``tests/unit/s3sync/test_control.py``
checks each signature against botocore's own signer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import os
import random
import ssl
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: SHA-256 of the empty body: every request here has none.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Answers worth another try (S3's 503 SlowDown, a proxy's 502), and how many tries a request gets.
RETRIED_STATUS = frozenset({500, 502, 503, 504})
ATTEMPTS = 5


class S3Error(RuntimeError):
    """S3 (or whatever answered) refused or failed a request; the message names the request and the answer.

    ``status`` is the HTTP status of a refusal (None when there was no answer).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def query_string(query: dict[str, str]) -> str:
    """``query`` percent-encoded as SigV4 canonicalizes it, in its order: a space is ``%20``, never ``+``.

    A form-encoded prefix or continuation token with a space would be signed as ``%20`` and sent as ``+``: S3
    answers 403 SignatureDoesNotMatch.
    """
    return "&".join(
        f"{urllib.parse.quote(name, safe='-_.~')}={urllib.parse.quote(value, safe='-_.~')}"
        for name, value in query.items()
    )


def canonical_query(query: dict[str, str] | None) -> str:
    """``query`` as SigV4 signs it: encoded pairs sorted by name, then value (and sent in that order too)."""
    pairs = sorted(query_string({name: value}).partition("=")[::2] for name, value in (query or {}).items())
    return "&".join(f"{name}={value}" for name, value in pairs)


@dataclass(frozen=True)
class S3Location:
    """Where requests go: scheme, host[:port], path-style or virtual-hosted, signing region."""

    scheme: str
    host: str
    region: str
    path_style: bool
    verify_tls: bool = True

    def request_target(self, bucket: str, key: str, query: dict[str, str] | None = None) -> tuple[str, str]:
        """The Host header and the request path for ``key`` in ``bucket``, with ``query`` encoded for SigV4."""
        quoted = urllib.parse.quote(key, safe="/~")
        suffix = f"?{canonical_query(query)}" if query else ""
        if self.path_style:
            return self.host, f"/{bucket}/{quoted}{suffix}"
        return f"{bucket}.{self.host}", f"/{quoted}{suffix}"

    @property
    def endpoint(self) -> str:
        """``scheme://host`` for messages."""
        return f"{self.scheme}://{self.host}"


# -- credentials --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """One set of AWS keys; the secret and the token never appear in a repr or a log line.

    Surrounding whitespace is dropped (a key read from a file often ends in a newline, which no header may carry).
    """

    access_key: str
    secret_key: str = field(repr=False)
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        for name in ("access_key", "secret_key", "token"):
            object.__setattr__(self, name, (getattr(self, name) or "").strip())


class CredentialSource:
    """Where the keys come from: ``current()`` signs the requests here, ``crt_provider()`` the CRT client's."""

    def current(self) -> Credentials:
        """The keys to sign with now (refreshed by the source when they expire)."""
        raise NotImplementedError

    def crt_provider(self) -> Any:
        """An ``awscrt.auth.AwsCredentialsProvider`` that asks this source for every signature."""
        from awscrt.auth import AwsCredentials, AwsCredentialsProvider

        def delegate() -> AwsCredentials:
            keys = self.current()
            return AwsCredentials(keys.access_key, keys.secret_key, keys.token or None)

        return AwsCredentialsProvider.new_delegate(delegate)


class StaticCredentials(CredentialSource):
    """Fixed keys (the environment's ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``)."""

    def __init__(self, keys: Credentials) -> None:
        self.keys = keys

    def current(self) -> Credentials:
        """The fixed keys."""
        return self.keys

    def crt_provider(self) -> Any:
        """A static CRT provider (no call back into Python per signature)."""
        from awscrt.auth import AwsCredentialsProvider

        keys = self.keys
        return AwsCredentialsProvider.new_static(keys.access_key, keys.secret_key, keys.token or None)


class BotocoreCredentials(CredentialSource):
    """botocore's credentials (an Airflow connection's, an assumed role's), refreshed as botocore refreshes them."""

    def __init__(self, credentials: Any) -> None:
        if credentials is None:
            raise S3Error("No AWS credentials: the S3 connection has none and none were found in the environment")
        self.credentials = credentials

    def current(self) -> Credentials:
        """The keys botocore holds now."""
        frozen = self.credentials.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or "")


class ChainCredentials(CredentialSource):
    """The CRT's AWS default chain (profile, web identity, container and instance roles), built on first use."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._provider: Any = None
        self._lock = threading.Lock()

    def crt_provider(self) -> Any:
        """The chain itself: the CRT client resolves and caches through it."""
        with self._lock:
            if self._provider is None:
                from awscrt import auth, io

                bootstrap = io.ClientBootstrap(io.EventLoopGroup(1), io.DefaultHostResolver(io.EventLoopGroup(1)))
                self._provider = auth.AwsCredentialsProvider.new_default_chain(bootstrap)
            return self._provider

    def current(self) -> Credentials:
        """The chain's keys of the moment (it caches them until they near expiry)."""
        try:
            found = self.crt_provider().get_credentials().result(self.timeout)
        except TimeoutError:
            raise S3Error(
                f"No AWS credentials from the default chain (environment, profile, roles) within {self.timeout:g}s"
            ) from None
        except Exception as err:  # the chain's own words: which links it tried
            raise S3Error(f"No AWS credentials from the default chain (environment, profile, roles): {err}") from None
        return Credentials(found.access_key_id, found.secret_access_key, found.session_token or "")


def default_credentials(timeout: float = 30.0) -> CredentialSource:
    """The AWS default chain, as the command line uses it.

    The environment's keys when both are set (the chain's first link, read without loading the CRT), otherwise
    the CRT's chain (a profile, an instance or container role).
    """
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        return StaticCredentials(Credentials(access, secret, os.environ.get("AWS_SESSION_TOKEN", "")))
    return ChainCredentials(timeout)


# -- signing ------------------------------------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sign(
    method: str,
    host: str,
    target: str,
    headers: dict[str, str],
    keys: Credentials,
    region: str,
    now: dt.datetime,
) -> dict[str, str]:
    """The headers to send for a bodiless request to ``target`` (encoded path and canonical query), signed.

    ``headers`` may hold ``x-amz-*`` headers of the request's own (they are signed too); the result adds ``host``,
    ``x-amz-date``, ``x-amz-content-sha256``, the session token when there is one, and ``authorization``.
    """
    path, _, query = target.partition("?")
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed |= {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
    if keys.token:
        signed["x-amz-security-token"] = keys.token
    names = sorted(signed)
    canonical = "\n".join(
        [method, path, query, "".join(f"{name}:{signed[name]}\n" for name in names), ";".join(names), EMPTY_SHA256]
    )
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    key = ("AWS4" + keys.secret_key).encode("utf-8")
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={keys.access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


def describe_answer(status: int | None, body: bytes, error: object = None) -> str:
    """An answer in one line: the HTTP status, S3's error code and message (or the body's start), or the error."""
    detail = ""
    if body:
        try:
            root = ET.fromstring(body)
            detail = f"{root.findtext('Code', '')}: {root.findtext('Message', '')}".strip(": ")
        except ET.ParseError:
            detail = body[:200].decode("utf-8", "replace").replace("\n", " ")
    parts = [f"HTTP {status}" if status else "", detail, "" if detail else str(error or "")]
    return " ".join(part for part in parts if part) or "unknown error"


# -- the client ---------------------------------------------------------------------------------------------------

#: A kept-alive connection idle longer than this is closed rather than reused: a firewall or load balancer may have
#: dropped it without a word, and a request on it would wait the whole timeout (the verify pass lists again on the
#: connection the plan used, hours of uploads later).
IDLE_SECONDS = 20.0


class ControlClient:
    """Signed bodiless requests to one S3 endpoint, one kept-alive connection per thread and host, retried.

    Connection failures and 5xx answers are retried with jittered exponential backoff (honouring ``Retry-After``),
    up to :data:`ATTEMPTS` tries; a refused certificate fails at once. ``timeout`` bounds each wait for the server
    (to connect, and for each part of the answer): a silent endpoint fails after it, and is not retried.
    """

    def __init__(self, location: S3Location, credentials: CredentialSource, timeout: float) -> None:
        self.location = location
        self.credentials = credentials
        self.timeout = timeout
        self._local = threading.local()
        self._tls: Any = None
        self._tls_lock = threading.Lock()

    def _tls_context(self) -> Any:
        """One TLS context for all threads (loading the CA store once)."""
        with self._tls_lock:
            if self._tls is None:
                context = ssl.create_default_context()
                if not self.location.verify_tls:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._tls = context
            return self._tls

    def _connection(self, host: str) -> http.client.HTTPConnection:
        pool: dict[str, tuple[http.client.HTTPConnection, float]] = self._local.__dict__.setdefault("pool", {})
        connection, last_used = pool.get(host, (None, 0.0))
        if connection is not None and time.monotonic() - last_used > IDLE_SECONDS:
            connection.close()
            connection = None
        if connection is None:
            if self.location.scheme == "https":
                connection = http.client.HTTPSConnection(host, timeout=self.timeout, context=self._tls_context())
            else:
                connection = http.client.HTTPConnection(host, timeout=self.timeout)
        pool[host] = (connection, time.monotonic())
        return connection

    def _drop(self, host: str) -> None:
        connection, _ = self._local.__dict__.get("pool", {}).pop(host, (None, 0.0))
        if connection is not None:
            connection.close()

    def request(
        self, method: str, host: str, target: str, operation: str, headers: Iterable[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; (status, lower-cased headers, body) of its 2xx answer, or :class:`S3Error`."""
        where = f"{operation} to {self.location.endpoint}"
        extra = dict(headers)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status, answered, body = self._send(method, host, target, extra, where)
            except _Retryable as err:
                if attempt == ATTEMPTS:
                    raise S3Error(f"{where} failed after {ATTEMPTS} tries: {err}") from None
                _backoff(attempt)
                continue
            if status in RETRIED_STATUS and attempt < ATTEMPTS:
                _backoff(attempt, answered.get("retry-after"))
                continue
            if not 200 <= status < 300:
                raise S3Error(f"{where} failed: {describe_answer(status, body)}", status)
            return status, answered, body
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(
        self, method: str, host: str, target: str, extra: dict[str, str], where: str
    ) -> tuple[int, dict[str, str], bytes]:
        """One try: (status, lower-cased headers, body); :class:`_Retryable` for a failure worth another try."""
        try:
            keys = self.credentials.current()
        except S3Error:
            raise
        except Exception as err:  # a refresh that failed (an assumed role's STS call): its type, never its keys
            raise S3Error(f"{where}: the credentials could not be refreshed ({type(err).__name__})") from None
        signed = sign(method, host, target, extra, keys, self.location.region, _now())
        try:
            connection = self._connection(host)
            connection.request(method, target, headers=signed)
            answer = connection.getresponse()
            body = answer.read()
        except TimeoutError:
            self._drop(host)
            raise S3Error(f"{where} got no answer within {self.timeout:g}s") from None
        except ssl.SSLCertVerificationError as err:  # another try cannot help
            self._drop(host)
            raise S3Error(f"{where} failed: TLS refused the certificate: {err.verify_message}") from None
        except (OSError, http.client.HTTPException) as err:
            self._drop(host)
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        except (ValueError, UnicodeError):  # a header no HTTP request can carry; its value (a key?) is not shown
            self._drop(host)
            raise S3Error(f"{where} failed: a header holds characters HTTP cannot carry (check the AWS keys)") from None
        if answer.will_close:
            self._drop(host)
        return answer.status, {name.lower(): value for name, value in answer.getheaders()}, body


class _Retryable(Exception):
    """A try that failed in a way another try may not (a reset connection, a refused one, a lost answer)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _backoff(attempt: int, retry_after: str | None = None) -> None:
    """Wait before try ``attempt + 1``.

    ``Retry-After`` when the server gave seconds, else full-jitter exponential backoff of up to 0.5, 1, 2, 4 ...
    seconds, at most 20 (botocore's standard retry mode caps at 20 too).
    """
    if retry_after and retry_after.strip().isdigit():
        time.sleep(min(float(retry_after), 20.0))
        return
    time.sleep(random.uniform(0, min(20.0, 0.5 * 2 ** (attempt - 1))))
