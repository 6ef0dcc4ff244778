"""How hortacloud talks to LSF: one settings object, carried from the site configuration to hook, operator and trigger.

Every value has one default, in the packaged ``include/hortacloud.toml`` (``[lsf]``); the site configuration is
validated into :class:`LsfSettings` there (``hortacloud.config.LsfConfig`` adds the site's job values to it). The
values that describe the cluster rather than one job (:data:`CONNECTION_KEYS`) may also come from the LSF
connection's extra, as the ssh provider's hook reads its own options there; the extra wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: Settings an LSF connection's extra may set (they belong to the cluster, not to one job).
CONNECTION_KEYS = ("profile", "output_format", "command_timeout_seconds", "bhist_files")


class LsfSettings(BaseModel):
    """The tuning of every LSF command and poll; see ``[lsf]`` in ``include/hortacloud.toml`` for each value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    output_format: Literal["json", "text"]
    command_timeout_seconds: float = Field(gt=0)
    retries: int = Field(ge=0, le=20)
    retry_delay_seconds: float = Field(ge=0)
    bhist_files: int = Field(ge=0)
    poll_interval_seconds: float = Field(gt=0)
    first_poll_seconds: float = Field(ge=0)
    not_found_grace_seconds: float = Field(ge=0)
    max_poll_failures: int = Field(ge=1)
    kill_timeout_seconds: float = Field(gt=0)

    @classmethod
    def site(cls) -> LsfSettings:
        """The site configuration's settings (``HORTACLOUD_CONFIG`` over the packaged defaults)."""
        from hortacloud.config import load_config

        return load_config().lsf.settings

    @classmethod
    def of(cls, value: LsfSettings | Mapping[str, Any] | None) -> LsfSettings:
        """``value`` as settings: itself, a mapping (a trigger's serialized kwargs), or None for the site's.

        A mapping that lacks a setting (a trigger stored by an older hortacloud) gets the site's value for it.
        """
        if value is None:
            return cls.site()
        if isinstance(value, LsfSettings):
            return value
        given = dict(value)
        missing = set(cls.model_fields) - set(given)
        if missing:
            site = cls.site().model_dump()
            given |= {key: site[key] for key in missing}
        return cls.model_validate(given)

    def replaced(self, **changes: Any) -> LsfSettings:
        """A copy with ``changes`` applied and validated (a test's shorter interval, a connection's profile)."""
        return LsfSettings.model_validate(self.model_dump() | changes)

    def with_connection_extra(self, extra: Mapping[str, Any], conn_id: str) -> LsfSettings:
        """The settings with the connection's extra laid over the :data:`CONNECTION_KEYS` it names."""
        changes = {key: extra[key] for key in CONNECTION_KEYS if key in extra and extra[key] not in (None, "")}
        if not changes:
            return self
        try:
            return self.replaced(**changes)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"LSF connection {conn_id!r}: invalid extra ({problems})") from None
