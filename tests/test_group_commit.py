"""One transaction per loop turn for state changes their callers do not acknowledge themselves
(``Wacall.apply(..., group=True)``: the SIP gateway's new calls, the timers): what leaves the
process because of them (the SIP 180/200, webhooks) is sent by the events' consumers, which run after the
commit, so a kill -9 at any moment loses nothing that was announced. Checked here from another SQLite
connection on the database file, which is what a restarted process would read."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from dataclasses import dataclass

import pytest

from wacall import server
from wacall.config import load_config
from wacall.domain.model import User
from wacall.server import Wacall


@dataclass(frozen=True)
class Announced:                      # stands for the SipCallChanged a state change causes (no webhook)
    wa_id: str


@dataclass(frozen=True)
class Webhooked:                      # stands for an event that makes a webhook
    wa_id: str


@pytest.fixture
async def emulator(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "QUIET_EVENTS", (*server.QUIET_EVENTS, Announced))
    monkeypatch.setattr(server, "GROUPED_WITHIN", 0.0)    # the loop turn, here (the window: its own test below)
    config = load_config()
    config.sip.port = 0
    wacall = await Wacall(config, db=str(tmp_path / "wacall.db"), port=0).start()
    yield wacall, tmp_path / "wacall.db"
    await wacall.stop()


def durable_users(path) -> set[str]:
    """The users a process restarted from the database file now would find (another connection)."""
    with sqlite3.connect(path) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM records WHERE kind = 'user'")}


def users_per_commit(wacall: Wacall) -> list[set[str]]:
    """The users each commit from now on writes, one set per commit (other commits may happen: timers)."""
    commits: list[set[str]] = []
    real_commit = wacall.store.commit

    def counting_commit(dirty, rows, notes=()):
        dirty = list(dirty)
        commits.append({r.key for r in dirty if isinstance(r, User)})
        return real_commit(dirty, rows, notes)
    wacall.store.commit = counting_commit
    return commits


def creating(wacall: Wacall, wa_id: str, *events):
    """An operation that puts the user ``wa_id`` and emits ``events``."""
    def operation() -> None:
        wacall.platform.put(User(wa_id=wa_id, name=wa_id, country="GB"))
        for event in events:
            wacall.platform.emit(event)
    return operation


async def test_grouped_changes_of_one_loop_turn_are_one_commit_announced_only_once_durable(emulator):
    wacall, path = emulator
    commits = users_per_commit(wacall)
    seen: dict[str, bool] = {}
    wacall.consumers.on(Announced, lambda event: seen.__setitem__(event.wa_id, event.wa_id in durable_users(path)))

    def create(wa_id: str):
        return creating(wacall, wa_id, Announced(wa_id))

    first, second = "447700911001", "447700911002"
    wacall.apply(create(first), group=True)
    wacall.apply(create(second), group=True)
    assert not any(commits) and seen == {}                    # nothing committed, nothing announced yet
    assert not {first, second} & durable_users(path)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [users for users in commits if users] == [{first, second}]     # both in one transaction
    assert seen == {first: True, second: True}                # each announced after it was durable

    third = "447700911003"                                    # an ungrouped change: committed at once, as before
    wacall.apply(create(third))
    assert commits[-1] == {third} and seen[third] is True and third in durable_users(path)


async def test_a_grouped_change_that_raises_is_committed_at_once(emulator):
    """The caller answers a refusal itself (a SIP 4xx): what the refused operation changed is durable when
    apply() raises, not at the end of the loop turn."""
    wacall, path = emulator
    wa_id = "447700911009"

    def refused() -> None:
        wacall.platform.put(User(wa_id=wa_id, name="refused", country="GB"))
        raise RuntimeError("refused")
    with pytest.raises(RuntimeError):
        wacall.apply(refused, group=True)
    assert wa_id in durable_users(path)


async def test_a_grouped_change_joins_a_commit_made_in_the_same_turn(emulator):
    """A grouped change waiting for the end of the turn is written by any commit made before then (a Graph
    request's), together with that commit's changes, and announced after it."""
    wacall, path = emulator
    seen: dict[str, bool] = {}
    wacall.consumers.on(Announced, lambda event: seen.__setitem__(event.wa_id, event.wa_id in durable_users(path)))
    grouped, direct = "447700911011", "447700911012"

    def create(wa_id: str):
        return creating(wacall, wa_id, Announced(wa_id))
    wacall.apply(create(grouped), group=True)
    wacall.apply(create(direct))
    assert seen == {grouped: True, direct: True} and {grouped, direct} <= durable_users(path)


async def test_a_grouped_change_that_makes_a_webhook_is_committed_at_once(emulator):
    """A webhook's latency counts from the state change: a grouped change that emits a webhook's event does
    not wait for the end of the loop turn (and takes the turn's grouped changes with it)."""
    wacall, path = emulator
    quiet, loud = "447700911021", "447700911022"
    wacall.apply(lambda: wacall.platform.put(User(wa_id=quiet, name="q", country="GB")), group=True)
    assert quiet not in durable_users(path)

    def operation() -> None:
        wacall.platform.put(User(wa_id=loud, name="l", country="GB"))
        wacall.platform.emit(Webhooked(loud))
    wacall.apply(operation, group=True)
    assert {quiet, loud} <= durable_users(path)


async def test_a_deferred_fact_rides_with_the_next_commit_or_is_committed_within_its_window(emulator):
    """A deferred fact (apply(defer=True): a SIP trace, a dialog's state, a media note) nobody was told of waits
    up to ``DEFERRED_WITHIN`` for another commit to take it along (under load: a SIP flow's ACK costs no
    transaction of its own), and is committed alone once the window is over."""
    wacall, path = emulator
    commits = users_per_commit(wacall)

    def create(wa_id: str):
        return creating(wacall, wa_id)

    deferred, later = "447700911031", "447700911032"
    wacall.apply(create(deferred), defer=True)
    await asyncio.sleep(0)
    await asyncio.sleep(0)                     # a loop turn went by: still waiting for company
    assert deferred not in durable_users(path) and not any(commits)
    wacall.apply(create(later), group=True)    # a grouped change of a later turn takes it along
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [users for users in commits if users] == [{deferred, later}]

    alone = "447700911033"
    wacall.apply(create(alone), defer=True)
    for _ in range(200):                       # (no timed assertion: wait for the window's commit)
        if alone in durable_users(path):
            break
        await asyncio.sleep(server.DEFERRED_WITHIN)
    assert [users for users in commits if users][-1] == {alone}


async def test_a_deferred_fact_that_makes_a_webhook_does_not_wait_for_the_window(emulator):
    wacall, path = emulator
    loud = "447700911041"

    def operation() -> None:
        wacall.platform.put(User(wa_id=loud, name="l", country="GB"))
        wacall.platform.emit(Webhooked(loud))
    wacall.apply(operation, defer=True)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert loud in durable_users(path)


async def test_a_deferred_fact_is_committed_by_stop(tmp_path):
    config = load_config()
    config.sip.port = 0
    path = tmp_path / "wacall.db"
    wacall = await Wacall(config, db=str(path), port=0).start()
    wa_id = "447700911051"
    wacall.apply(lambda: wacall.platform.put(User(wa_id=wa_id, name="s", country="GB")), defer=True)
    await wacall.stop()
    assert wa_id in durable_users(path)


async def test_what_the_apis_show_is_durable_even_inside_a_deferred_window(emulator):
    """A deferred fact is visible in memory at once; before any HTTP request is answered it is committed, so what
    the control or Graph API showed survives a kill -9 that follows the answer."""
    import aiohttp
    wacall, path = emulator
    wa_id = "447700911061"
    wacall.apply(lambda: wacall.platform.put(User(wa_id=wa_id, name="shown", country="GB")), defer=True)
    assert wa_id not in durable_users(path)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{wacall.base_url}/_wacall/users/{wa_id}") as response:
            assert response.status == 200, await response.text()
    assert wa_id in durable_users(path)



@pytest.mark.parametrize("waiting", [False, True], ids=["no-window-open", "window-open"])
async def test_a_deferred_fact_of_a_consumer_keeps_its_window(emulator, waiting):
    """A consumer of a commit's event that defers a fact (the SIP gateway tracing the 200 it sends for a
    SipCallChanged) opens its window while that commit is under way; the commit must not close that window when
    it ends (it did not take the fact along: the fact came after its last round), else nothing commits the fact
    but whatever commit comes next, maybe none: not the window's timer, not the APIs' settle, not stop()."""
    wacall, path = emulator
    for _ in range(3):                         # nothing else pending: only this test's commits below
        await asyncio.sleep(0)
    traced = "447700911071"
    wacall.consumers.on(Announced, lambda event: wacall.apply(
        lambda: wacall.platform.put(User(wa_id=traced, name="t", country="GB")), defer=True))
    if waiting:                                # a deferred fact waits already: this commit takes it along
        wacall.apply(lambda: wacall.platform.put(User(wa_id="447700911072", name="w", country="GB")), defer=True)
    wacall.apply(lambda: wacall.platform.emit(Announced("447700911073")))
    assert traced not in durable_users(path)   # deferred: it waits for its window
    assert wacall._deferred is not None or wacall._flush_scheduled     # ... which is open
    wacall.settle()                            # what an HTTP request does before it is answered
    assert traced in durable_users(path)


async def test_what_the_apis_show_of_a_grouped_change_is_durable(emulator):
    """A grouped change waits for the end of its loop turn; an HTTP request's task may run in that turn before the
    commit does: settle (the ``settled`` middleware) commits it too before the request is answered."""
    wacall, path = emulator
    for _ in range(3):
        await asyncio.sleep(0)
    grouped = "447700911081"
    wacall.apply(lambda: wacall.platform.put(User(wa_id=grouped, name="g", country="GB")), group=True)
    assert grouped not in durable_users(path) and wacall._flush_scheduled
    wacall.settle()
    assert grouped in durable_users(path)


async def test_a_deferred_fact_of_a_consumer_of_the_last_commit_is_committed_by_stop(tmp_path, monkeypatch):
    """stop() commits the deferred facts waiting; that commit's consumers may defer more (a trace of what they
    sent): those are committed by stop() too, not left to a window that would close on a closed store."""
    monkeypatch.setattr(server, "QUIET_EVENTS", (*server.QUIET_EVENTS, Announced))
    monkeypatch.setattr(server, "GROUPED_WITHIN", 0.0)    # the loop turn, here (the window: its own test below)
    config = load_config()
    config.sip.port = 0
    path = tmp_path / "wacall.db"
    wacall = await Wacall(config, db=str(path), port=0).start()
    traced = "447700911091"
    wacall.consumers.on(Announced, lambda event: wacall.apply(
        lambda: wacall.platform.put(User(wa_id=traced, name="t", country="GB")), defer=True))
    wacall.apply(lambda: wacall.platform.emit(Announced("447700911092")), defer=True)
    await wacall.stop()
    assert traced in durable_users(path) and wacall._deferred is None


async def test_grouped_changes_soon_after_a_commit_wait_for_the_window(tmp_path, monkeypatch):
    """Under load a grouped change made within ``GROUPED_WITHIN`` of the last commit waits for the window's end,
    so that one transaction takes the changes of several loop turns (a SIP flow's INVITE, its user's answer and
    another call's BYE); a change that makes a webhook, an API answer and stop() do not wait for it."""
    import aiohttp
    monkeypatch.setattr(server, "QUIET_EVENTS", (*server.QUIET_EVENTS, Announced))
    monkeypatch.setattr(server, "GROUPED_WITHIN", 3600.0)    # (a window that cannot end during the test)
    config = load_config()
    config.sip.port = 0
    path = tmp_path / "wacall.db"
    wacall = await Wacall(config, db=str(path), port=0).start()
    commits = users_per_commit(wacall)

    create = functools.partial(creating, wacall)

    first, second, third, loud = "447700911071", "447700911072", "447700911073", "447700911074"
    wacall.apply(create(first))                               # committed at once: the window opens
    wacall.apply(create(second, Announced(second)), group=True)
    assert wacall._grouped is not None                        # its commit is planned, at the window's end
    assert wacall._grouped.when() == pytest.approx(wacall._committed_at + 3600.0)
    for _ in range(3):
        await asyncio.sleep(0)
    wacall.apply(create(third, Announced(third)), group=True)  # a later loop turn: joins the same commit
    for _ in range(3):
        await asyncio.sleep(0)
    assert [users for users in commits if users] == [{first}]
    assert not {second, third} & durable_users(path)
    wacall.apply(create(loud, Webhooked(loud)), defer=True)   # a webhook does not wait: everything goes now
    for _ in range(3):
        await asyncio.sleep(0)
    assert [users for users in commits if users] == [{first}, {second, third, loud}]

    shown = "447700911075"                                   # an API answer commits what waits first
    wacall.apply(create(shown, Announced(shown)), group=True)
    await asyncio.sleep(0)
    assert shown not in durable_users(path)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{wacall.base_url}/_wacall/users/{shown}") as response:
            assert response.status == 200, await response.text()
    assert shown in durable_users(path)

    last = "447700911076"                                    # and stop() does
    wacall.apply(create(last, Announced(last)), group=True)
    await asyncio.sleep(0)
    assert last not in durable_users(path)
    await wacall.stop()
    assert last in durable_users(path)


async def test_a_failed_commit_leaves_no_timer_to_fire_after_stop(tmp_path, monkeypatch):
    """A commit drains what the grouped and deferred timers waited for, so it cancels both whatever its
    outcome: after a failed one no timer fires later (after stop(), on a closed store)."""
    monkeypatch.setattr(server, "QUIET_EVENTS", (*server.QUIET_EVENTS, Announced))
    monkeypatch.setattr(server, "GROUPED_WITHIN", 3600.0)
    config = load_config()
    config.sip.port = 0
    wacall = await Wacall(config, db=str(tmp_path / "wacall.db"), port=0).start()

    create = functools.partial(creating, wacall)
    wacall.apply(create("447700911081"))                              # a commit: the window opens
    wacall.apply(create("447700911082", Announced("447700911082")), group=True)
    grouped = wacall._grouped
    assert grouped is not None and not grouped.cancelled()

    real_commit = wacall.store.commit

    def failing_commit(dirty, rows, notes=()):
        raise OSError("disk gone")
    wacall.store.commit = failing_commit
    with pytest.raises(OSError):
        wacall.apply(create("447700911083"))
    wacall.store.commit = real_commit
    assert grouped.cancelled() and wacall._grouped is None and not wacall._flush_scheduled
    await wacall.stop()
