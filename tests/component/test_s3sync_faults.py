"""The sync engine and its command line against a real S3 server, in the faults an independent check found.

Each test is one fault: a lost upload S3 never got (content check by ETag), a space in a prefix (SigV4 query
encoding), an endpoint that is not S3, down or silent, a missing bucket, a name S3 cannot hold, multipart
uploads a killed sync left behind; and the shard path (a file list, sub-prefixes, a results file).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devstack.sampletree import make_sample
from hortacloud.s3sync.control import BotocoreCredentials, S3Location
from hortacloud.s3sync.engine import SyncEngine, SyncError, SyncItem
from hortacloud.s3sync.local import walk_sorted, write_file_list
from hortacloud.s3sync.remote import MIB, CrtS3, Uploaded
from hortacloud.s3sync.shards import plan_shards


def _engine(endpoint: Any, bucket: str, s3: CrtS3 | None = None) -> SyncEngine:
    import botocore.session

    session = botocore.session.get_session()
    session.set_credentials(endpoint.access_key, endpoint.secret_key)
    s3 = s3 or CrtS3(
        S3Location("http", endpoint.url.removeprefix("http://"), endpoint.region, path_style=True),
        BotocoreCredentials(session.get_credentials()),
        part_size=8 * MIB,
        multipart_threshold=8 * MIB,
        memory_limit=256 * MIB,
    )
    return SyncEngine(s3, bucket, workers=8, memory_budget=256 * MIB, progress_interval=0.2)


def _cli(
    endpoint: Any, *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **endpoint.client_env(), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hortacloud.s3sync", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _LosesOneUpload:
    """A CRT client whose upload of one key is answered 200 by something that is not the bucket: the old bytes of
    the same size stay in S3, and the upload's ETag is not theirs."""

    def __init__(self, s3: CrtS3, lost: str) -> None:
        self._s3, self.lost = s3, lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def upload(self, bucket, key, path, size, on_done, on_progress):  # type: ignore[no-untyped-def]
        if key == self.lost:
            on_progress(size)
            on_done(Uploaded(None, "0123456789abcdef0123456789abcdef"))
            return _Done()
        return self._s3.upload(bucket, key, path, size, on_done, on_progress)


class _Done:
    class finished_future:
        @staticmethod
        def result(timeout: float | None = None) -> None:
            return None

    def cancel(self) -> None:
        pass


def test_a_same_size_object_whose_reupload_was_lost_fails_the_verification(s3_server, fresh_bucket, tmp_path):
    sample = make_sample(tmp_path / "s", depth=1, odd_names=False)
    engine = _engine(s3_server, fresh_bucket)
    engine.run([SyncItem(str(sample / "ktx"), "p/ktx/")])
    block = sample / "ktx" / "3" / "block_8_xy_3.ktx"
    block.write_bytes(os.urandom(block.stat().st_size))  # new bytes, same size, newer: must go up again
    later = time.time() + 5
    os.utime(block, (later, later))
    lossy = _engine(s3_server, fresh_bucket, _LosesOneUpload(engine.s3, "p/ktx/3/block_8_xy_3.ktx"))  # type: ignore[arg-type]
    with pytest.raises(SyncError) as err:
        lossy.run([SyncItem(str(sample / "ktx"), "p/ktx/")])
    assert "p/ktx/3/block_8_xy_3.ktx: S3 holds other bytes than were sent" in str(err.value)
    assert err.value.summary.verified is False


def test_a_space_in_the_prefix_and_in_keys_across_listing_pages(s3_server, s3_client, fresh_bucket, tmp_path):
    root = tmp_path / "tree with spaces"
    for number in range(1030):  # more than one listing page of 1,000 keys, a space in every key
        path = root / f"d {number // 100}" / f"f {number:04d}.ktx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    engine = _engine(s3_server, fresh_bucket)
    first = engine.run([SyncItem(str(root), "images/a b+c/ktx/")])
    assert first.files_uploaded == 1030 and first.verified
    again = engine.run([SyncItem(str(root), "images/a b+c/ktx/")])
    assert again.files_uploaded == 0 and again.files_skipped == 1030


def test_seaweedfs_lists_folder_by_folder_so_listings_are_sorted_before_the_merge(s3_client, fresh_bucket):
    for key in ("o/a-b", "o/a/x", "o/a0", "o/a b"):
        s3_client.put_object(Bucket=fresh_bucket, Key=key, Body=b"x")
    listed = [item["Key"] for item in s3_client.list_objects_v2(Bucket=fresh_bucket, Prefix="o/")["Contents"]]
    assert listed != sorted(listed, key=lambda key: key.encode())  # not byte order: the reason for key_ordered
    assert listed.index("o/a/x") < listed.index("o/a-b")


def test_incomplete_multipart_uploads_of_an_earlier_sync_are_aborted(s3_server, s3_client, fresh_bucket, tmp_path):
    left = s3_client.create_multipart_upload(Bucket=fresh_bucket, Key="p/ktx/killed-mid-upload.ktx")
    other = s3_client.create_multipart_upload(Bucket=fresh_bucket, Key="elsewhere/not-ours.ktx")
    time.sleep(1.1)  # S3 keeps whole seconds: the upload began before this sync
    sample = make_sample(tmp_path / "s", depth=0, odd_names=False)
    summary = _engine(s3_server, fresh_bucket).run([SyncItem(str(sample / "ktx"), "p/ktx/")])
    assert summary.multipart_aborted == 1
    remaining = s3_client.list_multipart_uploads(Bucket=fresh_bucket).get("Uploads", [])
    assert [upload["UploadId"] for upload in remaining] == [other["UploadId"]]
    assert left["UploadId"] not in [upload["UploadId"] for upload in remaining]


def test_a_shard_syncs_its_file_list_lists_only_its_prefixes_and_writes_its_results(
    s3_server, s3_client, fresh_bucket, tmp_path
):
    sample = make_sample(tmp_path / "s", depth=2, odd_names=False)
    shards, _top = plan_shards(walk_sorted(str(sample / "ktx")), 3, tmp_path / "lists")
    shard = shards[1]
    results = tmp_path / "results.jsonl"
    argv = ["--file-list", shard.file_list, *(f"--prefix={p}" for p in shard.prefixes), "--results", str(results)]
    done = _cli(s3_server, *argv, str(sample / "ktx") + "/", f"s3://{fresh_bucket}/img/ktx/")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files_uploaded"] == shard.files and summary["verified"]
    landed = {item["Key"] for item in s3_client.list_objects_v2(Bucket=fresh_bucket, Prefix="img/")["Contents"]}
    assert landed == {
        f"img/ktx/{line[0]}" for line in map(json.loads, Path(shard.file_list).read_text().splitlines()[1:])
    }
    etags = [json.loads(line) for line in results.read_text().splitlines()]
    heads = {key: s3_client.head_object(Bucket=fresh_bucket, Key=key)["ETag"].strip('"') for key, _ in etags}
    assert {key: etag for key, etag in etags} == heads and len(etags) == shard.files


def test_a_missing_bucket_is_one_line(s3_server, tmp_path):
    sample = make_sample(tmp_path / "s", depth=0, odd_names=False)
    done = _cli(s3_server, str(sample), "s3://no-such-bucket-here/p/")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "Nothing synced to s3://no-such-bucket-here/p/" in done.stderr and "NoSuchBucket" in done.stderr


def test_a_name_s3_cannot_hold_is_one_line(s3_server, fresh_bucket, tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "fine.ktx").write_bytes(b"x")
    with open(os.path.join(os.fsencode(root), b"bad-\xff.ktx"), "wb") as handle:
        handle.write(b"x")
    done = _cli(s3_server, str(root), f"s3://{fresh_bucket}/p/")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "is not UTF-8; S3 keys must be UTF-8 (rename the file)" in done.stderr


class _HtmlPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def html_endpoint():  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_endpoint():  # type: ignore[no-untyped-def]
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        ("html_endpoint", "did not answer like S3"),
        ("silent_endpoint", "got no answer within 2s"),
        ("closed", "failed"),
    ],
)
def test_an_endpoint_that_is_not_s3_down_or_silent_is_one_line(s3_server, tmp_path, request, endpoint, words):
    url = _closed_port() if endpoint == "closed" else request.getfixturevalue(endpoint)
    sample = make_sample(tmp_path / "s", depth=0, odd_names=False)
    done = _cli(s3_server, str(sample), "s3://bucket/p/", "--endpoint-url", url, "--request-timeout", "2")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "Nothing synced" in line]
    assert words in line and url.removeprefix("http://") in line


def test_the_engine_writes_a_results_file_for_each_attempt(s3_server, fresh_bucket, tmp_path):
    sample = make_sample(tmp_path / "s", depth=0, odd_names=False)
    results = tmp_path / "r.jsonl"
    files = list(walk_sorted(str(sample / "ktx")))
    write_file_list(tmp_path / "l.jsonl", str(sample / "ktx"), files)
    item = SyncItem(str(sample / "ktx"), "q/ktx/", file_list=str(tmp_path / "l.jsonl"), prefixes=("",))
    _engine(s3_server, fresh_bucket).run([item], results_path=str(results))
    assert len(results.read_text().splitlines()) == len(files)


def test_content_types_are_those_aws_s3_cp_gives(s3_server, s3_client, fresh_bucket, tmp_path):
    """The old scripts' aws-cli guessed each type from the file's name and sent none when it knew none."""
    import mimetypes

    root = tmp_path / "sample"
    (root / "ktx").mkdir(parents=True)
    names = ["transform.txt", "tilebase.cache.yml", "default.0.tif", "ktx/block_8_xy_.ktx", "ktx/no-extension"]
    for name in names:
        (root / name).write_bytes(b"x" * 10)
    done = _cli(s3_server, str(root), f"s3://{fresh_bucket}/ours/")
    assert done.returncode == 0, done.stderr
    for name in names:
        guessed = mimetypes.guess_type(str(root / name))[0]  # awscli.customizations.s3.utils.guess_content_type
        typed = {"ContentType": guessed} if guessed else {}
        s3_client.put_object(Bucket=fresh_bucket, Key=f"cli/{name}", Body=b"x" * 10, **typed)
        ours = s3_client.head_object(Bucket=fresh_bucket, Key=f"ours/{name}")["ContentType"]
        assert ours == s3_client.head_object(Bucket=fresh_bucket, Key=f"cli/{name}")["ContentType"], name
    assert s3_client.head_object(Bucket=fresh_bucket, Key="ours/default.0.tif")["ContentType"] == "image/tiff"


_LOADS_CRT = (
    "import json, sys\n"
    "from hortacloud.s3sync.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'code': code, 'crt': '_awscrt' in sys.modules}), file=sys.stderr)\n"
)


def _crt_loaded(endpoint: Any, *argv: str) -> bool:
    environment = {**os.environ, **endpoint.client_env()}
    done = subprocess.run(
        [sys.executable, "-c", _LOADS_CRT, *argv], env=environment, capture_output=True, text=True, timeout=60
    )
    outcome = json.loads(done.stderr.strip().splitlines()[-1])
    assert outcome["code"] == 0, done.stderr
    return bool(outcome["crt"])


def test_a_sync_with_nothing_to_do_never_loads_the_crt(s3_server, fresh_bucket, tmp_path):
    sample = make_sample(tmp_path / "s", depth=1, odd_names=True)
    destination = f"s3://{fresh_bucket}/p/"
    assert _crt_loaded(s3_server, str(sample), destination)  # the first run uploads through the CRT
    assert not _crt_loaded(s3_server, str(sample), destination)  # the second lists, compares and stops
    (sample / "transform.txt").write_text("changed, longer than before\n")
    assert _crt_loaded(s3_server, str(sample), destination)


def test_an_endpoint_url_with_a_password_is_refused_without_showing_it(s3_server, tmp_path):
    sample = make_sample(tmp_path / "s", depth=0, odd_names=False)
    done = _cli(s3_server, str(sample), "s3://bucket/p/", "--endpoint-url", "http://user:hunter2@127.0.0.1:9")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "carries a user or password" in done.stderr and "hunter2" not in done.stderr + done.stdout
