"""IBM Spectrum LSF: the hook that runs bsub/bjobs/bkill/bhist, the parsers of their output and the job state machine.

The parsers and the state machine are plain Python (tested without LSF or Airflow); ``LsfHook`` runs the commands
locally (from PATH, or after sourcing ``profile.lsf``) or on a login node over SSH, chosen by the Airflow
connection: conn_type ``ssh`` goes over SSH, anything else (or no connection at all) runs locally.
Facts and strings come from ``reference/lsf-behaviour.md`` (IBM docs, OpenLava source, ert/Toil observations).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from hortacloud.config import SiteConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# -- errors ----------------------------------------------------------------------------------------------------------


class LsfError(Exception):
    """An LSF command failed; the message carries LSF's own words."""


class LsfRejected(LsfError):
    """LSF refused the request for good (no such queue, esub, too many processors ...): retrying cannot help."""


class LsfTransientError(LsfError):
    """LSF or the link to it failed for now (daemon down, timeout, SSH drop, garbage output): worth retrying."""


# -- states ----------------------------------------------------------------------------------------------------------

Phase = Literal["waiting", "running", "success", "failure"]

#: How the operator reads each LSF STAT. Suspended and UNKWN jobs are alive (Nextflow #5666, snakemake #14).
STATE_PHASES: dict[str, Phase] = {
    "PEND": "waiting",
    "PSUSP": "waiting",
    "WAIT": "waiting",
    "PROV": "waiting",
    "RUN": "running",
    "USUSP": "running",
    "SSUSP": "running",
    "UNKWN": "running",
    "DONE": "success",
    "PDONE": "success",
    "EXIT": "failure",
    "ZOMBI": "failure",
    "PERR": "failure",
}

_STATE_NOTES = {
    "PSUSP": "held while pending (bstop or bsub -H); someone must release it with bresume",
    "USUSP": "suspended by its owner",
    "SSUSP": "suspended by LSF (host load or run window); it resumes on its own",
    "UNKWN": "mbatchd lost contact with the execution host; the job may still be running",
    "PROV": "waiting for its host to be provisioned",
}


def phase_of(stat: str) -> Phase:
    """The operator's reading of an LSF STAT; an unknown STAT counts as running (never as an end)."""
    return STATE_PHASES.get(stat.upper(), "running")


def state_note(stat: str) -> str:
    """A short explanation of a state worth explaining in the task log, else ''."""
    return _STATE_NOTES.get(stat.upper(), "")


# -- parsed records ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStatus:
    """One job as bjobs or bhist reports it."""

    job_id: str
    stat: str
    job_name: str = ""
    exit_code: int | None = None
    exit_reason: str = ""

    @property
    def phase(self) -> Phase:
        return phase_of(self.stat)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BjobsResult:
    """What one bjobs call said: statuses by job id, and the ids (or names) LSF reported as not found."""

    statuses: dict[str, JobStatus] = field(default_factory=dict)
    not_found: set[str] = field(default_factory=set)
    nothing_found: bool = False


@dataclass(frozen=True)
class Submitted:
    job_id: str
    queue: str


@dataclass(frozen=True)
class Rejected:
    message: str


@dataclass(frozen=True)
class Transient:
    message: str


SubmitOutcome = Submitted | Rejected | Transient
KillOutcome = Literal["terminated", "already_finished", "not_found"]

# -- parsers ---------------------------------------------------------------------------------------------------------

_SUBMITTED = re.compile(r"Job <(\d+)> is submitted to (?:default )?queue <([^>]*)>")
_NOT_FOUND = re.compile(r"Job <([^>]+)> is not found")
_JOB_REF = re.compile(r"Job <(\d+)>")
_NOTHING = re.compile(r"No (?:unfinished |matching )?job found")
# Lines LSF prints while it retries internally; never part of an answer (Toil #3097).
_NOISE = re.compile(
    r"Please wait|still trying|not responding|Cannot connect to LSF|LSF is processing your request", re.IGNORECASE
)
_TRANSIENT_SIGNS = re.compile(
    r"Please wait|still trying|not responding|Cannot connect|non-LSF host|Failed in an LSF library call|"
    r"Connection reset|Connection refused|timed out|Temporary failure|Broken pipe",
    re.IGNORECASE,
)
_PERMANENT_SIGNS = re.compile(r"Job not submitted|command not found|Illegal option|Bad argument", re.IGNORECASE)


def _meaningful_lines(*texts: str) -> list[str]:
    return [line.strip() for text in texts for line in text.splitlines() if line.strip()]


def _lsf_words(stdout: str, stderr: str) -> str:
    """LSF's own message: stderr then stdout, noise lines dropped (or kept if nothing else is left)."""
    lines = list(dict.fromkeys(_meaningful_lines(stderr, stdout)))
    meaningful = [line for line in lines if not _NOISE.search(line)]
    return " ".join(meaningful or lines)


def parse_bsub(stdout: str, stderr: str, returncode: int) -> SubmitOutcome:
    """Read bsub's answer: the job id (from any line, on either stream), a permanent rejection, or a transient fault.

    The id is taken only from ``Job <N> is submitted to [default ]queue <q>.``, never from "the first number":
    esub chatter and "Please wait" lines may come before it (dask-jobqueue #78, Toil #3097).
    """
    match = _SUBMITTED.search(stdout) or _SUBMITTED.search(stderr)
    if match:
        return Submitted(match.group(1), match.group(2))
    words = _lsf_words(stdout, stderr)
    if returncode == 0 and not words:
        return Transient("bsub exited 0 but printed nothing (seen on real clusters; the job may or may not exist)")
    if _PERMANENT_SIGNS.search(words) or returncode == 127:
        return Rejected(words or f"bsub exited {returncode}")
    if returncode == 0:
        # Exit 0 without the "is submitted" line: nothing we can trust, but nothing LSF refused either.
        return Transient(f"bsub printed no job id: {words}")
    return Transient(words or f"bsub exited {returncode} without a message")


def _exit_code(value: Any) -> int | None:
    """EXIT_CODE as LSF prints it: '' or '-' when there is none (DONE, or killed while pending)."""
    text = str(value if value is not None else "").strip()
    if text in ("", "-"):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _text(value: Any) -> str:
    text = str(value if value is not None else "").strip()
    return "" if text == "-" else text


def _not_found_from_errors(lines: Sequence[str], result: BjobsResult) -> None:
    for line in lines:
        match = _NOT_FOUND.search(line)
        if match:
            result.not_found.add(match.group(1))
        elif _NOTHING.search(line):
            result.nothing_found = True


def parse_bjobs_json(stdout: str, stderr: str = "") -> BjobsResult:
    """Read ``bjobs -json -o "..."``: JSON records, ``ERROR`` records for unknown ids (with or without JOBID).

    The JSON is cut from the first ``{`` to the last ``}`` because "Please wait" lines may surround it. Not-found
    messages on stderr count too. Raises ``LsfTransientError`` when there is neither JSON nor a not-found message.
    """
    result = BjobsResult()
    _not_found_from_errors(_meaningful_lines(stderr), result)
    start, end = stdout.find("{"), stdout.rfind("}")
    if start == -1 or end < start:
        if result.not_found or result.nothing_found:
            return result
        raise LsfTransientError(f"bjobs gave no JSON ({_lsf_words(stdout, stderr) or 'empty output'})")
    try:
        document = json.loads(stdout[start : end + 1])
    except json.JSONDecodeError as err:
        raise LsfTransientError(f"bjobs gave broken JSON ({err.msg} at {err.pos})") from err
    records = document.get("RECORDS") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise LsfTransientError("bjobs JSON has no RECORDS list")
    for record in records:
        if not isinstance(record, dict):
            continue
        if "ERROR" in record:
            error = str(record["ERROR"])
            match = _NOT_FOUND.search(error)
            job = match.group(1) if match else _text(record.get("JOBID"))
            if job:
                result.not_found.add(job)
            elif _NOTHING.search(error):
                result.nothing_found = True
            continue
        job_id = _text(record.get("JOBID"))
        stat = _text(record.get("STAT"))
        if not job_id or not stat:
            continue
        result.statuses[job_id] = JobStatus(
            job_id=job_id,
            stat=stat.upper(),
            job_name=_text(record.get("JOB_NAME")),
            exit_code=_exit_code(record.get("EXIT_CODE")),
            exit_reason=_text(record.get("EXIT_REASON")),
        )
    return result


#: Fields asked of bjobs, in this order, for both output formats.
BJOBS_FIELDS = ("jobid", "stat", "exit_code", "exit_reason", "job_name")
TEXT_DELIMITER = "^"


def parse_bjobs_text(stdout: str, stderr: str = "", delimiter: str = TEXT_DELIMITER) -> BjobsResult:
    """Read ``bjobs -noheader -o "jobid stat exit_code exit_reason job_name delimiter='^'"`` (LSF before 10.1.0.2).

    Empty values are ``-``; the job name is last, so it may contain the delimiter. Noise and unparsable lines
    are skipped; raises ``LsfTransientError`` when nothing at all could be read.
    """
    result = BjobsResult()
    _not_found_from_errors(_meaningful_lines(stderr), result)
    for line in _meaningful_lines(stdout):
        if _NOT_FOUND.search(line) or _NOTHING.search(line):
            _not_found_from_errors([line], result)
            continue
        parts = line.split(delimiter, len(BJOBS_FIELDS) - 1)
        if len(parts) != len(BJOBS_FIELDS) or not parts[0].strip().isdigit():
            continue
        job_id, stat, exit_code, exit_reason, job_name = (part.strip() for part in parts)
        result.statuses[job_id] = JobStatus(
            job_id=job_id,
            stat=stat.upper(),
            job_name=_text(job_name),
            exit_code=_exit_code(exit_code),
            exit_reason=_text(exit_reason),
        )
    if not result.statuses and not result.not_found and not result.nothing_found:
        raise LsfTransientError(f"bjobs gave nothing readable ({_lsf_words(stdout, stderr) or 'empty output'})")
    return result


_BHIST_JOB = re.compile(r"Job <(\d+)>(?:, Job Name <([^>]*)>)?")
_BHIST_DONE = re.compile(r"Done successfully")
_BHIST_EXIT_CODE = re.compile(r"Exited with exit code (\d+)")
_BHIST_SIGNAL = re.compile(r"Exited by signal (\d+)")
_BHIST_TERM = re.compile(r"(TERM_[A-Z_]+(?::[^.;\n]*)?)")
_BHIST_EXITED = re.compile(r"\bExited\b")


def parse_bhist_long(stdout: str) -> JobStatus | None:
    """Read ``bhist -l``: the job's end (DONE or EXIT with code and TERM_ reason), or None if it has not ended.

    ``No matching job found`` gives None. bhist wraps long lines with an indented continuation; they are joined
    first so a message split across lines still matches.
    """
    text = re.sub(r"\n {10,}", "", stdout)
    job = _BHIST_JOB.search(text)
    if not job:
        return None
    job_id, job_name = job.group(1), (job.group(2) or "")
    term = _BHIST_TERM.search(text)
    reason = term.group(1).strip() if term else ""
    code = _BHIST_EXIT_CODE.search(text)
    sig = _BHIST_SIGNAL.search(text)
    if code:
        return JobStatus(job_id, "EXIT", job_name, int(code.group(1)), reason)
    if sig:
        return JobStatus(job_id, "EXIT", job_name, 128 + int(sig.group(1)), reason)
    if _BHIST_DONE.search(text):
        return JobStatus(job_id, "DONE", job_name)
    if _BHIST_EXITED.search(text) or "Completed <exit>" in text:
        return JobStatus(job_id, "EXIT", job_name, None, reason)
    # Known but not ended: bjobs lost sight of a live job (mbatchd restart); keep following it.
    started = re.search(r"Dispatched|Starting \(Pid|Running with", text)
    return JobStatus(job_id, "RUN" if started else "PEND", job_name)


_KILLING = re.compile(r"Job <(\d+)> is being (?:terminated|signaled)")
_ALREADY_DONE = re.compile(r"Job has already finished")
_NO_MATCH = re.compile(r"No matching job found|is not found")


def parse_bkill(stdout: str, stderr: str, returncode: int) -> KillOutcome:
    """Read bkill's answer for one job; "already finished" and "No matching job found" are success.

    Raises ``LsfTransientError`` for LSF-down noise and ``LsfError`` for anything else (permission denied ...).
    """
    text = f"{stdout}\n{stderr}"
    if _KILLING.search(text):
        return "terminated"
    if _ALREADY_DONE.search(text):
        return "already_finished"
    if _NO_MATCH.search(text):
        return "not_found"
    words = _lsf_words(stdout, stderr)
    if not words:
        raise LsfTransientError(f"bkill exited {returncode} without a message")
    if _TRANSIENT_SIGNS.search(words):
        raise LsfTransientError(words)
    raise LsfError(words)


# -- names and commands ----------------------------------------------------------------------------------------------

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def lsf_job_name(prefix: str, *, dag_id: str, run_id: str, task_id: str, map_index: int | None, source: str) -> str:
    """The deterministic ``bsub -J``: the old script's prefix plus a short hash of run, task and source.

    Same run, task, map index and source give the same name on every try, which is how a retry finds the job an
    earlier try submitted. No spaces and no ``[]`` (LSF reads ``name[1-5]`` as a job array).
    """
    readable = _NAME_UNSAFE.sub("_", prefix or task_id).strip("_")[:200] or "hortacloud"
    key = "\x1f".join([dag_id, run_id, task_id, str(-1 if map_index is None else map_index), source])
    return f"{readable}.{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def bsub_argv(
    *,
    command: str,
    job_name: str,
    slots: int | None = None,
    project: str = "",
    queue: str = "",
    runlimit_minutes: int = 0,
    output_file: str = "",
) -> list[str]:
    """The bsub argv; ``command`` is one argument, parsed by the job's shell when the job runs."""
    argv = ["bsub", "-J", job_name]
    if slots:
        argv += ["-n", str(slots)]
    if project:
        argv += ["-P", project]
    if queue:
        argv += ["-q", queue]
    if runlimit_minutes:
        argv += ["-W", str(runlimit_minutes)]
    if output_file:
        argv += ["-o", output_file]
    argv.append(command)
    return argv


def bjobs_argv(ids: Sequence[str] = (), *, name: str | None = None, output_format: str = "json") -> list[str]:
    """``bjobs -a`` with ``-o`` fields, as JSON or delimited text, for job ids or one exact name."""
    fields = " ".join(BJOBS_FIELDS)
    argv = ["bjobs", "-a"]
    if output_format == "json":
        argv += ["-json", "-o", fields]
    else:
        argv += ["-noheader", "-o", f"{fields} delimiter='{TEXT_DELIMITER}'"]
    if name is not None:
        argv += ["-J", name]
    argv += list(ids)
    return argv


def transfer_command(template: str, *, source: str, destination: str, aws_profile: str = "") -> str:
    """Fill the config's transfer template; every value is shell-quoted (folder names may hold ``'`` ``$`` ``;``).

    A trailing ``/`` in the template stays outside the quotes, so ``{source}/`` quotes the folder and keeps the slash.
    """
    values = {
        "source": shlex.quote(source.rstrip("/") or "/"),
        "destination": shlex.quote(destination.rstrip("/")),
        "aws_profile": shlex.quote(aws_profile),
    }
    try:
        return template.format(**values)
    except (KeyError, IndexError) as err:
        raise ValueError(
            f"lsf.transfer_command {template!r} uses an unknown placeholder {err}; "
            "only {source}, {destination} and {aws_profile} exist"
        ) from None


def transfer_job_kwargs(config: SiteConfig, transfer: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """Operator kwargs for one planned cluster transfer, for ``LsfJobOperator.partial(...).expand_kwargs(...)``.

    ``transfer`` is ``Transfer.to_dict()``: product, source, prefix, job_name, is_file. The AWS profile is named on
    the command line; its keys stay in the cluster user's AWS configuration, never on a command line.
    """
    lsf = config.lsf
    destination = f"s3://{config.s3.bucket}/{str(transfer['prefix']).lstrip('/')}"
    template = lsf.transfer_command
    if not lsf.aws_profile:
        # No profile configured: drop the option rather than pass an empty one.
        template = re.sub(r"\s*--profile\s+\{aws_profile\}", "", template)
    output_file = os.path.join(lsf.output_dir, "%J.out") if lsf.output_dir else ""
    return {
        "command": transfer_command(
            template, source=str(transfer["source"]), destination=destination, aws_profile=lsf.aws_profile
        ),
        "job_name": str(transfer.get("job_name") or transfer["product"]),
        "source": str(transfer["source"]),
        "lsf_conn_id": lsf.conn_id,
        "profile": lsf.profile,
        "slots": lsf.slots,
        "project": lsf.project,
        "lsf_queue": lsf.queue,
        "runlimit_minutes": lsf.runlimit_minutes,
        "output_file": output_file,
        "poll_interval": lsf.poll_interval_seconds,
        "first_poll_after": lsf.first_poll_seconds,
        "dry_run_submit": dry_run,
    }


# -- the state machine -----------------------------------------------------------------------------------------------

NEED_HISTORY = "need_history"


@dataclass
class JobWatch:
    """Follows one job from bjobs answers to exactly one final event payload; shared by blocking and deferred modes.

    ``observe`` returns None (keep polling), ``NEED_HISTORY`` (ask bhist, then ``observe_history``) or a final
    payload ``{"status": "success"|"failed"|"error", ...}``. State changes are logged through ``log``.
    """

    job_id: str
    job_name: str
    submitted_at: float
    not_found_grace: float = 120.0
    max_poll_failures: int = 10
    log: Any = log  # a logging.Logger or Airflow's structlog logger (self.log)
    last_stat: str | None = None
    failures: int = 0

    def payload(self, status: str, message: str, job: JobStatus | None = None) -> dict[str, Any]:
        return {
            "status": status,
            "job_id": self.job_id,
            "job_name": self.job_name,
            "stat": job.stat if job else self.last_stat,
            "exit_code": job.exit_code if job else None,
            "exit_reason": job.exit_reason if job else "",
            "message": message,
        }

    def _note_state(self, job: JobStatus) -> None:
        if job.stat != self.last_stat:
            note = state_note(job.stat)
            self.log.info(
                "LSF job %s (%s): %s -> %s%s",
                self.job_id,
                self.job_name,
                self.last_stat or "submitted",
                job.stat,
                f" ({note})" if note else "",
            )
            if self.last_stat and phase_of(self.last_stat) == "running" and job.phase == "waiting":
                self.log.warning(
                    "LSF job %s went back to %s (requeued); still waiting for its end", self.job_id, job.stat
                )
            self.last_stat = job.stat

    def final(self, job: JobStatus, source: str = "bjobs") -> dict[str, Any]:
        self._note_state(job)
        if job.phase == "success":
            return self.payload("success", f"LSF job {self.job_id} ({self.job_name}) finished {job.stat}", job)
        code = "unknown exit code" if job.exit_code is None else f"exit code {job.exit_code}"
        reason = job.exit_reason or "no exit reason given"
        return self.payload(
            "failed", f"LSF job {self.job_id} ({self.job_name}) ended {job.stat} with {code}: {reason} [{source}]", job
        )

    def observe(self, result: BjobsResult, now: float) -> dict[str, Any] | str | None:
        """Take one bjobs answer."""
        self.failures = 0
        job = result.statuses.get(self.job_id)
        if job is not None and job.job_name and self.job_name and job.job_name != self.job_name:
            # LSF reuses ids after MAX_JOBID: this record is someone else's job, ours has been cleaned.
            self.log.warning(
                "LSF job %s is now named %r, not %r: the id was reused; asking bhist",
                self.job_id,
                job.job_name,
                self.job_name,
            )
            return NEED_HISTORY
        if job is not None:
            if job.phase in ("success", "failure"):
                return self.final(job)
            self._note_state(job)
            return None
        age = now - self.submitted_at
        if age < self.not_found_grace:
            self.log.info("LSF job %s not visible yet (%.0fs after submission); waiting", self.job_id, age)
            return None
        self.log.info("LSF job %s is no longer in bjobs (cleaned after CLEAN_PERIOD?); asking bhist", self.job_id)
        return NEED_HISTORY

    def observe_history(self, job: JobStatus | None) -> dict[str, Any] | None:
        """Take bhist's answer after bjobs lost the job: its end, None if still alive, or 'history lost'."""
        if job is not None and (not job.job_name or not self.job_name or job.job_name == self.job_name):
            if job.phase in ("success", "failure"):
                return self.final(job, source="bhist")
            self.log.info("bhist still sees LSF job %s as %s; waiting", self.job_id, job.stat)
            return None
        return self.payload(
            "failed",
            f"LSF job {self.job_id} ({self.job_name}) is known neither to bjobs nor to bhist: its history is lost "
            "and its outcome unknown",
        )

    def observe_failure(self, error: Exception) -> dict[str, Any] | None:
        """Take one failed poll; after ``max_poll_failures`` in a row, give up with an error payload."""
        self.failures += 1
        if self.failures >= self.max_poll_failures:
            return self.payload(
                "error",
                f"Could not ask LSF about job {self.job_id} ({self.job_name}) {self.failures} times in a row; "
                f"last error: {error}. The job may still be running; a retry of this task re-attaches to it by name.",
            )
        self.log.warning(
            "Polling LSF job %s failed (%d/%d): %s", self.job_id, self.failures, self.max_poll_failures, error
        )
        return None

    def backoff(self, poll_interval: float) -> float:
        """Seconds until the next poll: the interval, doubled after each failure in a row up to 8x, with jitter."""
        if not self.failures:
            return poll_interval
        return min(poll_interval * 2**self.failures, poll_interval * 8) * random.uniform(1.0, 1.2)


# -- the hook --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def shell_line(argv: Sequence[str], profile: str = "") -> str:
    """One shell command line for ``argv``, sourcing ``profile`` first when given; every word is quoted."""
    line = shlex.join(argv)
    if profile:
        return f". {shlex.quote(profile)} >/dev/null 2>&1 && {line}"
    return line


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _hang_up(client: Any, timed_out: threading.Event) -> None:
    """Close an SSH client whose command ran out of time (the exec loop then ends; the command gets SIGPIPE)."""
    timed_out.set()
    with contextlib.suppress(Exception):
        client.close()


def _link_error(exc: BaseException) -> str:
    """paramiko's words for a failed link, completed: "Unable to connect" hides the reason, EOFError has none."""
    text = str(exc).removeprefix("[Errno None] ") or f"{type(exc).__name__} (the connection was closed)"
    reasons = sorted({getattr(err, "strerror", None) or str(err) for err in getattr(exc, "errors", {}).values()})
    return f"{text}: {', '.join(reasons)}" if reasons else text


class LsfHook(BaseHook):
    """Run LSF commands locally or over SSH, each with its own timeout, and read their answers.

    :param lsf_conn_id: Airflow connection; conn_type ``ssh`` runs the commands on that login node through the
        ssh provider's SSHHook; any other type, or None, or a connection that does not exist, runs them here.
        The connection's extra ``profile`` overrides ``profile``.
    :param profile: ``profile.lsf`` to source before every command (empty: the commands are on PATH).
    :param command_timeout: seconds each command may take; LSF retries internally for ever when mbatchd is down.
    :param retries: extra attempts for transient failures (submission, lookups, bkill).
    :param retry_delay: seconds before the first retry, doubled for each further one.
    :param output_format: ``json`` (LSF 10.1.0.2 and later) or ``text`` (``-noheader -o ... delimiter``).
    :param bhist_files: ``bhist -n``: how many event log files to search (0: all).
    """

    conn_name_attr = "lsf_conn_id"
    default_conn_name = "hortacloud_lsf"
    conn_type = "lsf"
    hook_name = "IBM Spectrum LSF"

    def __init__(
        self,
        lsf_conn_id: str | None = default_conn_name,
        *,
        profile: str = "",
        command_timeout: float = 120.0,
        retries: int = 3,
        retry_delay: float = 5.0,
        output_format: Literal["json", "text"] = "json",
        bhist_files: int = 2,
    ) -> None:
        super().__init__()
        self.lsf_conn_id = lsf_conn_id
        self.profile = profile
        self.command_timeout = command_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.output_format = output_format
        self.bhist_files = bhist_files

    # -- where commands run

    def _connection(self) -> Any | None:
        if not self.lsf_conn_id:
            return None
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.lsf_conn_id)
        except AirflowNotFoundException:
            self.log.debug("No connection %r: running LSF commands locally", self.lsf_conn_id)
            return None

    def _settings_from(self, conn: Any | None) -> tuple[str, str]:
        profile = self.profile
        if conn is not None:
            extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
            profile = str(extra.get("profile") or profile)
            if (conn.conn_type or "").lower() == "ssh":
                return "ssh", profile
        return "local", profile

    @cached_property
    def _settings(self) -> tuple[str, str]:
        """(``local`` or ``ssh``, profile), resolved once from the connection."""
        return self._settings_from(self._connection())

    async def aprepare(self) -> None:
        """Resolve the connection with the async API, so the triggerer's event loop never waits on it."""
        if "_settings" in self.__dict__:
            return
        conn = None
        if self.lsf_conn_id:
            from airflow.sdk.exceptions import AirflowNotFoundException

            try:
                conn = await self.aget_connection(self.lsf_conn_id)
            except AirflowNotFoundException:
                conn = None
        self.__dict__["_settings"] = self._settings_from(conn)

    @property
    def mode(self) -> str:
        return self._settings[0]

    @cached_property
    def ssh_hook(self) -> Any:
        """The ssh provider's SSHHook for the connection (imported only when SSH is used)."""
        try:
            from airflow.providers.ssh.hooks.ssh import SSHHook
        except ImportError as err:
            raise LsfError(
                f"Connection {self.lsf_conn_id!r} is of type ssh but apache-airflow-providers-ssh is not installed"
            ) from err
        # One connection attempt: this hook retries with its own backoff (and looks a job up before resubmitting);
        # SSHHook's default 3 attempts would hide 3-5 s sleeps inside each of those retries.
        return SSHHook(ssh_conn_id=self.lsf_conn_id, cmd_timeout=self.command_timeout, conn_retry_attempts=1)

    @cached_property
    def _ssh_lock(self) -> threading.RLock:
        # SSHHook hands every caller its one cached client, which each command closes after use: a poll and on_kill
        # in two threads would cut each other's link. Re-entrant for on_kill run by a signal handler mid-command.
        return threading.RLock()

    def _local_argv(self, argv: Sequence[str]) -> list[str]:
        profile = self._settings[1]
        if profile:
            return ["bash", "-c", shell_line(argv, profile)]
        return list(argv)

    def _ssh_command(self, argv: Sequence[str]) -> str:
        # bash -c whatever the login shell is (csh at some sites); the inner line is quoted once more.
        return "bash -c " + shlex.quote(shell_line(argv, self._settings[1]))

    def run_command(self, argv: Sequence[str]) -> CommandResult:
        """Run one LSF command once; raise ``LsfTransientError`` on timeout or a broken SSH link."""
        if self.mode == "ssh":
            return self._run_ssh(argv)
        return self._run_local(argv)

    def _run_local(self, argv: Sequence[str]) -> CommandResult:
        try:
            proc = subprocess.Popen(
                self._local_argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                text=True,
            )
        except FileNotFoundError as err:
            return CommandResult(127, "", f"{argv[0]}: command not found ({err})")
        try:
            stdout, stderr = proc.communicate(timeout=self.command_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            raise LsfTransientError(f"{argv[0]} did not answer within {self.command_timeout:g}s") from None
        return CommandResult(proc.returncode, stdout, stderr)

    def _run_ssh(self, argv: Sequence[str]) -> CommandResult:
        timed_out = threading.Event()
        try:
            with self._ssh_lock, self.ssh_hook.get_conn() as client:
                # SSHHook's timeout counts idle time only, and a hung LSF command prints "still trying" every
                # second: the link is closed at the deadline instead.
                timer = threading.Timer(self.command_timeout, _hang_up, (client, timed_out))
                timer.daemon = True
                timer.start()
                try:
                    rc, raw_out, raw_err = self.ssh_hook.exec_ssh_client_command(
                        client, self._ssh_command(argv), get_pty=False, environment=None, timeout=self.command_timeout
                    )
                finally:
                    timer.cancel()
        except LsfError:
            raise
        except Exception as exc:  # paramiko, socket and SSHHook errors alike: the link failed, not LSF
            if timed_out.is_set():
                raise LsfTransientError(f"{argv[0]} did not answer within {self.command_timeout:g}s over SSH") from exc
            raise LsfTransientError(f"{argv[0]} over SSH ({self.lsf_conn_id}) failed: {_link_error(exc)}") from exc
        if timed_out.is_set():
            raise LsfTransientError(f"{argv[0]} did not answer within {self.command_timeout:g}s over SSH")
        stdout, stderr = raw_out.decode(errors="replace"), raw_err.decode(errors="replace")
        if rc in (-1, 255) and not stdout.strip() and "Job <" not in stderr and not _PERMANENT_SIGNS.search(stderr):
            # 255 is also ssh's own failure code; only words LSF wrote tell an LSF answer apart from a dropped link.
            raise LsfTransientError(f"{argv[0]} over SSH exited {rc}: {stderr.strip() or 'no message'}")
        return CommandResult(rc, stdout, stderr)

    async def arun_command(self, argv: Sequence[str]) -> CommandResult:
        """The async twin of ``run_command`` for the triggerer: never blocks the event loop."""
        if self.mode == "ssh":
            from asgiref.sync import sync_to_async

            return await sync_to_async(self._run_ssh)(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._local_argv(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as err:
            return CommandResult(127, "", f"{argv[0]}: command not found ({err})")
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except (TimeoutError, asyncio.CancelledError) as err:
            _kill_group(proc.pid)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            if isinstance(err, asyncio.CancelledError):
                raise
            raise LsfTransientError(f"{argv[0]} did not answer within {self.command_timeout:g}s") from None
        return CommandResult(proc.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    # -- retries

    def _delays(self) -> list[float]:
        return [self.retry_delay * 2**attempt for attempt in range(self.retries)]

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        delays = self._delays()
        while True:
            try:
                return call()
            except LsfTransientError as err:
                if not delays:
                    raise
                delay = delays.pop(0)
                self.log.warning("%s failed (%s); retrying in %.1fs", what, err, delay)
                time.sleep(delay)

    async def _aretrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delays = self._delays()
        while True:
            try:
                return await call()
            except LsfTransientError as err:
                if not delays:
                    raise
                delay = delays.pop(0)
                self.log.warning("%s failed (%s); retrying in %.1fs", what, err, delay)
                await asyncio.sleep(delay)

    # -- LSF operations

    @staticmethod
    def _found(command: str, result: CommandResult) -> None:
        """A missing LSF command (profile not sourced, not an LSF client) cannot come right by retrying."""
        if result.returncode == 127 or "command not found" in result.stderr:
            words = _lsf_words(result.stdout, result.stderr) or f"{command} exited {result.returncode}"
            raise LsfRejected(f"{words} (is [lsf] profile, or the connection's extra 'profile', right?)")

    def _read_bjobs(self, result: CommandResult) -> BjobsResult:
        self._found("bjobs", result)
        # A non-zero exit with good output still carries valid data (ert): parse first, judge the exit code never.
        if self.output_format == "json":
            return parse_bjobs_json(result.stdout, result.stderr)
        return parse_bjobs_text(result.stdout, result.stderr)

    def statuses(self, job_ids: Sequence[str]) -> BjobsResult:
        """One bjobs call for any number of ids (batching-ready); raises ``LsfTransientError`` on failure."""
        return self._read_bjobs(self.run_command(bjobs_argv(job_ids, output_format=self.output_format)))

    async def astatuses(self, job_ids: Sequence[str]) -> BjobsResult:
        """Async ``statuses``."""
        return self._read_bjobs(await self.arun_command(bjobs_argv(job_ids, output_format=self.output_format)))

    def find_by_name(self, job_name: str) -> list[JobStatus]:
        """Jobs named exactly ``job_name`` that LSF still knows (``bjobs -a -J``), newest first; retried."""

        def call() -> list[JobStatus]:
            result = self._read_bjobs(self.run_command(bjobs_argv(name=job_name, output_format=self.output_format)))
            jobs = [job for job in result.statuses.values() if job.job_name == job_name]
            return sorted(jobs, key=lambda job: int(job.job_id), reverse=True)

        return self._retrying(f"bjobs -J {job_name}", call)

    def _read_history(self, result: CommandResult) -> JobStatus | None:
        self._found("bhist", result)
        status = parse_bhist_long(result.stdout)
        if status is None and result.returncode not in (0, 255):
            raise LsfTransientError(f"bhist exited {result.returncode}: {_lsf_words(result.stdout, result.stderr)}")
        if status is None and _TRANSIENT_SIGNS.search(result.stderr) and not _NOTHING.search(result.stdout):
            raise LsfTransientError(f"bhist: {_lsf_words(result.stdout, result.stderr)}")
        return status

    def _bhist_argv(self, job_id: str) -> list[str]:
        return ["bhist", "-l", "-n", str(self.bhist_files), job_id]

    def history(self, job_id: str) -> JobStatus | None:
        """The job's end from ``bhist -l`` (after bjobs forgot it), or None if bhist does not know it; retried."""
        return self._retrying("bhist", lambda: self._read_history(self.run_command(self._bhist_argv(job_id))))

    async def ahistory(self, job_id: str) -> JobStatus | None:
        """Async ``history``."""

        async def call() -> JobStatus | None:
            return self._read_history(await self.arun_command(self._bhist_argv(job_id)))

        return await self._aretrying("bhist", call)

    def submit(self, argv: Sequence[str], job_name: str, *, ignore: Collection[str] = ()) -> str:
        """Run bsub; return the job id. Permanent refusals raise ``LsfRejected`` at once, with LSF's words.

        After a transient failure (timeout, SSH drop, empty output) mbatchd may have accepted the job anyway, so
        before each retry the job is looked up by its name: a second bsub would start a second transfer. Jobs in
        ``ignore`` (an earlier, failed job of the same name) do not count.
        """
        delays = self._delays()
        while True:
            try:
                result = self.run_command(argv)
                outcome = parse_bsub(result.stdout, result.stderr, result.returncode)
            except LsfTransientError as err:
                outcome = Transient(str(err))
            if isinstance(outcome, Submitted):
                return outcome.job_id
            if isinstance(outcome, Rejected):
                raise LsfRejected(f"LSF refused job {job_name}: {outcome.message}")
            existing = self._lookup_after_failure(job_name, ignore)
            if existing:
                self.log.warning(
                    "bsub failed (%s) but LSF has job %s named %s; using it", outcome.message, existing, job_name
                )
                return existing
            if not delays:
                raise LsfTransientError(f"Could not submit job {job_name}: {outcome.message}")
            delay = delays.pop(0)
            self.log.warning("bsub failed (%s); retrying in %.1fs", outcome.message, delay)
            time.sleep(delay)

    def _lookup_after_failure(self, job_name: str, ignore: Collection[str]) -> str | None:
        try:
            found = [job for job in self.find_by_name(job_name) if job.job_id not in ignore]
        except LsfTransientError as err:
            raise LsfTransientError(
                f"bsub failed and LSF could not be asked whether job {job_name} exists ({err}); not submitting again"
            ) from err
        return found[0].job_id if found else None

    def _read_kill(self, result: CommandResult) -> KillOutcome:
        return parse_bkill(result.stdout, result.stderr, result.returncode)

    def kill(self, job_id: str) -> KillOutcome:
        """``bkill <id>``; "already finished" and "No matching job found" are success; retried when transient."""
        return self._retrying("bkill", lambda: self._read_kill(self.run_command(["bkill", job_id])))

    async def akill(self, job_id: str) -> KillOutcome:
        """Async ``kill``."""

        async def call() -> KillOutcome:
            return self._read_kill(await self.arun_command(["bkill", job_id]))

        return await self._aretrying("bkill", call)

    def tail(self, path: str, lines: int = 20) -> str:
        """The last lines of a job's output file, or '' when it does not exist (yet) or cannot be read."""
        if not path:
            return ""
        try:
            if self.mode == "ssh":
                result = self._run_ssh(["tail", "-n", str(lines), "--", path])
                return result.stdout if result.returncode == 0 else ""
            with open(path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except (OSError, LsfError):
            return ""


def cluster_jobs_step(transfers: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The upload DAG's step before a cluster product's LSF jobs: their kwargs, or skip when not chosen."""
    from airflow.sdk.exceptions import AirflowSkipException

    from hortacloud.config import load_config

    if not transfers:
        raise AirflowSkipException("not chosen for this run")
    config = load_config()
    return [transfer_job_kwargs(config, item, dry_run=bool(params.get("dry_run"))) for item in transfers]
