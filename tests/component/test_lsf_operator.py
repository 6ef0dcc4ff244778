"""LsfJobOperator against the LSF emulator (devstack/lsf), found on PATH: the scenarios of lsf-behaviour.md part (c)."""

from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from devstack.lsf import Emulator
from hortacloud.lsf.commands import transfer_command
from hortacloud.lsf.operator import STATE_KEY, LsfJobOperator
from hortacloud.lsf.trigger import LsfJobTrigger
from tests.fixtures.lsf_task import FakeStore, FakeTI, context_for, logged, make_op
from tests.fixtures.waiting import wait_until


def run(op: LsfJobOperator, context: dict[str, Any] | None = None) -> Any:
    return op.execute(context or context_for())


# -- submission ------------------------------------------------------------------------------------------------------


def test_happy_path_default_queue_logs_every_state(lsf: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="PEND:1.2,RUN:1,DONE")
    ti = FakeTI()
    result = run(make_op(), context_for(ti))
    assert result["stat"] == "DONE"
    job_id = result["job_id"]
    assert int(job_id) >= 9148559  # 7+ digit ids survive
    (bsub,) = lsf.argvs("bsub")
    assert bsub == ["bsub", "-J", result["job_name"], "-n", "4", "-P", "mouselight", "true"]
    assert result["job_name"].startswith("seg0510-1.")
    assert ti.xcoms[STATE_KEY]["job_id"] == job_id
    log = logged(capsys)
    assert f"Submitted LSF job {job_id}" in log
    assert "submitted -> PEND" in log and "PEND -> RUN" in log and "RUN -> DONE" in log


def test_named_queue_and_options(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    run(make_op(lsf_queue="short", runlimit_minutes=210, output_file=""))
    (bsub,) = lsf.argvs("bsub")
    assert bsub[bsub.index("-q") + 1] == "short" and bsub[bsub.index("-W") + 1] == "210"
    assert bsub[-1] == "true"


@pytest.mark.parametrize(
    "knobs",
    [
        {"FAKE_LSF_ESUB_CHATTER": "Job is submitted to <cpp> project."},
        {"FAKE_LSF_NOISE_STDOUT": 3},
    ],
    ids=["esub-chatter", "please-wait-noise"],
)
def test_extra_lines_around_the_job_line(lsf: Emulator, knobs: dict[str, Any]) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.1,DONE", **knobs)
    assert run(make_op())["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 1


def test_bsub_stderr(lsf: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BSUB_STDERR", "y")
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    assert run(make_op())["stat"] == "DONE"


@pytest.mark.parametrize(
    ("op_kwargs", "knobs", "words"),
    [
        ({"lsf_queue": "badq"}, {}, "No such queue. Job not submitted."),
        ({"slots": 999}, {"FAKE_LSF_MAX_SLOTS": 128}, "Too many processors requested. Job not submitted."),
        ({}, {"FAKE_LSF_ESUB_REJECT_REGEX": "mouselight"}, "Request aborted by esub. Job not submitted."),
        ({"runlimit_minutes": 9999}, {"FAKE_LSF_RUNLIMIT_MAX": 600}, "RUNLIMIT: Cannot exceed queue's hard limit"),
    ],
    ids=["no-such-queue", "too-many-processors", "esub", "runlimit"],
)
def test_rejection_fails_at_once_with_lsf_words(
    lsf: Emulator, op_kwargs: dict[str, Any], knobs: dict[str, Any], words: str
) -> None:
    lsf.set_knobs(**knobs)
    with pytest.raises(AirflowFailException, match=words.replace("(", r"\(").replace(")", r"\)")):
        run(make_op(**op_kwargs))
    assert len(lsf.argvs("bsub")) == 1


def test_non_lsf_host_is_retried(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="DONE", FAKE_LSF_NONLSF_HOST=1, FAKE_LSF_FAULTS_FOR="bsub")
    assert run(make_op())["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 2


def test_empty_bsub_output_finds_the_job_by_name_instead_of_submitting_twice(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.2,DONE", FAKE_LSF_EMPTY_STDOUT_ONCE=1, FAKE_LSF_FAULTS_FOR="bsub")
    assert run(make_op())["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 1
    assert any("-J" in argv for argv in lsf.argvs("bjobs"))


def test_ambiguous_submission_is_found_by_name_not_submitted_twice(lsf: Emulator) -> None:
    # mbatchd accepted the job, then bsub hung without printing the Job line and the client timed out.
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.5,DONE", FAKE_LSF_SUBMIT_THEN_HANG=1, FAKE_LSF_FAULTS_FOR="bsub")
    result = run(make_op(command_timeout_seconds=1.5))
    assert result["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 1
    assert len(list((lsf.state_dir / "jobs").glob("*.json"))) == 1


def test_hanging_bsub_times_out_and_is_retried(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="DONE", FAKE_LSF_HANG=1, FAKE_LSF_FAULTS_FOR="bsub")
    assert run(make_op(command_timeout_seconds=1.5))["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 2


def test_lsf_down_for_every_submission_fails_retryably(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_DOWN=100, FAKE_LSF_FAULTS_FOR="bsub")
    with pytest.raises(AirflowException, match="LSF is down") as info:
        run(make_op())
    assert not isinstance(info.value, AirflowFailException)
    assert len(lsf.argvs("bsub")) == 3  # first try + submit_retries


def test_project_killed_after_dispatch(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PROJECT_POLICY="kill", FAKE_LSF_PROJECTS="other", FAKE_LSF_ADMIN_KILL_AFTER=0.1)
    with pytest.raises(AirflowException, match="TERM_ADMIN"):
        run(make_op())


# -- polling ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        ("PEND:0.1,RUN:0.1,EXIT:1", "ended EXIT with exit code 1"),
        ("PEND:0.1,EXIT::TERM_OWNER", "unknown exit code: TERM_OWNER"),
        ("RUN:0.1,EXIT:137:TERM_MEMLIMIT", "exit code 137: TERM_MEMLIMIT: job killed after reaching LSF memory"),
        ("RUN:0.1,EXIT:140:TERM_RUNLIMIT", "exit code 140: TERM_RUNLIMIT"),
        ("RUN:0.1,UNKWN:0.2,ZOMBI:0.2,EXIT:130:TERM_FORCE_OWNER", "ended (ZOMBI|EXIT)"),
    ],
    ids=["exit-1", "killed-while-pending", "memlimit", "runlimit", "unkwn-zombi"],
)
def test_failures_carry_job_id_code_and_reason(lsf: Emulator, plan: str, words: str) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN=plan)
    with pytest.raises(AirflowException, match=words) as info:
        run(make_op())
    assert "LSF job 91485" in str(info.value)


def test_suspended_unknown_and_requeued_keep_waiting(lsf: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    # Held, suspended by the user and by LSF, unknown, then requeued after running: none of them is an end.
    states = ["PEND", "PSUSP", "RUN", "USUSP", "SSUSP", "UNKWN", "PEND", "RUN"]
    lsf.set_knobs(FAKE_LSF_PLAN=",".join(f"{state}:0.9" for state in states) + ",DONE")
    assert run(make_op())["stat"] == "DONE"
    log = logged(capsys)
    for before, after in zip(states, [*states[1:], "DONE"], strict=True):
        assert f"{before} -> {after}" in log
    assert "went back to PEND (requeued)" in log


@pytest.mark.parametrize(
    ("fmt", "plan", "bhist_knows", "outcome"),
    [
        ("json", "DONE", 1, "DONE"),
        ("text", "EXIT:3", 1, r"exit code 3: .*\[bhist\]"),
        ("json", "DONE", 0, "history is lost"),
    ],
    ids=["done", "exit", "lost"],
)
def test_job_cleaned_from_bjobs_is_read_from_bhist(
    lsf: Emulator, fmt: str, plan: str, bhist_knows: int, outcome: str
) -> None:
    # The worker was away longer than CLEAN_PERIOD: the first poll already finds the job gone.
    lsf.set_knobs(FAKE_LSF_PLAN=plan, FAKE_LSF_CLEAN_PERIOD=0, FAKE_LSF_BHIST_KNOWS=bhist_knows)
    op = make_op(output_format=fmt, not_found_grace_seconds=0.5, poll_interval_seconds=0.6)
    if outcome == "DONE":
        assert run(op)["stat"] == "DONE"
    else:
        with pytest.raises(AirflowException, match=outcome):
            run(op)
    assert lsf.argvs("bhist")


@pytest.mark.parametrize(
    ("fmt", "knobs"),
    [
        ("json", {"FAKE_LSF_NOTFOUND_RC": 255, "FAKE_LSF_ERROR_WITH_JOBID": 1}),
        ("json", {"FAKE_LSF_NOTFOUND_RC": 0, "FAKE_LSF_ERROR_WITH_JOBID": 0}),
        ("text", {"FAKE_LSF_NOTFOUND_RC": 255}),
    ],
    ids=["json-rc255-with-jobid", "json-rc0-without-jobid", "text-rc255"],
)
def test_not_found_answers_in_every_dialect(lsf: Emulator, knobs: dict[str, Any], fmt: str) -> None:
    # Cleaned at once: every poll gets LSF's not-found answer in this dialect, and only bhist can tell the end.
    lsf.set_knobs(FAKE_LSF_PLAN="DONE", FAKE_LSF_CLEAN_PERIOD=0, **knobs)
    assert run(make_op(output_format=fmt, not_found_grace_seconds=0.0, poll_interval_seconds=0.2))["stat"] == "DONE"
    assert lsf.argvs("bhist"), "the not-found answer was not recognised as such"


def test_transient_bjobs_failures_do_not_end_a_running_job(lsf: Emulator) -> None:
    # One of each in a row: LSF down, connection reset, a hang, garbage, empty output.
    faults = ("FAKE_LSF_DOWN", "FAKE_LSF_CONN_RESET", "FAKE_LSF_HANG", "FAKE_LSF_GARBAGE_ONCE", "FAKE_LSF_BJOBS_EMPTY")
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:2,DONE", FAKE_LSF_FAULTS_FOR="bjobs", **dict.fromkeys(faults, 1))
    op = make_op(command_timeout_seconds=1.5, reattach=False, max_poll_failures=len(faults) + 1)
    assert run(op)["stat"] == "DONE"
    assert len(lsf.argvs("bjobs")) >= len(faults) + 1


def test_too_many_consecutive_poll_failures_give_up(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN", FAKE_LSF_DOWN=100, FAKE_LSF_FAULTS_FOR="bjobs")
    with pytest.raises(
        AirflowException, match=r"4 times in a row; last error: bjobs gave no JSON \(LSF is down. Please wait...\)"
    ):
        run(make_op(reattach=False, poll_interval_seconds=0.01))


def test_noise_before_json(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.2,DONE", FAKE_LSF_NOISE_STDOUT=2)
    assert run(make_op())["stat"] == "DONE"


def test_real_job_failure_shows_tail_of_output_file(lsf: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    command = "echo copying-the-data; echo 'upload failed: access denied' >&2; exit 3"
    with pytest.raises(AirflowException) as info:
        run(make_op(command=command, output_file=str(out / "%J.out")))
    message = str(info.value)
    assert "exit code 3" in message and "upload failed: access denied" in message
    assert "copying-the-data" in message


# -- never twice -----------------------------------------------------------------------------------------------------


def test_reattach_after_worker_crash_never_submits_again(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="PEND:0.2,RUN:0.5,DONE")
    ti = FakeTI()
    # Try 1 submits, then "the worker dies" (here: it defers and nothing ever resumes it).
    with pytest.raises(TaskDeferred):
        make_op(deferrable=True).execute(context_for(ti))
    first_id = ti.xcoms[STATE_KEY]["job_id"]
    # Try 2: new operator, new process, XCom cleared, no state store (Airflow before 3.3).
    result = make_op().execute(context_for(FakeTI()))
    assert result["job_id"] == first_id
    assert len(lsf.argvs("bsub")) == 1


def test_reattach_through_task_state_store(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.5,DONE")
    store = FakeStore()
    with pytest.raises(TaskDeferred):
        make_op(deferrable=True).execute(context_for(FakeTI(), store))
    assert store.data[STATE_KEY]["job_id"]
    result = make_op().execute(context_for(FakeTI(), store))
    assert result["job_id"] == store.data[STATE_KEY]["job_id"]
    assert len(lsf.argvs("bsub")) == 1
    # Only the first try looked the name up; the second found the id in the store.
    assert len([argv for argv in lsf.argvs("bjobs") if "-J" in argv]) == 1


def test_finished_job_result_is_taken_without_submitting(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    first = run(make_op())
    again = run(make_op())
    assert again["job_id"] == first["job_id"]
    assert len(lsf.argvs("bsub")) == 1


def test_failed_job_is_resubmitted_by_a_retry_or_not(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="EXIT:1")
    with pytest.raises(AirflowException):
        run(make_op())
    with pytest.raises(AirflowException, match="exit code 1"):
        run(make_op(resubmit_failed=False))
    assert len(lsf.argvs("bsub")) == 1
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    assert run(make_op())["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 2


def test_reused_job_id_is_not_attached(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN")
    with pytest.raises(TaskDeferred):
        make_op(job_name="someone-else", deferrable=True).execute(context_for(FakeTI(task_id="other")))
    (foreign_id,) = (path.stem for path in (lsf.state_dir / "jobs").glob("*.json"))
    # The store points at an id that now belongs to another job (LSF reused it): never attach to it.
    op = make_op()
    store = FakeStore()
    store.set(STATE_KEY, {"job_id": foreign_id, "job_name": op.lsf_name(context_for(FakeTI()))})  # type: ignore[arg-type]
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    result = op.execute(context_for(FakeTI(), store))
    assert result["job_id"] != foreign_id
    assert len(lsf.argvs("bsub")) == 2


def test_runs_of_one_dag_share_a_live_job_but_not_a_finished_one(lsf: Emulator) -> None:
    """name_scope="dag": a second run that uploads the same folder while the first run's job is still going follows
    that job instead of starting a concurrent transfer; once it has finished, a new run transfers again."""
    lsf.set_knobs(FAKE_LSF_PLAN="PEND:0.3,RUN:0.6,DONE")
    first_run, second_run = FakeTI(), FakeTI(run_id="manual__2026-11-26T00:00:00+00:00", map_index=3)
    with pytest.raises(TaskDeferred):
        make_op(name_scope="dag", deferrable=True).execute(context_for(first_run))
    first_id = first_run.xcoms[STATE_KEY]["job_id"]
    followed = make_op(name_scope="dag").execute(context_for(second_run, FakeStore()))
    assert followed["job_id"] == first_id and followed["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 1

    # A later run: the job of that name has finished, so it is history, not this run's result.
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    third_store = FakeStore()
    third = make_op(name_scope="dag").execute(context_for(FakeTI(run_id="scheduled__x"), third_store))
    assert third["job_id"] != first_id and len(lsf.argvs("bsub")) == 2
    # The third run's retry (or a clear) finds its own finished job in the state store and takes its result.
    again = make_op(name_scope="dag").execute(context_for(FakeTI(run_id="scheduled__x"), third_store))
    assert again["job_id"] == third["job_id"] and len(lsf.argvs("bsub")) == 2


def test_dag_scope_never_takes_an_old_job_for_a_lost_submission(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    old = run(make_op(name_scope="dag"))
    # This run's first bsub fails for now (LSF down) and submits nothing. The lookup by name before the retry finds
    # only the earlier run's finished job of the same name: that is not this submission, so bsub is retried.
    lsf.set_knobs(FAKE_LSF_DOWN=1, FAKE_LSF_FAULTS_FOR="bsub")
    new = make_op(name_scope="dag").execute(context_for(FakeTI(run_id="manual__later"), FakeStore()))
    assert new["job_id"] != old["job_id"] and new["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 3  # the old run's, the failed attempt, the retry


def test_name_scope_is_checked() -> None:
    with pytest.raises(ValueError, match="name_scope 'sample' must be 'run' or 'dag'"):
        make_op(name_scope="sample")


# -- cancel, dry run, quoting ----------------------------------------------------------------------------------------


def test_on_kill_in_blocking_mode_bkills_the_job(lsf: Emulator) -> None:
    # bjobs keeps showing RUN for a while after bkill, as real LSF does: still no second bkill, no false end.
    lsf.set_knobs(FAKE_LSF_PLAN="RUN", FAKE_LSF_KILL_DELAY=0.6)
    op = make_op()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(op)
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=target)
    worker.start()
    wait_until(lambda: op.lsf_job_id is not None, 10, "submission")
    op.on_kill()
    worker.join(15)
    assert not worker.is_alive()
    assert lsf.argvs("bkill") == [["bkill", op.lsf_job_id]]
    assert errors and "TERM_OWNER" in str(errors[0])


def test_on_kill_of_finished_or_unknown_job_is_fine(lsf: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="DONE")
    op = make_op()
    run(op)
    op.on_kill()
    assert "already_finished" in logged(capsys)
    op.lsf_job_id = "1"
    op.on_kill()
    assert "not_found" in logged(capsys)


def test_hanging_bkill_does_not_hang_on_kill(lsf: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    lsf.set_knobs(FAKE_LSF_BKILL_HANG=10)
    op = make_op(command_timeout_seconds=1.5, retries=0)
    op.lsf_job_id = "9148559"
    op.on_kill()
    assert "Could not bkill" in logged(capsys)


def test_dry_run_submits_nothing(lsf: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(make_op(dry_run_submit=True, command="aws s3 sync a/ s3://b/")) is None
    assert lsf.argvs() == []
    log = logged(capsys)
    assert "Dry run: would submit bsub -J seg0510-1." in log
    assert "'aws s3 sync a/ s3://b/'" in log


def test_hostile_folder_name_reaches_the_job_literally(lsf: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "it's $HOME; rm -rf x"
    source.mkdir()
    (source / "neuron.swc").write_text("1 1 0 0 0 1 -1\n")
    victim = tmp_path / "x"
    victim.mkdir()
    destination = tmp_path / "dest dir"
    command = transfer_command(
        "mkdir -p {destination} && cp -R {source}/. {destination}/", source=str(source), destination=str(destination)
    )
    result = run(make_op(command=command, source=str(source)))
    assert result["stat"] == "DONE"
    assert (destination / "neuron.swc").read_text() == "1 1 0 0 0 1 -1\n"
    assert victim.is_dir()
    (bsub,) = lsf.argvs("bsub")
    assert bsub[-1] == command and str(source) + "/." in shlex.split(command)


def test_deferrable_execute_defers_to_an_importable_trigger(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN")
    with pytest.raises(TaskDeferred) as info:
        make_op(deferrable=True).execute(context_for())
    trigger = info.value.trigger
    assert isinstance(trigger, LsfJobTrigger)
    assert trigger.serialize()[0] == "hortacloud.lsf.trigger.LsfJobTrigger"
    assert info.value.method_name == "execute_complete"


def test_execute_complete_raises_with_the_jobs_words() -> None:
    op = make_op()
    event = {
        "status": "failed",
        "job_id": "9148560",
        "job_name": "seg0510-1.x",
        "stat": "EXIT",
        "exit_code": 137,
        "exit_reason": "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit",
        "message": "LSF job 9148560 (seg0510-1.x) ended EXIT with exit code 137: TERM_MEMLIMIT: job killed",
    }
    with pytest.raises(AirflowException, match=r"9148560.*exit code 137: TERM_MEMLIMIT"):
        op.execute_complete(context_for(), event)
    assert op.execute_complete(context_for(), {**event, "status": "success", "stat": "DONE"})["job_id"] == "9148560"
    with pytest.raises(AirflowException, match="unreadable"):
        op.execute_complete(context_for(), None)
