"""The sync engine against a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from pathlib import Path

import botocore.session
import pytest

from devstack.s3server import S3Endpoint
from devstack.sampletree import ODD_NAMES, block_key, make_sample
from hortacloud.s3sync.control import BotocoreCredentials, S3Error, S3Location
from hortacloud.s3sync.engine import SyncEngine, SyncError, SyncItem
from hortacloud.s3sync.remote import MIB, CrtS3


def _client(endpoint: S3Endpoint, **options) -> CrtS3:  # type: ignore[no-untyped-def]
    session = botocore.session.get_session()
    session.set_credentials(endpoint.access_key, endpoint.secret_key)
    host = endpoint.url.removeprefix("http://")
    return CrtS3(
        S3Location("http", host, endpoint.region, path_style=True),
        BotocoreCredentials(session.get_credentials()),
        part_size=options.pop("part_size", 8 * MIB),
        multipart_threshold=options.pop("multipart_threshold", 8 * MIB),
        memory_limit=256 * MIB,
        request_timeout=options.pop("request_timeout", 30.0),
    )


def _engine(endpoint: S3Endpoint, bucket: str, **options) -> SyncEngine:  # type: ignore[no-untyped-def]
    s3 = _client(endpoint, **{k: options.pop(k) for k in list(options) if k in ("part_size", "multipart_threshold")})
    return _engine_on(s3, bucket, **options)


def _engine_on(s3: CrtS3, bucket: str, engine: type[SyncEngine] = SyncEngine, **options) -> SyncEngine:  # type: ignore[no-untyped-def]
    options = {"workers": 8, "memory_budget": 256 * MIB, "progress_interval": 0.2, **options}
    return engine(s3, bucket, **options)


def _objects(client, bucket: str, prefix: str = "") -> dict[str, int]:  # type: ignore[no-untyped-def]
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def _items(sample: Path, date: str = "2023-05-10") -> list[SyncItem]:
    return [
        SyncItem(str(sample / "ktx"), f"images/{date}/ktx/"),
        *(SyncItem(str(sample / name), f"images/{date}/{name}", is_file=True) for name in ("transform.txt",)),
    ]


def _expected(sample: Path, date: str = "2023-05-10") -> dict[str, int]:
    expected = {}
    for directory, _, names in os.walk(sample / "ktx"):
        for name in names:
            path = Path(directory) / name
            expected[f"images/{date}/" + path.relative_to(sample).as_posix()] = path.stat().st_size
    expected[f"images/{date}/transform.txt"] = (sample / "transform.txt").stat().st_size
    return expected


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return make_sample(tmp_path / "2023-05-10", depth=2)


def test_first_sync_uploads_everything_with_odd_names_and_verifies(s3_server, s3_client, fresh_bucket, sample):
    summary = _engine(s3_server, fresh_bucket).run(_items(sample))
    expected = _expected(sample)
    assert _objects(s3_client, fresh_bucket) == expected
    assert summary.files_uploaded == len(expected) == summary.files_total
    assert summary.bytes_uploaded == sum(expected.values())
    assert summary.verified and summary.files_failed == 0
    for name in ODD_NAMES:
        assert f"images/2023-05-10/ktx/{name}" in expected
    assert "images/2023-05-10/" + block_key(("3", "7")) in expected
    body = s3_client.get_object(Bucket=fresh_bucket, Key="images/2023-05-10/ktx/plus+percent%hash#question?.ktx")
    assert body["Body"].read() == (sample / "ktx" / "plus+percent%hash#question?.ktx").read_bytes()


def test_second_run_uploads_nothing(s3_server, fresh_bucket, sample):
    engine = _engine(s3_server, fresh_bucket)
    first = engine.run(_items(sample))
    second = engine.run(_items(sample))
    assert second.files_uploaded == 0
    assert second.files_skipped == first.files_uploaded
    assert second.verified


def test_deleted_object_and_changed_files_are_reuploaded_and_nothing_else(s3_server, s3_client, fresh_bucket, sample):
    engine = _engine(s3_server, fresh_bucket)
    engine.run(_items(sample))
    deleted = "images/2023-05-10/" + block_key(("5",))
    s3_client.delete_object(Bucket=fresh_bucket, Key=deleted)
    grown = sample / block_key(("2", "4"))
    grown.write_bytes(grown.read_bytes() + b"more")
    touched = sample / block_key(("8",))
    touched.write_bytes(bytes(reversed(touched.read_bytes())))  # same size, newer
    later = time.time() + 5
    os.utime(touched, (later, later))

    third = engine.run(_items(sample))

    assert third.files_uploaded == 3
    assert _objects(s3_client, fresh_bucket) == _expected(sample)
    for path in (grown, touched):
        key = "images/2023-05-10/" + path.relative_to(sample).as_posix()
        assert s3_client.get_object(Bucket=fresh_bucket, Key=key)["Body"].read() == path.read_bytes()


def test_dry_run_lists_and_writes_nothing(s3_server, s3_client, fresh_bucket, sample, caplog):
    caplog.set_level("INFO")
    summary = _engine(s3_server, fresh_bucket).run(_items(sample), dry_run=True)
    assert _objects(s3_client, fresh_bucket) == {}
    assert summary.dry_run and summary.files_uploaded == 0
    assert summary.files_total == len(_expected(sample))
    assert f"would upload s3://{fresh_bucket}/images/2023-05-10/ktx/block_8_xy_.ktx" in caplog.text


class _VanishingEngine(SyncEngine):
    """Deletes one source file between planning and uploading, as a crashed writer or a cleanup would."""

    victim: Path

    def plan(self, items, spool, summary, dry_run):  # type: ignore[no-untyped-def]
        super().plan(items, spool, summary, dry_run)
        self.victim.unlink()


def test_a_failed_upload_fails_the_sync_and_others_still_land(s3_server, s3_client, fresh_bucket, sample):
    engine = _engine_on(_client(s3_server), fresh_bucket, _VanishingEngine, workers=4)
    engine.victim = sample / block_key(("6",))
    with pytest.raises(SyncError) as err:
        engine.run(_items(sample))
    assert err.value.summary.files_failed == 1
    assert err.value.summary.verified is False
    assert "ktx/6/block_8_xy_6.ktx" in str(err.value) and "uploads failed" in str(err.value)
    # Everything else landed, so a re-run has only the vanished file's absence to notice (nothing to upload).
    assert len(_objects(s3_client, fresh_bucket)) == len(_expected(sample))


class _LyingEngine(SyncEngine):
    """Reports one upload as done without sending it: verification must catch it."""

    def upload(self, spool, results, progress, summary):  # type: ignore[no-untyped-def]
        lines = spool.readlines()
        import io

        failures = super().upload(io.StringIO("".join(lines[1:])), results, progress, summary)
        summary.files_uploaded += 1
        return failures


def test_verification_fails_when_an_object_is_missing(s3_server, fresh_bucket, sample):
    engine = _engine_on(_client(s3_server), fresh_bucket, _LyingEngine, workers=4)
    with pytest.raises(SyncError, match=r"(?s)verification failed.*missing in S3"):
        engine.run(_items(sample))


class _CrashingEngine(SyncEngine):
    """Stops after a few uploads, as a worker killed mid-sync would."""

    def upload(self, spool, results, progress, summary):  # type: ignore[no-untyped-def]
        import io

        head = "".join(spool.readline() for _ in range(10))
        super().upload(io.StringIO(head), results, progress, summary)
        raise KeyboardInterrupt


def test_a_rerun_after_a_crash_uploads_only_what_is_missing(s3_server, s3_client, fresh_bucket, sample):
    with pytest.raises(KeyboardInterrupt):
        _engine_on(_client(s3_server), fresh_bucket, _CrashingEngine, workers=4).run(_items(sample))
    landed = len(_objects(s3_client, fresh_bucket))
    assert landed == 10
    summary = _engine(s3_server, fresh_bucket).run(_items(sample))
    assert summary.files_uploaded == len(_expected(sample)) - 10
    assert summary.files_skipped == 10 and summary.verified


def test_large_files_go_up_in_parts_intact(s3_server, s3_client, fresh_bucket, tmp_path):
    big = tmp_path / "big" / "default.0.tif"
    big.parent.mkdir()
    big.write_bytes(os.urandom(12 * MIB + 123))
    engine = _engine(s3_server, fresh_bucket, part_size=5 * MIB, multipart_threshold=5 * MIB)
    engine.run([SyncItem(str(big), "images/2023-05-10/default.0.tif", is_file=True)])
    head = s3_client.head_object(Bucket=fresh_bucket, Key="images/2023-05-10/default.0.tif")
    assert head["ETag"].strip('"').endswith("-3")
    data = s3_client.get_object(Bucket=fresh_bucket, Key="images/2023-05-10/default.0.tif")["Body"].read()
    assert hashlib.sha256(data).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_wrong_credentials_fail_with_the_servers_words(s3_server, fresh_bucket, sample):
    bad = S3Endpoint(s3_server.url, s3_server.access_key, "not-the-secret")
    with pytest.raises(S3Error, match=r"Listing s3://.* failed: .*HTTP 403 SignatureDoesNotMatch"):
        _engine(bad, fresh_bucket).run(_items(sample))


def test_credentials_refreshed_mid_sync_are_used(s3_server, s3_client, fresh_bucket, sample):
    """An assumed role (the connection's role_arn) hands out short-lived keys that botocore refreshes; the CRT client
    must sign every request with the current ones. Here the first keys are already invalid and about to expire."""
    from botocore.credentials import RefreshableCredentials

    refreshes = []

    def refresh() -> dict[str, str]:
        refreshes.append(time.monotonic())
        # Five minutes left: inside botocore's mandatory refresh window, so every use asks for fresh keys.
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        return {
            "access_key": s3_server.access_key,
            "secret_key": s3_server.secret_key,
            "token": "",
            "expiry_time": expiry.isoformat(),
        }

    stale = {
        "access_key": s3_server.access_key,
        "secret_key": "expired-secret",
        "token": "",
        "expiry_time": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat(),
    }
    credentials = RefreshableCredentials.create_from_metadata(stale, refresh, "assume-role")
    s3 = CrtS3(
        S3Location("http", s3_server.url.removeprefix("http://"), s3_server.region, path_style=True),
        BotocoreCredentials(credentials),
        part_size=8 * MIB,
        multipart_threshold=8 * MIB,
        memory_limit=256 * MIB,
    )
    summary = _engine_on(s3, fresh_bucket).run(_items(sample))
    assert summary.verified and summary.files_uploaded == len(_expected(sample))
    assert _objects(s3_client, fresh_bucket) == _expected(sample)
    # Fetched again and again while the sync ran (listings and uploads), not once at the start.
    assert len(refreshes) > summary.files_uploaded / 2
