"""Job names, the argv of bsub and bjobs, and shell quoting."""

from __future__ import annotations

import shlex

import pytest

from hortacloud.lsf.commands import bjobs_argv, bsub_argv, lsf_job_name, shell_line, transfer_command


def test_job_name_is_deterministic_readable_and_distinct() -> None:
    base = {"dag_id": "d", "run_id": "manual__2026-01-01T00:00:00+00:00", "task_id": "segmentation.transfer"}
    one = lsf_job_name("seg0510-1", map_index=0, source="/a", **base)
    assert one == lsf_job_name("seg0510-1", map_index=0, source="/a", **base)
    assert one.startswith("seg0510-1.") and len(one.split(".")[1]) == 10
    assert one != lsf_job_name("seg0510-1", map_index=1, source="/a", **base)
    assert one != lsf_job_name("seg0510-1", map_index=0, source="/b", **base)
    assert one != lsf_job_name("seg0510-1", map_index=0, source="/a", **{**base, "run_id": "other"})
    odd = lsf_job_name("a b[1]", map_index=None, source="", **base)
    assert " " not in odd and "[" not in odd and "]" not in odd


def test_transfer_command_quotes_hostile_names() -> None:
    source = "/data/it's $HOME; rm -rf x"
    command = transfer_command(
        "aws s3 sync {source}/ {destination}/ --only-show-errors --profile {aws_profile}",
        source=source,
        destination="s3://bucket/segmentation/2023-05-10/",
        aws_profile="FlyLight",
    )
    words = shlex.split(command)
    assert words == [
        "aws",
        "s3",
        "sync",
        source + "/",
        "s3://bucket/segmentation/2023-05-10/",
        "--only-show-errors",
        "--profile",
        "FlyLight",
    ]


def test_transfer_command_unknown_placeholder() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        transfer_command("aws s3 sync {src}", source="a", destination="b")


def test_bsub_argv_and_shell_line_round_trip() -> None:
    argv = bsub_argv(
        command="aws s3 sync 'a b'/ s3://x/",
        job_name="reg0510.abc",
        slots=4,
        project="mouselight",
        queue="short",
        runlimit_minutes=210,
        output_file="/logs/%J.out",
    )
    assert argv == [
        "bsub",
        "-J",
        "reg0510.abc",
        "-n",
        "4",
        "-P",
        "mouselight",
        "-q",
        "short",
        "-W",
        "210",
        "-o",
        "/logs/%J.out",
        "aws s3 sync 'a b'/ s3://x/",
    ]
    assert shlex.split(shell_line(argv)) == argv
    line = shell_line(["bjobs"], "/misc/lsf/conf/profile.lsf")
    assert ". /misc/lsf/conf/profile.lsf >/dev/null 2>&1 && bjobs" in line
    assert bjobs_argv(["1", "2"]) == [
        "bjobs",
        "-a",
        "-json",
        "-o",
        "jobid stat exit_code exit_reason job_name",
        "1",
        "2",
    ]
    assert bjobs_argv(name="n", output_format="text")[-2:] == ["-J", "n"]


def test_shell_line_sources_the_profile_or_names_it_when_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    profile = tmp_path / "lsf conf" / "profile.lsf"
    profile.parent.mkdir()
    profile.write_text("export LSF_ENVDIR=/misc/lsf/conf\necho chatter\n")
    argv = ["sh", "-c", 'echo "$LSF_ENVDIR"']
    ran = subprocess.run(["bash", "-c", shell_line(argv, str(profile))], capture_output=True, text=True, check=False)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "/misc/lsf/conf\n", "")
    gone = str(tmp_path / "nowhere" / "profile.lsf")
    missing = subprocess.run(["bash", "-c", shell_line(argv, gone)], capture_output=True, text=True, check=False)
    assert missing.returncode == 126 and missing.stdout == ""
    assert missing.stderr == f"hortacloud: LSF profile {gone} does not exist or cannot be read\n"
