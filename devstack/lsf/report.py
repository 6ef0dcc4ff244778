"""Text LSF prints about a job: time stamps, the job report in the -o file, and bhist/bjobs -l line wrapping."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from devstack.lsf.model import View
from devstack.lsf.state import Job


def ctime(stamp: float) -> str:
    """``Wed Nov 25 09:21:37 2026``, as in the job report."""
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(stamp))


def event_time(stamp: float) -> str:
    """``Wed Nov 25 09:21:37``, the prefix of bhist -l lines."""
    return time.strftime("%a %b %d %H:%M:%S", time.localtime(stamp))


def short_time(stamp: float | None, suffix: str = "") -> str:
    """``Nov 25 09:21`` (bjobs -o time fields); "" when unknown. ``suffix`` " L" marks an actual finish time."""
    if stamp is None:
        return ""
    return time.strftime("%b %d %H:%M", time.localtime(stamp)) + suffix


def wrap_lsf(text: str, width: int = 80, indent: int = 21) -> str:
    """Wrap one logical line the way bhist -l and bjobs -l do: cut at the column, not at a word.

    Continuation lines start with ``indent`` spaces (the width of the ``Wed Nov 25 09:21:37: `` prefix), so a parser
    must join them before matching, as on a real cluster.
    """
    first = width - 1
    if len(text) <= first:
        return text
    lines = [text[:first]]
    rest = text[first:]
    room = first - indent
    while rest:
        lines.append(" " * indent + rest[:room])
        rest = rest[room:]
    return "\n".join(lines)


def outcome_lines(view: View) -> list[str]:
    """The report lines that say how the job ended."""
    lines = []
    if view.exit_reason:
        lines.append(view.exit_reason + ".")
    if view.stat == "DONE":
        lines.append("Successfully completed.")
    elif view.exit_code is not None:
        lines.append(f"Exited with exit code {view.exit_code}.")
    else:
        lines.append("Exited.")
    return lines


def job_report(job: Job, view: View, cluster: str) -> str:
    """The header LSF puts in the -o file (or mails) when a job ends; the job's output follows it."""
    done = "Done" if view.stat == "DONE" else "Exited"
    finished = view.finish_time or time.time()
    started = view.start_time or finished
    cpu = max(0.0, finished - started)
    lines = [
        f"Sender: LSF System <lsfadmin@{job.exec_host}>",
        f"Subject: Job {job.id}: <{job.name}> in cluster <{cluster}> {done}",
        "",
        f"Job <{job.name}> was submitted from host <{job.submit_host}> by user <{job.user}> "
        f"in cluster <{cluster}> at {ctime(job.submit_time)}",
        f"Job was executed on host(s) <{_hosts(job)}>, in queue <{job.queue}>, as user <{job.user}> "
        f"in cluster <{cluster}> at {ctime(started)}",
        f"<{os.path.expanduser('~')}> was used as the home directory.",
        f"<{job.cwd}> was used as the working directory.",
        f"Started at {ctime(started)}",
        f"Terminated at {ctime(finished)}",
        f"Results reported at {ctime(finished)}",
        "",
        "Your job looked like:",
        "",
        "------------------------------------------------------------",
        "# LSBATCH: User input",
        job.command,
        "------------------------------------------------------------",
        "",
        *outcome_lines(view),
        "",
        "Resource usage summary:",
        "",
        f"    CPU time :                                   {cpu:.2f} sec.",
        "    Max Memory :                                 1 MB",
        "    Average Memory :                             1.00 MB",
        f"    Total Requested Memory :                     {job.mem_limit or '-'}",
        "    Delta Memory :                               -",
        "    Max Swap :                                   -",
        "    Max Processes :                              1",
        "    Max Threads :                                1",
        f"    Run time :                                   {round(finished - started)} sec.",
        f"    Turnaround time :                            {round(finished - job.submit_time)} sec.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _hosts(job: Job) -> str:
    return f"{job.slots}*{job.exec_host}" if job.slots > 1 else job.exec_host


def deliver_report(job: Job, view: View, cluster: str, spool: Path | None, mail_dir: Path) -> None:
    """Write the -o file at the end of the job: report header, then the spooled output (or append the report).

    Without LSB_STDOUT_DIRECT the output was spooled and only now reaches the -o path. In direct mode the job wrote
    the -o file itself and the report is appended. Without -o the report goes to ``mail_dir`` (LSF mails it).
    """
    report = job_report(job, view, cluster)
    if job.out_path is None:
        target = mail_dir / str(job.id)
        with open(target, "w") as out:
            out.write(report)
            if spool is not None and spool.exists():
                out.write("\nThe output (if any) follows:\n\n")
                with open(spool) as src:
                    shutil.copyfileobj(src, out)
        return
    out_path = Path(job.out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if spool is None:
            with open(out_path, "a") as out:
                out.write("\n" + report)
            return
        with open(out_path, "w" if job.out_overwrite else "a") as out:
            out.write(report)
            out.write("\nThe output (if any) follows:\n\n")
            if spool.exists():
                with open(spool, errors="replace") as src:
                    shutil.copyfileobj(src, out)
    except OSError:
        # LSF loses (or mails) the output when the -o path is not writable; so does the emulator.
        return
