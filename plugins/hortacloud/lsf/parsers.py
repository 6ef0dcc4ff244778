"""What LSF says, read: errors, job states, the records of one job, and the parsers of bsub, bjobs, bhist and bkill.

Plain Python, tested without LSF or Airflow. The strings and formats are IBM Spectrum LSF 10.1's
(``docs/lsf-behaviour.md``); where a real cluster prints something else (noise lines while mbatchd is busy,
not-found on either stream, exit 0 on failure) the parsers read what the job's answer means, never its exit code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# -- errors ----------------------------------------------------------------------------------------------------------


class LsfError(Exception):
    """An LSF command failed; the message carries LSF's own words."""


class LsfRejected(LsfError):
    """LSF refused the request for good (no such queue, esub, too many processors ...): retrying cannot help."""


class LsfTransientError(LsfError):
    """LSF or the link to it failed for now (daemon down, timeout, SSH drop, garbage output): worth retrying."""


# -- states ----------------------------------------------------------------------------------------------------------

Phase = Literal["waiting", "running", "success", "failure"]

#: How the operator reads each LSF STAT. Suspended and UNKWN jobs are alive (docs/lsf-behaviour.md, A.2).
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
        """How the operator reads this job's STAT (``phase_of``)."""
        return phase_of(self.stat)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-able dict."""
        return asdict(self)


@dataclass
class BjobsResult:
    """What one bjobs call said: statuses by job id, and the ids (or names) LSF reported as not found."""

    statuses: dict[str, JobStatus] = field(default_factory=dict)
    not_found: set[str] = field(default_factory=set)
    nothing_found: bool = False


@dataclass(frozen=True)
class Submitted:
    """bsub accepted the job: its id and the queue it went to."""

    job_id: str
    queue: str


@dataclass(frozen=True)
class Rejected:
    """bsub refused the job for good (no such queue, esub, limits); ``message`` is LSF's."""

    message: str


@dataclass(frozen=True)
class Transient:
    """bsub failed for now, or its answer was lost; the job may or may not exist."""

    message: str


SubmitOutcome = Submitted | Rejected | Transient
KillOutcome = Literal["terminated", "already_finished", "not_found"]

# -- parsers ---------------------------------------------------------------------------------------------------------

_SUBMITTED = re.compile(r"Job <(\d+)> is submitted to (?:default )?queue <([^>]*)>")
_NOT_FOUND = re.compile(r"Job <([^>]+)> is not found")
_JOB_REF = re.compile(r"Job <(\d+)>")
NOTHING_FOUND = re.compile(r"No (?:unfinished |matching )?job found")
# Lines LSF prints while it retries internally; never part of an answer (docs/lsf-behaviour.md, A.0).
_NOISE = re.compile(
    r"Please wait|still trying|not responding|Cannot connect to LSF|LSF is processing your request", re.IGNORECASE
)
TRANSIENT_SIGNS = re.compile(
    r"Please wait|still trying|not responding|Cannot connect|non-LSF host|Failed in an LSF library call|"
    r"Connection reset|Connection refused|timed out|Temporary failure|Broken pipe",
    re.IGNORECASE,
)
PERMANENT_SIGNS = re.compile(r"Job not submitted|command not found|Illegal option|Bad argument", re.IGNORECASE)


def _meaningful_lines(*texts: str) -> list[str]:
    return [line.strip() for text in texts for line in text.splitlines() if line.strip()]


def lsf_words(stdout: str, stderr: str) -> str:
    """LSF's own message: stderr then stdout, noise lines dropped (or kept if nothing else is left)."""
    lines = list(dict.fromkeys(_meaningful_lines(stderr, stdout)))
    meaningful = [line for line in lines if not _NOISE.search(line)]
    return " ".join(meaningful or lines)


def parse_bsub(stdout: str, stderr: str, returncode: int) -> SubmitOutcome:
    """Read bsub's answer: the job id (from any line, on either stream), a permanent rejection, or a transient fault.

    The id is taken only from ``Job <N> is submitted to [default ]queue <q>.``, never from "the first number":
    esub chatter and "Please wait" lines may come before it (docs/lsf-behaviour.md, A.1).
    """
    match = _SUBMITTED.search(stdout) or _SUBMITTED.search(stderr)
    if match:
        return Submitted(match.group(1), match.group(2))
    words = lsf_words(stdout, stderr)
    if returncode == 0 and not words:
        return Transient("bsub exited 0 but printed nothing (seen on real clusters; the job may or may not exist)")
    if PERMANENT_SIGNS.search(words) or returncode == 127:
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
        elif NOTHING_FOUND.search(line):
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
        raise LsfTransientError(f"bjobs gave no JSON ({lsf_words(stdout, stderr) or 'empty output'})")
    try:
        document = json.loads(stdout[start : end + 1])
    except json.JSONDecodeError as err:
        raise LsfTransientError(f"bjobs gave broken JSON ({err.msg} at {err.pos})") from err
    records = document.get("RECORDS") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise LsfTransientError("bjobs JSON has no RECORDS list")
    for record in records:
        if isinstance(record, dict):
            _read_json_record(record, result)
    return result


def _read_json_record(record: dict[str, Any], result: BjobsResult) -> None:
    """One bjobs JSON record into ``result``: a job's status, or an ``ERROR`` record naming an unknown job."""
    if "ERROR" in record:
        error = str(record["ERROR"])
        match = _NOT_FOUND.search(error)
        job = match.group(1) if match else _text(record.get("JOBID"))
        if job:
            result.not_found.add(job)
        elif NOTHING_FOUND.search(error):
            result.nothing_found = True
        return
    job_id = _text(record.get("JOBID"))
    stat = _text(record.get("STAT"))
    if job_id and stat:
        result.statuses[job_id] = JobStatus(
            job_id=job_id,
            stat=stat.upper(),
            job_name=_text(record.get("JOB_NAME")),
            exit_code=_exit_code(record.get("EXIT_CODE")),
            exit_reason=_text(record.get("EXIT_REASON")),
        )


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
        if _NOT_FOUND.search(line) or NOTHING_FOUND.search(line):
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
        raise LsfTransientError(f"bjobs gave nothing readable ({lsf_words(stdout, stderr) or 'empty output'})")
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
    words = lsf_words(stdout, stderr)
    if not words:
        raise LsfTransientError(f"bkill exited {returncode} without a message")
    if TRANSIENT_SIGNS.search(words):
        raise LsfTransientError(words)
    raise LsfError(words)


_REPORT_START = re.compile(r"^Sender: LSF System <")
_OUTPUT_FOLLOWS = "The output (if any) follows:"


def job_output(text: str) -> list[str]:
    """The job's own lines of an ``-o`` file, without the report LSF writes into it.

    Without ``LSB_STDOUT_DIRECT`` the report comes first and the output after "The output (if any) follows:"; with
    it, the job wrote the file itself and the report is appended at the end (docs/lsf-behaviour.md, A.4). A file
    appended to by several jobs holds several reports; every one is left out.
    """
    lines = text.splitlines()
    kept: list[str] = []
    index = 0
    while index < len(lines):
        if not _REPORT_START.match(lines[index]):
            kept.append(lines[index])
            index += 1
            continue
        index = _after_report(lines, index)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def _after_report(lines: list[str], start: int) -> int:
    """The index of the first line after the report that starts at ``start``."""
    in_usage = False
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if line.strip() == _OUTPUT_FOLLOWS:
            return index + 2 if index + 1 < len(lines) and not lines[index + 1].strip() else index + 1
        if line.startswith("Resource usage summary:"):
            in_usage = True
        elif in_usage and line.strip() and not line.startswith((" ", "\t")):
            return index  # the report of a direct-output job ends with its usage summary
        if _REPORT_START.match(line):
            return index
    return len(lines)
