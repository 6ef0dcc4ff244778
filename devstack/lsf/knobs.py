"""Knobs: how the emulated cluster behaves.

A knob is read from ``$FAKE_LSF_DIR/knobs.json`` first, then from the environment, then from ``DEFAULTS``. The
file wins so that a test can change a knob while a long-lived client (a trigger) keeps polling with the environment
it started with. Every knob is re-read on each use, so a change applies to the next command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

# Name -> default (as the string an environment variable would carry). The README lists the same names.
DEFAULTS: dict[str, str] = {
    # Job ids
    "FAKE_LSF_FIRST_ID": "9148559",
    "FAKE_LSF_MAX_JOBID": "",
    # Cluster shape and limits
    "FAKE_LSF_CLUSTER": "hortacloud",
    "FAKE_LSF_EXEC_HOST": "h07u01",
    "FAKE_LSF_SUBMIT_HOST": "login1",
    "FAKE_LSF_DEFAULT_QUEUE": "normal",
    "FAKE_LSF_QUEUES": "normal,short",
    "FAKE_LSF_MAX_SLOTS": "128",
    "FAKE_LSF_RUNLIMIT_MAX": "",
    # Site esub
    "FAKE_LSF_ESUB_REJECT_REGEX": "",
    "FAKE_LSF_ESUB_MESSAGE": "Sorry, this submission does not follow the site policy.",
    "FAKE_LSF_ESUB_CHATTER": "",
    "FAKE_LSF_PROJECT_POLICY": "accept",
    "FAKE_LSF_PROJECTS": "",
    "FAKE_LSF_ADMIN_KILL_AFTER": "0.5",
    # Execution
    "FAKE_LSF_PLAN": "",
    "FAKE_LSF_PLANS": "",
    "FAKE_LSF_PEND_SECONDS": "0",
    "FAKE_LSF_STDOUT_DIRECT": "0",
    "FAKE_LSF_KILL_DELAY": "0",
    "FAKE_LSF_TERMINATE_INTERVAL": "10",
    "FAKE_LSF_CLEAN_PERIOD": "3600",
    "FAKE_LSF_UNKWN_AFTER": "",
    "FAKE_LSF_QUERY_LAG": "0",
    "FAKE_LSF_BKILL_DELAY": "0",
    "FAKE_LSF_MEMORY_NEED_MB": "",
    "FAKE_LSF_DEFAULT_MEMLIMIT_MB": "",
    # Answers that differ between sites and versions
    "FAKE_LSF_NOTFOUND_RC": "0",
    "FAKE_LSF_ERROR_WITH_JOBID": "0",
    "FAKE_LSF_BHIST_KNOWS": "1",
    "FAKE_LSF_BKILL_D_SUPPORTED": "0",
    # Faults. The counted ones (N = how many of the next invocations misbehave) are marked in the README.
    "FAKE_LSF_FAULTS_FOR": "bsub,bjobs,bkill,bhist",
    "FAKE_LSF_DOWN": "0",
    "FAKE_LSF_HANG": "0",
    "FAKE_LSF_HANG_SECONDS": "300",
    "FAKE_LSF_NONLSF_HOST": "0",
    "FAKE_LSF_CONN_RESET": "0",
    "FAKE_LSF_NOISE_STDOUT": "0",
    "FAKE_LSF_EMPTY_STDOUT_ONCE": "0",
    "FAKE_LSF_SUBMIT_THEN_HANG": "0",
    "FAKE_LSF_BJOBS_EMPTY": "0",
    "FAKE_LSF_GARBAGE_ONCE": "0",
    "FAKE_LSF_BKILL_HANG": "0",
}

# Knobs that count down: the value N makes the next N matching invocations misbehave (see Knobs.consume).
COUNTED = (
    "FAKE_LSF_DOWN",
    "FAKE_LSF_HANG",
    "FAKE_LSF_NONLSF_HOST",
    "FAKE_LSF_CONN_RESET",
    "FAKE_LSF_EMPTY_STDOUT_ONCE",
    "FAKE_LSF_SUBMIT_THEN_HANG",
    "FAKE_LSF_BJOBS_EMPTY",
    "FAKE_LSF_GARBAGE_ONCE",
    "FAKE_LSF_BKILL_HANG",
)


class EmulatorError(Exception):
    """The emulator itself is misconfigured (not an LSF answer); the message says which setting to fix."""


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    return json.dumps(value)


class Knobs:
    """Reads knobs for one state folder; ``knobs.json`` there overrides ``environ``."""

    def __init__(self, state_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self.file = Path(state_dir) / "knobs.json"
        self._environ = os.environ if environ is None else environ

    def overrides(self) -> dict[str, object]:
        """The contents of knobs.json ({} when absent)."""
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise EmulatorError(
                f"{self.file} is not valid JSON ({exc}); write an object of knob name -> value"
            ) from exc
        if not isinstance(data, dict):
            raise EmulatorError(f"{self.file} holds {type(data).__name__}; write an object of knob name -> value")
        return data

    def get(self, name: str) -> str:
        """The knob's value as text: knobs.json, else the environment, else the default ("" if none)."""
        overrides = self.overrides()
        if name in overrides and overrides[name] is not None:
            return _as_text(overrides[name])
        if name in self._environ:
            return self._environ[name]
        return DEFAULTS.get(name, "")

    def integer(self, name: str) -> int | None:
        """An integer knob; None when empty."""
        text = self.get(name).strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise EmulatorError(f"{name}={text!r} is not an integer; set a whole number or leave it empty") from None

    def number(self, name: str) -> float:
        """A number of seconds (float); 0 when empty."""
        text = self.get(name).strip()
        if not text:
            return 0.0
        try:
            return float(text)
        except ValueError:
            raise EmulatorError(f"{name}={text!r} is not a number; set seconds such as 0.5") from None

    def flag(self, name: str) -> bool:
        """A yes/no knob: 1, y, yes, true, on are yes."""
        return self.get(name).strip().lower() in {"1", "y", "yes", "true", "on"}

    def words(self, name: str) -> list[str]:
        """A comma- or space-separated list knob."""
        return [word for word in self.get(name).replace(",", " ").split() if word]
