"""SDP model, Meta's validation rules for business SDP, and Meta-side SDP builders."""

from __future__ import annotations

import base64
import hashlib
import random
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support import sdp_reference
from support.sdp_samples import FINGERPRINT, business_answer, business_offer

import wacall.domain.sdp as sdp_rules
from wacall.media.certificate import DtlsCertificate
from wacall.media.leg import MediaLeg
from wacall.domain.sdp import (
    LocalMedia,
    RtpMap,
    SdpError,
    build_meta_answer,
    build_meta_offer,
    meta_answer,
    negotiate,
    parse_crypto,
    parse_sdp,
    validate_business_sdp,
)
from wacall.domain.sdp import CryptoAttribute, MetaSdp, Negotiated
import wacall.domain.sdp_syntax as sdp_syntax
from wacall.domain.sdp_syntax import forget_memos, made, parse_crypto_in_python, parse_sdp_in_python


def crlf(text: str) -> str:
    """Sample blocks are written one line per SDP line; put them on the wire with CRLF."""
    return "\r\n".join(line.strip() for line in text.strip().splitlines()) + "\r\n"


def line_no(sdp: str, prefix: str) -> int:
    """1-based number of the first line starting with ``prefix``."""
    for number, line in enumerate(sdp.split("\r\n"), start=1):
        if line.startswith(prefix):
            return number
    raise AssertionError(f"{prefix!r} not in SDP")


def replace_line(sdp: str, prefix: str, new: str | None) -> str:
    """Replace (or with ``None`` delete) every line starting with ``prefix``."""
    out = []
    for line in sdp.split("\r\n")[:-1]:
        if line.startswith(prefix):
            if new is not None:
                out.append(new)
        else:
            out.append(line)
    return "\r\n".join(out) + "\r\n"


def insert_after(sdp: str, prefix: str, new: str) -> str:
    n = line_no(sdp, prefix)
    lines = sdp.split("\r\n")
    lines.insert(n, new)
    return "\r\n".join(lines)


# Chromium (M120+) offer for a business-initiated call: the sample in Meta's reference docs.
CHROMIUM_OFFER = crlf("""
    v=0
    o=- 3626166318745852955 2 IN IP4 127.0.0.1
    s=-
    t=0 0
    a=group:BUNDLE 0
    a=extmap-allow-mixed
    a=msid-semantic: WMS d8b26053-4474-4eb7-b3c3-c93d6c8c9b2e
    m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 110 126
    c=IN IP4 0.0.0.0
    a=rtcp:9 IN IP4 0.0.0.0
    a=candidate:3329386510 1 udp 2122260223 127.0.0.1 54321 typ host generation 0 network-id 1
    a=ice-ufrag:4g1c
    a=ice-pwd:qY/Bb+jQzg5ICn6X4fhJQetk
    a=ice-options:trickle
    a=fingerprint:sha-256 35:47:24:24:9F:93:C4:3E:DB:37:7F:BB:ED:F8:20:B5:AD:AC:DC:35:C2:7D:67:EE:6C:35:54:DF:A6:00:5C:4A
    a=setup:actpass
    a=mid:0
    a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
    a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
    a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
    a=sendrecv
    a=msid:d8b26053-4474-4eb7-b3c3-c93d6c8c9b2e 5b4d3d96-ea9b-44a8-87e6-11a1ad21a3bc
    a=rtcp-mux
    a=rtcp-rsize
    a=rtpmap:111 opus/48000/2
    a=rtcp-fb:111 transport-cc
    a=fmtp:111 minptime=10;useinbandfec=1
    a=rtpmap:63 red/48000/2
    a=fmtp:63 111/111
    a=rtpmap:9 G722/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=rtpmap:110 telephone-event/48000
    a=rtpmap:126 telephone-event/8000
    a=ssrc:2220762577 cname:w/zwpg3jXNiTFTdZ
    a=ssrc:2220762577 msid:d8b26053-4474-4eb7-b3c3-c93d6c8c9b2e 5b4d3d96-ea9b-44a8-87e6-11a1ad21a3bc
""")

# Chromium answer to Meta's user-initiated offer: the business answer sample in Meta's docs.
CHROMIUM_ANSWER = crlf("""
    v=0
    o=- 2822644248144643993 2 IN IP4 127.0.0.1
    s=-
    t=0 0
    a=group:BUNDLE audio
    a=msid-semantic: WMS eb909cf0-87f0-4358-a4c9-7861680d9431
    m=audio 9 UDP/TLS/RTP/SAVPF 111 126
    c=IN IP4 0.0.0.0
    a=rtcp:9 IN IP4 0.0.0.0
    a=ice-ufrag:X1ho
    a=ice-pwd:7fJSbV2N5qWiA5QiDKwK3vuh
    a=fingerprint:sha-256 2E:35:9F:21:9E:63:72:E5:42:74:76:2D:B3:70:F7:CB:24:14:9B:14:52:71:05:48:DA:4D:67:31:09:58:2A:ED
    a=setup:active
    a=mid:audio
    a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
    a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
    a=sendrecv
    a=rtcp-mux
    a=rtpmap:111 opus/48000/2
    a=rtcp-fb:111 transport-cc
    a=fmtp:111 minptime=10;useinbandfec=1
    a=rtpmap:126 telephone-event/8000
    a=ssrc:330833028 cname:EDc1JutBl8rwHQc2
    a=ssrc:330833028 msid:eb909cf0-87f0-4358-a4c9-7861680d9431 ea478c16-d9f7-493c-8cec-19bfac750a36
""")

# aiortc 1.16 offer (one audio transceiver): opus on PT 96, three fingerprints, no DTMF.
AIORTC_OFFER = crlf("""
    v=0
    o=- 4004310663 4004310663 IN IP4 0.0.0.0
    s=-
    t=0 0
    a=group:BUNDLE 0
    a=msid-semantic:WMS *
    m=audio 38798 UDP/TLS/RTP/SAVPF 96 9 0 8
    c=IN IP4 127.0.0.1
    a=sendrecv
    a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
    a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=mid:0
    a=msid:257c2a87-4fcf-483e-aef4-c095d4703c15 8b3f59b6-47d5-45e5-a2b0-13fe35cfc363
    a=rtcp:9 IN IP4 0.0.0.0
    a=rtcp-mux
    a=ssrc:75676386 cname:7a531ec0-8df0-4305-a855-df7b8627f4c8
    a=rtpmap:96 opus/48000/2
    a=rtpmap:9 G722/8000
    a=rtpmap:0 PCMU/8000
    a=rtpmap:8 PCMA/8000
    a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 38798 typ host
    a=end-of-candidates
    a=ice-ufrag:PYwg
    a=ice-pwd:1vBL8aPynIGSdZVjVIvsFR
    a=fingerprint:sha-256 AD:CA:08:D8:4A:AF:38:EB:A8:2B:98:04:3B:72:2D:5C:39:E0:78:CF:DF:87:F8:FC:4E:98:11:C7:30:F9:8A:0C
    a=fingerprint:sha-384 DC:8C:C3:D3:27:F9:E7:9F:65:E1:4E:92:1D:BD:A1:2E:02:8F:3F:AF:DD:45:13:D1:08:F6:73:FE:5F:3F:88:E7:5D:C0:96:32:77:5E:B3:0E:26:1F:98:E5:9F:9E:5A:66
    a=setup:actpass
""")

# aiortc 1.16 answer to Meta's offer (opus mirrored to 111; aiortc has no telephone-event).
AIORTC_ANSWER = crlf("""
    v=0
    o=- 4004310851 4004310851 IN IP4 0.0.0.0
    s=-
    t=0 0
    a=group:BUNDLE audio
    a=msid-semantic:WMS *
    m=audio 33754 UDP/TLS/RTP/SAVPF 111
    c=IN IP4 127.0.0.1
    a=sendrecv
    a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
    a=mid:audio
    a=msid:fc383d21-a166-4d1e-9d4f-cfc74988076c 124e1e29-a419-4b07-93ee-c5c18c93ec54
    a=rtcp:9 IN IP4 0.0.0.0
    a=rtcp-mux
    a=ssrc:3261556260 cname:158c74f3-3b78-4eb6-a36d-1601e1b17f37
    a=rtpmap:111 opus/48000/2
    a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 33754 typ host
    a=end-of-candidates
    a=ice-ufrag:GdJq
    a=ice-pwd:JFLUdPh9aGtXgPx0Gil82U
    a=fingerprint:sha-256 E1:19:83:1A:A4:E2:D8:81:E3:5D:04:BE:36:F8:1D:3D:FA:EA:A2:B5:11:5F:93:43:DF:B4:B3:1F:4D:6E:06:4F
    a=setup:active
""")

SDES_KEY = base64.b64encode(bytes(range(30))).decode()

# A Twilio-style SDES offer (Meta's SIP sample, with a real key): opus on 107, DTMF on 101.
SDES_OFFER = crlf(f"""
    v=0
    o=root 1185414872 1185414872 IN IP4 172.18.155.180
    s=TwilioMediaGateway
    c=IN IP4 168.86.138.232
    t=0 0
    m=audio 19534 RTP/SAVP 107 0 8 101
    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{SDES_KEY}
    a=rtpmap:0 PCMU/8000
    a=rtpmap:107 opus/48000/2
    a=fmtp:107 useinbandfec=1
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-16
    a=ptime:20
    a=maxptime:20
    a=sendrecv
""")


@pytest.fixture(scope="module")
def cert() -> DtlsCertificate:
    return DtlsCertificate.default()


@pytest.fixture
def leg(cert: DtlsCertificate) -> MediaLeg:
    return MediaLeg.create("wacid.TEST", host="127.0.0.1", port=40012, fingerprint=cert.fingerprint)


def details(exc: pytest.ExceptionInfo[SdpError]) -> str:
    return exc.value.details


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def test_parse_chromium_offer() -> None:
    sd = parse_sdp(CHROMIUM_OFFER)
    assert sd.version == 0
    assert sd.origin.session_id == "3626166318745852955"
    assert sd.origin.address == "127.0.0.1"
    assert sd.session_name == "-"
    assert sd.timing == [(0, 0)]
    assert sd.attribute("group") == "BUNDLE 0"
    assert ("extmap-allow-mixed", None) in sd.attributes
    assert len(sd.media) == 1
    audio = sd.audio
    assert audio is not None
    assert (audio.kind, audio.port, audio.proto) == ("audio", 9, "UDP/TLS/RTP/SAVPF")
    assert audio.formats == ["111", "63", "9", "0", "8", "110", "126"]
    assert audio.payload_types == [111, 63, 9, 0, 8, 110, 126]
    assert audio.connection is not None and audio.connection.address == "0.0.0.0"
    assert audio.rtpmap[111] == RtpMap("opus", 48000, 2) == ("opus", 48000, 2)
    assert audio.rtpmap[126] == ("telephone-event", 8000, None)
    assert audio.fmtp[111] == "minptime=10;useinbandfec=1"
    assert audio.fmtp[63] == "111/111"
    assert audio.attribute("mid") == "0"
    assert audio.attribute("setup") == "actpass"
    assert audio.line == line_no(CHROMIUM_OFFER, "m=audio")
    # attributes keep their order and their line numbers
    assert audio.attributes[0] == ("rtcp", "9 IN IP4 0.0.0.0")
    assert list(audio.attributes_named("ice-ufrag")) == [(line_no(CHROMIUM_OFFER, "a=ice-ufrag"), "4g1c")]
    assert audio.find_codec("telephone-event", 8000) == 126
    assert audio.find_codec("opus", 48000, 2) == 111


def test_parse_aiortc_offer_static_payload_types_and_multiple_fingerprints() -> None:
    sd = parse_sdp(AIORTC_OFFER)
    audio = sd.audio
    assert audio is not None
    assert audio.find_codec("opus", 48000, 2) == 96
    assert audio.codec(0) == ("PCMU", 8000, None)
    assert [v.split()[0] for _, v in audio.attributes_named("fingerprint") if v] == ["sha-256", "sha-384"]
    assert audio.has_attribute("end-of-candidates")
    assert audio.attribute("end-of-candidates") is None


def test_parse_accepts_lf_only_text() -> None:
    # The model is lenient about line endings; Meta's CRLF rule lives in validate_business_sdp.
    sd = parse_sdp(CHROMIUM_ANSWER.replace("\r\n", "\n"))
    assert sd.audio is not None and sd.audio.attribute("setup") == "active"



def test_a_last_line_ending_in_a_bare_cr_parses_as_it_did_before_the_crlf_fast_path():
    """The one-split path for all-CRLF text must not take text whose end is a lone CR (its LF count still
    equals its CRLF count): that CR is dropped like any line's, as for LF-only text."""
    text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r"
    assert parse_sdp(text).audio.port == 4000
    assert parse_sdp(text).lines == parse_sdp(text[:-1] + "\n").lines

def test_parse_sessions_level_connection_and_static_codec() -> None:
    sd = parse_sdp(SDES_OFFER)
    assert sd.connection is not None and sd.connection.address == "168.86.138.232"
    assert sd.audio is not None and sd.audio.connection is None
    assert sd.audio.codec(8) == ("PCMA", 8000, None)


def test_parse_error_names_line_exactly() -> None:
    text = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=tool:x\r\nm=audio x RTP/AVP 0\r\n"
    with pytest.raises(SdpError) as exc:
        parse_sdp(text)
    assert details(exc) == "SDP line 7 'm=audio x RTP/AVP 0': invalid port"
    assert exc.value.line == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "SDP is empty"),
        ("o=- 1 1 IN IP4 1.2.3.4\r\n", "SDP line 1 'o=- 1 1 IN IP4 1.2.3.4': expected a 'v=' line here"),
        ("v=1\r\n", "SDP line 1 'v=1': unsupported protocol version (must be v=0)"),
        ("v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n", "SDP line 2 'o=- x 1 IN IP4 1.2.3.4': session id and version must be numeric"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n",
         "SDP line 5 'm=audio 9 RTP/AVP 0': no c= line at session or media level"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 200\r\n",
         "SDP line 6 'm=audio 9 RTP/AVP 200': invalid RTP payload type '200'"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 96\r\na=rtpmap:96 opus\r\n",
         "SDP line 7 'a=rtpmap:96 opus': expected 'a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]'"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n\r\n", "SDP line 5 '': empty line"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nX=foo\r\n",
         "SDP line 5 'X=foo': expected '<type>=<value>' with a single lowercase letter type"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\nt=0 0\r\n",
         "SDP line 7 't=0 0': 't=' is not allowed inside a media section"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\n", "SDP has no t= line"),
        # digits str.isdigit() accepts but int() refuses: an SDP error (Graph 100), not a ValueError (a 500)
        ("v=0\r\no=- \u00b9 1 IN IP4 1.2.3.4\r\n",
         "SDP line 2 'o=- \u00b9 1 IN IP4 1.2.3.4': session id and version must be numeric"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=\u00b2 0\r\n",
         "SDP line 4 't=\u00b2 0': expected 't=<start-time> <stop-time>'"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nc=IN IP4 1.2.3.4\r\nm=audio \u2079 RTP/AVP 0\r\n",
         "SDP line 6 'm=audio \u2079 RTP/AVP 0': invalid port"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9/\u00b2 RTP/AVP 0\r\n",
         "SDP line 6 'm=audio 9/\u00b2 RTP/AVP 0': invalid port count"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP \u00b9\r\n",
         "SDP line 6 'm=audio 9 RTP/AVP \u00b9': invalid RTP payload type '\u00b9'"),
    ],
)
def test_parse_errors(text: str, expected: str) -> None:
    with pytest.raises(SdpError) as exc:
        parse_sdp(text)
    assert details(exc) == expected


# --------------------------------------------------------------------------------------------
# validate_business_sdp: accepted inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offer", [CHROMIUM_OFFER, AIORTC_OFFER], ids=["chromium", "aiortc"])
def test_real_world_offers_validate_as_offers(offer: str) -> None:
    sd = validate_business_sdp(offer, role="offer")
    assert sd.audio is not None


@pytest.mark.parametrize("answer", [CHROMIUM_ANSWER, AIORTC_ANSWER], ids=["chromium", "aiortc"])
def test_real_world_answers_validate_as_answers(answer: str) -> None:
    assert validate_business_sdp(answer).audio is not None  # role defaults to "answer"


def test_offer_setup_may_be_active_passive_or_actpass() -> None:
    for setup in ("active", "passive", "actpass"):
        validate_business_sdp(replace_line(CHROMIUM_OFFER, "a=setup:", f"a=setup:{setup}"), role="offer")


def test_answer_setup_passive_is_fine() -> None:
    validate_business_sdp(replace_line(CHROMIUM_ANSWER, "a=setup:", "a=setup:passive"))


def test_ice_credentials_at_session_level_are_fine() -> None:
    moved = replace_line(replace_line(CHROMIUM_ANSWER, "a=ice-ufrag", None), "a=ice-pwd", None)
    moved = insert_after(moved, "a=msid-semantic", "a=ice-pwd:7fJSbV2N5qWiA5QiDKwK3vuh")
    moved = insert_after(moved, "a=msid-semantic", "a=ice-ufrag:X1ho")
    validate_business_sdp(moved)


def test_g711_in_answer_needs_additional_codecs() -> None:
    answer = replace_line(CHROMIUM_ANSWER, "m=audio", "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 126")
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(answer)
    assert details(exc).startswith(f"SDP line {line_no(answer, 'm=audio')} 'm=audio 9 UDP/TLS/RTP/SAVPF 111 0 126': "
                                   "codec PCMU/8000 (payload type 0) is not supported in an answer")
    validate_business_sdp(answer, additional_codecs=["PCMU"])
    with pytest.raises(SdpError):
        validate_business_sdp(answer, additional_codecs=["PCMA"])


def test_g711_in_offer_is_fine_without_additional_codecs() -> None:
    validate_business_sdp(SDES_OFFER, key_exchange="SDES", role="offer")


# A G.711-only endpoint (a legacy PBX or PSTN gateway without Opus): PCMU and PCMA, DTMF on 101.
G711_ONLY_OFFER = replace_line(replace_line(replace_line(SDES_OFFER, "m=audio", "m=audio 19534 RTP/SAVP 0 8 101"),
                                            "a=rtpmap:107", None), "a=fmtp:107", None)


@pytest.mark.parametrize("role", ["offer", "answer"])
def test_g711_only_sdp_is_accepted_when_the_number_enables_g711(role: str) -> None:
    """Meta offers G.711 precisely for endpoints without Opus (call settings, audio codec)."""
    validate_business_sdp(G711_ONLY_OFFER, key_exchange="SDES", role=role, additional_codecs=["PCMU", "PCMA"])
    if role == "offer":                         # an offer may list more than Meta enabled; one usable is enough
        validate_business_sdp(G711_ONLY_OFFER, key_exchange="SDES", role=role, additional_codecs=["PCMA"])


@pytest.mark.parametrize("role", ["offer", "answer"])
def test_g711_only_sdp_is_refused_without_additional_codecs(role: str) -> None:
    _assert_line_error(G711_ONLY_OFFER, "m=audio",
                       "Opus (a=rtpmap:<pt> opus/48000/2) is required on the audio m-line; without Opus, "
                       "PCMU/PCMA must be enabled in settings calling.audio.additional_codecs",
                       key_exchange="SDES", role=role)


# --------------------------------------------------------------------------------------------
# validate_business_sdp: every rejection names the line or the missing item
# --------------------------------------------------------------------------------------------


def test_bare_lf_is_rejected_naming_the_first_such_line() -> None:
    lines = CHROMIUM_ANSWER.split("\r\n")
    text = "\r\n".join(lines[:4]) + "\r\n" + lines[4] + "\n" + "\r\n".join(lines[5:])
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(text)
    assert details(exc) == "SDP line 5 'a=group:BUNDLE audio': line ends in a bare LF; SDP lines must end in CRLF"


def test_all_lf_rejected_at_line_1() -> None:
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(CHROMIUM_ANSWER.replace("\r\n", "\n"))
    assert details(exc) == "SDP line 1 'v=0': line ends in a bare LF; SDP lines must end in CRLF"


def test_missing_final_crlf_rejected() -> None:
    text = CHROMIUM_ANSWER[:-2]
    n = text.count("\r\n") + 1
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(text)
    assert details(exc).startswith(f"SDP line {n} 'a=ssrc:330833028 msid:")
    assert details(exc).endswith("line does not end in CRLF")


def test_json_in_json_rejected() -> None:
    import json

    wrapped = json.dumps({"sdp": CHROMIUM_ANSWER, "type": "answer"})
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(wrapped)
    assert details(exc).startswith("SDP line 1 '{\"sdp\": ")
    assert "JSON-in-JSON" in details(exc)


def test_first_line_must_be_v0() -> None:
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(CHROMIUM_ANSWER.replace("v=0", "v=1", 1))
    assert details(exc) == "SDP line 1 'v=1': unsupported protocol version (must be v=0)"


def _assert_line_error(text: str, prefix: str, reason: str, **kwargs: object) -> None:
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(text, **kwargs)  # type: ignore[arg-type]
    n = line_no(text, prefix)
    raw = text.split("\r\n")[n - 1]
    assert details(exc) == f"SDP line {n} '{raw}': {reason}"
    assert exc.value.line == n


def test_video_m_line_rejected() -> None:
    text = CHROMIUM_ANSWER + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n"
    _assert_line_error(text, "m=video", "only one audio m-line is supported (video is not)")


def test_second_audio_m_line_rejected() -> None:
    text = CHROMIUM_ANSWER + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
    lines = text.split("\r\n")
    second = [i for i, line in enumerate(lines, start=1) if line.startswith("m=audio")][1]
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(text)
    assert details(exc) == f"SDP line {second} 'm=audio 9 UDP/TLS/RTP/SAVPF 111': only one audio m-line is supported (second m=audio)"


def test_no_audio_rejected() -> None:
    text = crlf("""
        v=0
        o=- 1 2 IN IP4 127.0.0.1
        s=-
        t=0 0
    """)
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(text)
    assert details(exc) == "No m=audio line found in SDP"


def test_rejected_audio_port_zero() -> None:
    text = replace_line(CHROMIUM_ANSWER, "m=audio", "m=audio 0 UDP/TLS/RTP/SAVPF 111 126")
    _assert_line_error(text, "m=audio", "audio m-line is rejected (port 0)")


def test_opus_required() -> None:
    text = replace_line(CHROMIUM_ANSWER, "a=rtpmap:111", "a=rtpmap:111 opus/48000")
    _assert_line_error(text, "m=audio", "Opus (a=rtpmap:<pt> opus/48000/2) is required on the audio m-line")


def test_dynamic_payload_type_without_rtpmap() -> None:
    text = replace_line(CHROMIUM_ANSWER, "a=rtpmap:126", None)
    _assert_line_error(text, "m=audio", "payload type 126 has no a=rtpmap")


def test_dtls_needs_udp_tls_rtp_savpf() -> None:
    text = replace_line(CHROMIUM_ANSWER, "m=audio", "m=audio 9 RTP/SAVPF 111 126")
    _assert_line_error(text, "m=audio", "transport must be UDP/TLS/RTP/SAVPF for DTLS key exchange (got RTP/SAVPF)")


@pytest.mark.parametrize("name", ["ice-ufrag", "ice-pwd"])
def test_missing_ice_credentials(name: str) -> None:
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(replace_line(CHROMIUM_ANSWER, f"a={name}:", None))
    assert details(exc) == f"No a={name} found in SDP"


def test_short_ice_pwd() -> None:
    text = replace_line(CHROMIUM_ANSWER, "a=ice-pwd:", "a=ice-pwd:tooshort")
    _assert_line_error(text, "a=ice-pwd:", "invalid ice-pwd (need 22-256 ICE characters)")


def test_missing_fingerprint() -> None:
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(replace_line(CHROMIUM_ANSWER, "a=fingerprint:", None))
    assert details(exc) == "No fingerprint found in SDP"
    assert exc.value.line is None


def test_non_sha256_fingerprint_rejected() -> None:
    text = replace_line(CHROMIUM_ANSWER, "a=fingerprint:", "a=fingerprint:sha-1 " + ":".join(["AB"] * 20))
    _assert_line_error(text, "a=fingerprint:", "fingerprint hash function must be sha-256")


def test_malformed_sha256_fingerprint_rejected() -> None:
    text = replace_line(CHROMIUM_ANSWER, "a=fingerprint:", "a=fingerprint:sha-256 AB:CD")
    _assert_line_error(text, "a=fingerprint:", "invalid fingerprint (expected 'sha-256' and 32 hex pairs)")


def test_missing_setup() -> None:
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(replace_line(CHROMIUM_ANSWER, "a=setup:", None))
    assert details(exc) == "No a=setup found in SDP"


def test_answer_with_actpass_rejected() -> None:
    text = replace_line(CHROMIUM_ANSWER, "a=setup:", "a=setup:actpass")
    _assert_line_error(text, "a=setup:", "a=setup in an answer must be one of active, passive")


def test_offer_with_holdconn_rejected() -> None:
    text = replace_line(CHROMIUM_OFFER, "a=setup:", "a=setup:holdconn")
    _assert_line_error(text, "a=setup:", "a=setup in an offer must be one of active, passive, actpass", role="offer")


def test_offer_with_red_and_g722_is_fine_but_not_as_answer() -> None:
    validate_business_sdp(CHROMIUM_OFFER, role="offer")
    as_answer = replace_line(CHROMIUM_OFFER, "a=setup:", "a=setup:active")
    _assert_line_error(as_answer, "a=rtpmap:63", "codec red/48000/2 (payload type 63) is not supported in an answer",
                       role="answer")


def test_telephone_event_48000_not_allowed_in_answer() -> None:
    text = replace_line(CHROMIUM_ANSWER, "a=rtpmap:126", "a=rtpmap:126 telephone-event/48000")
    _assert_line_error(text, "a=rtpmap:126", "codec telephone-event/48000 (payload type 126) is not supported in an answer")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        validate_business_sdp(CHROMIUM_ANSWER, key_exchange="ZRTP")
    with pytest.raises(ValueError):
        validate_business_sdp(CHROMIUM_ANSWER, role="pranswer")


# --------------------------------------------------------------------------------------------
# SDES
# --------------------------------------------------------------------------------------------


def test_sdes_offer_validates_and_answer_form() -> None:
    validate_business_sdp(SDES_OFFER, key_exchange="SDES", role="offer")
    answer = replace_line(SDES_OFFER, "m=audio", "m=audio 15822 RTP/SAVP 107 101")
    validate_business_sdp(answer, key_exchange="SDES", role="answer")


def test_sdes_needs_rtp_savp() -> None:
    _assert_line_error(CHROMIUM_ANSWER, "m=audio",
                       "transport must be RTP/SAVP for SDES key exchange (got UDP/TLS/RTP/SAVPF)", key_exchange="SDES")


def test_sdes_missing_crypto() -> None:
    with pytest.raises(SdpError) as exc:
        validate_business_sdp(replace_line(SDES_OFFER, "a=crypto:", None), key_exchange="SDES", role="offer")
    assert details(exc) == "No a=crypto line found in SDP"


@pytest.mark.parametrize(
    ("crypto", "reason"),
    [
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(16)).decode(),
         "key material decodes to 16 bytes, AES_CM_128_HMAC_SHA1_80 needs 30 (key||salt)"),
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:not*base64!", "key material is not valid base64"),
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 uri:https://keys.example/1", "key parameter must use the 'inline:' method"),
        ("a=crypto:1 AEAD_AES_256_GCM inline:" + base64.b64encode(bytes(44)).decode(),
         "unsupported crypto suite AEAD_AES_256_GCM (use AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32)"),
        ("a=crypto:AES_CM_128_HMAC_SHA1_80", "expected 'a=crypto:<tag> <crypto-suite> inline:<key||salt>'"),
    ],
)
def test_sdes_bad_crypto_lines(crypto: str, reason: str) -> None:
    text = replace_line(SDES_OFFER, "a=crypto:", crypto)
    _assert_line_error(text, "a=crypto:", reason, key_exchange="SDES", role="offer")


def test_sdes_unsupported_suite_tolerated_next_to_a_good_one() -> None:
    text = insert_after(SDES_OFFER, "m=audio", "a=crypto:2 AEAD_AES_256_GCM inline:" + base64.b64encode(bytes(44)).decode())
    validate_business_sdp(text, key_exchange="SDES", role="offer")


def test_parse_crypto_with_lifetime_mki_and_32_bit_tag() -> None:
    c = parse_crypto(f"7 AES_CM_128_HMAC_SHA1_32 inline:{SDES_KEY}|2^20|1:4 KDR=1")
    assert (c.tag, c.suite, c.key_b64) == (7, "AES_CM_128_HMAC_SHA1_32", SDES_KEY)
    assert c.key == bytes(range(30))
    assert (c.lifetime, c.mki, c.session_params) == ("2^20", "1:4", ("KDR=1",))


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def test_meta_offer_dtls(leg: MediaLeg, cert: DtlsCertificate) -> None:
    text = build_meta_offer(leg)
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    sd = validate_business_sdp(text, role="offer")  # Meta's offer meets the offer rules too
    assert sd.has_attribute("ice-lite")
    assert sd.attribute("group") == "BUNDLE audio"
    audio = sd.audio
    assert audio is not None
    assert (audio.port, audio.proto, audio.payload_types) == (40012, "UDP/TLS/RTP/SAVPF", [111, 126])
    assert audio.connection is not None and audio.connection.address == "127.0.0.1"
    assert audio.attribute("fingerprint") == f"sha-256 {cert.fingerprint}"
    assert audio.attribute("ice-ufrag") == leg.ice_ufrag
    assert audio.attribute("ice-pwd") == leg.ice_pwd
    assert audio.attribute("setup") == "actpass"
    assert audio.attribute("mid") == "audio"
    assert audio.has_attribute("rtcp-mux") and audio.has_attribute("sendrecv")
    assert audio.rtpmap == {111: ("opus", 48000, 2), 126: ("telephone-event", 8000, None)}
    assert audio.fmtp[111] == "minptime=10;useinbandfec=1"
    assert audio.attribute("rtcp-fb") == "111 transport-cc"
    assert (audio.attribute("ptime"), audio.attribute("maxptime")) == ("20", "20")
    assert [v for _, v in audio.attributes_named("extmap")] == [
        "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    ]
    candidates = [v for _, v in audio.attributes_named("candidate")]
    assert len(candidates) == 1
    assert re.fullmatch(
        rf"\d+ 1 udp 2122260223 127\.0\.0\.1 40012 typ host generation 0 network-cost 50 ufrag {re.escape(leg.ice_ufrag)}",
        candidates[0] or "",
    )
    ssrc = [v for _, v in audio.attributes_named("ssrc")]
    assert ssrc[0] == f"{leg.ssrc} cname:WhatsAppAudioStream1"
    assert {v.split(" ")[0] for v in ssrc if v} == {str(leg.ssrc)}
    assert [v.split(" ")[1].split(":")[0] for v in ssrc if v] == ["cname", "msid", "mslabel", "label"]
    assert build_meta_offer(leg) == text  # stable per leg


def test_meta_offer_with_g711(leg: MediaLeg) -> None:
    sd = parse_sdp(build_meta_offer(leg, additional_codecs=["PCMA", "PCMU"]))
    assert sd.audio is not None
    assert sd.audio.payload_types == [111, 0, 8, 126]
    assert sd.audio.rtpmap[0] == ("PCMU", 8000, None) and sd.audio.rtpmap[8] == ("PCMA", 8000, None)
    only_pcma = parse_sdp(build_meta_offer(leg, additional_codecs=["pcma"])).audio
    assert only_pcma is not None and only_pcma.payload_types == [111, 8, 126]


def test_meta_offer_sdes(leg: MediaLeg) -> None:
    text = build_meta_offer(leg, key_exchange="SDES")
    sd = validate_business_sdp(text, key_exchange="SDES", role="offer")
    audio = sd.audio
    assert audio is not None
    assert (audio.proto, audio.payload_types) == ("RTP/SAVP", [111, 126])
    assert audio.attribute("crypto") == f"1 AES_CM_128_HMAC_SHA1_80 inline:{leg.sdes_key_b64}"
    for absent in ("ice-ufrag", "ice-pwd", "fingerprint", "setup", "candidate", "ice-lite"):
        assert not audio.has_attribute(absent) and not sd.has_attribute(absent)
    assert audio.fmtp[111].startswith("maxaveragebitrate=20000;")


def test_meta_answer_to_chromium_offer(leg: MediaLeg, cert: DtlsCertificate) -> None:
    offer = validate_business_sdp(CHROMIUM_OFFER, role="offer")
    text = build_meta_answer(leg, offer)
    sd = validate_business_sdp(text, role="answer")  # Meta's answer obeys the answer rules
    audio = sd.audio
    assert audio is not None
    assert sd.has_attribute("ice-lite")
    assert sd.attribute("group") == "BUNDLE 0"
    assert audio.attribute("mid") == "0"
    assert audio.payload_types == [111, 126]  # no red, G722, G.711 or telephone-event/48000
    assert audio.attribute("setup") == "active"  # Meta is DTLS client when the offer says actpass
    assert audio.attribute("fingerprint") == f"sha-256 {cert.fingerprint}"
    assert [v for _, v in audio.attributes_named("extmap")] == [
        "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    ]


@pytest.mark.parametrize(("offered", "answered"), [("actpass", "active"), ("passive", "active"), ("active", "passive")])
def test_meta_answer_setup_role(leg: MediaLeg, offered: str, answered: str) -> None:
    offer = parse_sdp(replace_line(CHROMIUM_OFFER, "a=setup:", f"a=setup:{offered}"))
    audio = parse_sdp(build_meta_answer(leg, offer)).audio
    assert audio is not None and audio.attribute("setup") == answered


def test_meta_answer_mirrors_payload_types_of_aiortc_offer(leg: MediaLeg) -> None:
    offer = validate_business_sdp(AIORTC_OFFER, role="offer")
    sd = parse_sdp(build_meta_answer(leg, offer, additional_codecs=["PCMU", "PCMA"]))
    audio = sd.audio
    assert audio is not None
    # opus mirrored to 96; offer had no telephone-event/8000 so Meta uses 126; G.711 kept (enabled)
    assert audio.payload_types == [96, 0, 8, 126]
    assert audio.rtpmap[96] == ("opus", 48000, 2)
    assert audio.rtpmap[126] == ("telephone-event", 8000, None)
    assert audio.attribute("mid") == "0"
    assert [v for _, v in audio.attributes_named("extmap")] == ["2 urn:ietf:params:rtp-hdrext:ssrc-audio-level"]
    assert not audio.has_attribute("rtcp-fb")  # the offer had no transport-cc feedback


def test_meta_answer_keeps_only_enabled_and_offered_g711(leg: MediaLeg) -> None:
    offer = parse_sdp(CHROMIUM_OFFER)
    audio = parse_sdp(build_meta_answer(leg, offer, additional_codecs=["PCMA"])).audio
    assert audio is not None and audio.payload_types == [111, 8, 126]
    no_g711 = replace_line(replace_line(CHROMIUM_OFFER, "m=audio", "m=audio 9 UDP/TLS/RTP/SAVPF 111 126"),
                           "a=rtpmap:8 ", None)
    audio = parse_sdp(build_meta_answer(leg, parse_sdp(no_g711), additional_codecs=["PCMA", "PCMU"])).audio
    assert audio is not None and audio.payload_types == [111, 126]


def test_meta_answer_to_a_g711_only_offer_is_g711_only(leg: MediaLeg) -> None:
    offer = validate_business_sdp(G711_ONLY_OFFER, key_exchange="SDES", role="offer", additional_codecs=["PCMU"])
    answer = build_meta_answer(leg, offer, key_exchange="SDES", additional_codecs=["PCMU"])
    audio = validate_business_sdp(answer, key_exchange="SDES", additional_codecs=["PCMU"]).audio
    assert audio is not None and audio.payload_types == [0, 101]
    assert audio.find_codec("opus", 48000, 2) is None and "opus" not in answer
    with pytest.raises(SdpError, match="nor an enabled PCMU/PCMA"):
        build_meta_answer(leg, parse_sdp(G711_ONLY_OFFER), key_exchange="SDES")


def test_meta_answer_telephone_event_fallback_when_126_is_taken(leg: MediaLeg) -> None:
    offer = replace_line(CHROMIUM_OFFER, "m=audio", "m=audio 9 UDP/TLS/RTP/SAVPF 126 127")
    offer = replace_line(offer, "a=rtpmap:111", "a=rtpmap:126 opus/48000/2")
    offer = replace_line(offer, "a=rtpmap:126 telephone-event", "a=rtpmap:127 telephone-event/48000")
    offer = replace_line(offer, "a=rtcp-fb:111", None)
    offer = replace_line(offer, "a=fmtp:111", None)
    audio = parse_sdp(build_meta_answer(leg, validate_business_sdp(offer, role="offer"))).audio
    assert audio is not None
    assert audio.payload_types == [126, 125]
    assert audio.rtpmap[125] == ("telephone-event", 8000, None)


def test_meta_answer_sdes_mirrors_twilio_payload_types(leg: MediaLeg) -> None:
    offer = validate_business_sdp(SDES_OFFER, key_exchange="SDES", role="offer")
    text = build_meta_answer(leg, offer, key_exchange="SDES")
    sd = validate_business_sdp(text, key_exchange="SDES", role="answer")
    audio = sd.audio
    assert audio is not None
    # Meta's SIP sample: answer to "RTP/SAVP 107 0 8 101" is "RTP/SAVP 107 101".
    assert (audio.proto, audio.payload_types) == ("RTP/SAVP", [107, 101])
    assert audio.attribute("crypto") == f"1 AES_CM_128_HMAC_SHA1_80 inline:{leg.sdes_key_b64}"
    assert audio.attribute("mid") == "audio" and sd.attribute("group") == "BUNDLE audio"
    assert not sd.has_attribute("ice-lite") and not audio.has_attribute("fingerprint")


def test_meta_answer_sdes_uses_tag_and_suite_of_first_acceptable_crypto(leg: MediaLeg) -> None:
    offer = replace_line(SDES_OFFER, "a=crypto:", f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{SDES_KEY}")
    offer = insert_after(offer, "m=audio", "a=crypto:9 AEAD_AES_128_GCM inline:" + base64.b64encode(bytes(28)).decode())
    audio = parse_sdp(build_meta_answer(leg, parse_sdp(offer), key_exchange="SDES")).audio
    assert audio is not None
    assert audio.attribute("crypto") == f"3 AES_CM_128_HMAC_SHA1_32 inline:{leg.sdes_key_b64}"


# --------------------------------------------------------------------------------------------
# Certificate
# --------------------------------------------------------------------------------------------


def test_certificate(cert: DtlsCertificate) -> None:
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", cert.fingerprint)
    loaded = x509.load_pem_x509_certificate(cert.cert_pem)
    der = loaded.public_bytes(serialization.Encoding.DER)
    assert cert.fingerprint.replace(":", "").lower() == hashlib.sha256(der).hexdigest()
    assert loaded.subject.rfc4514_string() == "CN=wacall-relay"
    assert loaded.issuer == loaded.subject
    lifetime = loaded.not_valid_after_utc - loaded.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    key = serialization.load_pem_private_key(cert.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert DtlsCertificate.default() is DtlsCertificate.default()
    assert DtlsCertificate.generate().fingerprint != cert.fingerprint


# --------------------------------------------------------------------------------------------
# The parser against its reference (the line-by-line parser before the hot loop was tightened)
# --------------------------------------------------------------------------------------------

_SEEDS = [CHROMIUM_OFFER, CHROMIUM_ANSWER, AIORTC_OFFER, AIORTC_ANSWER, SDES_OFFER, business_offer(),
          business_answer(),
          # the SIP bench's offer (tests/support/sip_tools.py sdes_offer_sdp)
          "v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/SAVP 111 126\r\n"
          f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{SDES_KEY}\r\na=rtpmap:111 opus/48000/2\r\n"
          "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:126 telephone-event/8000\r\na=fmtp:126 0-15\r\n"
          "a=ptime:20\r\na=sendrecv\r\n",
          "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000/2 RTP/AVP 0 8\r\n"
          "m=video 0 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"]
#: what a mutation inserts: the characters the parser's every check turns on
_PIECES = ["\r", "\n", "\r\n", " ", "/", "=", ":", "a=", "m=", "c=", "t=", "o=", "s=", "v=", "0", "9", "127", "128",
           "x", "\u00b9", "-", "RTP/", "a=rtpmap:", "a=fmtp:", "a=crypto:", "@", "A", "\t", ""]


def _mutations(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        lines = text.split("\r\n")
        op = rng.randrange(6)
        at = rng.randrange(len(text) + 1)
        if op == 0:                                         # insert a piece
            text = text[:at] + rng.choice(_PIECES) + text[at:]
        elif op == 1:                                       # delete a run
            text = text[:at] + text[at + rng.randint(1, 4):]
        elif op == 2 and len(lines) > 2:                    # swap two lines
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\r\n".join(lines)
        elif op == 3 and lines:                             # duplicate a line
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            text = "\r\n".join(lines)
        elif op == 4:                                       # one line ending changed
            text = text.replace("\r\n", rng.choice(["\n", "\r", "\r\r\n", " \r\n"]), 1) if rng.random() < 0.5 \
                else text.replace("\r\n", "\n")
        else:                                               # a token of a line replaced
            text = text[:at] + rng.choice(_PIECES) + text[at + rng.randint(1, 3):]
    return text


def _parsed(parse, text: str):
    try:
        return parse(text)
    except SdpError as exc:
        return ("error", exc.details, exc.line)


def _sdp_cases(n: int) -> list[str]:
    rng = random.Random(20261201)
    return [*_SEEDS, *(_mutations(rng, rng.choice(_SEEDS)) for _ in range(n))]


def test_parse_sdp_matches_the_reference_parser_on_mutated_sdps() -> None:
    """Every description (the compiled scanner's, where it reads the text; the Python parser's otherwise) the parser builds (or the error, and its line) is the reference parser's, and
    the payload types it keeps are those the reference converts on each asking."""
    parsed_some = 0
    for text in _sdp_cases(4000):
        ours, reference = _parsed(parse_sdp, text), _parsed(sdp_reference.parse_sdp, text)
        assert ours == reference, text
        if not isinstance(ours, tuple):
            parsed_some += 1
            for media, ref_media in zip(ours.media, reference.media):
                assert media.payload_types == sdp_reference.payload_types(ref_media), text
                for codec in (("opus", 48000, 2), ("PCMU", 8000), ("telephone-event", 8000)):
                    assert media.find_codec(*codec) == ref_media.find_codec(*codec), text
    assert parsed_some > 400          # the mutations leave enough SDPs whole for the comparison to mean something


#: an m-line's port replaced: the parser's memo of m-lines read before but for their port must check it as ever
_PORTS = ["0", "9", "40002", "65535", "65536", "", "4000/2", "4000/0", "x1", "\u00b9", "+1", " 1", "0009"]


def _port_changed(rng: random.Random, text: str) -> str:
    at = text.find("m=audio ")
    if at < 0:
        return text
    start = at + len("m=audio ")
    end = text.find(" ", start)
    return text if end < 0 else text[:start] + rng.choice(_PORTS) + text[end:]


def test_the_parsers_memos_change_no_parse() -> None:
    """The parser's memos (a=rtpmap / a=fmtp values, m-lines but for their port) change nothing: every case
    parses the same (description, or error and its line) with them empty, filled by the seeds (other ports,
    the usual lines), and filled by the case itself."""
    rng = random.Random(7)
    cases = _sdp_cases(2500)
    cases += [_port_changed(rng, rng.choice(_SEEDS)) for _ in range(1000)]
    cases += [_port_changed(rng, rng.choice(cases)) for _ in range(500)]
    hits = 0
    for text in cases:
        forget_memos()
        cold = _parsed(parse_sdp_in_python, text)
        for seed in _SEEDS:
            parse_sdp_in_python(seed)
        for line in text.split("\n"):       # an m-line whose media type, protocol and formats a seed had
            kind, _, rest = line[2:].rstrip("\r").partition(" ")
            hits += line.startswith("m=") and (kind, rest.partition(" ")[2]) in sdp_syntax._MEDIA_TAILS
        from_seeds = _parsed(parse_sdp_in_python, text)
        again = _parsed(parse_sdp_in_python, text)
        assert cold == from_seeds == again, text
    forget_memos()
    assert hits > 1000          # m-lines (of other ports, of mutated values) met the memo


def test_made_is_the_frozen_dataclass_init() -> None:
    """``made`` (fields set at once) makes what the frozen dataclass's ``__init__`` makes: the same fields, in the
    same order, equal, and frozen as ever; negotiate's ``Negotiated`` carries every field in order."""
    key = base64.b64decode(SDES_KEY)
    for cls, values in [
        (CryptoAttribute, {"tag": 1, "suite": "AES_CM_128_HMAC_SHA1_80", "key_b64": SDES_KEY, "key": key,
                           "lifetime": "2^20", "mki": "1:4", "session_params": ("UNENCRYPTED_SRTCP",)}),
        (MetaSdp, {"text": "v=0\r\n", "payload_types": {"opus": 111}, "setup": "active", "remote_crypto": None}),
        (Negotiated, {"key_exchange": "SDES", "dtls_role": None, "remote_fingerprint": None, "remote_ufrag": None,
                      "remote_pwd": None, "remote_crypto": "1 x", "remote_addr": ("192.0.2.1", 4000),
                      "send_codec": "opus", "payload_types": {"opus": 111}, "remote_key": None}),
    ]:
        theirs = cls(**values)
        ours = made(cls, values)
        assert type(ours) is cls and ours == theirs and vars(ours) == vars(theirs)
        assert list(vars(ours)) == list(vars(theirs))
        with pytest.raises(AttributeError):
            ours.x = 1
    for cls in (int, str, bytes, tuple, type, RtpMap):    # object.__new__ refuses them
        with pytest.raises(TypeError, match="is not safe"):
            made(cls, {})
    crypto = parse_crypto(f"7 AES_CM_128_HMAC_SHA1_32 inline:{SDES_KEY}|2^20|1:4 KDR=1")
    assert vars(crypto) == vars(CryptoAttribute(7, "AES_CM_128_HMAC_SHA1_32", SDES_KEY, key, "2^20", "1:4",
                                                ("KDR=1",)))
    for case in _SEEDS:
        for kx in ("DTLS", "SDES"):
            try:
                negotiated = negotiate(case, case, kx)
            except SdpError:
                continue
            assert list(vars(negotiated)) == list(vars(Negotiated(**vars(negotiated))))


@pytest.mark.parametrize("key_exchange", ["DTLS", "SDES"])
@pytest.mark.parametrize("role", ["offer", "answer"])
def test_validation_answer_and_negotiation_match_the_reference_parser(monkeypatch, key_exchange, role) -> None:
    """Meta's validation, its answer and the negotiation come out the same on the parser's descriptions as on
    the reference parser's (which the rules read through the general ``payload_types``)."""
    leg = LocalMedia(call_id="c", host="192.0.2.9", port=40000, ice_ufrag="uFrAg0001", ice_pwd="p" * 24,
                     fingerprint=FINGERPRINT.split(" ", 1)[1], ssrc=1234, sdes_key_b64=SDES_KEY, session_id=42,
                     stream_id="stream")

    def outcome(text: str):
        try:
            sd = validate_business_sdp(text, key_exchange=key_exchange, additional_codecs=["PCMA"], role=role)
        except SdpError as exc:
            return ("invalid", exc.details)
        if role == "answer":
            return ("valid", negotiate(build_meta_offer(leg, key_exchange=key_exchange), sd, key_exchange))
        try:
            answer = meta_answer(leg, sd, key_exchange=key_exchange, additional_codecs=["PCMA"])
        except SdpError as exc:
            return ("no answer", exc.details)
        return ("valid", answer, negotiate(answer, sd, key_exchange))

    cases = _sdp_cases(1500)
    ours = [outcome(text) for text in cases]
    monkeypatch.setattr(sdp_rules, "parse_sdp", sdp_reference.parse_sdp)
    reference = [outcome(text) for text in cases]
    assert ours == reference
    assert sum(o[0] == "valid" for o in ours) > 10, [o[0] for o in ours].count("valid")


@pytest.mark.parametrize("key_exchange", ["DTLS", "SDES"])
def test_metas_answer_text_is_the_line_by_line_answers(key_exchange) -> None:
    """Meta's answer, written in a few pieces, is byte for byte the answer written line by line (the reference
    in tests/support/sdp_reference.py), over mutated offers, with and without G.711 enabled, with and without
    an IPv6 candidate; or the same error."""
    legs = [LocalMedia(call_id="c", host="192.0.2.9", port=40000, ice_ufrag="uFrAg0001", ice_pwd="p" * 24,
                       fingerprint=FINGERPRINT.split(" ", 1)[1], ssrc=4294967295, sdes_key_b64=SDES_KEY,
                       session_id=42, stream_id="stream"),
            LocalMedia(call_id="d", host="192.0.2.10", port=40002, ice_ufrag="uFrAg0002", ice_pwd="q" * 24,
                       fingerprint=FINGERPRINT.split(" ", 1)[1], ssrc=7, sdes_key_b64=SDES_KEY, session_id=2 ** 40,
                       stream_id="s2", host6="2001:db8::1", port6=40004)]
    answered = 0
    for n, text in enumerate(_sdp_cases(1500)):
        try:
            offer = validate_business_sdp(text, key_exchange=key_exchange, additional_codecs=["PCMA"], role="offer")
        except SdpError:
            continue
        for codecs in ([], ["PCMA"], ["pcmu", "PCMA"]):
            leg = legs[n % 2]
            try:
                ours = meta_answer(leg, offer, key_exchange=key_exchange, additional_codecs=codecs).text
            except SdpError as exc:
                ours = ("error", exc.details)
            try:
                reference = sdp_reference.meta_answer_text(leg, offer, key_exchange=key_exchange,
                                                           additional_codecs=codecs)
            except SdpError as exc:
                reference = ("error", exc.details)
            assert ours == reference, text
            answered += isinstance(ours, str)
    assert answered > 30


@pytest.mark.parametrize("media_lines, session_line", [
    (["a=mid:0", "a=sendrecv", "a=rtcp-mux"], None),
    (["a=mid:first", "a=mid:second", "a=sendonly"], None),
    (["a=mid", "a=recvonly", "a=inactive", "a=rtcp-mux"], "a=sendonly"),
    (["a=rtcp-mux"], "a=recvonly"),
    ([], None),
])
def test_metas_answer_reads_mid_direction_and_rtcp_mux_as_the_attribute_lookups_do(media_lines, session_line):
    """meta_answer reads the offer's a=mid, direction and rtcp-mux in one pass: what the general lookups
    (attribute, the direction at media then session level, has_attribute) read."""
    lines = business_offer().split("\r\n")
    lines = [ln for ln in lines if ln not in ("a=mid:0", "a=sendrecv", "a=rtcp-mux")]
    at = lines.index("a=rtpmap:111 opus/48000/2")
    lines[at:at] = media_lines
    if session_line is not None:
        lines.insert(lines.index("a=group:BUNDLE 0") + 1, session_line)
    offer = validate_business_sdp("\r\n".join(lines), role="offer")
    audio = offer.audio
    leg = LocalMedia(call_id="c", host="192.0.2.9", port=40000, ice_ufrag="uFrAg0001", ice_pwd="p" * 24,
                     fingerprint=FINGERPRINT.split(" ", 1)[1], ssrc=1234, sdes_key_b64="A" * 40, session_id=42,
                     stream_id="stream")
    answer = meta_answer(leg, offer).text.split("\r\n")
    mid = audio.attribute("mid") or "audio"
    assert f"a=mid:{mid}" in answer and f"a=group:BUNDLE {mid}" in answer
    directions = [ln for ln in answer if ln in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")]
    assert directions == [f"a={sdp_rules._answer_direction(offer, audio)}"]
    assert ("a=rtcp-mux" in answer) == audio.has_attribute("rtcp-mux")


# --------------------------------------------------------------------------------------------
# The compiled scanner (domain/sdpscan.c) against the Python parser, its reference and fallback
# --------------------------------------------------------------------------------------------

needs_scanner = pytest.mark.skipif(sdp_syntax._SCAN is None, reason="the compiled SDP scanner is not built")


def _same(ours, theirs) -> bool:
    """``ours`` and ``theirs`` equal and of the same types all the way down (a named tuple is no plain tuple, an
    int no bool), a dataclass's fields (compared or not) in the same order."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, (sdp_syntax.SessionDescription, sdp_syntax.MediaDescription)):
        return list(vars(ours)) == list(vars(theirs)) and all(_same(vars(ours)[k], vars(theirs)[k]) for k in vars(ours))
    if isinstance(ours, (list, tuple)):
        return len(ours) == len(theirs) and all(_same(a, b) for a, b in zip(ours, theirs))
    if isinstance(ours, dict):
        return list(ours) == list(theirs) and all(_same(ours[k], theirs[k]) for k in ours)
    return ours == theirs


def _left_to_python(text: str) -> bool:
    """What the scanner leaves to Python though Python reads it: non-ASCII text, a number of 19 digits or more,
    an m-line of more than 64 formats."""
    return (not text.isascii() or re.search(r"\d{19}", text) is not None
            or any(line.startswith("m=") and line.count(" ") > 66 for line in re.split("\r?\n", text)))


#: what the scanner's own checks turn on, beside _PIECES: the characters regular expressions' \s takes (0x1c-0x1f
#: among them), NUL, DEL, the biggest numbers it reads itself and the first it leaves, ports and payload types
#: about their limits, token and non-token characters
_SCANNER_PIECES = [*_PIECES, "\x1c", "\x1f", "\x0b", "\x0c", "\x00", "\x7f", "\x80", "1000000000000000000",
                   "1000000000000000001", "99999999999999999999", "65535", "65536", "0127", "0128", "1000",
                   "/0", "/1", "//", "~", "!", "(", "\"", "a=rtpmap:96 x/1/2", "a=fmtp:1000 x", "a=fmtp:0 ",
                   "m=audio 9 RTP/AVP 0\r\n", "c=IN IP6 ::1\r\n", "\r\na=rtpmap:0 PCMU/8000", "IP4", "IP6",
                   "b=AS:64\r\n", "i=x\r\n", "k=clear\r\n", " 0" * 70]


def _scanner_mutation(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text) + 1)
        piece = rng.choice(_SCANNER_PIECES)
        text = text[:at] + piece + text[at + rng.choice([0, 0, 1, 2, 3]):]
    return text


#: what a token of a line (between spaces, '/', ':' and '=') is replaced with: the values about every limit the
#: parser checks (ports, port counts, payload types, the digits of numbers, the address types, empty)
_TOKENS = ["", "0", "1", "00", "9", "127", "128", "0127", "999", "1000", "65535", "65536", "065535", "4000/0",
           "1000000000000000000", "1000000000000000001", "x", "IP4", "IP6", "IN", "RTP/AVP", "RTP", "opus", "-",
           "a b", "\x1c", "\t", "~", "(", "\u00b2"]


def _token_mutation(rng: random.Random, text: str) -> str:
    lines = text.split("\r\n")
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(lines))
        pieces = re.split("([ /:=])", lines[i])
        at = rng.randrange(0, len(pieces), 2)
        if rng.random() < 0.25:                 # the line cut after a separator (an empty last field)
            del pieces[at:]
        else:
            pieces[at] = rng.choice(_TOKENS)
        lines[i] = "".join(pieces)
    return "\r\n".join(lines)


def _scanner_cases() -> list[str]:
    rng = random.Random(24)
    seeds = [*_SEEDS, *(seed.replace("\r\n", "\n") for seed in _SEEDS),
             *(seed[:-2] for seed in _SEEDS), *(seed[:-1] for seed in _SEEDS)]    # LF only; no last CRLF, a bare CR
    return [*_sdp_cases(3000), *seeds, *(_scanner_mutation(rng, rng.choice(seeds)) for _ in range(3000)),
            *(_token_mutation(rng, rng.choice(_SEEDS)) for _ in range(3000))]


@needs_scanner
def test_the_compiled_scanner_reads_what_the_python_parser_reads() -> None:
    """The scanner's description of a text is the Python parser's, to the type of every value; a text it leaves
    (None) is one Python refuses, or one of the few kinds it leaves to Python on purpose; and parse_sdp gives the
    Python parser's description or error whichever reads it."""
    scanned = refused = left = 0
    for text in _scanner_cases():
        python = _parsed(parse_sdp_in_python, text)
        ours = sdp_syntax._SCAN(text)
        if ours is None:
            if isinstance(python, tuple):
                refused += 1
            else:
                assert _left_to_python(text), text
                left += 1
        else:
            assert not isinstance(python, tuple), (text, python)
            assert _same(ours, python), text
            scanned += 1
        assert _same(_parsed(parse_sdp, text), python), text
    assert scanned > 1500 and refused > 4000 and left > 50, (scanned, refused, left)


@needs_scanner
def test_the_compiled_scanner_takes_only_text() -> None:
    """Anything but a str (a subclass too) is left to Python, whose errors are the ones the callers know."""
    class Text(str):
        pass

    for value in (None, b"v=0\r\n", 0, Text(_SEEDS[0]), ""):
        assert sdp_syntax._SCAN(value) is None
    with pytest.raises(SdpError, match="SDP is empty"):
        parse_sdp(b"v=0")      # type: ignore[arg-type]
    assert _same(parse_sdp(Text(_SEEDS[0])), parse_sdp_in_python(_SEEDS[0]))


@needs_scanner
def test_the_scanners_descriptions_are_what_the_rules_read() -> None:
    """A description from the scanner is an ordinary one: its media section changed as the rules change it
    (the chosen a=crypto kept), its fields read and set like the Python parser's."""
    sd = parse_sdp(_SEEDS[7])
    audio = sd.audio
    assert sdp_syntax._SCAN(_SEEDS[7]) is not None and audio is not None
    validate_business_sdp(_SEEDS[7], key_exchange="SDES", role="offer")
    audio.chosen_crypto = ("x", None)
    assert audio.chosen_crypto == ("x", None) and audio == parse_sdp_in_python(_SEEDS[7]).audio
    assert audio.payload_types == [111, 126] and audio.find_codec("opus", 48000, 2) == 111
    assert sd.origin.session_id == "7" and sd.connection.address == "127.0.0.1"


@needs_scanner
def test_the_compiled_scanner_reads_origins_of_any_number_of_digits() -> None:
    """An o= line's session id and version are kept as text: the scanner reads them however long (Chromium's and
    wacall's own 62-bit session ids have 19 digits most of the time), as the Python parser does."""
    assert re.search(r"^o=- \d{19} ", CHROMIUM_OFFER, re.M) and re.search(r"^o=- \d{19} ", CHROMIUM_ANSWER, re.M)
    for text in (CHROMIUM_OFFER, CHROMIUM_ANSWER,
                 _SEEDS[7].replace("o=- 7 7 ", "o=- 99999999999999999999999 0018446744073709551616 ")):
        ours = sdp_syntax._SCAN(text)
        assert ours is not None, text
        assert _same(ours, parse_sdp_in_python(text))


#: what an a=crypto mutation inserts: the characters and pieces parse_crypto's checks turn on
_CRYPTO_PIECES = [" ", "  ", "|", ";", ":", "=", "==", "A", "+", "/", "-", "_", "\t", "\r", "\n", "\x1c", "\x00",
                  "\x7f", "\u00e9", "\u0661", "inline:", "2^20", "1:4", "AES_CM_128_HMAC_SHA1_32", "0", "1234567890"]
_CRYPTO_SEEDS = [
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{SDES_KEY}",
    f"7 AES_CM_128_HMAC_SHA1_32 inline:{SDES_KEY}|2^20|1:4 KDR=1 UNENCRYPTED_SRTCP",
    f"123456789 AES_CM_128_HMAC_SHA1_80 inline:{SDES_KEY}|1:4|2^31;inline:{SDES_KEY}",
    f"2 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(bytes(range(200, 230))).decode()}||",
    f"3 AEAD_AES_256_GCM inline:{base64.b64encode(bytes(44)).decode()}",
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(bytes(29)).decode()}",
]


def _crypto_outcome(parse, value):  # type: ignore[no-untyped-def]
    try:
        crypto = parse(value)
    except (ValueError, TypeError) as exc:
        return type(exc), str(exc)
    return list(vars(crypto).items())


@needs_scanner
def test_the_compiled_crypto_reader_reads_what_python_reads() -> None:
    """``parse_crypto`` (the compiled reader for the usual values) gives what ``parse_crypto_in_python`` gives, to
    every field's type and order, or its error, on a=crypto values and thousands of mutations of them (random
    keys, malformed ones included); the compiled reader leaves only values it does not take (None)."""
    rng = random.Random(25)
    values = [*_CRYPTO_SEEDS, "", "1", f"1 AES_CM_128_HMAC_SHA1_80 inline:{SDES_KEY} ", None, b"1"]
    for _ in range(4000):
        value = rng.choice(_CRYPTO_SEEDS).replace(SDES_KEY, base64.b64encode(rng.randbytes(30)).decode())
        for _ in range(rng.randint(0, 3)):
            at = rng.randrange(len(value) + 1)
            value = value[:at] + rng.choice(_CRYPTO_PIECES) + value[at + rng.choice([0, 0, 1, 2, 5]):]
        values.append(value)
    read = left = 0
    for value in values:
        python = _crypto_outcome(parse_crypto_in_python, value)
        assert _crypto_outcome(parse_crypto, value) == python, value
        ours = sdp_syntax._CRYPTO(value)
        if ours is None:
            left += 1
        else:
            assert type(ours) is CryptoAttribute and list(vars(ours).items()) == python, value
            assert [type(v) for v in vars(ours).values()] == [type(v) for _, v in python], value
            read += 1
    assert read > 600 and left > 2000, (read, left)


def test_answer_codecs_in_one_pass_choose_as_find_codec_does() -> None:
    """answer_codecs reads the offer's payload types once: the first of each codec, as find_codec chooses (the
    reference in tests/support/sdp_reference.py), over random m-lines with codecs repeated, at other channel
    counts and clock rates, in other cases, and static types; with and without G.711 enabled; or the same error."""
    rng = random.Random(26)
    codecs = ["opus/48000/2", "opus/48000", "opus/48000/1", "OPUS/48000/2", "PCMU/8000", "pcma/8000", "PCMA/16000",
              "telephone-event/8000", "telephone-event/48000", "TELEPHONE-EVENT/8000", "G722/8000", "red/48000/2"]
    chosen = 0
    for _ in range(800):
        pts = rng.sample(range(96, 128), rng.randint(1, 6)) + rng.sample([0, 8, 9], rng.randint(0, 2))
        rng.shuffle(pts)
        rtpmaps = "".join(f"a=rtpmap:{pt} {rng.choice(codecs)}\r\n" for pt in pts if pt >= 96)
        text = ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
                f"m=audio 4000 RTP/SAVP {' '.join(map(str, pts))}\r\n{rtpmaps}")
        audio = parse_sdp(text).audio
        for extra in ([], ["PCMA"], ["pcmu", "PCMA"]):
            try:
                ours = sdp_rules.answer_codecs(audio, extra)
            except SdpError as exc:
                ours = ("error", exc.details)
            try:
                reference = sdp_reference.answer_codecs(audio, extra)
            except SdpError as exc:
                reference = ("error", exc.details)
            assert ours == reference, (text, extra)
            chosen += ours[0] != "error" and len(ours[1]) > 0
    assert chosen > 100
