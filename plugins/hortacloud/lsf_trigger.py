"""The trigger's old import path, kept for the triggers hortacloud 0.1 left in Airflow's database.

They are stored as ``hortacloud.lsf_trigger.LsfJobTrigger`` with that version's keyword arguments; they still load
and run. New triggers are serialized as ``hortacloud.lsf.trigger.LsfJobTrigger``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hortacloud.lsf import trigger
from hortacloud.lsf.hook import LsfHook
from hortacloud.lsf.settings import LsfSettings

#: hortacloud 0.1's trigger arguments -> the settings they now are.
_OLD_ARGUMENTS = {
    "profile": "profile",
    "poll_interval": "poll_interval_seconds",
    "first_poll_after": "first_poll_seconds",
    "not_found_grace": "not_found_grace_seconds",
    "max_poll_failures": "max_poll_failures",
    "command_timeout": "command_timeout_seconds",
    "output_format": "output_format",
    "bhist_files": "bhist_files",
}


class LsfJobTrigger(trigger.LsfJobTrigger):
    """``hortacloud.lsf.trigger.LsfJobTrigger`` that also takes hortacloud 0.1's keyword arguments."""

    def __init__(
        self,
        *,
        job_id: str,
        job_name: str,
        submitted_at: float,
        settings: LsfSettings | Mapping[str, Any] | None = None,
        lsf_conn_id: str | None = LsfHook.default_conn_name,
        cancel_on_kill: bool = True,
        **old: Any,
    ) -> None:
        unknown = sorted(set(old) - set(_OLD_ARGUMENTS))
        if unknown:
            raise TypeError(f"LsfJobTrigger got unexpected keyword arguments {unknown}")
        resolved = LsfSettings.of(settings)
        if old:
            resolved = resolved.replaced(**{_OLD_ARGUMENTS[key]: value for key, value in old.items()})
        super().__init__(
            job_id=job_id,
            job_name=job_name,
            submitted_at=submitted_at,
            settings=resolved,
            lsf_conn_id=lsf_conn_id,
            cancel_on_kill=cancel_on_kill,
        )
