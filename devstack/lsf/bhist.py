"""bhist: job history, which outlives CLEAN_PERIOD. Formats as in docs/lsf-behaviour.md A.4."""

from __future__ import annotations

from devstack.lsf.cli import LSF_ERROR, Context
from devstack.lsf.common import name_matches, parse_job_id, take_options, view_of
from devstack.lsf.model import View
from devstack.lsf.report import event_time, wrap_lsf
from devstack.lsf.state import Job

VALUE_OPTIONS = {"-n", "-J", "-u", "-q", "-P", "-f", "-C", "-D", "-S", "-T", "-m", "-N"}
FLAG_OPTIONS = {"-l", "-a", "-d", "-p", "-r", "-s", "-w", "-b", "-e", "-t", "-UF"}
SUMMARY_STATES = ("PEND", "PSUSP", "RUN", "USUSP", "SSUSP", "UNKWN")
# bhist -l line for entering a state after the first dispatch.
TRANSITIONS = {
    "USUSP": "Suspended by the user or administrator;",
    "SSUSP": "Suspended: the load on the execution host is too high;",
    "PSUSP": "Suspended by the user or administrator while pending;",
    "UNKWN": "Unknown; unable to reach the execution host;",
    "ZOMBI": "Job is in zombie state;",
    "RUN": "Running;",
    "PEND": "Job has been requeued;",
}


def _seconds(view: View, now: float) -> dict[str, int]:
    totals = dict.fromkeys(SUMMARY_STATES, 0.0)
    for state, start, end in view.timeline:
        if state in totals:
            totals[state] += max(0.0, (end if end is not None else now) - start)
    return {state: round(value) for state, value in totals.items()}


def _short(ctx: Context, rows: list[tuple[Job, View]]) -> list[str]:
    lines = [
        "Summary of time in seconds spent in various states:",
        "JOBID   USER    JOB_NAME  PEND    PSUSP   RUN     USUSP   SSUSP   UNKWN   TOTAL",
    ]
    for job, view in rows:
        seconds = _seconds(view, ctx.now)
        name = job.name if len(job.name) <= 8 else "*" + job.name[-7:]
        cells = [str(job.id), job.user[:7], name] + [str(seconds[state]) for state in SUMMARY_STATES]
        cells.append(str(sum(seconds.values())))
        lines.append(f"{cells[0]:<7} {cells[1]:<7} {cells[2]:<9} " + " ".join(f"{cell:<7}" for cell in cells[3:]))
    return lines


def _long(ctx: Context, job: Job, view: View) -> list[str]:
    lines = [
        "",
        wrap_lsf(
            f"Job <{job.id}>, Job Name <{job.name}>, User <{job.user}>, Project <{job.project}>, "
            f"Command <{job.command}>"
        ),
        wrap_lsf(
            f"{event_time(job.submit_time)}: Submitted from host <{job.submit_host}>, to Queue <{job.queue}>, "
            f"CWD <{job.cwd}>" + (f", Output File <{job.out_path}>" if job.out_path else "") + ";"
        ),
    ]
    dispatched = False
    for index, (state, start, _) in enumerate(view.timeline):
        if index == 0 and state == "PEND":
            continue
        if state == "RUN" and not dispatched:
            dispatched = True
            hosts = f"{job.slots}*{job.exec_host}" if job.slots > 1 else job.exec_host
            lines.append(
                wrap_lsf(
                    f"{event_time(start)}: Dispatched {job.slots} Task(s) on Host(s) <{hosts}>, "
                    f"Allocated {job.slots} Slot(s) on Host(s) <{hosts}>, Effective RES_REQ <select[type == any] "
                    "order[r15s:pg] >;"
                )
            )
            lines.append(f"{event_time(start)}: Starting (Pid {job.job_pgid or 0});")
            continue
        lines.append(wrap_lsf(f"{event_time(start)}: {TRANSITIONS.get(state, state + ';')}"))
    if job.kill_time is not None:
        lines.append(
            wrap_lsf(f"{event_time(job.kill_time)}: Signal <KILL> requested by user or administrator <{job.user}>;")
        )
    if view.finished and view.finish_time is not None:
        cpu = 0.0 if view.start_time is None else round(max(0.0, view.finish_time - view.start_time) / 10, 1)
        when = event_time(view.finish_time)
        if view.stat == "DONE":
            lines.append(wrap_lsf(f"{when}: Done successfully. The CPU time used is {cpu} seconds."))
        elif view.exit_code is not None:
            lines.append(
                wrap_lsf(f"{when}: Exited with exit code {view.exit_code}. The CPU time used is {cpu} seconds.")
            )
        else:
            lines.append(
                wrap_lsf(
                    f"{when}: Exited; job has been forced to exit with exit code 2. The CPU time used is {cpu} seconds."
                )
            )
        if view.exit_reason:
            lines.append(wrap_lsf(f"{when}: Completed <exit>; {view.exit_reason}."))
        elif view.stat == "DONE":
            lines.append(f"{when}: Post job process done successfully;")
    seconds = _seconds(view, ctx.now)
    lines += [
        "",
        f"Summary of time in seconds spent in various states by  {event_time(view.finish_time or ctx.now)}",
        "  " + "".join(f"{state:<9}" for state in (*SUMMARY_STATES, "TOTAL")).rstrip(),
        "  " + "".join(f"{value:<9}" for value in (*seconds.values(), sum(seconds.values()))).rstrip(),
    ]
    return lines


def _job_ids(operands: list[str]) -> tuple[list[int], str | None]:
    """The job ids the operands name (0 included), or the first operand that is not a job id."""
    ids: list[int] = []
    for operand in operands:
        job_id = parse_job_id(operand)
        if job_id is None:
            return ids, operand
        ids.append(job_id)
    return ids, None


def _shown(options: dict[str, list[str]], by_id: bool, job: Job, view: View) -> bool:
    """Whether the job is listed: without ids only unfinished jobs (-a adds finished ones, -d keeps only those); -J."""
    if not by_id:
        if "-a" not in options and "-d" not in options and view.finished:
            return False
        if "-d" in options and not view.finished:
            return False
    return "-J" not in options or name_matches(options["-J"][-1], job.name)


def _rows(ctx: Context, options: dict[str, list[str]], ids: list[int]) -> list[tuple[Job, View]]:
    """The jobs to report and their views: the given ids, else every job, filtered; none if bhist knows no jobs."""
    rows: list[tuple[Job, View]] = []
    if not ctx.knobs.flag("FAKE_LSF_BHIST_KNOWS"):
        return rows
    if ids:
        jobs = [job for job in (ctx.state.load(job_id) for job_id in ids) if job is not None]
    else:
        jobs = ctx.state.all_jobs()
    for job in jobs:
        view = view_of(ctx, job)
        if _shown(options, bool(ids), job, view):
            rows.append((job, view))
    return rows


def _long_blocks(ctx: Context, rows: list[tuple[Job, View]]) -> list[str]:
    """The ``-l`` output: each job's block, with a line of dashes between two jobs."""
    lines: list[str] = []
    for job, view in rows:
        lines += _long(ctx, job, view)
        lines.append("-" * 78)
    return lines[:-1]


def run(ctx: Context, args: list[str]) -> int:
    """History of the given jobs, short table or ``-l``; ``No matching job found`` on stdout, 255, if none."""
    options, operands, error = take_options(args, VALUE_OPTIONS, FLAG_OPTIONS, "bhist")
    if error:
        ctx.err(error)
        return LSF_ERROR
    ids, bad_operand = _job_ids(operands)
    if bad_operand is not None:
        ctx.err(f"{bad_operand}: Illegal job ID.")
        return LSF_ERROR
    rows = _rows(ctx, options, ids)
    if not rows:
        ctx.out("No matching job found")
        return LSF_ERROR
    lines = _long_blocks(ctx, rows) if "-l" in options else _short(ctx, rows)
    for line in lines:
        ctx.out(line)
    return 0
