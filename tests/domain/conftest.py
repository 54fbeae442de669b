from __future__ import annotations

import pytest
from support.domain import Domain


@pytest.fixture
def domain() -> Domain:
    """A fresh platform with the built-in default config, its clock standing at ``T0``."""
    return Domain()
