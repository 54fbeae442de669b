"""Meta's SDP rules: validating a business's SDP as Meta does, building Meta's offer and answer, and
the one negotiation of a call's media (:func:`negotiate`). Pure: values in, values out, no sockets.

Validation (:func:`validate_business_sdp`) follows what Meta's calling docs ask of the SDP a
business sends to ``POST /{phone_number_id}/calls``
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/reference):

- CRLF line endings (RFC 8866 section 5) and a raw string, not JSON-in-JSON (FAQ);
- exactly one audio m-line with Opus ``opus/48000/2`` (RFC 7587), or only G.711 (PCMU/PCMA, RFC 3551)
  when the number enables them in ``audio.additional_codecs``; RFC 4733 ``telephone-event/8000``;
- DTLS-SRTP: ``UDP/TLS/RTP/SAVPF`` (RFC 5764), ICE credentials (RFC 8839), a sha-256
  ``a=fingerprint`` (RFC 8122) and ``a=setup`` (RFC 4145; in an answer ``active`` or ``passive``,
  RFC 5763 section 5);
- SDES: ``RTP/SAVP`` (RFC 3711) with ``a=crypto`` (RFC 4568) for an AES_CM_128 suite.

Builders produce Meta's own SDP (ICE-lite, RFC 8445 section 2.5) shaped like the samples in
Meta's docs: the offer Meta sends for a user-initiated call and its answer to a
business-initiated call's offer (offer/answer per RFC 3264). They work on :class:`LocalMedia`, the
frozen description of Meta's side of a leg that the media engine hands out when it allocates one.

:func:`negotiate` reads Meta's SDP and the business's and says what the relay must do (codec and
payload types, the DTMF payload type, the SDES key or the DTLS role, the business's credentials and
address). It is the only place that works this out; the result travels to the relay in
``MediaConfigure`` (and as :meth:`Negotiated.to_doc` through the media workers' pipe).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from .sdp_syntax import (STATIC_PAYLOAD_TYPES, Connection, CryptoAttribute, MediaDescription, Origin, RtpMap,
                         SdpError, SessionDescription, line_error, made, parse_crypto, parse_sdp)

__all__ = [
    "Connection",
    "CryptoAttribute",
    "LocalMedia",
    "MediaDescription",
    "MetaSdp",
    "Negotiated",
    "Origin",
    "RtpMap",
    "STATIC_PAYLOAD_TYPES",
    "SdpError",
    "SessionDescription",
    "build_meta_answer",
    "build_meta_offer",
    "meta_answer",
    "negotiate",
    "parse_crypto",
    "parse_sdp",
    "validate_business_sdp",
]


@dataclass(frozen=True)
class LocalMedia:
    """Meta's side of one call's media leg, as its SDP advertises it: where the relay listens (an IPv4
    and, where the host has it, an IPv6 host candidate), its ICE credentials (RFC 8839), its DTLS
    certificate fingerprint (RFC 8122), the audio SSRC (RFC 3550) and the SDES master key (RFC 4568,
    base64 of key||salt). Made by the media engine at allocation; persisted with the call
    (:meth:`to_doc`) so a restarted relay answers as the same leg."""

    call_id: str
    host: str
    port: int
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str
    ssrc: int
    sdes_key_b64: str
    #: o= session id (RFC 8866 section 5.2); fixed per leg so rebuilding the SDP is stable.
    session_id: int
    #: MediaStream id used in a=msid-semantic / a=ssrc msid lines (RFC 8830).
    stream_id: str
    host6: str | None = None
    port6: int | None = None

    def to_doc(self) -> dict:
        fields_set = self.__dict__               # a dataclass's fields, in order, set by __init__: copied at C level
        if len(fields_set) == len(_LOCAL_MEDIA_FIELDS):
            return dict(fields_set)
        return {name: getattr(self, name) for name in _LOCAL_MEDIA_FIELDS}

    @classmethod
    def from_doc(cls, doc: dict) -> LocalMedia:
        return cls(**{name: doc[name] for name in _LOCAL_MEDIA_FIELDS if name in doc})


_LOCAL_MEDIA_FIELDS = tuple(f.name for f in fields(LocalMedia))     # (fields() looks them up anew each time)

# --------------------------------------------------------------------------------------------
# Validation of a business's SDP
# --------------------------------------------------------------------------------------------

DTLS_PROTO = "UDP/TLS/RTP/SAVPF"
SDES_PROTO = "RTP/SAVP"
_FINGERPRINT_RE = re.compile(r"^([A-Za-z0-9-]+) ((?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2})$")
_ICE_RE = re.compile(r"^[A-Za-z0-9+/]+$")


def _normalise_key_exchange(key_exchange: str) -> str:
    if key_exchange == "SDES" or key_exchange == "DTLS":     # as the settings store them: taken as they are
        return key_exchange
    kx = key_exchange.upper()
    if kx not in ("DTLS", "SDES"):
        raise ValueError(f"key_exchange must be 'DTLS' or 'SDES', not {key_exchange!r}")
    return kx


def _check_raw_text(text: str) -> None:
    if not isinstance(text, str) or not text or text.isspace():       # (not text.strip(): no copy of the text)
        raise SdpError("SDP is empty")
    stripped = text.lstrip()
    if stripped.startswith(("{", '"')):
        raise line_error(
            1, stripped.split("\n", 1)[0].rstrip("\r"),
            "sdp must be the raw SDP text, not a JSON-encoded object (JSON-in-JSON)"
        )
    if text.endswith("\r\n") and text.count("\n") == text.count("\r\n"):
        return                              # every line ends in CRLF: nothing to point at
    pieces = text.split("\n")
    for index, piece in enumerate(pieces[:-1]):
        if not piece.endswith("\r"):
            raise line_error(index + 1, piece, "line ends in a bare LF; SDP lines must end in CRLF")
    if pieces[-1] != "":
        raise line_error(len(pieces), pieces[-1], "line does not end in CRLF")


def _single_audio(sd: SessionDescription) -> MediaDescription:
    audio: MediaDescription | None = None
    for media in sd.media:
        raw = sd.lines[media.line - 1]
        if media.kind != "audio":
            raise line_error(media.line, raw, f"only one audio m-line is supported ({media.kind} is not)")
        if audio is not None:
            raise line_error(media.line, raw, "only one audio m-line is supported (second m=audio)")
        audio = media
    if audio is None:
        raise SdpError("No m=audio line found in SDP")
    if audio.port == 0:
        raise line_error(audio.line, sd.lines[audio.line - 1], "audio m-line is rejected (port 0)")
    return audio


def _check_payload_types(sd: SessionDescription, audio: MediaDescription, extra: set[str]) -> None:
    """Every payload type has a codec, and one of them is Opus or a G.711 codec the number enabled.

    Meta offers PCMU/PCMA "for interoperability with legacy telephony systems or PSTN gateways" that
    do not support Opus (call settings, audio codec): with them enabled a G.711-only endpoint is fine.
    """
    raw = sd.lines[audio.line - 1]
    rtpmap = audio.rtpmap
    for pt in audio.payload_types:
        if pt not in rtpmap and pt not in STATIC_PAYLOAD_TYPES:       # audio.codec(pt) is None
            raise line_error(audio.line, raw, f"payload type {pt} has no a=rtpmap")
    if audio.find_codec("opus", 48000, 2) is not None:
        return
    if any(audio.find_codec(name, 8000) is not None for name in extra & {"PCMU", "PCMA"}):
        return
    reason = "Opus (a=rtpmap:<pt> opus/48000/2) is required on the audio m-line"
    offered_g711 = [name for name in ("PCMU", "PCMA") if audio.find_codec(name, 8000) is not None]
    if offered_g711:
        reason += (f"; without Opus, {'/'.join(offered_g711)} must be enabled in settings "
                   "calling.audio.additional_codecs")
    raise line_error(audio.line, raw, reason)


def _check_dtls(sd: SessionDescription, audio: MediaDescription, role: str) -> None:
    if audio.proto != DTLS_PROTO:
        raise line_error(
            audio.line, sd.lines[audio.line - 1],
            f"transport must be {DTLS_PROTO} for DTLS key exchange (got {audio.proto})",
        )
    for name, minimum in (("ice-ufrag", 4), ("ice-pwd", 22)):
        found = sd.effective_attribute(audio, name)
        if found is None:
            raise SdpError(f"No a={name} found in SDP")
        line, value = found
        if not value or not _ICE_RE.match(value) or not minimum <= len(value) <= 256:
            raise line_error(line, sd.lines[line - 1], f"invalid {name} (need {minimum}-256 ICE characters)")
    fingerprints = list(audio.attributes_named("fingerprint")) or list(sd.attributes_named("fingerprint"))
    if not fingerprints:
        raise SdpError("No fingerprint found in SDP")
    sha256 = False
    for line, value in fingerprints:
        algo = (value or "").split(" ", 1)[0].lower()
        if algo != "sha-256":
            continue
        if not _FINGERPRINT_RE.match(value or ""):
            raise line_error(line, sd.lines[line - 1], "invalid fingerprint (expected 'sha-256' and 32 hex pairs)")
        sha256 = True
    if not sha256:
        line = fingerprints[0][0]
        raise line_error(line, sd.lines[line - 1], "fingerprint hash function must be sha-256")
    setup = sd.effective_attribute(audio, "setup")
    if setup is None:
        raise SdpError("No a=setup found in SDP")
    line, value = setup
    allowed = ("active", "passive") if role == "answer" else ("active", "passive", "actpass")
    if value not in allowed:
        raise line_error(line, sd.lines[line - 1], f"a=setup in an {role} must be one of {', '.join(allowed)}")


def _check_sdes(sd: SessionDescription, audio: MediaDescription) -> None:
    if audio.proto != SDES_PROTO:
        raise line_error(
            audio.line, sd.lines[audio.line - 1],
            f"transport must be {SDES_PROTO} for SDES key exchange (got {audio.proto})",
        )
    problems: list[tuple[int, str]] = []
    for (attr, value), line in zip(audio.attributes, audio.attribute_lines):     # audio.attributes_named("crypto")
        if attr != "crypto":
            continue
        try:
            crypto = parse_crypto(value or "")
        except ValueError as exc:
            problems.append((line, str(exc)))
        else:
            # at least one usable key is enough; other suites are simply not chosen. The first usable one at
            # media level is the one _chosen_crypto picks: kept, not parsed again for the answer
            audio.chosen_crypto = (value or "", crypto)
            return
    if problems:
        # Prefer a malformed line of a supported suite over a merely unsupported suite.
        line, reason = min(problems, key=lambda p: (p[1].startswith("unsupported crypto suite"), p[0]))
        raise line_error(line, sd.lines[line - 1], reason)
    raise SdpError("No a=crypto line found in SDP")


def _check_answer_codecs(sd: SessionDescription, audio: MediaDescription, extra: set[str]) -> None:
    for pt in audio.payload_types:
        codec = audio.codec(pt)
        assert codec is not None  # checked by _check_payload_types
        name = codec.encoding.upper()
        ok = (
            codec.matches("opus", 48000, 2)
            or codec.matches("telephone-event", 8000)
            or (name in ("PCMU", "PCMA") and codec.clock_rate == 8000 and name in extra)
        )
        if ok:
            continue
        rtpmap_lines = (ln for ln, v in audio.attributes_named("rtpmap") if (v or "").split(" ")[0] == str(pt))
        line = next(rtpmap_lines, audio.line)
        reason = f"codec {codec} (payload type {pt}) is not supported in an answer"
        if name in ("PCMU", "PCMA"):
            reason += "; enable it in settings calling.audio.additional_codecs"
        raise line_error(line, sd.lines[line - 1], reason)


def validate_business_sdp(
    text: str,
    *,
    key_exchange: str = "DTLS",
    additional_codecs: Sequence[str] = (),
    role: str = "answer",
) -> SessionDescription:
    """Check a business's SDP as Meta does and return it parsed.

    ``role`` is ``"offer"`` for ``connect`` and ``"answer"`` for ``pre_accept``/``accept``;
    ``key_exchange`` is the number's ``srtp_key_exchange_protocol``; ``additional_codecs`` its
    ``audio.additional_codecs`` (``PCMA``/``PCMU``).
    """
    kx = _normalise_key_exchange(key_exchange)
    if role not in ("offer", "answer"):
        raise ValueError(f"role must be 'offer' or 'answer', not {role!r}")
    extra = {c.upper() for c in additional_codecs} if additional_codecs else set()    # (usually none)
    _check_raw_text(text)
    sd = parse_sdp(text)
    audio = _single_audio(sd)
    if kx == "DTLS":
        _check_dtls(sd, audio, role)
    else:
        _check_sdes(sd, audio)
    _check_payload_types(sd, audio, extra)
    if role == "answer":
        _check_answer_codecs(sd, audio, extra)
    return sd


# --------------------------------------------------------------------------------------------
# Meta-side builders
# --------------------------------------------------------------------------------------------

OPUS_PT = 111
TELEPHONE_EVENT_PT = 126
_CANDIDATE_PRIORITY = 2122260223
_CANDIDATE_PRIORITY_V6 = _CANDIDATE_PRIORITY - 256   # RFC 8445 §5.1.2.1: local preference one below IPv4's
_EXTMAPS = (
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
)
#: Opus fmtp in Meta's Graph (WebRTC) samples and in its SIP samples (used for SDES).
_OPUS_FMTP_GRAPH = "minptime=10;useinbandfec=1"
_OPUS_FMTP_SIP = "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1"
_G711 = (("PCMU", 0), ("PCMA", 8))
_SSRC_CNAME = "WhatsAppAudioStream1"
_ICE_LITE = "a=ice-lite\r\n"
_TRACK_ID = "WhatsAppTrack1"


def _foundation(leg: LocalMedia, base: str | None = None) -> str:
    """RFC 8445 §5.1.1.3: candidates from different base addresses get different foundations."""
    return str(1_000_000_000 + ((leg.session_id + (1 if base else 0)) % 3_000_000_000))


def _session_header(leg: LocalMedia, mid: str, *, ice_lite: bool) -> list[str]:
    lines = [
        "v=0",
        f"o=- {leg.session_id} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {mid}",
        f"a=msid-semantic: WMS {leg.stream_id}",
    ]
    if ice_lite:
        lines.append("a=ice-lite")
    return lines


def _dtls_transport_lines(leg: LocalMedia, setup: str, *, trickle: bool = False) -> list[str]:
    lines = [
        f"a=candidate:{_foundation(leg)} 1 udp {_CANDIDATE_PRIORITY} {leg.host} {leg.port} typ host"
        f" generation 0 network-cost 50 ufrag {leg.ice_ufrag}",
    ]
    if leg.port6:       # Meta's relay offers an IPv6 host candidate too, at a lower priority
        lines.append(f"a=candidate:{_foundation(leg, leg.host6)} 1 udp {_CANDIDATE_PRIORITY_V6} {leg.host6} "
                     f"{leg.port6} typ host generation 0 network-cost 50 ufrag {leg.ice_ufrag}")
    lines += [
        f"a=ice-ufrag:{leg.ice_ufrag}",
        f"a=ice-pwd:{leg.ice_pwd}",
    ]
    if trickle:
        lines.append("a=ice-options:trickle")
    lines += [f"a=fingerprint:sha-256 {leg.fingerprint}", f"a=setup:{setup}"]
    return lines


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def _enabled_g711(additional_codecs: Sequence[str]) -> list[tuple[str, int]]:
    if not additional_codecs:                  # (the usual: Opus only)
        return []
    wanted = {c.upper() for c in additional_codecs}
    return [(name, pt) for name, pt in _G711 if name in wanted]


def build_meta_offer(
    leg: LocalMedia, *, key_exchange: str = "DTLS", additional_codecs: Sequence[str] = ()
) -> str:
    """Meta's SDP offer for a user-initiated call (connect webhook / SIP INVITE)."""
    kx = _normalise_key_exchange(key_exchange)
    g711 = _enabled_g711(additional_codecs)
    pts = [OPUS_PT, *(pt for _, pt in g711), TELEPHONE_EVENT_PT]
    proto = DTLS_PROTO if kx == "DTLS" else SDES_PROTO
    lines = _session_header(leg, "audio", ice_lite=kx == "DTLS")
    lines += [
        f"m=audio {leg.port} {proto} {' '.join(map(str, pts))}",
        f"c=IN IP4 {leg.host}",
        "a=rtcp:9 IN IP4 0.0.0.0",
    ]
    if kx == "DTLS":
        lines += _dtls_transport_lines(leg, "actpass")
    lines.append("a=mid:audio")
    if kx == "DTLS":
        lines += [f"a=extmap:{i} {uri}" for i, uri in enumerate(_EXTMAPS, start=1)]
    lines += ["a=sendrecv", "a=rtcp-mux"]
    if kx == "SDES":
        lines.append(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{leg.sdes_key_b64}")
    lines.append(f"a=rtpmap:{OPUS_PT} opus/48000/2")
    if kx == "DTLS":
        lines.append(f"a=rtcp-fb:{OPUS_PT} transport-cc")
    lines.append(_opus_fmtp(OPUS_PT, kx))
    return _join(lines) + _audio_tail(g711, TELEPHONE_EVENT_PT, leg)


_DIRECTION_ANSWER = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def _answer_direction(offer: SessionDescription, audio: MediaDescription) -> str:
    for attr, _ in audio.attributes:
        if attr in _DIRECTION_ANSWER:
            return _DIRECTION_ANSWER[attr]
    for attr, _ in offer.attributes:
        if attr in _DIRECTION_ANSWER:
            return _DIRECTION_ANSWER[attr]
    return "sendrecv"


def _telephone_event_pt(audio: MediaDescription) -> int:
    pt = audio.find_codec("telephone-event", 8000)
    if pt is not None:
        return pt
    # Meta: "even if it is absent, the API still proceeds with 8000 clock rate against PT 126".
    used = set(audio.payload_types)
    if TELEPHONE_EVENT_PT not in used:
        return TELEPHONE_EVENT_PT
    return next(p for p in range(127, 95, -1) if p not in used)


@dataclass(frozen=True)
class MetaSdp:
    """An SDP Meta built, with what :func:`negotiate` reads of it (its codecs' payload types, its DTLS
    ``a=setup``, the business's SDES key it accepted), known as it was written: the negotiation a moment
    later neither parses it again nor chooses the business's ``a=crypto`` a second time."""

    text: str
    payload_types: dict[str, int]       # opus / pcmu / pcma / telephone-event -> Meta's payload type
    setup: str | None = None            # DTLS: active | passive (None for SDES)
    remote_crypto: str | None = None    # SDES: the business's a=crypto value the answer accepted


def build_meta_answer(
    leg: LocalMedia,
    offer: SessionDescription,
    *,
    key_exchange: str = "DTLS",
    additional_codecs: Sequence[str] = (),
) -> str:
    """Meta's SDP answer to a business's offer (business-initiated call, connect webhook / 200 OK).

    ``offer`` should already have passed ``validate_business_sdp(role="offer")``.
    """
    return meta_answer(leg, offer, key_exchange=key_exchange, additional_codecs=additional_codecs).text


def answer_codecs(audio: MediaDescription, additional_codecs: Sequence[str] = ()
                  ) -> tuple[int | None, list[tuple[str, int]], int, list[int]]:
    """The codecs of Meta's answer to an offer's audio: Opus's payload type (None if not offered), the enabled
    G.711 codecs offered (name, payload type), the RFC 4733 events' type, and the m-line's types in order.
    Each the first payload type on the m-line with that codec (``audio.find_codec``), found in one pass over
    them (tests/test_sdp.py compares it with find_codec's choice)."""
    opus_pt = te_pt = pcmu_pt = pcma_pt = None
    rtpmap = audio.rtpmap
    for pt in audio.parsed_payload_types if audio.parsed_payload_types is not None else audio.payload_types:
        codec = rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)      # audio.codec(pt), inlined
        if codec is None:
            continue
        name = codec.encoding.lower()
        if name == "opus":
            if opus_pt is None and codec.clock_rate == 48000 and (codec.channels or 1) == 2:
                opus_pt = pt
        elif codec.clock_rate != 8000:
            continue
        elif name == "telephone-event":
            if te_pt is None:
                te_pt = pt
        elif name == "pcmu":
            if pcmu_pt is None:
                pcmu_pt = pt
        elif name == "pcma" and pcma_pt is None:
            pcma_pt = pt
    if te_pt is None:
        te_pt = _telephone_event_pt(audio)
    g711: list[tuple[str, int]] = []
    if additional_codecs:                       # (the usual: Opus only)
        for name, _ in _enabled_g711(additional_codecs):
            offered_pt = pcmu_pt if name == "PCMU" else pcma_pt
            if offered_pt is not None:
                g711.append((name, offered_pt))
    if opus_pt is None and not g711:
        raise SdpError("No opus/48000/2 rtpmap (nor an enabled PCMU/PCMA) found in the offer")
    # a G.711-only offer (a legacy endpoint without Opus) gets a G.711-only answer
    pts = [] if opus_pt is None else [opus_pt]
    if g711:
        pts += [pt for _, pt in g711]
    pts.append(te_pt)
    return opus_pt, g711, te_pt, pts


#: the codec part of Meta's answer by what it depends on (DTLS or SDES, the payload types, the offer's Opus
#: transport-cc): the m-line's formats and the lines from Opus's a=rtpmap to a=maxptime, written once per
#: shape (a few in a run; bounded) and filled in per call with the leg's own values
_ANSWER_CODEC_TEXT: dict[tuple, tuple[str, str]] = {}


def _answer_codec_text(dtls: bool, opus_pt: int | None, g711: list[tuple[str, int]], te_pt: int,
                       pts: list[int], transport_cc: bool) -> tuple[str, str]:
    key = (dtls, opus_pt, *g711, te_pt, transport_cc)
    known = _ANSWER_CODEC_TEXT.get(key)
    if known is not None:
        return known
    lines = ""
    if opus_pt is not None:
        lines = f"a=rtpmap:{opus_pt} opus/48000/2\r\n"
        if transport_cc:
            lines += f"a=rtcp-fb:{opus_pt} transport-cc\r\n"
        lines += f"a=fmtp:{opus_pt} {_OPUS_FMTP_GRAPH if dtls else _OPUS_FMTP_SIP}\r\n"      # (_opus_fmtp)
    known = (" ".join(map(str, pts)), lines + _codecs_tail(g711, te_pt))
    if len(_ANSWER_CODEC_TEXT) >= 64:
        _ANSWER_CODEC_TEXT.clear()
    _ANSWER_CODEC_TEXT[key] = known
    return known


def meta_answer(
    leg: LocalMedia,
    offer: SessionDescription,
    *,
    key_exchange: str = "DTLS",
    additional_codecs: Sequence[str] = (),
) -> MetaSdp:
    """:func:`build_meta_answer`, with what :func:`negotiate` needs of the answer (``MetaSdp``)."""
    kx = _normalise_key_exchange(key_exchange)
    audio = offer.audio
    if audio is None:
        raise SdpError("No m=audio line found in SDP")
    opus_pt, g711, te_pt, pts = answer_codecs(audio, additional_codecs)
    # the offer's a=mid, its direction and rtcp-mux at media level, read in one pass over its attributes
    mid = direction = None
    seen_mid = rtcp_mux = False
    for attr, value in audio.attributes:
        if attr == "mid":
            if not seen_mid:                    # (the first a=mid, as audio.attribute("mid") reads it)
                mid, seen_mid = value, True
        elif attr in _DIRECTION_ANSWER:
            if direction is None:
                direction = _DIRECTION_ANSWER[attr]
        elif attr == "rtcp-mux":
            rtcp_mux = True
    mid = mid or "audio"
    direction = direction or _answer_direction(offer, audio)      # (else the session level's)
    payload_types = {"opus": opus_pt} if opus_pt is not None else {}
    for name, pt in g711:                       # as _codec_pts reads them back from the text
        payload_types.setdefault(name.lower(), pt)
    payload_types.setdefault("telephone-event", te_pt)
    ssrc, stream = str(leg.ssrc), leg.stream_id          # (the number written once, not four times)
    ssrc_lines = (f"a=ssrc:{ssrc} cname:{_SSRC_CNAME}\r\na=ssrc:{ssrc} msid:{stream} {_TRACK_ID}\r\n"
                  f"a=ssrc:{ssrc} mslabel:{stream}\r\na=ssrc:{ssrc} label:{_TRACK_ID}\r\n")
    # the text written in a few pieces, not line by line (the lines _session_header, the m-line, ... make for
    # Meta's offer), its codec part from a template per shape; the same bytes: tests/test_sdp.py compares it
    # with the line-by-line answer
    if kx == "SDES":
        chosen = _chosen_crypto(offer, audio)
        if chosen is None:
            raise SdpError("No acceptable a=crypto line found in the offer")
        remote_crypto, crypto = chosen
        formats, codec_lines = _answer_codec_text(False, opus_pt, g711, te_pt, pts, False)
        text = (f"v=0\r\no=- {leg.session_id} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {mid}\r\n"
                f"a=msid-semantic: WMS {stream}\r\nm=audio {leg.port} {SDES_PROTO} {formats}\r\n"
                f"c=IN IP4 {leg.host}\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=mid:{mid}\r\na={direction}\r\n"
                f"a=rtcp-mux\r\na=crypto:{crypto.tag} {crypto.suite} inline:{leg.sdes_key_b64}\r\n"
                f"{codec_lines}{ssrc_lines}")
        return made(MetaSdp, {"text": text, "payload_types": payload_types, "setup": None,
                              "remote_crypto": remote_crypto})
    found = offer.effective_attribute(audio, "setup")
    offered_setup = found[1] if found else "actpass"
    setup = "passive" if offered_setup == "active" else "active"
    transport_cc = opus_pt is not None and any(v == f"{opus_pt} transport-cc"
                                               for _, v in audio.attributes_named("rtcp-fb"))
    formats, codec_lines = _answer_codec_text(True, opus_pt, g711, te_pt, pts, transport_cc)
    text = (f"v=0\r\no=- {leg.session_id} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {mid}\r\n"
            f"a=msid-semantic: WMS {stream}\r\n{_ICE_LITE}m=audio {leg.port} {DTLS_PROTO} {formats}\r\n"
            f"c=IN IP4 {leg.host}\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
            f"{_join(_dtls_transport_lines(leg, setup, trickle=True))}a=mid:{mid}\r\n")
    for _, value in audio.attributes_named("extmap"):
        ext_id, _, uri = (value or "").partition(" ")
        if uri.split(" ")[0] in _EXTMAPS:
            text += f"a=extmap:{ext_id} {uri.split(' ')[0]}\r\n"
    text += f"a={direction}\r\n"
    if rtcp_mux:
        text += "a=rtcp-mux\r\n"
    return made(MetaSdp, {"text": f"{text}{codec_lines}{ssrc_lines}", "payload_types": payload_types,
                          "setup": setup, "remote_crypto": None})


def _opus_fmtp(pt: int, kx: str) -> str:
    return f"a=fmtp:{pt} {_OPUS_FMTP_GRAPH if kx == 'DTLS' else _OPUS_FMTP_SIP}"


def _codecs_tail(g711: list[tuple[str, int]], te_pt: int) -> str:
    """The codec lines both of Meta's SDPs end with: G.711 codecs, RFC 4733 events, packet time."""
    g711_lines = "".join([f"a=rtpmap:{pt} {name}/8000\r\n" for name, pt in g711]) if g711 else ""
    return f"{g711_lines}a=rtpmap:{te_pt} telephone-event/8000\r\na=ptime:20\r\na=maxptime:20\r\n"


def _audio_tail(g711: list[tuple[str, int]], te_pt: int, leg: LocalMedia) -> str:
    """How both of Meta's SDPs end, as text: G.711 codecs, RFC 4733 events, packet time, the leg's SSRC
    (RFC 5576: cname, msid, mslabel, label), each line ending in CRLF."""
    ssrc, stream = str(leg.ssrc), leg.stream_id          # (the number written once, not four times)
    return (f"{_codecs_tail(g711, te_pt)}"
            f"a=ssrc:{ssrc} cname:{_SSRC_CNAME}\r\na=ssrc:{ssrc} msid:{stream} {_TRACK_ID}\r\n"
            f"a=ssrc:{ssrc} mslabel:{stream}\r\na=ssrc:{ssrc} label:{_TRACK_ID}\r\n")


def _chosen_crypto(sd: SessionDescription, audio: MediaDescription) -> tuple[str, CryptoAttribute] | None:
    """The business's ``a=crypto`` Meta uses (value and parsed): the first acceptable one, media level
    first. The one SDES choice: the answer's tag and suite and the relay's key both come from here (made
    once per SDP: kept as ``audio.chosen_crypto``, by the validation already for a business's SDP)."""
    if audio.chosen_crypto is not None:
        return audio.chosen_crypto
    for _, value in [*audio.attributes_named("crypto"), *sd.attributes_named("crypto")]:
        try:
            audio.chosen_crypto = (value or "", parse_crypto(value or ""))
        except ValueError:
            continue
        return audio.chosen_crypto
    return None


# --------------------------------------------------------------------------------------------
# The negotiation: what the relay does with the two SDPs
# --------------------------------------------------------------------------------------------

Addr = tuple[str, int]


@dataclass(frozen=True)
class Negotiated:
    """What Meta's SDP and the business's agreed on, from the relay's point of view."""

    key_exchange: str                   # DTLS | SDES
    dtls_role: str | None = None        # client | server (DTLS only)
    remote_fingerprint: str | None = None
    remote_ufrag: str | None = None
    remote_pwd: str | None = None
    remote_crypto: str | None = None    # SDES: the business's a=crypto value Meta chose
    remote_addr: Addr | None = None     # c= / m= of the business (SDES latching starts here)
    send_codec: str = "opus"
    #: Meta's payload type per codec both sides have: opus / pcmu / pcma / telephone-event
    payload_types: dict[str, int] = field(default_factory=dict)
    #: SDES: ``remote_crypto`` parsed, when the negotiation had it parsed already (the relay then does not
    #: parse the key again); not part of the document (``to_doc``): whoever reads one parses remote_crypto
    remote_key: CryptoAttribute | None = field(default=None, compare=False, repr=False)

    @property
    def telephone_event_pt(self) -> int:
        """RFC 4733 events; Meta's default 126 when the business did not negotiate them."""
        return self.payload_types.get("telephone-event", TELEPHONE_EVENT_PT)

    @property
    def audio_codecs(self) -> dict[int, str]:
        """Payload type → audio codec name (opus / pcmu / pcma), for what the business sends."""
        return {pt: name for name, pt in self.payload_types.items() if name in ("opus", "pcmu", "pcma")}

    def to_doc(self) -> dict:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "remote_key"}
        doc["remote_addr"] = list(self.remote_addr) if self.remote_addr else None
        doc["payload_types"] = dict(self.payload_types)
        return doc

    @classmethod
    def from_doc(cls, doc: dict) -> Negotiated:
        values = {f.name: doc[f.name] for f in fields(cls) if f.name in doc and f.name != "remote_key"}
        addr = values.get("remote_addr")
        values["remote_addr"] = (str(addr[0]), int(addr[1])) if addr else None
        values["payload_types"] = {str(k): int(v) for k, v in (values.get("payload_types") or {}).items()}
        return cls(**values)


def _codec_pts(audio: MediaDescription | None) -> dict[str, int]:
    """The first payload type of each codec the relay knows on ``audio``: opus (at 48000), pcmu, pcma and
    telephone-event (at 8000)."""
    found: dict[str, int] = {}
    if audio is None:
        return found
    rtpmap = audio.rtpmap
    for pt in audio.parsed_payload_types if audio.parsed_payload_types is not None else audio.payload_types:
        codec = rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)     # audio.codec(pt), inlined
        if codec is None:
            continue
        name = codec.encoding.lower()
        if name == "opus" and codec.clock_rate == 48000:
            found.setdefault("opus", pt)
        elif name in ("pcmu", "pcma") and codec.clock_rate == 8000:
            found.setdefault(name, pt)
        elif name == "telephone-event" and codec.clock_rate == 8000:
            found.setdefault("telephone-event", pt)
    return found


def negotiate(meta_sdp: str | SessionDescription | MetaSdp, business_sdp: str | SessionDescription,
              key_exchange: str) -> Negotiated:
    """What the relay must do for a call whose SDPs are ``meta_sdp`` (Meta's offer or answer, from the
    builders above) and ``business_sdp`` (the business's validated answer or offer): the codecs both
    have with Meta's payload types, the one the user's phone sends (the business's first preference),
    the DTMF payload type, the business's address, and the SDES key or the DTLS role and the
    business's ICE credentials and fingerprint. ``SdpError`` if either cannot be parsed. Either SDP may
    be given already parsed, and Meta's as the ``MetaSdp`` its builder returned (not parsed at all)."""
    kx = _normalise_key_exchange(key_exchange)
    if isinstance(meta_sdp, MetaSdp):
        meta, ours, meta_setup = None, meta_sdp.payload_types, meta_sdp.setup or "actpass"
    else:
        meta = meta_sdp if isinstance(meta_sdp, SessionDescription) else parse_sdp(meta_sdp)
        ours, meta_setup = _codec_pts(meta.audio), None
    business = business_sdp if isinstance(business_sdp, SessionDescription) else parse_sdp(business_sdp)
    baudio = business.audio
    theirs = _codec_pts(baudio)
    payload_types = {}
    for name, pt in ours.items():               # (a loop: a comprehension is a frame of its own)
        if name in theirs:
            payload_types[name] = pt
    send_codec = "opus"
    remote_addr = None
    if baudio is not None:
        rtpmap = baudio.rtpmap
        for pt in (baudio.parsed_payload_types if baudio.parsed_payload_types is not None
                   else baudio.payload_types):            # the business's preference
            codec = rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)     # baudio.codec(pt), inlined
            name = codec.encoding.lower() if codec else ""
            if name in ("opus", "pcmu", "pcma") and name in payload_types:
                send_codec = name
                break
        connection = baudio.connection or business.connection
        if connection and connection.address not in ("0.0.0.0", "::") and baudio.port not in (0, 9):
            remote_addr = (connection.address, baudio.port)
    values = {"key_exchange": kx, "dtls_role": None, "remote_fingerprint": None, "remote_ufrag": None,
              "remote_pwd": None, "remote_crypto": None, "remote_addr": remote_addr, "send_codec": send_codec,
              "payload_types": payload_types, "remote_key": None}      # every field of Negotiated, in order
    if baudio is None:
        return made(Negotiated, values)
    if kx == "SDES":
        chosen = _chosen_crypto(business, baudio)   # (kept by the validation already, for a business's)
        if isinstance(meta_sdp, MetaSdp) and meta_sdp.remote_crypto is not None:   # chosen as the answer was built
            values["remote_crypto"] = meta_sdp.remote_crypto
            values["remote_key"] = chosen[1] if chosen is not None and chosen[0] == meta_sdp.remote_crypto else None
        elif chosen is not None:
            values["remote_crypto"], values["remote_key"] = chosen
        return made(Negotiated, values)
    ufrag = business.effective_attribute(baudio, "ice-ufrag")
    pwd = business.effective_attribute(baudio, "ice-pwd")
    fingerprint = business.effective_attribute(baudio, "fingerprint")
    if meta is not None:
        meta_setup = (meta.effective_attribute(meta.audio, "setup") or (0, "actpass"))[1] if meta.audio else "actpass"
    their_setup = (business.effective_attribute(baudio, "setup") or (0, "active"))[1]
    if meta_setup == "active":
        role = "client"
    elif meta_setup == "passive":
        role = "server"
    else:   # Meta offered actpass: the business's answer decides
        role = "client" if their_setup == "passive" else "server"
    values["dtls_role"] = role
    values["remote_fingerprint"] = fingerprint[1] if fingerprint else None
    values["remote_ufrag"] = ufrag[1] if ufrag else None
    values["remote_pwd"] = pwd[1] if pwd else None
    return made(Negotiated, values)
