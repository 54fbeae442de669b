"""The rule classes declare what they need from each other (``typing.Protocol`` attributes) instead of
calling through ``Platform``'s inheritance order: ``Platform`` provides every declared method with the
declared signature, a rule class runs with stand-in collaborators, and no rule module imports another
(``sip`` extends ``calls``: it is the call rules spoken over SIP).
"""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest
from support.domain import ALICE, T0, Domain, configured
from support.sdp_samples import business_offer

from wacall.domain import calls, messaging, numbers, permissions
from wacall.domain.calls import CallPermissions, CallRules, MessageTimers
from wacall.domain.clock import VirtualClock
from wacall.domain.errors import GraphError
from wacall.domain.events import (
    CallConnect,
    CallStatus,
    CallTerminate,
    ReleaseMedia,
)
from wacall.domain.limits import Limits
from wacall.domain.messaging import MessagePermissions, MessageRules
from wacall.domain.numbers import NumberRules
from wacall.domain.permissions import PermissionRules
from wacall.domain.platform import Platform
from wacall.domain.state import PlatformState

NEEDS = [(CallRules, "permission_rules", CallPermissions), (CallRules, "message_rules", MessageTimers),
         (MessageRules, "permission_rules", MessagePermissions)]


def protocol_methods(protocol: type) -> list[str]:
    return sorted(name for name, value in vars(protocol).items()
                  if inspect.isfunction(value) and not name.startswith("__"))


@pytest.mark.parametrize("rules, attribute, protocol", NEEDS, ids=[f"{r.__name__}.{a}" for r, a, _ in NEEDS])
def test_each_rule_class_declares_its_collaborators_and_platform_provides_them(rules, attribute, protocol):
    hints = typing.get_type_hints(rules, vars(calls) | vars(messaging))
    assert hints[attribute] is protocol
    domain = Domain()
    provider = getattr(domain.platform, attribute)
    assert provider is domain.platform           # one object plays every rule class
    assert protocol_methods(protocol)
    for name in protocol_methods(protocol):
        declared = inspect.signature(getattr(protocol, name))
        provided = inspect.signature(getattr(type(provider), name))
        assert provided == declared, f"{type(provider).__name__}.{name}{provided} is not {declared}"


def test_the_declared_methods_are_all_that_crosses_between_rule_classes():
    """Every ``self.<method>`` a rule module calls is its own, the shared state's, or a declared one."""
    state = set(dir(PlatformState)) | set(vars(PlatformState(VirtualClock(), Limits())))
    for module, rules in ((calls, CallRules), (messaging, MessageRules), (permissions, PermissionRules),
                          (numbers, NumberRules)):
        own = {name for name in vars(rules)} | set(getattr(rules, "__annotations__", {}))
        tree = ast.parse(Path(module.__file__).read_text())
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name) and node.value.id == "self"}
        assert used - own - state == set(), module.__name__


def test_rule_modules_do_not_import_each_other():
    rule_modules = {"calls", "permissions", "messaging", "numbers", "sip"}
    allowed = {"sip": {"calls"}}
    for name in rule_modules:
        tree = ast.parse((Path(calls.__file__).parent / f"{name}.py").read_text())
        imported = {node.module.lstrip(".") for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        assert imported & rule_modules <= allowed.get(name, set()), name


class StandInPermissions:
    """Permission rules reduced to what CallRules declares it needs, recording what it is asked."""

    def __init__(self) -> None:
        self.status = "temporary"
        self.asked: list[tuple] = []

    def permission_status(self, pair) -> str:
        self.asked.append(("status", pair.wa_id))
        return self.status

    def revoke_permission(self, pair, *, source: str, context_id: str | None) -> None:
        self.asked.append(("revoke", pair.wa_id, source, context_id))
        self.status = "no_permission"

    def grant_callback_permission(self, pair, call) -> None:
        self.asked.append(("callback", pair.wa_id, call.id))


class NoMessages:
    def message_due(self, message) -> None:
        raise AssertionError("no message timer in this test")


def test_call_rules_run_alone_with_stand_in_collaborators():
    seeded = Domain()
    rules = CallRules(seeded.clock, seeded.platform.limits, seeded.platform.rate_card)
    for record in [seeded.waba, seeded.number, seeded.app, seeded.user(ALICE)]:
        rules.put(record)
    permissions = StandInPermissions()
    rules.permission_rules, rules.message_rules = permissions, NoMessages()
    rules.users[ALICE].incoming = "ignore"
    body = {"messaging_product": "whatsapp", "to": ALICE, "session": {"sdp_type": "offer", "sdp": business_offer()}}
    for n in range(4):
        call_id = f"wacid.alone{n}"
        rules.call_action(seeded.app, seeded.number, body, new_call_id=call_id, leg=seeded.leg(call_id))
        seeded.clock.advance(60)
        rules.tick()
    events, _ = rules.drain()
    assert events[:5] == [CallConnect("wacid.alone0"), CallStatus("wacid.alone0", "RINGING", T0),
                          configured("wacid.alone0"), CallTerminate("wacid.alone0"), ReleaseMedia("wacid.alone0")]
    assert permissions.asked == [("status", ALICE)] * 5 + [("revoke", ALICE, "automatic", None)]
    with pytest.raises(GraphError) as refused:
        rules.call_action(seeded.app, seeded.number, body, new_call_id="wacid.alone4", leg=seeded.leg("wacid.alone4"))
    assert refused.value.code == 138006
    assert not isinstance(rules, Platform)


def test_a_timeline_entry_is_built_as_ever_with_and_without_none_values(domain):
    """``note`` copies the values at once when none is None and goes value by value otherwise: either way the
    entry is ``t``, ``kind``, then every value that is not None, in the order given."""
    import itertools
    from wacall.domain.state import round_ms

    domain.grant(ALICE)
    call = domain.connect(ALICE)
    domain.platform.drain_notes()
    values = [None, 0, "", False, "x", 1.5, [], {"a": None}]
    cases = []
    for n in range(4):
        for combo in itertools.product(values, repeat=n):
            data = {f"k{i}": value for i, value in enumerate(combo)}
            domain.platform.note(call, "media", **data)
            cases.append(data)
    entries = [entry for _, entry in domain.platform.drain_notes()]
    t = round_ms(domain.now())
    assert entries == [{"t": t, "kind": "media", **{k: v for k, v in data.items() if v is not None}}
                       for data in cases]
    assert all(list(entry) == ["t", "kind", *(k for k, v in data.items() if v is not None)]
               for entry, data in zip(entries, cases))


def test_a_timeline_entrys_millisecond_interval_holds_only_readings_that_round_to_its_t():
    """``millisecond`` (what ``note`` compares a clock reading with before rounding it again): every reading
    inside the interval rounds to the same t (round(x, 3)) (the interval is a little narrower than the
    millisecond: a reading at its edge may be outside, and is then rounded again); outside round_ms's own
    range the interval is empty."""
    import math
    import random
    import time

    from wacall.domain.state import millisecond

    rng = random.Random(24)
    now = time.time()
    readings = [now + rng.uniform(-1e6, 1e6) for _ in range(20_000)] + [rng.uniform(1e-3, 4e9) for _ in range(20_000)]
    for x in readings:
        t, low, high = millisecond(x)
        assert t == round(x, 3) and low < high, x
        for inside in (math.nextafter(low, math.inf), math.nextafter(high, 0.0), rng.uniform(low, high)):
            if low < inside < high:
                assert round(inside, 3) == t, (x, inside)
    for x in (0.0, -1.0005, 5e9, math.inf):
        t, low, high = millisecond(x)
        assert repr(t) == repr(round(x, 3)) and not low < x < high


def test_entries_of_one_millisecond_share_its_t_and_the_next_millisecond_rounds_again():
    """Entries noted within one millisecond take the t the first computed; one noted later is rounded anew."""
    from wacall.domain.model import Call

    clock = [T0 + 0.0101]
    domain = Domain()
    domain.clock._source = lambda: clock[0]
    platform = domain.platform
    call = Call(id="wacid.t", phone_number_id=domain.number.id, wa_id=ALICE, direction="BUSINESS_INITIATED")
    steps = [0.0101, 0.01014, 0.0104, 0.01049, 0.0106, 0.0110, 0.01151, 0.0115, 1.0, 1.0004996, 1.0005004]
    for step in steps:
        clock[0] = T0 + step
        platform.note(call, "media", step=step)
    assert [entry["t"] for _, entry in platform.drain_notes()] == [round(T0 + step, 3) for step in steps]


def test_note_values_makes_the_entry_note_makes_and_note_leaves_out_none():
    """The hot paths' ``note_values`` (a dict of values none of which is None) against ``note`` (keyword values):
    the same entries, in the same key order (what the store encodes), t from the same clock readings; and
    ``note`` leaves a None value out."""
    from wacall.domain.model import Call
    clock = [T0 + 0.0101]
    domain = Domain()
    domain.clock._source = lambda: clock[0]
    platform = domain.platform
    call = Call(id="wacid.t", phone_number_id=domain.number.id, wa_id=ALICE, direction="BUSINESS_INITIATED")
    values = [("state", {"state": "ENDED", "previous": "ACCEPTED", "reason": "completed", "by": "business"}),
              ("user", {"action": "answer"}), ("sip_message", {"direction": "in", "line": "BYE x", "raw": "BYE x\r\n"}),
              ("webhook_suppressed", {"reason": "r", "event": "CallStatus"}), ("api", {})]
    made = {}
    for way in ("note", "note_values"):
        clock[0] = T0 + 0.0101
        for kind, data in values:
            clock[0] += 0.0004
            if way == "note":
                platform.note(call, kind, **data)
            else:
                platform.note_values(call, kind, dict(data))
        made[way] = platform.drain_notes()
    assert made["note"] == made["note_values"]
    assert [list(entry.items()) for _, entry in made["note"]] == [list(entry.items()) for _, entry in made["note_values"]]
    expected = [{"t": round(T0 + 0.0101 + 0.0004 * n, 3), "kind": kind, **data}   # the entries as stored, spelled out
                for n, (kind, data) in enumerate(values, start=1)]
    assert [list(entry.items()) for _, entry in made["note_values"]] == [list(entry.items()) for entry in expected]
    assert [list(entry) for _, entry in made["note"]][0] == ["t", "kind", "state", "previous", "reason", "by"]
    platform.note(call, "media", event="dtls_connected", profile=None, role="server")
    assert [entry for _, entry in platform.drain_notes()] == [
        {"t": round(clock[0], 3), "kind": "media", "event": "dtls_connected", "role": "server"}]


def test_a_new_id_is_written_as_secrets_token_urlsafe_writes_its_random_octets():
    """``new_id``'s text (binascii in C) against ``secrets.token_urlsafe``'s own way (base64.urlsafe_b64encode,
    padding stripped) for the same octets, every length around 24; and a new id's shape."""
    import base64
    import random
    import re

    from wacall.domain.state import new_id, urlsafe_text

    rng = random.Random(24)
    for n in [*range(0, 40), *([24] * 2000)]:
        raw = rng.randbytes(n)
        assert urlsafe_text(raw) == base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    ids = {new_id("wacid") for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"wacid\.[A-Za-z0-9_-]{32}", i) for i in ids)


def test_the_clock_unmoved_reads_wall_time_itself_and_the_method_once_moved():
    """A VirtualClock on wall time with no offset hands out time.time as its ``now`` (no frame of its own); the
    method (source + offset) reads alike within the same instant, takes over once the clock is moved or set off
    zero, and gives way again when set back to zero; another source always keeps the method (its type kept)."""
    import time

    from wacall.domain.clock import VirtualClock

    clock = VirtualClock()
    assert clock.now is time.time
    before = time.time()
    general = VirtualClock.now(clock)               # the method itself, the general reading
    assert before <= general <= time.time() and before <= clock.now() <= time.time()
    clock.advance(3600.0)
    assert clock.now is not time.time and clock.offset == 3600.0
    before = time.time()
    reading = clock.now()
    assert before + 3600.0 <= reading <= time.time() + 3600.0
    clock.set_offset(0.0)
    assert clock.now is time.time
    assert VirtualClock(offset=5.0).now is not time.time
    assert VirtualClock(5.0).now() - time.time() >= 4.0
    fixed = VirtualClock(source=lambda: 1000)
    assert fixed.now is not time.time and fixed.now() == 1000.0 and isinstance(fixed.now(), float)
    fixed.advance(1.5)
    assert fixed.now() == 1001.5

    class Stopped(VirtualClock):                    # a subclass's own now() is never shadowed
        def now(self) -> float:
            return 42.0 + self.offset
    stopped = Stopped()
    assert stopped.now() == 42.0
    stopped.advance(1.0)
    stopped.set_offset(0.0)
    assert stopped.now() == 42.0
