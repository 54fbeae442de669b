"""The one write path (``Wacall.apply``) and the event registry, in-process and without a network.

Every change goes through ``apply``: nested calls commit once; ``defer`` commits at the end of the
event-loop iteration (one transaction for a burst); events reach the consumers registered for their
type after their commit, and what a consumer changes is committed too (a deferred change later, a
plain one in the same commit).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from wacall.config import load_config
from wacall.domain.events import CallTerminate, EventRegistry, ReleaseMedia, SipCallChanged
from wacall.server import Wacall


@dataclass
class Ping:
    call_id: str


@pytest.fixture
def wacall():
    emulator = Wacall(load_config())
    emulator.seed()
    commits: list[tuple[int, int]] = []
    commit = emulator.store.commit

    def counting(dirty, rows, notes=()):
        dirty, notes = list(dirty), list(notes)
        commits.append((len(dirty), len(notes)))
        return commit(dirty, rows, notes)
    emulator.store.commit = counting
    emulator.commits = commits
    yield emulator
    emulator.store.close()
    emulator.recordings.remove_dir()


def touch(wacall: Wacall) -> None:
    """A change the store persists: one user record rewritten."""
    wacall.platform.put(next(iter(wacall.platform.users.values())))


def test_the_registry_routes_by_type_in_registration_order():
    registry, seen = EventRegistry(), []
    registry.on(ReleaseMedia, lambda e: seen.append(("first", e.call_id)))
    registry.on(ReleaseMedia, lambda e: seen.append(("second", e.call_id)))
    registry.on(SipCallChanged, lambda e: seen.append(("sip", e.call_id)))
    registry.publish(ReleaseMedia("a"))
    registry.publish(CallTerminate("b"))            # nobody registered: consumed by no one here
    registry.publish(SipCallChanged("c"))
    assert seen == [("first", "a"), ("second", "a"), ("sip", "c")]
    assert len(registry.handlers(ReleaseMedia)) == 2 and registry.handlers(CallTerminate) == []


def test_a_preparer_without_a_handler_prepares_and_nothing_is_published():
    registry, seen = EventRegistry(), []
    registry.on(ReleaseMedia, None, prepare=lambda e: seen.append(("prepared", e.call_id)))
    registry.prepare(ReleaseMedia("a"))
    registry.publish(ReleaseMedia("a"))
    assert seen == [("prepared", "a")] and registry.handlers(ReleaseMedia) == [] and registry.prepares


def test_a_failing_handler_keeps_no_other_from_the_event():
    registry, seen, failures = EventRegistry(), [], []

    def broken(event):
        raise RuntimeError("consumer bug")

    registry.on(ReleaseMedia, broken)
    registry.on(ReleaseMedia, lambda e: seen.append(e.call_id))
    registry.publish(ReleaseMedia("a"), lambda event, exc: failures.append((event.call_id, str(exc))))
    assert seen == ["a"] and failures == [("a", "consumer bug")]
    with pytest.raises(RuntimeError, match="consumer bug"):        # nobody listening for failures: raised,
        registry.publish(ReleaseMedia("b"))                          # after the others ran
    assert seen == ["a", "b"]


def test_nested_applies_commit_once(wacall):
    def outer() -> str:
        touch(wacall)
        wacall.apply(lambda: touch(wacall))
        return "done"
    assert wacall.apply(outer) == "done"
    assert len(wacall.commits) == 1


def test_a_failing_operation_still_commits_what_it_changed(wacall):
    def failing() -> None:
        touch(wacall)
        raise ValueError("refused")
    with pytest.raises(ValueError):
        wacall.apply(failing)
    assert wacall.commits == [(1, 0)]


async def test_deferred_applies_commit_together_at_the_end_of_the_loop_iteration(wacall):
    for _ in range(3):
        wacall.apply(lambda: touch(wacall), defer=True)
    assert wacall.commits == []
    await asyncio.sleep(0)
    assert len(wacall.commits) == 1
    wacall.apply(lambda: touch(wacall), defer=True)
    wacall.apply(lambda: touch(wacall))              # a plain apply takes the deferred change along
    assert len(wacall.commits) == 2
    await asyncio.sleep(0)
    assert len(wacall.commits) == 2                  # the scheduled flush found nothing left


async def test_consumers_react_after_the_commit_and_their_changes_are_committed(wacall):
    order: list[str] = []

    def plain(event: Ping) -> None:
        order.append(f"plain saw {len(wacall.commits)} commit(s)")
        wacall.apply(lambda: touch(wacall))          # committed in a second round of the same commit

    def deferred(event: Ping) -> None:
        wacall.apply(lambda: touch(wacall), defer=True)   # committed at the end of the loop iteration

    wacall.consumers.on(Ping, plain)
    wacall.consumers.on(Ping, deferred)
    wacall.apply(lambda: (touch(wacall), wacall.platform.emit(Ping("x"))))
    assert order == ["plain saw 1 commit(s)"]
    assert len(wacall.commits) == 2                  # the operation's, then the plain consumer's (and deferred's)
    wacall.consumers.on(Ping, lambda event: order.append("late"))
    wacall.apply(lambda: wacall.platform.emit(Ping("y")))
    assert order[-1] == "late"
    await asyncio.sleep(0)


async def test_a_deferred_consumer_change_waits_for_the_end_of_the_loop_iteration(wacall):
    wacall.consumers.on(Ping, lambda event: wacall.apply(lambda: touch(wacall), defer=True))
    wacall.apply(lambda: wacall.platform.emit(Ping("x")))
    assert len(wacall.commits) == 1                  # the event's commit; the consumer's change not yet
    await asyncio.sleep(0)
    assert len(wacall.commits) == 2


class ReleasingMedia:
    """Stands for the media plane: releasing a leg notes its final statistics (a deferred change, as
    ``Wacall.note`` is) and is counted."""

    def __init__(self, wacall: Wacall) -> None:
        self.wacall, self.released = wacall, []

    def release(self, call_id: str) -> None:
        self.released.append((call_id, len(self.wacall.commits)))
        self.wacall.apply(lambda: touch(self.wacall), defer=True)


async def test_a_leg_is_released_before_the_commit_that_ends_its_call_and_its_notes_join_that_commit(wacall):
    """ReleaseMedia is prepared: the leg's final statistics join the commit of the change that ended the
    call (one transaction, where the release as a consumer made a second one at the end of the loop turn),
    and the leg is released once, before that commit."""
    wacall.media = media = ReleasingMedia(wacall)
    wacall.apply(lambda: (touch(wacall), wacall.platform.emit(ReleaseMedia("a"))))
    assert media.released == [("a", 0)]              # before the commit
    assert wacall.commits == [(1, 0)]                # the operation's change and the release's, together
    await asyncio.sleep(0)
    assert wacall.commits == [(1, 0)]                # nothing left for a second transaction
    assert media.released == [("a", 0)]              # and the consumers released nothing again


async def test_a_leg_released_before_a_commit_that_fails_is_not_released_again(wacall):
    wacall.media = media = ReleasingMedia(wacall)
    counting = wacall.store.commit

    def failing(dirty, rows, notes=()):
        counting(dirty, rows, notes)
        raise OSError("disk full")
    wacall.store.commit = failing
    with pytest.raises(OSError):
        wacall.apply(lambda: (touch(wacall), wacall.platform.emit(ReleaseMedia("a"))))
    wacall.store.commit = counting
    wacall.apply(lambda: touch(wacall))              # the write path goes on
    await asyncio.sleep(0)
    assert media.released == [("a", 0)]
