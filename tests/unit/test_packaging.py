"""The Dockerfile, pyproject.toml and the README quick start stay in step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        pins[name.strip()] = version.strip()
    return pins


def test_pyproject_pins_airflow_3_3_and_the_providers_exactly() -> None:
    pins = _pins()
    assert pins["apache-airflow"].startswith("3.3.")  # the brief's line; the exact version lives in pyproject only
    assert pins["apache-airflow-providers-amazon"] and pins["apache-airflow-providers-ssh"]
    assert "requests" in pins


def test_docker_image_airflow_equals_the_pin() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (image_version,) = re.findall(r"^FROM apache/airflow:(\d+\.\d+\.\d+)-python3\.1[12]\s*$", dockerfile, re.M)
    assert image_version == _pins()["apache-airflow"]
    (installed,) = re.findall(r'pip install [^\n]*"apache-airflow==([\d.]+)"', dockerfile)
    assert installed == image_version


def test_installed_versions_are_the_pinned_ones() -> None:
    from importlib.metadata import version

    pinned = {name: pin for name, pin in _pins().items() if pin}
    assert {"apache-airflow", "apache-airflow-providers-amazon", "apache-airflow-providers-ssh"} <= pinned.keys()
    assert {name: version(name) for name in pinned} == pinned


def test_readme_quick_start_is_two_make_targets_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
