"""The S3 side of a sync: a client that uploads through the AWS Common Runtime, and listings put in key order.

Uploads go through ``awscrt.s3``, which signs, sends and retries in native code on its own threads, so the Python
side only walks, compares and counts; its buffer pool is bounded by ``memory_limit``, which keeps a 3 TB publish
within a fixed memory budget (README, *The images sync engine*). Listings, HEADs and aborts go through
:mod:`hortacloud.s3sync.control`, and the CRT client is started on the first upload: a sync that finds nothing to
do never loads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import json
import mimetypes
import os
import tempfile
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hortacloud.s3sync.control import ControlClient, CredentialSource, S3Error, S3Location, describe_answer

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MIB = 1024 * 1024
#: The least the CRT client accepts as its memory limit (AWS_ERROR_S3_INVALID_MEMORY_LIMIT_CONFIG below it).
CRT_MIN_MEMORY = 256 * MIB


@dataclass(frozen=True)
class RemoteObject:
    """An object in S3 below a sync prefix; ``key`` is relative to the prefix, ``etag`` as S3 lists it."""

    key: str
    size: int
    mtime: float
    etag: str = ""


@dataclass(frozen=True)
class MultipartUpload:
    """An incomplete multipart upload: its key (full), upload id and when it was started (epoch seconds)."""

    key: str
    upload_id: str
    initiated: float


def location_from_boto3_client(client: Any, bucket: str) -> S3Location:
    """Read endpoint, addressing style and region off a configured boto3 S3 client (e.g. ``S3Hook().conn``).

    botocore's own URL building decides path-style versus virtual-hosted, so every connection option the
    provider understands (endpoint_url, service_config, addressing_style) is honoured without re-implementing it.
    """
    url = client.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
    parts = urllib.parse.urlsplit(url)
    path_style = parts.path.startswith(f"/{bucket}/")
    host = parts.netloc
    if not path_style and host.startswith(f"{bucket}."):
        host = host[len(bucket) + 1 :]
    verify = getattr(client._endpoint.http_session, "_verify", True) is not False
    return S3Location(parts.scheme, host, client.meta.region_name or "us-east-1", path_style, verify)


@dataclass(frozen=True)
class Uploaded:
    """How one upload ended: ``error`` (None on success) and the ETag S3 answered with."""

    error: str | None
    etag: str = ""


class CrtS3:
    """Listing, inspecting and uploading objects at one endpoint; thread-safe.

    :param credentials: where the keys come from, for the requests signed here and for the CRT client.
    :param memory_limit: bytes the CRT client may hold in its buffer pool (at least 256 MiB, the CRT's minimum);
        every file of ``multipart_threshold`` or more goes up in parts of ``part_size`` from that pool.
    :param request_timeout: seconds a listing, HEAD or small request may wait for an answer before it fails (an
        endpoint that accepts the connection and never answers would otherwise hold the sync for ever).
    """

    def __init__(
        self,
        location: S3Location,
        credentials: CredentialSource,
        *,
        part_size: int,
        multipart_threshold: int,
        memory_limit: int,
        checksum: str = "crc32",
        request_timeout: float = 60.0,
    ) -> None:
        self.location = location
        self.credentials = credentials
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.memory_limit = memory_limit
        self.checksum = checksum
        self.request_timeout = request_timeout
        self._control = ControlClient(location, credentials, request_timeout)
        self._crt_lock = threading.Lock()
        self._crt_parts: tuple[Any, Any, Any] | None = None

    @property
    def _crt(self) -> tuple[Any, Any, Any]:
        """The CRT's s3 module, its client and the checksum config, built on the first upload (once)."""
        with self._crt_lock:
            if self._crt_parts is None:
                self._crt_parts = self._start_crt()
            return self._crt_parts

    def _start_crt(self) -> tuple[Any, Any, Any]:
        from awscrt import auth, io, s3

        checksum = (
            s3.S3ChecksumConfig(algorithm=s3.S3ChecksumAlgorithm.CRC32, location=s3.S3ChecksumLocation.TRAILER)
            if self.checksum == "crc32"
            else None
        )
        signing = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4,
            signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            service="s3",
            region=self.location.region,
            credentials_provider=self.credentials.crt_provider(),
            # The payload is protected by the CRC32 trailer (and TLS in production), not hashed twice.
            signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            # S3's rules: the key is encoded once and never normalized ("a//b" and "a/./b" are keys of their own).
            use_double_uri_encode=False,
            should_normalize_uri_path=False,
        )
        tls_options = None
        if self.location.scheme == "https":
            context_options = io.TlsContextOptions()
            context_options.verify_peer = self.location.verify_tls
            tls_options = io.ClientTlsContext(context_options).new_connection_options()
        client = s3.S3Client(
            bootstrap=io.ClientBootstrap(io.EventLoopGroup(0), io.DefaultHostResolver(io.EventLoopGroup(1))),
            region=self.location.region,
            signing_config=signing,
            tls_mode=s3.S3RequestTlsMode.ENABLED if self.location.scheme == "https" else s3.S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options,
            part_size=self.part_size,
            multipart_upload_threshold=self.multipart_threshold,
            memory_limit=max(self.memory_limit, CRT_MIN_MEMORY),
            connect_timeout_ms=int(min(self.request_timeout, 30.0) * 1000),
        )
        return s3, client, checksum

    def _headers(self, host: str, extra: Iterable[tuple[str, str]] = ()) -> Any:
        from awscrt.http import HttpHeaders

        return HttpHeaders([("Host", host), *extra])

    def _xml(self, body: bytes, operation: str, root_tag: str) -> ET.Element:
        """The answer's XML root, checked to be the S3 document expected (an HTML page is not an empty listing)."""
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            excerpt = body[:120].decode("utf-8", "replace").replace("\n", " ")
            raise S3Error(
                f"{operation}: {self.location.endpoint} did not answer like S3 (not XML: {excerpt!r})"
            ) from None
        if root.tag != f"{_S3_NS}{root_tag}":
            raise S3Error(
                f"{operation}: {self.location.endpoint} did not answer like S3 (expected {root_tag}, got {root.tag})"
            )
        return root

    def list_objects(self, bucket: str, prefix: str) -> Iterator[RemoteObject]:
        """Every object under ``prefix`` in the server's order; keys are returned relative to ``prefix``."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            host, path = self.location.request_target(bucket, "", query)
            try:
                _, _, body = self._control.request("GET", host, path, "ListObjectsV2")
            except S3Error as err:
                raise S3Error(f"Listing s3://{bucket}/{prefix} failed: {err}") from None
            root = self._xml(body, f"Listing s3://{bucket}/{prefix}", "ListBucketResult")
            for contents in root.iter(f"{_S3_NS}Contents"):
                # encoding-type=url is form encoding (a space arrives as "+"), as botocore decodes it.
                key = urllib.parse.unquote_plus(contents.findtext(f"{_S3_NS}Key", ""))
                yield RemoteObject(
                    key[len(prefix) :],
                    int(contents.findtext(f"{_S3_NS}Size", "0")),
                    _epoch(contents.findtext(f"{_S3_NS}LastModified", "")),
                    contents.findtext(f"{_S3_NS}ETag", "").strip('"'),
                )
            if root.findtext(f"{_S3_NS}IsTruncated") != "true":
                return
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
            if not token:
                raise S3Error(f"Listing s3://{bucket}/{prefix} is truncated but has no continuation token")

    def head(self, bucket: str, key: str) -> dict[str, str]:
        """The object's headers with the checksum S3 stored (``x-amz-checksum-crc32``, ``etag``, ...)."""
        host, path = self.location.request_target(bucket, key)
        _, headers, _ = self._control.request("HEAD", host, path, "HeadObject", [("x-amz-checksum-mode", "ENABLED")])
        return headers

    def multipart_uploads(self, bucket: str, prefix: str) -> Iterator[MultipartUpload]:
        """The incomplete multipart uploads below ``prefix`` (full keys)."""
        markers: dict[str, str] = {}
        while True:
            query = {"uploads": "", "prefix": prefix, "encoding-type": "url", **markers}
            host, path = self.location.request_target(bucket, "", query)
            _, _, body = self._control.request("GET", host, path, "ListMultipartUploads")
            root = self._xml(body, f"Listing multipart uploads of s3://{bucket}/{prefix}", "ListMultipartUploadsResult")
            for upload in root.iter(f"{_S3_NS}Upload"):
                yield MultipartUpload(
                    urllib.parse.unquote_plus(upload.findtext(f"{_S3_NS}Key", "")),
                    upload.findtext(f"{_S3_NS}UploadId", ""),
                    _epoch(upload.findtext(f"{_S3_NS}Initiated", "")),
                )
            if root.findtext(f"{_S3_NS}IsTruncated") != "true":
                return
            markers = {
                "key-marker": urllib.parse.unquote_plus(root.findtext(f"{_S3_NS}NextKeyMarker", "")),
                "upload-id-marker": root.findtext(f"{_S3_NS}NextUploadIdMarker", ""),
            }

    def abort_multipart_upload(self, bucket: str, upload: MultipartUpload) -> None:
        """Abort one incomplete multipart upload (its parts stop costing storage); one already gone is not an error.

        A 404 (NoSuchUpload) means it is gone: another sync aborted it, or this abort's first try went through and
        its answer was lost, so the retry finds nothing.
        """
        host, path = self.location.request_target(bucket, upload.key, {"uploadId": upload.upload_id})
        try:
            self._control.request("DELETE", host, path, "AbortMultipartUpload")
        except S3Error as err:
            if err.status != 404:
                raise

    def get(self, bucket: str, key: str) -> bytes:
        """A small object's bytes (a manifest)."""
        host, path = self.location.request_target(bucket, key)
        return self._control.request("GET", host, path, "GetObject")[2]

    def put_file(self, bucket: str, key: str, path: str, content_type: str, metadata: dict[str, str]) -> str:
        """Put one file with ``Content-Type`` and ``x-amz-meta-*`` headers and wait for it; returns its ETag."""
        from awscrt.http import HttpRequest

        host, target = self.location.request_target(bucket, key)
        size = os.path.getsize(path)
        headers = self._headers(
            host, [("Content-Length", str(size)), ("Content-Type", content_type), *metadata.items()]
        )
        answer: dict[str, str] = {}
        result: dict[str, Any] = {}
        s3, client, checksum = self._crt
        request = client.make_request(
            type=s3.S3RequestType.PUT_OBJECT,
            request=HttpRequest("PUT", target, headers),
            send_filepath=path,
            checksum_config=checksum,
            on_headers=lambda status_code, headers, **_: answer.update({k.lower(): v for k, v in headers}),
            on_done=lambda **kwargs: result.update(kwargs),
        )
        with contextlib.suppress(Exception):  # the failure is described by on_done's arguments
            request.finished_future.result()
        if result.get("error") is not None or not result:
            raise S3Error(f"PUT s3://{bucket}/{key} failed: {describe_failure(result)}")
        return answer.get("etag", "").strip('"')

    def upload(
        self,
        bucket: str,
        key: str,
        path: str,
        size: int,
        on_done: Callable[[Uploaded], None],
        on_progress: Callable[[int], None],
    ) -> Any:
        """Start uploading ``path`` to ``key``; ``on_done`` runs on a CRT thread with the error or the ETag.

        The Content-Type is guessed from the file's name as ``aws s3 sync`` and ``aws s3 cp`` guess it, and, as
        they do, not sent when no type is known (S3 then stores its default).
        """
        from awscrt.http import HttpRequest

        s3, client, checksum = self._crt
        host, target = self.location.request_target(bucket, key)
        content_type = mimetypes.guess_type(path)[0]
        typed = [("Content-Type", content_type)] if content_type else []
        headers = self._headers(host, [("Content-Length", str(size)), *typed])
        answer: dict[str, str] = {}

        def headers_received(status_code: int, headers: Any, **_: Any) -> None:
            answer.update({name.lower(): value for name, value in headers})

        def done(**kwargs: Any) -> None:
            if kwargs.get("error") is not None:
                on_done(Uploaded(describe_failure(kwargs)))
            else:
                on_done(Uploaded(None, answer.get("etag", "").strip('"')))

        return client.make_request(
            type=s3.S3RequestType.PUT_OBJECT,
            request=HttpRequest("PUT", target, headers),
            send_filepath=path,
            checksum_config=checksum,
            on_headers=headers_received,
            on_done=done,
            on_progress=lambda progress, **_: on_progress(progress),
        )


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


def describe_failure(result: dict[str, Any]) -> str:
    """A CRT request's failure in one line: the HTTP status, S3's error code and message, or the CRT error."""
    return describe_answer(result.get("status_code"), result.get("error_body") or b"", result.get("error"))


# -- listings in key order -------------------------------------------------------------------------------------------


def key_ordered(objects: Iterable[RemoteObject], run_length: int = 10_000) -> Iterator[RemoteObject]:
    """``objects`` in S3 key order (UTF-8 byte order), whatever order the server listed them in.

    AWS lists in byte order, but SeaweedFS lists folder by folder (``a/x`` before ``a b`` and ``a-b``; a component
    test shows it). An external merge sort keeps memory bounded: runs of ``run_length`` entries are sorted and
    spilled to temporary files, then merged. Python orders ``str`` by code point, which is the UTF-8 byte order.
    """
    runs: list[Iterator[tuple[str, int, float, str]]] = []
    buffer: list[tuple[str, int, float, str]] = []
    for item in objects:
        buffer.append((item.key, item.size, item.mtime, item.etag))
        if len(buffer) >= run_length:
            buffer.sort()
            runs.append(_spill(buffer))
            buffer = []
    buffer.sort()
    merged = heapq.merge(*runs, iter(buffer)) if runs else iter(buffer)
    for key, size, mtime, etag in merged:
        yield RemoteObject(key, size, mtime, etag)


def _spill(entries: list[tuple[str, int, float, str]]) -> Iterator[tuple[str, int, float, str]]:
    handle = tempfile.TemporaryFile("w+", encoding="utf-8", prefix="hortacloud-listing-")  # noqa: SIM115 (closed by read)
    handle.writelines(json.dumps(entry) + "\n" for entry in entries)
    handle.seek(0)

    def read() -> Iterator[tuple[str, int, float, str]]:
        with handle:
            for line in handle:
                key, size, mtime, etag = json.loads(line)
                yield key, size, mtime, etag

    return read()
