"""The LSF faults an independent acceptance run found (issue 10), each against the LSF emulator.

Never twice (mbatchd lag after a silent bsub, a job bjobs forgot, ZOMBI), a cancel that must reach a slow or down
LSF, a reassigned trigger that must not kill, errors a user can act on, memory kills and the deferral timeout.
The reassignment and the cancel through a real Airflow with two triggerers are in test_lsf_trigger_airflow.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferralTimeout, TaskDeferred
from airflow.sdk.execution_time import task_runner
from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

from devstack.lsf import BIN_DIR, Emulator
from hortacloud.lsf.operator import STATE_KEY
from hortacloud.lsf.trigger import LsfJobTrigger
from tests.fixtures.lsf_task import FakeStore, FakeTI, context_for, logged, lsf_settings, make_op
from tests.fixtures.waiting import wait_until


def deferred(lsf: Emulator, plan: str, ti: FakeTI | None = None, **op_kwargs: Any) -> LsfJobTrigger:
    """Submit in deferrable mode; the trigger it deferred to."""
    lsf.set_knobs(FAKE_LSF_PLAN=plan)
    with pytest.raises(TaskDeferred) as info:
        make_op(deferrable=True, **op_kwargs).execute(context_for(ti))
    trigger = info.value.trigger
    assert isinstance(trigger, LsfJobTrigger)
    return trigger


# -- never twice -------------------------------------------------------------------------------------------------------


def test_a_silent_bsub_is_looked_for_until_mbatchd_shows_the_job(lsf: Emulator) -> None:
    # bsub submits, prints nothing (exit 0), and bjobs shows the new job only 1.5 s later.
    lsf.set_knobs(FAKE_LSF_EMPTY_STDOUT_ONCE=1, FAKE_LSF_QUERY_LAG=1.5, FAKE_LSF_PLAN="RUN:0.3,DONE")
    op = make_op(reattach=False, not_found_grace_seconds=5.0)
    assert op.execute(context_for())["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 1
    assert len(lsf.calls("bjobs")) >= 2  # looked more than once before seeing it


def test_a_stored_job_bjobs_forgot_is_asked_of_bhist_and_done_is_success(lsf: Emulator) -> None:
    store = FakeStore()
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.2,DONE")
    assert make_op().execute(context_for(store=store))["stat"] == "DONE"
    lsf.set_knobs(FAKE_LSF_CLEAN_PERIOD=0)  # CLEAN_PERIOD is over: bjobs no longer knows the job
    cleared = make_op().execute(context_for(store=store))  # a clear of the succeeded task, or a retry
    assert cleared["stat"] == "DONE" and cleared["job_id"] == store.data[STATE_KEY]["job_id"]
    assert len(lsf.argvs("bsub")) == 1
    assert lsf.argvs("bhist") and lsf.argvs("bhist")[-1][-1] == store.data[STATE_KEY]["job_id"]


def test_a_stored_job_bhist_says_failed_is_submitted_again(lsf: Emulator) -> None:
    store = FakeStore()
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.2,EXIT:1")
    with pytest.raises(AirflowException, match="exit code 1"):
        make_op().execute(context_for(store=store))
    lsf.set_knobs(FAKE_LSF_CLEAN_PERIOD=0, FAKE_LSF_PLAN="RUN:0.2,DONE")
    assert make_op().execute(context_for(store=store))["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 2  # the retry is for the failed one


def test_after_zombi_a_retry_never_submits_beside_the_job_that_may_still_run(lsf: Emulator) -> None:
    store = FakeStore()
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.2,UNKWN:0.2,ZOMBI")
    with pytest.raises(AirflowException):
        make_op(source="/groups/seg/2023-05-10").execute(context_for(store=store))
    job_id = store.data[STATE_KEY]["job_id"]
    for context in (context_for(store=store), context_for()):  # by the stored id, and by name alone
        with pytest.raises(AirflowException, match=rf"LSF job {job_id} .* is ZOMBI") as info:
            make_op(source="/groups/seg/2023-05-10").execute(context)
        assert not isinstance(info.value, AirflowFailException)  # a later retry may find it EXIT
        assert "/groups/seg/2023-05-10" in str(info.value)
    assert len(lsf.argvs("bsub")) == 1


# -- errors a user can act on --------------------------------------------------------------------------------------


def test_a_missing_profile_is_named_and_not_retried(lsf: Emulator, tmp_path: Path) -> None:
    gone = str(tmp_path / "misc" / "lsf" / "profile.lsf")
    started = time.monotonic()
    with pytest.raises(AirflowFailException, match=rf"LSF profile {gone} does not exist or cannot be read"):
        make_op(profile=gone).execute(context_for())
    assert time.monotonic() - started < 3 and lsf.argvs() == []


@pytest.mark.parametrize("why", ["no bjobs on this host", "missing profile"])
def test_a_triggerer_that_cannot_run_bjobs_fails_at_once(
    lsf: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, why: str
) -> None:
    trigger = deferred(lsf, "RUN", poll_interval_seconds=0.05, max_poll_failures=10)
    if why == "missing profile":
        trigger.settings = trigger.settings.replaced(profile=str(tmp_path / "gone.lsf"))
    else:
        path = [part for part in os.environ["PATH"].split(os.pathsep) if part != str(BIN_DIR)]
        monkeypatch.setenv("PATH", os.pathsep.join(path))

    async def first_event() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    started = time.monotonic()
    (event,) = asyncio.run(asyncio.wait_for(first_event(), 10))
    assert time.monotonic() - started < 3  # not ten backoffs up to 8x the interval
    assert event["status"] == "error"
    assert ("command not found" if why != "missing profile" else "gone.lsf does not exist") in event["message"]


def test_with_stdout_direct_the_failure_shows_the_jobs_own_last_lines(lsf: Emulator, tmp_path: Path) -> None:
    lsf.set_knobs(FAKE_LSF_STDOUT_DIRECT=1)
    command = "for i in $(seq 1 30); do echo copied part-$i; done; echo 'upload failed: SlowDown' >&2; exit 3"
    with pytest.raises(AirflowException) as info:
        make_op(command=command, output_file=str(tmp_path / "%J.out")).execute(context_for())
    message = str(info.value)
    assert "upload failed: SlowDown" in message and "copied part-30" in message
    assert "Resource usage summary" not in message and "Sender: LSF System" not in message
    assert "copied part-5\n" not in message  # only the last lines


# -- memory ------------------------------------------------------------------------------------------------------------


def test_a_memory_kill_is_retried_with_more_memory(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_MEMORY_NEED_MB=3000, FAKE_LSF_PLAN="RUN:0.2,DONE")
    store = FakeStore()
    with pytest.raises(AirflowException, match="at 2048 MiB; the next try asks for 4096 MiB") as info:
        make_op(memory_mib=2048, memory_growth=2.0).execute(context_for(store=store))
    assert not isinstance(info.value, AirflowFailException)
    assert make_op(memory_mib=2048, memory_growth=2.0).execute(context_for(store=store))["stat"] == "DONE"
    first, second = lsf.argvs("bsub")
    assert first[first.index("-M") + 1] == "2048MB" and "rusage[mem=2048MB]" in first
    assert second[second.index("-M") + 1] == "4096MB" and "rusage[mem=4096MB]" in second


def test_a_memory_kill_without_memory_mib_names_the_setting(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_MEMORY_NEED_MB=3000, FAKE_LSF_DEFAULT_MEMLIMIT_MB=1024)
    with pytest.raises(AirflowFailException, match=r"set \[lsf\] memory_mib"):
        make_op().execute(context_for())
    assert "-M" not in lsf.argvs("bsub")[0]


# -- cancelling --------------------------------------------------------------------------------------------------------


@dataclass
class FakeComms:
    """The triggerer's Task SDK channel, answering GetTaskStates with one state."""

    state: str | None
    asked: int = 0

    async def asend(self, message: Any) -> TaskStatesResult:
        assert isinstance(message, GetTaskStates)
        self.asked += 1
        ti = FakeTI()
        index = -1 if message.map_index is None else message.map_index
        key = message.task_ids[0] if index < 0 else f"{message.task_ids[0]}_{index}"
        assert (message.dag_id, message.run_ids) == (ti.dag_id, [ti.run_id])
        return TaskStatesResult(task_states={ti.run_id: {key: self.state}})


def with_task(trigger: LsfJobTrigger, monkeypatch: pytest.MonkeyPatch, state: str | None) -> FakeComms:
    """Give the trigger its task instance and the SDK channel, as the triggerer does."""
    comms = FakeComms(state)
    trigger.task_instance = FakeTI()  # type: ignore[assignment]
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    return comms


def test_a_reassigned_trigger_leaves_the_job_of_a_deferred_task_alone(lsf: Emulator, monkeypatch, capsys) -> None:
    trigger = deferred(lsf, "RUN")
    comms = with_task(trigger, monkeypatch, "deferred")
    asyncio.run(trigger.on_kill())
    assert comms.asked == 1 and lsf.argvs("bkill") == []
    assert lsf.view(int(trigger.job_id)).stat == "RUN"
    assert "the job is left running" in logged(capsys)


@pytest.mark.parametrize("state", ["failed", "success", None])
def test_a_cancelled_task_gets_its_job_killed(lsf: Emulator, monkeypatch, state: str | None) -> None:
    trigger = deferred(lsf, "RUN")
    with_task(trigger, monkeypatch, state)
    asyncio.run(trigger.on_kill())
    assert lsf.view(int(trigger.job_id)).stat == "EXIT"


def test_a_cancel_reaches_lsf_while_it_is_down_and_logs_the_outcome(lsf: Emulator, monkeypatch, capsys) -> None:
    trigger = deferred(lsf, "RUN")
    with_task(trigger, monkeypatch, "failed")
    lsf.set_knobs(FAKE_LSF_DOWN=3, FAKE_LSF_FAULTS_FOR="bkill")
    asyncio.run(trigger.on_kill())
    assert len(lsf.argvs("bkill")) == 4
    assert lsf.view(int(trigger.job_id)).stat == "EXIT"
    assert f"Task cancelled: bkill {trigger.job_id} -> terminated (try 4)" in logged(capsys)


def test_a_slow_bkill_completes_although_airflow_cancels_on_kill(lsf: Emulator, monkeypatch, capsys) -> None:
    trigger = deferred(lsf, "RUN")
    with_task(trigger, monkeypatch, "failed")
    lsf.set_knobs(FAKE_LSF_BKILL_DELAY=2)

    async def airflow_gives_up() -> None:
        # The triggerer cancels the trigger's task again while on_kill runs (and after on_kill_timeout).
        killing = asyncio.create_task(trigger.on_kill())
        await asyncio.sleep(0.5)
        killing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await killing
        await asyncio.sleep(3)  # the loop lives on, as the triggerer's does

    asyncio.run(airflow_gives_up())
    assert lsf.view(int(trigger.job_id)).stat == "EXIT"
    assert f"Task cancelled: bkill {trigger.job_id} -> terminated" in logged(capsys)


def test_a_kill_that_never_succeeds_is_bounded_and_says_so(lsf: Emulator, monkeypatch, capsys) -> None:
    trigger = deferred(lsf, "RUN", kill_timeout_seconds=2.5)
    with_task(trigger, monkeypatch, "failed")
    lsf.set_knobs(FAKE_LSF_DOWN=100, FAKE_LSF_FAULTS_FOR="bkill")
    started = time.monotonic()
    asyncio.run(trigger.on_kill())
    assert time.monotonic() - started < 5
    text = logged(capsys)
    assert f"Could not bkill LSF job {trigger.job_id}" in text and f"bkill {trigger.job_id} by hand" in text
    assert lsf.view(int(trigger.job_id)).stat == "RUN"


def test_the_deferral_timeout_kills_the_job(lsf: Emulator) -> None:
    store = FakeStore()
    lsf.set_knobs(FAKE_LSF_PLAN="PSUSP")  # held for ever
    ti = FakeTI()
    with pytest.raises(TaskDeferred):
        make_op(deferrable=True).execute(context_for(ti, store))
    job_id = store.data[STATE_KEY]["job_id"]
    timeout = {"error": TriggerFailureReason.TRIGGER_TIMEOUT}
    with pytest.raises(TaskDeferralTimeout):
        make_op(deferrable=True).resume_execution(TRIGGER_FAIL_REPR, timeout, context_for(ti, store))
    wait_until(lambda: lsf.view(int(job_id)).stat == "EXIT", 5, "the held job killed")


def test_a_trigger_stored_before_kill_timeout_existed_still_loads(lsf: Emulator) -> None:
    settings = lsf_settings().model_dump()
    del settings["kill_timeout_seconds"]
    trigger = LsfJobTrigger(job_id="1", job_name="x.0", submitted_at=0.0, settings=settings)
    assert trigger.settings.kill_timeout_seconds == lsf_settings().kill_timeout_seconds
