"""The ``hortacloud`` Airflow plugin, found through the package's ``airflow.plugins`` entry point.

Importing it registers the trigger-value formats (``hortacloud.params``) in the processes that load plugins but
never parse our DAG files, above all the api-server, which validates every trigger against the Params' schemas.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from hortacloud.params import register_formats

register_formats()


class HortacloudPlugin(AirflowPlugin):
    """Registers nothing with Airflow itself; loading it is what matters (see the module docstring)."""

    name = "hortacloud"
