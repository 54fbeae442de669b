"""The SDP parser as it was before its hot loop was tightened (wacall 3a6e012, ``wacall.domain.sdp_syntax``):
line by line, one helper per attribute, every m-line format converted anew whenever asked. Kept verbatim
as the reference ``tests/test_sdp_reference.py`` compares the live parser with, over many mutated SDPs:
same description (or same error, same line) for every input."""

from __future__ import annotations

from wacall.domain.sdp_syntax import (_COMMON_ATTRIBUTES, _FMTP_RE, _MEDIA_TYPES, _RTPMAP_RE, _SESSION_TYPES,
                                      _TOKEN_RE, MediaDescription, RtpMap, SdpError, SessionDescription,
                                      _number, _parse_connection, _parse_origin, _split_lines, line_error)


def payload_types(media: MediaDescription) -> list[int]:
    """``MediaDescription.payload_types`` as it was: the formats converted on every call."""
    return [int(f) for f in media.formats] if media.is_rtp else []


def _parse_media_line(number: int, raw: str, value: str) -> MediaDescription:
    parts = value.split(" ")
    if len(parts) < 4 or not all(parts):
        raise line_error(number, raw, "expected 'm=<media> <port> <proto> <fmt> ...'")
    kind, port_text, proto, *formats = parts
    if not _TOKEN_RE.match(kind):
        raise line_error(number, raw, "invalid media type")
    port_part, _, count_part = port_text.partition("/")
    if not _number(port_part) or int(port_part) > 65535:
        raise line_error(number, raw, "invalid port")
    port_count: int | None = None
    if count_part:
        if not _number(count_part) or int(count_part) < 1:
            raise line_error(number, raw, "invalid port count")
        port_count = int(count_part)
    if not all(_TOKEN_RE.match(p) for p in proto.split("/")):
        raise line_error(number, raw, "invalid transport protocol")
    media = MediaDescription(
        kind=kind, port=int(port_part), port_count=port_count, proto=proto, formats=formats, line=number
    )
    if media.is_rtp:
        for fmt in formats:
            if not _number(fmt) or int(fmt) > 127:
                raise line_error(number, raw, f"invalid RTP payload type {fmt!r}")
    return media


def _parse_attribute(number: int, raw: str, value: str) -> tuple[str, str | None]:
    name, sep, attr_value = value.partition(":")
    if name not in _COMMON_ATTRIBUTES and (not name or not _TOKEN_RE.match(name)):
        raise line_error(number, raw, "invalid attribute name")
    return name, (attr_value if sep else None)


def _add_media_attribute(media: MediaDescription, number: int, raw: str, name: str, value: str | None) -> None:
    media.attributes.append((name, value))
    media.attribute_lines.append(number)
    if name == "rtpmap":
        match = _RTPMAP_RE.match(value or "")
        if match is None or int(match.group(1)) > 127:
            raise line_error(number, raw, "expected 'a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]'")
        pt = int(match.group(1))
        if pt in media.rtpmap:
            raise line_error(number, raw, f"duplicate rtpmap for payload type {pt}")
        channels = int(match.group(4)) if match.group(4) else None
        media.rtpmap[pt] = RtpMap(match.group(2), int(match.group(3)), channels)
    elif name == "fmtp":
        match = _FMTP_RE.match(value or "")
        if match is None:
            raise line_error(number, raw, "expected 'a=fmtp:<payload type> <parameters>'")
        media.fmtp[int(match.group(1))] = match.group(2)


def parse_sdp(text: str) -> SessionDescription:
    if not isinstance(text, str) or not text.strip():
        raise SdpError("SDP is empty")
    lines = _split_lines(text)
    sd = SessionDescription(lines=lines)
    current: MediaDescription | None = None
    seen: set[str] = set()
    for number, raw in enumerate(lines, 1):
        if raw == "":
            raise line_error(number, raw, "empty line")
        if "\r" in raw:
            raise line_error(number, raw.replace("\r", "\\r"), "stray CR inside the line")
        kind = raw[0]
        if raw[1:2] != "=" or not "a" <= kind <= "z":
            raise line_error(number, raw, "expected '<type>=<value>' with a single lowercase letter type")
        value = raw[2:]
        if number <= 3 and kind != "vos"[number - 1]:
            raise line_error(number, raw, f"expected a '{'vos'[number - 1]}=' line here")
        if kind == "v":
            if number != 1:
                raise line_error(number, raw, "v= must appear only as the first line")
            if value != "0":
                raise line_error(number, raw, "unsupported protocol version (must be v=0)")
            continue
        if current is None:
            if kind not in _SESSION_TYPES and kind != "m":
                raise line_error(number, raw, f"unknown line type '{kind}='")
            if kind in "os" and kind in seen:
                raise line_error(number, raw, f"duplicate {kind}= line")
            seen.add(kind)
        elif kind not in _MEDIA_TYPES and kind != "m":
            raise line_error(number, raw, f"'{kind}=' is not allowed inside a media section")
        if kind == "a":
            name, attr_value = _parse_attribute(number, raw, value)
            if current is None:
                sd.attributes.append((name, attr_value))
                sd.attribute_lines.append(number)
            else:
                _add_media_attribute(current, number, raw, name, attr_value)
        elif kind == "o":
            sd.origin = _parse_origin(number, raw, value)
        elif kind == "s":
            if value == "":
                raise line_error(number, raw, "session name must not be empty (use 's=-')")
            sd.session_name = value
        elif kind == "t":
            parts = value.split(" ")
            if len(parts) != 2 or not all(_number(p) for p in parts):
                raise line_error(number, raw, "expected 't=<start-time> <stop-time>'")
            sd.timing.append((int(parts[0]), int(parts[1])))
        elif kind == "c":
            conn = _parse_connection(number, raw, value)
            if current is None:
                sd.connection = conn
            else:
                current.connection = conn
        elif kind == "m":
            if "t" not in seen:
                raise line_error(number, raw, "m= line before any t= line")
            current = _parse_media_line(number, raw, value)
            sd.media.append(current)
    for required in "ost":
        if required not in seen:
            raise SdpError(f"SDP has no {required}= line")
    for media in sd.media:
        if media.connection is None and sd.connection is None:
            raise line_error(media.line, lines[media.line - 1], "no c= line at session or media level")
    return sd


# --------------------------------------------------------------------------------------------
# Meta's answer as it was written line by line (wacall 904b47e, ``wacall.domain.sdp.meta_answer``), the
# reference its text written in a few pieces is compared with, and its codec choice by find_codec (wacall
# 63fcc6f's ``answer_codecs``, which reads the payload types once per codec, not once for all)
# --------------------------------------------------------------------------------------------

def answer_codecs(audio, additional_codecs=()):
    from wacall.domain import sdp as rules

    opus_pt = audio.find_codec("opus", 48000, 2)
    te_pt = rules._telephone_event_pt(audio)
    g711 = []
    for name, _ in rules._enabled_g711(additional_codecs):
        offered_pt = audio.find_codec(name, 8000)
        if offered_pt is not None:
            g711.append((name, offered_pt))
    if opus_pt is None and not g711:
        raise SdpError("No opus/48000/2 rtpmap (nor an enabled PCMU/PCMA) found in the offer")
    pts = [] if opus_pt is None else [opus_pt]
    if g711:
        pts += [pt for _, pt in g711]
    pts.append(te_pt)
    return opus_pt, g711, te_pt, pts


def meta_answer_text(leg, offer: SessionDescription, *, key_exchange: str, additional_codecs=()) -> str:
    from wacall.domain import sdp as rules

    kx = rules._normalise_key_exchange(key_exchange)
    audio = offer.audio
    if audio is None:
        raise SdpError("No m=audio line found in SDP")
    opus_pt, g711, te_pt, pts = answer_codecs(audio, additional_codecs)
    mid = audio.attribute("mid") or "audio"
    proto = rules.DTLS_PROTO if kx == "DTLS" else rules.SDES_PROTO
    lines = rules._session_header(leg, mid, ice_lite=kx == "DTLS")
    lines += [
        f"m=audio {leg.port} {proto} {' '.join(map(str, pts))}",
        f"c=IN IP4 {leg.host}",
        "a=rtcp:9 IN IP4 0.0.0.0",
    ]
    if kx == "DTLS":
        found = offer.effective_attribute(audio, "setup")
        offered_setup = found[1] if found else "actpass"
        setup = "passive" if offered_setup == "active" else "active"
        lines += rules._dtls_transport_lines(leg, setup, trickle=True)
    lines.append(f"a=mid:{mid}")
    if kx == "DTLS":
        for _, value in audio.attributes_named("extmap"):
            ext_id, _, uri = (value or "").partition(" ")
            if uri.split(" ")[0] in rules._EXTMAPS:
                lines.append(f"a=extmap:{ext_id} {uri.split(' ')[0]}")
    lines.append(f"a={rules._answer_direction(offer, audio)}")
    if audio.has_attribute("rtcp-mux") or kx == "SDES":
        lines.append("a=rtcp-mux")
    if kx == "SDES":
        chosen = rules._chosen_crypto(offer, audio)
        if chosen is None:
            raise SdpError("No acceptable a=crypto line found in the offer")
        crypto = chosen[1]
        lines.append(f"a=crypto:{crypto.tag} {crypto.suite} inline:{leg.sdes_key_b64}")
    if opus_pt is not None:
        lines.append(f"a=rtpmap:{opus_pt} opus/48000/2")
        if kx == "DTLS" and any(v == f"{opus_pt} transport-cc" for _, v in audio.attributes_named("rtcp-fb")):
            lines.append(f"a=rtcp-fb:{opus_pt} transport-cc")
        lines.append(rules._opus_fmtp(opus_pt, kx))
    ssrc, stream = leg.ssrc, leg.stream_id
    lines += [f"a=rtpmap:{pt} {name}/8000" for name, pt in g711]
    lines += [f"a=rtpmap:{te_pt} telephone-event/8000", "a=ptime:20", "a=maxptime:20",
              f"a=ssrc:{ssrc} cname:WhatsAppAudioStream1", f"a=ssrc:{ssrc} msid:{stream} WhatsAppTrack1",
              f"a=ssrc:{ssrc} mslabel:{stream}", f"a=ssrc:{ssrc} label:WhatsAppTrack1"]
    return "\r\n".join(lines) + "\r\n"
