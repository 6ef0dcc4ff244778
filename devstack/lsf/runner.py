"""Runs one real-mode job, detached from bsub: the emulator's sbatchd/res for that job.

bsub starts this in a new session with the job's environment and returns at once, so the job outlives bsub and
any timeout that kills it. The runner waits out the pending time, starts ``bash -c <command>`` in a process group
of its own (bkill signals that group), escalates SIGINT -> SIGTERM -> SIGKILL after a bkill, writes the job report
to the -o file and records the exit status. It ends when the job ends: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

from devstack.lsf.model import observe
from devstack.lsf.report import deliver_report
from devstack.lsf.state import Job, StateDir

POLL = 0.05


def spawn(state: StateDir, job: Job, env: dict[str, str]) -> int:
    """Start the runner for ``job`` detached (new session, no inherited pipes); returns its pid."""
    repo_root = str(Path(__file__).resolve().parents[2])
    bootstrap = (
        "import sys; sys.dont_write_bytecode = False; sys.path.insert(0, sys.argv[1]); "
        "from devstack.lsf.runner import main; main(sys.argv[2:])"
    )
    process = subprocess.Popen(
        [sys.executable, "-S", "-c", bootstrap, repo_root, str(state.root), str(job.id), repr(job.submit_time)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd="/",
        start_new_session=True,
        close_fds=True,
    )
    return process.pid


def main(argv: list[str]) -> None:
    """``runner <state dir> <job id> <submit time>``; the submit time guards against a reused id."""
    state = StateDir(Path(argv[0]))
    job_id, submitted = int(argv[1]), float(argv[2])
    try:
        run(state, job_id, submitted)
    except Exception as exc:
        (state.root / f"runner-{job_id}.error").write_text(f"{type(exc).__name__}: {exc}\n")
        state.update(job_id, _record_crash)


def _record_crash(job: Job) -> None:
    """The runner failed (e.g. the -o folder is not writable): the job ends EXIT 1 instead of pending for ever."""
    if job.finish_time is None:
        now = time.time()
        job.start_time = job.start_time or now
        _record_end(job, 1, now)


def _open_output(path: Path, append: bool) -> BinaryIO | None:
    """Open a job output file, creating its folder; None if that is not possible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab" if append else "wb")
    except OSError:
        return None


def _record_end(job: Job, status: int, at: float) -> None:
    job.exit_status = status
    job.finish_time = at


def _same_job(job: Job | None, submitted: float) -> bool:
    return job is not None and job.submit_time == submitted


def run(state: StateDir, job_id: int, submitted: float) -> None:
    """Pend, start, wait, report, record; gives up quietly if bkill came first or the id now names another job."""
    job = state.load(job_id)
    if not _same_job(job, submitted):
        return
    assert job is not None
    # Pending: wait, but stop waiting if bkill removed the job.
    deadline = job.submit_time + job.pend_seconds
    while time.time() < deadline:
        job = state.load(job_id)
        if not _same_job(job, submitted) or job is None or job.kill_time is not None:
            return
        time.sleep(min(POLL, max(0.0, deadline - time.time())))

    spool = state.spool_dir / f"{job_id}.out"
    direct = state.knobs.flag("FAKE_LSF_STDOUT_DIRECT") and job.out_path is not None
    process: subprocess.Popen[bytes] | None = None
    with state.locked():
        job = state.load(job_id)
        if not _same_job(job, submitted) or job is None or job.kill_time is not None:
            return
        out_target = Path(job.out_path) if direct and job.out_path else spool
        err_target = Path(job.err_path) if job.err_path else None
        cwd = job.cwd if os.path.isdir(job.cwd) else "/tmp"  # LSF's fallback when the CWD is not accessible
        env = dict(os.environ)
        env.update(
            {
                "LSB_JOBID": str(job.id),
                "LSB_JOBNAME": job.name,
                "LSB_QUEUE": job.queue,
                "LSB_JOBINDEX": "0",
                "LSB_HOSTS": " ".join([job.exec_host] * job.slots),
                "LSB_MCPU_HOSTS": f"{job.exec_host} {job.slots}",
                "LSB_DJOB_NUMPROC": str(job.slots),
                "LSB_OUTPUTFILE": job.out_path or "",
                "LSB_ERRORFILE": job.err_path or "",
                "LS_SUBCWD": job.cwd,
                "LS_EXECCWD": cwd,
            }
        )
        # An unwritable -o/-e loses that output, as on LSF; the job still runs.
        out_handle = _open_output(out_target, append=direct and not job.out_overwrite) or _open_output(spool, False)
        err_handle = _open_output(err_target, append=not job.err_overwrite) if err_target is not None else None
        if err_target is not None and err_handle is None:
            err_handle = open(os.devnull, "wb")  # noqa: SIM115 - closed right after Popen
        assert out_handle is not None
        with out_handle:
            process = subprocess.Popen(
                ["bash", "-c", job.command],
                stdin=subprocess.DEVNULL,
                stdout=out_handle,
                stderr=err_handle if err_handle is not None else subprocess.STDOUT,
                cwd=cwd,
                env=env,
                process_group=0,
            )
        if err_handle is not None:
            err_handle.close()
        job.start_time = time.time()
        job.job_pgid = process.pid
        job.runner_pid = os.getpid()
        state.save(job)

    status = _wait(state, job, process)
    finished = time.time()
    final = state.load(job_id)
    if final is None or not _same_job(final, submitted):
        return
    # The -o file is complete before bjobs can show DONE/EXIT, as sbatchd copies output before reporting the end.
    _record_end(final, status, finished)
    view = observe(final, finished, kill_delay=0)
    deliver_report(final, view, state.knobs.get("FAKE_LSF_CLUSTER"), None if direct else spool, state.mail_dir)
    spool.unlink(missing_ok=True)

    def record(job: Job) -> None:
        if _same_job(job, submitted):
            _record_end(job, status, finished)
            job.report_written = True

    state.update(job_id, record)


def _wait(state: StateDir, job: Job, process: subprocess.Popen[bytes]) -> int:
    """Wait for the job; enforce -W and carry out bkill's SIGTERM/SIGKILL escalation. Returns LSF's exit code."""
    runlimit_at = job.start_time + job.runlimit_minutes * 60 if job.runlimit_minutes and job.start_time else None
    escalated = 0
    last_check = 0.0
    while True:
        code = process.poll()
        if code is not None:
            # A job ended by a signal exits with 128 + the signal number, as LSF reports it.
            return 128 - code if code < 0 else code
        now = time.time()
        if now - last_check >= 0.2:
            last_check = now
            record = state.load(job.id)
            if record is not None and record.kill_time is not None and record.kill_kind != "signal":
                interval = state.knobs.number("FAKE_LSF_TERMINATE_INTERVAL")
                steps = (signal.SIGTERM, signal.SIGKILL)
                while escalated < len(steps) and now >= record.kill_time + interval * (escalated + 1):
                    _signal_group(process.pid, steps[escalated])
                    escalated += 1
            if runlimit_at is not None and now >= runlimit_at and record is not None and not record.runlimit_hit:
                state.update(job.id, lambda r: setattr(r, "runlimit_hit", True))
                _signal_group(process.pid, signal.SIGUSR2)
        time.sleep(POLL)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
