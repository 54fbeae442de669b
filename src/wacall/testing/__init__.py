"""Testing your integration against wacall: the pytest plugin (:mod:`wacall.testing.plugin`, installed
with the package), ``wacall.running()`` for code outside pytest, the webhook receiver and the business
media peer. Nothing heavy is imported until it is used.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "running": "running", "Running": "running", "Subprocess": "running", "InProcess": "running",
    "Control": "running", "GraphError": "running", "wait_until": "running", "seconds": "running",
    "WebhookReceiver": "receiver", "Delivery": "receiver",
    "AiortcBusiness": "peer", "BusinessPeer": "peer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
