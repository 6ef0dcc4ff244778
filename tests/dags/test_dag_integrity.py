"""Every DAG file imports cleanly and carries what operators of this tool rely on (astro-cli's integrity test)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda path: path.stem)
def test_each_file_defines_the_dag_named_after_it(dagbag, path: Path) -> None:
    dag = dagbag.dags.get(path.stem)
    assert dag is not None, f"{path.name} must define dag_id {path.stem!r}"
    assert dag.tags and "hortacloud" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200
    assert dag.description and "\n" not in dag.description
    assert dag.dag_display_name and dag.dag_display_name != dag.dag_id
    assert dag.catchup is False
    # One rule for both: no start_date, so unpausing never runs a past schedule tick.
    assert dag.start_date is None


def test_transfers_retry_and_refusals_do_not(dagbag) -> None:
    upload = dagbag.dags["hortacloud_upload_sample"]
    retries = {task.task_id: task.retries for task in upload.tasks}
    assert retries["plan"] == 0  # a refusal cannot come right by retrying
    assert retries["images.upload"] > 0 and retries["segmentation.transfer"] > 0
    metadata = dagbag.dags["hortacloud_neuron_metadata"]
    retries = {task.task_id: task.retries for task in metadata.tasks}
    assert retries["fetch_mapping"] > 0 and retries["build_and_write"] == 0 and retries["report"] == 0


def test_lsf_transfers_defer_and_end_within_the_configured_timeout(dagbag) -> None:
    import datetime as dt

    from hortacloud.config import load_config

    upload = dagbag.dags["hortacloud_upload_sample"]
    transfers = [task for task in upload.tasks if task.task_id.endswith(".transfer")]
    assert {task.task_id for task in transfers} == {
        f"{name}.transfer" for name in ("registration", "segmentation", "tracings", "carveouts")
    }
    hours = load_config().lsf.execution_timeout_hours
    assert hours > 0  # a held (PSUSP) job must not wait for ever
    for task in transfers:
        assert task.partial_kwargs["deferrable"] is True, task.task_id  # a multi-hour job holds no worker slot
        assert task.partial_kwargs["execution_timeout"] == dt.timedelta(hours=hours), task.task_id


def test_upload_dag_has_one_group_per_product_and_runs_only_when_triggered(dagbag) -> None:
    from airflow.sdk.definitions.timetables.simple import NullTimetable

    from hortacloud.products import PARAM_NAMES, PRODUCT_NAMES

    dag = dagbag.dags["hortacloud_upload_sample"]
    groups = {task.task_group.group_id for task in dag.tasks if task.task_group and task.task_group.group_id}
    assert groups == set(PRODUCT_NAMES)
    assert isinstance(dag.timetable, NullTimetable)
    params = dag.params
    assert set(params.keys()) == set(PARAM_NAMES)
    assert params.get_param("products").value == ["images"]
    assert params.get_param("segmentation_dirs").value == ["stitching-output"]
    assert params.get_param("dry_run").value is False


def test_the_plugin_loader_imports_nothing_of_the_package_by_bare_name() -> None:
    """Airflow executes every .py file the plugins folder shows it as a module named by its stem; the package
    (installed, imported as ``hortacloud.*``) must show it none, or ``lsf/operator.py`` would be ``operator``."""
    from airflow._shared.module_loading import find_path_from_directory

    seen = [Path(path) for path in find_path_from_directory(str(ROOT / "plugins"), ".airflowignore", "glob")]
    assert [path for path in seen if path.suffix == ".py"] == []
    assert (ROOT / "plugins" / "hortacloud" / "lsf" / "operator.py").is_file()  # there, and ignored


def test_the_hortacloud_plugin_is_found_through_its_entry_point() -> None:
    from airflow._shared.plugins_manager.plugins_manager import _load_entrypoint_plugins

    plugins, errors = _load_entrypoint_plugins()
    assert errors == {}
    assert "hortacloud" in [plugin.name for plugin in plugins]
