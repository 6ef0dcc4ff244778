"""``LsfJobTrigger``: the triggerer side of ``LsfJobOperator``; follows one LSF job to its end without blocking."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from hortacloud.lsf.batch import bjobs_batch, until_next_tick
from hortacloud.lsf.hook import LsfHook
from hortacloud.lsf.parsers import LsfError, LsfRejected
from hortacloud.lsf.settings import LsfSettings
from hortacloud.lsf.watch import AskHistory, Finished, JobWatch, Outcome

#: Task states in which ``on_kill`` leaves the job alone: the task still waits on it (another triggerer took the
#: trigger over) or has resumed and follows it itself; every other state is a user's cancel (failed, success,
#: cleared). See README, "Cancelling".
FOLLOWED_STATES = frozenset({"deferred", "scheduled", "queued", "running"})

# Kills in flight, so the event loop keeps a reference until each ends (asyncio holds only weak ones).
_KILLS: set[asyncio.Task[None]] = set()


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

    ``on_kill`` (Airflow 3.3: the user marked the task failed or success, or cleared it) runs ``bkill`` when
    ``cancel_on_kill``, after reading the task's state through the Task SDK: a task still deferred means another
    triggerer took this trigger over (Airflow calls ``on_kill`` on the old one too, apache/airflow#73454), and the job
    is left alone. The kill itself is shielded from the trigger's cancellation and retried for
    ``kill_timeout_seconds``. A triggerer restart or a cancelled ``run()`` never kills the job.

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
                except LsfRejected as err:
                    # No bjobs on this host, a missing profile: retrying for an hour cannot mend it.
                    outcome = Finished(watch.payload("error", f"Cannot follow LSF job {self.job_id}: {err}"))
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
        """The trigger left this triggerer: bkill the job if the user cancelled the task, else leave it running."""
        if not self.cancel_on_kill:
            self.log.info("Task killed; LSF job %s left running (cancel_on_kill is off)", self.job_id)
            return
        known, state = await self._task_state()
        if known and state in FOLLOWED_STATES:
            self.log.info(
                "Trigger moved away while the task is %s (another triggerer follows LSF job %s, or the task resumed): "
                "the job is left running",
                state,
                self.job_id,
            )
            return
        why = f"the task is {state or 'cleared'}" if known else "the task's state could not be read"
        self.log.info("Cancelling LSF job %s: %s", self.job_id, why)
        kill = asyncio.create_task(self._kill_until_done(), name=f"bkill {self.job_id}")
        _KILLS.add(kill)
        kill.add_done_callback(_KILLS.discard)
        # Shielded: Airflow cancels a trigger again while its on_kill runs, and stops waiting after on_kill_timeout;
        # the kill goes on to its own end and logs it either way.
        await asyncio.shield(kill)

    async def _task_state(self) -> tuple[bool, str | None]:
        """(known, state) of this trigger's task instance, asked through the triggerer's Task SDK channel."""
        ti = getattr(self, "task_instance", None)
        try:
            from airflow.sdk.execution_time import task_runner
            from airflow.sdk.execution_time.comms import GetTaskStates

            comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
            if ti is None or comms is None:
                return False, None
            raw_index = getattr(ti, "map_index", None)
            map_index = -1 if raw_index is None else int(raw_index)
            request = GetTaskStates(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=[ti.task_id], map_index=map_index)
            answer = await asyncio.wait_for(comms.asend(request), timeout=10)
            states = getattr(answer, "task_states", {}).get(ti.run_id, {})
            key = ti.task_id if map_index < 0 else f"{ti.task_id}_{map_index}"
            state = states.get(key)
            return True, None if state is None else str(state)
        except Exception as err:
            self.log.warning("Could not read the state of task %s (%s)", getattr(ti, "task_id", "?"), err)
            return False, None

    async def _kill_until_done(self) -> None:
        """bkill, retried with backoff while LSF is slow or down, for at most ``kill_timeout_seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.kill_timeout_seconds
        hook = self._hook()
        delay, attempt = 1.0, 0
        try:
            await hook.aprepare()
            while True:
                attempt += 1
                try:
                    outcome = await asyncio.wait_for(hook.akill(self.job_id), max(deadline - loop.time(), 0.1))
                except LsfRejected as err:
                    self.log.error("bkill %s refused: %s; the job may still be running", self.job_id, err)
                    return
                except (LsfError, TimeoutError) as err:
                    if loop.time() + delay >= deadline:
                        self.log.error(
                            "Could not bkill LSF job %s in %d tries within %gs (last: %s); it may still be running: "
                            "bkill %s by hand",
                            self.job_id,
                            attempt,
                            self.settings.kill_timeout_seconds,
                            err or "no answer in time",
                            self.job_id,
                        )
                        return
                    self.log.warning(
                        "bkill %s failed (try %d): %s; retrying in %.0fs", self.job_id, attempt, err, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                self.log.info("Task cancelled: bkill %s -> %s (try %d)", self.job_id, outcome, attempt)
                return
        except Exception:
            self.log.exception("bkill %s failed; the job may still be running", self.job_id)
