"""The one clock. Every timer, limit and timestamp in wacall reads it.

``VirtualClock`` runs with wall time plus an offset that ``advance`` grows, so a test can jump
seven days ahead in a millisecond while everything keeps ticking in real time in between.

Read it by calling ``clock.now()`` each time; never keep ``clock.now`` itself (unmoved, it is ``time.time``:
a kept reference would miss a later ``advance``).
"""

from __future__ import annotations

import time
from typing import Callable


class VirtualClock:
    def __init__(self, offset: float = 0.0, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self._listeners: list[Callable[[], None]] = []
        self.set_offset(offset)

    def now(self) -> float:
        return self._source() + self._offset

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.set_offset(self._offset + float(seconds))
        for listener in list(self._listeners):
            listener()
        return self.now()

    def set_offset(self, offset: float) -> None:
        self._offset = float(offset)
        # Not moved (a server that was never advanced: the usual case), wall time is the reading: ``now`` is then
        # time.time itself, read without this method's frame (~30 readings per SIP call); time.time + 0.0 is the
        # same float. Any other source keeps the method (a test's source may return an int), and so does a subclass
        # with a now() of its own.
        if self._offset == 0.0 and self._source is time.time and type(self).now is VirtualClock.now:
            self.now = time.time          # type: ignore[method-assign]
        elif self.now is time.time:       # (moved: the method again)
            del self.now

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)
