"""bkill: kill or signal jobs. Messages and exit codes as in docs/lsf-behaviour.md A.3."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from devstack.lsf.cli import LSF_ERROR, Context, hang
from devstack.lsf.common import known_job, name_matches, parse_job_id, signal_number, take_options, view_of
from devstack.lsf.model import PENDING_STATES
from devstack.lsf.state import Job

VALUE_OPTIONS = {"-s", "-J", "-C", "-q", "-u", "-m", "-g", "-sla", "-app"}
FLAG_OPTIONS = {"-r", "-d", "-b", "-l", "-stat"}
USAGE = "Usage: bkill [-h] [-V] [-l] [-b] [-r | -s sig_value | -d] [-C kill_reason] [-J job_name] [jobId ...]"


def _signal_group(pgid: int | None, signum: int) -> None:
    if pgid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _kill_one(ctx: Context, job_id: int, options: dict[str, list[str]], signum: int | None) -> bool:
    """Kill or signal one job; print LSF's line for it; True on success."""
    found = known_job(ctx, job_id)
    if found is None:
        ctx.err(f"Job <{job_id}>: No matching job found")
        return False
    job, view = found
    if view.finished:
        ctx.err(f"Job <{job_id}>: Job has already finished")
        return False
    if signum is not None:
        if view.stat in PENDING_STATES and signum not in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
            ctx.err(f"Job <{job_id}>: Job has not started yet")
            return False
        terminating = signum in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)
        if job.mode == "real" and job.start_time is not None:
            _signal_group(job.job_pgid, signum)
        elif terminating:
            # No process to signal (pending, or a scripted job): the signal ends the job as it would a process.
            _record_kill(ctx, job, "signal", signum)
        ctx.out(f"Job <{job_id}> is being signaled")
        return True
    kind = "force" if "-r" in options else ("done" if "-d" in options else "owner")
    _record_kill(ctx, job, kind, None)
    if job.mode == "real":
        current = ctx.state.load(job_id)
        if current is not None and current.start_time is not None:
            # LSF sends SIGINT now; the runner follows with SIGTERM and SIGKILL, FAKE_LSF_TERMINATE_INTERVAL apart.
            _signal_group(current.job_pgid, signal.SIGKILL if kind == "force" else signal.SIGINT)
    ctx.out(f"Job <{job_id}> is being terminated")
    return True


def _record_kill(ctx: Context, job: Job, kind: str, signum: int | None) -> None:
    def change(record: Job) -> None:
        if record.submit_time == job.submit_time and record.kill_time is None:
            record.kill_time = time.time()
            record.kill_kind = kind
            record.kill_signal = signum

    ctx.state.update(job.id, change)


def _signal_option(options: dict[str, list[str]]) -> tuple[int | None, str | None]:
    """The signal number -s asks for (None without -s), or LSF's error for a signal it does not know."""
    if "-s" not in options:
        return None, None
    signum = signal_number(options["-s"][-1])
    if signum is None:
        return None, f"{options['-s'][-1]}: Illegal signal value"
    return signum, None


def _job_ids(ctx: Context, options: dict[str, list[str]], operands: list[str]) -> tuple[list[int], str | None]:
    """The ids to kill: the operands (0: every unfinished job), then the unfinished jobs -J names; or LSF's error."""
    ids: list[int] = []
    for operand in operands:
        job_id = parse_job_id(operand)
        if job_id is None:
            return ids, f"{operand}: Illegal job ID."
        if job_id == 0:
            ids += [job.id for job in ctx.state.all_jobs() if not view_of(ctx, job).finished]
        else:
            ids.append(job_id)
    if "-J" in options:
        pattern = options["-J"][-1]
        named = [job.id for job in ctx.state.all_jobs() if name_matches(pattern, job.name)]
        named = [job_id for job_id in named if (found := known_job(ctx, job_id)) and not found[1].finished]
        if not named and not ids:
            return ids, f"Job <{pattern}>: No matching job found"
        ids += named
    if not ids:
        return ids, USAGE
    return ids, None


def run(ctx: Context, args: list[str]) -> int:
    """Kill the given jobs (or those named by -J, or all with id 0); 255 if any could not be killed."""
    if ctx.state.consume("FAKE_LSF_BKILL_HANG"):
        return hang(ctx)
    # A slow mbatchd: the request reaches it only after the delay (a bkill killed before then kills nothing).
    time.sleep(ctx.knobs.number("FAKE_LSF_BKILL_DELAY"))
    options, operands, error = take_options(args, VALUE_OPTIONS, FLAG_OPTIONS, "bkill")
    if error:
        ctx.err(f"{error}\n{USAGE}")
        return LSF_ERROR
    if "-d" in options and not ctx.knobs.flag("FAKE_LSF_BKILL_D_SUPPORTED"):
        ctx.err(f"bkill: Illegal option -- d\n{USAGE}")
        return LSF_ERROR
    signum, error = _signal_option(options)
    if error:
        ctx.err(error)
        return LSF_ERROR
    ids, error = _job_ids(ctx, options, operands)
    if error:
        ctx.err(error)
        return LSF_ERROR
    ok = True
    for job_id in dict.fromkeys(ids):
        ok = _kill_one(ctx, job_id, options, signum) and ok
    return 0 if ok else LSF_ERROR
