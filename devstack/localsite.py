"""A miniature Janelia on local disk, and the override TOML that points hortacloud at it.

The demo and the tests lay their source folders out like the site's (the same folder names below one base folder)
and write a ``HORTACLOUD_CONFIG`` file with ``site_toml``; its values are quoted for TOML, so a path with quotes,
spaces or non-ASCII names survives.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def image_bases(base: Path) -> list[Path]:
    """The two image bases (``/nrs/mouselight/SAMPLES``, then ``/nearline/.../RENDER_archive``) below ``base``."""
    return [base / "nrs" / "mouselight" / "SAMPLES", base / "nearline" / "mouselight" / "data" / "RENDER_archive"]


def cluster_roots(base: Path) -> dict[str, Any]:
    """The ``[cluster]`` section for source folders below ``base``, laid out like ``include/hortacloud.toml``."""
    groups = base / "groups" / "mousebrainmicro" / "mousebrainmicro"
    return {
        "registration": groups / "registration" / "Database",
        "segmentation": groups / "cluster" / "Reconstructions",
        "finished_neurons": groups / "shared_tracing" / "Finished_Neurons",
        "tracing_complete": groups / "tracing_complete",
        "carveouts": [base / "nrs" / "funke" / "mouselight", base / "nrs" / "funke" / "mouselight-v2"],
    }


def emulated_lsf(output_dir: Path, poll_interval: float, *sync_options: str) -> dict[str, Any]:
    """The ``[lsf]`` section for the LSF emulator: it has no aws-cli, so each job runs this project's sync CLI.

    The job inherits the submitter's environment (``bsub -env all``), so the sync reaches the same S3 server with
    the same keys, and no credential is on its command line.
    """
    sync_cli = shlex.join([sys.executable, "-m", "hortacloud.s3sync", *sync_options])
    return {
        "transfer_command": f"{sync_cli} {{source}}/ {{destination}}/",
        "aws_profile": "",
        "output_dir": output_dir,
        "poll_interval_seconds": poll_interval,
    }


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML escapes


def site_toml(sections: Mapping[str, Mapping[str, object]], comment: str = "") -> str:
    """TOML text of ``{section: {key: value}}``; values are str, Path, bool, int, float or lists of them."""
    lines = [f"# {comment}"] if comment else []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
    return "\n".join(lines) + "\n"
