"""The LSF output parsers against IBM's exact strings (docs/lsf-behaviour.md)."""

from __future__ import annotations

import pytest

from hortacloud.lsf.parsers import (
    JobStatus,
    LsfError,
    LsfTransientError,
    Rejected,
    Submitted,
    Transient,
    parse_bhist_long,
    parse_bjobs_json,
    parse_bjobs_text,
    parse_bkill,
    parse_bsub,
    phase_of,
)

# -- bsub -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "stderr", "expected"),
    [
        ("Job <12345> is submitted to queue <normal>.\n", "", Submitted("12345", "normal")),
        ("Job <91485590> is submitted to default queue <normal>.\n", "", Submitted("91485590", "normal")),
        # esub chatter and "Please wait" noise before the real line (dask-jobqueue #78, Toil #3097)
        (
            "Job is submitted to <cpp> project.\nJob <16633929> is submitted to default queue <general>.\n",
            "",
            Submitted("16633929", "general"),
        ),
        (
            "Cannot connect to LSF. Please wait ...\n" * 3 + "Job <12345678> is submitted to queue <short>.\n",
            "",
            Submitted("12345678", "short"),
        ),
        # BSUB_STDERR: the message on stderr
        ("", "Job <7> is submitted to queue <normal>.\n", Submitted("7", "normal")),
    ],
)
def test_bsub_submitted(stdout: str, stderr: str, expected: Submitted) -> None:
    assert parse_bsub(stdout, stderr, 0) == expected


@pytest.mark.parametrize(
    "stderr",
    [
        "badq: No such queue. Job not submitted.\n",
        "short: User cannot use the queue. Job not submitted.\n",
        "Sorry, you must tell cluster how many free_slot\nRequest aborted by esub. Job not submitted.\n",
        "Too many processors requested. Job not submitted.\n",
        "RUNLIMIT: Cannot exceed queue's hard limit(s). Job not submitted.\n",
        'Error near "select" : duplicate section. Job not submitted.\n',
        "bash: bsub: command not found\n",
    ],
)
def test_bsub_rejected_keeps_lsf_words(stderr: str) -> None:
    outcome = parse_bsub("", stderr, 127 if "command not found" in stderr else 255)
    assert isinstance(outcome, Rejected)
    assert stderr.strip().splitlines()[-1] in outcome.message


def test_bsub_esub_message_keeps_every_line() -> None:
    outcome = parse_bsub("", "Sorry, no project\nRequest aborted by esub. Job not submitted.\n", 255)
    assert outcome == Rejected("Sorry, no project Request aborted by esub. Job not submitted.")


@pytest.mark.parametrize(
    ("stdout", "stderr", "rc"),
    [
        ("", "Request from non-LSF host rejected\n", 255),
        ("", "", 255),  # ssh's own 255
        ("", "", 0),  # exit 0, empty output (ert 90f7b66)
        ("", "LSF is down. Please wait...\n" * 2, 255),
        ("", "batch system daemon not responding ... still trying\n", 255),
    ],
)
def test_bsub_transient(stdout: str, stderr: str, rc: int) -> None:
    assert isinstance(parse_bsub(stdout, stderr, rc), Transient)


# -- bjobs ------------------------------------------------------------------------------------------------------------

BJOBS_JSON = """{
  "COMMAND":"bjobs",
  "JOBS":3,
  "RECORDS":[
    {"JOBID":"22005","STAT":"DONE","EXIT_CODE":"","EXIT_REASON":"","JOB_NAME":"reg0510","PROJ_NAME":"mouselight"},
    {"JOBID":"22006","STAT":"EXIT","EXIT_CODE":"1",
     "EXIT_REASON":"TERM_MEMLIMIT: job killed after reaching LSF memory usage limit","JOB_NAME":"seg0510-1.ab"},
    {"ERROR":"Job <99999> is not found"}
  ]
}"""


def test_bjobs_json_records_and_error_record() -> None:
    result = parse_bjobs_json(BJOBS_JSON)
    assert result.statuses["22005"] == JobStatus("22005", "DONE", "reg0510", None, "")
    assert result.statuses["22006"] == JobStatus(
        "22006", "EXIT", "seg0510-1.ab", 1, "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit"
    )
    assert result.not_found == {"99999"}


def test_bjobs_json_error_record_with_jobid_and_noise_around() -> None:
    stdout = (
        "Cannot connect to LSF. Please wait ...\n"
        '{"COMMAND":"bjobs","JOBS":1,"RECORDS":[{"JOBID":"5","ERROR":"Job <5> is not found"}]}\n'
        "LSF is processing your request. Please wait...\n"
    )
    result = parse_bjobs_json(stdout)
    assert result.statuses == {}
    assert result.not_found == {"5"}


def test_bjobs_json_not_found_on_stderr_exit_zero() -> None:
    # ert: a single unknown id prints on stderr and exits 0; no JSON at all
    result = parse_bjobs_json("", "Job <1> is not found\n")
    assert result.not_found == {"1"} and not result.statuses


def test_bjobs_json_killed_while_pending_has_blank_exit_code() -> None:
    stdout = (
        '{"RECORDS":[{"JOBID":"9","STAT":"EXIT","EXIT_CODE":"",'
        '"EXIT_REASON":"TERM_OWNER: job killed by owner","JOB_NAME":"x"}]}'
    )
    job = parse_bjobs_json(stdout).statuses["9"]
    assert job.exit_code is None and job.exit_reason.startswith("TERM_OWNER") and job.phase == "failure"


@pytest.mark.parametrize(
    ("stdout", "stderr"),
    [
        ("", ""),
        ("", "LSF is down. Please wait...\n"),
        ('{"COMMAND":"bjobs","RECORDS":[{"JOBID":"1",', ""),  # cut off
        ("garbage\n", "Failed in an LSF library call: Failed in sending/receiving a message: Connection reset by peer"),
    ],
)
def test_bjobs_json_transient(stdout: str, stderr: str) -> None:
    with pytest.raises(LsfTransientError):
        parse_bjobs_json(stdout, stderr)


def test_bjobs_text_dashes_and_partial_output_with_stderr() -> None:
    # found + not found: stdout lines and exit 255 (ert test_faulty_bjobs); "-" for empty values
    stdout = "12345^DONE^-^-^reg0510.abc\n12346^EXIT^3^-^seg^with^carets\n12347^RUN^-^-^-\n"
    result = parse_bjobs_text(stdout, "Job <12348> is not found\n")
    assert result.statuses["12345"] == JobStatus("12345", "DONE", "reg0510.abc")
    assert result.statuses["12346"].exit_code == 3
    assert result.statuses["12346"].job_name == "seg^with^carets"
    assert result.statuses["12347"].job_name == ""
    assert result.not_found == {"12348"}


def test_bjobs_text_no_unfinished_job() -> None:
    assert parse_bjobs_text("", "No unfinished job found\n").nothing_found


def test_bjobs_text_empty_is_transient() -> None:
    with pytest.raises(LsfTransientError):
        parse_bjobs_text("", "")


@pytest.mark.parametrize(
    ("stat", "phase"),
    [
        ("PEND", "waiting"),
        ("PSUSP", "waiting"),
        ("WAIT", "waiting"),
        ("PROV", "waiting"),
        ("RUN", "running"),
        ("USUSP", "running"),
        ("SSUSP", "running"),
        ("UNKWN", "running"),
        ("DONE", "success"),
        ("PDONE", "success"),
        ("EXIT", "failure"),
        ("ZOMBI", "failure"),
        ("SOMETHING_NEW", "running"),
    ],
)
def test_state_mapping(stat: str, phase: str) -> None:
    assert phase_of(stat) == phase


# -- bhist ------------------------------------------------------------------------------------------------------------

BHIST_HEAD = (
    "Job <1962>, Job Name <reg0510.abc>, User <user1>, Project <mouselight>, Command <aws s3 sync a/ s3://b/>\n"
    "Mon Oct 22 13:51:00: Submitted from host <login1>, to Queue <normal>, CWD <$HOME>;\n"
    "Mon Oct 22 13:51:05: Dispatched to <h1>, Effective RES_REQ <select[type == local] >;\n"
    "Mon Oct 22 13:51:05: Starting (Pid 4242);\n"
)


def test_bhist_done() -> None:
    status = parse_bhist_long(
        BHIST_HEAD + "Mon Oct 22 14:00:00: Done successfully. The CPU time used is 3.0 seconds.\n"
    )
    assert status == JobStatus("1962", "DONE", "reg0510.abc")


def test_bhist_exit_code_and_reason_across_wrapped_lines() -> None:
    text = (
        BHIST_HEAD + "Mon Oct 22 14:00:00: Exited with exit code 3. The CPU time used is 3.0 seco\n"
        "                     nds.\n"
        "Mon Oct 22 14:00:00: Completed <exit>; TERM_RUNLIMIT: job killed after reaching LSF run time limit.\n"
    )
    status = parse_bhist_long(text)
    assert status is not None
    assert (status.stat, status.exit_code, status.exit_reason) == (
        "EXIT",
        3,
        "TERM_RUNLIMIT: job killed after reaching LSF run time limit",
    )


def test_bhist_signal_and_running_and_unknown() -> None:
    signalled = parse_bhist_long(BHIST_HEAD + "Mon Oct 22 14:00:00: Exited by signal 9.\n")
    assert signalled is not None and signalled.exit_code == 137
    running = parse_bhist_long(BHIST_HEAD)
    assert running is not None and running.stat == "RUN"
    assert parse_bhist_long("No matching job found\n") is None


# -- bkill ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "stderr", "rc", "expected"),
    [
        ("Job <123> is being terminated\n", "", 0, "terminated"),
        ("", "Job <123>: Job has already finished\n", 255, "already_finished"),
        ("", "Job <123>: No matching job found\n", 255, "not_found"),
    ],
)
def test_bkill_idempotent(stdout: str, stderr: str, rc: int, expected: str) -> None:
    assert parse_bkill(stdout, stderr, rc) == expected


def test_bkill_errors() -> None:
    with pytest.raises(LsfTransientError):
        parse_bkill("", "LSF is down. Please wait...\n", 255)
    with pytest.raises(LsfError, match="User permission denied") as info:
        parse_bkill("", "Job <123>: User permission denied\n", 255)
    assert not isinstance(info.value, LsfTransientError)
