"""A plain boto3 uploader, for the benchmark: 16 threads of ``upload_file`` after a size/time comparison.

What a Python engine without the CRT client would do (``aws s3 sync``'s rule, boto3's default transfer config).
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import urllib.parse

import boto3


def main(argv: list[str]) -> int:
    """``python -m bench.boto3_sync SRC s3://bucket/prefix/``; credentials and endpoint from the environment."""
    source, destination = argv
    parts = urllib.parse.urlsplit(destination)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    remote = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            remote[item["Key"]] = (item["Size"], item["LastModified"].timestamp())
    todo = []
    for folder, _, names in os.walk(source):
        for name in names:
            path = os.path.join(folder, name)
            key = prefix + os.path.relpath(path, source).replace(os.sep, "/")
            info = os.stat(path)
            known = remote.get(key)
            if known is None or known[0] != info.st_size or int(info.st_mtime) > known[1]:
                todo.append((path, key))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(client.upload_file, path, bucket, key) for path, key in todo]:
            future.result()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
