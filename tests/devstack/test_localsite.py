"""The local-site helpers write TOML that hortacloud reads back exactly, whatever the paths contain."""

from __future__ import annotations

import tomllib
from pathlib import Path

from devstack.localsite import cluster_roots, emulated_lsf, image_bases, site_toml
from hortacloud.config import load_config


def test_site_toml_round_trips_hostile_paths(tmp_path: Path, site_config) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / 'it\'s "quoted" \\ ünï $HOME'
    sections = {
        "images": {"bases": image_bases(base)},
        "sync": {"workers": 3, "progress_interval_seconds": 0.5},
        "cluster": cluster_roots(base),
        "lsf": emulated_lsf(base / "out", 0.25, "--workers", "2"),
    }
    text = site_toml(sections, comment="test site")
    parsed = tomllib.loads(text)
    assert parsed["images"]["bases"] == [str(path) for path in image_bases(base)]
    assert parsed["cluster"]["carveouts"] == [str(path) for path in cluster_roots(base)["carveouts"]]
    assert parsed["sync"] == {"workers": 3, "progress_interval_seconds": 0.5}

    site_config(text)
    config = load_config()
    assert config.cluster.registration == str(cluster_roots(base)["registration"])
    assert config.lsf.poll_interval_seconds == 0.25 and config.lsf.aws_profile == ""
    assert config.lsf.transfer_command.endswith("-m hortacloud.s3sync --workers 2 {source}/ {destination}/")
