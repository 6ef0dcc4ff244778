"""Entry point shared by the bsub/bjobs/bkill/bhist executables: state folder, call log, injected faults.

``python -m devstack.lsf.cli <command> [args...]``; the scripts in devstack/lsf/bin call it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from devstack.lsf.knobs import EmulatorError, Knobs
from devstack.lsf.state import StateDir, state_dir_from_env

COMMANDS = ("bsub", "bjobs", "bkill", "bhist")
LSF_ERROR = 255  # OpenLava's exit(-1)


@dataclass
class Context:
    """What a command needs: the state folder, its streams and the time the command started."""

    state: StateDir
    command: str
    argv: list[str] = field(default_factory=list)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    now: float = field(default_factory=time.time)
    logged: bool = False

    @property
    def knobs(self) -> Knobs:
        """The state folder's knobs (knobs.json over the environment)."""
        return self.state.knobs

    def out(self, line: str = "") -> None:
        """One line on stdout."""
        self.stdout.write(line + "\n")

    def err(self, line: str) -> None:
        """One line on stderr, flushed at once (hanging commands print there while they wait)."""
        self.stderr.write(line + "\n")
        self.stderr.flush()


def hang(ctx: Context, message: str = "batch system daemon not responding ... still trying") -> int:
    """Print ``message`` every second until killed (capped by FAKE_LSF_HANG_SECONDS so nothing lingers for ever)."""
    # Logged now: a hanging command usually ends by being killed, never reaching the normal log line.
    ctx.state.log_call([ctx.command, *ctx.argv], ctx.now, None)
    ctx.logged = True
    cap = ctx.knobs.number("FAKE_LSF_HANG_SECONDS")
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        ctx.err(message)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return LSF_ERROR


def transient_fault(ctx: Context) -> int | None:
    """Apply the counted daemon-level faults before the command runs; their exit code, or None to go on."""
    if ctx.command not in ctx.knobs.words("FAKE_LSF_FAULTS_FOR"):
        return None
    state = ctx.state
    if state.consume("FAKE_LSF_HANG"):
        return hang(ctx)
    if state.consume("FAKE_LSF_DOWN"):
        for _ in range(3):
            ctx.err("LSF is down. Please wait...")
        return LSF_ERROR
    if state.consume("FAKE_LSF_NONLSF_HOST"):
        ctx.err("Request from non-LSF host rejected")
        return LSF_ERROR
    if ctx.command in {"bjobs", "bkill", "bhist"} and state.consume("FAKE_LSF_CONN_RESET"):
        ctx.err("Failed in an LSF library call: Failed in sending/receiving a message: Connection reset by peer")
        return LSF_ERROR
    lines = ctx.knobs.integer("FAKE_LSF_NOISE_STDOUT") or 0
    for _ in range(lines):
        ctx.out("Cannot connect to LSF. Please wait ...")
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one emulated LSF command; returns (and exits with) its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        sys.stderr.write(f"usage: python -m devstack.lsf.cli {{{','.join(COMMANDS)}}} [options]\n")
        return 2
    command, rest = args[0], args[1:]
    try:
        state = StateDir(state_dir_from_env())
    except EmulatorError as exc:
        sys.stderr.write(f"{command} (LSF emulator): {exc}\n")
        return LSF_ERROR
    ctx = Context(state=state, command=command, argv=rest)
    rc: int | None = None
    try:
        rc = transient_fault(ctx)
        if rc is None:
            rc = _handler(command)(ctx, rest)
    except EmulatorError as exc:
        ctx.err(f"{command} (LSF emulator): {exc}")
        rc = LSF_ERROR
    finally:
        sys.stdout.flush()
        if not ctx.logged:
            state.log_call([command, *rest], ctx.now, rc)
    return rc


def _handler(command: str) -> Callable[[Context, list[str]], int]:
    if command == "bsub":
        from devstack.lsf.bsub import run
    elif command == "bjobs":
        from devstack.lsf.bjobs import run
    elif command == "bkill":
        from devstack.lsf.bkill import run
    else:
        from devstack.lsf.bhist import run
    return run


if __name__ == "__main__":
    sys.exit(main())
