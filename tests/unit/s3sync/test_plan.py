"""The engine's pure parts: key order of the walk, the merge-join, aws-s3-sync's upload rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hortacloud.s3sync.control import query_string
from hortacloud.s3sync.engine import merge_join, needs_upload
from hortacloud.s3sync.local import LocalFile, SourceError, overlay, read_file_list, walk_sorted, write_file_list
from hortacloud.s3sync.remote import RemoteObject, key_ordered


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
    with pytest.raises(SourceError, match=r"not UTF-8.*rename"):
        list(walk_sorted(str(tmp_path)))


def test_walk_skips_links_that_lead_nowhere_or_in_a_loop_and_special_files_alike(tmp_path: Path) -> None:
    _touch(tmp_path, "real")
    _touch(tmp_path, "sub/inside")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path / "sub")  # a link back to the folder it is in
    (tmp_path / "up").symlink_to(tmp_path)  # a link back to the root
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "linked").symlink_to(tmp_path / "real")  # a link to a file is followed, as aws s3 sync does
    warnings: list[str] = []
    keys = [item.key for item in walk_sorted(str(tmp_path), warnings.append)]
    assert keys == ["linked", "real", "sub/inside"]
    assert sorted(warning.split(":")[0] for warning in warnings) == sorted(
        f"skipped {tmp_path / name}" for name in ("dangling", "pipe", "sub/loop", "up")
    )
    assert any("(a loop)" in warning for warning in warnings) and any("FIFO" in warning for warning in warnings)


def test_a_file_list_reads_back_what_was_written_below_another_root(tmp_path: Path) -> None:
    files = [LocalFile("1/a.ktx", "/x/1/a.ktx", 5, 100.0), LocalFile("1/b b.ktx", "/x/1/b b.ktx", 7, 200.5)]
    assert write_file_list(tmp_path / "list.jsonl", "/x", files) == (2, 12)
    again = list(read_file_list(tmp_path / "list.jsonl", "/elsewhere"))
    assert [(f.key, f.path, f.size, f.mtime) for f in again] == [
        ("1/a.ktx", "/elsewhere/1/a.ktx", 5, 100.0),
        ("1/b b.ktx", "/elsewhere/1/b b.ktx", 7, 200.5),
    ]


@pytest.mark.parametrize("bad", [["../etc/passwd", 1, 0], ["/abs", 1, 0], ["a", 1, 0]])
def test_a_file_list_that_leaves_its_root_or_goes_back_is_refused(tmp_path: Path, bad: list) -> None:  # type: ignore[type-arg]
    import json

    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps({"hortacloud_file_list": 1, "root": "/x"}) + "\n" + json.dumps(["a", 1, 0]) + "\n")
    with path.open("a") as out:
        out.write(json.dumps(bad) + "\n")
    with pytest.raises(SourceError, match="out of order or leaves the root"):
        list(read_file_list(path))


def test_overlay_takes_the_later_trees_file_for_a_key_both_hold() -> None:
    first = [LocalFile("a", "/v1/a", 1, 0), LocalFile("b", "/v1/b", 2, 0)]
    second = [LocalFile("b", "/v2/b", 3, 0), LocalFile("c", "/v2/c", 4, 0)]
    assert [item.path for item in overlay([first, second])] == ["/v1/a", "/v2/b", "/v2/c"]


def test_query_strings_encode_a_space_as_sigv4_does() -> None:
    # Form encoding ("+") is signed as %20 by SigV4 and refused by S3 (SignatureDoesNotMatch).
    assert query_string({"prefix": "images/a b+c/", "continuation-token": "x/y=="}) == (
        "prefix=images%2Fa%20b%2Bc%2F&continuation-token=x%2Fy%3D%3D"
    )


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
    # SeaweedFS lists folder by folder: "a/..." before "a-b"; runs of 3 force several spilled runs.
    listed = ["a/inside", "a/z", "a-b", "a0", "b/1", "b-", "Z", "ü", "a.b"]
    objects = [RemoteObject(key, number, 0.0) for number, key in enumerate(listed)]
    ordered = list(key_ordered(objects, run_length=3))
    assert [item.key for item in ordered] == sorted(listed, key=lambda key: key.encode("utf-8"))
    assert {item.key: item.size for item in ordered} == {key: number for number, key in enumerate(listed)}


def test_cli_refuses_bad_input_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:  # type: ignore[no-untyped-def]
    from hortacloud.s3sync.cli import main

    missing = tmp_path / "no such sample"
    assert main([str(missing), "s3://bucket/images/2023-05-10/", "--endpoint-url", "http://127.0.0.1:9"]) == 1
    assert f"Nothing synced to s3://bucket/images/2023-05-10/: Source folder {missing} does not exist" in caplog.text
    with pytest.raises(SystemExit) as exited:
        main(["--workers", "0", str(tmp_path), "s3://bucket/p/"])
    assert exited.value.code == 2
    assert "argument --workers: '0' is not a positive whole number" in capsys.readouterr().err
