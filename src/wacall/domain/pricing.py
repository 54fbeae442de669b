"""Business-initiated call pricing: 6-second pulses, rounded up, by the callee's country calling
code and the business's monthly volume tier (Meta's calling pricing page). User-initiated calls are
free. A call that crosses into a cheaper tier is billed entirely at the cheaper rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PULSE_SECONDS = 6

# Illustrative per-minute USD rates by calling code; tiers are (from_minute, rate_per_minute).
# Replace with the rate card you want in wacall.toml under [pricing.rates].
DEFAULT_RATES: dict[str, list[tuple[int, float]]] = {
    "1": [(0, 0.0110), (50001, 0.0099), (250001, 0.0088)],
    "44": [(0, 0.0300), (50001, 0.0270), (250001, 0.0240)],
    "49": [(0, 0.0450), (50001, 0.0405), (250001, 0.0360)],
    "55": [(0, 0.0100), (50001, 0.0090), (250001, 0.0080)],
    "91": [(0, 0.0045), (50001, 0.0040), (250001, 0.0036)],
    "62": [(0, 0.0200), (50001, 0.0180), (250001, 0.0160)],
    "52": [(0, 0.0150), (50001, 0.0135), (250001, 0.0120)],
    "*": [(0, 0.0300), (50001, 0.0270), (250001, 0.0240)],
}


@dataclass
class RateCard:
    currency: str = "USD"
    rates: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: dict(DEFAULT_RATES))

    def tiers_for(self, wa_id: str) -> tuple[str, list[tuple[int, float]]]:
        """Longest calling-code prefix of the callee's number that the card knows."""
        for length in (4, 3, 2, 1):
            prefix = wa_id[:length]
            if prefix in self.rates:
                return prefix, sorted(self.rates[prefix])
        return "*", sorted(self.rates.get("*", [(0, 0.0)]))


def pulses_for(duration_seconds: int) -> int:
    """Six-second pulses for a call of ``duration_seconds`` whole seconds (``Call.duration``), a
    fractional pulse counting as one: 56 s -> 10 pulses, 6 s -> 1, 0 s -> 0."""
    if duration_seconds <= 0:
        return 0
    return math.ceil(duration_seconds / PULSE_SECONDS)


def price_call(card: RateCard, wa_id: str, duration_seconds: int, minutes_this_month: float) -> tuple[int, float]:
    """Return (pulses, cost) for a connected business-initiated call of ``Call.duration`` seconds."""
    pulses = pulses_for(duration_seconds)
    if pulses == 0:
        return 0, 0.0
    _, tiers = card.tiers_for(wa_id)
    volume_after = minutes_this_month + pulses * PULSE_SECONDS / 60.0
    rate = tiers[0][1]
    for start, tier_rate in tiers:
        if volume_after >= start:
            rate = tier_rate
    return pulses, round(pulses * rate * PULSE_SECONDS / 60.0, 6)
