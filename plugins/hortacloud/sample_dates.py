"""The sample dates that exist under the image bases, offered as suggestions in the trigger form.

Listing ``/nrs`` or ``/nearline`` while the dag-processor parses the DAG would make parsing wait on a network file
system, so the list is kept in a small local file instead: every upload run's plan step (which runs where the
image bases are mounted) rewrites it, and ``python -m hortacloud.sample_dates`` does the same from a cron job or by
hand. Parsing only reads that file; a missing or unreadable file gives no suggestions, never an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from hortacloud.config import SiteConfig, load_config
from hortacloud.sample import SAMPLE_PATTERN, InvalidRequest, check_sample

log = logging.getLogger(__name__)

#: At most this many dates are offered (the newest): a datalist of hundreds helps nobody.
LIMIT = 60
_SAMPLE = re.compile(SAMPLE_PATTERN)


def _is_sample(name: str) -> bool:
    """True for a folder name the trigger form accepts: a real calendar date as YYYY-MM-DD."""
    if not _SAMPLE.match(name):
        return False
    try:
        check_sample(name)
    except InvalidRequest:
        return False
    return True


def cache_file(config: SiteConfig) -> Path:
    """``[images] sample_dates_file``, else ``$AIRFLOW_HOME/hortacloud/sample-dates.json``."""
    if config.images.sample_dates_file:
        return Path(config.images.sample_dates_file)
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return Path(home) / "hortacloud" / "sample-dates.json"


def scan(config: SiteConfig) -> list[str]:
    """The sample folders under the image bases (one listing per base), newest first, at most ``LIMIT``."""
    found: set[str] = set()
    for base in config.images.bases:
        try:
            with os.scandir(base) as entries:
                found |= {e.name for e in entries if _is_sample(e.name) and e.is_dir(follow_symlinks=True)}
        except OSError as err:
            log.info("Sample dates: cannot list %s (%s)", base, err.strerror or err)
    return sorted(found, reverse=True)[:LIMIT]


def refresh(config: SiteConfig | None = None) -> list[str]:
    """Scan the image bases and rewrite the cache file atomically; returns the dates. Never raises for I/O."""
    config = config or load_config()
    dates = scan(config)
    path = cache_file(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".sample-dates-", delete=False) as out:
            json.dump({"dates": dates}, out)
        os.replace(out.name, path)
    except OSError as err:
        log.warning("Sample dates: cannot write %s (%s); the trigger form keeps its old suggestions", path, err)
    return dates


def cached(config: SiteConfig) -> list[str]:
    """The dates of the cache file (for the DAG's Param), [] when there is none or it cannot be read."""
    try:
        dates = json.loads(cache_file(config).read_text())["dates"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [d for d in dates if isinstance(d, str) and _is_sample(d)][:LIMIT] if isinstance(dates, list) else []


def main() -> int:
    """``python -m hortacloud.sample_dates``: refresh the cache file and print its dates."""
    config = load_config()
    dates = refresh(config)
    print(f"{len(dates)} sample date(s) in {cache_file(config)}: {', '.join(dates) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
