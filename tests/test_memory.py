"""Bounded memory: ended calls leave the working set and are read back from the store, counts come from
indexes, timelines live in their own table, recordings on disk with a retention, caches are bounded.

Most tests run one ``wacall serve`` configured with ``[memory] keep_ended = 2``: only the two most
recently ended calls (and done messages) stay in memory, so everything older is answered from the store.
Time moves only through ``POST /_wacall/clock/advance``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import sqlite3
import wave
from pathlib import Path

import numpy as np
import pytest

from support.harness import Wacall, graph_error, take_user_call, wait_until
from support.sdp_samples import business_answer, business_offer
from wacall.config import DEFAULT_TOML
from wacall.media.audio import dominant_frequency
from wacall.media.playout import ByteLRU, PreEncodedAudio
from wacall.media.recording import RecordingWriter, Recordings, read_packets
from wacall.testing.peer import AiortcBusiness

ALICE = "447700900001"      # answers business calls after 2 s
BRUNO = "5511987650002"
CHITRA = "919876500003"
EVA = "4915200000005"
DAY = 86400


def config_file(directory: Path, extra: str) -> str:
    path = directory / "wacall.toml"
    path.write_text(DEFAULT_TOML + "\n" + extra)
    return str(path)


@pytest.fixture(scope="module")
def small_memory(tmp_path_factory):
    """A wacall keeping only the last two ended calls in memory."""
    directory = tmp_path_factory.mktemp("small-memory")
    server = Wacall(config=config_file(directory, "[memory]\nkeep_ended = 2\n")).start()
    yield server
    server.close()


@pytest.fixture
def wa(small_memory):
    small_memory.reset()
    return small_memory


# ---------------------------------------------------------------------------------------------- helpers

def working_set(wa) -> dict:
    return wa.ctl("GET", "health").json()["working_set"]


def user_call(wa, wa_id: str) -> str:
    response = wa.user_calls(wa_id)
    assert response.status_code == 201, response.text
    return response.json()["call_id"]


def hang_up(wa, call_id: str) -> None:
    response = wa.ctl("POST", f"calls/{call_id}/hangup")
    assert response.status_code == 200, response.text


def grant(wa, wa_id: str) -> None:
    """The user allows the business to call (from its profile: permanent)."""
    response = wa.ctl("POST", f"users/{wa_id}/permission_replies",
                      {"phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"})
    assert response.status_code == 200, response.text


def connect(wa, wa_id: str):
    return wa.calls_action({"to": wa_id, "action": "connect",
                            "session": {"sdp_type": "offer", "sdp": business_offer()}})


def connected_bic(wa, wa_id: str) -> str:
    """A business-initiated call the user answered (users answer 2 s after ringing)."""
    response = connect(wa, wa_id)
    assert response.status_code == 200, response.text
    call_id = response.json()["calls"][0]["id"]
    wa.advance(3)
    assert wa.call(call_id)["state"] == "ACCEPTED"
    return call_id


def push_out_of_memory(wa, call_id: str) -> None:
    """End two more calls, so that ``call_id`` is no longer among the two most recent ended ones."""
    for _ in range(2):
        hang_up(wa, user_call(wa, EVA))
    assert working_set(wa)["calls"] <= 2 + working_set(wa)["live_calls"]


def month_after(moment: dt.datetime) -> dt.datetime:
    return dt.datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=dt.timezone.utc)


def seconds_to_two_hours_before_next_utc_month(now: float) -> float:
    """In UTC+14 the next month has begun by then; in UTC it is still this month."""
    return month_after(dt.datetime.fromtimestamp(now, dt.timezone.utc)).timestamp() - 7200 - now


# ---------------------------------------------------------------------------------------------- working set

def test_ended_calls_leave_memory_and_are_read_from_the_store(wa):
    ended = []
    for _ in range(4):
        call_id = user_call(wa, ALICE)
        hang_up(wa, call_id)
        ended.append(call_id)
    live = user_call(wa, BRUNO)

    assert working_set(wa) == {"calls": 3, "live_calls": 1, "messages": 0, "pending_messages": 0}
    first = wa.call(ended[0])                       # left memory: answered from the store
    assert first["state"] == "ENDED" and first["end_reason"] == "user_hangup" and first["ended_by"] == "user"
    kinds = [(e["kind"], e.get("state") or e.get("action"))
             for e in first["timeline"] if e["kind"] in ("user", "state")]
    assert kinds == [("user", "call"), ("state", "RINGING"), ("user", "hangup"), ("state", "ENDED")]
    assert first["meta_sdp"].startswith("v=0")
    listed = wa.ctl("GET", "calls").json()["data"]
    assert [c["call_id"] for c in listed] == [*ended, live]
    assert [c["state"] for c in listed] == ["ENDED"] * 4 + ["RINGING"]
    assert [c["call_id"] for c in wa.ctl("GET", "calls?state=live").json()["data"]] == [live]
    page = wa.ctl("GET", "calls?limit=2").json()
    assert [c["call_id"] for c in page["data"]] == [ended[3], live]
    older = wa.ctl("GET", f"calls?limit=2&before={page['paging']['before']}").json()["data"]
    assert [c["call_id"] for c in older] == ended[1:3]
    assert wa.ctl("GET", "calls?limit=0").status_code == 400
    assert wa.ctl("GET", "calls?state=sleeping").status_code == 400

    refused = wa.ctl("POST", f"calls/{ended[0]}/hangup")          # the user's side sees the ended call too
    assert refused.status_code == 409 and refused.json()["error"]["reason"] == "call_ended"
    assert wa.ctl("GET", "calls/wacid.no-such-call").status_code == 404
    assert working_set(wa)["calls"] <= 3


def test_graph_actions_on_an_ended_call_get_metas_error_after_it_left_memory(wa):
    missed = user_call(wa, ALICE)
    wa.advance(61)                                  # the accept window passes
    call = wa.call(missed)
    assert call["state"] == "ENDED" and call["errors"][0]["code"] == 138007
    push_out_of_memory(wa, missed)

    graph_error(wa.calls_action({"call_id": missed, "action": "accept",
                                 "session": {"sdp_type": "answer", "sdp": business_answer()}}), 138007)
    graph_error(wa.calls_action({"call_id": missed, "action": "terminate"}), 138007)
    errors = [e for e in wa.call(missed)["timeline"] if e["kind"] == "api_error"]
    assert [(e["action"], e["code"]) for e in errors] == [("accept", 138007), ("terminate", 138007)]

    grant(wa, BRUNO)
    rejected = connect(wa, BRUNO).json()["calls"][0]["id"]
    assert wa.ctl("POST", f"calls/{rejected}/reject").status_code == 200
    push_out_of_memory(wa, rejected)
    error = graph_error(wa.calls_action({"call_id": rejected, "action": "terminate"}), 100)
    assert "already terminated" in error["error_data"]["details"]
    other_number = wa.graph("POST", f"{wa.pnid}/calls", json={"messaging_product": "whatsapp",
                                                              "call_id": "wacid.unknown", "action": "terminate"})
    graph_error(other_number, 100)


def test_business_initiated_calls_per_24_hours_count_from_the_index(wa):
    assert wa.ctl("PATCH", "limits", {"bic_initiations_per_24h": 2}).status_code == 200
    for wa_id in (BRUNO, CHITRA, ALICE):
        grant(wa, wa_id)
    first = connect(wa, BRUNO).json()["calls"][0]["id"]
    assert wa.calls_action({"call_id": first, "action": "terminate"}).status_code == 200
    wa.advance(3600)
    second = connect(wa, CHITRA).json()["calls"][0]["id"]
    assert wa.calls_action({"call_id": second, "action": "terminate"}).status_code == 200
    push_out_of_memory(wa, first)

    graph_error(connect(wa, ALICE), 138005)         # both ended and left memory: they still count
    wa.advance(DAY - 3600 + 1)                      # the first one is now older than 24 hours
    assert connect(wa, ALICE).status_code == 200
    graph_error(connect(wa, BRUNO), 138005)


def test_monthly_volume_prices_the_tier_without_the_month_in_memory(tmp_path):
    """BRUNO (+55) on a rate card whose cheaper tier starts at 2 minutes a month; the WABA's calendar month
    runs in its timezone, UTC+14."""
    path = tmp_path / "wacall.toml"
    waba = DEFAULT_TOML.replace('currency = "USD"\n', 'currency = "USD"\ntimezone_id = "Pacific/Kiritimati"\n', 1)
    path.write_text(waba + '[memory]\nkeep_ended = 0\n\n[pricing]\ncurrency = "USD"\n'
                    '[pricing.rates]\n"55" = [[0, 0.06], [2, 0.006]]\n"*" = [[0, 0.03]]\n')
    wa = Wacall(config=str(path)).start()
    try:
        wa.media_timeouts(False)
        if seconds_to_two_hours_before_next_utc_month(wa.ctl("GET", "clock").json()["now"]) < DAY:
            wa.advance(2 * DAY)                     # the first calls must be in the same month in both zones
        grant(wa, BRUNO)
        costs = []
        for month_change in (False, False, True):
            if month_change:                        # a new month in Kiritimati, still the old one in UTC
                wa.advance(seconds_to_two_hours_before_next_utc_month(wa.ctl("GET", "clock").json()["now"]))
            call_id = connected_bic(wa, BRUNO)
            wa.advance(57)                          # 10 pulses of 6 s: one minute
            assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
            call = wa.call(call_id)
            assert call["pulses"] == 10, call
            costs.append(call["cost"])
        # 1 minute, then 2 minutes this month (the second call is billed wholly at the cheaper tier), then
        # a new month (in the WABA's timezone) starts from zero
        assert costs == [pytest.approx(0.06), pytest.approx(0.006), pytest.approx(0.06)]
        analytics = wa.graph("GET", wa.waba_id, params={"fields": "call_analytics"}).json()
        bic = next(p for p in analytics["call_analytics"]["data"][0]["data_points"]
                   if p["direction"] == "BUSINESS_INITIATED")
        assert (bic["count"], bic["completed_count"], bic["pulses"]) == (3, 3, 30)
        assert bic["cost"] == pytest.approx(0.126)
        assert working_set(wa)["calls"] == 0
    finally:
        wa.close()


def test_the_open_permission_request_is_answered_after_it_left_memory(wa):
    assert wa.ctl("POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "hi"}).status_code == 201
    sent = wa.graph("POST", f"{wa.pnid}/messages", json={
        "messaging_product": "whatsapp", "to": ALICE, "type": "interactive",
        "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"}}})
    assert sent.status_code == 200, sent.text
    request_id = sent.json()["messages"][0]["id"]
    for wa_id in (BRUNO, CHITRA, EVA):              # three more done messages push the request out
        assert wa.ctl("POST", f"users/{wa_id}/messages", {"to": wa.pnid, "text": "hi"}).status_code == 201
    assert working_set(wa)["messages"] == 2

    reply = wa.ctl("POST", f"users/{ALICE}/permission_replies", {"phone_number_id": wa.pnid, "response": "accept"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"permission": "temporary", "context_id": request_id}
    again = wa.ctl("POST", f"users/{ALICE}/permission_replies", {"phone_number_id": wa.pnid, "response": "accept"})
    assert again.status_code == 409 and again.json()["error"]["reason"] == "no_open_request"


# ---------------------------------------------------------------------------------------------- restart

def test_kill_9_keeps_ended_calls_inspectable_and_live_calls_live(tmp_path):
    config = config_file(tmp_path, "[memory]\nkeep_ended = 0\n")
    wa = Wacall(db=str(tmp_path / "w.db"), config=config).start()
    try:
        wa.media_timeouts(False)
        assert wa.ctl("PATCH", "limits", {"bic_initiations_per_24h": 2}).status_code == 200
        for wa_id in (BRUNO, EVA, ALICE):
            grant(wa, wa_id)
        ended = user_call(wa, ALICE)
        hang_up(wa, ended)
        answered = connected_bic(wa, BRUNO)
        ringing = user_call(wa, CHITRA)
        rang_out = connect(wa, EVA).json()["calls"][0]["id"]
        assert wa.calls_action({"call_id": rang_out, "action": "terminate"}).status_code == 200
        before = wa.call(ended)

        wa.kill()
        wa.start()
        assert working_set(wa) == {"calls": 2, "live_calls": 2, "messages": 0, "pending_messages": 0}
        assert wa.ctl("PATCH", "limits", {"bic_initiations_per_24h": 2, "media_start_timeout_seconds": 0,
                                          "media_silence_timeout_seconds": 0}).status_code == 200
        after = wa.call(ended)
        assert after["state"] == "ENDED" and after["timeline"][:4] == before["timeline"][:4]
        error = graph_error(wa.calls_action({"call_id": ended, "action": "terminate"}), 100)
        assert "already terminated" in error["error_data"]["details"]

        assert wa.call(answered)["state"] == "ACCEPTED"
        assert wa.calls_action({"call_id": answered, "action": "terminate"}).status_code == 200
        assert wa.call(answered)["end_reason"] == "completed"
        assert wa.call(ringing)["state"] == "RINGING"
        wa.advance(61)                              # its accept window still runs out
        assert wa.call(ringing)["errors"][0]["code"] == 138007
        graph_error(connect(wa, ALICE), 138005)     # two business-initiated calls in 24 h, before the crash
        listed = wa.ctl("GET", "calls").json()["data"]
        assert [c["call_id"] for c in listed] == [ended, answered, ringing, rang_out]
        assert working_set(wa)["calls"] == 0
    finally:
        wa.close()


def test_a_database_from_before_the_timeline_table_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    wa = Wacall(db=str(db)).start()                 # the default seed, written by this version
    wa.kill()
    call = {"id": "wacid.from-an-older-wacall", "phone_number_id": wa.pnid, "wa_id": ALICE,
            "direction": "USER_INITIATED", "state": "ENDED", "created_at": 1700000000.0, "ended_at": 1700000005.0,
            "end_status": "COMPLETED", "end_reason": "user_hangup", "ended_by": "user",
            "timeline": [{"t": 1700000000.0, "kind": "user", "action": "call"},
                         {"t": 1700000005.0, "kind": "user", "action": "hangup"}]}
    with sqlite3.connect(db) as conn:               # the schema and document of an older wacall
        conn.execute("DROP TABLE timeline")
        conn.execute("DROP TABLE calls")
        conn.execute("DROP INDEX ix_records_live")
        conn.execute("ALTER TABLE records DROP COLUMN live")
        conn.execute("INSERT INTO records (kind, key, doc) VALUES ('call', ?, ?)", (call["id"], json.dumps(call)))
    wa = Wacall(db=str(db)).start()
    try:
        assert working_set(wa)["calls"] == 0        # an ended call is not loaded at start
        view = wa.call(call["id"])
        assert view["state"] == "ENDED" and [e["action"] for e in view["timeline"]] == ["call", "hangup"]
        assert [c["call_id"] for c in wa.ctl("GET", "calls").json()["data"]] == [call["id"]]
    finally:
        wa.close()


# ---------------------------------------------------------------------------------------------- recordings

async def call_api(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def wav_samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
async def test_recording_of_an_ended_call_is_served_from_disk_until_retention(tmp_path, workers):
    db = tmp_path / "w.db"
    wa = Wacall(db=str(db), extra=["--media-workers", str(workers)]).start()
    try:
        await call_api(wa.reset, media_timeouts=True)
        call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
        async with AiortcBusiness(tone_hz=1000) as business:
            await take_user_call(wa, business, call_id)
            while (await call_api(wa.call, call_id))["media"]["received"]["packets"] < 100:
                await asyncio.sleep(0.1)
            response = await call_api(wa.calls_action, {"call_id": call_id, "action": "terminate"})
            assert response.status_code == 200

        file = db.with_name("w.db.recordings") / f"{call_id}.rec"
        await call_api(wait_until, file.exists, what="the recording file")
        url = f"{wa.url}/_wacall/calls/{call_id}/recording.wav"
        heard = (await call_api(wa.http.get, url)).content
        assert abs(dominant_frequency(wav_samples(heard), 48000) - 1000) < 5
        assert len(wav_samples(heard)) >= 48000 * 1.9

        wa.kill()                                   # the relay, its packets and statistics are gone
        wa.start()
        view = await call_api(wa.call, call_id)
        assert view["state"] == "ENDED" and view["media"]["received"]["packets"] >= 100   # final statistics
        assert view["media"]["recording_url"] == url
        assert (await call_api(wa.http.get, url)).content == heard

        await call_api(wa.advance, 7 * DAY - 60)    # the default retention is 7 days after the last write
        assert (await call_api(wa.http.get, url)).status_code == 200
        await call_api(wa.advance, 120)
        gone = await call_api(wa.http.get, url)
        assert gone.status_code == 404 and gone.json()["error"]["reason"] == "no_recording"
        assert not file.exists()
    finally:
        wa.close()


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


async def test_media_workers_carry_calls_without_the_audio_stack_and_the_server_measures_the_level(tmp_path):
    """A media worker never loads PyAV nor numpy (~29 MB a process): the server encodes what the user says
    and sends the packets, and measures the level of what the user heard from the packets a view carries."""
    wa = Wacall(db=str(tmp_path / "w.db"), extra=["--media-workers", "2"]).start()
    try:
        await call_api(wa.reset, media_timeouts=True)
        with open(f"/proc/{wa.proc.pid}/task/{wa.proc.pid}/children") as f:
            workers = [int(p) for p in f.read().split()]
        assert len(workers) == 2
        call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
        async with AiortcBusiness(tone_hz=1000) as business:
            await take_user_call(wa, business, call_id)
            while (await call_api(wa.call, call_id))["media"]["received"]["packets"] < 100:
                await asyncio.sleep(0.1)
            live = (await call_api(wa.call, call_id))["media"]
            assert live["sent"]["packets"] > 0                     # the user talks: the server's packets
            assert -30 < live["received"]["level_dbfs"] < 0        # the business's tone, measured by the server
            assert "heard" not in live
            for pid in workers:
                assert "libavcodec" not in _maps(pid) and "numpy" not in _maps(pid), pid
            response = await call_api(wa.calls_action, {"call_id": call_id, "action": "terminate"})
            assert response.status_code == 200
        final = await call_api(wait_until, lambda: next(
            (e["media"] for e in wa.call(call_id).get("timeline", []) if e.get("event") == "final_stats"), None),
            what="the final statistics")
        assert -30 < final["received"]["level_dbfs"] < 0 and "heard" not in final
        for pid in workers:
            assert "libavcodec" not in _maps(pid) and "numpy" not in _maps(pid), pid
    finally:
        wa.close()


def test_recording_file_is_appended_in_chunks_and_survives_a_torn_write(tmp_path):
    now = [1000.0]
    recordings = Recordings(tmp_path, max_seconds=1.0, retention_seconds=60)
    writer = recordings.writer("wacid.abc", lambda: now[0])
    writer.flush_bytes = 1000
    packets = [bytes([0x80, 111, 0, i, 0, 0, 3, 192 * i % 256, 0, 0, 0, 1]) + bytes([i]) * 40 for i in range(60)]
    for packet in packets:
        writer.add("opus", packet)
    path = tmp_path / "wacid.abc.rec"
    assert path.stat().st_size < sum(len(p) + 2 for p in packets[:50])      # some still buffered
    writer.flush()
    codec, kept = read_packets(path.read_bytes())
    assert codec == "opus" and kept == packets[:50]                          # max_seconds: 50 packets
    assert path.stat().st_mtime == 1000.0                                    # virtual time of the last write
    with open(path, "ab") as out:                                            # a crash in the middle of a write
        out.write(b"\x00\x30partial")
    assert read_packets(path.read_bytes())[1] == packets[:50]
    os.utime(path, (1000.0, 1000.0))

    assert recordings.path("../etc/passwd") is None and recordings.path(".hidden") is None
    assert recordings.wav("wacid.none") is None
    assert recordings.sweep(1059.0) == 0
    assert recordings.sweep(1061.0, keep={"wacid.abc"}) == 0                 # a live call keeps its file
    assert recordings.sweep(1061.0) == 1 and not path.exists()

    fresh = RecordingWriter(tmp_path / "created" / "x.rec", clock=lambda: 0.0, max_packets=10)
    fresh.add("pcmu", packets[0])
    fresh.flush()                                   # a missing directory is created
    assert read_packets((tmp_path / "created" / "x.rec").read_bytes()) == ("pcmu", packets[:1])
    (tmp_path / "a-file").write_bytes(b"")
    reasons: list[str] = []
    failing = RecordingWriter(tmp_path / "a-file" / "x.rec", clock=lambda: 0.0, max_packets=10,
                              on_error=reasons.append)
    failing.add("opus", packets[0])
    failing.flush()                                 # cannot be written: said once, the call goes on
    assert failing.error and reasons == [failing.error]
    failing.add("opus", packets[1])
    failing.flush()
    assert reasons == [failing.error]


def test_audio_caches_are_bounded():
    cache = ByteLRU(100)
    cache.put("a", 1, 40)
    cache.put("b", 2, 40)
    assert cache.get("a") == 1                      # a is now the most recently used
    cache.put("c", 3, 40)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and cache.bytes == 80
    cache.put("huge", 4, 1000)                      # alone over the bound: kept, everything else goes
    assert len(cache) == 1 and cache.get("huge") == 4

    bound = PreEncodedAudio._cache.max_bytes
    PreEncodedAudio.clear_cache()
    try:
        one = PreEncodedAudio.get("tone:500")
        PreEncodedAudio.get("tone:600")
        PreEncodedAudio._cache.max_bytes = PreEncodedAudio._cache.bytes     # room for exactly these two
        assert PreEncodedAudio.get("tone:500") is one
        PreEncodedAudio.get("tone:700")             # over the bound: the least recently used (600) goes
        assert PreEncodedAudio.cached("tone:500") and PreEncodedAudio.cached("tone:700")
        assert not PreEncodedAudio.cached("tone:600")
    finally:
        PreEncodedAudio._cache.max_bytes = bound
        PreEncodedAudio.clear_cache()
