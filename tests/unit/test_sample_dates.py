"""Sample-date suggestions: a scan of the image bases into a local file, read when the DAG is parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hortacloud import sample_dates
from hortacloud.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bases(tmp_path: Path, site_config) -> Path:  # type: ignore[no-untyped-def]
    nrs, nearline = tmp_path / "nrs", tmp_path / "nearline"
    for folder in (nrs / "2023-05-10", nrs / "2024-01-02", nearline / "2023-05-10", nearline / "2019-12-31"):
        folder.mkdir(parents=True)
    (nrs / "2022-02-02").write_text("a file, not a sample")
    (nrs / "2023-13-01").mkdir()  # not a date
    (nrs / "notes").mkdir()
    cache = tmp_path / "cache" / "dates.json"
    site_config(f'[images]\nbases = ["{nrs}", "{nearline}", "{tmp_path / "offline"}"]\nsample_dates_file = "{cache}"\n')
    return cache


def test_refresh_lists_sample_folders_newest_first_and_parsing_reads_them(bases: Path) -> None:
    config = load_config()
    assert sample_dates.cached(config) == []  # no file yet: no suggestions, no error
    assert sample_dates.refresh(config) == ["2024-01-02", "2023-05-10", "2019-12-31"]
    assert sample_dates.cached(config) == ["2024-01-02", "2023-05-10", "2019-12-31"]
    bases.write_text("{not json")
    assert sample_dates.cached(config) == []


def test_the_trigger_form_offers_the_cached_dates(bases: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    sample_dates.refresh(load_config())
    dag = DagBag(dag_folder=str(ROOT / "dags" / "hortacloud_upload_sample.py")).dags["hortacloud_upload_sample"]
    schema = dag.params.get_param("sample").schema
    assert schema["examples"] == ["2024-01-02", "2023-05-10", "2019-12-31"]
    assert schema["type"] == "string" and "format" in schema  # a text field with suggestions, not a date picker
