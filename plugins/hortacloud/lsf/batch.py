"""One ``bjobs`` call per tick for every LSF job a triggerer follows through the same connection.

LSF admins count calls, not jobs: a sample's dozen transfers polled one by one cost a dozen bjobs calls a minute.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable

from hortacloud.lsf.hook import LsfHook
from hortacloud.lsf.parsers import BjobsResult


class BjobsBatch:
    """One ``bjobs`` call for every LSF trigger of this triggerer that polls through the same connection.

    LSF admins count calls, not jobs: a sample's dozen transfers polled one by one cost a dozen bjobs calls a
    minute. Triggers wake on the same wall-clock ticks (multiples of their poll interval); the first request of a
    tick opens a short window, and every job id asked for within it goes into one ``bjobs`` call whose answer, or
    failure, all of them share (as Nextflow's and Toil's LSF executors poll; docs/lsf-behaviour.md, part b). A
    caller that is cancelled while it waits leaves the call to the others.

    :param hook: a prepared ``LsfHook``; the batch calls ``astatuses`` on it.
    :param window: seconds the first request of a tick waits for the others.
    """

    def __init__(self, hook: LsfHook, window: float) -> None:
        self.hook = hook
        self.window = window
        self.calls = 0
        self._waiting: dict[str, list[asyncio.Future[BjobsResult]]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def status(self, job_id: str) -> BjobsResult:
        """The answer of the next bjobs call, which will include ``job_id``."""
        future: asyncio.Future[BjobsResult] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if self._flush is None:
            self._flush = asyncio.create_task(self._call_after_window())
        return await future

    async def _call_after_window(self) -> None:
        await asyncio.sleep(self.window)
        waiting, self._waiting, self._flush = self._waiting, {}, None
        futures = [future for group in waiting.values() for future in group if not future.done()]
        if not futures:
            return
        self.calls += 1
        try:
            result = await self.hook.astatuses(sorted(waiting, key=int))
        except Exception as err:
            for future in futures:
                if not future.done():
                    future.set_exception(err)
        else:
            for future in futures:
                if not future.done():
                    future.set_result(result)


# One set of batches per event loop (the triggerer runs one; tests run many in turn).
_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, BjobsBatch]] = weakref.WeakKeyDictionary()


def bjobs_batch(key: Hashable, hook: LsfHook, window: float) -> BjobsBatch:
    """The batch of this event loop for ``key`` (connection, profile, format, timeout, interval), made on first use."""
    batches = _BATCHES.setdefault(asyncio.get_running_loop(), {})
    if key not in batches:
        batches[key] = BjobsBatch(hook, window)
    return batches[key]


def until_next_tick(interval: float, now: float) -> float:
    """Seconds to the next wall-clock multiple of ``interval``, so triggers with one interval poll together."""
    return interval - now % interval
