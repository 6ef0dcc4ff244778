"""The emulator's state folder: one JSON file per job, a lock, the id counter, fault counters and the call log.

Layout of ``$FAKE_LSF_DIR``::

    jobs/<id>.json    one job (``Job``); rewritten atomically, so readers never need the lock
    lock              flock()ed around every read-modify-write (id counter, job updates, fault counters)
    next_id           the next job id to hand out
    counters.json     how much of each counted fault knob has been used up
    knobs.json        optional knob overrides (see knobs.py)
    calls.log         one JSON line per command invocation: argv, time, rc
    spool/<id>.out    job output while it runs (LSB_STDOUT_DIRECT unset)
    mail/<id>         the job report of jobs submitted without -o (LSF would mail it)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devstack.lsf.knobs import COUNTED, EmulatorError, Knobs

STATE_ENV = "FAKE_LSF_DIR"


@dataclass
class Job:
    """One submitted job as mbatchd would remember it. Times are epoch seconds."""

    id: int
    name: str
    user: str
    queue: str
    project: str
    command: str
    cwd: str
    submit_time: float
    submit_host: str
    exec_host: str
    slots: int = 1
    runlimit_minutes: int | None = None
    mem_limit: str = ""
    resources: list[str] = field(default_factory=list)
    out_path: str | None = None
    err_path: str | None = None
    out_overwrite: bool = False
    err_overwrite: bool = False
    # "real" runs the command; "scripted" follows ``plan``; "held" (bsub -H) stays PSUSP until killed.
    mode: str = "real"
    plan: list[dict[str, object]] | None = None
    pend_seconds: float = 0.0
    # Filled in by the runner (real mode).
    runner_pid: int | None = None
    job_pgid: int | None = None
    start_time: float | None = None
    finish_time: float | None = None
    exit_status: int | None = None
    runlimit_hit: bool = False
    # Filled in by bkill: kind is "owner" (plain bkill), "force" (-r), "done" (-d) or "signal" (-s).
    kill_time: float | None = None
    kill_kind: str | None = None
    kill_signal: int | None = None
    report_written: bool = False

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Job:
        """A Job from its stored JSON; unknown keys (from another emulator version) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})  # type: ignore[arg-type]


def state_dir_from_env(environ: dict[str, str] | None = None) -> Path:
    """``$FAKE_LSF_DIR``, created if missing; a clear error when unset."""
    env = os.environ if environ is None else environ
    value = env.get(STATE_ENV, "").strip()
    if not value:
        raise EmulatorError(
            f"{STATE_ENV} is not set: export {STATE_ENV}=<a writable folder> for the LSF emulator's state "
            "(devstack/lsf/README.md), or use devstack.lsf.Emulator(folder).env()"
        )
    # Absolute: the runner works from / and every command may run in another folder.
    return Path(value).absolute()


class StateDir:
    """Access to one state folder; every mutation goes through ``locked()``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.spool_dir = self.root / "spool"
        self.mail_dir = self.root / "mail"
        self.calls_log = self.root / "calls.log"
        try:
            for folder in (self.root, self.jobs_dir, self.spool_dir, self.mail_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmulatorError(f"cannot create the LSF emulator state folder {self.root}: {exc}") from exc
        self.knobs = Knobs(self.root)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state folder's lock (an flock, released if the process dies)."""
        with open(self.root / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- jobs ---------------------------------------------------------------------------------------------------

    def job_path(self, job_id: int) -> Path:
        """Where the job's record lives."""
        return self.jobs_dir / f"{job_id}.json"

    def load(self, job_id: int) -> Job | None:
        """The job with this id, or None if it was never submitted (or its file is gone)."""
        try:
            return Job.from_json(json.loads(self.job_path(job_id).read_text()))
        except FileNotFoundError:
            return None

    def save(self, job: Job) -> None:
        """Write atomically (temp file + rename): readers see the old or the new record, never half of one."""
        _write_atomic(self.job_path(job.id), json.dumps(dataclasses.asdict(job), indent=1))

    def update(self, job_id: int, change: Callable[[Job], None]) -> Job | None:
        """Apply ``change`` to the stored job under the lock and save it; None if the job is gone."""
        with self.locked():
            job = self.load(job_id)
            if job is None:
                return None
            change(job)
            self.save(job)
            return job

    def all_jobs(self) -> list[Job]:
        """Every stored job, by id."""
        jobs = []
        for path in self.jobs_dir.glob("*.json"):
            try:
                jobs.append(Job.from_json(json.loads(path.read_text())))
            except (FileNotFoundError, json.JSONDecodeError):
                continue
        return sorted(jobs, key=lambda job: job.id)

    def allocate_id(self, in_system: Callable[[int], bool]) -> int:
        """The next job id; call with the lock held.

        Ids run up from FAKE_LSF_FIRST_ID. Past FAKE_LSF_MAX_JOBID they roll over, skipping ids still in the system
        as LSF does. Real LSF rolls over to 1; the emulator rolls over to FAKE_LSF_FIRST_ID so that a test of id
        reuse keeps its large ids.
        """
        first = self.knobs.integer("FAKE_LSF_FIRST_ID") or 1
        top = self.knobs.integer("FAKE_LSF_MAX_JOBID")
        counter = self.root / "next_id"
        try:
            candidate = int(counter.read_text().strip())
        except (FileNotFoundError, ValueError):
            candidate = first
        span = (top - first + 1) if top is not None else None
        if span is not None and span < 1:
            raise EmulatorError(f"FAKE_LSF_MAX_JOBID={top} is below FAKE_LSF_FIRST_ID={first}; raise it or unset it")
        for _ in range(span or 1):
            if top is not None and (candidate > top or candidate < first):
                candidate = first
            if top is None or not in_system(candidate):
                _write_atomic(counter, str(candidate + 1))
                return candidate
            candidate += 1
        raise EmulatorError(
            f"every job id from {first} to {top} is still in the system; raise FAKE_LSF_MAX_JOBID "
            "or lower FAKE_LSF_CLEAN_PERIOD"
        )

    # --- counted fault knobs ------------------------------------------------------------------------------------

    def consume(self, knob: str) -> bool:
        """True if the counted fault ``knob`` still has uses left, using one up.

        The count restarts whenever the knob's value changes, so setting FAKE_LSF_DOWN=2 again after it was used up
        needs a different value or ``reset_counters`` (Emulator.set_knobs does that).
        """
        if knob not in COUNTED:
            raise EmulatorError(f"{knob} is not a counted fault knob (those are {', '.join(COUNTED)})")
        raw = self.knobs.get(knob).strip()
        limit = self.knobs.integer(knob) or 0
        if limit <= 0:
            return False
        with self.locked():
            counters = self._counters()
            entry = counters.get(knob)
            if not isinstance(entry, dict) or entry.get("of") != raw:
                entry = {"of": raw, "used": 0}
            used = int(str(entry.get("used", 0)))
            if used >= limit:
                return False
            entry["used"] = used + 1
            counters[knob] = entry
            _write_atomic(self.root / "counters.json", json.dumps(counters))
            return True

    def reset_counters(self, knobs: list[str] | None = None) -> None:
        """Forget how much of these counted knobs (all if None) was used up."""
        with self.locked():
            counters = self._counters()
            for name in list(counters):
                if knobs is None or name in knobs:
                    del counters[name]
            _write_atomic(self.root / "counters.json", json.dumps(counters))

    def _counters(self) -> dict[str, object]:
        try:
            data = json.loads((self.root / "counters.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    # --- call log -----------------------------------------------------------------------------------------------

    def log_call(self, argv: list[str], started: float, rc: int | None) -> None:
        """Append one line; a single O_APPEND write, so concurrent commands do not interleave."""
        line = json.dumps({"argv": argv, "time": started, "rc": rc, "pid": os.getpid()}) + "\n"
        fd = os.open(self.calls_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
