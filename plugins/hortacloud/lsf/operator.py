"""``LsfJobOperator``: submit one command to LSF with bsub, follow it to its end, cancel it, never run it twice."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator, conf
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from hortacloud.lsf.commands import bsub_argv, lsf_job_name, shell_line
from hortacloud.lsf.hook import LsfHook
from hortacloud.lsf.parsers import JobStatus, LsfError, LsfRejected
from hortacloud.lsf.settings import LsfSettings
from hortacloud.lsf.trigger import LsfJobTrigger
from hortacloud.lsf.watch import AskHistory, Finished, JobWatch, Outcome

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Key in ``context["task_state_store"]`` (Airflow 3.3) and in XCom: {"job_id", "job_name", "output_file",
#: "submitted_at", "memory_mib"}.
STATE_KEY = "lsf_job"

#: LSF's exit reason for a job killed at its memory limit.
MEMLIMIT = "TERM_MEMLIMIT"


class LsfJobOperator(BaseOperator):
    """Run ``command`` as an LSF job and succeed or fail with it.

    Before submitting, the operator looks for the job an earlier try of the same task instance submitted (its id in
    the task state store, else ``bjobs -a -J <name>``): it attaches to a pending or running one, and returns at once
    if it finished successfully, so a retry after a worker crash or a lost SSH link never starts a second transfer.
    An earlier job that failed is resubmitted (that is what the retry is for) unless ``resubmit_failed`` is off.

    The ``-J`` name is ``<job_name>.<hash>``, the hash taken over dag_id, run_id, task_id, map_index and source, so
    it is the same on every try and readable in ``bjobs`` (``seg0510-1.3f9c2a7d1e``).

    With ``name_scope="dag"`` the hash leaves out run_id and map_index: every run of the DAG that transfers the same
    source uses the same name, and a run that finds a pending or running job of that name follows it instead of
    starting a second, concurrent transfer of the same folder. Finished jobs of that name are other runs' history:
    a new run submits again (its own finished job, kept in the task state store, still counts for its retries).

    ``command`` and the other templated fields are rendered as Jinja templates: never put a value a user typed
    into them. For jobs built from data, use :class:`LsfTransferOperator`.

    :param command: the job's command line, one bsub argument, run by the job's shell (templated).
    :param job_name: readable prefix of the ``-J`` name, e.g. the old script's ``seg0510-1`` (templated).
    :param source: what this job transfers; part of the name hash, so two sources never share a job (templated).
    :param lsf_conn_id: Airflow connection (conn_type ``ssh``: login node; otherwise local). See ``LsfHook``.
    :param slots: ``bsub -n``.
    :param project: ``bsub -P`` (templated).
    :param lsf_queue: ``bsub -q``; empty for LSF's default queue (templated). Not ``queue``: every operator
        has that one already (the executor queue).
    :param runlimit_minutes: ``bsub -W``; 0 for none.
    :param output_file: ``bsub -o``, ``%J`` allowed; the job's own last lines go into the failure message
        (templated).
    :param memory_mib: ``bsub -M`` and ``rusage[mem=]`` in MiB; 0 asks for none (the queue's default limit).
    :param memory_growth: after LSF killed the job for memory (``TERM_MEMLIMIT``), the retry asks for this many
        times the memory of the killed job; without ``memory_mib`` such a job fails, naming the setting.
    :param settings: polling, timeouts and retries (``LsfSettings``, or its mapping); None: the site configuration's
        ``[lsf]`` values, read when the task runs.
    :param cancel_on_kill: bkill the job when the task is killed (blocking ``on_kill`` and the trigger's).
    :param reattach: look for an earlier try's job before submitting.
    :param name_scope: ``run`` (a job per run) or ``dag`` (runs share a live job for the same source; see above).
    :param resubmit_failed: resubmit when the earlier try's job ended in failure; off: fail with its result.
    :param dry_run_submit: log the bsub command line and submit nothing (not ``dry_run``: a BaseOperator method).
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``) instead of a worker slot.
    """

    template_fields: Sequence[str] = ("command", "job_name", "source", "project", "lsf_queue", "output_file")
    template_fields_renderers = {"command": "bash"}
    ui_color = "#c9e4f6"

    def __init__(
        self,
        *,
        command: str,
        job_name: str = "",
        source: str = "",
        lsf_conn_id: str | None = LsfHook.default_conn_name,
        slots: int | None = None,
        project: str = "",
        lsf_queue: str = "",
        runlimit_minutes: int = 0,
        output_file: str = "",
        memory_mib: int = 0,
        memory_growth: float = 2.0,
        settings: LsfSettings | Mapping[str, Any] | None = None,
        cancel_on_kill: bool = True,
        reattach: bool = True,
        name_scope: Literal["run", "dag"] = "run",
        resubmit_failed: bool = True,
        dry_run_submit: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if name_scope not in ("run", "dag"):
            raise ValueError(f"name_scope {name_scope!r} must be 'run' or 'dag'")
        if memory_mib < 0 or memory_growth < 1:
            raise ValueError(f"memory_mib {memory_mib!r} must be >= 0 and memory_growth {memory_growth!r} >= 1")
        self.command = command
        self.job_name = job_name
        self.source = source
        self.lsf_conn_id = lsf_conn_id
        self.slots = slots
        self.project = project
        self.lsf_queue = lsf_queue
        self.runlimit_minutes = runlimit_minutes
        self.output_file = output_file
        self.memory_mib = memory_mib
        self.memory_growth = memory_growth
        self.settings = settings
        self.cancel_on_kill = cancel_on_kill
        self.reattach = reattach
        self.name_scope = name_scope
        self.resubmit_failed = resubmit_failed
        self.dry_run_submit = dry_run_submit
        self.deferrable = deferrable
        self.lsf_job_id: str | None = None
        self._memory = memory_mib  # what the next submission asks for (grows after TERM_MEMLIMIT)

    @cached_property
    def hook(self) -> LsfHook:
        """The LSF hook on ``lsf_conn_id`` with this task's settings."""
        return LsfHook(self.lsf_conn_id, settings=self.settings)

    # -- helpers

    def lsf_name(self, context: Context) -> str:
        """The task instance's ``-J`` name: the same on every try (and, with ``name_scope="dag"``, every run)."""
        ti = context["ti"]
        per_run = self.name_scope == "run"
        return lsf_job_name(
            self.job_name,
            dag_id=ti.dag_id,
            run_id=ti.run_id if per_run else "",
            task_id=ti.task_id,
            map_index=getattr(ti, "map_index", -1) if per_run else None,
            source=self.source,
        )

    def bsub_argv(self, name: str, memory_mib: int | None = None) -> list[str]:
        """The ``bsub`` argv this task submits under ``name`` (with ``memory_mib``, default ``self.memory_mib``)."""
        return bsub_argv(
            command=self.command,
            job_name=name,
            slots=self.slots,
            project=self.project,
            queue=self.lsf_queue,
            runlimit_minutes=self.runlimit_minutes,
            output_file=self.output_file,
            memory_mib=self.memory_mib if memory_mib is None else memory_mib,
        )

    @staticmethod
    def _state_store(context: Context) -> Any | None:
        return context.get("task_state_store")

    def _stored_job(self, context: Context) -> dict[str, Any] | None:
        store = self._state_store(context)
        if store is None:
            return None
        try:
            value = store.get(STATE_KEY)
        except Exception as err:  # no supervisor (dag.test, older Airflow): the name lookup still protects us
            self.log.debug("task_state_store unavailable: %s", err)
            return None
        return value if isinstance(value, dict) else None

    def _recorded_job(self, context: Context) -> dict[str, Any]:
        """The current try's job record: the task state store, else its XCom (cleared at the start of each try)."""
        stored = self._stored_job(context)
        if stored:
            return stored
        try:
            value = context["ti"].xcom_pull(task_ids=context["ti"].task_id, key=STATE_KEY)
        except Exception as err:  # no XCom backend (a unit test's task instance)
            self.log.debug("XCom %s unavailable: %s", STATE_KEY, err)
            return {}
        return value if isinstance(value, dict) else {}

    def _remember(self, context: Context, job_id: str, name: str, submitted_at: float) -> None:
        record = {
            "job_id": job_id,
            "job_name": name,
            "output_file": self._output_path(job_id),
            "submitted_at": submitted_at,
            "memory_mib": self._memory,
        }
        store = self._state_store(context)
        if store is not None:
            try:
                store.set(STATE_KEY, record)
            except Exception as err:
                self.log.debug("task_state_store unavailable: %s", err)
        context["ti"].xcom_push(key=STATE_KEY, value=record)

    def _output_path(self, job_id: str) -> str:
        return self.output_file.replace("%J", job_id).replace("%I", "0") if self.output_file else ""

    def _watch(self, job_id: str, name: str, submitted_at: float) -> JobWatch:
        settings = self.hook.settings
        return JobWatch(
            job_id=job_id,
            job_name=name,
            submitted_at=submitted_at,
            not_found_grace=settings.not_found_grace_seconds,
            max_poll_failures=settings.max_poll_failures,
            log=self.log,
        )

    def _earlier_job(self, context: Context, name: str) -> tuple[JobStatus | None, set[str]]:
        """The job to follow instead of submitting, and the ids of finished jobs of ``name`` that are not ours.

        First the job this task instance recorded in the state store (name checked), else the newest of ``name``
        in LSF. With ``name_scope="dag"``, a job found only by name is followed while it is pending or running; a
        finished one belongs to an earlier run and is returned among the ids to ignore.
        """
        stored = self._stored_job(context)
        if stored and stored.get("job_name") == name and stored.get("job_id"):
            job = self._stored_status(str(stored["job_id"]), name)
            if job is not None:
                return job, set()
        found = self.hook.find_by_name(name)
        self._refuse_while_zombie(found)
        if self.name_scope == "dag":
            live = [job for job in found if job.phase not in ("success", "failure")]
            if live:
                self.log.info(
                    "LSF job %s (%s) is already transferring %s (another run, or an earlier try): following it "
                    "instead of starting a second transfer",
                    live[0].job_id,
                    name,
                    self.source or self.task_id,
                )
                return live[0], set()
            if found:
                self.log.info("%d finished LSF job(s) named %s are earlier runs'; submitting anew", len(found), name)
            return None, {job.job_id for job in found}
        if len(found) > 1:
            self.log.warning("LSF knows %d jobs named %s (%s); following the newest", len(found), name, found)
        return (found[0] if found else None), set()

    def _stored_status(self, job_id: str, name: str) -> JobStatus | None:
        """The state of the job this task instance recorded: bjobs, else bhist (bjobs forgets after CLEAN_PERIOD)."""
        try:
            job = self.hook.statuses([job_id]).statuses.get(job_id)
        except LsfError as err:
            self.log.warning("Could not ask LSF about stored job %s (%s); looking it up by name", job_id, err)
            return None
        if job is not None and job.job_name == name:
            return job
        if job is not None:
            self.log.warning(
                "LSF job id %s now belongs to %r (id reused); asking bhist about ours", job_id, job.job_name
            )
        try:
            history = self.hook.history(job_id)
        except LsfError as err:
            self.log.warning("bjobs no longer knows LSF job %s and bhist could not be asked (%s)", job_id, err)
            return None
        if history is not None and (not history.job_name or history.job_name == name):
            self.log.info("bjobs no longer knows LSF job %s (%s); bhist says %s", job_id, name, history.stat)
            return history
        self.log.warning("Neither bjobs nor bhist knows LSF job %s (%s) any more; looking it up by name", job_id, name)
        return None

    def _refuse_while_zombie(self, jobs: Sequence[JobStatus]) -> None:
        """A ZOMBI job may still be running: never start a second transfer of the same source beside it."""
        for job in jobs:
            if job.stat.upper() == "ZOMBI":
                raise AirflowException(
                    f"LSF job {job.job_id} ({job.job_name}) is ZOMBI: LSF could not reach its host to kill it, so it "
                    f"may still be transferring {self.source or self.task_id}. Not submitting a second job beside it. "
                    f"Once bjobs shows it EXIT (or an LSF admin runs bkill -r {job.job_id}), retry or clear this task."
                )

    def _memory_after(self, job: JobStatus, stored: Mapping[str, Any] | None) -> int:
        """The memory to ask for when resubmitting after ``job`` failed; grown after TERM_MEMLIMIT."""
        used = int((stored or {}).get("memory_mib") or self.memory_mib)
        if not (job.exit_reason or "").startswith(MEMLIMIT):
            return max(used, self.memory_mib)
        if not self.memory_mib:
            raise AirflowFailException(self._memory_hint(job.job_id, 0))
        grown = self._grown(used)
        self.log.info("LSF job %s was killed for memory at %d MiB; resubmitting with %d MiB", job.job_id, used, grown)
        return grown

    def _grown(self, used: int) -> int:
        """The memory of the try after a TERM_MEMLIMIT at ``used`` MiB (never less than ``memory_mib``)."""
        return math.ceil(max(used, self.memory_mib) * self.memory_growth)

    def _memory_hint(self, job_id: str, used: int) -> str:
        if not used:
            return (
                f"LSF killed job {job_id} for memory ({MEMLIMIT}) at the queue's default limit; set [lsf] memory_mib "
                "(MiB, bsub -M) above what the job needs, then retry"
            )
        grown = self._grown(used)
        return f"LSF killed job {job_id} for memory ({MEMLIMIT}) at {used} MiB; the next try asks for {grown} MiB"

    def _look_for_earlier(self, context: Context, name: str) -> tuple[JobStatus | None, set[str]]:
        """``_earlier_job`` with LSF's failures turned into task failures: never submit blind."""
        if not self.reattach:
            return None, set()
        try:
            return self._earlier_job(context, name)
        except LsfRejected as err:
            raise AirflowFailException(f"Could not check LSF for an earlier job {name}: {err}") from err
        except LsfError as err:
            raise AirflowException(f"Could not check LSF for an earlier job {name} ({err}); not submitting") from err

    def _submit(self, argv: list[str], name: str, failed_before: set[str]) -> str:
        self.log.info("Submitting: %s", shell_line(argv))
        try:
            job_id = self.hook.submit(argv, name, ignore=failed_before)
        except LsfRejected as err:
            raise AirflowFailException(str(err)) from err
        except LsfError as err:
            raise AirflowException(str(err)) from err
        self.log.info("Submitted LSF job %s (%s) for %s", job_id, name, self.source or self.task_id)
        return job_id

    # -- execution

    def execute(self, context: Context) -> dict[str, Any] | None:
        """Find or submit the job, then follow it here (blocking) or in the triggerer (deferrable)."""
        name = self.lsf_name(context)
        argv = self.bsub_argv(name)
        if self.dry_run_submit:
            self.log.info("Dry run: would submit %s", shell_line(argv))
            return None
        submitted_at = time.time()
        job, failed_before = self._look_for_earlier(context, name)
        if job is not None:
            self.lsf_job_id = job.job_id
            self.log.info("Found LSF job %s (%s), %s", job.job_id, name, job.stat)
            self._refuse_while_zombie([job])
            if job.phase == "success" or (job.phase == "failure" and not self.resubmit_failed):
                self._remember(context, job.job_id, name, submitted_at)
                return self._finish(self._watch(job.job_id, name, submitted_at).final(job).event)
            if job.phase == "failure":
                self.log.info("Earlier LSF job %s failed (%s); submitting it again", job.job_id, job.exit_reason)
                self._memory = self._memory_after(job, self._stored_job(context))
                argv = self.bsub_argv(name, self._memory)
                failed_before.add(job.job_id)
                job = None
            else:
                submitted_at = 0.0  # re-attaching: the job is visible, so no grace period is needed
        if job is None:
            self.lsf_job_id = self._submit(argv, name, failed_before)
        assert self.lsf_job_id is not None
        self._remember(context, self.lsf_job_id, name, submitted_at)
        if self.deferrable:
            self.defer(
                trigger=LsfJobTrigger(
                    job_id=self.lsf_job_id,
                    job_name=name,
                    submitted_at=submitted_at,
                    settings=self.hook.base_settings,
                    lsf_conn_id=self.lsf_conn_id,
                    cancel_on_kill=self.cancel_on_kill,
                ),
                method_name="execute_complete",
                timeout=self.execution_timeout,
            )
        return self._finish(self._wait(self.lsf_job_id, name, submitted_at))

    def _wait(self, job_id: str, name: str, submitted_at: float) -> dict[str, Any]:
        """Blocking mode: the trigger's loop, in the worker."""
        watch = self._watch(job_id, name, submitted_at)
        while True:
            outcome: Outcome
            try:
                outcome = watch.observe(self.hook.statuses([job_id]), time.time())
                if isinstance(outcome, AskHistory):
                    outcome = watch.observe_history(self.hook.history(job_id))
            except LsfError as err:
                outcome = watch.observe_failure(err)
            if isinstance(outcome, Finished):
                return outcome.event
            time.sleep(watch.backoff(self.hook.settings.poll_interval_seconds))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after the triggerer; when the deferral ran out of ``execution_timeout``, bkill the job first."""
        if (
            next_method == TRIGGER_FAIL_REPR
            and (next_kwargs or {}).get("error") == TriggerFailureReason.TRIGGER_TIMEOUT
        ):
            self.lsf_job_id = str(self._recorded_job(context).get("job_id") or "") or None
            if self.lsf_job_id:
                self.log.error(
                    "execution_timeout (%s) ran out; cancelling LSF job %s", self.execution_timeout, self.lsf_job_id
                )
            self.on_kill()
        return super().resume_execution(next_method, next_kwargs, context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: succeed, or raise with the job's own words."""
        if not event or "status" not in event:
            raise AirflowException(f"LSF trigger sent an unreadable event: {event!r}")
        self.lsf_job_id = str(event.get("job_id") or "") or None
        self._memory = int(self._recorded_job(context).get("memory_mib") or self.memory_mib)
        return self._finish(event)

    def _succeed(self, event: dict[str, Any]) -> dict[str, Any]:
        self.log.info("%s", event["message"])
        return {"job_id": event["job_id"], "job_name": event["job_name"], "stat": event.get("stat")}

    def _finish(self, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] == "success":
            return self._succeed(event)
        message = str(event.get("message") or f"LSF job {event.get('job_id')} did not succeed")
        job_id = str(event.get("job_id") or "")
        tail = self.hook.tail(self._output_path(job_id))
        if tail:
            message += f"\nLast lines of the job's output ({self._output_path(job_id)}):\n{tail.rstrip()}"
        if str(event.get("exit_reason") or "").startswith(MEMLIMIT):
            message += f"\n{self._memory_hint(job_id, self._memory)}"
            if not self._memory:
                self.log.error("%s", message)
                raise AirflowFailException(message)  # retrying with the same limit cannot help
        self.log.error("%s", message)
        raise AirflowException(message)

    def on_kill(self) -> None:
        """Blocking mode: the task was killed; bkill the job (a finished or unknown job is fine)."""
        if not self.cancel_on_kill or not self.lsf_job_id:
            return
        try:
            outcome = self.hook.kill(self.lsf_job_id)
        except LsfError as err:
            self.log.error("Could not bkill LSF job %s: %s", self.lsf_job_id, err)
            return
        self.log.info("Task killed: bkill %s -> %s", self.lsf_job_id, outcome)


class LsfTransferOperator(LsfJobOperator):
    """``LsfJobOperator`` for jobs built from data: a run's conf, folder names, a plan step's XCom.

    Nothing of it is ever rendered as a Jinja template. Airflow renders an operator's ``template_fields`` after
    mapping, values from XCom included, so a folder name such as ``{{ conn.hortacloud_s3.password }}`` in a
    ``LsfJobOperator``'s ``command`` would be evaluated and its result put on a ``bsub`` line that every cluster
    user can read with ``bjobs -l``. Here the command is used exactly as the plan built it (every value already
    shell-quoted); the upload DAG's transfers use this operator.
    """

    template_fields: Sequence[str] = ()
