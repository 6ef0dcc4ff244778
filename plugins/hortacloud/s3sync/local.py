"""The local side of a sync: a folder walked in S3 key order, or a file list written by the plan step.

Both stream: memory is bounded by the largest folder (walk) or constant (file list), never by the tree.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Warn = Callable[[str], None]


class SourceError(ValueError):
    """The source cannot be synced as it is (a name S3 cannot hold, a broken file list); the message says which."""


@dataclass(frozen=True)
class LocalFile:
    """A file below a sync root; ``key`` is its path relative to the root with ``/`` separators."""

    key: str
    path: str
    size: int
    mtime: float


def checked_name(name: str, parent: str) -> str:
    """``name`` if S3 can hold it as part of a key (UTF-8); a :class:`SourceError` naming the file otherwise."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        raise SourceError(
            f"File name {raw!r} in {parent} is not UTF-8; S3 keys must be UTF-8 (rename the file)"
        ) from None
    return name


def _sorted_entries(directory: str, warn: Warn) -> list[tuple[str, str, os.stat_result]]:
    """The folder's files and subfolders in S3 key order, with their stat; anything else is warned about."""
    entries = []
    with os.scandir(directory) as scan:
        for entry in scan:
            name = checked_name(entry.name, directory)
            info, why = _stat(entry)
            if info is None:
                warn(f"skipped {entry.path}: {why}")
            elif stat.S_ISDIR(info.st_mode):
                # A folder sorts as "name/" so that "a-b" < "a/..." < "a0", exactly as S3 orders keys.
                entries.append((name + "/", entry.path, info))
            else:
                entries.append((name, entry.path, info))
    entries.sort(key=lambda item: item[0])
    return entries


def _stat(entry: os.DirEntry[str]) -> tuple[os.stat_result | None, str]:
    """The stat of a file or folder (links followed, as aws s3 sync follows them), else why it is skipped."""
    try:
        info = os.stat(entry.path)
    except FileNotFoundError:
        return None, "a broken link" if entry.is_symlink() else "it vanished while the folder was read"
    except OSError as err:
        return None, f"it cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
        return info, ""
    if stat.S_ISFIFO(info.st_mode):
        return None, "a named pipe (FIFO), not a regular file"
    if stat.S_ISSOCK(info.st_mode):
        return None, "a socket, not a regular file"
    return None, "a device, not a regular file"


def walk_sorted(root: str, warn: Warn = log.warning) -> Iterator[LocalFile]:
    """Yield every file below ``root`` in S3 key order (UTF-8 byte order of the relative path).

    Depth-first with one sorted directory listing per level on the stack: memory is bounded by the largest
    folder, not by the tree. Links to files and folders are followed, as ``aws s3 sync`` does; a link back to a
    folder already being walked (a loop) is skipped with a warning, like a broken link, a FIFO or a socket.
    """
    stack = [iter(_sorted_entries(root, warn))]
    prefixes = [""]
    walking = [_identity(os.stat(root))]
    while stack:
        for sort_key, path, info in stack[-1]:
            if not stat.S_ISDIR(info.st_mode):
                yield LocalFile(prefixes[-1] + sort_key, path, info.st_size, info.st_mtime)
                continue
            if _identity(info) in walking:
                warn(f"skipped {path}: a link back to a folder above it (a loop)")
                continue
            stack.append(iter(_sorted_entries(path, warn)))
            prefixes.append(prefixes[-1] + sort_key)
            walking.append(_identity(info))
            break
        else:
            stack.pop()
            prefixes.pop()
            walking.pop()


def overlay(trees: Iterable[Iterable[LocalFile]]) -> Iterator[LocalFile]:
    """Several trees as one, in key order; where two hold the same key, the later tree's file wins.

    The carveouts' two roots go to one prefix one after the other, as the old script ran them: what S3 ends up
    holding for a key is the last root's file.
    """
    streams = [((item.key, rank, item) for item in tree) for rank, tree in enumerate(trees)]
    previous: LocalFile | None = None
    for key, _rank, item in heapq.merge(*streams, key=lambda entry: (entry[0], entry[1])):
        if previous is not None and previous.key != key:
            yield previous
        previous = item
    if previous is not None:
        yield previous


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


# -- file lists ------------------------------------------------------------------------------------------------------

FILE_LIST_VERSION = 1


def write_file_list(path: Path, root: str, files: Iterable[LocalFile]) -> tuple[int, int]:
    """Write ``files`` (keys relative to ``root``, in key order) as a JSON-lines file list; return (count, bytes).

    The first line names the format and the root; each further line is ``[key, size, mtime]``. Written to a
    temporary name and renamed, so a reader never sees half a list.
    """
    tmp = path.with_name(path.name + ".tmp")
    count = total = 0
    with tmp.open("w", encoding="utf-8") as out:
        out.write(json.dumps({"hortacloud_file_list": FILE_LIST_VERSION, "root": root}) + "\n")
        for item in files:
            out.write(json.dumps([item.key, item.size, item.mtime]) + "\n")
            count += 1
            total += item.size
    os.replace(tmp, path)
    return count, total


def read_file_list(path: Path, root: str | None = None) -> Iterator[LocalFile]:
    """The files of a list written by :func:`write_file_list`, below ``root`` (default: the list's own root).

    Sizes and times are the plan's: a file that changed since is caught when it is uploaded (its size no longer
    matches) or by the verification. Keys must be relative, in strictly increasing order, without ``..``.
    """
    with path.open(encoding="utf-8") as handle:
        try:
            header = json.loads(handle.readline())
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("hortacloud_file_list") != FILE_LIST_VERSION:
            raise SourceError(f"{path} is not a hortacloud file list (version {FILE_LIST_VERSION})")
        base = root or str(header["root"])
        previous = ""
        for number, line in enumerate(handle, start=2):
            try:
                key, size, mtime = json.loads(line)
            except ValueError:
                raise SourceError(f"{path}, line {number}: not [key, size, mtime]") from None
            if not isinstance(key, str) or key <= previous or key.startswith("/") or ".." in key.split("/"):
                raise SourceError(f"{path}, line {number}: key {key!r} is out of order or leaves the root")
            previous = key
            yield LocalFile(key, os.path.join(base, *key.split("/")), int(size), float(mtime))
