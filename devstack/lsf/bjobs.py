"""bjobs: show jobs. Output forms, messages and exit codes as in docs/lsf-behaviour.md A.2."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from devstack.lsf.cli import LSF_ERROR, Context
from devstack.lsf.common import name_matches, parse_job_id, take_options, view_of, visible
from devstack.lsf.model import PENDING_STATES, View
from devstack.lsf.report import event_time, short_time, wrap_lsf
from devstack.lsf.state import Job

VALUE_OPTIONS = {"-o", "-J", "-u", "-q", "-P", "-m", "-g", "-app", "-G", "-sla", "-Lp"}
FLAG_OPTIONS = {"-noheader", "-json", "-a", "-d", "-p", "-r", "-s", "-w", "-l", "-W", "-x", "-X", "-A", "-N", "-UF"}
USAGE = "Usage: bjobs [-h] [-V] [-w |-l] [-a] [-d] [-p] [-r] [-s] [-J job_name] [-o format] [-json] [jobId ...]"
# (job, view) for a job found, or the id of one that is not found.
_Result = tuple[Job, View] | int


def _exec_host(job: Job, view: View) -> str:
    if view.start_time is None:
        return ""
    return f"{job.slots}*{job.exec_host}" if job.slots > 1 else job.exec_host


def _run_time(job: Job, view: View, now: float) -> str:
    if view.start_time is None:
        return "0 second(s)"
    end = view.finish_time if view.finish_time is not None else now
    return f"{round(end - view.start_time)} second(s)"


def field_getters(now: float) -> dict[str, Callable[[Job, View], str]]:
    """The getter of each bjobs -o field name: its value as text ("" when empty or not applicable)."""
    return {
        "jobid": lambda job, view: str(job.id),
        "stat": lambda job, view: view.stat,
        "exit_code": lambda job, view: "" if view.exit_code is None else str(view.exit_code),
        "exit_reason": lambda job, view: view.exit_reason,
        "job_name": lambda job, view: job.name,
        "name": lambda job, view: job.name,
        "proj_name": lambda job, view: job.project,
        "project": lambda job, view: job.project,
        "queue": lambda job, view: job.queue,
        "user": lambda job, view: job.user,
        "pend_reason": lambda job, view: view.pend_reason,
        "exec_host": _exec_host,
        "from_host": lambda job, view: job.submit_host,
        "submit_time": lambda job, view: short_time(job.submit_time),
        "start_time": lambda job, view: short_time(view.start_time),
        "finish_time": lambda job, view: short_time(view.finish_time, " L"),
        "command": lambda job, view: job.command,
        "cwd": lambda job, view: job.cwd,
        "output_file": lambda job, view: job.out_path or "",
        "error_file": lambda job, view: job.err_path or "",
        "slots": lambda job, view: str(job.slots),
        "nalloc_slot": lambda job, view: str(job.slots) if view.start_time is not None else "",
        "run_time": lambda job, view: _run_time(job, view, now),
        "runtimelimit": lambda job, view: f"{job.runlimit_minutes:.1f}" if job.runlimit_minutes else "",
        "memlimit": lambda job, view: job.mem_limit,
        "max_mem": lambda job, view: "1 Mbytes" if view.start_time is not None else "",
        "pids": lambda job, view: str(job.job_pgid or "") if view.stat == "RUN" else "",
    }


def parse_format(spec: str) -> tuple[list[str], str | None]:
    """``"jobid stat:8 delimiter='^'"`` -> (field names, delimiter or None). Widths are accepted and ignored."""
    delimiter = None
    match = re.search(r"delimiter=(['\"])(.*?)\1", spec)
    if match:
        delimiter = match.group(2)
        spec = spec[: match.start()] + spec[match.end() :]
    names = [word.split(":", 1)[0].lower() for word in spec.split()]
    return names, delimiter


def _state_matches(options: dict[str, list[str]], view: View) -> bool:
    """The state filters: unfinished by default, -a adds finished, -d only finished; -p, -r, -s narrow further."""
    if "-d" in options and not view.finished:
        return False
    if "-a" not in options and "-d" not in options and view.finished:
        return False
    if "-p" in options and view.stat not in PENDING_STATES:
        return False
    if "-r" in options and view.stat != "RUN":
        return False
    return not ("-s" in options and view.stat not in {"USUSP", "SSUSP", "PSUSP"})


def _attributes_match(options: dict[str, list[str]], job: Job) -> bool:
    """The -J (name, ``*`` allowed), -q (queue) and -P (project) filters."""
    if "-J" in options and not name_matches(options["-J"][-1], job.name):
        return False
    if "-q" in options and job.queue != options["-q"][-1]:
        return False
    return not ("-P" in options and job.project != options["-P"][-1])


def _select(ctx: Context, options: dict[str, list[str]]) -> list[tuple[Job, View]]:
    """Jobs for a query without ids: unfinished by default, -a adds finished, -d only finished, then filters."""
    chosen = []
    for job in ctx.state.all_jobs():
        view = view_of(ctx, job)
        if visible(ctx, job, view) and _state_matches(options, view) and _attributes_match(options, job):
            chosen.append((job, view))
    return chosen


def _nothing_found(options: dict[str, list[str]]) -> str:
    if "-J" in options:
        return f"Job <{options['-J'][-1]}> is not found"
    if "-a" in options:
        return "No job found"
    if any(flag in options for flag in ("-d", "-p", "-r", "-s", "-q", "-P")):
        return "No matching job found"
    return "No unfinished job found"


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else "*" + text[-(width - 1) :]


def _table(rows: list[tuple[Job, View]], wide: bool, header: bool) -> list[str]:
    """The default bjobs table (do not parse it; it is here for people)."""
    lines = []
    if header:
        lines.append(
            f"{'JOBID':<7} {'USER':<7} {'STAT':<5} {'QUEUE':<10} {'FROM_HOST':<11} {'EXEC_HOST':<11} "
            f"{'JOB_NAME':<10} SUBMIT_TIME"
        )
    for job, view in rows:
        cells = [str(job.id), job.user, view.stat, job.queue, job.submit_host, _exec_host(job, view), job.name]
        if not wide:
            # JOBID beyond 7 characters and long names are cut on the left, marked with "*".
            widths = (7, 7, 5, 10, 11, 11, 10)
            cells = [_truncate(cell, width) for cell, width in zip(cells, widths, strict=True)]
        jobid, user, stat, queue, from_host, exec_host, name = cells
        lines.append(
            f"{jobid:<7} {user:<7} {stat:<5} {queue:<10} {from_host:<11} {exec_host:<11} {name:<10} "
            f"{short_time(job.submit_time)}"
        )
    return lines


def _long(job: Job, view: View) -> list[str]:
    """A minimal ``bjobs -l`` block, wrapped like LSF's."""
    lines = [
        "",
        wrap_lsf(
            f"Job <{job.id}>, Job Name <{job.name}>, User <{job.user}>, Project <{job.project}>, "
            f"Status <{view.stat}>, Queue <{job.queue}>, Command <{job.command}>"
        ),
        wrap_lsf(
            f"{event_time(job.submit_time)}: Submitted from host <{job.submit_host}>, CWD <{job.cwd}>"
            + (f", Output File <{job.out_path}>" if job.out_path else "")
            + (f", {job.slots} Task(s)" if job.slots > 1 else "")
            + ";"
        ),
    ]
    if view.stat in PENDING_STATES:
        lines += [" PENDING REASONS:", f" {view.pend_reason};"]
    if view.start_time is not None:
        lines.append(
            wrap_lsf(f"{event_time(view.start_time)}: Started 1 Task(s) on Host(s) <{_exec_host(job, view)}>;")
        )
    if view.finished and view.finish_time is not None:
        if view.stat == "DONE":
            lines.append(f"{event_time(view.finish_time)}: Done successfully. The CPU time used is 0.0 seconds.")
        else:
            code = f" with exit code {view.exit_code}" if view.exit_code is not None else ""
            lines.append(f"{event_time(view.finish_time)}: Exited{code}. The CPU time used is 0.0 seconds.")
            if view.exit_reason:
                lines.append(wrap_lsf(f"{event_time(view.finish_time)}: Completed <exit>; {view.exit_reason}."))
    return lines


def _json_error(options: dict[str, list[str]]) -> str | None:
    """LSF's complaint when -json comes without -o or with -noheader; None when the options go together."""
    if "-json" in options and "-o" not in options:
        return "bjobs: The -json option must be used together with the -o option."
    if "-json" in options and "-noheader" in options:
        return "bjobs: The -json option cannot be used together with the -noheader option."
    return None


def _job_ids(operands: list[str]) -> tuple[list[int], str | None]:
    """The job ids the operands name (0, meaning all, left out), or the first operand that is not a job id."""
    ids: list[int] = []
    for operand in operands:
        job_id = parse_job_id(operand)
        if job_id is None:
            return ids, operand
        if job_id != 0:
            ids.append(job_id)
    return ids, None


def _lookup(ctx: Context, ids: list[int], options: dict[str, list[str]]) -> list[_Result]:
    """Each id's (job, view), or the id when mbatchd does not know it, in command-line order; no ids: a query."""
    if not ids:
        return list(_select(ctx, options))
    results: list[_Result] = []
    for job_id in ids:
        job = ctx.state.load(job_id)
        view = view_of(ctx, job) if job is not None else None
        if job is None or view is None or not visible(ctx, job, view):
            results.append(job_id)
        else:
            results.append((job, view))
    return results


def _not_found_record(ctx: Context, job_id: int) -> dict[str, str]:
    """The -json record of an unknown id: ``ERROR``, after ``JOBID`` when FAKE_LSF_ERROR_WITH_JOBID is set."""
    record = {"ERROR": f"Job <{job_id}> is not found"}
    if ctx.knobs.flag("FAKE_LSF_ERROR_WITH_JOBID"):
        record = {"JOBID": str(job_id), **record}
    return record


def _json_lines(
    ctx: Context, results: list[_Result], names: list[str], getters: dict[str, Callable[[Job, View], str]]
) -> list[str]:
    """The -o -json document, a record per result (unknown ids included); no lines when there is none."""
    records: list[dict[str, str]] = []
    for item in results:
        if isinstance(item, int):
            records.append(_not_found_record(ctx, item))
        else:
            job, view = item
            records.append({name.upper(): getters[name](job, view) for name in names})
    if not records:
        return []
    return json.dumps(
        {"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=2, separators=(",", ":")
    ).splitlines()


def _delimited_lines(
    options: dict[str, list[str]],
    found: list[tuple[Job, View]],
    names: list[str],
    getters: dict[str, Callable[[Job, View], str]],
    delimiter: str | None,
) -> list[str]:
    """The -o text: a header line (unless -noheader or no job), then a line per job with ``-`` for empty values."""
    separator = delimiter if delimiter is not None else " "
    lines = []
    if found and "-noheader" not in options:
        lines.append(separator.join(name.upper() for name in names))
    for job, view in found:
        lines.append(separator.join(getters[name](job, view) or "-" for name in names))
    return lines


def _format_lines(
    ctx: Context, options: dict[str, list[str]], results: list[_Result], found: list[tuple[Job, View]]
) -> tuple[list[str], str | None]:
    """The -o output, JSON or text; or LSF's error for an unknown (or no) field name."""
    names, delimiter = parse_format(options["-o"][-1])
    getters = field_getters(ctx.now)
    unknown = [name for name in names if name not in getters]
    if unknown or not names:
        return [], f"{' '.join(unknown) or '(none)'}: Illegal field name in the -o option."
    if "-json" in options:
        return _json_lines(ctx, results, names, getters), None
    return _delimited_lines(options, found, names, getters, delimiter), None


def _output_lines(
    ctx: Context, options: dict[str, list[str]], results: list[_Result], found: list[tuple[Job, View]]
) -> tuple[list[str], str | None]:
    """The stdout lines in the form asked for (-o, -l or the table); or the -o error."""
    if "-o" in options:
        return _format_lines(ctx, options, results, found)
    if "-l" in options:
        lines: list[str] = []
        for job, view in found:
            lines += _long(job, view)
        return lines, None
    return _table(found, "-w" in options, "-noheader" not in options and bool(found)), None


def _report_not_found(
    ctx: Context, options: dict[str, list[str]], ids: list[int], found: list[tuple[Job, View]], missing: list[int]
) -> int:
    """Print what was not found on stderr (-o -json has it in its records already); the exit code."""
    if not ("-json" in options and "-o" in options):
        for job_id in missing:
            ctx.err(f"Job <{job_id}> is not found")
    if not ids and not found:
        ctx.err(_nothing_found(options))
        return ctx.knobs.integer("FAKE_LSF_NOTFOUND_RC") or 0
    if missing:
        # ert: a lone unknown id exits 0 on real clusters (knob), a mix of found and unknown exits 255.
        return LSF_ERROR if found else (ctx.knobs.integer("FAKE_LSF_NOTFOUND_RC") or 0)
    return 0


def run(ctx: Context, args: list[str]) -> int:
    """List jobs; unknown ids reported on stderr (or as JSON ERROR records)."""
    options, operands, error = take_options(args, VALUE_OPTIONS, FLAG_OPTIONS, "bjobs")
    if error:
        ctx.err(error)
        ctx.err(USAGE)
        return LSF_ERROR
    error = _json_error(options)
    if error:
        ctx.err(error)
        return LSF_ERROR
    ids, bad_operand = _job_ids(operands)
    if bad_operand is not None:
        ctx.err(f"{bad_operand}: Illegal job ID.")
        return LSF_ERROR

    results = _lookup(ctx, ids, options)
    found: list[tuple[Job, View]] = [item for item in results if not isinstance(item, int)]
    missing = [item for item in results if isinstance(item, int)]
    if ctx.state.consume("FAKE_LSF_BJOBS_EMPTY"):
        return 0  # Nextflow #910: nothing at all on stdout, exit 0

    lines, error = _output_lines(ctx, options, results, found)
    if error:
        ctx.err(error)
        return LSF_ERROR
    if lines and ctx.state.consume("FAKE_LSF_GARBAGE_ONCE"):
        text = "\n".join(lines)
        ctx.stdout.write(text[: max(1, len(text) // 2)])  # cut mid-record, no final newline
        return 0
    for line in lines:
        ctx.out(line)
    return _report_not_found(ctx, options, ids, found, missing)
