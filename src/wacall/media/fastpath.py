"""The compiled per-packet media path (``fastpath.c``, built by cffi at install time) and its seam with the relay.

A call leg runs in pure Python (:mod:`wacall.media.relay`) until it is *established*: SRTP keys known,
the business's address latched, its first media in, the user answered and the user's microphone
started. Then the relay hands the leg to :class:`FastPath` (:meth:`FastPath.promote`), and from there C
does the per-packet work on both directions:

* receive: ``recvmmsg`` on the engine's shared port sockets, the leg found by the datagram's source
  address, SRTP unprotected, RTP parsed, the RFC 3550 statistics kept (the same arithmetic as
  :class:`wacall.media.rtp.SourceStats`), the payload kept for the level and the recording. Python gets
  back in batches only what it must see: STUN, DTLS, SRTCP, unknown sources and packets that fail SRTP
  (routed exactly as before by :meth:`Ports.route`), RFC 4733 event packets (for the digits), the first
  packet with a new SSRC or another payload type (the leg's receive then returns to Python for good),
  and recording chunks (appended to the call's file by Python);
* send: every 20 ms one C call builds the RTP packet of every fast leg from the frames Python handed
  over once, protects it and sends it with ``sendmmsg``.

ICE, DTLS, RTCP, DTMF sending, recording files, restarts and signalling stay in Python. Python reads
what C counted whenever it needs it (:meth:`FastLeg.sync`: the inspector's view, RTCP reports,
checkpoints, the end of the leg). The libsrtp sessions are pylibsrtp's own, shared by both paths, so
Python can protect a DTMF event or an RTCP report between two C packets on the same SRTP state.

The pure-Python path stays the reference (the tests compare both) and the fallback: without the built
module, with pylibsrtp internals it does not know, or with ``WACALL_FASTPATH=0`` (``[media] fastpath =
false``), every leg stays in Python.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from ..users.phone import LEVEL_PACKETS

if TYPE_CHECKING:  # pragma: no cover
    from .ports import PortSocket

log = logging.getLogger("wacall.media")
RAW, DTMF, DEMOTED, REC, MEDIA = 0, 1, 2, 3, 4
MAX_ITEMS = 4096
ARENA = 1024 * 1024
MAX_DATAGRAMS = 8192             # per drain call, so one busy socket cannot starve the event loop
RING_SLOT = 320                  # FP_RING_SLOT: the longest plain RTP C keeps for the level
HOUSEKEEPING = 0.25              # seconds between the Python side's look at each fast leg


def enabled_by_environment() -> bool:
    return os.environ.get("WACALL_FASTPATH", "1").strip().lower() not in ("0", "false", "no", "off")


def load() -> FastPath | None:
    """A :class:`FastPath` for this process, or None when the compiled path is off or unavailable."""
    if not enabled_by_environment():
        return None
    try:
        return FastPath()
    except (ImportError, AttributeError, OSError) as exc:
        log.warning("compiled media path unavailable, media runs in Python: %s", exc)
        return None


_SHARED: dict[str, Any] = {}


class FastPath:
    """The C module of one process: its legs, frame sets, and the receive/send entry points."""

    def __init__(self) -> None:
        from pylibsrtp import _binding

        from ._fastpath import ffi, lib

        self.ffi, self.lib = ffi, lib
        if "init" not in _SHARED:        # the C module's state is per process: initialise it once
            blib, bffi = _binding.lib, _binding.ffi

            def address(name: str) -> Any:
                return ffi.cast("void *", int(bffi.cast("uintptr_t", bffi.addressof(blib, name))))

            lib.fp_init(address("srtp_protect"), address("srtp_unprotect"))
            _SHARED["init"] = True
            _SHARED["sets"] = {}
        self._bffi = _binding.ffi
        self._sets: dict[int, tuple[list[bytes], int]] = _SHARED["sets"]
        raw = ffi.new_allocator(should_clear_after_alloc=False)   # pages are touched only as datagrams fill them
        self.items = raw("struct fp_item[]", MAX_ITEMS)
        self.arena = raw("uint8_t[]", ARENA)
        self._more = ffi.new("int *")
        self._consumed = ffi.new("int64_t *")
        self._errors = ffi.new("int64_t *")
        _SHARED["groups"] = self.group = _SHARED.get("groups", 0) + 1
        self.legs: dict[int, FastLeg] = {}
        self.by_remote: dict[tuple[str, int], FastLeg] = {}
        self.packets_sent = 0

    # -- set-up ---------------------------------------------------------------------------------------
    def srtp_pointer(self, session: Any) -> Any:
        return self.ffi.cast("void *", int(self._bffi.cast("uintptr_t", session._srtp[0])))

    def frame_set(self, frames: list[bytes]) -> int:
        """The C copy of a user's pre-encoded frames (made once per source and process)."""
        known = self._sets.get(id(frames))
        if known is not None and known[0] is frames:
            return known[1]
        lengths = self.ffi.new("int32_t[]", [len(f) for f in frames])
        index = self.lib.fp_frames_add(b"".join(frames), lengths, len(frames))
        if index >= 0:
            self._sets[id(frames)] = (frames, index)
        return index

    def promote(self, endpoint: Any) -> None:   # a wacall.media.relay.RelayEndpoint
        """Hand an established leg's microphone (and, where nothing is unusual, its receive) to C."""
        leg = endpoint.fast
        if leg is None:
            if endpoint.srtp is None or endpoint.remote is None or endpoint._remote_sock is None \
                    or getattr(endpoint.srtp, "_fast_tx", None) is None:
                return
            leg = FastLeg.create(self, endpoint)
            if leg is None:
                return
            endpoint.fast = leg
        leg.start_tx()
        leg.start_rx()

    # -- the hot path ---------------------------------------------------------------------------------
    def drain(self, sock: PortSocket) -> None:
        """Everything waiting on a shared socket: C takes the media of fast legs, Python the rest."""
        lib, ffi, items, arena = self.lib, self.ffi, self.items, self.arena
        router = sock.router
        fd = sock.fd
        while True:
            n = lib.fp_recv(fd, items, MAX_ITEMS, arena, ARENA, MAX_DATAGRAMS, self._more, self._consumed)
            for i in range(n):
                item = items[i]
                kind = item.kind
                if kind == MEDIA:                  # media from a leg, the first since the last housekeeping
                    leg = self.legs.get(item.leg)
                    if leg is not None:
                        leg.endpoint.last_media_at = leg.endpoint.reporter.now()
                    continue
                if kind == REC:
                    leg = self.legs.get(item.leg)
                    if leg is not None:
                        leg.take_recording()
                    continue
                data = ffi.buffer(arena + item.off, item.len)[:]
                if item.family == socket.AF_INET6:
                    addr = (socket.inet_ntop(socket.AF_INET6, bytes(item.addr)), item.port)
                else:
                    addr = (socket.inet_ntop(socket.AF_INET, bytes(item.addr[0:4])), item.port)
                if kind == RAW:
                    router.route(sock, data, addr)
                    continue
                leg = self.legs.get(item.leg)
                if leg is None:
                    continue
                if kind == DTMF:
                    leg.on_event_packet(data, item.arrival)
                elif kind == DEMOTED:
                    leg.on_surprise(data, addr)
            if not self._more[0]:
                return

    def send(self) -> int:
        """One 20 ms interval of every fast leg's microphone."""
        sent = self.lib.fp_send(self.group, self._errors)
        self.packets_sent += sent
        return sent

    def housekeeping(self, wall: float) -> None:
        for leg in list(self.legs.values()):
            leg.housekeeping(wall)


# the statistics counters C keeps for a source, copied both ways (wacall.media.rtp.SourceStats)
_SOURCE_COUNTS = ("max_seq", "cycles", "base_seq", "bad_seq", "probation", "received", "expected_prior",
                  "received_prior", "octets", "duplicates_or_late", "restarts")
_RECENT_LENGTH = struct.Struct("=i")     # fp_leg_recent: each packet after its native int32 length


class FastLeg:
    """One leg's row in the C table and what moves between it and the relay endpoint
    (``wacall.media.relay.RelayEndpoint``, not imported: the relay hooks in here)."""

    def __init__(self, fast: FastPath, endpoint: Any, index: int) -> None:
        self.fast = fast
        self.endpoint = endpoint
        self.index = index
        self.c = fast.lib.fp_leg(index)
        self.tx = False
        self.rx = False
        self.rx_given_up = False           # a surprise sent the receive back to Python for good
        self._datagrams = 0                # what sync() already added to the Python counters
        self._octets = 0
        self._packets = 0
        self._recent_before: list[bytes] = []
        self.remote: tuple[str, int] | None = None

    @classmethod
    def create(cls, fast: FastPath, endpoint: Any) -> FastLeg | None:
        index = fast.lib.fp_leg_new()
        if index < 0:
            return None
        leg = cls(fast, endpoint, index)
        leg.c.group = fast.group
        if fast.lib.fp_leg_level(index) != 0:
            fast.lib.fp_leg_free(index)
            return None
        leg.c.rx = fast.srtp_pointer(endpoint.srtp._rx)
        leg.c.tx = fast.srtp_pointer(endpoint.srtp._tx)
        fast.legs[index] = leg
        leg.rebind()
        return leg

    def rebind(self) -> None:
        """The endpoint latched an address (first, or a new one): media goes there, and comes from there."""
        endpoint, fast = self.endpoint, self.fast
        remote, sock = endpoint.remote, endpoint._remote_sock
        if self.remote is not None and fast.by_remote.get(self.remote) is self:
            del fast.by_remote[self.remote]
        if remote is None or sock is None or getattr(sock, "fd", None) is None:
            self.stop_tx()
            self.stop_rx(give_up=False)
            self.remote = None
            return
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        other = fast.by_remote.get(remote)
        if other is not None and other is not self:
            other.stop_rx(give_up=True)     # two legs claiming one address: both back to Python for receive
            self.rx_given_up = True
        packed = socket.inet_pton(family, remote[0])
        fast.lib.fp_leg_bind(self.index, family, packed, remote[1], sock.fd)
        fast.by_remote[remote] = self
        self.remote = remote
        if self.rx_given_up:
            self.stop_rx(give_up=True)

    # -- the user's microphone --------------------------------------------------------------------------
    def start_tx(self) -> None:
        endpoint, c = self.endpoint, self.c
        if self.tx or not endpoint.sending or self.remote is None:
            return
        microphone = endpoint.phone.microphone
        if microphone is None:
            return
        index = self.fast.frame_set(microphone.frames)
        if index < 0:
            return
        stream = endpoint.stream
        c.frames = index
        c.send_pt = endpoint._send_pt
        c.tx_ssrc = stream.ssrc
        c.seq = stream.sequence_number
        c.ts = stream.timestamp
        c.spp = stream.samples_per_packet
        c.packet_count = stream.packet_count
        c.octet_count = stream.octet_count
        c.frame_index = microphone.position
        c.packets_sent = endpoint.packets_sent
        c.tx_on = 1
        self.tx = True

    def stop_tx(self) -> None:
        """Python sends again (DTMF, or the leg ends): the stream's state comes back first."""
        if self.tx:
            self.c.tx_on = 0
            self._pull_tx()
            self.tx = False

    def _pull_tx(self) -> None:
        endpoint, c = self.endpoint, self.c
        stream = endpoint.stream
        stream.sequence_number = int(c.seq)
        stream.timestamp = int(c.ts)
        stream.packet_count = int(c.packet_count)
        stream.octet_count = int(c.octet_count)
        if endpoint.phone.microphone is not None:
            endpoint.phone.microphone.position = int(c.frame_index)
        endpoint.packets_sent = int(c.packets_sent)

    # -- what the user hears ------------------------------------------------------------------------------
    def _eligible_rx(self) -> bool:
        endpoint = self.endpoint
        stats = endpoint.stats
        phone = endpoint.phone
        return (not self.rx and not self.rx_given_up and self.remote is not None and phone.heard_codec is not None
                and len(stats.sources) == 1
                and phone.answered_at is not None and endpoint.business_sent_first)

    def start_rx(self) -> None:
        if not self._eligible_rx():
            return
        endpoint, c = self.endpoint, self.c
        stats = endpoint.stats
        source = next(iter(stats.sources.values()))
        phone = endpoint.phone
        c.ssrc = source.ssrc
        c.codec_pt = endpoint.negotiated.payload_types.get(phone.heard_codec, -1)
        c.te_pt = endpoint._te_pt                    # as Python's stats: events count for loss, not jitter
        c.clock_rate = float(source.clock_rate)
        for name in (*_SOURCE_COUNTS, "jitter", "min_sequential"):
            setattr(c, name, getattr(source, name))
        c.started = int(source._started)
        c.jitter_started = int(source._jitter_started)
        c.last_arrival = source._last_arrival
        c.last_ts = source._last_ts
        c.last_packet_at = source.last_packet_at or 0.0
        self._datagrams, self._octets, self._packets = int(c.datagrams), int(c.octets_in), int(c.packets)
        self._recent_before = list(phone.recent)
        c.ring_n = c.ring_pos = 0
        writer = phone.recording
        if writer is not None and writer.error is None:
            self.fast.lib.fp_leg_recording(self.index, max(0, writer.max_packets - writer.packets))
        c.rx_on = 1
        self.rx = True

    def stop_rx(self, give_up: bool) -> None:
        if self.rx:
            self.c.rx_on = 0
            self._pull_rx()
            self.take_recording()
            self.rx = False
        if give_up:
            self.rx_given_up = True

    def _pull_rx(self) -> None:
        endpoint, c = self.endpoint, self.c
        stats = endpoint.stats
        datagrams, octets, packets = int(c.datagrams), int(c.octets_in), int(c.packets)
        endpoint.leg.packets_received += datagrams - self._datagrams
        endpoint.leg.bytes_received += octets - self._octets
        stats.packets += packets - self._packets
        self._datagrams, self._octets, self._packets = datagrams, octets, packets
        if datagrams and self.remote is not None:
            endpoint.leg.last_remote_addr = self.remote
        source = stats.sources.get(int(c.ssrc))
        if source is not None:
            for name in _SOURCE_COUNTS:
                setattr(source, name, int(getattr(c, name)))
            source.jitter = float(c.jitter)
            source._started = bool(c.started)
            source._jitter_started = bool(c.jitter_started)
            source._last_arrival = float(c.last_arrival)
            source._last_ts = int(c.last_ts)
            if c.last_packet_at:
                source.last_packet_at = stats.last_packet_at = float(c.last_packet_at)
        ring_n = int(c.ring_n)
        if ring_n:
            buf = self.fast.ffi.new("uint8_t[]", LEVEL_PACKETS * (4 + RING_SLOT))
            size = self.fast.lib.fp_leg_recent(self.index, buf)
            raw = self.fast.ffi.buffer(buf, size)[:]
            recent, pos = [], 0
            while pos < size:
                (length,) = _RECENT_LENGTH.unpack_from(raw, pos)
                recent.append(raw[pos + 4:pos + 4 + length])
                pos += 4 + length
            heard = endpoint.phone.recent            # a deque of LEVEL_PACKETS: it keeps the newest
            heard.clear()
            heard.extend(self._recent_before)
            heard.extend(recent)

    def _push_report_marks(self) -> None:
        """An RTCP report started a new interval (``mark_reported``): C counts the next one from there."""
        source = self.endpoint.stats.sources.get(int(self.c.ssrc))
        if self.rx and source is not None:
            self.c.expected_prior = source.expected_prior
            self.c.received_prior = source.received_prior

    def take_recording(self) -> None:
        phone = self.endpoint.phone
        writer = phone.recording
        c = self.c
        if c.rec_len <= 0 or c.rec == self.fast.ffi.NULL:
            return
        buf = self.fast.ffi.new("uint8_t[]", int(c.rec_len))
        count = self.fast.ffi.new("int64_t *")
        size = self.fast.lib.fp_leg_take_recording(self.index, buf, count)
        if writer is not None and size:
            writer.add_encoded(phone.heard_codec or "opus", self.fast.ffi.buffer(buf, size)[:], int(count[0]))

    def on_event_packet(self, plain: bytes, arrival: float) -> None:
        """An RFC 4733 packet (already counted by C): the digits are Python's."""
        endpoint = self.endpoint
        endpoint.last_media_at = endpoint.reporter.now()
        endpoint.stats.payload_types_seen.add(plain[1] & 0x7F)
        endpoint._on_event(plain, arrival)

    def on_surprise(self, plain: bytes, addr: tuple[str, int]) -> None:
        """A packet C does not carry (new SSRC, other payload type, too long): Python takes the receive
        side back, with the counts so far, and handles this packet as it would have."""
        self.stop_rx(give_up=True)
        self.endpoint._on_rtp(plain, addr)

    # -- every quarter second ---------------------------------------------------------------------------
    def sync(self) -> None:
        """Copy what C counted into the endpoint (before Python reads it)."""
        if self.tx:
            self._pull_tx()
        if self.rx:
            self._pull_rx()
            self.take_recording()

    def housekeeping(self, wall: float) -> None:
        c = self.c
        c.media_flag = 0                       # the next media packet tells Python again (last_media_at)
        if not self.rx:
            self.start_rx()                    # e.g. a restored leg, once its first packet came through Python
        if not self.tx:
            return                             # Python sends (keys pressed): its tick reports, through here
        self.reports(wall)

    def reports(self, wall: float) -> None:
        """The endpoint's RTCP reports and checkpoints, with what C counted brought in first."""
        if self.endpoint.reports(wall, before=self.sync):
            self._push_report_marks()

    def release(self) -> None:
        """The leg ends (or stops being fast): everything C holds comes back, and its row is freed."""
        self.stop_tx()
        self.stop_rx(give_up=False)
        fast = self.fast
        if self.remote is not None and fast.by_remote.get(self.remote) is self:
            del fast.by_remote[self.remote]
        fast.legs.pop(self.index, None)
        fast.lib.fp_leg_free(self.index)
        self.endpoint.fast = None


__all__ = ["FastPath", "FastLeg", "load", "enabled_by_environment"]
