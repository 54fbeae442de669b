"""MediaEngine / MediaLeg on the engine's shared ports: real UDP sockets on loopback, credentials,
routing by ICE ufrag and validated address, restore on the old port, aiortc interop."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import uuid

import pytest

from wacall.domain.ends import MediaFact
from wacall.media.certificate import DtlsCertificate
from wacall.media.engine import MediaEngine
from wacall.media.leg import MediaLeg
from wacall.media.ports import Ports
from wacall.domain.sdp import build_meta_offer, validate_business_sdp
from wacall.media.stun import binding_request


@pytest.fixture
async def engine():
    eng = MediaEngine()
    yield eng
    await eng.close()


async def _wait_for(predicate, timeout: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def _recv(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 2048), 2)


def _check(leg: MediaLeg, remote_ufrag: str = "biz1") -> bytes:
    """A connectivity check a controlling business sends to ``leg`` (RFC 8445 section 7.1.1)."""
    return binding_request(f"{leg.ice_ufrag}:{remote_ufrag}", priority=1, controlling=7,
                           use_candidate=True).encode(leg.ice_pwd.encode())


async def test_allocate_gives_fresh_credentials_on_one_shared_port(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    other = await engine.allocate("wacid.B")
    assert leg.call_id == "wacid.A" and leg.host == "127.0.0.1"
    assert 0 < leg.port < 65536 and leg.port == other.port            # Meta's relay: one port, many calls
    assert re.fullmatch(r"[A-Za-z0-9+/]{4,256}", leg.ice_ufrag)
    assert re.fullmatch(r"[A-Za-z0-9+/]{22,256}", leg.ice_pwd)
    assert leg.ice_ufrag != other.ice_ufrag and leg.ice_pwd != other.ice_pwd
    assert 0 <= leg.ssrc < 2**32
    assert len(base64.b64decode(leg.sdes_key_b64, validate=True)) == 30
    assert leg.fingerprint == engine.certificate.fingerprint == DtlsCertificate.default().fingerprint
    assert engine.get("wacid.A").local == leg and engine.get("nope") is None
    assert len(engine) == 2


def test_a_new_legs_local_media_is_the_one_its_fields_make_and_its_stream_id_a_uuid4() -> None:
    """MediaLeg.create fills LocalMedia's fields at once and writes the a=msid UUID itself: the same object
    (equal, same hash, same document in the same order) as LocalMedia's own __init__ makes, and the text
    the uuid module writes for those random bytes."""
    from wacall.domain.sdp import LocalMedia
    from wacall.media.leg import _uuid4
    for host6, port6 in ((None, None), ("::1", 40002)):
        local = MediaLeg.create("wacid.A", host="127.0.0.1", port=40000, fingerprint="AB:CD", host6=host6,
                                port6=port6).local
        made = LocalMedia(**local.to_doc())
        assert local == made and hash(local) == hash(made) and local.to_doc() == made.to_doc()
        assert list(local.to_doc()) == list(made.to_doc()) and LocalMedia.from_doc(local.to_doc()) == local
        with pytest.raises(AttributeError):               # still frozen
            local.port = 1  # type: ignore[misc]
    for random16 in [bytes(16), b"\xff" * 16] + [os.urandom(16) for _ in range(2000)]:
        assert _uuid4(random16) == str(uuid.UUID(bytes=random16, version=4))


async def test_many_legs_cost_no_descriptors(engine: MediaEngine) -> None:
    await engine.allocate("first")
    before = len(list(__import__("pathlib").Path("/proc/self/fd").iterdir()))
    for i in range(300):
        await engine.allocate(f"wacid.{i}")
    after = len(list(__import__("pathlib").Path("/proc/self/fd").iterdir()))
    assert after - before < 5


async def test_engine_uses_given_certificate() -> None:
    cert = DtlsCertificate.generate()
    eng = MediaEngine(certificate=cert)
    try:
        leg = await eng.allocate("c")
        assert leg.fingerprint == cert.fingerprint
        assert f"a=fingerprint:sha-256 {cert.fingerprint}\r\n" in build_meta_offer(leg)
        again = DtlsCertificate.from_pem(cert.cert_pem, cert.key_pem)
        assert again.fingerprint == cert.fingerprint
    finally:
        await eng.close()


async def test_allocate_is_idempotent_per_call(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    assert await engine.allocate("wacid.A") == leg                      # the same leg, as a value


async def test_datagrams_reach_a_leg_by_ufrag_then_by_validated_address(engine: MediaEngine) -> None:
    await engine.allocate("wacid.A")
    await engine.allocate("wacid.B")
    leg, other = engine.get("wacid.A"), engine.get("wacid.B")      # the relay's legs, with their counters
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as business:
        business.bind(("127.0.0.1", 0))
        business.sendto(b"\x16\xfe\xfd" + bytes(40), ("127.0.0.1", leg.port))   # DTLS-looking, unvalidated
        business.sendto(b"\x80" + bytes(171), ("127.0.0.1", leg.port))          # RTP-looking, unvalidated
        await _wait_for(lambda: engine.ports.stats["unknown_source"] == 2)
        assert leg.packets_received == 0 and other.packets_received == 0
        business.sendto(_check(leg), ("127.0.0.1", leg.port))
        response = (await _recv(business))
        assert response[:2] == b"\x01\x01"                                       # Binding success
        await _wait_for(lambda: leg.packets_received == 1)
        business.sendto(b"hello", ("127.0.0.1", leg.port))                      # now from a validated address
        await _wait_for(lambda: leg.packets_received == 2)
        assert leg.bytes_received == len(_check(leg)) + 5
        assert leg.last_remote_addr == business.getsockname() and other.packets_received == 0
        assert engine.endpoint("wacid.A").remote == business.getsockname()
        view = await engine.view("wacid.A")
        assert view["junk_datagrams"] == 1


async def test_a_check_with_the_wrong_password_validates_nothing(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    forged = binding_request(f"{leg.ice_ufrag}:x", priority=1, controlling=7, use_candidate=True).encode(b"guess")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.sendto(forged, ("127.0.0.1", leg.port))
        assert (await _recv(stranger))[:2] == b"\x01\x11"                            # 401 error response
        stranger.sendto(b"\x16\xfe\xfd" + bytes(40), ("127.0.0.1", leg.port))
        await _wait_for(lambda: engine.ports.stats["unknown_source"] == 1)
    assert engine.endpoint("wacid.A").remote is None


async def test_release_stops_routing_and_keeps_the_shared_port(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    keep = await engine.allocate("wacid.B")
    engine.release("wacid.A")
    engine.release("wacid.A")
    engine.release("never-allocated")
    assert engine.get("wacid.A") is None and engine.get("wacid.B").local == keep
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as business:
        business.bind(("127.0.0.1", 0))
        business.sendto(_check(leg), ("127.0.0.1", leg.port))
        await _wait_for(lambda: engine.ports.stats["unknown_ufrag"] == 1)
    assert engine.get("wacid.B").packets_received == 0
    again = await engine.allocate("wacid.A")
    assert again is not leg and again.port == leg.port and again.ice_ufrag != leg.ice_ufrag


async def test_close_frees_the_port_and_restore_takes_it_back() -> None:
    eng = MediaEngine()
    leg = await eng.allocate("wacid.A")
    await eng.close()
    assert len(eng) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", leg.port))                                       # really closed
    restarted = MediaEngine()
    try:
        assert await restarted.restore("wacid.A", leg.to_doc(), {}, negotiated=None, user_audio="silence", user_is_caller=True,
                                       connected_at=None)
        back = restarted.get("wacid.A")
        assert (back.port, back.ice_ufrag, back.ice_pwd, back.ssrc) == (leg.port, leg.ice_ufrag, leg.ice_pwd, leg.ssrc)
        assert (await restarted.allocate("wacid.new")).port == leg.port          # new calls keep the port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as business:
            business.bind(("127.0.0.1", 0))
            business.sendto(_check(leg), ("127.0.0.1", leg.port))
            assert (await _recv(business))[:2] == b"\x01\x01"                         # same password still works
    finally:
        await restarted.close()


class Reporter:
    """A platform stand-in: what the relay reports, on a clock the test moves."""

    def __init__(self) -> None:
        self.now_value = 1000.0
        self.events: list[tuple] = []

    def note(self, call_id, kind, **data):
        self.events.append(("note", kind, data))

    def ended(self, call_id, fact, reason):
        self.events.append(("ended", fact, reason))

    def persist(self, call_id, state):
        pass

    def now(self):
        return self.now_value

    def timeouts(self):
        return 20.0, 30.0


async def test_restore_on_a_taken_port_keeps_a_dead_leg_whose_timeout_fires() -> None:
    reporter = Reporter()
    ended = reporter.events
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        leg = MediaLeg.create("wacid.A", port=squatter.getsockname()[1],
                              fingerprint=DtlsCertificate.default().fingerprint)
        eng = MediaEngine(reporter=reporter)
        try:
            ok = await eng.restore("wacid.A", leg.to_doc(), {}, negotiated=None, user_audio="silence", user_is_caller=True,
                                   connected_at=990.0)
            assert not ok
            assert any(e[:2] == ("note", "media_not_restored") and "taken" in e[2]["reason"] for e in ended)
            eng.check_timeouts()
            assert not [e for e in ended if e[0] == "ended"]
            reporter.now_value += 30.0
            eng.check_timeouts()
            assert [e for e in ended if e[0] == "ended"][0][1] == MediaFact.SILENCE         # 138021 (domain/ends)
            assert (await eng.allocate("wacid.B")).port != leg.port                # new calls still work
        finally:
            await eng.close()


async def test_many_calls_on_a_taken_port_wait_for_it_once() -> None:
    """A restart with many calls on a port someone else holds tries (and waits for) the port once, not
    once per call: a thousand calls must not keep wacall from starting for an hour."""
    reporter = Reporter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        eng = MediaEngine(reporter=reporter)
        binds: list[int] = []
        bind = eng.ports.bind

        async def counted(host, bound_port=0, **kwargs):
            binds.append(bound_port)
            return await bind(host, bound_port, **kwargs)

        eng.ports.bind = counted
        try:
            for i in range(3):
                leg = MediaLeg.create(f"wacid.{i}", port=port, fingerprint=DtlsCertificate.default().fingerprint)
                assert not await eng.restore(leg.call_id, leg.to_doc(), {}, negotiated=None, user_audio="silence", user_is_caller=True,
                                             connected_at=990.0)
            assert binds == [port]
            lost = [e[2]["reason"] for e in reporter.events if e[:2] == ("note", "media_not_restored")]
            assert len(lost) == 3 and all("taken" in reason for reason in lost)
        finally:
            await eng.close()


async def test_a_saved_state_the_relay_cannot_use_leaves_a_dead_leg_whose_timeout_fires() -> None:
    """A call record whose media state cannot be used does not stop the start: the leg carries nothing,
    the timeline says why, and the user's phone hangs up after its silence timeout."""
    reporter = Reporter()
    eng = MediaEngine(reporter=reporter)
    try:
        leg = await eng.allocate("wacid.A")
        eng.release("wacid.A")
        ok = await eng.restore("wacid.A", leg.to_doc(), {"remote": ["127.0.0.1", "not a port"]}, negotiated=None,
                               user_audio="silence", user_is_caller=True,
                               connected_at=990.0)
        assert not ok
        lost = next(e[2] for e in reporter.events if e[:2] == ("note", "media_not_restored"))
        assert "could not be used" in lost["reason"]
        assert eng.endpoint("wacid.A").view()["alive"] is False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as business:
            business.bind(("127.0.0.1", 0))
            business.sendto(_check(leg), ("127.0.0.1", leg.port))             # nothing routes to it any more
            await _wait_for(lambda: eng.ports.stats["unknown_ufrag"] == 1)
        reporter.now_value += 30.0
        eng.check_timeouts()
        assert [e[1] for e in reporter.events if e[0] == "ended"] == [MediaFact.SILENCE]
    finally:
        await eng.close()


async def test_ipv6_candidate_comes_back_after_a_failed_bind() -> None:
    eng = MediaEngine(host6="::1")
    eng.host6 = "::bad"            # an address that cannot be bound: the IPv6 candidate is missing for now
    try:
        leg = await eng.allocate("wacid.A")
        assert leg.port6 is None
        eng.host6, eng._ipv6_retry_at = "::1", 0.0
        leg = await eng.allocate("wacid.B")
        assert leg.host6 == "::1" and leg.port6
    finally:
        await eng.close()


async def test_aiortc_accepts_meta_offer_and_answers_validly(engine: MediaEngine) -> None:
    import aiortc  # installed by the test extras; never skipped
    leg = await engine.allocate("wacid.UIC")
    offer = build_meta_offer(leg)
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        # aiortc already emits CRLF line endings, so its SDP goes to the validator unchanged.
        sd = validate_business_sdp(answer, role="answer")
        audio = sd.audio
        assert audio is not None
        # aiortc sees a=ice-lite, becomes ICE controlling and DTLS client, as Meta asks.
        assert audio.attribute("setup") == "active"
        assert audio.find_codec("opus", 48000, 2) == 111
        assert audio.attribute("mid") == "audio"
    finally:
        await pc.close()


async def test_media_workers_restore_a_configured_port_on_the_worker_it_belongs_to() -> None:
    """With ``media.port`` set, worker i binds port + i for its new calls: a call restored on port + 2
    goes to worker 2 (any other worker would take worker 2's port, and worker 2 could never allocate
    again), and calls of one old port stay together."""
    from types import SimpleNamespace

    from wacall.media.workers import MediaWorkers, _Worker

    workers = MediaWorkers(3, port=40000)
    workers.workers = [_Worker(i, SimpleNamespace(stdin=None)) for i in range(3)]   # no processes needed
    asked: list[tuple[int, int]] = []

    async def ask(worker, message):
        asked.append((worker.index, message["leg"]["port"]))
        return True

    workers._ask = ask
    for call_id, port in (("wacid.A", 40002), ("wacid.B", 40002), ("wacid.C", 40000), ("wacid.D", 51234)):
        await workers.restore(call_id, {"port": port}, {})
    assert asked[:3] == [(2, 40002), (2, 40002), (0, 40000)]
    assert asked[3][1] == 51234                      # a port no worker is configured for: the least loaded
    assert workers.owner["wacid.A"].index == 2 and workers.owner["wacid.C"].index == 0


async def test_a_crashed_media_worker_is_replaced_once_however_many_calls_ask() -> None:
    """Calls allocated while a crashed worker is being replaced wait for that one replacement instead of each
    starting a process of their own (which nobody would ever stop)."""
    from types import SimpleNamespace

    from wacall.media.workers import MediaWorkers, _Worker

    workers = MediaWorkers(2)
    workers.workers = [_Worker(i, SimpleNamespace(stdin=None)) for i in range(2)]   # no processes needed
    workers.workers[1].alive = False
    spawned: list[int] = []

    async def spawn(index):
        spawned.append(index)
        await asyncio.sleep(0.01)                    # starting a process takes a while
        return _Worker(index, SimpleNamespace(stdin=None))

    workers._spawn = spawn
    chosen = await asyncio.gather(*(workers._least_loaded() for _ in range(5)))
    assert spawned == [1]
    assert all(worker.alive for worker in chosen) and workers.workers[1].alive


async def test_concurrent_binds_of_one_port_share_the_socket() -> None:
    """A restore retrying its old port while a new call's allocate binds the same (configured) port gets
    the socket the other one bound, instead of waiting for itself and giving up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ports = Ports()
    try:
        first, second = await asyncio.gather(ports.bind("127.0.0.1", port, retry=3.0),
                                             ports.bind("127.0.0.1", port, retry=3.0))
        assert first is second and first.port == port
    finally:
        ports.close()


async def test_the_ticker_sends_frames_once_the_business_sent_media_and_the_recording_opens_with_it(tmp_path) -> None:
    """A configured leg has nothing to send before the business's first media (Meta: the business sends
    first): the 20 ms ticker does not run for it, and its recording is not opened. The business's first
    SRTP packet starts both: the user's phone is heard, recorded and talks back."""
    from wacall.domain.sdp import Negotiated
    from wacall.media.recording import Recordings
    from wacall.media.rtp import RTP_HEADER
    from wacall.media.srtp import SrtpContext

    eng = MediaEngine(recordings=Recordings(tmp_path))
    business = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    business.bind(("127.0.0.1", 0))
    try:
        local = await eng.allocate("wacid.T1")
        key = bytes(range(30))
        eng.configure("wacid.T1", Negotiated(
            key_exchange="SDES", remote_crypto="1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(key).decode(),
            remote_addr=business.getsockname(), payload_types={"opus": 111, "telephone-event": 126}), "silence", True)
        endpoint = eng.endpoint("wacid.T1")
        await asyncio.sleep(0.05)
        assert not eng._framing and endpoint.packets_sent == 0 and endpoint.phone.recording is None
        srtp = SrtpContext("AES_CM_128_HMAC_SHA1_80", key, base64.b64decode(local.sdes_key_b64))
        business.sendto(srtp.protect(RTP_HEADER.pack(0x80, 111, 1, 960, 0x1234) + b"\xf8\xff\xfe"), (local.host, local.port))
        await _wait_for(lambda: endpoint.business_sent_first)
        assert eng._framing and endpoint.phone.recording is not None and endpoint.phone.recording.packets == 1
        await _wait_for(lambda: endpoint.packets_sent > 0, timeout=5.0)
        assert srtp.unprotect(await _recv(business))[1] & 0x7F == 111        # the user talks back
        eng.release("wacid.T1")
        assert (tmp_path / "wacid.T1.rec").exists()                          # what the user heard is on disk
    finally:
        business.close()
        await eng.close()


async def test_a_leg_without_media_makes_nothing_media_needs_and_views_as_one_that_had(engine: MediaEngine) -> None:
    """Allocated, configured (SDES), connected and released without a packet (the SIP flow the bench runs): the
    ICE-lite agent, the user's RTP stream, the receive statistics and the phone's packet ring are never made,
    and the leg's view (its final statistics on the timeline) is the one it shows with them made, still empty."""
    from wacall.domain.sdp import Negotiated

    local = await engine.allocate("wacid.Q1")
    engine.configure("wacid.Q1", Negotiated(
        key_exchange="SDES", remote_crypto="1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(30)).decode(),
        remote_addr=("127.0.0.1", 9), payload_types={"opus": 111, "telephone-event": 101}), "silence", False)
    engine.call_connected("wacid.Q1", 100.0)
    endpoint = engine.endpoint("wacid.Q1")
    assert (endpoint.ice, endpoint.stream, endpoint.stats, endpoint.phone.recent) == (None, None, None, None)
    quiet = await engine.view("wacid.Q1")
    assert quiet["received"]["packets"] == 0 and quiet["sent"]["ssrc"] == local.ssrc and not quiet["ice"]["connected"]
    endpoint._ice(), endpoint._start_stream(), endpoint._receive_stats()     # what media would have made
    assert endpoint.stats.event_payload_types == frozenset({101}) and endpoint.stream.ssrc == local.ssrc
    assert await engine.view("wacid.Q1") == quiet
    engine.release("wacid.Q1")
    assert engine.finished["wacid.Q1"] == quiet


async def test_release_forgets_the_addresses_a_leg_learned_and_only_those_it_still_owns(engine: MediaEngine) -> None:
    """Ports.remove drops the validated addresses the released leg learned (each leg's own list, no walk over
    every call's): an address another leg learned since stays routed to that leg, and the other leg's own
    addresses stay too."""
    await engine.allocate("wacid.A"), await engine.allocate("wacid.B")
    a, b = engine.endpoint("wacid.A"), engine.endpoint("wacid.B")
    ports = engine.ports
    ports.learn(("127.0.0.1", 1001), a)
    ports.learn(("127.0.0.1", 1002), a)
    ports.learn(("127.0.0.1", 1002), b)             # the business's address moved to the other call
    ports.learn(("127.0.0.1", 1003), b)
    ports.learn(("127.0.0.1", 1003), b)             # (learned again: listed once)
    engine.release("wacid.A")
    assert ports.by_addr == {("127.0.0.1", 1002): b, ("127.0.0.1", 1003): b}
    engine.release("wacid.B")
    assert ports.by_addr == {} and ports.learned == {}
