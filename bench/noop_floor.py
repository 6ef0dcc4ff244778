"""The least a Python process does for a no-op sync, for the benchmark's start-up floor.

Standard library only: one interpreter, the modules a signed S3 request needs (``http.client``, ``hmac``,
``xml.etree``, ``argparse``, ``json``, ``logging``), a SigV4-signed ListObjectsV2 (all pages) and
ListMultipartUploads over one kept-alive connection, and a walk comparing sizes. It uploads nothing and fails when
anything would need uploading, so it is only timed on the no-op phase. No engine written in Python can be faster
than this on a tree whose no-op is start-up bound; the benchmark prints it beside ``s5cmd`` to show how much of our
no-op time is the language's and how much is ours.

It signs with its own few lines rather than :mod:`hortacloud.s3sync.control` on purpose: importing that module
(dataclasses, typing, threading) is part of what is measured against this floor. A floor built on ``control``,
tried on 2026-12-02, took as long as the engine's whole no-op (0.128 s against 0.127 s), and so floored nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import os
import urllib.parse
import xml.etree.ElementTree as ET

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_UNSIGNED = "UNSIGNED-PAYLOAD"


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def _signed_headers(host: str, path: str, query: str, region: str) -> dict[str, str]:
    """SigV4 headers for a GET of ``path?query`` (query already canonical) with the environment's keys."""
    access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": host, "x-amz-content-sha256": _UNSIGNED, "x-amz-date": stamp}
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        ["GET", path, query, "".join(f"{name}:{headers[name]}\n" for name in sorted(headers)), names, _UNSIGNED]
    )
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    return headers


def _get(connection: http.client.HTTPConnection, bucket: str, query: dict[str, str], region: str) -> ET.Element:
    path = f"/{bucket}"
    canonical = "&".join(f"{_quote(name)}={_quote(value)}" for name, value in sorted(query.items()))
    connection.request("GET", f"{path}?{canonical}", headers=_signed_headers(connection.host, path, canonical, region))
    answer = connection.getresponse()
    body = answer.read()
    if answer.status != 200:
        raise SystemExit(f"GET {path}?{canonical}: HTTP {answer.status} {body[:200]!r}")
    return ET.fromstring(body)


def main() -> int:
    """``python -m bench.noop_floor SRC s3://bucket/prefix/``; endpoint and keys from the environment (path style)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source")
    parser.add_argument("destination")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    endpoint = urllib.parse.urlsplit(os.environ["AWS_ENDPOINT_URL"])
    region = os.environ.get("AWS_REGION", "us-east-1")
    target = urllib.parse.urlsplit(args.destination)
    bucket, prefix = target.netloc, target.path.lstrip("/")
    connection = http.client.HTTPConnection(endpoint.netloc, timeout=60)
    remote: dict[str, int] = {}
    query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
    while True:
        root = _get(connection, bucket, query, region)
        for contents in root.iter(f"{_NS}Contents"):
            key = urllib.parse.unquote_plus(contents.findtext(f"{_NS}Key", ""))
            remote[key[len(prefix) :]] = int(contents.findtext(f"{_NS}Size", "0"))
        if root.findtext(f"{_NS}IsTruncated") != "true":
            break
        query["continuation-token"] = root.findtext(f"{_NS}NextContinuationToken", "")
    _get(connection, bucket, {"uploads": "", "prefix": prefix, "encoding-type": "url"}, region)
    files = 0
    for folder, _, names in os.walk(args.source):
        for name in names:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, args.source).replace(os.sep, "/")
            if remote.get(key) != os.stat(path).st_size:
                raise SystemExit(f"{key} would need uploading: the floor only times a no-op")
            files += 1
    print(json.dumps({"files_total": files, "files_uploaded": 0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
