"""Pre-flight loadability of a sample's images: what HortaCloud reads first, checked before anything is uploaded.

JACS discovers a sample by ``transform.txt`` and ``ktx/block_8_xy_.ktx``, reads the transform as
``RenderedVolumeLoaderImpl.parseTransformStream`` does, Horta reads ``multiscale_total_levels`` and ``corner_xyzs``
from the root block's KTX key/value data, and the SWC import needs at least one ``default.N.tif``
(docs/mouselight-data.md, sections 3.2 and 3.3). A sample that fails one of these would publish and then not load.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from pathlib import Path

#: The 12-byte KTX 1 file identifier, ``«KTX 11»\r\n\x1a\n``.
KTX_IDENTIFIER = bytes([0xAB, 0x4B, 0x54, 0x58, 0x20, 0x31, 0x31, 0xBB, 0x0D, 0x0A, 0x1A, 0x0A])
KTX_KEYS = ("multiscale_total_levels", "corner_xyzs")
TRANSFORM_INTEGERS = ("ox", "oy", "oz", "nl")
TRANSFORM_NUMBERS = ("sx", "sy", "sz")
#: The part of a root block read: the header and the key/value data Horta needs come first.
_KTX_HEAD_BYTES = 64 * 1024
_INTEGER = re.compile(r"[+-]?\d+")


class PreflightError(ValueError):
    """The sample would not load in HortaCloud; the message names the file and the rule it breaks."""


def check_transform(path: Path) -> dict[str, str]:
    """Parse ``transform.txt`` as JACS does and return its values; :class:`PreflightError` on the first problem.

    ``#`` lines are comments, keys are compared without case, each line splits on its first ``:``; ``ox``, ``oy``,
    ``oz`` and ``nl`` must be integers (JACS reads them with ``Integer.valueOf``), ``sx``, ``sy``, ``sz`` numbers.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PreflightError(f"{path}: cannot be read as text ({err})") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PreflightError(f"{path}: line {line!r} is not 'key: value'")
        values[key.strip().lower()] = value.strip()
    for key in (*TRANSFORM_INTEGERS, *TRANSFORM_NUMBERS):
        _check_transform_value(path, key, values.get(key))
    return values


def _check_transform_value(path: Path, key: str, value: str | None) -> None:
    """One value as JACS reads it: ``ox``, ``oy``, ``oz``, ``nl`` integers; ``sx``, ``sy``, ``sz`` numbers."""
    if value is None:
        raise PreflightError(f"{path}: no {key} (JACS needs ox, oy, oz, sx, sy, sz and nl)")
    if key in TRANSFORM_INTEGERS and not _INTEGER.fullmatch(value):
        raise PreflightError(f"{path}: {key} {value!r} is not an integer (JACS reads it with Integer.valueOf)")
    if key in TRANSFORM_NUMBERS:
        try:
            float(value)
        except ValueError:
            raise PreflightError(f"{path}: {key} {value!r} is not a number") from None


def ktx_key_values(path: Path) -> dict[str, str]:
    """The key/value data of a KTX 1 file's header (the text values, NUL-terminated keys), read from its start."""
    with path.open("rb") as handle:
        head = handle.read(_KTX_HEAD_BYTES)
    if not head.startswith(KTX_IDENTIFIER):
        raise PreflightError(f"{path}: does not start with the KTX file identifier (not a KTX 1 file)")
    if len(head) < 64:
        raise PreflightError(f"{path}: shorter than a KTX header")
    endian = "<" if struct.unpack_from("<I", head, 12)[0] == 0x04030201 else ">"
    (kv_bytes,) = struct.unpack_from(endian + "I", head, 60)
    data, values, offset = head[64 : 64 + kv_bytes], {}, 0
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from(endian + "I", data, offset)
        entry = data[offset + 4 : offset + 4 + size]
        key, _, value = entry.partition(b"\0")
        values[key.decode("utf-8", "replace")] = value.rstrip(b"\0").decode("utf-8", "replace")
        offset += 4 + size + (-size % 4)
    return values


def check_root_block(path: Path) -> dict[str, str]:
    """The root block must be a KTX file whose header carries the keys Horta reads; returns its key/values."""
    values = ktx_key_values(path)
    missing = [key for key in KTX_KEYS if key not in values]
    if missing:
        raise PreflightError(f"{path}: its KTX header has no {' or '.join(missing)} (Horta reads them)")
    return values


def check_tiffs(base: Path, names: Iterable[str]) -> list[str]:
    """The ``default.N.tif`` among ``names`` that exist; :class:`PreflightError` when none does."""
    tiffs = [name for name in names if re.fullmatch(r"default\.\d+\.tif", name) and (base / name).is_file()]
    if not tiffs:
        raise PreflightError(f"{base}: no default.N.tif (HortaCloud's SWC import needs at least one)")
    return tiffs


def preflight(base: Path, root_block: str, files: Iterable[str]) -> None:
    """Every check, in the order HortaCloud meets them: transform.txt, the root block, a default.N.tif."""
    check_transform(base / "transform.txt")
    check_root_block(base / root_block)
    check_tiffs(base, files)


def ktx_header(key_values: dict[str, str]) -> bytes:
    """A minimal KTX 1 header with ``key_values`` (for tests and the demo's sample trees)."""
    data = b""
    for key, value in key_values.items():
        entry = key.encode() + b"\0" + value.encode() + b"\0"
        data += struct.pack("<I", len(entry)) + entry + b"\0" * (-len(entry) % 4)
    fields = [0x04030201, 0x1401, 1, 0x1903, 0x8229, 0x1903, 256, 256, 256, 0, 1, 1, len(data)]
    return KTX_IDENTIFIER + struct.pack("<13I", *fields) + data
