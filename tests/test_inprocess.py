"""The emulator in-process (``wacall.server.Wacall``) driven by the Python control client."""

from __future__ import annotations

import pytest

from wacall.config import load_config
from wacall.control.client import ControlClient, ControlRefused
from wacall.server import Wacall


@pytest.fixture
async def emulator():
    wacall = await Wacall(load_config(), db=":memory:", port=0).start()
    yield wacall
    await wacall.stop()


async def test_control_client_drives_a_user_call(emulator):
    info = emulator.info()
    async with ControlClient(info["control_url"]) as control:
        assert (await control.health())["status"] == "ok"
        call_id = await control.user_calls("447700900001", info["phone_number_id"], "deeplink", "promo-7")
        call = await control.call(call_id)
        assert call["state"] == "RINGING" and call["deeplink_payload"] == "promo-7"
        assert call["media"]["port"] > 0
        await control.hangup(call_id)
        assert (await control.call(call_id))["state"] == "ENDED"
        with pytest.raises(ControlRefused) as refused:
            await control.answer(call_id)
        assert refused.value.reason == "not_ringing" and refused.value.status == 409


async def test_virtual_clock_runs_timers(emulator):
    info = emulator.info()
    async with ControlClient(info["graph_url"]) as control:
        call_id = await control.user_calls("447700900001", info["display_phone_number"])
        before = (await control.clock())["now"]
        after = (await control.advance(61))["now"]
        assert after - before >= 61
        call = await control.call(call_id)
        assert call["state"] == "ENDED" and call["end_reason"] == "not_answered"
        assert call["errors"][0]["code"] == 138007
