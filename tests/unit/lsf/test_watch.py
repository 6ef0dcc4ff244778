"""The job state machine shared by the blocking operator and the trigger: states to exactly one event."""

from __future__ import annotations

import logging

import pytest

from hortacloud.lsf.parsers import BjobsResult, JobStatus, LsfTransientError
from hortacloud.lsf.watch import ASK_HISTORY, Finished, JobWatch


def _result(*jobs: JobStatus, not_found: set[str] | None = None) -> BjobsResult:
    return BjobsResult({job.job_id: job for job in jobs}, not_found or set())


def _watch(**kwargs: object) -> JobWatch:
    return JobWatch(job_id="7", job_name="n", submitted_at=1000.0, not_found_grace=10.0, max_poll_failures=3, **kwargs)


def test_watch_sequence_logs_every_change(caplog: pytest.LogCaptureFixture) -> None:
    watch = _watch(log=logging.getLogger("test.watch"))
    caplog.set_level(logging.INFO, "test.watch")
    assert watch.observe(_result(JobStatus("7", "PEND", "n")), 1001) is None
    assert watch.observe(_result(JobStatus("7", "PEND", "n")), 1002) is None
    assert watch.observe(_result(JobStatus("7", "SSUSP", "n")), 1003) is None
    assert watch.observe(_result(JobStatus("7", "UNKWN", "n")), 1004) is None
    assert watch.observe(_result(JobStatus("7", "RUN", "n")), 1005) is None
    final = watch.observe(_result(JobStatus("7", "DONE", "n")), 1006)
    assert isinstance(final, Finished) and final.event["status"] == "success"
    changes = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert len(changes) == 5
    assert "submitted -> PEND" in changes[0] and "RUN -> DONE" in changes[-1]


def test_watch_failure_message_has_code_and_reason() -> None:
    final = _watch().observe(_result(JobStatus("7", "EXIT", "n", 137, "TERM_MEMLIMIT: job killed")), 1001)
    assert isinstance(final, Finished)
    assert final.event["status"] == "failed" and final.event["exit_code"] == 137
    assert "exit code 137" in final.event["message"] and "TERM_MEMLIMIT" in final.event["message"]
    blank = _watch().observe(_result(JobStatus("7", "EXIT", "n", None, "")), 1001)
    assert isinstance(blank, Finished) and "unknown exit code" in blank.event["message"]


def test_watch_requeue_is_not_an_end() -> None:
    watch = _watch()
    assert watch.observe(_result(JobStatus("7", "RUN", "n")), 1001) is None
    assert watch.observe(_result(JobStatus("7", "PEND", "n")), 1002) is None
    assert watch.last_stat == "PEND"


def test_watch_not_found_grace_then_history() -> None:
    watch = _watch()
    assert watch.observe(_result(not_found={"7"}), 1005) is None
    assert watch.observe(_result(not_found={"7"}), 1011) is ASK_HISTORY
    done = watch.observe_history(JobStatus("7", "DONE", "n"))
    assert isinstance(done, Finished) and done.event["status"] == "success"
    lost = _watch().observe_history(None)
    assert (
        isinstance(lost, Finished) and lost.event["status"] == "failed" and "history is lost" in lost.event["message"]
    )
    assert _watch().observe_history(JobStatus("7", "RUN", "n")) is None


def test_watch_reused_id_is_not_our_job() -> None:
    watch = _watch()
    assert watch.observe(_result(JobStatus("7", "RUN", "someone-else")), 1001) is ASK_HISTORY
    lost = watch.observe_history(JobStatus("7", "DONE", "someone-else"))
    assert isinstance(lost, Finished) and lost.event["status"] == "failed"


def test_watch_bounded_consecutive_failures() -> None:
    watch = _watch()
    assert watch.observe_failure(LsfTransientError("LSF is down")) is None
    assert watch.observe_failure(LsfTransientError("LSF is down")) is None
    assert watch.backoff(1.0) >= 4.0
    assert watch.observe(_result(JobStatus("7", "RUN", "n")), 1001) is None  # a good poll resets the count
    assert watch.backoff(1.0) == 1.0
    for _ in range(2):
        assert watch.observe_failure(LsfTransientError("x")) is None
    final = watch.observe_failure(LsfTransientError("LSF is down"))
    assert isinstance(final, Finished)
    assert final.event["status"] == "error" and "3 times in a row" in final.event["message"]
