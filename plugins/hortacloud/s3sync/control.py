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
    """S3 (or whatever answered) refused or failed a request; the message names the request and the answer."""


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
    """One set of AWS keys; the secret and the token never appear in a repr or a log line."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str = field(default="", repr=False)


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


class ControlClient:
    """Signed bodiless requests to one S3 endpoint, one kept-alive connection per thread and host, retried.

    Connection failures and 5xx answers are retried with jittered backoff, up to :data:`ATTEMPTS` tries; a request
    that gets no answer within ``timeout`` seconds fails at once (a silent endpoint does not hold a sync for ever).
    """

    def __init__(self, location: S3Location, credentials: CredentialSource, timeout: float) -> None:
        self.location = location
        self.credentials = credentials
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self, host: str) -> http.client.HTTPConnection:
        pool: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("connections", {})
        if host not in pool:
            if self.location.scheme == "https":
                import ssl

                context = ssl.create_default_context()
                if not self.location.verify_tls:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                pool[host] = http.client.HTTPSConnection(host, timeout=self.timeout, context=context)
            else:
                pool[host] = http.client.HTTPConnection(host, timeout=self.timeout)
        return pool[host]

    def _drop(self, host: str) -> None:
        connection = self._local.__dict__.get("connections", {}).pop(host, None)
        if connection is not None:
            connection.close()

    def request(
        self, method: str, host: str, target: str, operation: str, headers: Iterable[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; (status, lower-cased headers, body) of its 2xx answer, or :class:`S3Error`."""
        extra = dict(headers)
        for attempt in range(1, ATTEMPTS + 1):
            signed = sign(method, host, target, extra, self.credentials.current(), self.location.region, _now())
            connection = self._connection(host)
            try:
                connection.request(method, target, headers=signed)
                answer = connection.getresponse()
                body = answer.read()
            except TimeoutError:
                self._drop(host)
                raise S3Error(
                    f"{operation} to {self.location.endpoint} got no answer within {self.timeout:g}s"
                ) from None
            except (OSError, http.client.HTTPException) as err:
                self._drop(host)
                if attempt == ATTEMPTS:
                    raise S3Error(
                        f"{operation} to {self.location.endpoint} failed after {ATTEMPTS} tries: "
                        f"{type(err).__name__}: {err}"
                    ) from None
                _backoff(attempt)
                continue
            if answer.will_close:
                self._drop(host)
            if answer.status in RETRIED_STATUS and attempt < ATTEMPTS:
                _backoff(attempt)
                continue
            if not 200 <= answer.status < 300:
                raise S3Error(f"{operation} to {self.location.endpoint} failed: {describe_answer(answer.status, body)}")
            return answer.status, {name.lower(): value for name, value in answer.getheaders()}, body
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        """Close this thread's connections."""
        for host in list(self._local.__dict__.get("connections", {})):
            self._drop(host)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _backoff(attempt: int) -> None:
    """Full-jitter exponential backoff: up to 0.1, 0.2, 0.4 ... seconds, at most 5."""
    time.sleep(random.uniform(0, min(5.0, 0.1 * 2 ** (attempt - 1))))
