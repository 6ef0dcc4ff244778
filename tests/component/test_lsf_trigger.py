"""LsfJobTrigger against the LSF emulator: one final event, never blocking the loop, bkill only on a user's kill."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import time
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from devstack.lsf import Emulator
from hortacloud.lsf.batch import until_next_tick
from hortacloud.lsf.trigger import LsfJobTrigger
from tests.fixtures.lsf_task import context_for, lsf_settings, make_op


def submit(lsf: Emulator, plan: str, **op_kwargs: Any) -> LsfJobTrigger:
    """Submit through the operator in deferrable mode; return the trigger it deferred to."""
    lsf.set_knobs(FAKE_LSF_PLAN=plan)
    with pytest.raises(TaskDeferred) as info:
        make_op(deferrable=True, **op_kwargs).execute(context_for())
    trigger = info.value.trigger
    assert isinstance(trigger, LsfJobTrigger)
    return trigger


async def collect(trigger: LsfJobTrigger, timeout: float = 20.0) -> list[dict[str, Any]]:
    async def drain() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(drain(), timeout)


def test_serialize_round_trip_carries_every_argument() -> None:
    trigger = LsfJobTrigger(
        job_id="91485590",
        job_name="tra0510-2.0123456789",
        submitted_at=1764028800.5,
        lsf_conn_id="lsf_login",
        settings=lsf_settings(
            profile="/misc/lsf/conf/profile.lsf",
            poll_interval_seconds=7.5,
            first_poll_seconds=2.5,
            not_found_grace_seconds=33.0,
            max_poll_failures=4,
            command_timeout_seconds=12.0,
            output_format="text",
            bhist_files=0,
        ),
        cancel_on_kill=False,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "hortacloud.lsf.trigger.LsfJobTrigger"
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.settings == trigger.settings
    parameters = set(inspect.signature(LsfJobTrigger.__init__).parameters) - {"self"}
    assert set(kwargs) == parameters


def test_a_trigger_stored_by_hortacloud_0_1_still_loads_and_runs(lsf: Emulator) -> None:
    """Airflow keeps deferred triggers in its database by class path and kwargs: the old ones must still work."""
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.3,DONE")
    job_id = make_op(deferrable=False, retries=0).hook.submit(["bsub", "-J", "seg0510-1.0123456789", "true"], "x")
    stored = (
        "hortacloud.lsf_trigger.LsfJobTrigger",
        {
            "job_id": job_id,
            "job_name": "seg0510-1.0123456789",
            "submitted_at": time.time(),
            "lsf_conn_id": None,
            "profile": "",
            "poll_interval": 0.1,
            "first_poll_after": 0.0,
            "not_found_grace": 5.0,
            "max_poll_failures": 3,
            "command_timeout": 5.0,
            "output_format": "json",
            "bhist_files": 2,
            "cancel_on_kill": True,
        },
    )
    module, _, name = stored[0].rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**stored[1])
    assert isinstance(trigger, LsfJobTrigger)
    assert trigger.settings.poll_interval_seconds == 0.1 and trigger.settings.not_found_grace_seconds == 5.0
    (event,) = asyncio.run(collect(trigger))
    assert event["status"] == "success" and event["job_id"] == job_id


@pytest.mark.parametrize(
    ("plan", "status", "words"),
    [
        ("PEND:0.3,RUN:0.3,DONE", "success", "finished DONE"),
        ("RUN:0.2,EXIT:137:TERM_MEMLIMIT", "failed", "exit code 137: TERM_MEMLIMIT"),
    ],
    ids=["done", "memlimit"],
)
def test_exactly_one_final_event(lsf: Emulator, plan: str, status: str, words: str) -> None:
    trigger = submit(lsf, plan)
    events = asyncio.run(collect(trigger))
    assert len(events) == 1
    assert events[0]["status"] == status and words in events[0]["message"]
    assert events[0]["job_id"] == trigger.job_id


def test_first_poll_waits_so_a_quick_job_cannot_race_the_deferral(lsf: Emulator) -> None:
    # A job that is over before the trigger starts: its event still comes only after first_poll_seconds, so the
    # scheduler has seen the deferring worker exit before the task is resumed (apache/airflow#66374 family).
    trigger = submit(lsf, "DONE", first_poll_seconds=1.5)
    assert trigger.settings.first_poll_seconds == 1.5
    started = time.time()
    events = asyncio.run(collect(trigger))
    elapsed = time.time() - started
    assert [event["status"] for event in events] == ["success"]
    polls = [at for at in lsf.call_times("bjobs") if at >= started]
    assert polls and min(polls) - started >= 1.5
    assert 1.5 <= elapsed < 5.0


def test_error_event_after_bounded_failures_and_operator_raises(lsf: Emulator) -> None:
    trigger = submit(lsf, "RUN", max_poll_failures=3, poll_interval_seconds=0.01)
    lsf.set_knobs(FAKE_LSF_DOWN=100, FAKE_LSF_FAULTS_FOR="bjobs")
    events = asyncio.run(collect(trigger))
    assert [event["status"] for event in events] == ["error"]
    assert "3 times in a row" in events[0]["message"] and "LSF is down" in events[0]["message"]
    assert not lsf.argvs("bkill")  # giving up on polling does not kill the transfer
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match="re-attaches to it by name"):
        make_op().execute_complete(context_for(), events[0])


def test_hanging_bjobs_does_not_block_the_event_loop(lsf: Emulator) -> None:
    trigger = submit(lsf, "RUN:1,DONE", command_timeout_seconds=1.5)
    lsf.set_knobs(FAKE_LSF_HANG=1, FAKE_LSF_FAULTS_FOR="bjobs")

    async def main() -> tuple[list[dict[str, Any]], int]:
        ticks = 0
        task = asyncio.create_task(collect(trigger))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.05)
        return task.result(), ticks

    started = time.monotonic()
    events, ticks = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert [event["status"] for event in events] == ["success"]
    assert ticks >= elapsed / 0.05 * 0.5  # the loop kept ticking while bjobs hung


def test_triggerer_restart_does_not_kill_and_a_new_trigger_resumes(lsf: Emulator) -> None:
    trigger = submit(lsf, "RUN:1.5,DONE")

    async def restart() -> list[dict[str, Any]]:
        task = asyncio.create_task(collect(trigger))
        await asyncio.sleep(0.8)
        task.cancel()  # the triggerer shuts down: run() is cancelled, then cleanup() runs, never on_kill()
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.cleanup()
        return await collect(LsfJobTrigger(**trigger.serialize()[1]))

    events = asyncio.run(restart())
    assert [event["status"] for event in events] == ["success"]
    assert lsf.argvs("bkill") == []
    assert len(lsf.argvs("bsub")) == 1


def test_cancel_while_deferred_bkills_the_job(lsf: Emulator) -> None:
    trigger = submit(lsf, "RUN")

    async def user_marks_failed() -> None:
        task = asyncio.create_task(collect(trigger))
        await asyncio.sleep(0.5)
        # What the triggerer does on mark-failed/clear in Airflow 3.3: cancel run(), then await on_kill().
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.on_kill()

    asyncio.run(user_marks_failed())
    assert lsf.argvs("bkill") == [["bkill", trigger.job_id]]
    # The job ends as LSF ends a job its owner killed.
    events = asyncio.run(collect(LsfJobTrigger(**trigger.serialize()[1])))
    assert events[0]["status"] == "failed" and "TERM_OWNER" in events[0]["message"]
    # A second kill (finished job) is still fine.
    asyncio.run(trigger.on_kill())
    assert len(lsf.argvs("bkill")) == 2


def test_on_kill_respects_cancel_on_kill(lsf: Emulator) -> None:
    trigger = submit(lsf, "RUN", cancel_on_kill=False)
    asyncio.run(trigger.on_kill())
    assert lsf.argvs("bkill") == []


def test_triggers_of_one_triggerer_share_each_bjobs_call(lsf: Emulator) -> None:
    triggers = [submit(lsf, "RUN:2.5,DONE", source=f"/data/seg/{n}", poll_interval_seconds=0.4) for n in range(4)]
    ours = {trigger.job_id for trigger in triggers}
    before = len(lsf.argvs("bjobs"))

    async def follow_all() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(collect(trigger) for trigger in triggers))

    results = asyncio.run(follow_all())
    assert [[event["status"] for event in events] for events in results] == [["success"]] * 4
    assert sorted(events[0]["job_id"] for events in results) == sorted(ours)
    polls = lsf.argvs("bjobs")[before:]
    asked = [{arg for arg in argv if arg in ours} for argv in polls]
    assert all(asked), polls
    # Each trigger polled several times (RUN lasts several intervals), yet one call served all four at most ticks:
    # one by one, that would have been one call per id asked.
    assert asked.count(ours) >= 3, polls
    assert sum(map(len, asked)) >= 3 * len(polls), polls


def test_until_next_tick_aligns_to_the_wall_clock() -> None:
    assert until_next_tick(60.0, 1_699_999_990.0) == pytest.approx(50.0)
    assert until_next_tick(60.0, 1_700_000_020.0) == pytest.approx(20.0)
    assert 0 < until_next_tick(0.4, time.time()) <= 0.4
