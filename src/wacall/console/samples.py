"""Media quality over time for the console's plots: once a second, while someone follows the live stream,
the media view of each live call (packets, loss, jitter, level) is kept as a sample, in memory only (the
last ``KEEP`` samples per call, for the last ``CALLS`` calls). Headless runs (tests, benches) sample
nothing. ``GET /_wacall/calls/{call_id}/media/samples`` reads them."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from typing import Awaitable, Callable, Iterable

log = logging.getLogger("wacall.console")
PERIOD = 1.0              # seconds (wall time) between samples
KEEP = 900                # samples per call (15 minutes at 1/s)
CALLS = 64                # calls whose samples are kept (the most recently sampled)
MAX_LIVE = 50             # at most this many live calls are sampled each round


class MediaSamples:
    def __init__(self, live_calls: Callable[[], Iterable[str]], media_view: Callable[[str], Awaitable[dict | None]],
                 now: Callable[[], float], wanted: Callable[[], bool], period: float = PERIOD) -> None:
        self.live_calls, self.media_view, self.now, self.wanted = live_calls, media_view, now, wanted
        self.period = period
        self.samples: OrderedDict[str, deque] = OrderedDict()
        self._task: asyncio.Task | None = None

    def of(self, call_id: str) -> list[dict]:
        return list(self.samples.get(call_id, ()))

    async def sample(self) -> None:
        """One round: a sample of every live call (up to ``MAX_LIVE``)."""
        for call_id in list(self.live_calls())[:MAX_LIVE]:
            view = await self.media_view(call_id)
            if not view:
                continue
            received, sent = view.get("received") or {}, view.get("sent") or {}
            kept = self.samples.get(call_id)
            if kept is None:
                kept = self.samples[call_id] = deque(maxlen=KEEP)
                while len(self.samples) > CALLS:
                    self.samples.popitem(last=False)
            kept.append({"t": self.now(), "rx_packets": received.get("packets", 0), "rx_lost": received.get("lost", 0),
                         "loss": received.get("loss", 0.0), "jitter_ms": received.get("jitter_ms", 0.0),
                         "level_dbfs": received.get("level_dbfs"), "tx_packets": sent.get("packets", 0)})

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            if self.wanted():
                try:
                    await self.sample()
                except Exception:      # a view that cannot be read: the next round tries again
                    log.exception("media sampling failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
