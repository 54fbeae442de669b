"""The emulator in-process (``wacall.server.Wacall``) driven by the Python control client."""

from __future__ import annotations

import asyncio
import socket

import pytest

from wacall.config import load_config as _load_config
from wacall.control.client import ControlClient, ControlRefused
from wacall.server import Wacall


def load_config():
    """The built-in configuration with the SIP gateway on a free port (never the fixed 5061: other
    instances and test runs share the machine)."""
    config = _load_config()
    config.sip.port = 0
    return config


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


async def test_a_deadline_brought_forward_wakes_the_timers_in_the_next_loop_iteration(emulator):
    """The timers sleep until their next look (the next deadline, at most 0.5 s later); a commit that brings a
    deadline before it (a user who answers at once) has them look in the next loop iteration instead."""
    info = emulator.info()
    async with ControlClient(info["control_url"]) as control:
        call_id = await control.user_calls("447700900001", info["phone_number_id"])
    await asyncio.sleep(0.05)                            # the timers wait for their next look
    platform = emulator.platform
    call = platform.call(call_id)
    assert call.state == "RINGING" and call.deadline_kind == "accept_timeout"
    assert call.deadline > emulator.clock.now() + 1      # the business's accept window, not yet due

    def due_now() -> None:
        call.deadline = emulator.clock.now()
        platform.put(call)
    emulator.apply(due_now)                              # committed: the deadline comes before the planned look
    for _ in range(3):
        await asyncio.sleep(0)
    ended = platform.call(call_id)
    assert ended.state == "ENDED" and ended.end_reason == "not_answered"


async def test_stop_right_after_a_state_change_stops():
    """A state change wakes the timer loop; a stop in the same loop iteration must still end it (Python
    3.11's wait_for swallows a cancel that arrives as its inner wait finishes)."""
    wacall = await Wacall(load_config(), db=":memory:", port=0).start()
    await asyncio.sleep(0.05)                            # the timer loop is waiting for its next deadline
    user = next(iter(wacall.platform.users.values()))
    wacall.apply(lambda: wacall.platform.put(user))      # commits, and wakes the timer loop
    await asyncio.wait_for(wacall.stop(), 5)


async def test_restart_gives_no_leg_to_a_call_that_ended_meanwhile_and_ends_one_without_a_leg(tmp_path):
    """The APIs answer while the media of live calls comes back after a restart: a call that ends
    meanwhile keeps no leg (nothing would ever release it), and a call whose leg cannot be had at all
    (its media worker died) ends at once instead of staying live with no timer that could end it."""
    db = str(tmp_path / "wacall.db")
    first = await Wacall(load_config(), db=db, port=0).start()
    info = first.info()
    async with ControlClient(info["control_url"]) as control:
        lost = await control.user_calls("447700900001", info["phone_number_id"])
        hung_up = await control.user_calls("5511987650002", info["phone_number_id"])
    await first.stop()                             # the calls stay live in the store, as after kill -9

    second = Wacall(load_config(), db=db, port=0)
    restore = second.media.restore

    async def restore_meanwhile(call_id, *args, **kwargs):
        if call_id == lost:
            raise RuntimeError("media worker 0 exited")
        if call_id == hung_up:                       # the user hangs up while the leg is coming back
            second.apply(lambda: second.platform.user_hangs_up(second.platform.call(hung_up)))
        return await restore(call_id, *args, **kwargs)

    second.media.restore = restore_meanwhile
    await second.start()
    try:
        call = second.platform.call(lost)
        assert call.state == "ENDED" and call.errors[0]["code"] == 138021
        assert second.platform.call(hung_up).state == "ENDED"
        assert not second.media.is_live(hung_up) and len(second.media) == 0
    finally:
        await second.stop()


async def test_the_relay_certificate_outlives_a_reset_and_a_restart(tmp_path):
    """A reset wipes the store but not the running relay's certificate; a restart after it must find the
    same one, or a call whose DTLS handshake had not happened yet fails the fingerprint its SDP advertised."""
    db = str(tmp_path / "wacall.db")
    first = await Wacall(load_config(), db=db, port=0).start()
    await first.reset()
    fingerprint = first.media.certificate.fingerprint
    await first.stop()
    second = await Wacall(load_config(), db=db, port=0).start()
    try:
        assert second.media.certificate.fingerprint == fingerprint
    finally:
        await second.stop()


async def test_a_sip_call_that_ends_while_media_comes_back_gets_its_bye(tmp_path):
    """At start the SIP dialogs come back before the media legs (which can take seconds while the APIs
    already answer): a SIP call ended meanwhile still has its dialog, so Meta's BYE goes out (here to a
    business server that is gone: the attempt is on the timeline)."""
    config = load_config()
    config.sip.port, config.sip.pki_dir = 0, str(tmp_path / "pki")
    db = str(tmp_path / "wacall.db")
    first = await Wacall(config, db=db, port=0).start()
    info = first.info()
    async with ControlClient(info["control_url"]) as control:
        call_id = await control.user_calls("447700900001", info["phone_number_id"])
    with socket.socket() as probe:                   # a port nothing listens on: the business server is gone
        probe.bind(("127.0.0.1", 0))
        gone = probe.getsockname()[1]

    def answered_over_sip() -> None:                 # as if the business's 200 had been ACKed over SIP
        call = first.platform.call(call_id)
        call.signalling, call.state, call.accepted_at, call.deadline = "sip", "ACCEPTED", first.clock.now(), None
        call.sip = {"call_id": f"outgoing:{call_id}", "uac": "meta", "local_tag": "meta-tag", "remote_tag": "biz-tag",
                    "local_uri": "<sip:+447700900001@wa.meta.vc>", "remote_uri": "<sip:+15550001234@127.0.0.1>",
                    "remote_target": f"sip:+15550001234@127.0.0.1:{gone};transport=tls", "route_set": [],
                    "local_cseq": 1, "remote_cseq": None, "final_status": 200, "confirmed": True,
                    "server": {"hostname": "127.0.0.1", "port": gone}, "peer": None}
        first.platform.put(call)

    first.apply(answered_over_sip)
    await first.stop()

    second = Wacall(config, db=db, port=0)
    restore = second.media.restore

    async def hang_up_meanwhile(restored_id, *args, **kwargs):
        second.apply(lambda: second.platform.user_hangs_up(second.platform.call(restored_id)))
        return await restore(restored_id, *args, **kwargs)

    second.media.restore = hang_up_meanwhile
    await second.start()
    try:
        assert second.platform.call(call_id).state == "ENDED"
        for _ in range(200):
            timeline = second.store.timeline(call_id) + second.platform.pending_notes(call_id)
            if any(e.get("event") == "sip_transport_error" for e in timeline):
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError(f"no BYE was attempted: {timeline}")
    finally:
        await second.stop()
