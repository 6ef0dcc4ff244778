"""``LsfJobTrigger``: the triggerer side of ``LsfJobOperator``; follows one LSF job to its end without blocking."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from hortacloud.lsf.batch import bjobs_batch, until_next_tick
from hortacloud.lsf.hook import LsfHook
from hortacloud.lsf.parsers import LsfError
from hortacloud.lsf.settings import LsfSettings
from hortacloud.lsf.watch import AskHistory, Finished, JobWatch, Outcome


class LsfJobTrigger(BaseTrigger):
    """Poll an LSF job (``bjobs -a -json -o ...``) and fire exactly one event when it ends.

    The polls of every trigger in one triggerer that share a connection are batched into one bjobs call per tick
    (``BjobsBatch``). The first poll waits ``settings.first_poll_seconds``: an event fired within seconds of the
    deferral can reach the scheduler before the executor's report that the deferring worker exited, and Airflow 3.3
    then fails the resumed try (README, *Known Airflow issues*).

    The event payload is ``{"status": "success"|"failed"|"error", "job_id", "job_name", "stat", "exit_code",
    "exit_reason", "message"}``. Transient failures are retried with backoff; after ``max_poll_failures`` in a row
    the trigger fires ``error`` (the job is left alone: a task retry re-attaches to it by name). A job missing from
    bjobs is given ``not_found_grace_seconds`` after ``submitted_at``, then bhist is asked.

    ``on_kill`` (Airflow 3.3: the user marked the task failed or cleared it) runs ``bkill`` when ``cancel_on_kill``;
    a triggerer restart or a cancelled ``run()`` never kills the job.

    :param job_id: the LSF job id.
    :param job_name: its ``-J`` name; a record under another name means the id was reused.
    :param submitted_at: epoch seconds of submission (start of the not-found grace period).
    :param lsf_conn_id: see ``LsfHook``.
    :param settings: the operator's ``LsfSettings`` (serialized as a mapping).
    :param cancel_on_kill: whether ``on_kill`` runs bkill.
    """

    def __init__(
        self,
        *,
        job_id: str,
        job_name: str,
        submitted_at: float,
        settings: LsfSettings | Mapping[str, Any],
        lsf_conn_id: str | None = LsfHook.default_conn_name,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.job_name = job_name
        self.submitted_at = submitted_at
        self.settings = LsfSettings.of(settings)
        self.lsf_conn_id = lsf_conn_id
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and every constructor argument (a test round-trips them)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "job_name": self.job_name,
                "submitted_at": self.submitted_at,
                "settings": self.settings.model_dump(),
                "lsf_conn_id": self.lsf_conn_id,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _hook(self, retries: int = 0) -> LsfHook:
        # Polls are retried by the watch (backoff, bounded failures); a single call is not retried inside the hook.
        settings = self.settings.replaced(
            retries=retries, retry_delay_seconds=min(self.settings.poll_interval_seconds, 5.0)
        )
        return LsfHook(self.lsf_conn_id, settings=settings)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Follow the job; yield one event when it ends or can no longer be followed."""
        settings = self.settings
        watch = JobWatch(
            job_id=self.job_id,
            job_name=self.job_name,
            submitted_at=self.submitted_at,
            not_found_grace=settings.not_found_grace_seconds,
            max_poll_failures=settings.max_poll_failures,
            log=self.log,
        )
        interval = settings.poll_interval_seconds
        try:
            hook = self._hook()
            await hook.aprepare()
            batch = bjobs_batch(
                (self.lsf_conn_id, hook.settings.profile, hook.settings.output_format, interval),
                hook,
                window=min(0.5, interval / 4),
            )
            self.log.info("Following LSF job %s (%s) every %gs", self.job_id, self.job_name, interval)
            await asyncio.sleep(settings.first_poll_seconds)
            while True:
                outcome: Outcome
                try:
                    outcome = watch.observe(await batch.status(self.job_id), time.time())
                    if isinstance(outcome, AskHistory):
                        outcome = watch.observe_history(await hook.ahistory(self.job_id))
                except LsfError as err:
                    outcome = watch.observe_failure(err)
                if isinstance(outcome, Finished):
                    yield TriggerEvent(outcome.event)
                    return
                if watch.failures:
                    await asyncio.sleep(watch.backoff(interval))
                else:
                    await asyncio.sleep(until_next_tick(interval, time.time()))
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
