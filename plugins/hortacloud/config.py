"""Site configuration: every Janelia path, bucket, project and schedule, read from TOML.

The defaults are ``include/hortacloud.toml``. ``HORTACLOUD_CONFIG`` names a second TOML file laid over them key
by key, so a test or a demo only states what differs. Invalid configuration fails at load with the key named.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hortacloud.lsf.settings import LsfSettings

ENV_VAR = "HORTACLOUD_CONFIG"
_DEFAULTS_NAME = "hortacloud.toml"


class ConfigError(ValueError):
    """The site configuration cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Config(_Section):
    """``[s3]``: the bucket, and the Airflow connection every read and write goes through."""

    conn_id: str = Field(min_length=1)
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    browse_url: str = ""


class ImagesConfig(_Section):
    """``[images]``: where a sample's images are found, what proves their naming current, and how they are sharded."""

    bases: tuple[str, ...] = Field(min_length=1)
    files: tuple[str, ...]
    root_block: str = Field(min_length=1)
    mechanism: Literal["worker", "lsf"]
    shards: int = Field(ge=0, le=1024)
    target_shard_gib: float = Field(gt=0)
    max_shards: int = Field(ge=1, le=1024)
    shard_lists_dir: str
    shard_command: str = Field(min_length=1)
    queue: str
    pool: str = Field(min_length=1)
    sample_dates_file: str = ""


class SyncConfig(_Section):
    """``[sync]``: the images sync engine's concurrency, memory, multipart sizes, checksum, timeouts and pace."""

    workers: int = Field(ge=1, le=1024)
    memory_budget_mib: int = Field(ge=256)
    multipart_threshold_mib: int = Field(ge=5)
    part_size_mib: int = Field(ge=5, le=5120)
    checksum: Literal["crc32", "none"]
    request_timeout_seconds: float = Field(gt=0)
    stall_timeout_seconds: float = Field(gt=0)
    progress_interval_seconds: float = Field(gt=0)


class ManifestsConfig(_Section):
    """``[manifests]``: whether each publish writes its manifest, and under which key."""

    enabled: bool
    key: str = Field(min_length=1)


class ClusterConfig(_Section):
    """``[cluster]``: the source roots of the cluster products (registration, segmentation, tracings, carveouts)."""

    registration: str
    segmentation: str
    finished_neurons: str
    tracing_complete: str
    carveouts: tuple[str, ...]


class LsfConfig(LsfSettings):
    """``[lsf]``: the tuning every LSF command and poll uses (``LsfSettings``) and the site's job values."""

    conn_id: str = Field(min_length=1)
    project: str
    slots: int = Field(ge=1)
    queue: str
    runlimit_minutes: int = Field(ge=0)
    output_dir: str
    transfer_command: str = Field(min_length=1)
    aws_profile: str
    pool: str = Field(min_length=1)
    memory_mib: int = Field(ge=0)
    memory_growth: float = Field(ge=1)
    execution_timeout_hours: float = Field(ge=0)

    def job_kwargs(self) -> dict[str, Any]:
        """The ``LsfTransferOperator`` kwargs every job of the site shares (connection, resources, output file)."""
        return {
            "lsf_conn_id": self.conn_id,
            "slots": self.slots,
            "project": self.project,
            "lsf_queue": self.queue,
            "runlimit_minutes": self.runlimit_minutes,
            "memory_mib": self.memory_mib,
            "memory_growth": self.memory_growth,
            "output_file": os.path.join(self.output_dir, "%J.out") if self.output_dir else "",
        }

    @property
    def execution_timeout(self) -> dt.timedelta | None:
        """``execution_timeout_hours`` as the transfers' ``execution_timeout`` (None: no limit)."""
        return dt.timedelta(hours=self.execution_timeout_hours) if self.execution_timeout_hours else None

    @property
    def settings(self) -> LsfSettings:
        """The tuning alone, as the hook, the operator and the trigger take it."""
        return LsfSettings.model_validate(self.model_dump(include=set(LsfSettings.model_fields)))


NeuronLocation = Literal["Finished_Neurons", "tracing_complete"]
NEURON_LOCATIONS: tuple[NeuronLocation, ...] = ("Finished_Neurons", "tracing_complete")


class NeuronBrowserConfig(_Section):
    """``[neuronbrowser]``: the sample-api connection, the nightly schedule and the metadata guard's limits."""

    conn_id: str = Field(min_length=1)
    schedule: str = Field(min_length=1)
    locations: tuple[NeuronLocation, ...] = Field(default=NEURON_LOCATIONS, min_length=1)
    neuron_prefix: str = "G-"
    min_share: float = Field(default=0.9, ge=0, le=1)
    connect_timeout_seconds: float = Field(default=10, gt=0)
    read_timeout_seconds: float = Field(default=120, gt=0)
    retries: int = Field(default=3, ge=0, le=10)
    backoff_seconds: float = Field(default=2, ge=0)
    neurons_json_requires: tuple[str, ...] = ("transform.txt", "ktx/block_8_xy_.ktx", "default.0.tif")


class AirflowApiConfig(_Section):
    """``[airflow_api]``: the connection through which tasks write their run's note."""

    conn_id: str = Field(min_length=1)


class SiteConfig(_Section):
    """The whole site configuration."""

    timezone: str
    airflow_api: AirflowApiConfig
    manifests: ManifestsConfig
    s3: S3Config
    images: ImagesConfig
    sync: SyncConfig
    cluster: ClusterConfig
    lsf: LsfConfig
    neuronbrowser: NeuronBrowserConfig

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {value!r} (expected an IANA name such as America/New_York)") from err
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The site's time zone, in which sample dates are read and the nightly schedule runs."""
        return ZoneInfo(self.timezone)


def defaults_path() -> Path:
    """The TOML file with today's values: ``include/hortacloud.toml`` beside ``plugins/`` or in AIRFLOW_HOME."""
    candidates = [Path(__file__).resolve().parents[2] / "include" / _DEFAULTS_NAME]
    if airflow_home := os.environ.get("AIRFLOW_HOME"):
        candidates.append(Path(airflow_home) / "include" / _DEFAULTS_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"hortacloud defaults not found; looked for {', '.join(map(str, candidates))}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"hortacloud configuration file {path} does not exist (from ${ENV_VAR})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"hortacloud configuration file {path} is not valid TOML: {err}") from err


def _overlay(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_config(data: dict[str, Any], source: str) -> SiteConfig:
    """Validate a configuration mapping; the error names ``source`` and each failing key."""
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            key = ".".join(str(part) for part in item["loc"])
            got = "" if item["type"] == "missing" else f" (got {item.get('input')!r})"
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"key '{key}': {message}{got}")
        raise ConfigError(f"invalid hortacloud configuration in {source}: " + "; ".join(problems)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> SiteConfig:
    """Load the defaults, lay ``path`` (or $HORTACLOUD_CONFIG) over them and validate the result."""
    override_path = path if path is not None else os.environ.get(ENV_VAR) or None
    return _load(str(override_path) if override_path else None)


@cache
def _load(override_path: str | None) -> SiteConfig:
    base_path = defaults_path()
    data = _read_toml(base_path)
    source = str(base_path)
    if override_path:
        data = _overlay(data, _read_toml(Path(override_path)))
        source = f"{override_path} (over {base_path})"
    return parse_config(data, source)
