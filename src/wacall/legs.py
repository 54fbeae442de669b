"""The one owner of a new call's media leg, from allocation to release.

A new call (Graph ``connect``, a user calling from the control API, a business's SIP INVITE) needs
Meta's side of its media before the domain can decide anything: Meta's SDP names the relay's address
and credentials. :meth:`LegOwner.place` allocates the leg under a fresh call id, applies the domain
operation with it, and releases the leg when the operation refuses the call (or fails in any way).
Once the call exists, its leg is released by the domain's ``ReleaseMedia`` event when the call ends.
Every entry point goes through here; none allocates or releases a new call's leg itself.

The owner is handed the media plane (anything with ``allocate(call_id)`` and ``release(call_id)``,
``MediaEngine`` or ``MediaWorkers``) and the server's ``apply`` (the one write path), so it depends on
neither the server nor a wire layer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .domain.errors import MediaUnavailable
from .domain.sdp import LocalMedia
from .domain.state import new_id

log = logging.getLogger("wacall")
T = TypeVar("T")


class MediaPlane(Protocol):
    def allocate(self, call_id: str) -> Awaitable[LocalMedia]: ...
    def release(self, call_id: str) -> None: ...


class LegOwner:
    def __init__(self, media: MediaPlane, apply: Callable[[Callable[[], T]], T]) -> None:
        self.media = media
        self.apply = apply
        self._exhausted = False            # media capacity ran out: said once per episode, not per call

    async def place(self, operation: Callable[[str, LocalMedia], T], *, group: bool = False) -> T:
        """Allocate a leg under a new call id, apply ``operation(call_id, leg)`` (the domain creating the
        call), and release the leg if it raises: a refused call keeps no media. Raises
        :class:`MediaUnavailable` before anything is applied when no leg can be had (a port, a worker process
        or descriptors ran out), which each wire layer answers with Meta's transient error. ``group``: the
        caller acknowledges the new call only through the event's consumers (the SIP gateway's 180), so its
        commit may join the loop turn's (``Wacall.apply(group=True)``)."""
        call_id = new_id("wacid")
        try:                                  # (here, not in a coroutine of its own: one fewer per call)
            leg = await self.media.allocate(call_id)
        except (OSError, RuntimeError) as exc:
            if not self._exhausted:
                self._exhausted = True
                log.error("media capacity exhausted (%s: %s); new calls get Meta's transient error until it "
                          "recovers", type(exc).__name__, exc)
            raise MediaUnavailable(str(exc)) from None
        if self._exhausted:
            self._exhausted = False
            log.warning("media capacity recovered")
        try:
            if group:
                return self.apply(lambda: operation(call_id, leg), group=True)
            return self.apply(lambda: operation(call_id, leg))
        except BaseException:
            self.media.release(call_id)
            raise


__all__ = ["LegOwner", "MediaPlane"]
