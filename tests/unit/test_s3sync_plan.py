"""The engine's pure parts: key order of the walk, the merge-join, aws-s3-sync's upload rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hortacloud.s3sync import LocalFile, RemoteObject, merge_join, needs_upload, walk_sorted


def _touch(root: Path, relative: str, size: int = 1) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_walk_yields_keys_in_s3_byte_order(tmp_path: Path) -> None:
    names = ["a0", "a-b", "a/inside", "a/z/deep", "b", "Z", "ü", "a.b", "space name", "3/7/block_8_xy_37.ktx"]
    for name in names:
        _touch(tmp_path, name)
    keys = [item.key for item in walk_sorted(str(tmp_path))]
    assert keys == sorted(names, key=lambda key: key.encode("utf-8"))
    assert set(keys) == set(names)


def test_walk_reports_sizes_and_paths(tmp_path: Path) -> None:
    _touch(tmp_path, "x/y.ktx", size=123)
    (item,) = walk_sorted(str(tmp_path))
    assert (item.key, item.size, item.path) == ("x/y.ktx", 123, str(tmp_path / "x" / "y.ktx"))


def test_walk_refuses_names_that_are_not_utf8(tmp_path: Path) -> None:
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"bad-\xff-name"))
    with pytest.raises(ValueError, match=r"not UTF-8.*rename"):
        list(walk_sorted(str(tmp_path)))


def test_walk_warns_about_broken_links(tmp_path: Path) -> None:
    _touch(tmp_path, "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    warnings: list[str] = []
    assert [item.key for item in walk_sorted(str(tmp_path), warnings.append)] == ["real"]
    assert "dangling" in warnings[0]


def _local(key: str, size: int = 10, mtime: float = 1000.0) -> LocalFile:
    return LocalFile(key, "/src/" + key, size, mtime)


def test_merge_join_pairs_equal_keys_and_passes_over_remote_only() -> None:
    local = [_local("a"), _local("c"), _local("e")]
    remote = [RemoteObject("a", 10, 2000), RemoteObject("b", 1, 0), RemoteObject("e", 3, 0), RemoteObject("f", 1, 0)]
    pairs = [(item.key, other.key if other else None) for item, other in merge_join(local, remote)]
    assert pairs == [("a", "a"), ("c", None), ("e", "e")]


def test_merge_join_refuses_a_listing_out_of_key_order() -> None:
    with pytest.raises(RuntimeError, match="out of key order"):
        list(merge_join([_local("b"), _local("z")], [RemoteObject("c", 1, 0), RemoteObject("a", 1, 0)]))


@pytest.mark.parametrize(
    ("local", "remote", "expected"),
    [
        (_local("k", 10, 1000.0), None, "new"),
        (_local("k", 10, 1000.0), RemoteObject("k", 11, 5000.0), "size 10 differs from 11 in S3"),
        (_local("k", 10, 1001.0), RemoteObject("k", 10, 1000.0), "newer locally"),
        (_local("k", 10, 1000.0), RemoteObject("k", 10, 1000.0), None),
        # S3 keeps whole seconds: a file written at .7 s and uploaded in the same second is not newer.
        (_local("k", 10, 1000.7), RemoteObject("k", 10, 1000.0), None),
        (_local("k", 10, 900.0), RemoteObject("k", 10, 1000.0), None),
    ],
)
def test_needs_upload_follows_aws_s3_sync(local: LocalFile, remote: RemoteObject | None, expected: str | None) -> None:
    assert needs_upload(local, remote) == expected


def test_key_ordered_sorts_a_folder_by_folder_listing_with_spilled_runs() -> None:
    from hortacloud.s3sync import key_ordered

    # SeaweedFS lists folder by folder: "a/..." before "a-b"; runs of 3 force several spilled runs.
    listed = ["a/inside", "a/z", "a-b", "a0", "b/1", "b-", "Z", "ü", "a.b"]
    objects = [RemoteObject(key, number, 0.0) for number, key in enumerate(listed)]
    ordered = list(key_ordered(objects, run_length=3))
    assert [item.key for item in ordered] == sorted(listed, key=lambda key: key.encode("utf-8"))
    assert {item.key: item.size for item in ordered} == {key: number for number, key in enumerate(listed)}


def test_cli_refuses_bad_input_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:  # type: ignore[no-untyped-def]
    from hortacloud.s3sync import main

    missing = tmp_path / "no such sample"
    assert main([str(missing), "s3://bucket/images/2023-05-10/"]) == 1
    assert f"Nothing synced: Source folder {missing} does not exist" in caplog.text
    with pytest.raises(SystemExit) as exited:
        main(["--workers", "0", str(tmp_path), "s3://bucket/p/"])
    assert exited.value.code == 2
    assert "argument --workers: '0' is not a positive whole number" in capsys.readouterr().err
