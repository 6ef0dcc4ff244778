"""Helpers the commands share: looking jobs up the way mbatchd would, and option parsing."""

from __future__ import annotations

import re
import signal

from devstack.lsf.cli import Context
from devstack.lsf.model import View, observe, parse_unknown
from devstack.lsf.report import deliver_report
from devstack.lsf.state import Job, StateDir


def view_of(ctx: Context, job: Job) -> View:
    """The job's state now; a scripted job that has just reached its end gets its -o report written once."""
    unknown = parse_unknown(ctx.knobs.get("FAKE_LSF_UNKWN_AFTER"))
    view = observe(job, ctx.now, ctx.knobs.number("FAKE_LSF_KILL_DELAY"), unknown)
    if view.finished and not job.report_written and job.mode != "real":
        _write_scripted_report(ctx.state, job, view)
    return view


def _write_scripted_report(state: StateDir, job: Job, view: View) -> None:
    claimed: list[bool] = []

    def claim(record: Job) -> None:
        if not record.report_written and record.submit_time == job.submit_time:
            record.report_written = True
            claimed.append(True)

    state.update(job.id, claim)
    if claimed:
        empty_spool = state.spool_dir / f"{job.id}.none"
        deliver_report(job, view, state.knobs.get("FAKE_LSF_CLUSTER"), empty_spool, state.mail_dir)


def visible(ctx: Context, job: Job, view: View) -> bool:
    """True when bjobs and bkill find the job: ``in_system``, and older than FAKE_LSF_QUERY_LAG seconds.

    For its first FAKE_LSF_QUERY_LAG seconds a job is accepted but not yet known to queries (mbatchd lag on a busy
    cluster); its id is already taken.
    """
    return ctx.now - job.submit_time >= ctx.knobs.number("FAKE_LSF_QUERY_LAG") and in_system(ctx, job, view)


def in_system(ctx: Context, job: Job, view: View) -> bool:
    """True while mbatchd still knows the job: unfinished, or finished less than FAKE_LSF_CLEAN_PERIOD seconds ago."""
    if not view.finished or view.finish_time is None:
        return True
    return ctx.now - view.finish_time < ctx.knobs.number("FAKE_LSF_CLEAN_PERIOD")


def known_job(ctx: Context, job_id: int) -> tuple[Job, View] | None:
    """The job and its view if bjobs/bkill would find it (submitted and not cleaned), else None."""
    job = ctx.state.load(job_id)
    if job is None:
        return None
    view = view_of(ctx, job)
    return (job, view) if visible(ctx, job, view) else None


def name_matches(pattern: str, name: str) -> bool:
    """bjobs/bkill -J: exact name, ``*`` matching any run of characters."""
    regex = "".join(".*" if char == "*" else re.escape(char) for char in pattern)
    return re.fullmatch(regex, name) is not None


def parse_job_id(text: str) -> int | None:
    """A job id argument (``123`` or ``123[1]``, index ignored); None when it is not one."""
    match = re.fullmatch(r"(\d+)(\[\d+\])?", text.strip())
    return int(match.group(1)) if match else None


def signal_number(name: str) -> int | None:
    """``KILL``, ``SIGKILL`` or ``9`` -> 9; None when unknown."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        return None


def take_options(
    args: list[str], with_value: set[str], flags: set[str], command: str
) -> tuple[dict[str, list[str]], list[str], str | None]:
    """Split LSF-style options (``-o x``, ``-noheader``) from operands.

    Returns (options -> values in order, operands, error). Options may appear anywhere before the operands end.
    """
    options: dict[str, list[str]] = {}
    operands: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in with_value:
            if index + 1 >= len(args):
                return options, operands, f"{command}: option requires an argument -- {arg.lstrip('-')}"
            options.setdefault(arg, []).append(args[index + 1])
            index += 2
            continue
        if arg in flags:
            options.setdefault(arg, []).append("")
            index += 1
            continue
        if arg.startswith("-") and len(arg) > 1 and not arg[1:].isdigit():
            # Bundled single-letter flags such as -aJ name are accepted as LSF's getopt would.
            letters = [f"-{letter}" for letter in arg[1:]]
            if all(letter in flags for letter in letters[:-1]) and (letters[-1] in flags or letters[-1] in with_value):
                expanded = [*letters[:-1], letters[-1]]
                args = args[:index] + expanded + args[index + 1 :]
                continue
            return options, operands, f"{command}: illegal option -- {arg.lstrip('-')}"
        operands.append(arg)
        index += 1
    return options, operands, None
