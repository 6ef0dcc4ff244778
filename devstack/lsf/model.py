"""What a job looks like at a given moment: plans, termination reasons, and the wall-clock state machine.

No daemon advances jobs. Every command computes a job's state from its record and the current time (``observe``):
a scripted job walks its plan from the submit time; a real job reads what its runner recorded. bkill only stores
when and how the job was killed, and ``observe`` folds that in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from devstack.lsf.knobs import EmulatorError, Knobs
from devstack.lsf.state import Job
from devstack.procs import running

PENDING_STATES = frozenset({"PEND", "PSUSP", "WAIT", "PROV"})
RUNNING_STATES = frozenset({"RUN", "USUSP", "SSUSP", "UNKWN", "ZOMBI"})
TERMINAL_STATES = frozenset({"DONE", "EXIT", "PDONE", "PERR"})
PLAN_STATES = PENDING_STATES | RUNNING_STATES | TERMINAL_STATES

# LSF's termination keywords with the text bjobs -o exit_reason shows (no final period).
REASONS: dict[str, str] = {
    "TERM_ADMIN": "TERM_ADMIN: job killed by root or an administrator",
    "TERM_OWNER": "TERM_OWNER: job killed by owner",
    "TERM_FORCE_OWNER": "TERM_FORCE_OWNER: job killed by owner without time for cleanup",
    "TERM_FORCE_ADMIN": "TERM_FORCE_ADMIN: job killed by root or LSF administrator without time for cleanup",
    "TERM_MEMLIMIT": "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit",
    "TERM_RUNLIMIT": "TERM_RUNLIMIT: job killed after reaching LSF run time limit",
    "TERM_CPULIMIT": "TERM_CPULIMIT: job killed after reaching LSF CPU usage limit",
    "TERM_CWD_NOTEXIST": "TERM_CWD_NOTEXIST: current working directory not accessible or does not exist",
    "TERM_LOAD": "TERM_LOAD: job killed after load exceeds threshold",
    "TERM_UNKNOWN": "TERM_UNKNOWN: LSF cannot determine a termination reason",
    "TERM_REQUEUE_OWNER": "TERM_REQUEUE_OWNER: job killed and requeued by owner",
    "TERM_REQUEUE_ADMIN": "TERM_REQUEUE_ADMIN: job killed and requeued by root or LSF administrator",
    "TERM_EXTERNAL_SIGNAL": "TERM_EXTERNAL_SIGNAL: job killed by a signal external to LSF",
}

PEND_REASONS = {
    "PEND": "New job is waiting for scheduling",
    "PSUSP": "The job was suspended by the user while pending",
    "WAIT": "Job is a chunk job member waiting to run",
    "PROV": "Job is waiting for the host to be provisioned",
}


def reason_text(keyword_or_text: str) -> str:
    """``TERM_MEMLIMIT`` -> its full LSF text; anything else unchanged."""
    return REASONS.get(keyword_or_text.strip(), keyword_or_text.strip())


def parse_plan(text: str, source: str = "FAKE_LSF_PLAN") -> list[dict[str, object]]:
    """``PEND:2,RUN:3,EXIT:137:TERM_MEMLIMIT`` -> segments ``{"state", "seconds", "exit_code", "reason"}``.

    Non-terminal steps take a duration in seconds (the last one may omit it: the job stays there). A terminal step
    (DONE, EXIT, PDONE, PERR) ends the plan; EXIT takes an optional exit code (empty means blank, as for a job
    killed while pending) and an optional reason keyword or text. ``REAL`` means run the command for real.
    """
    segments: list[dict[str, object]] = []
    steps = [step.strip() for step in text.split(",") if step.strip()]
    if not steps:
        raise EmulatorError(f"{source} is empty; write steps like PEND:1,RUN:2,DONE")
    for index, step in enumerate(steps):
        parts = step.split(":", 2)
        state = parts[0].strip().upper()
        if state not in PLAN_STATES:
            raise EmulatorError(
                f"{source}: step {step!r} has unknown state {state!r}; use one of {', '.join(sorted(PLAN_STATES))}"
            )
        if state in TERMINAL_STATES:
            if index != len(steps) - 1:
                raise EmulatorError(f"{source}: terminal step {step!r} must be the last one in {text!r}")
            code_text = parts[1].strip() if len(parts) > 1 else ""
            if code_text and not code_text.lstrip("-").isdigit():
                raise EmulatorError(f"{source}: exit code {code_text!r} in {step!r} is not a number")
            segments.append(
                {
                    "state": state,
                    "seconds": None,
                    "exit_code": int(code_text) if code_text else None,
                    "reason": reason_text(parts[2]) if len(parts) > 2 else "",
                }
            )
            continue
        seconds: float | None = None
        if len(parts) > 1 and parts[1].strip():
            try:
                seconds = float(parts[1])
            except ValueError:
                raise EmulatorError(f"{source}: duration in {step!r} is not a number of seconds") from None
        elif index != len(steps) - 1:
            raise EmulatorError(f"{source}: step {step!r} needs a duration (only the last step may omit it)")
        segments.append({"state": state, "seconds": seconds, "exit_code": None, "reason": ""})
    return segments


def plan_for(job_name: str, knobs: Knobs) -> list[dict[str, object]] | None:
    """The plan for a job of this name: the first FAKE_LSF_PLANS regex that matches, else FAKE_LSF_PLAN.

    FAKE_LSF_PLANS is a JSON object (or the path of a JSON file holding one) of job-name regex -> plan, tried in
    order with ``re.search``. None (or the plan ``REAL``) means run the command for real.
    """
    plans_text = knobs.get("FAKE_LSF_PLANS").strip()
    if plans_text:
        if not plans_text.startswith("{"):
            try:
                with open(plans_text) as handle:
                    plans_text = handle.read()
            except OSError as exc:
                raise EmulatorError(f"FAKE_LSF_PLANS={plans_text!r}: cannot read it ({exc})") from exc
        try:
            plans = json.loads(plans_text)
        except json.JSONDecodeError as exc:
            raise EmulatorError(f"FAKE_LSF_PLANS is not a JSON object of regex -> plan ({exc})") from exc
        if not isinstance(plans, dict):
            raise EmulatorError("FAKE_LSF_PLANS must be a JSON object of job-name regex -> plan")
        for pattern, plan in plans.items():
            if re.search(pattern, job_name):
                return (
                    None if str(plan).strip().upper() == "REAL" else parse_plan(str(plan), f"FAKE_LSF_PLANS[{pattern}]")
                )
    global_plan = knobs.get("FAKE_LSF_PLAN").strip()
    if global_plan and global_plan.upper() != "REAL":
        return parse_plan(global_plan)
    return None


@dataclass
class View:
    """A job as bjobs/bhist see it at one moment. ``timeline`` is [(state, start, end or None)], oldest first."""

    stat: str
    exit_code: int | None
    exit_reason: str
    start_time: float | None
    finish_time: float | None
    timeline: list[tuple[str, float, float | None]] = field(default_factory=list)
    killed_while_pending: bool = False

    @property
    def finished(self) -> bool:
        """DONE, EXIT, PDONE or PERR."""
        return self.stat in TERMINAL_STATES

    @property
    def pend_reason(self) -> str:
        """The pend_reason text bjobs shows for a pending state, else ""."""
        return PEND_REASONS.get(self.stat, "")


def _kill_outcome(job: Job, default_code: int | None) -> tuple[str, int | None, str]:
    """Final (stat, exit_code, reason) for a job bkill ended while it was dispatched."""
    if job.kill_kind == "done":
        return "DONE", None, ""
    if job.kill_kind == "force":
        return "EXIT", default_code, REASONS["TERM_FORCE_OWNER"]
    if job.kill_kind == "signal":
        return "EXIT", default_code, ""
    return "EXIT", default_code, REASONS["TERM_OWNER"]


def _killed_pending(job: Job, timeline: list[tuple[str, float, float | None]], at: float) -> View:
    if timeline:
        state, start, _ = timeline[-1]
        timeline[-1] = (state, start, at)
    stat = "DONE" if job.kill_kind == "done" else "EXIT"
    reason = "" if stat == "DONE" else REASONS["TERM_OWNER"]
    return View(stat, None, reason, None, at, timeline, killed_while_pending=True)


def observe(job: Job, now: float, kill_delay: float, unknown: tuple[float, float] | None = None) -> View:
    """The job's state at ``now``.

    ``kill_delay``: how long a killed running job still shows its old state. ``unknown``: (after, for) seconds of
    RUN after which a real job shows UNKWN for a while (FAKE_LSF_UNKWN_AFTER).
    """
    if job.mode == "scripted" and job.plan:
        return _observe_scripted(job, now, kill_delay)
    if job.mode == "held":
        timeline: list[tuple[str, float, float | None]] = [("PSUSP", job.submit_time, None)]
        if job.kill_time is not None and job.kill_time <= now:
            return _killed_pending(job, timeline, job.kill_time)
        return View("PSUSP", None, "", None, None, timeline)
    return _observe_real(job, now, kill_delay, unknown)


def parse_unknown(text: str) -> tuple[float, float] | None:
    """FAKE_LSF_UNKWN_AFTER ``A[:B]``: UNKWN from A seconds after the start, for B seconds (for ever if no B)."""
    if not text.strip():
        return None
    after, _, length = text.partition(":")
    try:
        return float(after), float(length) if length.strip() else float("inf")
    except ValueError:
        raise EmulatorError(f"FAKE_LSF_UNKWN_AFTER={text!r}: write SECONDS or SECONDS:DURATION, e.g. 1:2") from None


def _observe_real(job: Job, now: float, kill_delay: float, unknown: tuple[float, float] | None = None) -> View:
    """A real job's state at ``now``: PEND until the runner starts it, then RUN (or UNKWN), then how it ended."""
    if job.start_time is None:
        timeline: list[tuple[str, float, float | None]] = [("PEND", job.submit_time, None)]
        if job.kill_time is not None:
            return _killed_pending(job, timeline, job.kill_time)
        return View("PEND", None, "", None, None, timeline)
    timeline = [("PEND", job.submit_time, job.start_time)]
    shown_end = _shown_end(job, kill_delay)
    if shown_end is None or shown_end > now:
        return _observe_running(job, job.start_time, now, timeline, unknown)
    timeline.append(("RUN", job.start_time, shown_end))
    stat, code, reason = _real_outcome(job)
    return View(stat, code, reason, job.start_time, shown_end, timeline)


def _shown_end(job: Job, kill_delay: float) -> float | None:
    """When a started real job is seen to end; None while it has not.

    Its finish, but not before ``kill_delay`` after a bkill; for bkill -r (force) the kill itself at the latest.
    """
    shown_end = job.finish_time
    if shown_end is not None and job.kill_time is not None and job.kill_kind != "force":
        # LSF: "for a short period of time after bkill, bjobs may still report that the job is running".
        shown_end = max(shown_end, job.kill_time + kill_delay)
    if job.kill_kind == "force" and job.kill_time is not None:
        shown_end = job.kill_time if shown_end is None else min(shown_end, job.kill_time)
    return shown_end


def _observe_running(
    job: Job,
    start_time: float,
    now: float,
    timeline: list[tuple[str, float, float | None]],
    unknown: tuple[float, float] | None,
) -> View:
    """A started real job not yet seen to end: RUN, or UNKWN when its runner is gone or FAKE_LSF_UNKWN_AFTER says."""
    timeline.append(("RUN", start_time, None))
    if job.finish_time is None and job.runner_pid is not None and not running(job.runner_pid):
        # The runner (our sbatchd) is gone without recording an end: mbatchd has lost contact.
        timeline[-1] = ("UNKWN", start_time, None)
        return View("UNKWN", None, "", start_time, None, timeline)
    if unknown is not None and now >= start_time + unknown[0]:
        lost, found = start_time + unknown[0], start_time + unknown[0] + unknown[1]
        timeline[-1] = ("RUN", start_time, lost)
        if now < found:
            timeline.append(("UNKWN", lost, None))
            return View("UNKWN", None, "", start_time, None, timeline)
        timeline += [("UNKWN", lost, found), ("RUN", found, None)]
    return View("RUN", None, "", start_time, None, timeline)


def _real_outcome(job: Job) -> tuple[str, int | None, str]:
    """Final (stat, exit_code, reason) of a real job that has ended: killed, over its run limit, done or exited."""
    status = job.exit_status
    if job.kill_time is not None:
        return _kill_outcome(job, status if status else 130)
    if job.runlimit_hit:
        return "EXIT", status, REASONS["TERM_RUNLIMIT"]
    if status == 0:
        return "DONE", None, ""
    return "EXIT", status, ""


def _observe_scripted(job: Job, now: float, kill_delay: float) -> View:
    assert job.plan is not None
    timeline: list[tuple[str, float, float | None]] = []
    clock = job.submit_time
    terminal: dict[str, object] | None = None
    for segment in job.plan:
        state = str(segment["state"])
        if state in TERMINAL_STATES:
            terminal = segment
            break
        seconds = segment["seconds"]
        end = None if seconds is None else clock + float(seconds)  # type: ignore[arg-type]
        timeline.append((state, clock, end))
        if end is None:
            break
        clock = end
    finish_at = clock if terminal is not None else None
    start_time = next((start for state, start, _ in timeline if state not in PENDING_STATES), None)

    if job.kill_time is not None and (finish_at is None or job.kill_time < finish_at):
        kill_at = job.kill_time
        # Cut the plan at the kill and find the state the job was in.
        cut: list[tuple[str, float, float | None]] = []
        for state, start, end in timeline:
            if start > kill_at:
                break
            cut.append((state, start, end if end is not None and end <= kill_at else None))
        current = cut[-1][0] if cut else "PEND"
        if current in PENDING_STATES:
            return _killed_pending(job, cut, kill_at)
        shown_end = kill_at if job.kill_kind == "force" else kill_at + kill_delay
        state, start, _ = cut[-1]
        cut[-1] = (state, start, shown_end)
        code = 128 + job.kill_signal if job.kill_kind == "signal" and job.kill_signal else 130
        timeline, finish_at = cut, shown_end
        stat, exit_code, reason = _kill_outcome(job, code)
        terminal = {"state": stat, "exit_code": exit_code, "reason": reason}
        start_time = next((start for state, start, _ in timeline if state not in PENDING_STATES), None)

    if terminal is not None and finish_at is not None and finish_at <= now:
        final_code = terminal.get("exit_code")
        stat = str(terminal["state"])
        return View(
            stat,
            final_code if isinstance(final_code, int) else None,  # DONE shows a blank exit code
            str(terminal.get("reason") or ""),
            start_time,
            finish_at,
            timeline,
        )
    # Still on the way: the segment that contains ``now``.
    shown = [(state, start, end) for state, start, end in timeline if start <= now]
    if not shown:
        shown = timeline[:1]
    current_state, current_start, _ = shown[-1]
    shown[-1] = (current_state, current_start, None)
    started = next((start for state, start, _ in shown if state not in PENDING_STATES), None)
    return View(current_state, None, "", started, None, shown)
