from __future__ import annotations

import pytest

from hortacloud.config import ConfigError, load_config


def test_defaults_are_todays_janelia_values() -> None:
    config = load_config()
    assert config.s3.bucket == "janelia-mouselight-imagery"
    assert config.images.bases == ("/nrs/mouselight/SAMPLES", "/nearline/mouselight/data/RENDER_archive")
    assert config.lsf.project == "mouselight" and config.lsf.slots == 4
    assert config.cluster.carveouts == ("/nrs/funke/mouselight", "/nrs/funke/mouselight-v2")
    assert config.timezone == "America/New_York"


def test_override_file_lays_over_defaults_key_by_key(site_config, tmp_path) -> None:
    site_config(f'[images]\nbases = ["{tmp_path}/a"]\n[s3]\nbucket = "other-bucket"\n')
    config = load_config()
    assert config.images.bases == (f"{tmp_path}/a",)
    assert config.s3.bucket == "other-bucket"
    assert config.s3.conn_id == "hortacloud_s3"  # untouched default


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[sync]\nworkers = 0\n", "sync.workers"),
        ("[sync]\nwokers = 3\n", "sync.wokers"),
        ('timezone = "Mars/Olympus"\n', "timezone"),
        ('[s3]\nbucket = "Bad_Bucket"\n', "s3.bucket"),
        ('[sync]\nchecksum = "md5"\n', "sync.checksum"),
        ("[lsf]\nfirst_poll_seconds = -1\n", "lsf.first_poll_seconds"),
    ],
)
def test_invalid_configuration_names_the_key(site_config, text: str, key: str) -> None:
    path = site_config(text)
    with pytest.raises(ConfigError) as err:
        load_config()
    assert f"key '{key}'" in str(err.value)
    assert str(path) in str(err.value)


def test_unreadable_override_is_named(site_config, tmp_path) -> None:
    path = site_config("[sync\n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        load_config()
    assert str(path) in str(err.value)
