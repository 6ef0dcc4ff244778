"""The triggerer side of ``LsfJobOperator``: polls one LSF job with bjobs until it ends, without blocking the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from airflow.triggers.base import BaseTrigger, TriggerEvent

from hortacloud.lsf import NEED_HISTORY, JobWatch, LsfError, LsfHook


class LsfJobTrigger(BaseTrigger):
    """Poll an LSF job (``bjobs -a -json -o ...``) and fire exactly one event when it ends.

    The event payload is ``{"status": "success"|"failed"|"error", "job_id", "job_name", "stat", "exit_code",
    "exit_reason", "message"}``. Transient failures are retried with backoff; after ``max_poll_failures`` in a row
    the trigger fires ``error`` (the job is left alone: a task retry re-attaches to it by name). A job missing from
    bjobs is given ``not_found_grace`` seconds after ``submitted_at``, then bhist is asked.

    ``on_kill`` (Airflow 3.3: the user marked the task failed or cleared it) runs ``bkill`` when ``cancel_on_kill``;
    a triggerer restart or a cancelled ``run()`` never kills the job.

    :param job_id: the LSF job id.
    :param job_name: its ``-J`` name; a record under another name means the id was reused.
    :param submitted_at: epoch seconds of submission (start of the not-found grace period).
    :param lsf_conn_id: see ``LsfHook``.
    :param profile: see ``LsfHook``.
    :param poll_interval: seconds between bjobs calls.
    :param not_found_grace: seconds after submission during which "not found" is not yet alarming.
    :param max_poll_failures: consecutive failed polls tolerated.
    :param command_timeout: seconds each LSF command may take.
    :param output_format: ``json`` or ``text``.
    :param bhist_files: ``bhist -n``.
    :param cancel_on_kill: whether ``on_kill`` runs bkill.
    """

    def __init__(
        self,
        *,
        job_id: str,
        job_name: str,
        submitted_at: float,
        lsf_conn_id: str | None = LsfHook.default_conn_name,
        profile: str = "",
        poll_interval: float = 60.0,
        not_found_grace: float = 120.0,
        max_poll_failures: int = 10,
        command_timeout: float = 120.0,
        output_format: Literal["json", "text"] = "json",
        bhist_files: int = 2,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.job_name = job_name
        self.submitted_at = submitted_at
        self.lsf_conn_id = lsf_conn_id
        self.profile = profile
        self.poll_interval = poll_interval
        self.not_found_grace = not_found_grace
        self.max_poll_failures = max_poll_failures
        self.command_timeout = command_timeout
        self.output_format = output_format
        self.bhist_files = bhist_files
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "job_name": self.job_name,
                "submitted_at": self.submitted_at,
                "lsf_conn_id": self.lsf_conn_id,
                "profile": self.profile,
                "poll_interval": self.poll_interval,
                "not_found_grace": self.not_found_grace,
                "max_poll_failures": self.max_poll_failures,
                "command_timeout": self.command_timeout,
                "output_format": self.output_format,
                "bhist_files": self.bhist_files,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _hook(self, retries: int = 0) -> LsfHook:
        # Polls are retried by the watch (backoff, bounded failures); a single call is not retried inside the hook.
        return LsfHook(
            self.lsf_conn_id,
            profile=self.profile,
            command_timeout=self.command_timeout,
            retries=retries,
            retry_delay=min(self.poll_interval, 5.0),
            output_format=self.output_format,
            bhist_files=self.bhist_files,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watch = JobWatch(
            job_id=self.job_id,
            job_name=self.job_name,
            submitted_at=self.submitted_at,
            not_found_grace=self.not_found_grace,
            max_poll_failures=self.max_poll_failures,
            log=self.log,
        )
        try:
            hook = self._hook()
            await hook.aprepare()
            self.log.info("Following LSF job %s (%s) every %gs", self.job_id, self.job_name, self.poll_interval)
            # A first wait: the job was just submitted, and an event fired within seconds of deferring can race
            # the executor's report of the deferring workload (Airflow 3.3 then marks the resumed task failed).
            await asyncio.sleep(min(self.poll_interval, 10.0))
            while True:
                outcome: dict[str, Any] | str | None
                try:
                    outcome = watch.observe(await hook.astatuses([self.job_id]), time.time())
                    if outcome == NEED_HISTORY:
                        outcome = watch.observe_history(await hook.ahistory(self.job_id))
                except LsfError as err:
                    outcome = watch.observe_failure(err)
                if isinstance(outcome, dict):
                    yield TriggerEvent(outcome)
                    return
                await asyncio.sleep(watch.backoff(self.poll_interval))
        except asyncio.CancelledError:
            # Triggerer shutdown, reassignment or timeout: the job keeps running and is not killed here.
            raise
        except Exception as err:
            self.log.exception("Following LSF job %s failed", self.job_id)
            yield TriggerEvent(watch.payload("error", f"Following LSF job {self.job_id} failed: {err!r}"))

    async def on_kill(self) -> None:
        """The user killed the deferred task (Airflow 3.3): bkill the job; a finished or unknown job is fine."""
        if not self.cancel_on_kill:
            self.log.info("Task killed; LSF job %s left running (cancel_on_kill is off)", self.job_id)
            return
        hook = self._hook(retries=2)
        await hook.aprepare()
        outcome = await hook.akill(self.job_id)
        self.log.info("Task killed: bkill %s -> %s", self.job_id, outcome)
