"""RtpEngine's ng control protocol, sans I/O: bencode, the cookie framing, and the commands the bridge sends.

The ng protocol (https://github.com/sipwise/rtpengine/blob/master/docs/ng_control_protocol.md) is one
datagram per message: ``<cookie> <bencoded dictionary>``; the reply carries the same cookie, so replies are
matched to requests by cookie and a retransmitted request (same cookie) gets the cached reply back. Every
request has ``command``; a reply has ``result`` (``ok``, ``pong``, ``error`` with ``error-reason``, or
``load limit``) and, for ``offer``/``answer``, the rewritten ``sdp``.

Bencode (BitTorrent's encoding, BEP 3): ``i<int>e``, ``<len>:<bytes>``, ``l...e``, ``d...e`` with keys sorted.
Strings come back as ``bytes``; :func:`decode` leaves them so and :class:`Reply` decodes the ones it names.

No I/O here: :class:`Client` makes the datagram for a command (:meth:`Client.request`) and turns a datagram
into the reply it answers (:meth:`Client.reply_for`); the bridge's transport sends, waits and retransmits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Union

Bencodable = Union[int, bytes, str, list, tuple, dict, bool]


class NgError(Exception):
    """A malformed ng datagram, or a reply whose ``result`` is ``error`` (``reason`` is RtpEngine's text)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


# -- bencode -------------------------------------------------------------------------------------------------

def encode(value: Bencodable) -> bytes:
    """Bencode ``value``: str as UTF-8 bytes, bool as 0/1, dict keys sorted as raw bytes (BEP 3)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Bencodable, out: list[bytes]) -> None:
    if isinstance(value, bool):
        out.append(b"i1e" if value else b"i0e")
    elif isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, str)):
        raw = value.encode() if isinstance(value, str) else value
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        items = [(k.encode() if isinstance(k, str) else k, v) for k, v in value.items()]
        for key, item in sorted(items, key=lambda kv: kv[0]):
            if not isinstance(key, bytes):
                raise TypeError(f"bencode dictionary keys are strings, got {key!r}")
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


MAX_DEPTH = 32


def decode(data: bytes) -> Any:
    """The value bencoded in ``data`` (all of it); strings as bytes. :class:`NgError` when malformed."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise NgError(f"bencode: {len(data) - end} bytes after the value")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise NgError("bencode: nested too deep")
    if i >= len(data):
        raise NgError("bencode: truncated")
    lead = data[i:i + 1]
    if lead == b"i":
        end = data.find(b"e", i)
        if end < 0:
            raise NgError("bencode: unterminated integer")
        text = data[i + 1:end]
        if not text or not (text.isdigit() or (text[:1] == b"-" and text[1:].isdigit() and text != b"-0")) \
                or (len(text) > 1 and text[:1] == b"0"):
            raise NgError(f"bencode: bad integer {text!r}")
        return int(text), end + 1
    if lead == b"l":
        items, i = [], i + 1
        while data[i:i + 1] != b"e":
            item, i = _decode(data, i, depth + 1)
            items.append(item)
        return items, i + 1
    if lead == b"d":
        result, i = {}, i + 1
        while data[i:i + 1] != b"e":
            key, i = _decode(data, i, depth + 1)
            if not isinstance(key, bytes):
                raise NgError("bencode: dictionary key is not a string")
            result[key.decode("utf-8", "replace")], i = _decode(data, i, depth + 1)
        return result, i + 1
    if lead.isdigit():
        colon = data.find(b":", i)
        if colon < 0 or not data[i:colon].isdigit():
            raise NgError("bencode: bad string length")
        start, size = colon + 1, int(data[i:colon])
        if start + size > len(data):
            raise NgError("bencode: string runs past the end")
        return data[start:start + size], start + size
    raise NgError(f"bencode: unexpected byte {lead!r} at {i}")


# -- messages ------------------------------------------------------------------------------------------------

def frame(cookie: str, message: dict) -> bytes:
    """One ng datagram: the cookie, a space, the bencoded dictionary."""
    if not cookie or " " in cookie:
        raise ValueError("an ng cookie is a non-empty token without spaces")
    return cookie.encode() + b" " + encode(message)


def unframe(datagram: bytes) -> tuple[str, dict]:
    """``(cookie, dictionary)`` of one ng datagram."""
    cookie, space, body = datagram.partition(b" ")
    if not space or not cookie:
        raise NgError("ng: no cookie")
    message = decode(body)
    if not isinstance(message, dict):
        raise NgError("ng: the message is not a dictionary")
    return cookie.decode("ascii", "replace"), message


def _text(value: Any) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value if isinstance(value, str) else None


@dataclass
class Reply:
    """RtpEngine's answer to one command."""
    cookie: str
    result: str
    message: dict
    sdp: str | None = None
    error_reason: str | None = None
    warning: str | None = None

    @classmethod
    def parse(cls, cookie: str, message: dict) -> "Reply":
        result = _text(message.get("result"))
        if result is None:
            raise NgError("ng: reply without result")
        return cls(cookie, result, message, sdp=_text(message.get("sdp")),
                   error_reason=_text(message.get("error-reason")), warning=_text(message.get("warning")))

    @property
    def ok(self) -> bool:
        return self.result in ("ok", "pong")

    def raise_for_error(self) -> "Reply":
        if not self.ok:
            raise NgError(f"rtpengine: {self.result}: {self.error_reason or '(no reason)'}", self.error_reason)
        return self


@dataclass
class Client:
    """Builds requests with fresh cookies and matches replies to them (sans I/O)."""
    prefix: str = field(default_factory=lambda: secrets.token_hex(4))
    pending: dict[str, str] = field(default_factory=dict)      # cookie -> command, until its reply
    _next: int = 0

    def request(self, command: str, **params: Bencodable) -> tuple[str, bytes]:
        """``(cookie, datagram)`` for ``command`` with ``params`` (Python names: ``call_id`` → ``call-id``;
        None values left out). Send the same datagram again to retransmit: RtpEngine answers a repeated cookie
        from its cache, without running the command twice."""
        self._next += 1
        cookie = f"{self.prefix}_{self._next}"
        message: dict[str, Bencodable] = {"command": command}
        for name, value in params.items():
            if value is not None:
                message[name.replace("_", "-")] = value
        self.pending[cookie] = command
        return cookie, frame(cookie, message)

    def reply_for(self, datagram: bytes) -> Reply | None:
        """The reply in ``datagram``, or None for a cookie this client is not waiting for (late or foreign)."""
        cookie, message = unframe(datagram)
        if self.pending.pop(cookie, None) is None:
            return None
        return Reply.parse(cookie, message)


# -- the bridge's commands -----------------------------------------------------------------------------------
# What Meta's integration example asks of RtpEngine
# (https://developers.facebook.com/docs/whatsapp/cloud-api/calling/integration-examples): WebRTC (ICE,
# DTLS-SRTP, rtcp-mux) toward WhatsApp, plain RTP (or SDES) toward the PBX.

def ice_lite_in_media(sdp: str) -> str:
    """``a=ice-lite`` repeated in each m-section when the session level has it. Meta's SDP carries it at session
    level (RFC 8839 5.3), where RtpEngine 10.5 (Debian 12's) does not look (it reads only the m-section, and treats
    Meta's relay as a full agent: it takes the controlled role after its answer and never nominates a pair, so
    Meta never sends media). Only RtpEngine reads the result; Meta gets RtpEngine's own SDP."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    first_m = next((i for i, line in enumerate(lines) if line.startswith("m=")), len(lines))
    if "a=ice-lite" not in lines[:first_m]:
        return sdp
    trailer = [] if lines[-1] else [lines.pop()]          # the empty string after the last line end
    out: list[str] = []
    for i, line in enumerate(lines):                  # at the end of each m-section (its a= lines come last)
        out.append(line)
        if i >= first_m and (i + 1 == len(lines) or lines[i + 1].startswith("m=")):
            out.append("a=ice-lite")
    return eol.join(out + trailer)


# -- the telephone-event clock ------------------------------------------------------------------------------
# Meta negotiates ``telephone-event/8000`` next to ``opus/48000/2`` and stamps its RFC 4733 packets with the 48 kHz
# audio timestamps (as libwebrtc does; baresip does the same with Opus). RtpEngine 10.5 reads an event's timestamp
# in the clock its SDP names and *schedules* every telephone-event packet it forwards by it, even in passthrough
# (codec.c ``__output_rtp``): a digit 160 ms after the previous one looks 960 ms later, is held ~800 ms, and goes
# out after the next digit (which, looking more than 1 s ahead, is sent at once), with older sequence numbers that
# the phone drops: "12#" arrives as "1#". Upstream stopped scheduling passthrough DTMF in mr11.4 (commit 6f57d381,
# https://github.com/sipwise/rtpengine/issues/1638; also #1530); Debian 12 ships 10.5. So RtpEngine is told the
# truth about those timestamps: ``telephone-event/48000`` beside Opus in every SDP it reads, renamed back to
# ``/8000`` in every SDP it writes. Its schedule then matches real time and a telephone-event at the Opus clock is
# also what it needs to carry DTMF when it transcodes Opus to G.711 (it pairs telephone-event with the primary
# codec of the same clock).

OPUS_CLOCK, EVENT_CLOCK = 48000, 8000


def _sections(sdp: str) -> tuple[str, list[list[str]], list[str]]:
    """``(eol, [session lines, m-section lines...], trailer)``."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    trailer = [] if lines[-1] else [lines.pop()]
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return eol, sections, trailer


def _event_pts(section: list[str], clock: int) -> list[str]:
    return [line.split(":", 1)[1].split()[0] for line in section
            if line.startswith("a=rtpmap:") and line.lower().endswith(f" telephone-event/{clock}")]


def _has_opus(section: list[str]) -> bool:
    return any(line.startswith("a=rtpmap:") and f"opus/{OPUS_CLOCK}" in line.lower() for line in section)


def _rename_events(section: list[str], pts: list[str], old: int, new: int) -> list[str]:
    heads = tuple(f"a=rtpmap:{pt} " for pt in pts)
    return [line[:-len(str(old))] + str(new) if line.startswith(heads) else line for line in section]


def _drop_pts(section: list[str], pts: list[str]) -> list[str]:
    if not pts:
        return section
    m = section[0].split(" ")
    out = [" ".join(m[:3] + [f for f in m[3:] if f not in pts])]
    attrs = {f"a={kind}:{pt}" for kind in ("rtpmap", "fmtp", "rtcp-fb") for pt in pts}
    return out + [line for line in section[1:] if line.split(" ", 1)[0] not in attrs]


def events_to_rtpengine(sdp: str) -> str:
    """``telephone-event/8000`` → ``/48000`` in each m-section that has Opus and no 48 kHz telephone-event (see
    above): the clock the events' timestamps really count."""
    eol, sections, trailer = _sections(sdp)
    for i, section in enumerate(sections[1:], 1):
        if _has_opus(section) and not _event_pts(section, OPUS_CLOCK):
            sections[i] = _rename_events(section, _event_pts(section, EVENT_CLOCK), EVENT_CLOCK, OPUS_CLOCK)
    return eol.join([line for section in sections for line in section] + trailer)


def events_from_rtpengine(sdp: str) -> str:
    """The inverse for an SDP RtpEngine wrote, toward Meta or the PBX (neither gets a 48 kHz telephone-event: Meta
    does not take one, and the events' durations count 8 kHz): ``telephone-event/48000`` → ``/8000``, or dropped
    where RtpEngine also offers an 8 kHz one (its G.711 transcoding's)."""
    eol, sections, trailer = _sections(sdp)
    for i, section in enumerate(sections[1:], 1):
        wide = _event_pts(section, OPUS_CLOCK)
        if wide and _event_pts(section, EVENT_CLOCK):
            sections[i] = _drop_pts(section, wide)
        elif wide:
            sections[i] = _rename_events(section, wide, OPUS_CLOCK, EVENT_CLOCK)
    return eol.join([line for section in sections for line in section] + trailer)


def _codec(transcode: "tuple[str, ...] | list[str]") -> dict[str, Bencodable]:
    return {"codec": {"transcode": list(transcode)}} if transcode else {}


#: SDES suites RtpEngine 10.5 would offer the PBX besides AES_CM_128_HMAC_SHA1_80/32 (RFC 4568's mandatory ones,
#: which Meta's SIP SDES uses too), left out: the NULL ones do not encrypt, and RtpEngine writes the longer keys
#: (GCM, AES-192/256) in base64 without its '=' padding, which baresip 1.0 decodes two bytes short ("srtp keylen
#: is 42 (should be 44)") and then fails every packet. Only the 30-byte AES_CM_128 key needs no padding.
OTHER_SDES_SUITES = ("AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_256_CM_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_32",
                     "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32", "F8_128_HMAC_SHA1_80",
                     "F8_128_HMAC_SHA1_32", "NULL_HMAC_SHA1_80", "NULL_HMAC_SHA1_32")


def offer_to_pbx(call_id: str, from_tag: str, sdp: str, *, pbx_protocol: str = "RTP/AVP",
                 transcode: "tuple[str, ...] | list[str]" = ()) -> dict[str, Bencodable]:
    """``offer`` params for Meta's WebRTC offer (a user-initiated call): rewritten for the PBX. ``transcode``:
    codecs RtpEngine adds to the offer (``PCMU``, ``PCMA``) and transcodes from and to Opus if the PBX picks one."""
    sdes = {"SDES": [f"no-{suite}" for suite in OTHER_SDES_SUITES]} if pbx_protocol == "RTP/SAVP" else {}
    return {"call_id": call_id, "from_tag": from_tag, "sdp": events_to_rtpengine(ice_lite_in_media(sdp)),
            "transport_protocol": pbx_protocol, "ICE": "remove", "DTLS": "off", "rtcp_mux": ["demux"],
            "replace": ["origin", "session-connection"], "flags": ["trust-address"], **_codec(transcode), **sdes}


def answer_to_whatsapp(call_id: str, from_tag: str, to_tag: str, sdp: str) -> dict[str, Bencodable]:
    """``answer`` params for the PBX's 200 OK SDP: rewritten back to WebRTC for Meta (the protocol of the
    offer: ``UDP/TLS/RTP/SAVPF``, ICE, DTLS with RtpEngine's ECDSA certificate, rtcp-mux)."""
    return {"call_id": call_id, "from_tag": from_tag, "to_tag": to_tag, "sdp": events_to_rtpengine(sdp), "ICE": "force",
            "rtcp_mux": ["offer", "require"], "replace": ["origin", "session-connection"],
            "flags": ["trust-address"]}


def offer_to_whatsapp(call_id: str, from_tag: str, sdp: str, *, transcode: bool = False) -> dict[str, Bencodable]:
    """``offer`` params for the PBX's INVITE SDP (a business-initiated call): rewritten to WebRTC for Meta's
    ``connect`` (``UDP/TLS/RTP/SAVPF``, ICE, DTLS actpass with RtpEngine's certificate, rtcp-mux, no SDES).
    ``transcode``: when the PBX offered no Opus, Meta is offered Opus only (RtpEngine masks the PBX's codecs
    and transcodes them), with a telephone-event when the PBX has one."""
    codec: dict[str, Bencodable] = {}
    if transcode and f"opus/{OPUS_CLOCK}" not in sdp.lower():
        events = ["telephone-event/8000"] if "telephone-event/" in sdp.lower() else []
        codec = {"codec": {"mask": ["all"], "transcode": ["opus/48000/2", *events]}}
    return {"call_id": call_id, "from_tag": from_tag, "sdp": events_to_rtpengine(sdp),
            "transport_protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force", "SDES": ["off"],
            "rtcp_mux": ["offer", "require"], "replace": ["origin", "session-connection"], "flags": ["trust-address"],
            **codec}


def answer_to_pbx(call_id: str, from_tag: str, to_tag: str, sdp: str) -> dict[str, Bencodable]:
    """``answer`` params for Meta's answer SDP (from the connect webhook): rewritten back to the PBX's
    protocol (that of its offer), no ICE, RTCP demultiplexed."""
    return {"call_id": call_id, "from_tag": from_tag, "to_tag": to_tag,
            "sdp": events_to_rtpengine(ice_lite_in_media(sdp)), "ICE": "remove", "rtcp_mux": ["demux"],
            "replace": ["origin", "session-connection"], "flags": ["trust-address"]}


def delete(call_id: str, from_tag: str | None = None) -> dict[str, Bencodable]:
    return {"call_id": call_id, "from_tag": from_tag}


__all__ = ["Client", "NgError", "Reply", "answer_to_whatsapp", "decode", "delete", "encode", "events_from_rtpengine",
           "events_to_rtpengine", "frame",
           "offer_to_pbx", "offer_to_whatsapp", "answer_to_pbx", "unframe"]
