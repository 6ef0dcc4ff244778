"""``python -m hortacloud.s3sync``: see ``hortacloud.s3sync.cli``."""

from __future__ import annotations

from hortacloud.s3sync.cli import main

raise SystemExit(main())
