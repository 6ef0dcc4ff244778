"""Fixtures for the LSF component tests: the emulator on PATH with a state folder of its own, and a task context.

Import the fixtures into a test module with ``from tests.component.conftest_lsf import *``. The operator and
trigger under test know nothing of the emulator: they find ``bsub``/``bjobs``/``bkill``/``bhist`` on PATH.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMULATOR_BIN = ROOT / "devstack" / "lsf" / "bin"

__all__ = ["FakeStore", "FakeTI", "LsfCluster", "context_for", "lsf"]


@dataclass
class LsfCluster:
    """The emulated cluster of one test: its state folder, knobs and call log."""

    state: Path

    def knobs(self, **values: object) -> None:
        """Set knobs in ``knobs.json`` (read by every command, so a running trigger sees them too)."""
        path = self.state / "knobs.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        path.write_text(json.dumps(current))

    def _logged(self, command: str | None) -> list[dict[str, Any]]:
        path = self.state / "calls.log"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        return [entry for entry in entries if command is None or entry["argv"][0] == command]

    def calls(self, command: str | None = None) -> list[list[str]]:
        """The argv of every command run so far (optionally only ``command``)."""
        return [entry["argv"] for entry in self._logged(command)]

    def call_times(self, command: str) -> list[float]:
        """When (epoch seconds) each run of ``command`` started."""
        return [float(entry["time"]) for entry in self._logged(command)]

    def job(self, job_id: str) -> dict[str, Any]:
        """The emulator's record of a job."""
        return json.loads((self.state / "jobs" / f"{job_id}.json").read_text())

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} not reached within {timeout}s")


@pytest.fixture
def lsf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LsfCluster]:
    """The emulator's bin folder first on PATH and a fresh state folder; kills jobs left running at the end."""
    if not (EMULATOR_BIN / "bsub").exists():
        pytest.skip(f"LSF emulator not found at {EMULATOR_BIN}")
    state = tmp_path / "lsf-state"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{EMULATOR_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LSF_DIR", str(state))
    for name in list(os.environ):
        if name.startswith("FAKE_LSF_") and name != "FAKE_LSF_DIR":
            monkeypatch.delenv(name)
    monkeypatch.delenv("BSUB_STDERR", raising=False)
    # The emulator's scripts run $HORTACLOUD_PYTHON; this interpreter starts faster than a pyenv shim.
    monkeypatch.setenv("HORTACLOUD_PYTHON", sys.executable)
    cluster = LsfCluster(state)
    # Short defaults so hangs end quickly even if a test forgets a timeout.
    cluster.knobs(FAKE_LSF_HANG_SECONDS=20, FAKE_LSF_TERMINATE_INTERVAL=0.2)
    yield cluster
    _kill_leftovers(state)


def _kill_leftovers(state: Path) -> None:
    import signal

    for path in (state / "jobs").glob("*.json") if (state / "jobs").exists() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key in ("job_pgid", "runner_pid"):
            pid = record.get(key)
            if isinstance(pid, int) and pid > 1:
                try:
                    if key == "job_pgid":
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@dataclass
class FakeTI:
    """Just what LsfJobOperator reads from the task instance."""

    dag_id: str = "hortacloud_upload_sample"
    run_id: str = "manual__2026-11-25T00:00:00+00:00"
    task_id: str = "segmentation.transfer"
    map_index: int = 0
    try_number: int = 1
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


class FakeStore:
    """A task state store kept in memory (survives 'worker crashes' between two execute calls of a test)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))


def context_for(ti: FakeTI | None = None, store: FakeStore | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"ti": ti or FakeTI()}
    if store is not None:
        context["task_state_store"] = store
    return context
