"""Manifests: what a publish left in the bucket, provable later without downloading a byte.

One JSON document per product and sample (``manifests/<date>/<product>.json`` by default) lists every key below
the product's prefixes with its size and the checksums S3 stored (the ETag from the listing; the CRC32 from a HEAD
with checksum mode, when the object has one), then a whole-tree digest: the MD5 of the sorted lines
``<key> <size> <checksum>``, with their count and bytes. Its provenance says which run wrote it from which source
folders. A re-publish that changes nothing leaves the manifest as it was, byte for byte: the digest is compared
first (it is kept in the object's metadata) and the document is written only when it differs.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hortacloud.s3sync.control import S3Error
from hortacloud.s3sync.remote import CrtS3, RemoteObject, key_ordered

FORMAT = "hortacloud-manifest/1"
DIGEST_HEADER = "x-amz-meta-hortacloud-digest"
_HEAD_WORKERS = 32


class ManifestError(ValueError):
    """A manifest that cannot be read or used; the message says which and why."""


@dataclass(frozen=True)
class ManifestEntry:
    """One object as the manifest lists it."""

    key: str
    size: int
    etag: str
    crc32: str

    @property
    def checksum(self) -> str:
        """The checksum the digest uses: the CRC32 S3 stored, else its ETag."""
        return f"crc32:{self.crc32}" if self.crc32 else f"etag:{self.etag}"

    def line(self) -> str:
        """The entry's line in the digest."""
        return f"{self.key} {self.size} {self.checksum}\n"


def entries(client: CrtS3, bucket: str, prefixes: Sequence[str], *, crc32: bool = True) -> Iterator[ManifestEntry]:
    """Every object below ``prefixes`` in key order, with the checksums S3 stored (HEADs run concurrently)."""
    listed = _unique(
        key_ordered(
            RemoteObject(prefix + obj.key, obj.size, obj.mtime, obj.etag)
            for prefix in prefixes
            for obj in client.list_objects(bucket, prefix)
        )
    )
    if not crc32:
        for obj in listed:
            yield ManifestEntry(obj.key, obj.size, obj.etag, "")
        return
    with concurrent.futures.ThreadPoolExecutor(_HEAD_WORKERS, thread_name_prefix="manifest-head") as pool:
        for chunk in _chunks(listed, 256):
            heads = pool.map(lambda obj: client.head(bucket, obj.key), chunk)
            for obj, headers in zip(chunk, heads, strict=True):
                yield ManifestEntry(obj.key, obj.size, obj.etag, headers.get("x-amz-checksum-crc32", ""))


def _unique(objects: Iterable[RemoteObject]) -> Iterator[RemoteObject]:
    """Key-ordered objects with each key once (two prefixes may both cover an object)."""
    previous = None
    for obj in objects:
        if obj.key != previous:
            yield obj
        previous = obj.key


def _chunks(items: Iterable[RemoteObject], size: int) -> Iterator[list[RemoteObject]]:
    chunk: list[RemoteObject] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build(
    client: CrtS3, bucket: str, prefixes: Sequence[str], provenance: Mapping[str, Any], path: Path
) -> dict[str, Any]:
    """Write the manifest document to ``path`` (objects streamed, so memory stays flat); return its digest part."""
    digest = hashlib.md5(usedforsecurity=False)
    count = total = 0
    objects_path = path.with_name(path.name + ".objects")
    with objects_path.open("w", encoding="utf-8") as objects:
        for entry in entries(client, bucket, prefixes):
            digest.update(entry.line().encode())
            objects.write(json.dumps(entry.__dict__, sort_keys=True) + "\n")
            count += 1
            total += entry.size
    summary = {
        "algorithm": "md5",
        "of": "sorted lines '<key> <size> <checksum>'",
        "value": digest.hexdigest(),
        "count": count,
        "bytes": total,
    }
    head = {"format": FORMAT, "bucket": bucket, "prefixes": list(prefixes), "digest": summary}
    with path.open("w", encoding="utf-8") as out, objects_path.open(encoding="utf-8") as objects:
        out.write("{\n")
        for name, value in [*head.items(), ("provenance", dict(provenance))]:
            out.write(f" {json.dumps(name)}: {json.dumps(value, sort_keys=True)},\n")
        out.write(' "objects": [\n')
        for number, line in enumerate(objects):
            out.write(("" if number == 0 else ",\n") + "  " + line.rstrip("\n"))
        out.write("\n ]\n}\n")
    objects_path.unlink()
    return summary


def publish(client: CrtS3, bucket: str, key: str, path: Path, digest: str) -> bool:
    """Put the manifest at ``key`` unless the one there has the same digest; True when it was written."""
    try:
        existing = client.head(bucket, key).get(DIGEST_HEADER, "")
    except S3Error:
        existing = ""
    if existing == digest:
        return False
    client.put_file(bucket, key, str(path), "application/json", {DIGEST_HEADER: digest})
    return True


def load_manifest(client: CrtS3, where: str) -> dict[str, Any]:
    """A manifest from ``s3://bucket/key`` or a local file, checked to be one."""
    if where.startswith("s3://"):
        bucket, _, key = where[5:].partition("/")
        body = client.get(bucket, key)
    else:
        body = Path(where).read_bytes()
    try:
        manifest = json.loads(body)
    except ValueError as err:
        raise ManifestError(f"{where} is not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{where} is not a hortacloud manifest ({FORMAT})")
    return manifest


def check_manifest(client: CrtS3, manifest: Mapping[str, Any], limit: int = 50) -> list[str]:
    """What differs between the bucket and the manifest: missing, extra or changed objects, and the digest."""
    expected = {entry["key"]: ManifestEntry(**entry) for entry in manifest["objects"]}
    problems: list[str] = []
    digest = hashlib.md5(usedforsecurity=False)
    with_crc = any(entry.crc32 for entry in expected.values())
    for found in entries(client, manifest["bucket"], manifest["prefixes"], crc32=with_crc):
        digest.update(found.line().encode())
        want = expected.pop(found.key, None)
        if want is None:
            problems.append(f"{found.key}: in S3, not in the manifest")
        elif (want.size, want.etag, want.crc32) != (found.size, found.etag, found.crc32):
            problems.append(
                f"{found.key}: the manifest has {want.size} bytes {want.checksum}, S3 {found.size} bytes "
                f"{found.checksum}"
            )
    problems.extend(f"{key}: in the manifest, missing in S3" for key in sorted(expected))
    if not problems and digest.hexdigest() != manifest["digest"]["value"]:
        problems.append(f"digest {digest.hexdigest()} differs from the manifest's {manifest['digest']['value']}")
    return problems[:limit]
