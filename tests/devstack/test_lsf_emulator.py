"""The LSF emulator run as a client would run it: the real executables in subprocesses.

Each test asserts LSF's exact words, the stream they land on and the exit code
(docs/lsf-behaviour.md, part a), because the LSF operator's tests rely on the emulator being faithful.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.lsf import BIN_DIR, Emulator

FIRST = 9148559


def sh(emulator: Emulator, *argv: str, stdin: str | None = None, **knobs: Any) -> subprocess.CompletedProcess[str]:
    """Run one emulated command with the emulator's environment (plus knobs as environment variables)."""
    return subprocess.run(
        list(argv),
        env=emulator.env(**knobs),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def submitted_id(out: str) -> int:
    """The id from ``Job <N> is submitted ...``, with the regex the reference recommends."""
    match = re.search(r"Job <(\d+)> is submitted", out)
    assert match, f"no job id in {out!r}"
    return int(match.group(1))


def stat_line(emulator: Emulator, job_id: int, fields: str = "jobid stat exit_code exit_reason") -> str:
    """``bjobs -noheader -o "<fields> delimiter='|'" <id>``, which must succeed."""
    result = sh(emulator, "bjobs", "-noheader", "-o", f"{fields} delimiter='|'", str(job_id))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def unwrap(text: str) -> str:
    """Join bhist -l continuation lines (21-space indent) as a parser has to."""
    return re.sub(r"\n {21}", "", text)


# --- bsub ------------------------------------------------------------------------------------------------------


def test_bsub_success_lines_for_both_queue_forms_and_bsub_stderr(lsf: Emulator) -> None:
    with_queue = sh(lsf, "bsub", "-q", "short", "-J", "a", "true", FAKE_LSF_PLAN="DONE")
    no_queue = sh(lsf, "bsub", "-J", "b", "true", FAKE_LSF_PLAN="DONE")
    to_stderr = sh(lsf, "bsub", "-J", "c", "true", FAKE_LSF_PLAN="DONE", BSUB_STDERR="Y")

    assert (with_queue.returncode, with_queue.stdout, with_queue.stderr) == (
        0,
        f"Job <{FIRST}> is submitted to queue <short>.\n",
        "",
    )
    assert (no_queue.returncode, no_queue.stdout) == (0, f"Job <{FIRST + 1}> is submitted to default queue <normal>.\n")
    assert (to_stderr.returncode, to_stderr.stdout) == (0, "")
    assert to_stderr.stderr == f"Job <{FIRST + 2}> is submitted to default queue <normal>.\n"
    assert [call["argv"][0] for call in lsf.calls("bsub")] == ["bsub"] * 3


@pytest.mark.parametrize(
    ("argv", "knobs", "stderr"),
    [
        (["-q", "gpu"], {}, "gpu: No such queue. Job not submitted.\n"),
        (["-n", "9"], {"FAKE_LSF_MAX_SLOTS": "8"}, "Too many processors requested. Job not submitted.\n"),
        (
            ["-W", "2:01"],
            {"FAKE_LSF_RUNLIMIT_MAX": "120"},
            "RUNLIMIT: Cannot exceed queue's hard limit(s). Job not submitted.\n",
        ),
        (
            ["-P", "nobody"],
            {"FAKE_LSF_ESUB_REJECT_REGEX": r"-P nobody", "FAKE_LSF_ESUB_MESSAGE": "Project nobody is closed."},
            "Project nobody is closed.\nRequest aborted by esub. Job not submitted.\n",
        ),
        (
            [],
            {"FAKE_LSF_PROJECT_POLICY": "reject"},
            "No project given: submit with -P <project>.\nRequest aborted by esub. Job not submitted.\n",
        ),
        (["-R", "select[mem>] span[hosts=1]"], {}, None),
    ],
    ids=["queue", "slots", "runlimit", "esub", "project", "resreq"],
)
def test_bsub_rejections_exit_255_on_stderr_and_store_nothing(
    lsf: Emulator, argv: list[str], knobs: dict[str, str], stderr: str | None
) -> None:
    result = sh(lsf, "bsub", *argv, "echo", "hi", **knobs)

    assert result.returncode == 255
    assert result.stdout == ""
    if stderr is None:
        assert result.stderr.endswith("Job not submitted.\n") and "select section" in result.stderr
    else:
        assert result.stderr == stderr
    assert lsf.jobs() == []


def test_project_policy_kill_accepts_then_exits_term_admin(lsf: Emulator) -> None:
    job_id = submitted_id(
        sh(lsf, "bsub", "-J", "noproj", "true", FAKE_LSF_PROJECT_POLICY="kill", FAKE_LSF_ADMIN_KILL_AFTER="0").stdout
    )
    time.sleep(0.05)
    assert stat_line(lsf, job_id) == f"{job_id}|EXIT|130|TERM_ADMIN: job killed by root or an administrator"


def test_command_words_are_joined_like_lsf_and_stdin_script_honours_bsub_lines(lsf: Emulator, tmp_path: Path) -> None:
    words = sh(lsf, "bsub", "-J", "w", "echo", "a b", 'say "x"', "$HOME x", FAKE_LSF_PLAN="DONE")
    script = "#!/bin/bash\n#BSUB -J from-script\n#BSUB -q short\n#BSUB -n 2\necho script-ran\n"
    piped = sh(lsf, "bsub", "-n", "3", stdin=script, FAKE_LSF_PLAN="DONE")

    assert lsf.job(submitted_id(words.stdout)).command == """echo "a b" 'say "x"' '$HOME x'"""
    assert piped.stdout == f"Job <{FIRST + 1}> is submitted to queue <short>.\n"
    job = lsf.job(FIRST + 1)
    assert (job.name, job.queue, job.slots) == ("from-script", "short", 3)  # command line beats #BSUB
    assert "echo script-ran" in job.command


# --- real jobs -------------------------------------------------------------------------------------------------


def test_real_job_outlives_bsub_and_writes_the_report_only_at_the_end(lsf: Emulator, tmp_path: Path) -> None:
    out_dir = tmp_path / "logs"
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "release"
    command = f"echo start $LSB_JOBID; pwd; while [ ! -e {marker} ]; do sleep 0.05; done; echo oops >&2; exit 3"
    bsub = subprocess.Popen(
        ["bsub", "-J", "reg0510", "-cwd", str(work), "-o", f"{out_dir}/%J.out", command],
        env=lsf.env(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stdout, _ = bsub.communicate(timeout=30)
    job_id = submitted_id(stdout)
    # The submitting process and its whole group are gone, as after a client timeout: the job runs on.
    with pytest.raises(ProcessLookupError):
        os.killpg(bsub.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while lsf.view(job_id).stat != "RUN" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stat_line(lsf, job_id, "jobid stat exec_host") == f"{job_id}|RUN|h07u01"
    out_file = out_dir / f"{job_id}.out"
    assert not out_file.exists()  # LSB_STDOUT_DIRECT unset: spooled until the end

    marker.touch()
    view = lsf.wait_finished(job_id)

    assert (view.stat, view.exit_code) == ("EXIT", 3)
    assert stat_line(lsf, job_id) == f"{job_id}|EXIT|3|-"
    text = out_file.read_text()
    assert text.startswith("Sender: LSF System <lsfadmin@h07u01>\n")
    assert f"Subject: Job {job_id}: <reg0510> in cluster <hortacloud> Exited\n" in text
    assert "\nExited with exit code 3.\n" in text and "\nResource usage summary:\n" in text
    assert text.endswith(f"start {job_id}\n{work}\noops\n")


def test_job_survives_a_client_timeout_that_kills_bsub_k(lsf: Emulator, tmp_path: Path) -> None:
    marker = tmp_path / "release"
    waiting = subprocess.Popen(
        ["bsub", "-K", "-J", "blocked", f"while [ ! -e {marker} ]; do sleep 0.05; done"],
        env=lsf.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    job_id = submitted_id(waiting.stdout.readline())  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while lsf.view(job_id).stat != "RUN" and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(waiting.pid, signal.SIGKILL)  # what a client's timeout does to its command
    waiting.wait()

    assert stat_line(lsf, job_id, "stat") == "RUN"
    marker.touch()
    assert lsf.wait_finished(job_id).stat == "DONE"


def test_done_job_report_and_direct_output_mode(lsf: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "direct.out"
    job_id = submitted_id(sh(lsf, "bsub", "-oo", str(out), "echo hello", FAKE_LSF_STDOUT_DIRECT="1").stdout)
    lsf.wait_finished(job_id)

    text = out.read_text()
    assert text.startswith("hello\n")  # the job wrote straight into the file; the report follows
    assert f"Subject: Job {job_id}: <echo hello> in cluster <hortacloud> Done" in text
    assert "Successfully completed." in text
    assert stat_line(lsf, job_id) == f"{job_id}|DONE|-|-"


def test_output_folder_with_trailing_slash_and_separate_error_file(lsf: Emulator, tmp_path: Path) -> None:
    job_id = submitted_id(
        sh(lsf, "bsub", "-o", f"{tmp_path}/out/", "-e", f"{tmp_path}/err/", "echo to-out; echo to-err >&2").stdout
    )
    lsf.wait_finished(job_id)

    assert (tmp_path / "out" / f"{job_id}.out").read_text().endswith("to-out\n")
    assert (tmp_path / "err" / f"{job_id}.err").read_text() == "to-err\n"


def test_pend_seconds_keep_a_real_job_pending(lsf: Emulator, tmp_path: Path) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "true", FAKE_LSF_PEND_SECONDS="30").stdout)
    line = sh(lsf, "bjobs", "-noheader", "-o", "stat pend_reason exec_host delimiter=','", str(job_id)).stdout
    assert line == "PEND,New job is waiting for scheduling,-\n"


def test_runs_from_asyncio_and_bash(lsf: Emulator) -> None:
    async def submit() -> tuple[int | None, bytes]:
        process = await asyncio.create_subprocess_exec(
            "bsub", "-J", "aio", "true", env=lsf.env(FAKE_LSF_PLAN="DONE"), stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await process.communicate()
        return process.returncode, stdout

    rc, stdout = asyncio.run(submit())
    via_bash = subprocess.run(
        ["bash", "-c", "bjobs -a -noheader -o 'jobid job_name' -J 'ai*'"], env=lsf.env(), capture_output=True, text=True
    )
    assert (rc, stdout) == (0, f"Job <{FIRST}> is submitted to default queue <normal>.\n".encode())
    assert (via_bash.returncode, via_bash.stdout) == (0, f"{FIRST} aio\n")


# --- scripted jobs ---------------------------------------------------------------------------------------------


def test_scripted_plan_moves_by_wall_clock(lsf: Emulator) -> None:
    plan = "PEND:0.6,RUN:0.6,EXIT:137:TERM_MEMLIMIT"
    job_id = submitted_id(sh(lsf, "bsub", "-J", "mem", "true", FAKE_LSF_PLAN=plan).stdout)
    submitted = lsf.job(job_id).submit_time
    seen = []
    while True:
        line = stat_line(lsf, job_id)
        asked_at = lsf.calls("bjobs")[-1]["time"]
        elapsed = float(asked_at) - submitted
        expected = "PEND" if elapsed < 0.6 else "RUN" if elapsed < 1.2 else "EXIT"
        assert line.split("|")[1] == expected, (elapsed, line)
        seen.append(line)
        if expected == "EXIT":
            break
    assert seen[-1] == f"{job_id}|EXIT|137|TERM_MEMLIMIT: job killed after reaching LSF memory usage limit"


def test_per_job_plans_cover_every_state(lsf: Emulator) -> None:
    plans = {
        "^held$": "PSUSP",
        "^susp$": "RUN:0,SSUSP",
        "^lost$": "RUN:0,UNKWN",
        "^zombie$": "UNKWN:0,ZOMBI",
        "^requeued$": "RUN:0,PEND",
        "^blank$": "EXIT",
        "^runlimit$": "EXIT:140:TERM_RUNLIMIT",
    }
    knobs = {"FAKE_LSF_PLANS": json.dumps(plans)}
    for pattern in plans:
        assert sh(lsf, "bsub", "-J", pattern.strip("^$"), "true", **knobs).returncode == 0
    result = sh(lsf, "bjobs", "-a", "-json", "-o", "job_name stat exit_code exit_reason")

    records = {record["JOB_NAME"]: record for record in json.loads(result.stdout)["RECORDS"]}
    assert {name: record["STAT"] for name, record in records.items()} == {
        "held": "PSUSP",
        "susp": "SSUSP",
        "lost": "UNKWN",
        "zombie": "ZOMBI",
        "requeued": "PEND",
        "blank": "EXIT",
        "runlimit": "EXIT",
    }
    assert records["blank"]["EXIT_CODE"] == ""
    assert records["runlimit"] == {
        "JOB_NAME": "runlimit",
        "STAT": "EXIT",
        "EXIT_CODE": "140",
        "EXIT_REASON": "TERM_RUNLIMIT: job killed after reaching LSF run time limit",
    }


def test_bsub_k_waits_and_returns_the_job_exit_code(lsf: Emulator) -> None:
    result = sh(lsf, "bsub", "-K", "-J", "k", "false", FAKE_LSF_PLAN="PEND:0.2,RUN:0.2,EXIT:3")
    shown = sh(lsf, "bsub", "-K", "true", FAKE_LSF_PLAN="RUN:0,DONE", LSB_SUBK_SHOW_EXEC_HOST="Y")

    assert result.returncode == 3
    assert result.stdout == f"Job <{FIRST}> is submitted to default queue <normal>.\n"
    assert result.stderr == "<<Waiting for dispatch ...>>\n<<Job is finished>>\n"
    assert shown.returncode == 0
    assert shown.stderr == "<<Waiting for dispatch ...>>\n<<Starting on h07u01>>\n<<Job is finished>>\n"


def test_bsub_k_returns_126_when_killed_while_pending(lsf: Emulator) -> None:
    waiting = subprocess.Popen(
        ["bsub", "-K", "-H", "sleep", "5"], env=lsf.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        job_id = submitted_id(waiting.stdout.readline())  # type: ignore[union-attr]
        assert sh(lsf, "bjobs", "-noheader", "-o", "stat", str(job_id)).stdout == "PSUSP\n"  # -H holds it
        assert sh(lsf, "bkill", str(job_id)).returncode == 0
        assert waiting.wait(timeout=15) == 126
    finally:
        waiting.kill()
        waiting.wait()


# --- bjobs -----------------------------------------------------------------------------------------------------


def test_bjobs_text_formats_dash_header_and_delimiter(lsf: Emulator) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "-J", "my job", "-P", "mouselight", "true", FAKE_LSF_PLAN="DONE").stdout)
    fields = "jobid stat exit_code exit_reason job_name proj_name"
    plain = sh(lsf, "bjobs", "-noheader", "-o", fields, str(job_id))
    header = sh(lsf, "bjobs", "-o", f"{fields} delimiter='^'", str(job_id))
    default = sh(lsf, "bjobs", "-a")

    assert plain.stdout == f"{job_id} DONE - - my job mouselight\n"
    assert header.stdout.splitlines() == [
        "JOBID^STAT^EXIT_CODE^EXIT_REASON^JOB_NAME^PROJ_NAME",
        f"{job_id}^DONE^-^-^my job^mouselight",
    ]
    lines = default.stdout.splitlines()
    assert lines[0].split() == ["JOBID", "USER", "STAT", "QUEUE", "FROM_HOST", "EXEC_HOST", "JOB_NAME", "SUBMIT_TIME"]
    assert lines[1].startswith(f"{job_id} ") and " DONE " in lines[1]
    assert sh(lsf, "bjobs").stderr == "No unfinished job found\n"  # finished jobs need -a


def test_bjobs_json_error_records_with_and_without_jobid(lsf: Emulator) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "-J", "j", "true", FAKE_LSF_PLAN="RUN").stdout)
    args = ["bjobs", "-json", "-o", "jobid stat exit_code", str(job_id), "404"]
    plain = sh(lsf, *args)
    with_id = sh(lsf, *args, FAKE_LSF_ERROR_WITH_JOBID="1")
    forbidden = sh(lsf, "bjobs", "-json", "-noheader", "-o", "jobid", str(job_id))
    no_format = sh(lsf, "bjobs", "-json", str(job_id))

    assert json.loads(plain.stdout) == {
        "COMMAND": "bjobs",
        "JOBS": 2,
        "RECORDS": [{"JOBID": str(job_id), "STAT": "RUN", "EXIT_CODE": ""}, {"ERROR": "Job <404> is not found"}],
    }
    assert plain.stdout.startswith('{\n  "COMMAND":"bjobs",\n')
    assert json.loads(with_id.stdout)["RECORDS"][1] == {"JOBID": "404", "ERROR": "Job <404> is not found"}
    assert (forbidden.returncode, forbidden.stdout) == (255, "")
    assert (no_format.returncode, no_format.stdout) == (255, "")


def test_bjobs_not_found_exit_codes(lsf: Emulator) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "true", FAKE_LSF_PLAN="RUN").stdout)
    lone = sh(lsf, "bjobs", "-noheader", "-o", "jobid stat", "77")
    strict = sh(lsf, "bjobs", "-noheader", "-o", "jobid stat", "77", FAKE_LSF_NOTFOUND_RC="255")
    mixed = sh(lsf, "bjobs", "-noheader", "-o", "jobid stat", str(job_id), "77")
    by_name = sh(lsf, "bjobs", "-a", "-J", "nothing*")

    assert (lone.returncode, lone.stdout, lone.stderr) == (0, "", "Job <77> is not found\n")
    assert (strict.returncode, strict.stderr) == (255, "Job <77> is not found\n")
    assert (mixed.returncode, mixed.stdout, mixed.stderr) == (255, f"{job_id} RUN\n", "Job <77> is not found\n")
    assert (by_name.stdout, by_name.stderr) == ("", "Job <nothing*> is not found\n")


def test_clean_period_hands_over_to_bhist(lsf: Emulator) -> None:
    knobs = {"FAKE_LSF_CLEAN_PERIOD": "0.3", "FAKE_LSF_PLANS": json.dumps({"ok": "RUN:0.1,DONE", "bad": "EXIT:3"})}
    ok_id = submitted_id(sh(lsf, "bsub", "-J", "ok", "true", **knobs).stdout)
    bad_id = submitted_id(sh(lsf, "bsub", "-J", "bad", "false", **knobs).stdout)
    time.sleep(0.5)

    gone = sh(lsf, "bjobs", "-noheader", "-o", "jobid stat", str(ok_id), **knobs)
    ok_hist = sh(lsf, "bhist", "-l", "-n", "0", str(ok_id), **knobs)
    bad_hist = sh(lsf, "bhist", "-l", str(bad_id), **knobs)
    short = sh(lsf, "bhist", str(ok_id), **knobs)
    forgotten = sh(lsf, "bhist", "-l", str(ok_id), FAKE_LSF_BHIST_KNOWS="0", **knobs)
    unknown = sh(lsf, "bhist", "-l", "31337", **knobs)

    assert (gone.stdout, gone.stderr) == ("", f"Job <{ok_id}> is not found\n")
    assert ok_hist.returncode == 0
    assert f"Job <{ok_id}>, Job Name <ok>, User <" in unwrap(ok_hist.stdout)
    assert re.search(r"Done successfully\. The CPU time used is [0-9.]+ seconds\.", unwrap(ok_hist.stdout))
    assert re.search(r"Exited with exit code 3\. The CPU time used is", unwrap(bad_hist.stdout))
    assert short.stdout.splitlines()[0] == "Summary of time in seconds spent in various states:"
    assert short.stdout.splitlines()[2].split()[:3] == [str(ok_id), lsf.job(ok_id).user[:7], "ok"]
    for result in (forgotten, unknown):
        assert (result.returncode, result.stdout, result.stderr) == (255, "No matching job found\n", "")


# --- bkill -----------------------------------------------------------------------------------------------------


def test_bkill_running_pending_finished_unknown(lsf: Emulator) -> None:
    running = submitted_id(sh(lsf, "bsub", "-J", "run", "sleep 30", FAKE_LSF_TERMINATE_INTERVAL="0.5").stdout)
    pending = submitted_id(sh(lsf, "bsub", "-J", "pend", "true", FAKE_LSF_PLAN="PEND").stdout)
    finished = submitted_id(sh(lsf, "bsub", "-J", "fin", "true", FAKE_LSF_PLAN="DONE").stdout)
    deadline = time.monotonic() + 10
    while lsf.view(running).stat != "RUN" and time.monotonic() < deadline:
        time.sleep(0.05)
    pgid = lsf.job(running).job_pgid
    assert pgid is not None

    result = sh(lsf, "bkill", str(running), str(pending), str(finished), "42")

    assert result.returncode == 255
    assert result.stdout == f"Job <{running}> is being terminated\nJob <{pending}> is being terminated\n"
    assert result.stderr == f"Job <{finished}>: Job has already finished\nJob <42>: No matching job found\n"
    lsf.wait_finished(running)
    assert stat_line(lsf, running) == f"{running}|EXIT|130|TERM_OWNER: job killed by owner"
    assert stat_line(lsf, pending) == f"{pending}|EXIT|-|TERM_OWNER: job killed by owner"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the job's processes are gone
    again = sh(lsf, "bkill", str(running))
    assert (again.returncode, again.stderr) == (255, f"Job <{running}>: Job has already finished\n")


def test_bkill_kill_delay_keeps_run_and_d_needs_support(lsf: Emulator) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "-J", "slow", "true", FAKE_LSF_PLAN="RUN").stdout)
    unsupported = sh(lsf, "bkill", "-d", str(job_id))
    killed = sh(lsf, "bkill", str(job_id), FAKE_LSF_KILL_DELAY="30")

    assert (unsupported.returncode, unsupported.stderr.splitlines()[0]) == (255, "bkill: Illegal option -- d")
    assert killed.stdout == f"Job <{job_id}> is being terminated\n"
    assert sh(lsf, "bjobs", "-noheader", "-o", "stat", str(job_id), FAKE_LSF_KILL_DELAY="30").stdout == "RUN\n"
    assert sh(lsf, "bjobs", "-noheader", "-o", "stat exit_code", str(job_id)).stdout == "EXIT 130\n"


def test_bkill_by_name_signal_and_force(lsf: Emulator) -> None:
    plans = json.dumps({"^tile-": "RUN", "^sig$": "RUN", "^unknown$": "RUN:0,UNKWN"})
    tiles = [submitted_id(sh(lsf, "bsub", "-J", f"tile-{n}", "true", FAKE_LSF_PLANS=plans).stdout) for n in (1, 2)]
    signalled = submitted_id(sh(lsf, "bsub", "-J", "sig", "true", FAKE_LSF_PLANS=plans).stdout)
    lost = submitted_id(sh(lsf, "bsub", "-J", "unknown", "true", FAKE_LSF_PLANS=plans).stdout)

    by_name = sh(lsf, "bkill", "-J", "tile-*")
    with_signal = sh(lsf, "bkill", "-s", "KILL", str(signalled))
    forced = sh(lsf, "bkill", "-r", str(lost))
    no_match = sh(lsf, "bkill", "-J", "nothing")

    assert (by_name.returncode, by_name.stdout) == (0, "".join(f"Job <{t}> is being terminated\n" for t in tiles))
    assert (with_signal.returncode, with_signal.stdout) == (0, f"Job <{signalled}> is being signaled\n")
    assert stat_line(lsf, signalled, "stat exit_code") == "EXIT|137"
    assert forced.stdout == f"Job <{lost}> is being terminated\n"
    assert stat_line(lsf, lost, "stat exit_reason").startswith("EXIT|TERM_FORCE_OWNER")
    assert (no_match.returncode, no_match.stderr) == (255, "Job <nothing>: No matching job found\n")


def test_bkill_d_when_supported_records_done_and_bkill_can_hang(lsf: Emulator) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "true", FAKE_LSF_PLAN="RUN").stdout)
    done = sh(lsf, "bkill", "-d", str(job_id), FAKE_LSF_BKILL_D_SUPPORTED="1")
    finished = sh(lsf, "bjobs", "-d", "-noheader", "-o", "jobid stat exit_code")
    lsf.set_knobs(FAKE_LSF_BKILL_HANG=1)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["bkill", str(job_id)], env=lsf.env(), capture_output=True, timeout=3)

    assert (done.returncode, done.stdout) == (0, f"Job <{job_id}> is being terminated\n")
    assert finished.stdout == f"{job_id} DONE -\n"


# --- faults ----------------------------------------------------------------------------------------------------


def test_lsf_down_for_the_next_n_invocations(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_DOWN=2)
    first = sh(lsf, "bjobs")
    second = sh(lsf, "bsub", "true")
    third = sh(lsf, "bsub", "true", FAKE_LSF_PLAN="DONE")

    for result in (first, second):
        assert (result.returncode, result.stdout) == (255, "")
        assert result.stderr == "LSF is down. Please wait...\n" * 3
    assert third.returncode == 0 and lsf.jobs()[0].id == FIRST
    assert [call["rc"] for call in lsf.calls()] == [255, 255, 0]


def test_transient_messages(lsf: Emulator) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "true", FAKE_LSF_PLAN="RUN").stdout)
    lsf.set_knobs(FAKE_LSF_NONLSF_HOST=1)
    non_lsf = sh(lsf, "bsub", "true")
    lsf.set_knobs(FAKE_LSF_NONLSF_HOST=None, FAKE_LSF_CONN_RESET=1)
    reset = sh(lsf, "bjobs", str(job_id))
    lsf.set_knobs(FAKE_LSF_CONN_RESET=None, FAKE_LSF_BJOBS_EMPTY=1)
    empty = sh(lsf, "bjobs", "-w", str(job_id))
    lsf.set_knobs(FAKE_LSF_BJOBS_EMPTY=None, FAKE_LSF_GARBAGE_ONCE=1)
    garbage = sh(lsf, "bjobs", "-json", "-o", "jobid stat", str(job_id))
    after = sh(lsf, "bjobs", "-json", "-o", "jobid stat", str(job_id))

    assert (non_lsf.returncode, non_lsf.stderr) == (255, "Request from non-LSF host rejected\n")
    assert (reset.returncode, reset.stdout) == (255, "")
    assert reset.stderr == (
        "Failed in an LSF library call: Failed in sending/receiving a message: Connection reset by peer\n"
    )
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    assert garbage.returncode == 0 and garbage.stdout.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage.stdout)
    assert json.loads(after.stdout)["RECORDS"] == [{"JOBID": str(job_id), "STAT": "RUN"}]
    assert len(lsf.jobs()) == 1  # the rejected bsub stored nothing


def test_noise_chatter_and_empty_stdout_once(lsf: Emulator) -> None:
    noisy = sh(lsf, "bsub", "-P", "mouselight", "true", FAKE_LSF_NOISE_STDOUT="3", FAKE_LSF_ESUB_CHATTER="1")
    lsf.set_knobs(FAKE_LSF_EMPTY_STDOUT_ONCE=1)
    silent = sh(lsf, "bsub", "-J", "ambiguous", "true")
    normal = sh(lsf, "bsub", "-J", "next", "true")
    lookup = sh(lsf, "bjobs", "-a", "-noheader", "-o", "jobid job_name", "-J", "ambiguous")

    assert noisy.stdout == (
        "Cannot connect to LSF. Please wait ...\n" * 3
        + "Job is submitted to <mouselight> project.\n"
        + f"Job <{FIRST}> is submitted to default queue <normal>.\n"
    )
    assert (silent.returncode, silent.stdout, silent.stderr) == (0, "", "")
    assert lookup.stdout == f"{FIRST + 1} ambiguous\n"  # it was submitted all the same
    assert normal.stdout == f"Job <{FIRST + 2}> is submitted to default queue <normal>.\n"


def test_hang_until_the_client_times_out(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_HANG=1)
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        subprocess.run(["bjobs"], env=lsf.env(), capture_output=True, text=True, timeout=3)
    assert b"batch system daemon not responding ... still trying" in (hung.value.stderr or b"")
    assert sh(lsf, "bjobs").stderr == "No unfinished job found\n"  # one invocation only
    assert lsf.calls("bjobs")[0]["rc"] is None


def test_submit_then_hang_leaves_an_accepted_job_behind(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_SUBMIT_THEN_HANG=1)
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        subprocess.run(
            ["bsub", "-J", "lost-answer", "true"], env=lsf.env(FAKE_LSF_PLAN="RUN"), capture_output=True, timeout=4
        )
    lookup = sh(lsf, "bjobs", "-a", "-noheader", "-o", "jobid stat job_name", "-J", "lost-answer")

    assert not (hung.value.stdout or b"")  # no "Job <N> is submitted" line ever came
    assert lookup.stdout == f"{FIRST} RUN lost-answer\n"


def test_query_lag_hides_a_new_job_from_bjobs_and_bkill_but_not_its_id(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_QUERY_LAG=1.5, FAKE_LSF_PLAN="RUN")
    first = submitted_id(sh(lsf, "bsub", "-J", "lagging", "true").stdout)
    by_name = sh(lsf, "bjobs", "-a", "-noheader", "-o", "jobid", "-J", "lagging")
    by_id = sh(lsf, "bjobs", "-noheader", "-o", "jobid stat", str(first))
    kill = sh(lsf, "bkill", str(first))
    second = submitted_id(sh(lsf, "bsub", "-J", "other", "true").stdout)

    assert (by_name.stdout, by_name.stderr) == ("", "Job <lagging> is not found\n")
    assert by_id.stderr == f"Job <{first}> is not found\n"
    assert (kill.returncode, kill.stderr) == (255, f"Job <{first}>: No matching job found\n")
    assert second == first + 1  # the id was taken all along
    time.sleep(1.6)
    assert stat_line(lsf, first, "jobid stat") == f"{first}|RUN"


def test_bkill_delay_answers_late_and_a_killed_bkill_kills_nothing(lsf: Emulator) -> None:
    job_id = submitted_id(sh(lsf, "bsub", "-J", "slow-kill", "true", FAKE_LSF_PLAN="RUN").stdout)
    lsf.set_knobs(FAKE_LSF_BKILL_DELAY=2)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["bkill", str(job_id)], env=lsf.env(), capture_output=True, timeout=0.5)
    time.sleep(2)
    assert stat_line(lsf, job_id, "stat") == "RUN"  # the interrupted bkill never reached mbatchd
    began = time.monotonic()
    killed = sh(lsf, "bkill", str(job_id))
    assert time.monotonic() - began >= 2
    assert killed.stdout == f"Job <{job_id}> is being terminated\n"
    assert stat_line(lsf, job_id, "stat exit_reason") == "EXIT|TERM_OWNER: job killed by owner"


def test_memory_need_over_the_limit_ends_term_memlimit(lsf: Emulator) -> None:
    lsf.set_knobs(FAKE_LSF_MEMORY_NEED_MB=3000, FAKE_LSF_DEFAULT_MEMLIMIT_MB=2048, FAKE_LSF_PLAN="RUN:1,DONE")
    default = submitted_id(sh(lsf, "bsub", "-J", "m0", "true").stdout)
    small = submitted_id(sh(lsf, "bsub", "-J", "m1", "-M", "2500MB", "true").stdout)
    kilobytes = submitted_id(sh(lsf, "bsub", "-J", "m2", "-M", "4000000", "true").stdout)  # LSF's default unit
    big = submitted_id(sh(lsf, "bsub", "-J", "m3", "-M", "4GB", "true").stdout)
    for job_id in (default, small, kilobytes, big):
        lsf.wait_finished(job_id)
    assert stat_line(lsf, default, "stat exit_code exit_reason").startswith("EXIT|137|TERM_MEMLIMIT")
    assert stat_line(lsf, small, "stat exit_reason").startswith("EXIT|TERM_MEMLIMIT")
    assert stat_line(lsf, kilobytes, "stat") == "DONE"
    assert stat_line(lsf, big, "stat") == "DONE"


def test_knobs_file_beats_the_environment_while_a_client_runs(lsf: Emulator) -> None:
    env = lsf.env(FAKE_LSF_QUEUES="normal")
    assert subprocess.run(["bsub", "-q", "short", "true"], env=env, capture_output=True).returncode == 255
    lsf.set_knobs(FAKE_LSF_QUEUES="normal,short", FAKE_LSF_PLAN="DONE")
    accepted = subprocess.run(["bsub", "-q", "short", "true"], env=env, capture_output=True, text=True)
    assert accepted.stdout == f"Job <{FIRST}> is submitted to queue <short>.\n"


def test_unknown_window_then_running_again(lsf: Emulator, tmp_path: Path) -> None:
    lsf.set_knobs(FAKE_LSF_UNKWN_AFTER="0:60")
    job_id = submitted_id(sh(lsf, "bsub", f"while [ ! -e {tmp_path}/stop ]; do sleep 0.05; done").stdout)
    deadline = time.monotonic() + 10
    while lsf.job(job_id).start_time is None and time.monotonic() < deadline:
        time.sleep(0.05)
    lost = stat_line(lsf, job_id, "stat")
    lsf.set_knobs(FAKE_LSF_UNKWN_AFTER="0:0")
    back = stat_line(lsf, job_id, "stat")
    (tmp_path / "stop").touch()

    assert (lost, back) == ("UNKWN", "RUN")
    assert lsf.wait_finished(job_id).stat == "DONE"


def test_ids_roll_over_and_are_reused(lsf: Emulator) -> None:
    knobs = {"FAKE_LSF_MAX_JOBID": str(FIRST + 1), "FAKE_LSF_CLEAN_PERIOD": "0", "FAKE_LSF_PLAN": "DONE"}
    ids = [submitted_id(sh(lsf, "bsub", "-J", f"job{n}", "true", **knobs).stdout) for n in range(3)]

    assert ids == [FIRST, FIRST + 1, FIRST]
    assert sh(lsf, "bjobs", "-noheader", "-o", "jobid job_name", str(FIRST)).stdout == f"{FIRST} job2\n"


def test_concurrent_submissions_get_distinct_sequential_ids(lsf: Emulator) -> None:
    env = lsf.env(FAKE_LSF_PLAN="RUN")
    processes = [
        subprocess.Popen(["bsub", "-J", f"fan{n}", "true"], env=env, stdout=subprocess.PIPE, text=True)
        for n in range(8)
    ]
    ids = sorted(submitted_id(process.communicate(timeout=30)[0]) for process in processes)

    assert ids == list(range(FIRST, FIRST + 8))
    assert len(lsf.calls("bsub")) == 8


def test_every_knob_is_documented_in_the_readme() -> None:
    from devstack.lsf.knobs import DEFAULTS

    readme = (BIN_DIR.parent / "README.md").read_text()
    documented = set(re.findall(r"`(FAKE_LSF_[A-Z_]+)`", readme)) - {"FAKE_LSF_DIR"}
    assert documented == set(DEFAULTS)


def test_missing_state_dir_is_a_clear_error() -> None:
    env = {key: value for key, value in os.environ.items() if key != "FAKE_LSF_DIR"}
    result = subprocess.run([str(BIN_DIR / "bjobs")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 255
    assert "FAKE_LSF_DIR is not set" in result.stderr
