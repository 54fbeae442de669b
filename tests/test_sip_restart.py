"""A restart is not the end of a SIP call: wacall is killed with ``kill -9`` in the middle of an
established call and restarted on the same database and ports; the dialog comes back from the call
record, so the business's BYE gets its 200 and the user's hang-up sends Meta's BYE (right Call-ID,
tags, Route set, a CSeq above any before, ``x-wa-meta-call-duration``) over a new connection.

The business is Debian's SIPp behind stunnel4. One SIPp run sets the call up and exits once the
dialog is confirmed; after the restart another run, on a new connection, sends or receives the BYE
within that dialog (``indialog_bye.xml`` / ``indialog_bye_uas.xml``), the way a PBX whose
connection to Meta dropped goes on with its calls. SIPp sends no media: the media timeouts are off.

baresip, in both directions, talks SRTP-SDES with Opus through the crash: its audio and the user's are
heard again within 2 s of wacall being ready (the relay comes back on its port with its keys), the
users' media timeouts stay on, and either side's BYE ends the call normally."""

from __future__ import annotations

import asyncio
import io
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from support.harness import PKI_DIR, Wacall
from support.sip_tools import (Baresip, Sipp, SippResult, Stunnel, bic_auth_uri, bic_keys, free_port, header_values,
                               scenario_path, uas_keys)
from wacall.certs import LocalCA
from wacall.config import DEFAULT_TOML
from wacall.media.audio import dominant_frequency

ALICE = "447700900001"
HOST = "pbx.business.example"


def _tag(value: str) -> str:
    return re.search(r";tag=([^;>\s]+)", value).group(1)


def _uri(name_addr: str) -> str:
    return re.search(r"<([^>]+)>", name_addr).group(1)


def _first(messages: list[str], start: str) -> str:
    return next(m for m in messages if m.startswith(start))


def _last(messages: list[str], start: str, cseq_method: str | None = None) -> str:
    return [m for m in messages if m.startswith(start)
            and (cseq_method is None or header_values(m, "CSeq")[0].endswith(cseq_method))][-1]


def _restartable(tmp: Path, extra: list[str] | None = None, *, media_timeouts: bool = False) -> Wacall:
    """A wacall on a database file, so that it can be killed and restarted; no media timeouts unless
    asked (SIPp's SDP has nothing behind it; limits set over the control API would not outlive the
    restart)."""
    config = tmp / "wacall.toml"
    if media_timeouts:
        config.write_text(DEFAULT_TOML)
    else:
        limits = '[limits]\nprofile = "production"\n'
        assert limits in DEFAULT_TOML
        config.write_text(DEFAULT_TOML.replace(limits, limits + 'media_start_timeout_seconds = 0\n'
                                                                'media_silence_timeout_seconds = 0\n'))
    return Wacall(db=str(tmp / "wacall.db"), config=str(config), extra=extra).start()


@pytest.fixture
def wa(tmp_path):
    server = _restartable(tmp_path)
    yield server
    server.close()


@pytest.fixture
def business_cert():
    cert, key = LocalCA.load_or_create(PKI_DIR).issue([HOST], out="pbx-business")
    return Path(cert), Path(key)


def _restart(wa, call_id: str) -> dict:
    """kill -9, start again on the same database and ports; the call is still up, its dialog restored."""
    before = wa.call(call_id)
    assert before["state"] == "ACCEPTED" and before["sip"]["confirmed"], before["sip"]
    wa.kill()
    wa.start()
    after = wa.call(call_id)
    assert after["state"] == "ACCEPTED", after
    assert after["sip"] == before["sip"]
    assert any(e.get("event") == "dialog_restored" for e in after["timeline"])
    return after


def _bic_setup_scenario(tmp: Path, record_route: str) -> Path:
    """bic_digest.xml up to the ACK of Meta's 200 (SIPp exits there, the call stays up), with the
    business's own Record-Route on the INVITE that creates the dialog."""
    text = scenario_path("bic_digest.xml").read_text()
    head = text.split("  <pause/>", 1)[0]
    head = head.replace("CSeq: 2 INVITE\n", f"CSeq: 2 INVITE\n      Record-Route: {record_route}\n", 1)
    path = tmp / "bic_setup.xml"
    path.write_text(head + "</scenario>\n")
    return path


def _uas_setup_scenario(tmp: Path) -> Path:
    """uas_401.xml up to the ACK of the business's 200 (SIPp exits there, the call stays up)."""
    text = scenario_path("uas_401.xml").read_text()
    ack = '<recv request="ACK" rtd="true" crlf="true"/>'
    path = tmp / "uas_setup.xml"
    path.write_text(text.split(ack, 1)[0] + ack + "\n</scenario>\n")
    return path


def _bye_keys(*, ruri: str, routes: list[str], from_: str, to: str, cseq: int) -> dict[str, str]:
    return {"ruri": ruri, "route": "Route: " + ", ".join(routes), "from": from_, "to": to, "bye_cseq": str(cseq)}


def _business_bye(address: tuple[str, int], keys: dict[str, str], call_id: str, workdir: Path) -> None:
    """The business's BYE within the dialog, on a new connection through ``address`` (a stunnel client)."""
    Sipp("indialog_bye.xml", address, keys=keys, extra=["-cid_str", call_id], workdir=workdir).run(
        timeout=30).assert_ok(1)


def _assert_metas_bye(result: SippResult, call: dict, *, call_id: str, meta_tag: str, business_tag: str,
                      ruri: str, routes: list[str], above: int) -> None:
    result.assert_ok(1)
    bye = _first(result.received(), "BYE ")
    assert bye.splitlines()[0] == f"BYE {ruri} SIP/2.0", bye
    assert header_values(bye, "Call-ID") == [call_id]
    assert _tag(header_values(bye, "From")[0]) == meta_tag and _tag(header_values(bye, "To")[0]) == business_tag
    assert [r.strip() for h in header_values(bye, "Route") for r in h.split(",")] == routes
    number, method = header_values(bye, "CSeq")[0].split()
    assert method == "BYE" and int(number) > above, "CSeq above every request Meta sent in the dialog"
    assert header_values(bye, "x-wa-meta-call-duration") == [str(call["duration"])]
    assert header_values(bye, "x-wa-meta-wacid") == [call["call_id"]]
    assert header_values(bye, "Reason") == ['Q.850;cause=16;text="NORMAL_CLEARING"']


@pytest.mark.parametrize("bye_from", ["business", "user"])
def test_business_initiated_call_survives_kill_9(wa, tmp_path, business_cert, bye_from):
    biz = wa.info["display_phone_number"]
    password = wa.enable_sip(HOST, free_port())         # nothing listens at the configured port: the BYE
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {      # must follow the dialog's route set
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0.2}).status_code == 200
    sip = wa.info["sip"]
    to_meta = Stunnel.client(("127.0.0.1", sip["port"]), ca=Path(sip["ca_file"]), check_host="wa.meta.vc",
                             workdir=tmp_path / "stunnel-to-meta").start()
    bye_server = Sipp("indialog_bye_uas.xml", None, keys={}, workdir=tmp_path / "sipp-bye", timeout=60)
    to_business = Stunnel.server(("127.0.0.1", bye_server.port), cert=business_cert[0], key=business_cert[1],
                                 workdir=tmp_path / "stunnel-to-business")
    record_route = f"<sip:{HOST}:{to_business.accept_port};transport=tls;lr>"
    try:
        setup = Sipp(_bic_setup_scenario(tmp_path, record_route), to_meta.address,
                     keys=bic_keys(ALICE, biz, HOST), auth=(biz, password), auth_uri=bic_auth_uri(ALICE),
                     workdir=tmp_path / "sipp-setup").run(timeout=60)
        setup.assert_ok(1)
        [call_id] = [c["call_id"] for c in wa.ctl("GET", "calls").json()["data"]]
        invite = _last(setup.sent(), "INVITE ")
        ok = _last(setup.received(), "SIP/2.0 200 ", "INVITE")
        _restart(wa, call_id)
        if bye_from == "business":
            keys = _bye_keys(ruri=_uri(header_values(ok, "Contact")[0]),
                             routes=list(reversed(header_values(ok, "Record-Route"))),
                             from_=header_values(invite, "From")[0], to=header_values(ok, "To")[0], cseq=3)
            _business_bye(to_meta.address, keys, header_values(invite, "Call-ID")[0], tmp_path / "sipp-bye-out")
            call = wa.wait_state(call_id, "ENDED")
            assert call["ended_by"] == "business" and call["end_reason"] == "completed"
            def ladder() -> list[tuple[str, str]]:
                return [(e["direction"], e["line"]) for e in wa.call(call_id)["timeline"] if e["kind"] == "sip_message"]
            seen = wa.wait_for(lambda: (lines := ladder())[-1] == ("out", "SIP/2.0 200 OK") and lines,
                               what="the 200 to the business's BYE")
            assert seen[-2][0] == "in" and seen[-2][1].startswith("BYE "), seen[-4:]
        else:
            bye_server.start()
            to_business.start()
            assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
            result = bye_server.wait(timeout=30)
            call = wa.wait_state(call_id, "ENDED")
            assert call["ended_by"] == "user"
            _assert_metas_bye(result, call, call_id=header_values(invite, "Call-ID")[0],
                              meta_tag=_tag(header_values(ok, "To")[0]),
                              business_tag=_tag(header_values(invite, "From")[0]),
                              ruri=_uri(header_values(invite, "Contact")[0]), routes=[record_route], above=0)
    finally:
        for tool in (to_meta, to_business, bye_server):
            tool.stop()


@pytest.mark.parametrize("bye_from", ["business", "user"])
def test_user_initiated_call_survives_kill_9(wa, tmp_path, business_cert, bye_from):
    biz = wa.info["display_phone_number"]
    setup = Sipp(_uas_setup_scenario(tmp_path), None, keys={}, workdir=tmp_path / "sipp-setup", timeout=40)
    to_business = Stunnel.server(("127.0.0.1", setup.port), cert=business_cert[0], key=business_cert[1],
                                 workdir=tmp_path / "stunnel-to-business")
    password = wa.enable_sip(HOST, to_business.accept_port)
    setup.keys = uas_keys(biz, password, f"sip:+{biz}@{HOST}:{to_business.accept_port};transport=tls")
    sip = wa.info["sip"]
    to_meta = Stunnel.client(("127.0.0.1", sip["port"]), ca=Path(sip["ca_file"]), check_host="wa.meta.vc",
                             workdir=tmp_path / "stunnel-to-meta")
    bye_server = Sipp("indialog_bye_uas.xml", None, keys={}, port=setup.port, workdir=tmp_path / "sipp-bye",
                      timeout=60)
    try:
        setup.start()
        to_business.start()
        call_id = wa.user_calls(ALICE).json()["call_id"]
        wa.wait_state(call_id, "ACCEPTED", timeout=15)
        result = setup.wait(timeout=30)
        result.assert_ok(1)
        invite = _last(result.received(), "INVITE ")
        ok = _last(result.sent(), "SIP/2.0 200 ")
        assert header_values(invite, "Call-ID") == [f"outgoing:{call_id}"]
        _restart(wa, call_id)
        if bye_from == "business":
            to_meta.start()
            keys = _bye_keys(ruri=_uri(header_values(invite, "Contact")[0]),
                             routes=header_values(invite, "Record-Route"),
                             from_=header_values(ok, "To")[0], to=header_values(invite, "From")[0], cseq=1)
            _business_bye(to_meta.address, keys, header_values(invite, "Call-ID")[0], tmp_path / "sipp-bye-out")
            call = wa.wait_state(call_id, "ENDED")
            assert call["ended_by"] == "business" and call["end_reason"] == "completed"
        else:
            bye_server.start()
            assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
            bye = bye_server.wait(timeout=30)
            call = wa.wait_state(call_id, "ENDED")
            assert call["ended_by"] == "user"
            _assert_metas_bye(bye, call, call_id=f"outgoing:{call_id}", meta_tag=_tag(header_values(invite, "From")[0]),
                              business_tag=_tag(header_values(ok, "To")[0]), ruri=_uri(header_values(ok, "Contact")[0]),
                              routes=[], above=int(header_values(invite, "CSeq")[0].split()[0]))
    finally:
        for tool in (to_meta, to_business, setup, bye_server):
            tool.stop()


def test_a_call_whose_invite_transaction_was_open_ends_at_restart(wa, tmp_path, business_cert):
    """The business's server was still ringing when wacall died: Meta's INVITE transaction died with
    the process (nothing can answer or cancel it any more), so the call ends, saying why."""
    ringing = Sipp("uas_ring_cancel.xml", None, keys={}, workdir=tmp_path / "sipp-ring", timeout=30)
    to_business = Stunnel.server(("127.0.0.1", ringing.port), cert=business_cert[0], key=business_cert[1],
                                 workdir=tmp_path / "stunnel-to-business")
    wa.enable_sip(HOST, to_business.accept_port)
    ringing.keys = {"contact": f"sip:+{wa.info['display_phone_number']}@{HOST}:{to_business.accept_port};"
                               "transport=tls"}
    try:
        ringing.start()
        to_business.start()
        call_id = wa.user_calls(ALICE).json()["call_id"]
        wa.wait_for(lambda: any(e.get("line") == "SIP/2.0 180 Ringing" for e in wa.call(call_id)["timeline"]),
                    what="the business server ringing")
        assert wa.call(call_id)["sip"] is None, "no dialog is kept before it is established"
        wa.kill()
        wa.start()
        call = wa.wait_state(call_id, "ENDED")
        assert call["end_status"] == "FAILED" and call["ended_by"] == "platform"
        assert "restarted while the INVITE transaction was open" in call["end_reason"]
        assert wa.ctl("GET", "health").json()["sip"]["dialogs"] == 0
    finally:
        to_business.stop()
        ringing.stop()


def test_a_200_not_acked_before_the_restart_still_waits_64_t1_for_its_ack(tmp_path, business_cert):
    """Meta's 200 went out, the business's ACK had not come when wacall died: the restored dialog
    waits 64*T1 for it (T1 = 50 ms here), as before the restart, then the call fails."""
    wa = _restartable(tmp_path, ["--sip-t1", "0.05"])
    to_meta = None
    try:
        biz = wa.info["display_phone_number"]
        password = wa.enable_sip(HOST, 5061)
        assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
            "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
        assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0}).status_code == 200
        text = scenario_path("bic_digest.xml").read_text()
        answered = '<recv response="200" rrs="true" rtd="setup"/>'
        no_ack = tmp_path / "bic_no_ack.xml"
        no_ack.write_text(text.split(answered, 1)[0] + answered + '\n  <pause milliseconds="60000"/>\n</scenario>\n')
        sip = wa.info["sip"]
        to_meta = Stunnel.client(("127.0.0.1", sip["port"]), ca=Path(sip["ca_file"]), check_host="wa.meta.vc",
                                 workdir=tmp_path / "stunnel-to-meta").start()
        business = Sipp(no_ack, to_meta.address, keys=bic_keys(ALICE, biz, HOST), auth=(biz, password),
                        auth_uri=bic_auth_uri(ALICE), workdir=tmp_path / "sipp").start()
        call_id = wa.wait_for(lambda: next((c["call_id"] for c in wa.ctl("GET", "calls").json()["data"]
                                            if (wa.call(c["call_id"])["sip"] or {}).get("final_status") == 200),
                                           None), what="Meta's 200 sent")
        wa.kill()
        business.stop()
        wa.start()
        call = wa.call(call_id)
        assert call["state"] == "ACCEPTED" and not call["sip"]["confirmed"]
        call = wa.wait_state(call_id, "ENDED", timeout=15)
        assert call["end_status"] == "FAILED" and "no ACK for the 200 OK within 64*T1" in call["end_reason"]
    finally:
        if to_meta is not None:
            to_meta.stop()
        wa.close()


# -- baresip: a real SIP stack keeps going with the restored dialog and the restored media ------------------

@pytest.fixture
def business_pem(business_cert) -> Path:
    pem = Path(PKI_DIR) / "pbx-business.combined.pem"
    pem.write_bytes(business_cert[0].read_bytes() + business_cert[1].read_bytes())
    return pem


async def _ctl(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def _wav(data: bytes | Path) -> np.ndarray:
    with wave.open(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        return pcm[::2] if wav.getnchannels() == 2 else pcm


async def _baresip_after_restart(wa, business: Baresip, call_id: str, bye_from: str) -> dict:
    """kill -9 mid-call with SRTP-SDES audio both ways (the user says 440 Hz, baresip 1000 Hz); within 2 s
    of wacall being ready the audio flows again both ways, then the call ends normally with either BYE."""
    await asyncio.sleep(2.0)                            # audio both ways before the crash
    await _ctl(_restart, wa, call_id)
    ready = time.monotonic()
    await _ctl(wa.wait_for, lambda: (m := wa.call(call_id)["media"]) and m["received"]["packets"] >= 25
               and m["sent"]["packets"] >= 25, 2.0, "audio both ways again within 2 s of wacall being ready")
    assert time.monotonic() - ready < 2.0
    await asyncio.sleep(1.5)
    call = await _ctl(wa.call, call_id)
    assert call["state"] == "ACCEPTED" and call["media"]["restored"] is True
    assert call["media"]["received"]["srtp_auth_failures"] == 0
    heard = _wav((await _ctl(wa.http.get, call["media"]["recording_url"])).content)
    assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "after the restart the user hears baresip"
    if bye_from == "business":
        await business.hangup()                     # its BYE follows Meta's Record-Route to wa.meta.vc
        call = await _ctl(wa.wait_state, call_id, "ENDED")
        assert call["ended_by"] == "business"
    else:
        assert (await _ctl(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
        closed = await business.wait_event("CALL_CLOSED", 15)  # Meta's BYE reached it on a new connection
        call = await _ctl(wa.wait_state, call_id, "ENDED")
        assert call["ended_by"] == "user", closed
    assert call["end_status"] == "COMPLETED" and not call["errors"]
    answered = ("in" if bye_from == "user" else "out", "SIP/2.0 200 OK")

    def ladder() -> list[tuple[str, str]]:
        return [(e["direction"], e["line"]) for e in wa.call(call_id)["timeline"] if e["kind"] == "sip_message"]
    seen = await _ctl(wa.wait_for, lambda: (lines := ladder())[-1] == answered and lines, what="the BYE's 200")
    assert seen[-2][1].startswith("BYE ") and seen[-2][0] != answered[0], seen[-4:]
    await asyncio.sleep(0.5)                        # baresip writes its recording when the call closes
    at_business = _wav(business.recordings()["dec"][0])
    assert abs(dominant_frequency(at_business[-48000:], 48000) - 440) < 5, "after the restart baresip hears the user"
    return call


@pytest.mark.parametrize("bye_from", ["business", "user"])
async def test_baresip_calling_through_wa_meta_vc_survives_kill_9(tmp_path, business_pem, bye_from):
    wa = await _ctl(_restartable, tmp_path, media_timeouts=True)
    try:
        biz = wa.info["display_phone_number"]
        password = await _ctl(wa.enable_sip, HOST, 5061)
        assert (await _ctl(wa.ctl, "POST", f"users/{ALICE}/permission_replies", {
            "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"})).status_code == 200
        assert (await _ctl(wa.ctl, "PATCH", f"users/{ALICE}", {"answer_after": 0.2, "audio": "tone:440"})
                ).status_code == 200
        business = Baresip(user=f"+{biz}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]), cert=business_pem,
                           auth_user=biz, auth_pass=password, tls_hosts={"wa.meta.vc": wa.info["sip"]["port"]},
                           tone_hz=1000, workdir=tmp_path / "business")
        async with business:
            await business.dial(f"sip:+{ALICE}@wa.meta.vc")
            await business.wait_event("CALL_ESTABLISHED", 15)
            [call_id] = [c["call_id"] for c in (await _ctl(wa.ctl, "GET", "calls")).json()["data"]]
            await _ctl(wa.wait_for, lambda: (wa.call(call_id)["sip"] or {}).get("confirmed"), what="the ACK")
            await _baresip_after_restart(wa, business, call_id, bye_from)
    finally:
        await _ctl(wa.close)


@pytest.mark.parametrize("bye_from", ["business", "user"])
async def test_baresip_answering_a_user_call_survives_kill_9(tmp_path, business_pem, bye_from):
    wa = await _ctl(_restartable, tmp_path, media_timeouts=True)
    try:
        biz = wa.info["display_phone_number"]
        assert (await _ctl(wa.ctl, "PATCH", f"users/{ALICE}", {"audio": "tone:440"})).status_code == 200
        business = Baresip(user=f"+{biz}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]), cert=business_pem,
                           tls_hosts={"wa.meta.vc": wa.info["sip"]["port"]}, tone_hz=1000,
                           workdir=tmp_path / "business")
        async with business:
            await _ctl(wa.enable_sip, HOST, business.tls_port)
            call_id = (await _ctl(wa.user_calls, ALICE)).json()["call_id"]
            await business.wait_event("CALL_ESTABLISHED", 15)
            await _ctl(wa.wait_for, lambda: (wa.call(call_id)["sip"] or {}).get("confirmed"), what="the dialog")
            await _baresip_after_restart(wa, business, call_id, bye_from)
    finally:
        await _ctl(wa.close)
