r"""Checks on what a user types into the trigger form (or sends through the API or CLI).

Trigger values are data. Each rule exists twice, in the same words: as a JSON-schema ``pattern`` in the DAG's
Params (so the form and the REST API refuse a bad value with HTTP 400 before a run exists) and as a check here that
the plan step runs again (a conf that reached the run some other way gets the same answer). The schema patterns end
in ``$(?!\n)``: Python's ``$``, which jsonschema uses, also matches before a final newline; the look-ahead closes
that gap and means nothing to an ECMA-262 engine such as the browser's.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence

_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
# One path component: no '.', '..', slash, leading dot or dash, space, quote, shell or template character; ASCII.
_FOLDER_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"

SAMPLE_PATTERN = rf"^{_DATE}$(?!\n)"
FOLDER_NAME_PATTERN = rf"^{_FOLDER_NAME}$(?!\n)"
ABSOLUTE_FOLDER_PATTERN = rf"^(?:/+{_FOLDER_NAME})+/*$(?!\n)"
#: Longest absolute folder accepted (Linux PATH_MAX).
ABSOLUTE_FOLDER_MAX = 4096

SAMPLE_RULE = "a sample date as YYYY-MM-DD, the name of its folder (e.g. 2023-05-10)"
FOLDER_NAME_RULE = (
    "one folder name of at most 255 letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(e.g. stitching-output)"
)
ABSOLUTE_FOLDER_RULE = (
    "an absolute folder path whose every part is a folder name of letters, digits, '.', '_' or '-' starting with a "
    "letter or digit (e.g. /nrs/mouselight/SAMPLES/2023-05-10)"
)

_SAMPLE_RE = re.compile(_DATE)
_FOLDER_RE = re.compile(_FOLDER_NAME)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidRequest(ValueError):
    """A trigger value that cannot be used; the message names the value and what was expected."""


def check_sample(value: object) -> str:
    """Return ``value`` if it is a ``YYYY-MM-DD`` that names a real calendar date."""
    if not isinstance(value, str) or not _SAMPLE_RE.fullmatch(value):
        raise InvalidRequest(f"Sample {_shown(value)} is not a sample date: expected {SAMPLE_RULE}")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"Sample {value!r} is not a calendar date: expected {SAMPLE_RULE}") from None
    return value


def check_products(value: object, known: Sequence[str]) -> list[str]:
    """Return the chosen products in table order; each must be one of ``known``, at least one, none twice."""
    if isinstance(value, str) or not isinstance(value, list):
        raise InvalidRequest(f"Products {_shown(value)} is not a list: expected some of {', '.join(known)}")
    unknown = [item for item in value if item not in known]
    if unknown:
        raise InvalidRequest(f"Unknown product(s) {_shown(unknown)}: expected some of {', '.join(known)}")
    if not value:
        raise InvalidRequest(f"No product chosen: expected at least one of {', '.join(known)}")
    if len(set(value)) != len(value):
        raise InvalidRequest(f"Products {_shown(value)} names a product twice: expected each at most once")
    return [name for name in known if name in value]


def check_folder_name(value: object, what: str) -> str:
    """One folder name below a sample folder, by the one rule (``FOLDER_NAME_RULE``); returned unchanged."""
    if not isinstance(value, str) or not _FOLDER_RE.fullmatch(value):
        raise InvalidRequest(f"{what} {_shown(value)} is not a folder name: expected {FOLDER_NAME_RULE}")
    return value


def check_absolute_dir(value: object, what: str) -> str:
    """An absolute folder path, normalised (repeated and trailing slashes dropped), every part a folder name.

    ``..``, ``.``, control characters and parts that break the folder-name rule are refused, never resolved:
    existence is checked by the plan.
    """
    if not isinstance(value, str) or not value.startswith("/") or len(value) > ABSOLUTE_FOLDER_MAX:
        raise InvalidRequest(f"{what} {_shown(value)} is not an absolute folder path: expected {ABSOLUTE_FOLDER_RULE}")
    if _CONTROL_RE.search(value):
        raise InvalidRequest(f"{what} {_shown(value)} contains control characters: expected {ABSOLUTE_FOLDER_RULE}")
    parts = [part for part in value.split("/") if part]
    bad = [part for part in parts if not _FOLDER_RE.fullmatch(part)]
    if bad or not parts:
        which = f" (the part {bad[0]!r} is not a folder name)" if bad else ""
        raise InvalidRequest(f"{what} {_shown(value)} is refused{which}: expected {ABSOLUTE_FOLDER_RULE}")
    return "/" + "/".join(parts)


def check_optional_absolute_dir(value: object, what: str) -> str | None:
    """``check_absolute_dir``, or None for a value left empty (null, or a cleared form field)."""
    return None if value is None or value == "" else check_absolute_dir(value, what)


def check_folder_names(value: object, what: str, limit: int) -> list[str]:
    """A list of 1 to ``limit`` distinct folder names, each by the folder-name rule."""
    if isinstance(value, str) or not isinstance(value, list) or not 0 < len(value) <= limit:
        raise InvalidRequest(f"{what} {_shown(value)} is not a list of 1 to {limit} folder names")
    names = [check_folder_name(item, f"{what} entry") for item in value]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"{what} {_shown(names)} names a folder twice: expected each at most once")
    return names


def check_flag(value: object, what: str) -> bool:
    """A JSON true or false (not the string "true", not 1)."""
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} {_shown(value)} is not true or false")
    return value


def check_known_keys(values: Iterable[str], known: Sequence[str]) -> None:
    """Refuse trigger values nobody reads (a typo such as ``segmentaton_dirs`` would otherwise be ignored)."""
    unknown = sorted(key for key in values if key not in known)
    if unknown:
        raise InvalidRequest(f"Unknown trigger value(s) {_shown(unknown)}: expected only {', '.join(known)}")


def _shown(value: object, limit: int = 80) -> str:
    """``repr`` of a value for an error message, cut short, with its non-ASCII characters named.

    An oversized value must not flood the log, and a look-alike letter reads like the real one in a message.
    """
    text = repr(value)
    if len(text) > limit:
        size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as shown"
        if isinstance(value, list | dict):
            size = f"{len(value)} items"
        text = f"{text[:limit]}... ({size})"
    foreign = sorted({char for char in str(value)[:10_000] if ord(char) > 127})
    if foreign:
        text += " (non-ASCII: " + ", ".join(f"U+{ord(char):04X}" for char in foreign[:5]) + ")"
    return text
