"""What hortacloud sends to LSF: deterministic job names, the argv of bsub and bjobs, and shell quoting.

Plain Python. Every word a user or a folder name could have chosen is quoted once, here; a command line is never
assembled anywhere else.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Sequence

from hortacloud.lsf.parsers import BJOBS_FIELDS, TEXT_DELIMITER

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
    memory_mib: int = 0,
) -> list[str]:
    """The bsub argv; ``command`` is one argument, parsed by the job's shell when the job runs.

    ``memory_mib`` sets both the limit (``-M``) and the reservation (``rusage[mem=]``), with an explicit unit, since
    LSF reads a bare number in ``LSF_UNIT_FOR_LIMITS`` (KB unless the site changed it).
    """
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
    if memory_mib:
        argv += ["-M", f"{memory_mib}MB", "-R", f"rusage[mem={memory_mib}MB]"]
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


#: Exit code and first words of the line that ``shell_line`` prints when the profile cannot be read.
PROFILE_MISSING_CODE = 126
PROFILE_MISSING = "hortacloud: LSF profile"


def shell_line(argv: Sequence[str], profile: str = "") -> str:
    """One shell command line for ``argv``, sourcing ``profile`` first when given; every word is quoted.

    A profile that does not exist (or cannot be read) ends the line with exit 126 and a message naming it, instead
    of the silent failure of ``.`` that would look like an LSF command printing nothing.
    """
    line = shlex.join(argv)
    if not profile:
        return line
    quoted = shlex.quote(profile)
    missing = shlex.quote(f"{PROFILE_MISSING} {profile} does not exist or cannot be read")
    return (
        f"{{ test -r {quoted} || {{ echo {missing} >&2; exit {PROFILE_MISSING_CODE}; }}; }} && "
        f". {quoted} >/dev/null 2>&1 && {line}"
    )
