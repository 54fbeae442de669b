"""``[webhooks]`` of the config: how the outbox is delivered (docs/configuration.md, docs/fidelity.md).

Here, beside the dispatcher that reads it, so that the webhooks layer never imports the config loader
(``wacall.config`` builds it and re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..domain import fields
from .faults import FaultPlan


@dataclass
class WebhookDelivery:
    """``[webhooks]``: how the outbox is delivered (docs/configuration.md, docs/fidelity.md)."""
    timeout_seconds: float = 20.0              # Meta's FAQ: an attempt times out after about 20 s
    retry_base_seconds: float = 1.0            # the first retry; each later interval grows by retry_factor...
    retry_factor: float = 2.0
    retry_max_seconds: float = 86400.0         # ...up to this
    give_up_after_seconds: float = 7 * 86400.0  # Meta: retried "for up to 7 days"
    verify_timeout_seconds: float = 5.0
    concurrent_per_url: int = 32               # attempts in flight at once per callback URL (bench/graph_load.py)
    faults: dict = field(default_factory=dict)  # [webhooks.faults]: wacall.webhooks.faults

    def __post_init__(self) -> None:
        for name in ("timeout_seconds", "retry_base_seconds", "retry_max_seconds", "give_up_after_seconds",
                     "verify_timeout_seconds"):
            value = getattr(self, name)
            if not fields.is_number(value) or not value > 0:
                raise ValueError(f"webhooks: {name} must be a positive number")
        if not fields.is_number(self.retry_factor) or not 1 <= self.retry_factor <= 10:
            raise ValueError("webhooks: retry_factor must be a number from 1 to 10")
        if not fields.is_number(self.concurrent_per_url, integer=True) or not 1 <= self.concurrent_per_url <= 1000:
            raise ValueError("webhooks: concurrent_per_url must be an integer from 1 to 1000")
        try:
            FaultPlan.parse(self.faults)       # refuse a bad [webhooks.faults] at load time
        except ValueError as exc:
            raise ValueError(f"webhooks.faults: {exc}") from None
