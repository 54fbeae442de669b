"""wacall: a self-hosted emulator of the WhatsApp Business Calling platform."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``wacall.running()`` (see :mod:`wacall.testing.running`), imported only when used: ``import wacall``
    stays light."""
    if name == "running":
        from .testing.running import running

        return running
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
