"""``python -m hortacloud.s3sync``: the engine as a command, for cluster jobs, the benchmark and people.

    python -m hortacloud.s3sync SRC s3://bucket/prefix/ [--file-list LIST --prefix P ...] [--results FILE]
    python -m hortacloud.s3sync verify --manifest s3://bucket/manifests/<date>/<product>.json | FILE

Credentials come from the environment (the AWS default chain: variables, profile, instance role); none is ever
taken from the command line. Every failure is one line naming what failed, and the exit status is 1; a sync
prints its summary as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.parse
from collections.abc import Sequence

from hortacloud.s3sync.control import S3Error, S3Location, default_credentials
from hortacloud.s3sync.engine import SyncEngine, SyncError, SyncItem
from hortacloud.s3sync.local import SourceError
from hortacloud.s3sync.remote import MIB, CrtS3

log = logging.getLogger("hortacloud.s3sync")


def _parse_destination(text: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "s3" or not parts.netloc:
        raise SystemExit(f"destination {text!r} is not an s3:// URL (expected s3://bucket/prefix/)")
    return parts.netloc, parts.path.lstrip("/")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _add_s3_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3 endpoint")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    parser.add_argument("--part-size-mib", type=_positive, default=8)
    parser.add_argument("--multipart-threshold-mib", type=_positive, default=8)
    parser.add_argument("--memory-budget-mib", type=_positive, default=256)
    parser.add_argument("--checksum", choices=("crc32", "none"), default="crc32")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds for a listing or HEAD")


def client_from_args(args: argparse.Namespace) -> CrtS3:
    """The client the command's options describe, with the AWS default credentials chain."""
    region = args.region or "us-east-1"
    if args.endpoint_url:
        endpoint = urllib.parse.urlsplit(args.endpoint_url)
        if endpoint.username or endpoint.password:  # never echoed: it would show the password
            raise SystemExit("--endpoint-url carries a user or password; credentials come only from the environment")
        location = S3Location(endpoint.scheme, endpoint.netloc, region, path_style=True)
    else:
        location = S3Location("https", f"s3.{region}.amazonaws.com", region, path_style=False)
    return CrtS3(
        location,
        default_credentials(args.request_timeout),
        part_size=args.part_size_mib * MIB,
        multipart_threshold=args.multipart_threshold_mib * MIB,
        memory_limit=args.memory_budget_mib * MIB,
        checksum=args.checksum,
        request_timeout=args.request_timeout,
    )


def sync_main(argv: Sequence[str]) -> int:
    """Sync one folder, one file or one file list to S3 like ``aws s3 sync``; exit 1 when anything failed."""
    parser = argparse.ArgumentParser(prog="python -m hortacloud.s3sync", description=sync_main.__doc__)
    parser.add_argument("source", help="local folder, or a file")
    parser.add_argument("destination", help="s3://bucket/prefix/ (a folder) or s3://bucket/key (a file)")
    parser.add_argument("--file-list", help="sync the files this list names (below SOURCE) instead of walking it")
    parser.add_argument(
        "--prefix",
        action="append",
        default=[],
        help="with --file-list: list only these sub-prefixes of the destination",
    )
    parser.add_argument("--results", help="write each uploaded key with its ETag here (JSON lines)")
    parser.add_argument("--workers", type=_positive, default=64)
    parser.add_argument("--progress-interval", type=float, default=30.0)
    parser.add_argument("--stall-timeout", type=float, default=300.0)
    parser.add_argument("--dry-run", action="store_true")
    _add_s3_options(parser)
    args = parser.parse_args(list(argv))
    bucket, key = _parse_destination(args.destination)
    is_file = os.path.isfile(args.source) and not args.file_list
    if not is_file and key and not key.endswith("/"):
        key += "/"
    try:
        engine = SyncEngine(
            client_from_args(args),
            bucket,
            workers=args.workers,
            memory_budget=args.memory_budget_mib * MIB,
            progress_interval=args.progress_interval,
            stall_timeout=args.stall_timeout,
        )
        item = SyncItem(args.source, key, is_file, args.file_list, tuple(args.prefix))
        summary = engine.run([item], dry_run=args.dry_run, label=args.source, results_path=args.results)
    except SyncError as err:
        log.error("%s", err)
        print(json.dumps(err.summary.to_dict()))
        return 1
    except (OSError, S3Error, SourceError, RuntimeError) as err:  # nothing was uploaded: one line, not a traceback
        log.error("Nothing synced to s3://%s/%s: %s", bucket, key, err)
        return 1
    print(json.dumps(summary.to_dict()))
    return 0


def verify_main(argv: Sequence[str]) -> int:
    """Check that S3 holds exactly what a manifest lists (keys, sizes, checksums), without downloading."""
    from hortacloud.s3sync.manifest import ManifestError, check_manifest, load_manifest

    parser = argparse.ArgumentParser(prog="python -m hortacloud.s3sync verify", description=verify_main.__doc__)
    parser.add_argument("--manifest", required=True, help="s3://bucket/manifests/<date>/<product>.json or a file")
    _add_s3_options(parser)
    args = parser.parse_args(list(argv))
    try:
        client = client_from_args(args)
        manifest = load_manifest(client, args.manifest)
        problems = check_manifest(client, manifest)
    except (OSError, S3Error, ManifestError) as err:
        log.error("Could not check %s: %s", args.manifest, err)
        return 1
    if problems:
        log.error("%s: %d problem(s):\n  %s", args.manifest, len(problems), "\n  ".join(problems[:50]))
        return 1
    digest = manifest["digest"]
    log.info(
        "%s: s3://%s holds all %s objects (%s bytes) as listed; digest %s",
        args.manifest,
        manifest["bucket"],
        f"{digest['count']:,}",
        f"{digest['bytes']:,}",
        digest["value"],
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch: ``verify ...`` checks a manifest, anything else is a sync."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["verify"]:
        return verify_main(arguments[1:])
    return sync_main(arguments)
