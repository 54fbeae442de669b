"""The business's BYE ends its call in one transaction: the BYE's trace, the state change, the media leg's
final statistics and the trace of the 200 that answers it are committed together (the leg is released by a
``ReleaseMedia`` preparer, the 200 traced after it), and the 200 leaves only after that commit. An
in-process wacall (its store's commits counted) against Debian's SIPp through stunnel, as in
``test_sip_gateway``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from support.sip_tools import Sipp, Stunnel, bic_auth_uri, bic_keys, free_port
from wacall.config import load_config
from wacall.server import Wacall

ALICE, HOST, VERSION = "447700900001", "pbx.business.example", "v23.0"


def _describe(entry: dict) -> str:
    """A timeline entry as the inspector lists it, in short."""
    if entry["kind"] == "sip_message":
        return f"{entry['direction']} {entry['line'].split(' sip:')[0]}"
    if entry["kind"] == "media":
        return f"media {entry['event']}"
    if entry["kind"] == "state":
        return f"state {entry['state']}"
    return entry["kind"]


@pytest.fixture
async def emulator(tmp_path):
    config = load_config()
    config.sip.port = 0
    wacall = await Wacall(config, db=str(tmp_path / "wacall.db"), port=0).start()
    commits: list[list[tuple[str, str]]] = []         # per commit: (call id, entry) of its timeline notes
    commit = wacall.store.commit

    def counting(dirty, rows, notes=()):
        notes = list(notes)
        commits.append([(call_id, _describe(entry)) for call_id, entry in notes])
        return commit(dirty, rows, notes)
    wacall.store.commit = counting
    yield wacall, commits
    await wacall.stop()


async def _setup(wacall: Wacall, session: aiohttp.ClientSession) -> str:
    """SIP (SDES) on the default number with pbx.business.example, Alice's permission, her quick answer;
    returns the SIP password."""
    info = wacall.info()
    graph, auth = f"{info['graph_url']}/{VERSION}/{info['phone_number_id']}", {
        "Authorization": f"Bearer {info['access_token']}"}
    async with session.post(f"{graph}/settings", headers=auth, json={"calling": {
            "status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
            "sip": {"status": "ENABLED", "servers": [{"hostname": HOST, "port": free_port()}]}}}) as response:
        assert response.status == 200, await response.text()
    async with session.get(f"{graph}/settings", headers=auth, params={"include_sip_credentials": "true"}) as response:
        password = (await response.json())["calling"]["sip"]["servers"][0]["sip_user_password"]
    async with session.post(f"{info['control_url']}/users/{ALICE}/permission_replies", json={
            "phone_number_id": info["phone_number_id"], "response": "accept", "via": "business_profile"}) as response:
        assert response.status == 200, await response.text()
    async with session.patch(f"{info['control_url']}/users/{ALICE}", json={"answer_after": 0.2}) as response:
        assert response.status == 200, await response.text()
    return password


async def test_the_business_bye_ends_the_call_in_one_commit_and_the_timeline_keeps_its_order(emulator, tmp_path):
    wacall, commits = emulator
    async with aiohttp.ClientSession() as session:
        password = await _setup(wacall, session)
    info = wacall.info()
    tunnel = Stunnel.client(("127.0.0.1", info["sip"]["port"]), ca=Path(info["sip"]["ca_file"]),
                            check_host="wa.meta.vc", workdir=tmp_path / "stunnel").start()
    try:
        business = info["display_phone_number"]
        sipp = Sipp("bic_digest.xml", tunnel.address, keys=bic_keys(ALICE, business, HOST),
                    auth=(business, password), auth_uri=bic_auth_uri(ALICE), pause_ms=500, workdir=tmp_path / "sipp")
        result = await asyncio.to_thread(sipp.run, timeout=60)
        result.assert_ok(1)
    finally:
        tunnel.stop()
    await asyncio.sleep(0.05)                          # any commit left for the end of a loop turn is made
    call_id = next(cid for commit in commits for cid, _ in commit)

    timeline = [entry for cid, entry in (pair for commit in commits for pair in commit) if cid == call_id]
    bye = timeline.index("in BYE")
    assert timeline[bye:] == ["in BYE", "state ENDED", "webhook_suppressed", "media final_stats",
                              "out SIP/2.0 200 OK"], timeline
    ending = [commit for commit in commits if (call_id, "in BYE") in commit]
    assert ending == [[(call_id, entry) for entry in timeline[bye:]]], commits   # one transaction for all five


def test_a_refused_bye_leaves_no_200_to_trace_later():
    """A business BYE the platform refuses (its hang-up raises: the transaction layer answers it 500) leaves
    nothing on the dialog for the media release to trace later as a 200 that was never sent."""
    import types

    from wacall.sip.gateway import Dialog, SipGateway
    from wacall.sip.message import parse_message

    bye = parse_message(b"BYE sip:wa.meta.vc SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK1\r\n"
                        b"Max-Forwards: 70\r\nFrom: <sip:b@pbx>;tag=1\r\nTo: <sip:a@wa.meta.vc>;tag=2\r\n"
                        b"Call-ID: x1\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n")
    notes: list[tuple[str, object]] = []

    class Refused(Exception):
        pass

    class Platform:                      # a call whose state refuses the business's terminate (e.g. in voicemail)
        def sip_business_hangs_up(self, call):
            raise Refused

    class Host:
        def apply(self, op, defer=False, group=False):
            return op()

    gateway = object.__new__(SipGateway)
    gateway.platform, gateway.host, gateway.meta_headers = Platform(), Host(), ()
    gateway.dialogs, gateway.by_sip_call_id = {}, {}
    gateway._call = lambda call_id: types.SimpleNamespace(id=call_id)
    gateway._note_message = lambda call, direction, message: notes.append((direction, message))
    dialog = Dialog(call_id="wacid.1", direction="USER_INITIATED", sip_call_id="x1", local_tag="2")
    txn = types.SimpleNamespace(conn=None, respond=lambda response: notes.append(("sent", response.status)))
    with pytest.raises(Refused):
        gateway._business_hangs_up(bye, txn, dialog, bye.cseq[0])
    assert dialog.bye_ok is None and notes == [("in", bye)]      # the BYE's trace only: no 200 left to trace
