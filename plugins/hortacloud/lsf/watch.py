"""The life of one LSF job as the operator sees it: from bjobs and bhist answers to exactly one final event.

Plain Python, shared by the blocking operator and the deferred trigger, so both read a job's states the same way.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from hortacloud.lsf.parsers import BjobsResult, JobStatus, phase_of, state_note

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AskHistory:
    """bjobs no longer shows the job (cleaned after CLEAN_PERIOD, or its id was reused): bhist must be asked."""


ASK_HISTORY = AskHistory()


@dataclass(frozen=True)
class Finished:
    """The job ended, or following it failed for good; ``event`` is the one payload the task resumes with."""

    event: dict[str, Any]


#: What one observation says: keep polling (None), ask bhist, or finished.
Outcome = Finished | AskHistory | None


@dataclass
class JobWatch:
    """Follows one job from bjobs answers to exactly one final event payload; shared by blocking and deferred modes.

    Each ``observe*`` call returns an :data:`Outcome`: None (keep polling), :data:`ASK_HISTORY` (ask bhist, then
    pass its answer to ``observe_history``) or :class:`Finished` with the event payload ``{"status":
    "success"|"failed"|"error", ...}``. State changes are logged through ``log``.
    """

    job_id: str
    job_name: str
    submitted_at: float
    not_found_grace: float
    max_poll_failures: int
    log: Any = log  # a logging.Logger or Airflow's structlog logger (self.log)
    last_stat: str | None = None
    failures: int = 0

    def payload(self, status: str, message: str, job: JobStatus | None = None) -> dict[str, Any]:
        """The event payload: the status, the job, LSF's state, exit code and reason, and a message for the log."""
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

    def final(self, job: JobStatus, source: str = "bjobs") -> Finished:
        """The end of the job as one event: success, or failed with LSF's exit code and reason."""
        self._note_state(job)
        if job.phase == "success":
            return Finished(
                self.payload("success", f"LSF job {self.job_id} ({self.job_name}) finished {job.stat}", job)
            )
        code = "unknown exit code" if job.exit_code is None else f"exit code {job.exit_code}"
        reason = job.exit_reason or "no exit reason given"
        message = f"LSF job {self.job_id} ({self.job_name}) ended {job.stat} with {code}: {reason} [{source}]"
        return Finished(self.payload("failed", message, job))

    def observe(self, result: BjobsResult, now: float) -> Outcome:
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
            return ASK_HISTORY
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
        return ASK_HISTORY

    def observe_history(self, job: JobStatus | None) -> Outcome:
        """Take bhist's answer after bjobs lost the job: its end, None if still alive, or 'history lost'."""
        if job is not None and (not job.job_name or not self.job_name or job.job_name == self.job_name):
            if job.phase in ("success", "failure"):
                return self.final(job, source="bhist")
            self.log.info("bhist still sees LSF job %s as %s; waiting", self.job_id, job.stat)
            return None
        return Finished(
            self.payload(
                "failed",
                f"LSF job {self.job_id} ({self.job_name}) is known neither to bjobs nor to bhist: its history is "
                "lost and its outcome unknown",
            )
        )

    def observe_failure(self, error: Exception) -> Outcome:
        """Take one failed poll; after ``max_poll_failures`` in a row, give up with an error payload."""
        self.failures += 1
        if self.failures >= self.max_poll_failures:
            return Finished(
                self.payload(
                    "error",
                    f"Could not ask LSF about job {self.job_id} ({self.job_name}) {self.failures} times in a row; "
                    f"last error: {error}. The job may still be running; a retry of this task re-attaches to it by "
                    "name.",
                )
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
