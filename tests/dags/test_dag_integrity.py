"""Every DAG file imports cleanly and carries what operators of this tool rely on (astro-cli's integrity test)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.models import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda path: path.stem)
def test_each_file_defines_the_dag_named_after_it(dagbag, path: Path) -> None:
    dag = dagbag.dags.get(path.stem)
    assert dag is not None, f"{path.name} must define dag_id {path.stem!r}"
    assert dag.tags and "hortacloud" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200
    assert dag.catchup is False
    for task in dag.tasks:
        assert task.retries >= 0
    assert any(task.retries > 0 for task in dag.tasks), "transfers must retry"


def test_upload_dag_has_one_group_per_product(dagbag) -> None:
    from hortacloud.products import PRODUCT_NAMES

    dag = dagbag.dags["hortacloud_upload_sample"]
    groups = {task.task_group.group_id for task in dag.tasks if task.task_group and task.task_group.group_id}
    assert groups == set(PRODUCT_NAMES)
    assert dag.schedule is None or str(dag.timetable.summary) in ("None", "")
    params = dag.params
    assert set(params.keys()) == {"sample", "products", "image_base", "segmentation_dirs", "dry_run"}
    assert params.get_param("products").value == ["images"]
    assert params.get_param("segmentation_dirs").value == ["stitching-output"]
    assert params.get_param("dry_run").value is False


def test_plugin_loader_skips_the_package() -> None:
    # The plugin loader imports every .py under plugins/ by bare name; our package must be ignored there.
    assert "hortacloud/" in (ROOT / "plugins" / ".airflowignore").read_text().split()
