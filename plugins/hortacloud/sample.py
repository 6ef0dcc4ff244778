"""Checks on what a user types into the trigger form (or sends through the API or CLI)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

SAMPLE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_SAMPLE_RE = re.compile(SAMPLE_PATTERN)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class InvalidRequest(ValueError):
    """A trigger value that cannot be used; the message names the value and what was expected."""


def check_sample(value: object) -> str:
    """Return ``value`` if it is a ``YYYY-MM-DD`` that names a real calendar date."""
    if not isinstance(value, str) or not _SAMPLE_RE.fullmatch(value):
        raise InvalidRequest(f"Sample {value!r} is not a sample date (expected YYYY-MM-DD, e.g. 2023-05-10)")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"Sample {value!r} is not a calendar date (expected YYYY-MM-DD)") from None
    return value


def check_products(value: object, known: Sequence[str]) -> list[str]:
    """Return the chosen products in table order; each must be one of ``known``, at least one chosen."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRequest(f"Products {value!r} is not a list (expected some of {', '.join(known)})")
    chosen = list(value)
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise InvalidRequest(f"Unknown product(s) {unknown!r} (expected some of {', '.join(known)})")
    if not chosen:
        raise InvalidRequest(f"No product chosen (expected at least one of {', '.join(known)})")
    return [name for name in known if name in chosen]


def check_relative_dir(value: object, what: str) -> str:
    """A folder name below a sample folder: relative, no ``..``, no control characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{what} {value!r} is not a folder name (expected e.g. stitching-output)")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or _CONTROL_RE.search(value):
        raise InvalidRequest(
            f"{what} {value!r} is not a folder below the sample folder "
            "(expected a relative name without '..' or control characters)"
        )
    return str(path)


def check_absolute_dir(value: object, what: str) -> str:
    """An absolute folder path without ``..`` or control characters (existence is checked by the plan)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidRequest(f"{what} {value!r} is not an absolute folder path (expected e.g. /nrs/mouselight/...)")
    path = PurePosixPath(value)
    if ".." in path.parts or _CONTROL_RE.search(value):
        raise InvalidRequest(f"{what} {value!r} must not contain '..' or control characters")
    return str(path)
