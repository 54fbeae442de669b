"""The PBX side's load agent for bench/bridge_calls.py: one process standing in for many agents' phones.

It registers with the PBX (Kamailio, ``tests/data/bridge/kamailio-pbx.cfg``) as the agent the bridging extension
rings, answers every INVITE at once with a plain RTP SDP (Opus, or PCMU when ``codec="pcmu"`` and the offer has
it), and from then on sends one 20 ms RTP packet per call every 20 ms and counts what it receives: RTP sequence
numbers per call (gaps = loss of the user-to-PBX direction). The SIP side is the bridge's own UDP user agent
(:class:`wacall.bridge.sip_ua.SipUserAgent`, its UAS half: 100, 200 with the SDP resent until the ACK, BYE
answered; its UAC half when the agent dials: ``--direction business``, ``sip:+<wa_id>@domain``, which the PBX
routes to the bridge); only the REGISTER is written here.

RTP as in bench/business_peer.py: one socket per call, one 20 ms ticker for all calls that drains every readable
socket (epoll, zero timeout) and then sends one frame per call; nothing wakes the process between ticks. Plain
RTP, so every packet is handled in Python (a ``send`` and a ``recv`` per call and tick).

Snapshots have business_peer's shape (``{"t", "calls": {wacid: (sent, received, expected)}, "late_ticks",
"skipped_frames", "send_errors"}``), so ``media_calls.summarize_business`` reads them. The agent's clock is
``time.monotonic()``, the same clock as the coordinator's on this machine: set-up times are differences of the
two.
"""

from __future__ import annotations

import asyncio
import random
import select
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from workers import WorkerProcess, serve  # noqa: E402

TICK = 0.020
MAX_CATCH_UP = 10                     # a tick later than this many intervals skips (and counts) the rest
LOOPBACK = "127.0.0.1"
HEADER = struct.Struct("!BBHII")


def opus_frames(spec: str = "tone:1000") -> list[bytes]:
    from wacall.media.playout import PreEncodedAudio
    return list(PreEncodedAudio.get(spec).frames)


def pcmu_frames(hz: int = 1000) -> list[bytes]:
    import numpy as np
    from wacall.media.g711 import ulaw_encode
    t = np.arange(8000) / 8000.0                          # one second: a whole number of periods for integer hz
    pcm = (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return [ulaw_encode(pcm[i:i + 160]) for i in range(0, 8000, 160)]


def parse_offer(sdp: str) -> tuple[str, int, dict[str, int]]:
    """(connection address, audio port, {codec name lowercase: payload type}) of a plain RTP offer."""
    addr, port, pts = LOOPBACK, 0, {}
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("c=IN IP4 "):
            addr = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
            for pt in line.split()[3:]:
                if pt == "0":
                    pts.setdefault("pcmu", 0)
        elif line.startswith("a=rtpmap:"):
            pt, _, codec = line[9:].partition(" ")
            name = codec.split("/")[0].lower()
            if name == "telephone-event" and not codec.startswith("telephone-event/8000"):
                continue
            pts.setdefault(name, int(pt))
    return addr, port, pts


def answer_sdp(port: int, codec: str, pt: int, dtmf_pt: int | None) -> str:
    pts = f"{pt}" + (f" {dtmf_pt}" if dtmf_pt is not None else "")
    lines = ["v=0", f"o=agent {random.randrange(1 << 30)} 1 IN IP4 {LOOPBACK}", "s=bench agent",
             f"c=IN IP4 {LOOPBACK}", "t=0 0", f"m=audio {port} RTP/AVP {pts}"]
    if codec == "opus":
        lines += [f"a=rtpmap:{pt} opus/48000/2", f"a=fmtp:{pt} minptime=10;useinbandfec=1"]
    else:
        lines += [f"a=rtpmap:{pt} PCMU/8000"]
    if dtmf_pt is not None:
        lines += [f"a=rtpmap:{dtmf_pt} telephone-event/8000", f"a=fmtp:{dtmf_pt} 0-16"]
    lines += ["a=ptime:20", "a=sendrecv"]
    return "\r\n".join(lines) + "\r\n"


def offer_sdp(port: int, codec: str) -> str:
    """The phone's offer when the agent dials a WhatsApp user: Opus (or PCMU) and telephone-event, plain RTP."""
    pt = 111 if codec == "opus" else 0
    return answer_sdp(port, codec, pt, 101)


class AgentCall:
    __slots__ = ("wacid", "sip_call_id", "sock", "fd", "pt", "ssrc", "seq", "ts", "step", "sent", "rx",
                 "first_seq", "max_seq", "t_invite", "t_answer", "t_first_rx", "frame", "wa_id", "error")

    def __init__(self, wacid: str, sip_call_id: str, sock: socket.socket, pt: int, step: int) -> None:
        self.wacid, self.sip_call_id, self.sock, self.fd = wacid, sip_call_id, sock, sock.fileno()
        self.pt, self.step = pt, step
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.sent = self.rx = self.frame = 0
        self.first_seq = self.max_seq = -1              # extended sequence numbers of what was received
        self.t_invite = self.t_answer = self.t_first_rx = 0.0     # dialing: t_invite is when the INVITE left
        self.wa_id, self.error = "", ""

    def received(self, data: bytes, now: float) -> None:
        if len(data) < 12 or 200 <= data[1] <= 204:     # RTCP (not expected: the PBX leg is demuxed)
            return
        seq = (data[2] << 8) | data[3]
        if self.first_seq < 0:
            self.first_seq = self.max_seq = seq
            self.t_first_rx = now
        else:
            ext = self.max_seq + ((seq - self.max_seq) & 0xFFFF)     # forward from the highest seen
            if ((seq - self.max_seq) & 0xFFFF) >= 0x8000:            # older than the highest: reordered
                ext -= 0x10000
            if ext > self.max_seq:
                self.max_seq = ext
        self.rx += 1

    def counters(self) -> tuple[int, int, int]:
        expected = self.max_seq - self.first_seq + 1 if self.first_seq >= 0 else 0
        return self.sent, self.rx, expected


class PbxAgent:
    def __init__(self, pbx_port: int, *, user: str = "agent", domain: str = "pbx.example.com",
                 codec: str = "opus") -> None:
        self.pbx = (LOOPBACK, pbx_port)
        self.user, self.domain, self.codec = user, domain, codec
        self.frames = opus_frames() if codec == "opus" else pcmu_frames()
        self.samples = 960 if codec == "opus" else 160
        self.calls: dict[int, AgentCall] = {}            # by socket fd
        self.by_sip: dict[str, AgentCall] = {}
        self.ended: list[AgentCall] = []
        self.dialed: dict[str, AgentCall] = {}           # by the WhatsApp number dialled
        self._dialing: set[asyncio.Task] = set()
        self.refused: list[str] = []
        self.ep = select.epoll()
        self.ua = None
        self.late_ticks = self.skipped_frames = self.send_errors = self.ticks = 0
        self._ticker: asyncio.Task | None = None

    async def start(self) -> int:
        from wacall.bridge.sip_ua import SipUserAgent
        self.ua = SipUserAgent(LOOPBACK, 0, self.pbx)
        self.ua.on_invite = self.on_invite
        self.ua.on_bye = self.on_bye
        port = await self.ua.start()
        await asyncio.to_thread(self.register, port)
        self._ticker = asyncio.get_running_loop().create_task(self.run_ticker())
        return port

    def register(self, contact_port: int, timeout: float = 5.0) -> None:
        """REGISTER ``sip:user@domain`` with Contact at the UA's port (from a socket of its own)."""
        from wacall.sip.message import Response, new_branch, new_call_id, new_tag, parse_message
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            sock.settimeout(0.5)
            port = sock.getsockname()[1]
            aor = f"sip:{self.user}@{self.domain}"
            request = (f"REGISTER sip:{self.domain} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch={new_branch()};rport\r\n"
                       f"Max-Forwards: 70\r\nFrom: <{aor}>;tag={new_tag()}\r\nTo: <{aor}>\r\n"
                       f"Call-ID: {new_call_id(LOOPBACK)}\r\nCSeq: 1 REGISTER\r\n"
                       f"Contact: <sip:{self.user}@{LOOPBACK}:{contact_port}>\r\nExpires: 3600\r\n"
                       f"Content-Length: 0\r\n\r\n").encode()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                sock.sendto(request, self.pbx)
                try:
                    reply = parse_message(sock.recv(65535))
                except socket.timeout:
                    continue
                if isinstance(reply, Response) and reply.status >= 200:
                    if reply.status != 200:
                        raise RuntimeError(f"REGISTER: {reply.status} {reply.reason}")
                    return
            raise RuntimeError(f"REGISTER: no answer from the PBX at {self.pbx} within {timeout} s")

    # -- SIP --------------------------------------------------------------------------------------------------
    def on_invite(self, incoming) -> None:
        now = time.monotonic()
        request = incoming.request
        wacid = request.headers.get("x-wa-meta-wacid") or incoming.call_id
        addr, port, pts = parse_offer(incoming.sdp)
        pt = pts.get(self.codec)
        if pt is None or not port:
            self.refused.append(wacid)
            incoming.respond(488, "Not Acceptable Here")
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        sock.connect((addr, port))
        call = AgentCall(wacid, incoming.call_id, sock, pt, self.samples)
        call.t_invite = now
        dtmf = pts.get("telephone-event")
        incoming.respond(200, "OK", sdp=answer_sdp(sock.getsockname()[1], self.codec, pt, dtmf))
        call.t_answer = time.monotonic()
        self.calls[call.fd] = call
        self.by_sip[call.sip_call_id] = call
        self.ep.register(call.fd, select.EPOLLIN)

    def dial(self, wa_ids: list[str], rate: float) -> None:
        """The agent calls these WhatsApp users through the PBX (``sip:+<wa_id>@domain``: Kamailio routes it to
        the bridge), ``rate`` INVITEs per second; each call starts its RTP on the 200 OK."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, wa_id in enumerate(wa_ids):
            task = loop.create_task(self._dial_one(wa_id, max(0.0, start + i / rate - loop.time())))
            self._dialing.add(task)
            task.add_done_callback(self._dialing.discard)

    async def _dial_one(self, wa_id: str, delay: float) -> None:
        from wacall.bridge.sip_ua import SipFailure
        await asyncio.sleep(delay)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        call_id = self.ua.new_call_id()
        call = AgentCall("", call_id, sock, 111 if self.codec == "opus" else 0, self.samples)
        call.wa_id, call.t_invite = wa_id, time.monotonic()
        self.dialed[wa_id] = call
        aor = f"sip:{self.user}@{self.domain}"
        try:
            _, ok = await self.ua.invite(f"sip:+{wa_id}@{self.domain}", aor, f"sip:+{wa_id}@{self.domain}",
                                         offer_sdp(sock.getsockname()[1], self.codec), [], call_id=call_id,
                                         timeout=60.0)
        except SipFailure as exc:
            call.error = f"{exc.status} {exc.reason}"
            sock.close()
            return
        call.t_answer = time.monotonic()
        call.wacid = ok.headers.get("x-wa-meta-wacid") or call_id
        addr, port, _ = parse_offer(ok.body.decode("utf-8", "replace"))
        sock.connect((addr, port))
        self.calls[call.fd] = call
        self.by_sip[call_id] = call
        self.ep.register(call.fd, select.EPOLLIN)

    def dial_report(self, wa_ids: list[str]) -> dict:
        """Per number dialled: its wacid, (INVITE sent, 200 received, first RTP received) and the failure."""
        return {w: {"wacid": c.wacid, "times": (c.t_invite, c.t_answer, c.t_first_rx), "error": c.error}
                for w in wa_ids if (c := self.dialed.get(w)) is not None}

    def on_bye(self, dialog) -> None:
        call = self.by_sip.pop(dialog.call_id, None)
        if call is not None:
            self._close(call)

    def _close(self, call: AgentCall) -> None:
        if self.calls.pop(call.fd, None) is not None:
            try:
                self.ep.unregister(call.fd)
            except OSError:
                pass
            call.sock.close()
            self.ended.append(call)

    # -- RTP --------------------------------------------------------------------------------------------------
    def drain(self) -> None:
        """Everything waiting on every call's socket, one epoll pass: bounded by what had arrived, so a busy
        agent still gets back to its ticker and its SIP (a loop until epoll is empty never ends under load)."""
        calls = self.calls
        now = time.monotonic()
        for fd, _ in self.ep.poll(0):
            call = calls.get(fd)
            if call is None:
                continue
            recv, received = call.sock.recv, call.received
            for _ in range(64):
                try:
                    data = recv(2048)
                except OSError:          # EAGAIN (drained), or ICMP port unreachable after the relay closed
                    break
                received(data, now)

    async def run_ticker(self) -> None:
        start, done = time.monotonic(), 0
        frames, n_frames, pack = self.frames, len(self.frames), HEADER.pack
        while True:
            self.drain()
            now = time.monotonic()
            due = int((now - start) / TICK) + 1 - done
            if due > 1:
                self.late_ticks += 1
            if due > MAX_CATCH_UP:
                self.skipped_frames += (due - MAX_CATCH_UP) * len(self.calls)
                done += due - MAX_CATCH_UP
                due = MAX_CATCH_UP
            if due > 0:
                done += due
                self.ticks += due
                for call in list(self.calls.values()):
                    send = call.sock.send
                    for _ in range(due):
                        try:
                            send(pack(0x80, call.pt if call.sent else 0x80 | call.pt, call.seq, call.ts, call.ssrc)
                                 + frames[call.frame % n_frames])
                        except OSError:
                            self.send_errors += 1
                        call.frame += 1
                        call.sent += 1
                        call.seq = (call.seq + 1) & 0xFFFF
                        call.ts = (call.ts + call.step) & 0xFFFFFFFF
            await asyncio.sleep(max(0.0, start + done * TICK - time.monotonic()))

    # -- reports ----------------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"t": time.monotonic(), "calls": {c.wacid: c.counters() for c in self.calls.values()},
                "late_ticks": self.late_ticks, "skipped_frames": self.skipped_frames,
                "send_errors": self.send_errors, "ticks": self.ticks}

    def times(self, wacids: list[str]) -> dict:
        """Per call: (INVITE received, 200 sent, first RTP received), monotonic seconds (0.0: not yet)."""
        by_wacid = {c.wacid: c for c in list(self.calls.values()) + self.ended}
        return {w: (c.t_invite, c.t_answer, c.t_first_rx) for w in wacids if (c := by_wacid.get(w)) is not None}

    async def hangup_all(self) -> int:
        """BYE every live call (through the PBX to the bridge)."""
        calls = list(self.calls.values())
        dialogs = [self.ua.dialogs.get(c.sip_call_id) for c in calls]
        for call in calls:
            self.by_sip.pop(call.sip_call_id, None)
            self._close(call)
        await asyncio.gather(*(self.ua.bye(d) for d in dialogs if d is not None), return_exceptions=True)
        return len(calls)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._dialing):
            task.cancel()
        for call in list(self.calls.values()):
            self._close(call)
        self.ep.close()
        if self.ua is not None:
            for incoming in list(self.ua.incoming.values()):
                incoming.acked()         # no more 200 retransmissions on a closed socket
            self.ua.close()


# -- the worker process ----------------------------------------------------------------------------------------

def _worker_main(conn, options: dict) -> None:
    asyncio.run(_worker_async(conn, options))


async def _worker_async(conn, options: dict) -> None:
    agent = PbxAgent(**options)

    async def start(cmd: dict) -> dict:
        return {"op": "started", "sip_port": await agent.start()}

    async def snapshot(cmd: dict) -> dict:
        return {"op": "snapshot", **agent.snapshot()}

    async def times(cmd: dict) -> dict:
        return {"op": "times", "times": agent.times(cmd["wacids"]), "refused": agent.refused[-20:]}

    async def dial(cmd: dict) -> dict:
        agent.dial(cmd["wa_ids"], cmd["rate"])
        return {"op": "dialing"}

    async def dialed(cmd: dict) -> dict:
        return {"op": "dialed", "calls": agent.dial_report(cmd["wa_ids"])}

    async def hangup_all(cmd: dict) -> dict:
        return {"op": "hung_up", "calls": await agent.hangup_all()}

    await serve(conn, {"start": start, "snapshot": snapshot, "times": times, "dial": dial, "dialed": dialed,
                       "hangup_all": hangup_all}, agent.close)


class AgentHandle(WorkerProcess):
    """The load agent in a process of its own, driven synchronously (``start`` registers it with the PBX)."""

    def __init__(self, pbx_port: int, **options) -> None:
        super().__init__(_worker_main, {"pbx_port": pbx_port, **options}, name="PBX load agent")

    def call(self, op: str, timeout: float = 60, **args) -> dict:
        self.send({"op": op, **args})
        return self.recv(timeout)
