"""What a run published, at a glance: one row per product, rendered for the run's note and the task log.

Plain Python: the upload DAG's ``summary`` task gathers task states and XComs and hands them here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hortacloud.run_notes import markdown_text

#: Task states that end a product well, and those that mean it did not publish.
_GOOD = {"success", "skipped"}
_BAD = {"failed", "upstream_failed", "up_for_retry", "removed"}


@dataclass
class ProductRow:
    """One product of a run: how it ended and what it left in the bucket."""

    product: str
    result: str  # published, failed, dry run, not chosen, running
    uploaded: int | None = None
    uploaded_bytes: int | None = None
    already_there: int | None = None
    verified: bool | None = None
    objects: int | None = None
    object_bytes: int | None = None
    prefixes: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when this product did not publish (a failed, retried-out or blocked task)."""
        return self.result == "failed"


def product_result(states: Iterable[str | None], *, chosen: bool, dry_run: bool) -> str:
    """How a product ended, from the states of its task instances."""
    if not chosen:
        return "not chosen"
    found = [state or "none" for state in states]
    if any(state in _BAD for state in found):
        return "failed"
    if found and all(state in _GOOD for state in found):
        return "dry run" if dry_run else "published"
    return "running"


def _size(count: int | None, size: int | None) -> str:
    if count is None:
        return "—"
    return f"{count:,}" if size is None else f"{count:,} ({size / 2**30:.2f} GiB)"


def _yes(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def markdown(title: str, rows: Sequence[ProductRow], bucket: str, browse_url: str, limit: int) -> str:
    """The run's note: the title line, then a table; rows are dropped from the end (and said so) to fit ``limit``."""
    header = [
        "| product | result | uploaded | already there | verified | in S3 | prefix | LSF jobs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines = [markdown_text(title), "", *header]
    for index, row in enumerate(rows):
        prefix = ", ".join(
            f"[{markdown_text(p)}]({browse_url.format(bucket=bucket, prefix=p)})" if browse_url else markdown_text(p)
            for p in row.prefixes
        )
        line = (
            f"| {row.product} | {row.result} | {_size(row.uploaded, row.uploaded_bytes)} | "
            f"{_size(row.already_there, None)} | {_yes(row.verified)} | {_size(row.objects, row.object_bytes)} | "
            f"{prefix or '—'} | {', '.join(row.jobs) or '—'} |"
        )
        if len("\n".join([*lines, line])) + 40 > limit:
            lines.append(f"| … {len(rows) - index} more: see the summary task's log | | | | | | | |")
            break
        lines.append(line)
    return "\n".join(lines)


def text_table(rows: Sequence[ProductRow], bucket: str) -> list[str]:
    """The same table as log lines, aligned, with full ``s3://`` prefixes."""
    table = [("product", "result", "uploaded", "already there", "verified", "in S3", "LSF jobs", "prefix")]
    for row in rows:
        table.append(
            (
                row.product,
                row.result,
                _size(row.uploaded, row.uploaded_bytes),
                _size(row.already_there, None),
                _yes(row.verified),
                _size(row.objects, row.object_bytes),
                ", ".join(row.jobs) or "—",
                ", ".join(f"s3://{bucket}/{p}" for p in row.prefixes) or "—",
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]


def shard_totals(summaries: Iterable[Mapping[str, Any] | None]) -> tuple[int, int, int] | None:
    """Files and bytes uploaded and files already there, summed over the images shards' summaries."""
    found = [s for s in summaries if isinstance(s, Mapping)]
    if not found:
        return None
    return (
        sum(int(s.get("files_uploaded", 0)) for s in found),
        sum(int(s.get("bytes_uploaded", 0)) for s in found),
        sum(int(s.get("files_skipped", 0)) for s in found),
    )
