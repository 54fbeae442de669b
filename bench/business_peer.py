"""A lean business-side load generator for wacall: many user-initiated calls with real media.

Every call takes the full WebRTC path a business's media server takes against Meta's relay:

* signalling over wacall's HTTP APIs: the user calls (control API), the business reads Meta's SDP
  offer, answers it (``pre_accept`` then ``accept`` on ``POST /v23.0/{pnid}/calls``);
* ICE as the *controlling full agent* (Meta's relay is ICE-lite): STUN binding requests with
  USERNAME ``meta_ufrag:our_ufrag``, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY
  keyed with Meta's ``ice-pwd`` and FINGERPRINT; the success response is checked; a consent check
  (RFC 7675) every ~5 s afterwards;
* DTLS 1.2 as the client (``a=setup:active``) with the call's own certificate, whose sha-256
  fingerprint is in the answer, checking Meta's fingerprint; DTLS-SRTP keys from the handshake;
* SRTP: pre-encoded 20 ms Opus (``wacall.media.playout.PreEncodedAudio``) sent every 20 ms on one
  SSRC, an RTCP sender report every 5 s; everything received is SRTP-authenticated and decrypted,
  and the user's RTP sequence numbers are tracked (gaps = loss).

One process runs many calls: one UDP socket per call and one asyncio 20 ms ticker for all of
them. Each tick drains every readable socket (epoll, zero timeout) and then sends one frame per
call; nothing wakes the process between ticks. The per-packet work (RTP header, libsrtp
protect/unprotect, send/recv, sequence tracking) runs in C (bench/fastpath.c, compiled with the
system's ``cc`` on first use and loaded with ctypes). Handshakes, consent checks, RTCP and
signalling stay in Python. ``engine="python"`` does the same in pure Python (also the fallback
without a compiler). :class:`WorkerHandle` runs such a process under ``multiprocessing``;
``bench/media_calls.py`` drives them.

Stand-alone use (starts its own wacall unless ``--graph-url`` is given)::

    .venv/bin/python bench/business_peer.py --calls 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pylibsrtp import Error as SrtpLibError, Policy, Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import WorkerProcess, serve  # noqa: E402

if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from wacall.media.leg import ice_string
from wacall.media.playout import PreEncodedAudio  # noqa: E402
from wacall.media.certificate import DtlsCertificate  # noqa: E402
from wacall.media.dtls import DtlsSrtpSession  # noqa: E402
from wacall.media.rtcp import build_compound, ntp_timestamp  # noqa: E402
from wacall.media.stun import StunClass, binding_request, check_integrity, peek_header  # noqa: E402

TICK = 0.020
SAMPLES_PER_FRAME = 960            # 20 ms at 48 kHz
OPUS_PT = 111
HOST_PRIORITY = 2130706431         # type preference 126, local 65535, component 1 (RFC 8445 5.1.2.1)
ICE_RETRANSMIT = 0.1
CONSENT_INTERVAL = 5.0
RTCP_INTERVAL = 5.0
MAX_CATCH_UP = 10                  # frames per call the ticker sends at once when it fell behind
GRAPH_VERSION = "v23.0"


# -- SDP ---------------------------------------------------------------------------------------------

@dataclass
class MetaOffer:
    ufrag: str
    pwd: str
    fingerprint: str
    host: str
    port: int
    opus_pt: int
    te_pt: int


def parse_meta_offer(sdp: str) -> MetaOffer:
    """What the business needs from Meta's offer (the relay's candidate, ICE and DTLS identity)."""
    ufrag = pwd = fingerprint = None
    host, port = "127.0.0.1", 0
    cand: tuple[str, int] | None = None
    opus_pt, te_pt = OPUS_PT, 126
    for line in sdp.split("\r\n"):
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[12:]
        elif line.startswith("a=ice-pwd:"):
            pwd = line[10:]
        elif line.startswith("a=fingerprint:"):
            fingerprint = line[14:]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
        elif line.startswith("c=IN IP4 "):
            host = line[9:].strip()
        elif line.startswith("a=candidate:") and cand is None:
            parts = line.split()
            if len(parts) >= 8 and parts[2].lower() == "udp" and parts[7] == "host":
                cand = (parts[4], int(parts[5]))
        elif line.startswith("a=rtpmap:"):
            pt, _, codec = line[9:].partition(" ")
            if codec.lower().startswith("opus/48000"):
                opus_pt = int(pt)
            elif codec.lower().startswith("telephone-event/8000"):
                te_pt = int(pt)
    if not (ufrag and pwd and fingerprint):
        raise ValueError("Meta's offer has no ICE credentials or fingerprint (SDES number?)")
    if cand is not None:
        host, port = cand
    return MetaOffer(ufrag, pwd, fingerprint, host, port, opus_pt, te_pt)


def build_answer(*, port: int, ufrag: str, pwd: str, fingerprint: str, ssrc: int, opus_pt: int = OPUS_PT,
                 te_pt: int = 126, session_id: int | None = None) -> str:
    """The business's answer: active DTLS client, one loopback host candidate, Opus + telephone-event."""
    sid = session_id if session_id is not None else random.getrandbits(62)
    lines = [
        "v=0",
        f"o=- {sid} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE audio",
        "a=msid-semantic: WMS bench",
        f"m=audio {port} UDP/TLS/RTP/SAVPF {opus_pt} {te_pt}",
        "c=IN IP4 127.0.0.1",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp {HOST_PRIORITY} 127.0.0.1 {port} typ host generation 0",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:active",
        "a=mid:audio",
        "a=sendrecv",
        "a=rtcp-mux",
        f"a=rtpmap:{opus_pt} opus/48000/2",
        f"a=fmtp:{opus_pt} minptime=10;useinbandfec=1",
        f"a=rtpmap:{te_pt} telephone-event/8000",
        f"a=fmtp:{te_pt} 0-15",
        "a=ptime:20",
        f"a=ssrc:{ssrc} cname:bench-business",
    ]
    return "\r\n".join(lines) + "\r\n"


# -- the C hot path ----------------------------------------------------------------------------------------

_FIELDS = ("fd", "active", "sending", "tx", "rx", "ssrc", "seq", "ts", "frame", "sent", "octets", "send_errors",
           "rx_packets", "rx_rtcp", "rx_bad", "rx_started", "rx_base", "rx_max", "payload_type")


class FastPath:
    """bench/fastpath.c compiled with the system's C compiler (cached in bench/.build/) and loaded
    with ctypes; libsrtp's protect/unprotect come from pylibsrtp's own binding, so the sessions
    pylibsrtp creates from the DTLS keys are used as they are."""

    def __init__(self, capacity: int = 8192, fd_limit: int = 1 << 16) -> None:
        import ctypes
        import hashlib
        import subprocess
        from pylibsrtp import _binding

        src = Path(__file__).with_name("fastpath.c")
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
        build = Path(__file__).with_name(".build")
        build.mkdir(exist_ok=True)
        lib_path = build / f"fastpath-{digest}.so"
        if not lib_path.exists():
            tmp = lib_path.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src)], check=True,
                           capture_output=True)
            os.replace(tmp, lib_path)
        self.ctypes = ctypes
        lib = ctypes.CDLL(str(lib_path))
        ffi, blib = _binding.ffi, _binding.lib
        self.ffi = ffi

        def addr(name: str) -> int:
            return int(ffi.cast("uintptr_t", ffi.addressof(blib, name)))

        lib.fp_init.argtypes = [ctypes.c_void_p] * 3
        lib.fp_init(addr("srtp_protect"), addr("srtp_unprotect"), addr("srtp_unprotect_rtcp"))

        class Call(ctypes.Structure):
            _fields_ = [(name, ctypes.c_int64) for name in _FIELDS]

        self.Call = Call
        self.capacity = capacity
        self.calls = (Call * capacity)()
        self.used = 0
        self.free: list[int] = []                 # released rows, reused (a soak places more calls than rows)
        self.fd_index = (ctypes.c_int32 * fd_limit)(*([-1] * fd_limit))
        self.fd_limit = fd_limit
        self.out_cap = 1 << 20
        self.out = (ctypes.c_uint8 * self.out_cap)()
        self.meta_cap = 512
        self.meta = (ctypes.c_int32 * (2 * self.meta_cap))()
        self.media_count = ctypes.c_int64(0)
        lib.fp_set_frames.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.fp_send.argtypes = [ctypes.POINTER(Call), ctypes.c_int, ctypes.c_int]
        lib.fp_send.restype = ctypes.c_int64
        lib.fp_drain.argtypes = [ctypes.c_int, ctypes.POINTER(Call), ctypes.POINTER(ctypes.c_int32), ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_uint8), ctypes.c_int, ctypes.POINTER(ctypes.c_int32),
                                 ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
        self.lib = lib

    def set_frames(self, frames: list[bytes]) -> None:
        lengths = (self.ctypes.c_int * len(frames))(*[len(f) for f in frames])
        self.lib.fp_set_frames(b"".join(frames), lengths, len(frames))

    def allocate(self, fd: int) -> int:
        if (not self.free and self.used >= self.capacity) or fd >= self.fd_limit:
            raise RuntimeError("fast path call table is full")
        if self.free:
            idx = self.free.pop()
            self.ctypes.memset(self.ctypes.addressof(self.calls[idx]), 0, self.ctypes.sizeof(self.Call))
        else:
            idx = self.used
            self.used += 1
        self.calls[idx].fd = fd
        self.fd_index[fd] = idx
        return idx

    def release(self, idx: int, fd: int) -> None:
        c = self.calls[idx]
        c.active = c.sending = 0
        if 0 <= fd < self.fd_limit and self.fd_index[fd] == idx:
            self.fd_index[fd] = -1
        self.free.append(idx)

    def srtp_pointer(self, session: Session) -> int:
        return int(self.ffi.cast("uintptr_t", session._srtp[0]))

    def send(self, due: int) -> int:
        return self.lib.fp_send(self.calls, self.used, due)

    def drain(self, epfd: int) -> list[tuple[int, bytes]]:
        n = self.lib.fp_drain(epfd, self.calls, self.fd_index, self.fd_limit, self.out, self.out_cap, self.meta,
                              self.meta_cap, self.ctypes.byref(self.media_count))
        if not n:
            return []
        meta = self.meta
        raw = self.ctypes.string_at(self.out, sum(meta[2 * i + 1] for i in range(n)))
        handed, off = [], 0
        for i in range(n):
            length = meta[2 * i + 1]
            handed.append((meta[2 * i], raw[off:off + length]))
            off += length
        return handed


# -- one call's media ----------------------------------------------------------------------------------

class BusinessCall:
    """The business end of one call: socket, ICE (controlling), DTLS client, SRTP, RTP counters."""

    __slots__ = ("peer", "wa_id", "call_id", "sock", "fd", "port", "send", "offer", "ufrag", "pwd", "cert",
                 "dtls", "tx", "rx_session", "state", "tie_breaker", "ice_txid", "ice_sent_at", "ice_attempts",
                 "consent_at", "dtls_timer", "started_at", "media_at", "connected_at", "sending", "ssrc", "seq", "ts",
                 "frame", "sent", "octets", "rtcp_at", "rx", "rx_rtcp", "rx_base", "rx_max", "rx_bad", "error",
                 "ready", "idx", "c")

    def __init__(self, peer: "PeerProcess", wa_id: str, cert: DtlsCertificate) -> None:
        self.peer = peer
        self.wa_id = wa_id
        self.call_id: str | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.fd = self.sock.fileno()
        self.port = self.sock.getsockname()[1]
        self.send = self.sock.send
        self.offer: MetaOffer | None = None
        self.ufrag, self.pwd = ice_string(8), ice_string(24)
        self.cert = cert
        self.dtls: DtlsSrtpSession | None = None
        self.tx = None                         # libsrtp sessions, keyed by the DTLS handshake
        self.rx_session = None
        self.state = "new"                     # new -> ice -> dtls -> media | failed | closed
        self.tie_breaker = random.getrandbits(64)
        self.ice_txid = b""
        self.ice_sent_at = 0.0
        self.ice_attempts = 0
        self.consent_at = 0.0
        self.dtls_timer: asyncio.TimerHandle | None = None
        self.started_at = time.monotonic()
        self.media_at: float | None = None      # the first ICE check (ICE + DTLS set-up starts)
        self.connected_at: float | None = None
        self.sending = False
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.frame = random.randrange(1 << 16)
        self.sent = 0
        self.octets = 0
        self.rtcp_at = 0.0
        self.rx = 0
        self.rx_rtcp = 0
        self.rx_base: int | None = None
        self.rx_max = 0
        self.rx_bad = 0
        self.error: str | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.idx = -1
        self.c = None                          # this call's row in the C call table
        if peer.fast is not None:
            self.idx = peer.fast.allocate(self.fd)
            self.c = peer.fast.calls[self.idx]

    def answer_sdp(self) -> str:
        assert self.offer is not None
        return build_answer(port=self.port, ufrag=self.ufrag, pwd=self.pwd, fingerprint=self.cert.fingerprint,
                            ssrc=self.ssrc, opus_pt=self.offer.opus_pt, te_pt=self.offer.te_pt)

    def start_media(self, offer: MetaOffer) -> None:
        """Once the answer is in: connect the socket to the relay's candidate and start ICE checks."""
        self.offer = offer
        self.sock.connect((offer.host, offer.port))
        self.dtls = DtlsSrtpSession(self.cert, role="client", remote_fingerprint=offer.fingerprint)
        self.state = "ice"
        self.media_at = time.monotonic()
        self.send_check(use_candidate=True)

    def _send(self, data: bytes) -> None:
        try:
            self.send(data)
        except OSError:
            self.peer.send_errors += 1

    # -- ICE (controlling full agent, aggressive nomination: every check carries USE-CANDIDATE)
    def send_check(self, use_candidate: bool = True) -> None:
        msg = binding_request(f"{self.offer.ufrag}:{self.ufrag}", priority=HOST_PRIORITY,
                              controlling=self.tie_breaker, use_candidate=use_candidate)
        self.ice_txid = msg.transaction_id
        self.ice_sent_at = time.monotonic()
        self.ice_attempts += 1
        self._send(msg.encode(self.offer.pwd.encode()))

    def on_stun(self, data: bytes) -> None:
        head = peek_header(data)
        if head is None or head[2] != self.ice_txid:
            return
        if head[1] == StunClass.SUCCESS and check_integrity(data, self.offer.pwd.encode()):
            self.ice_txid = b""
            self.consent_at = time.monotonic()
            if self.state == "ice":
                self.state = "dtls"
                self._dtls_out(self.dtls.start())
        elif head[1] == StunClass.ERROR:
            self.fail("ICE check refused (error response)")

    # -- DTLS (client)
    def _dtls_out(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            self._send(d)
        if self.dtls_timer:
            self.dtls_timer.cancel()
            self.dtls_timer = None
        if self.dtls is not None and self.dtls.state == "connecting":
            delay = self.dtls.timeout()
            if delay is not None:
                self.dtls_timer = asyncio.get_running_loop().call_later(max(delay, 0.01), self._dtls_timeout)

    def _dtls_timeout(self) -> None:
        self.dtls_timer = None
        if self.dtls is not None and self.state == "dtls":
            self._dtls_out(self.dtls.handle_timeout())
            if self.dtls.state == "failed":
                self.fail(f"DTLS failed: {self.dtls.failure_reason}")

    def on_dtls(self, data: bytes) -> None:
        if self.dtls is None:
            return
        self._dtls_out(self.dtls.feed(data))
        if self.dtls.state == "connected" and self.tx is None:
            profile = self.dtls.srtp_profile
            self.tx = _srtp_session(profile, self.dtls.local_key_salt, Policy.SSRC_ANY_OUTBOUND)
            self.rx_session = _srtp_session(profile, self.dtls.remote_key_salt, Policy.SSRC_ANY_INBOUND)
            if self.c is not None:             # hand the media to the C path
                c, fast = self.c, self.peer.fast
                c.tx, c.rx = fast.srtp_pointer(self.tx), fast.srtp_pointer(self.rx_session)
                c.ssrc, c.seq, c.ts, c.frame = self.ssrc, self.seq, self.ts, self.frame
                c.payload_type = OPUS_PT
                c.active = 1
            self.connected_at = time.monotonic()
            self.state = "media"
            if not self.ready.done():
                self.ready.set_result(True)
        elif self.dtls.state == "failed":
            self.fail(f"DTLS failed: {self.dtls.failure_reason}")

    def fail(self, reason: str) -> None:
        if self.state in ("failed", "closed"):
            return
        self.state = "failed"
        self.error = reason
        if not self.ready.done():
            self.ready.set_result(False)

    # -- SRTP in (the hot path: called for every datagram from the relay once media is up)
    def on_srtp(self, data: bytes) -> None:
        rx = self.rx_session
        if rx is None:
            return
        try:
            if 192 <= data[1] <= 223:              # RTCP (RFC 5761)
                rx.unprotect_rtcp(data)
                self.rx_rtcp += 1
                return
            plain = rx.unprotect(data)
        except (SrtpLibError, ValueError):
            self.rx_bad += 1
            return
        seq = (plain[2] << 8) | plain[3]
        if self.rx_base is None:
            self.rx_base = self.rx_max = seq
        else:
            d = (seq - self.rx_max) & 0xFFFF
            if d < 0x8000:
                self.rx_max += d
        self.rx += 1

    def start_sending(self) -> None:
        self.sending = True
        if self.c is not None:
            self.c.sending = 1

    def send_rtcp(self) -> None:
        c = self.c if self.c is not None else self
        report = build_compound(self.ssrc, "bench-business", now=time.monotonic(),
                                sender=(ntp_timestamp(time.time()), c.ts, c.sent, c.octets))
        self._send(self.tx.protect_rtcp(report))

    def counters(self) -> tuple:
        c = self.c
        if c is not None:
            expected = c.rx_max - c.rx_base + 1 if c.rx_started else 0
            return (c.sent + self.sent, c.rx_packets + self.rx, expected, c.rx_rtcp + self.rx_rtcp,
                    c.rx_bad + self.rx_bad)
        expected = 0 if self.rx_base is None else self.rx_max - self.rx_base + 1
        return (self.sent, self.rx, expected, self.rx_rtcp, self.rx_bad)

    def close(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self.c is not None:
            self.peer.fast.release(self.idx, self.fd)
            self.c = None
        if self.dtls_timer:
            self.dtls_timer.cancel()
        try:
            self.sock.close()
        except OSError:
            pass


def _srtp_session(profile, key_salt: bytes, ssrc_type: int) -> Session:
    policy = Policy(key=key_salt, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
    policy.window_size = 1024
    return Session(policy)


# -- one process's worth of calls ----------------------------------------------------------------------

class PeerProcess:
    """All the calls of one process: HTTP signalling, one epoll set, one 20 ms ticker.

    The ticker does all the media work: every 20 ms it drains every readable socket (epoll with a
    zero timeout, one ``recv`` per ready socket, repeated until nothing is ready), then sends one
    Opus frame per call (more if it woke late, up to MAX_CATCH_UP). Nothing wakes the process
    between ticks, so at N calls a tick costs about N recv + N send syscalls and no wake-ups.
    Handshake datagrams are handled the same way (at most 20 ms later than an event-driven peer).
    """

    def __init__(self, info: dict, *, audio: str = "tone:440", pre_accept: bool = True,
                 cert_per_call: bool = True, call_concurrency: int = 8, setup_timeout: float = 20.0,
                 engine: str = "c") -> None:
        self.info = info
        self.graph = info["graph_url"].rstrip("/")
        self.pnid = info["phone_number_id"]
        self.headers = {"Authorization": f"Bearer {info['access_token']}"}
        self.frames = PreEncodedAudio.get(audio).frames
        self.fast: FastPath | None = None
        self.engine = "python"
        if engine == "c":
            try:
                self.fast = FastPath()
                self.fast.set_frames(self.frames)
                self.engine = "c"
            except Exception as exc:           # no C compiler: the same logic in Python
                print(f"business_peer: C fast path unavailable ({exc}); using Python", file=sys.stderr)
        self.pre_accept = pre_accept
        self.cert_per_call = cert_per_call
        self.shared_cert = DtlsCertificate.generate()
        self.call_sem = asyncio.Semaphore(call_concurrency)
        self.setup_timeout = setup_timeout
        self.calls: dict[int, BusinessCall] = {}           # fd -> call
        self.ep = select.epoll()
        self.loop = asyncio.get_running_loop()
        self.session = None
        self.send_errors = 0
        self.ticks = 0
        self.late_ticks = 0
        self.skipped_frames = 0
        self.t_drain = 0.0
        self.t_send = 0.0
        self._ticker = self.loop.create_task(self.run_ticker_c() if self.fast else self.run_ticker())

    async def http(self):
        if self.session is None:
            import aiohttp
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                                 timeout=aiohttp.ClientTimeout(total=120))
        return self.session

    def drain(self) -> None:
        """Read every datagram waiting on any call's socket."""
        poll, calls = self.ep.poll, self.calls
        while True:
            events = poll(0)
            if not events:
                return
            for fd, _ in events:
                call = calls.get(fd)
                if call is None:
                    continue
                try:
                    data = call.sock.recv(2048)
                except OSError:            # EAGAIN, or ICMP port unreachable after the relay closed
                    continue
                if not data:
                    continue
                b = data[0]
                if 128 <= b <= 191:
                    call.on_srtp(data)
                elif 20 <= b <= 63:
                    call.on_dtls(data)
                elif b <= 3:
                    call.on_stun(data)

    async def run_ticker(self) -> None:
        start = time.monotonic()
        done = 0
        frames = self.frames
        n_frames = len(frames)
        pack = struct.Struct("!BBHII").pack
        clock = time.thread_time
        while True:
            c0 = clock()
            self.drain()
            c1 = clock()
            self.t_drain += c1 - c0
            now = time.monotonic()
            due = int((now - start) / TICK) + 1 - done
            if due > 1:
                self.late_ticks += 1
            if due > MAX_CATCH_UP:                 # fell far behind: skip, count what was not sent
                self.skipped_frames += (due - MAX_CATCH_UP) * sum(1 for c in self.calls.values() if c.sending)
                done += due - MAX_CATCH_UP
                due = MAX_CATCH_UP
            if due > 0:
                done += due
                self.ticks += due
                errors = 0
                for call in list(self.calls.values()):
                    if call.sending:
                        protect, send = call.tx.protect, call.send
                        for _ in range(due):
                            payload = frames[call.frame % n_frames]
                            call.frame += 1
                            seq = call.seq
                            try:
                                send(protect(pack(0x80, OPUS_PT if call.sent else 0x80 | OPUS_PT, seq, call.ts,
                                                  call.ssrc) + payload))
                            except OSError:
                                errors += 1
                            call.seq = (seq + 1) & 0xFFFF
                            call.ts = (call.ts + SAMPLES_PER_FRAME) & 0xFFFFFFFF
                            call.sent += 1
                            call.octets += len(payload)
                        if now - call.rtcp_at >= RTCP_INTERVAL:
                            call.rtcp_at = now
                            call.send_rtcp()
                    state = call.state
                    if state == "media":
                        if call.ice_txid:
                            if now - call.ice_sent_at > 2.0:
                                call.ice_txid = b""            # unanswered consent check: next one later
                        elif now - call.consent_at >= CONSENT_INTERVAL:
                            call.send_check(use_candidate=False)   # RFC 7675 consent freshness
                    elif state == "ice" and now - call.ice_sent_at >= ICE_RETRANSMIT:
                        if call.ice_attempts >= 100:
                            call.fail("ICE: no response to 100 checks")
                        else:
                            call.send_check(use_candidate=True)
                self.send_errors += errors
            self.t_send += clock() - c1
            await asyncio.sleep(max(0.0, start + done * TICK - time.monotonic()))

    def housekeeping(self, now: float) -> None:
        """ICE retransmissions, consent checks and RTCP sender reports (Python, a few per tick)."""
        for call in list(self.calls.values()):
            state = call.state
            if state == "media":
                if call.sending and now - call.rtcp_at >= RTCP_INTERVAL:
                    call.rtcp_at = now
                    call.send_rtcp()
                if call.ice_txid:
                    if now - call.ice_sent_at > 2.0:
                        call.ice_txid = b""
                elif now - call.consent_at >= CONSENT_INTERVAL:
                    call.send_check(use_candidate=False)   # RFC 7675 consent freshness
            elif state == "ice" and now - call.ice_sent_at >= ICE_RETRANSMIT:
                if call.ice_attempts >= 100:
                    call.fail("ICE: no response to 100 checks")
                else:
                    call.send_check(use_candidate=True)

    async def run_ticker_c(self) -> None:
        """The ticker with the C hot path: drain and send in C, handshakes and housekeeping in Python."""
        fast, epfd = self.fast, self.ep.fileno()
        start = time.monotonic()
        done = 0
        clock = time.thread_time
        while True:
            c0 = clock()
            for idx, data in fast.drain(epfd):
                call = self.calls.get(fast.calls[idx].fd)
                if call is None or call.idx != idx:
                    continue
                b = data[0]
                if 20 <= b <= 63:
                    call.on_dtls(data)
                elif b <= 3:
                    call.on_stun(data)
                elif 128 <= b <= 191:
                    call.on_srtp(data)               # media that raced the keys into the C table
            c1 = clock()
            self.t_drain += c1 - c0
            now = time.monotonic()
            due = int((now - start) / TICK) + 1 - done
            if due > 1:
                self.late_ticks += 1
            if due > MAX_CATCH_UP:
                self.skipped_frames += (due - MAX_CATCH_UP) * sum(1 for c in self.calls.values() if c.sending)
                done += due - MAX_CATCH_UP
                due = MAX_CATCH_UP
            if due > 0:
                done += due
                self.ticks += due
                fast.send(due)
                if self.ticks % 5 < due:             # every ~100 ms
                    self.housekeeping(now)
            self.t_send += clock() - c1
            await asyncio.sleep(max(0.0, start + done * TICK - time.monotonic()))

    # -- one call's signalling
    async def _req(self, method: str, url: str, body: dict | None = None, graph: bool = False) -> dict:
        session = await self.http()
        async with session.request(method, url, json=body, headers=self.headers if graph else None) as r:
            data = await r.json(content_type=None)
            if r.status >= 300:
                raise RuntimeError(f"{method} {url.split('/', 3)[-1]} -> {r.status}: {json.dumps(data)[:300]}")
            return data

    async def place(self, wa_id: str) -> BusinessCall:
        async with self.call_sem:                        # a few calls at a time, each set up start to end
            cert = DtlsCertificate.generate() if self.cert_per_call else self.shared_cert
            call = BusinessCall(self, wa_id, cert)
            self.calls[call.fd] = call
            self.ep.register(call.fd, select.EPOLLIN)
            try:
                ctl = f"{self.graph}/_wacall"
                placed = await self._req("POST", f"{ctl}/users/{wa_id}/calls",
                                         {"to": self.pnid, "entry_point": "call_button"})
                call.call_id = placed["call_id"]
                offer = parse_meta_offer((await self._req("GET", f"{ctl}/calls/{call.call_id}"))["meta_sdp"])
                call.offer = offer
                session = {"sdp_type": "answer", "sdp": call.answer_sdp()}
                graph = f"{self.graph}/{GRAPH_VERSION}/{self.pnid}/calls"
                if self.pre_accept:
                    await self._req("POST", graph, {"messaging_product": "whatsapp", "call_id": call.call_id,
                                                    "action": "pre_accept", "session": session}, graph=True)
                    call.start_media(offer)              # the media connection comes up while we accept
                await self._req("POST", graph, {"messaging_product": "whatsapp", "call_id": call.call_id,
                                                "action": "accept", "session": session}, graph=True)
                if not self.pre_accept:
                    call.start_media(offer)
            except Exception as exc:
                call.fail(f"{type(exc).__name__}: {exc}")
        try:
            if await asyncio.wait_for(asyncio.shield(call.ready), self.setup_timeout):
                call.start_sending()                     # the business sends first (Meta's rule)
        except asyncio.TimeoutError:
            call.fail(f"media not up {self.setup_timeout:g} s after accept (state {call.state})")
        return call

    async def add(self, wa_ids: list[str]) -> dict:
        t0 = time.monotonic()
        results = await asyncio.gather(*(self.place(w) for w in wa_ids))
        ok = [c for c in results if c.state == "media"]
        failed = [(c.wa_id, c.error) for c in results if c.state != "media"]
        for c in results:
            if c.state != "media":
                self.remove(c)
        setup = sorted((c.connected_at - c.started_at) * 1000 for c in ok if c.connected_at)
        ice_dtls = sorted((c.connected_at - c.media_at) * 1000 for c in ok if c.connected_at and c.media_at)
        return {"ok": len(ok), "failed": failed[:20], "n_failed": len(failed),
                "call_ids": [c.call_id for c in ok], "seconds": time.monotonic() - t0,
                "setup_ms_median": setup[len(setup) // 2] if setup else None,
                "setup_ms_max": setup[-1] if setup else None,
                "ice_dtls_ms_median": ice_dtls[len(ice_dtls) // 2] if ice_dtls else None,
                "ice_dtls_ms_max": ice_dtls[-1] if ice_dtls else None}

    async def end(self, call_ids: list[str]) -> dict:
        """The business terminates these calls (Graph ``terminate``) and closes their media."""
        by_id = {c.call_id: c for c in self.calls.values()}
        failed = 0

        async def one(call_id: str) -> None:
            nonlocal failed
            try:
                await self._terminate(call_id)
            except Exception:
                failed += 1
            if (call := by_id.get(call_id)) is not None:
                self.remove(call)
        await asyncio.gather(*(one(c) for c in call_ids))
        return {"ended": len(call_ids) - failed, "failed": failed}

    async def _terminate(self, call_id: str) -> None:
        async with self.call_sem:
            await self._req("POST", f"{self.graph}/{GRAPH_VERSION}/{self.pnid}/calls",
                            {"messaging_product": "whatsapp", "call_id": call_id, "action": "terminate"}, graph=True)

    # -- a soak: many short calls, one after the other, at a steady rate
    def start_soak(self, wa_ids: list[str], total: int, rate: float, hold: float) -> None:
        self.soak_stats = {"started": 0, "up": 0, "failed": 0, "ended": 0, "terminate_failed": 0, "done": False,
                           "failures": [], "rx_packets": 0, "rx_expected": 0, "tx_packets": 0}
        self._soak_task = self.loop.create_task(self._soak(wa_ids, total, rate, hold))

    async def _soak(self, wa_ids: list[str], total: int, rate: float, hold: float) -> None:
        free: asyncio.Queue = asyncio.Queue()
        for wa_id in wa_ids:
            free.put_nowait(wa_id)
        running: set[asyncio.Task] = set()
        start = time.monotonic()
        try:
            for i in range(total):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                wa_id = await free.get()                 # a user has one call with the business at a time
                self.soak_stats["started"] += 1
                task = self.loop.create_task(self._short_call(wa_id, hold, free))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        finally:
            self.soak_stats["done"] = True

    async def _short_call(self, wa_id: str, hold: float, free: asyncio.Queue) -> None:
        stats = self.soak_stats
        call = None
        try:
            call = await self.place(wa_id)
            if call.state == "media":
                stats["up"] += 1
                await asyncio.sleep(hold)
                sent, rx, expected, _, _ = call.counters()
                stats["tx_packets"] += sent
                stats["rx_packets"] += rx
                stats["rx_expected"] += expected
            else:
                stats["failed"] += 1
                if len(stats["failures"]) < 20:
                    stats["failures"].append(call.error)
            if call.call_id:
                try:
                    await self._terminate(call.call_id)
                    stats["ended"] += 1
                except Exception as exc:               # e.g. the user's phone already hung up
                    stats["terminate_failed"] += 1
                    if len(stats["failures"]) < 20:
                        stats["failures"].append(f"terminate: {exc}"[:300])
        except Exception as exc:
            stats["failed"] += 1
            if len(stats["failures"]) < 20:
                stats["failures"].append(f"{type(exc).__name__}: {exc}"[:300])
        finally:
            if call is not None:
                self.remove(call)
            free.put_nowait(wa_id)

    def remove(self, call: BusinessCall) -> None:
        if self.calls.pop(call.fd, None) is not None:
            try:
                self.ep.unregister(call.fd)
            except OSError:
                pass
        call.close()

    def snapshot(self) -> dict:
        """Cumulative counters per call (the coordinator diffs two snapshots)."""
        return {"t": time.monotonic(), "calls": {c.call_id: c.counters() for c in self.calls.values()
                                                 if c.state == "media"},
                "send_errors": self.send_errors + (sum(self.fast.calls[i].send_errors for i in range(self.fast.used))
                                                   if self.fast else 0), "ticks": self.ticks, "late_ticks": self.late_ticks,
                "skipped_frames": self.skipped_frames, "t_drain": self.t_drain, "t_send": self.t_send,
                "t_process": time.process_time(), "engine": self.engine}

    async def close(self) -> None:
        self._ticker.cancel()
        for call in list(self.calls.values()):
            self.remove(call)
        self.ep.close()
        if self.session is not None:
            await self.session.close()


# -- multiprocessing worker ------------------------------------------------------------------------------

def _worker_main(conn, info: dict, options: dict) -> None:
    cpu = options.pop("cpu", None)
    if cpu is not None:
        os.sched_setaffinity(0, cpu)
    profile = options.pop("profile", None)
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(_worker_async(conn, info, options))
        finally:
            profiler.disable()
            profiler.dump_stats(profile)
    else:
        asyncio.run(_worker_async(conn, info, options))


async def _worker_async(conn, info: dict, options: dict) -> None:
    peer = PeerProcess(info, **options)

    async def added(cmd: dict) -> dict:
        return {"op": "added", **(await peer.add(cmd["wa_ids"]))}

    async def ended(cmd: dict) -> dict:
        return {"op": "ended", **(await peer.end(cmd["call_ids"]))}

    async def soak(cmd: dict) -> dict:
        peer.start_soak(cmd["wa_ids"], cmd["total"], cmd["rate"], cmd["hold"])
        return {"op": "soaking"}

    async def soak_progress(cmd: dict) -> dict:
        return {"op": "soak_progress", **peer.soak_stats}

    async def snapshot(cmd: dict) -> dict:
        return {"op": "snapshot", **peer.snapshot()}

    await serve(conn, {"add": added, "end": ended, "soak": soak, "soak_progress": soak_progress,
                       "snapshot": snapshot}, peer.close)


class WorkerHandle(WorkerProcess):
    """A generator process, driven synchronously from the coordinator."""

    def __init__(self, info: dict, **options) -> None:
        super().__init__(_worker_main, info, options, name="generator worker")


# -- stand-alone -----------------------------------------------------------------------------------------

def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from media_calls import WacallProcess, create_users, cpu_seconds, summarize_business  # noqa: E402

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--graph-url", help="an already running wacall (else one is started)")
    ap.add_argument("--token", default="EAAwacall0000default0000token")
    args = ap.parse_args()
    wacall = None
    if args.graph_url:
        import httpx
        info = httpx.get(f"{args.graph_url}/_wacall/info").json()
        info["access_token"] = args.token
    else:
        wacall = WacallProcess().start()
        info = wacall.info
    try:
        wa_ids = create_users(info, args.calls)
        workers = [WorkerHandle(info) for _ in range(args.workers)]
        for i, w in enumerate(workers):
            w.send({"op": "add", "wa_ids": wa_ids[i::args.workers]})
        added = [w.recv() for w in workers]
        print(json.dumps([{k: v for k, v in a.items() if k != "call_ids"} for a in added]))
        time.sleep(2)
        pids = [w.pid for w in workers] + ([wacall.pid] if wacall else [])
        cpu0 = {p: cpu_seconds(p) for p in pids}
        for w in workers:
            w.send({"op": "snapshot"})
        s0 = [w.recv() for w in workers]
        time.sleep(args.seconds)
        for w in workers:
            w.send({"op": "snapshot"})
        s1 = [w.recv() for w in workers]
        cpu1 = {p: cpu_seconds(p) for p in pids}
        print(json.dumps(summarize_business(s0, s1), indent=1))
        print("cpu seconds:", {p: round(cpu1[p] - cpu0[p], 2) for p in pids})
        for w in workers:
            w.stop()
    finally:
        if wacall:
            wacall.stop()


if __name__ == "__main__":
    main()
