"""Random hex strings for tags, branches, nonces and opaques, from the kernel's CSPRNG read in blocks.

A SIP flow draws about ten of them (To tags, the 407's nonce and opaque, branches); ``secrets.token_hex``
makes one ``getrandom`` system call each. :func:`token_hex` hands out the same kind of bytes (``os.urandom``,
so a digest nonce stays unpredictable, RFC 2617 section 3.2.1, and a tag has its 32 random bits and more,
RFC 3261 section 19.3) from a block read 4 KiB at a time. A forked child starts with an empty block: it
never repeats its parent's values.
"""

from __future__ import annotations

import os
import threading

__all__ = ["token_hex"]

_BLOCK = 4096


class _Pool(threading.local):
    """The current block and how much of it is used (per thread: no lock on the hot path)."""

    def __init__(self) -> None:
        self.block = b""
        self.used = 0


_pool = _Pool()


def token_hex(nbytes: int) -> str:
    """``2 * nbytes`` hex digits of fresh kernel randomness, like ``secrets.token_hex(nbytes)``."""
    if nbytes > _BLOCK:
        return os.urandom(nbytes).hex()
    pool = _pool
    used = pool.used
    end = used + nbytes
    if end > len(pool.block):
        pool.block, used, end = os.urandom(_BLOCK), 0, nbytes
    pool.used = end
    return pool.block[used:end].hex()


def _forget_block() -> None:
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_forget_block)
