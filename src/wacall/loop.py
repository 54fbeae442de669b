"""The event loop every wacall process runs on."""

from __future__ import annotations

from typing import Callable


def loop_factory() -> Callable | None:
    """uvloop when installed: the media plane moves tens of thousands of UDP datagrams a second."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
