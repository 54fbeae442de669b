"""The one owner of a new call's leg (wacall.legs.LegOwner): allocate, apply, release on failure."""

from __future__ import annotations

import pytest

from wacall.domain.errors import GraphError
from wacall.domain.sdp import LocalMedia
from wacall.domain.state import ControlError
from wacall.legs import LegOwner
from wacall.domain.errors import MediaUnavailable


class FakeMedia:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.allocated: list[str] = []
        self.released: list[str] = []

    async def allocate(self, call_id: str) -> LocalMedia:
        if self.fail is not None:
            raise self.fail
        self.allocated.append(call_id)
        return LocalMedia(call_id=call_id, host="127.0.0.1", port=4000, ice_ufrag="u" * 16, ice_pwd="p" * 32,
                          fingerprint="AB", ssrc=1, sdes_key_b64="", session_id=1, stream_id="s")

    def release(self, call_id: str) -> None:
        self.released.append(call_id)


class Apply:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, operation):
        self.calls += 1
        return operation()


async def test_a_placed_call_keeps_its_leg() -> None:
    media, apply = FakeMedia(), Apply()
    owner = LegOwner(media, apply)
    seen = await owner.place(lambda call_id, leg: (call_id, leg))
    assert seen[0].startswith("wacid.") and seen[1].call_id == seen[0] == media.allocated[0]
    assert apply.calls == 1 and media.released == []


@pytest.mark.parametrize("refusal", [GraphError(138006), ControlError("x", "y"), RuntimeError("bug")])
async def test_a_refused_call_releases_its_leg(refusal: Exception) -> None:
    media, apply = FakeMedia(), Apply()
    owner = LegOwner(media, apply)

    def refuse(call_id, leg):
        raise refusal
    with pytest.raises(type(refusal)):
        await owner.place(refuse)
    assert media.released == media.allocated and len(media.allocated) == 1


@pytest.mark.parametrize("failure", [OSError(24, "Too many open files"), RuntimeError("media worker exited")])
async def test_no_room_is_media_unavailable_and_nothing_is_applied(failure: Exception, caplog) -> None:
    media, apply = FakeMedia(fail=failure), Apply()
    owner = LegOwner(media, apply)
    for _ in range(3):
        with pytest.raises(MediaUnavailable):
            await owner.place(lambda call_id, leg: pytest.fail("applied without a leg"))
    assert apply.calls == 0 and media.released == []
    assert len([r for r in caplog.records if "exhausted" in r.message]) == 1     # once per episode
    media.fail = None
    await owner.place(lambda call_id, leg: None)
    assert any("recovered" in r.message for r in caplog.records)
