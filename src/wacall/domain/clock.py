"""The one clock. Every timer, limit and timestamp in wacall reads it.

``VirtualClock`` runs with wall time plus an offset that ``advance`` grows, so a test can jump
seven days ahead in a millisecond while everything keeps ticking in real time in between.
"""

from __future__ import annotations

import time
from typing import Callable


class VirtualClock:
    def __init__(self, offset: float = 0.0, source: Callable[[], float] = time.time) -> None:
        self._offset = float(offset)
        self._source = source
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._source() + self._offset

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += float(seconds)
        for listener in list(self._listeners):
            listener()
        return self.now()

    def set_offset(self, offset: float) -> None:
        self._offset = float(offset)

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)
