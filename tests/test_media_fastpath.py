"""The compiled media path (wacall.media.fastpath, fastpath.c) against the pure-Python reference.

The same leg (same keys, SSRC, sequence numbers) is driven twice on real loopback sockets, once with
every packet in Python and once with the compiled path taking it over after its first packets, with
the same packets from the business (in order, a loss, a duplicate, a reordering, a sequence wrap,
an RFC 4733 digit, a new SSRC) at the same arrival times. Both must send the business the very same
bytes (audio, DTMF, RTCP) and end with the same statistics, digits and recording file."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
import struct
import time
import types
from pathlib import Path

import pylibsrtp
import pytest

from wacall.media import fastpath as fastpath_module
from wacall.media import relay as relay_module
from wacall.domain.sdp import build_meta_answer, build_meta_offer, negotiate, parse_sdp
from wacall.media.playout import PreEncodedAudio
from wacall.media.certificate import DtlsCertificate
from wacall.media.dtmf import RtpStreamState
from wacall.media.engine import _Silent
from wacall.media.fastpath import FastPath
from wacall.media.leg import MediaLeg
from wacall.media.ports import Ports
from wacall.media.recording import RecordingWriter
from wacall.media.relay import RelayEndpoint
from wacall.media.rtp import is_rtcp

SUITE = "AES_CM_128_HMAC_SHA1_80"
META_KEY = base64.b64encode(bytes(range(30))).decode()
BUSINESS_KEY = bytes(range(100, 130))
BUSINESS_SSRC = 0x11223344
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80


def _session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, srtp_profile=PROFILE, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND
                              if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND)
    policy.allow_repeat_tx = True          # the business repeats a packet on purpose
    return pylibsrtp.Session(policy)


def _business_sdp(port: int) -> str:
    return "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
        f"m=audio {port} RTP/SAVP 111 126", f"a=crypto:1 {SUITE} inline:" + base64.b64encode(BUSINESS_KEY).decode(),
        "a=rtpmap:111 opus/48000/2", "a=rtpmap:126 telephone-event/8000", "a=ptime:20", "a=sendrecv", ""])


def _rtp(pt: int, seq: int, ts: int, payload: bytes, ssrc: int = BUSINESS_SSRC, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def _script() -> list[tuple[str, object]]:
    """What the business does, step by step: ("rtp", plain packet) or ("tick", n) or ("dtmf", digits)."""
    steps: list[tuple[str, object]] = []
    seq, ts = 65500, 7000
    audio = lambda n: bytes([0x78]) + bytes((n * 7 + i) & 0xFF for i in range(60 + n % 5))  # noqa: E731
    steps.append(("rtp", _rtp(111, seq, ts, audio(0))))           # the first packet: Python's, always
    steps.append(("tick", 3))                                      # the user answers: the microphone starts
    for n in range(1, 40):                                         # across the sequence wrap
        seq, ts = seq + 1, ts + 960
        if n == 10:
            continue                                               # lost
        steps.append(("rtp", _rtp(111, seq, ts, audio(n))))
        if n == 20:
            steps.append(("rtp", _rtp(111, seq, ts, audio(n))))     # a duplicate: SRTP replay, dropped
        if n % 8 == 0:
            steps.append(("tick", 2))
    late = _rtp(111, seq + 2, ts + 1920, audio(41))
    steps.append(("rtp", late))                                    # reordered: 41 before 40
    steps.append(("rtp", _rtp(111, seq + 1, ts + 960, audio(40))))
    seq, ts = seq + 2, ts + 1920
    steps.append(("dtmf", "5"))                                    # the user presses a key
    steps.append(("tick", 12))
    event_ts = ts + 960
    for i, (end, dur) in enumerate([(False, 160), (False, 320), (True, 480), (True, 480), (True, 480)]):
        seq += 1
        payload = struct.pack("!BBH", 3, (0x80 if end else 0) | 10, dur)
        steps.append(("rtp", _rtp(126, seq, event_ts, payload, marker=i == 0)))
    for n in range(42, 60):
        seq, ts = seq + 1, ts + 960
        steps.append(("rtp", _rtp(111, seq, ts, audio(n))))
    steps.append(("tick", 4))
    steps.append(("rtp", _rtp(111, 10, 5, audio(1), ssrc=0x55667788)))   # a new SSRC: back to Python
    for n in range(60, 66):
        seq, ts = seq + 1, ts + 960
        steps.append(("rtp", _rtp(111, seq, ts, audio(n))))
    steps.append(("tick", 3))
    return steps


class _FixedClock(_Silent):
    def now(self) -> float:
        return 100.0


async def _sdes_leg(compiled: bool, call_id: str, **local) -> tuple:
    """A relay endpoint on its own shared port (C reading it or not), and the business's socket."""
    ports = Ports()
    ports.fast = FastPath() if compiled else None
    sock = await ports.bind("127.0.0.1", 0)
    business = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    business.bind(("127.0.0.1", 0))
    business.setblocking(False)
    cert = DtlsCertificate.default()
    leg = MediaLeg.create(call_id, host=sock.host, port=sock.port, fingerprint=cert.fingerprint)
    leg.local = dataclasses.replace(leg.local, sdes_key_b64=META_KEY, **local)
    return ports, sock, business, leg, RelayEndpoint(leg, cert, _FixedClock(), ports, sock)


async def _run(compiled: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    PreEncodedAudio.get("tone:440")                                # the microphone's frames, encoded once
    clock = {"t": 5000.0}
    monkeypatch.setattr(relay_module, "time", types.SimpleNamespace(monotonic=lambda: clock["t"],
                                                                    time=lambda: 1.8e9))
    ports, sock, business, leg, endpoint = await _sdes_leg(compiled, "wacid.FAST", ssrc=0xCAFE0001)
    fast = ports.fast
    endpoint.stream = RtpStreamState(ssrc=leg.ssrc, sequence_number=65533, timestamp=4_000_000_000)
    endpoint._first_seq = 65533
    endpoint.phone.recording = RecordingWriter(tmp_path / f"{compiled}.rec", clock=lambda: 1.8e9, max_packets=1000,
                                         flush_bytes=1500)
    ports.add(endpoint)
    negotiated = negotiate(build_meta_offer(leg.local, key_exchange="SDES"),
                           _business_sdp(business.getsockname()[1]), "SDES")
    endpoint.configure(negotiated, "tone:440", user_is_caller=True)
    endpoint.phone.connected(99.0)
    tx, rx = _session(BUSINESS_KEY, True), _session(base64.b64decode(META_KEY), False)
    received: list[bytes] = []
    went_fast = False

    def counted() -> int:
        extra = int(endpoint.fast.c.datagrams) - endpoint.fast._datagrams if endpoint.fast is not None else 0
        return leg.packets_received + extra + endpoint.junk_datagrams

    async def drain() -> None:
        await asyncio.sleep(0.02)
        while True:
            try:
                received.append(business.recv(2048))
            except BlockingIOError:
                return

    for kind, value in _script():
        if kind == "rtp":
            clock["t"] += 0.02 + (len(received) % 3) * 0.0013           # some jitter, the same in both runs
            if fast is not None:
                fast.lib.fp_set_clock(clock["t"])
            before = counted()
            business.sendto(tx.protect(value), (sock.host, sock.port))
            deadline = time.monotonic() + 2
            while counted() == before and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
        elif kind == "tick":
            for _ in range(int(value)):
                if endpoint.fast is not None and endpoint.fast.tx:
                    went_fast = True
                    fast.send()
                else:
                    endpoint.tick(clock["t"])
                await drain()
        elif kind == "dtmf":
            endpoint.press(str(value))
    await drain()
    if fast is not None:
        fast.lib.fp_set_clock(0.0)
    view = endpoint.view()
    by_c = int(endpoint.fast.c.datagrams) if endpoint.fast is not None else 0
    endpoint.close()
    ports.close()
    business.close()
    plain = []
    for packet in received:
        plain.append(rx.unprotect_rtcp(packet) if is_rtcp(packet) else rx.unprotect(packet))
    return {"sent_bytes": received, "by_c": by_c, "plain": plain, "view": view, "went_fast": went_fast,
            "recording": (tmp_path / f"{compiled}.rec").read_bytes(), "packets_received": leg.packets_received}


async def test_compiled_path_matches_the_python_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = await _run(False, tmp_path, monkeypatch)
    compiled = await _run(True, tmp_path, monkeypatch)
    assert compiled["went_fast"] and not python["went_fast"]       # the C path really carried the leg
    assert compiled["by_c"] > 50 and python["by_c"] == 0
    assert len(python["sent_bytes"]) > 30
    assert [p[:12] for p in compiled["plain"]] == [p[:12] for p in python["plain"]]
    assert compiled["sent_bytes"] == python["sent_bytes"]           # audio, DTMF and RTCP, byte for byte
    for result in (python, compiled):                            # each run has its own sockets
        del result["view"]["port"], result["view"]["ice"]["remote"]
    assert compiled["view"]["received"] == python["view"]["received"]
    assert compiled["view"] == python["view"]
    received = python["view"]["received"]
    assert received["lost"] == 1 and received["ssrcs"] == 2 and received["packets"] > 60
    assert python["view"]["digits_received"] == [{"digit": "3", "duration_ms": 60}]
    assert python["view"]["digits_sent"] == "5"
    assert compiled["recording"] == python["recording"] and len(python["recording"]) > 3000
    assert compiled["packets_received"] == python["packets_received"]


def test_the_compiled_path_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WACALL_FASTPATH", "0")
    assert fastpath_module.load() is None
    monkeypatch.setenv("WACALL_FASTPATH", "1")
    assert isinstance(fastpath_module.load(), FastPath)          # built by pip install, never skipped





def test_config_media_fastpath() -> None:
    import tomllib

    from wacall.config import DEFAULT_TOML, build_config

    raw = tomllib.loads(DEFAULT_TOML)
    assert build_config(raw).media_fastpath is True
    raw.setdefault("media", {})["fastpath"] = False
    assert build_config(raw).media_fastpath is False
    raw["media"]["fastpath"] = "no"
    with pytest.raises(ValueError, match="media.fastpath"):
        build_config(raw)


async def test_events_on_the_negotiated_pt_do_not_count_for_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIP business's telephone-event is often PT 101, not Meta's 126: its packets (timestamp held at the
    event's onset, RFC 4733 §2.5.1.2) count for loss but never for jitter (RFC 3550 A.8), on either path."""
    clock = {"t": 5000.0}
    monkeypatch.setattr(relay_module, "time", types.SimpleNamespace(monotonic=lambda: clock["t"], time=lambda: 1.8e9))
    ports = Ports()
    sock = await ports.bind("127.0.0.1", 0)
    cert = DtlsCertificate.default()
    leg = MediaLeg.create("wacid.TE101", host=sock.host, port=sock.port, fingerprint=cert.fingerprint)
    endpoint = RelayEndpoint(leg, cert, _FixedClock(), ports, sock)
    ports.add(endpoint)
    business = _business_sdp(40000).replace(" 126", " 101").replace("rtpmap:126", "rtpmap:101")
    meta = build_meta_answer(leg.local, parse_sdp(business), key_exchange="SDES")   # the business offers
    endpoint.configure(negotiate(meta, business, "SDES"), "silence")
    endpoint.phone.connected(99.0)
    assert endpoint._te_pt == 101
    seq = 1
    endpoint._on_rtp(_rtp(111, seq, 0, b"\x78" * 40), ("127.0.0.1", 40000))
    for i in range(6):                                   # one event, 50 ms apart, onset timestamp held
        seq, clock["t"] = seq + 1, clock["t"] + 0.05
        endpoint._on_rtp(_rtp(101, seq, 960, struct.pack("!BBH", 3, 10, 400 * (i + 1))), ("127.0.0.1", 40000))
    source = endpoint.stats.sources[BUSINESS_SSRC]
    assert source.received == 7 and source.jitter == 0.0
    endpoint.close()
    ports.close()


async def test_a_report_sent_while_keys_are_pressed_has_what_c_received(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the user presses keys Python sends (the compiled path keeps the receive side): the RTCP report
    Python sends then carries what C counted, not the counts of the moment the leg went fast."""
    from wacall.media.rtcp import RtcpSenderReport, parse_rtcp

    PreEncodedAudio.get("tone:440")
    monkeypatch.setattr(relay_module, "time", types.SimpleNamespace(monotonic=time.monotonic, time=lambda: 1.8e9))
    ports, sock, business, leg, endpoint = await _sdes_leg(True, "wacid.KEYS")
    fast = ports.fast
    ports.add(endpoint)
    endpoint.configure(negotiate(build_meta_offer(leg.local, key_exchange="SDES"),
                                 _business_sdp(business.getsockname()[1]), "SDES"), "tone:440")
    endpoint.phone.connected(99.0)
    tx, rx = _session(BUSINESS_KEY, True), _session(base64.b64decode(META_KEY), False)

    async def send(seq: int) -> None:
        before = leg.packets_received + (int(endpoint.fast.c.datagrams) if endpoint.fast else 0)
        business.sendto(tx.protect(_rtp(111, seq, seq * 960, b"\x78" * 40)), (sock.host, sock.port))
        deadline = time.monotonic() + 2
        while leg.packets_received + (int(endpoint.fast.c.datagrams) if endpoint.fast else 0) == before \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.001)

    await send(1)
    for _ in range(3):
        endpoint.tick(0.0)                                 # the user answers and talks: the leg goes fast
    assert endpoint.fast is not None and endpoint.fast.rx and endpoint.fast.tx
    for seq in range(2, 40):
        await send(seq)                                    # counted by C only
    endpoint.press("1")
    await asyncio.sleep(0.02)
    while True:                                            # what was sent so far
        try:
            business.recv(2048)
        except BlockingIOError:
            break
    endpoint._last_rtcp = 0.0                              # a report is due on this tick
    endpoint.tick(0.0)
    await asyncio.sleep(0.02)
    reports = []
    while True:
        try:
            packet = business.recv(2048)
        except BlockingIOError:
            break
        if is_rtcp(packet):
            reports += [r for r in parse_rtcp(rx.unprotect_rtcp(packet)) if isinstance(r, RtcpSenderReport)]
    endpoint.close()
    ports.close()
    business.close()
    assert fast is not None and len(reports) == 1
    assert reports[0].reports[0].highest_sequence == 39      # not 1: the packets C received are in it
