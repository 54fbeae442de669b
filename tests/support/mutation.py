"""Random edits of a SIP message or value, for the tests that feed parsers hostile input and compare two
parsers on it (seeded by the caller: the same cases on every run)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T", str, bytes)


def mutate(rng: random.Random, data: T, nasty: Sequence[T], unit: Callable[[random.Random], T], *,
           edits: int = 4, cut: int = 8) -> T:
    """``data`` with 1 to ``edits`` edits, each at a random place: a ``nasty`` piece inserted, 1 to ``cut``
    units cut, or one unit replaced by ``unit(rng)``."""
    for _ in range(rng.randint(1, edits)):
        i = rng.randrange(len(data) + 1)
        op = rng.randrange(3)
        if op == 0:
            data = data[:i] + rng.choice(nasty) + data[i:]
        elif op == 1:
            data = data[:i] + data[i + rng.randint(1, cut):]
        else:
            data = data[:i] + unit(rng) + data[i + 1:]
    return data


def random_octet(rng: random.Random) -> bytes:
    return bytes([rng.randrange(256)])


def random_printable(rng: random.Random) -> str:
    return chr(rng.randrange(32, 127))
