"""Webhook fault injection: seeded rules that duplicate, delay, reorder or fail deliveries, so a business
can prove its endpoint tolerates what Meta documents (duplicates, no ordering, retries).

A plan is ``{"seed": 7, "ordered": false, "rules": [...]}``; each rule picks deliveries by ``field``
(``calls``, ``messages``, ``account_settings_update``), ``event`` (``connect``, ``terminate``, a call
status such as ``RINGING``, a message status such as ``delivered``, ``text``, ``call_permission_reply``,
``account_settings_update``) and ``app_id`` (all optional), and hits each with ``probability`` (default
1), at most ``count`` times (default: no limit). Kinds:

- ``duplicate``: ``copies`` extra deliveries of the same bytes (default 1);
- ``delay``: the first attempt waits ``seconds`` on the virtual clock;
- ``reorder``: the first attempt waits a seeded random time in ``[0, window]`` seconds, so events
  within the window arrive in a different order than they happened;
- ``fail``: the first ``attempts`` attempts (default 1) fail without reaching the receiver;
- ``timeout``: the first ``attempts`` attempts reach the receiver, whose answer is then treated as a
  timeout (Meta's FAQ: the server thinks it handled the webhook, Meta retries it: a duplicate).

``ordered: true`` is a strictness mode Meta does not have: one delivery at a time per URL, oldest first.
Decisions are taken when a webhook is queued, from one ``random.Random(seed)``, so the same seed and the
same sequence of events give the same faults. The decision is stored with the outbox row (its
``fault``), so it survives a restart. No I/O here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ..domain.fields import is_number

KINDS = ("duplicate", "delay", "reorder", "fail", "timeout")
FIELDS = ("calls", "messages", "account_settings_update")
_SELECTORS = {"kind", "field", "event", "app_id", "probability", "count"}
_PARAMS = {"duplicate": {"copies"}, "delay": {"seconds"}, "reorder": {"window"}, "fail": {"attempts"},
           "timeout": {"attempts"}}
MAX_SECONDS = 7 * 86400.0


def _number(rule: dict, key: str, low: float, high: float, default: float, integer: bool = False) -> Any:
    value = rule.get(key, default)
    if not is_number(value, integer=integer) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{key} must be {kind} between {low:g} and {high:g}")
    return value


@dataclass
class Rule:
    kind: str
    field: str | None = None
    event: str | None = None
    app_id: str | None = None
    probability: float = 1.0
    count: int | None = None
    copies: int = 1
    seconds: float = 0.0
    window: float = 0.0
    attempts: int = 1
    hits: int = 0

    @classmethod
    def parse(cls, raw: Any) -> "Rule":
        if not isinstance(raw, dict):
            raise ValueError("each rule must be an object")
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        unknown = set(raw) - _SELECTORS - _PARAMS[kind]
        if unknown:
            raise ValueError(f"a {kind} rule takes {', '.join(sorted(_SELECTORS | _PARAMS[kind]))} "
                             f"(not {', '.join(sorted(unknown))})")
        if raw.get("field") is not None and raw["field"] not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)}")
        for key in ("event", "app_id"):
            if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key] or len(raw[key]) > 64):
                raise ValueError(f"{key} must be a non-empty string")
        count = raw.get("count")
        return cls(kind=kind, field=raw.get("field"), event=raw.get("event"), app_id=raw.get("app_id"),
                   probability=float(_number(raw, "probability", 0, 1, 1.0)),
                   count=None if count is None else _number(raw, "count", 0, 10**9, 0, integer=True),
                   copies=_number(raw, "copies", 1, 10, 1, integer=True),
                   seconds=float(_number(raw, "seconds", 0, MAX_SECONDS, 0.0)),
                   window=float(_number(raw, "window", 0, MAX_SECONDS, 0.0)),
                   attempts=_number(raw, "attempts", 1, 100, 1, integer=True))

    def matches(self, field_: str, event: str, app_id: str) -> bool:
        return ((self.field is None or self.field == field_)
                and (self.event is None or self.event.lower() == event.lower())
                and (self.app_id is None or self.app_id == app_id)
                and (self.count is None or self.hits < self.count))

    def view(self) -> dict:
        out: dict = {"kind": self.kind}
        for key in ("field", "event", "app_id", "count"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["probability"] = self.probability
        out.update({key: getattr(self, key) for key in sorted(_PARAMS[self.kind])})
        out["hits"] = self.hits
        return out


@dataclass
class FaultPlan:
    seed: int
    ordered: bool = False
    rules: list[Rule] = field(default_factory=list)
    rng: random.Random = field(init=False, repr=False)      # seeded from ``seed``

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, raw: Any) -> "FaultPlan":
        """Validate a plan (control API body or ``[webhooks.faults]``); ValueError says what is wrong."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError("webhook faults must be an object with seed, ordered and rules")
        unknown = set(raw) - {"seed", "ordered", "rules"}
        if unknown:
            raise ValueError(f"webhook faults take seed, ordered and rules (not {', '.join(sorted(unknown))})")
        seed = raw.get("seed")
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)      # shown by view(), so a run can be replayed
        elif not is_number(seed, integer=True) or not 0 <= seed < 2**63:
            raise ValueError("seed must be a non-negative integer")
        ordered = raw.get("ordered", False)
        if not isinstance(ordered, bool):
            raise ValueError("ordered must be true or false")
        rules = raw.get("rules", [])
        if not isinstance(rules, list) or len(rules) > 100:
            raise ValueError("rules must be a list of at most 100 rules")
        return cls(seed=seed, ordered=ordered, rules=[Rule.parse(r) for r in rules])

    def view(self) -> dict:
        return {"seed": self.seed, "ordered": self.ordered, "rules": [r.view() for r in self.rules]}

    def decide(self, field_: str, event: str, app_id: str) -> list[dict]:
        """The faults for one delivery (one event to one app), each a small dict stored with the row."""
        out = []
        for index, rule in enumerate(self.rules):
            if not rule.matches(field_, event, app_id):
                continue
            if rule.probability < 1 and self.rng.random() >= rule.probability:
                continue
            rule.hits += 1
            fault: dict = {"kind": rule.kind, "rule": index}
            if rule.kind == "duplicate":
                fault["copies"] = rule.copies
            elif rule.kind == "delay":
                fault["seconds"] = rule.seconds
            elif rule.kind == "reorder":
                fault["seconds"] = round(self.rng.uniform(0, rule.window), 3)
            else:
                fault["attempts"] = rule.attempts
            out.append(fault)
        return out


def hold(faults: list[dict]) -> float:
    """How long the first attempt waits (delay and reorder add up)."""
    return sum(f.get("seconds", 0.0) for f in faults if f["kind"] in ("delay", "reorder"))


def injected(faults: list[dict] | None, attempts_made: int) -> str | None:
    """``"fail"`` or ``"timeout"`` when the next attempt (after ``attempts_made``) is one a fault takes."""
    if not faults:
        return None
    failing = sum(f["attempts"] for f in faults if f["kind"] == "fail")
    if attempts_made < failing:
        return "fail"
    if attempts_made < failing + sum(f["attempts"] for f in faults if f["kind"] == "timeout"):
        return "timeout"
    return None
