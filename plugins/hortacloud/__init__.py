"""hortacloud: publish Janelia MouseLight data to the public S3 bucket with Airflow."""

from __future__ import annotations

__version__ = "0.1.0"
