"""An IBM LSF emulator (bsub, bjobs, bkill, bhist) for tests and the demo: LSF cannot be installed here.

The executables in ``devstack/lsf/bin`` behave like the real commands as described in
docs/lsf-behaviour.md (strings, streams, exit codes), keep their state in ``$FAKE_LSF_DIR`` and are
tuned with ``FAKE_LSF_*`` knobs (README.md in this folder). ``Emulator`` is the helper tests use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devstack.lsf.helper import BIN_DIR, Emulator

__all__ = ["BIN_DIR", "Emulator"]


def __getattr__(name: str) -> Any:
    # Lazy: every emulated command imports this package, and each one should start fast.
    if name in __all__:
        from devstack.lsf import helper

        return getattr(helper, name)
    raise AttributeError(f"module 'devstack.lsf' has no attribute {name!r}")
