"""Test helper for the LSF emulator: environment for clients, knob changes, call log, job records, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devstack.lsf.knobs import COUNTED, DEFAULTS, EmulatorError
from devstack.lsf.model import View, observe, parse_unknown
from devstack.lsf.state import STATE_ENV, Job, StateDir

BIN_DIR = Path(__file__).resolve().parent / "bin"
# LSF's own client variables the emulator honours; read from the environment only.
LSF_VARIABLES = ("BSUB_STDERR", "LSB_SUBK_SHOW_EXEC_HOST")


class Emulator:
    """One emulated cluster, living in ``state_dir``.

    ``env()`` is what a client needs (PATH with the fake commands first, FAKE_LSF_DIR, knobs); ``set_knobs`` changes
    behaviour for the next command even in a client that is already running; ``calls``, ``jobs`` and ``job`` let a
    test see what happened; ``cleanup`` kills any job process still running (use it in a fixture's teardown).
    """

    def __init__(self, state_dir: Path, **knobs: object) -> None:
        self.state = StateDir(Path(state_dir))
        self.state_dir = self.state.root
        self._env_knobs: dict[str, str] = {}
        if knobs:
            self.set_knobs(**knobs)

    def env(self, base: Mapping[str, str] | None = None, **knobs: object) -> dict[str, str]:
        """``base`` (default os.environ) + PATH with the emulator first + FAKE_LSF_DIR + the given knobs."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env[STATE_ENV] = str(self.state_dir)
        env["HORTACLOUD_PYTHON"] = sys.executable
        for name, value in knobs.items():
            _check_knob(name)
            env[name] = "1" if value is True else "0" if value is False else str(value)
        return env

    def set_knobs(self, **knobs: object) -> None:
        """Write knobs to knobs.json (they beat the environment); None removes one. Restarts counted faults."""
        current = self.state.knobs.overrides()
        for name, value in knobs.items():
            _check_knob(name)
            if name in LSF_VARIABLES:
                raise EmulatorError(f"{name} is LSF's own environment variable: pass it to env(), not set_knobs()")
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        path = self.state.knobs.file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1))
        os.replace(tmp, path)
        self.state.reset_counters([name for name in knobs if name in COUNTED])

    def calls(self, command: str | None = None) -> list[dict[str, Any]]:
        """Logged invocations (``{"argv", "time", "rc", "pid"}``), optionally only of ``command`` (e.g. "bsub")."""
        try:
            lines = self.state.calls_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [entry for entry in entries if command is None or entry["argv"][0] == command]

    def argvs(self, command: str | None = None) -> list[list[str]]:
        """The argv of each logged invocation, optionally only of ``command``."""
        return [call["argv"] for call in self.calls(command)]

    def call_times(self, command: str) -> list[float]:
        """When (epoch seconds) each run of ``command`` started."""
        return [float(call["time"]) for call in self.calls(command)]

    def jobs(self) -> list[Job]:
        """Every job record, by id."""
        return self.state.all_jobs()

    def job(self, job_id: int) -> Job:
        """The record of one job; KeyError naming the id if there is none."""
        job = self.state.load(int(job_id))
        if job is None:
            raise KeyError(f"no LSF emulator job {job_id} in {self.state_dir}")
        return job

    def view(self, job_id: int) -> View:
        """The job's state right now, as bjobs would show it."""
        knobs = self.state.knobs
        unknown = parse_unknown(knobs.get("FAKE_LSF_UNKWN_AFTER"))
        return observe(self.job(job_id), time.time(), knobs.number("FAKE_LSF_KILL_DELAY"), unknown)

    def wait_finished(self, job_id: int, timeout: float = 10.0) -> View:
        """Poll until the job is DONE/EXIT; TimeoutError with its last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.view(job_id)
            if view.finished:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"LSF emulator job {job_id} still {view.stat} after {timeout}s")
            time.sleep(0.05)

    def reset(self, **knobs: object) -> None:
        """Forget every job, call and knob (job ids keep counting up, as on a real cluster), then set ``knobs``.

        For a cluster shared by the tests of one Airflow: each test starts from an empty call log.
        """
        self.cleanup()
        with self.state.locked():
            self.state.calls_log.unlink(missing_ok=True)
            for path in self.state.jobs_dir.glob("*.json"):
                path.unlink()
        self.state.knobs.file.unlink(missing_ok=True)
        self.state.reset_counters()
        if knobs:
            self.set_knobs(**knobs)

    def cleanup(self) -> list[int]:
        """SIGKILL every job process group and runner still alive; returns the pids signalled."""
        killed = []
        for job in self.jobs():
            if job.mode != "real" or job.finish_time is not None:
                continue
            if job.job_pgid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.job_pgid, signal.SIGKILL)
                    killed.append(job.job_pgid)
            if job.runner_pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(job.runner_pid, signal.SIGKILL)
                    killed.append(job.runner_pid)
        return killed


def _check_knob(name: str) -> None:
    if name not in DEFAULTS and name not in LSF_VARIABLES:
        raise EmulatorError(f"{name} is not an LSF emulator knob; known: {', '.join(sorted(DEFAULTS))}")
