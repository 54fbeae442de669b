"""RtpEngine's ng protocol (wacall.bridge.ng, sans I/O): bencode per BEP 3, the cookie framing, the commands the
bridge sends and the replies it reads; and bridge.toml's loader."""

from __future__ import annotations

import pytest

from wacall.bridge import ng
from wacall.bridge.config import build_bridge_config

META_OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=ice-lite", "a=group:BUNDLE audio",
    "m=audio 3480 UDP/TLS/RTP/SAVPF 111 126", "c=IN IP4 127.0.0.1", "a=setup:actpass", "a=mid:audio",
    "a=rtpmap:111 opus/48000/2", "a=rtpmap:126 telephone-event/8000", "a=rtcp-mux", ""])


@pytest.mark.parametrize("value, wire", [
    (0, b"i0e"), (-42, b"i-42e"), (b"spam", b"4:spam"), ("", b"0:"), ([1, b"a"], b"li1e1:ae"),
    ({"b": 1, "a": [b"x"]}, b"d1:al1:xe1:bi1ee"), (True, b"i1e"),
])
def test_bencode_round_trip(value, wire):
    assert ng.encode(value) == wire
    decoded = ng.decode(wire)
    expected = {"a": [b"x"], "b": 1} if isinstance(value, dict) else (
        int(value) if isinstance(value, bool) else value.encode() if isinstance(value, str) else value)
    assert decoded == expected


def test_bencode_sorts_keys_as_raw_strings_and_keeps_utf8():
    assert ng.encode({"sdp": "é", "call-id": "x"}) == b"d7:call-id1:x3:sdp2:\xc3\xa9e"


@pytest.mark.parametrize("bad", [b"", b"i", b"i01e", b"i-0e", b"ie", b"5:abc", b"l", b"d1:a", b"di1ei2ee", b"x",
                                 b"i1ei2e", b"l" * 40 + b"e" * 40])
def test_malformed_bencode_is_an_ng_error(bad):
    with pytest.raises(ng.NgError):
        ng.decode(bad)


def test_framing_needs_a_cookie():
    assert ng.frame("c1", {"command": "ping"}) == b"c1 d7:command4:pinge"
    assert ng.unframe(b"c1 d6:result4:ponge") == ("c1", {"result": b"pong"})
    for bad in (b"d6:result4:ponge", b" d6:result4:ponge", b"c1 li1ee"):
        with pytest.raises(ng.NgError):
            ng.unframe(bad)
    with pytest.raises(ValueError):
        ng.frame("has space", {})


def test_client_matches_replies_by_cookie_and_drops_strangers():
    client = ng.Client(prefix="t")
    cookie, datagram = client.request("offer", call_id="c", from_tag="f", sdp="v=0", skipped=None)
    assert cookie == "t_1"
    sent_cookie, message = ng.unframe(datagram)
    assert sent_cookie == cookie and message == {"command": b"offer", "call-id": b"c", "from-tag": b"f",
                                                 "sdp": b"v=0"}
    assert client.reply_for(b"someone_else d6:result2:oke") is None
    reply = client.reply_for(cookie.encode() + b" " + ng.encode({"result": "ok", "sdp": "v=0\r\n"}))
    assert reply is not None and reply.ok and reply.sdp == "v=0\r\n"
    assert client.reply_for(cookie.encode() + b" d6:result2:oke") is None        # a repeated reply: already had it


def test_error_replies_raise_with_rtpengine_reason():
    client = ng.Client(prefix="t")
    cookie, _ = client.request("answer", call_id="c")
    reply = client.reply_for(cookie.encode() + b" " + ng.encode({"result": "error",
                                                                 "error-reason": "Unknown call-id"}))
    assert reply is not None and not reply.ok
    with pytest.raises(ng.NgError) as raised:
        reply.raise_for_error()
    assert raised.value.reason == "Unknown call-id"
    with pytest.raises(ng.NgError):
        ng.Reply.parse("x", {"sdp": b"v=0"})                                     # no result


def test_meta_session_level_ice_lite_is_repeated_in_the_media_section_for_rtpengine():
    munged = ng.ice_lite_in_media(META_OFFER)
    lines = munged.split("\r\n")
    assert lines.count("a=ice-lite") == 2 and lines[-2] == "a=ice-lite" and munged.endswith("\r\n")
    assert lines.index("a=ice-lite", lines.index("m=audio 3480 UDP/TLS/RTP/SAVPF 111 126")) > lines.index("a=rtcp-mux")
    full_agent = META_OFFER.replace("a=ice-lite\r\n", "")
    assert ng.ice_lite_in_media(full_agent) == full_agent


def test_the_bridge_commands_ask_for_plain_rtp_toward_the_pbx_and_webrtc_back():
    offer = ng.offer_to_pbx("wacid.1", "whatsapp", META_OFFER)
    assert offer["transport_protocol"] == "RTP/AVP" and offer["ICE"] == "remove" and offer["DTLS"] == "off"
    assert offer["rtcp_mux"] == ["demux"] and "a=ice-lite" in str(offer["sdp"]).split("m=audio")[1]
    assert ng.offer_to_pbx("w", "f", META_OFFER, pbx_protocol="RTP/SAVP")["transport_protocol"] == "RTP/SAVP"
    answer = ng.answer_to_whatsapp("wacid.1", "whatsapp", "pbx-tag", "v=0\r\n")
    assert answer["ICE"] == "force" and answer["to_tag"] == "pbx-tag" and "require" in answer["rtcp_mux"]
    _, datagram = ng.Client().request("answer", **answer)
    assert b"6:to-tag7:pbx-tag" in datagram and b"8:rtcp-mux" in datagram


def test_a_business_initiated_call_asks_for_webrtc_toward_meta_and_plain_rtp_back():
    offer = ng.offer_to_whatsapp("sip-call-id", "agent-tag", "v=0\r\n")
    assert offer["transport_protocol"] == "UDP/TLS/RTP/SAVPF" and offer["ICE"] == "force"
    assert offer["SDES"] == ["off"] and "require" in offer["rtcp_mux"]
    answer = ng.answer_to_pbx("sip-call-id", "agent-tag", "whatsapp", META_OFFER)
    assert answer["ICE"] == "remove" and answer["rtcp_mux"] == ["demux"] and answer["to_tag"] == "whatsapp"
    assert "a=ice-lite" in str(answer["sdp"]).split("m=audio")[1], "Meta's lite relay, told to RtpEngine"


def test_the_number_a_business_initiated_call_goes_to_comes_from_the_request_uri_or_a_header():
    from wacall.bridge.app import Bridge
    from wacall.bridge.sip_ua import Incoming
    from wacall.sip.message import parse_message

    def invite(ruri_user: str, header: str = "") -> bytes:
        return (f"INVITE sip:{ruri_user}@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
                f"From: <sip:agent@pbx>;tag=a\r\nTo: <sip:{ruri_user}@pbx>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
                f"{header}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()

    def number(config: dict, data: bytes) -> str:
        bridge = Bridge(build_bridge_config({**BRIDGE_TOML, "sip": {**BRIDGE_TOML["sip"], **config}}))
        return bridge._number(Incoming(bridge.ua, parse_message(data), ("127.0.0.1", 5060)))

    assert number({}, invite("+447700900001")) == "447700900001"
    assert number({}, invite("447700900001;user=phone")) == "447700900001"
    assert number({}, invite("c2b-sip")) == ""                          # not a number: the bridge answers 404
    by_header = {"number_from": "header:X-WA-To"}
    assert number(by_header, invite("wa", "X-WA-To: +44 7700 900001\r\n")) == "447700900001"
    assert number(by_header, invite("wa", "X-WA-To: <sip:+447700900001@pbx>\r\n")) == "447700900001"
    assert number(by_header, invite("+447700900001")) == "", "the header, not the Request-URI, when configured"


BRIDGE_TOML = {
    "graph": {"phone_number_id": "1065", "token": "EAA"},
    "webhook": {"app_secret": "s", "verify_token": "v", "port": 0},
    "sip": {"pbx_host": "127.0.0.1", "pbx_port": 5060},
    "media": {"rtpengine": "127.0.0.1:22222"},
}


def test_bridge_config_loads_and_refuses_what_it_cannot_run(monkeypatch):
    cfg = build_bridge_config(BRIDGE_TOML)
    assert cfg.media.rtpengine_address == ("127.0.0.1", 22222) and cfg.sip.domain == "127.0.0.1"
    assert cfg.graph.base_url == "https://graph.facebook.com" and cfg.sip.extension == "c2b-sip"
    monkeypatch.setenv("WA_TOKEN", "from-env")
    env = build_bridge_config({**BRIDGE_TOML, "graph": {"phone_number_id": "1", "token_env": "WA_TOKEN"}})
    assert env.graph.token == "from-env"
    for raw, message in [
        ({**BRIDGE_TOML, "extra": {}}, "unknown tables extra"),
        ({**BRIDGE_TOML, "sip": {"pbx_prot": 1}}, "[sip]: unknown keys pbx_prot"),
        ({**BRIDGE_TOML, "media": {"mode": "freeswitch"}}, "media.mode"),
        ({**BRIDGE_TOML, "media": {"pbx_protocol": "UDP/TLS/RTP/SAVPF"}}, "media.pbx_protocol"),
        ({**BRIDGE_TOML, "media": {"rtpengine": "nohost"}}, "media.rtpengine"),
        ({**BRIDGE_TOML, "webhook": {"app_secret": "", "verify_token": "v"}}, "webhook.app_secret"),
        ({**BRIDGE_TOML, "sip": {"port": 70000}}, "sip.port"),
        ({**BRIDGE_TOML, "sip": {"number_from": "header:"}}, "sip.number_from"),
        ({**BRIDGE_TOML, "sip": {"number_from": "from"}}, "sip.number_from"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            build_bridge_config(raw)


PCMU_AND_OPUS = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 111 0 96 126", "c=IN IP4 127.0.0.1",
    "a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000", "a=rtpmap:96 telephone-event/8000", "a=fmtp:96 0-15",
    "a=rtpmap:126 telephone-event/48000", "a=fmtp:126 0-15", "a=sendrecv", ""])


def test_rtpengine_is_told_the_events_beside_opus_count_the_48khz_audio_clock():
    """Meta's events carry Opus's 48 kHz timestamps under telephone-event/8000: RtpEngine 10.5 schedules them by
    the clock it is told, so it reads /48000 and everyone else keeps reading /8000 (docs/bridge.md)."""
    told = ng.events_to_rtpengine(META_OFFER)
    assert "a=rtpmap:126 telephone-event/48000" in told and "telephone-event/8000" not in told
    assert ng.events_from_rtpengine(told) == META_OFFER
    assert "telephone-event/48000" in ng.offer_to_pbx("w", "f", META_OFFER)["sdp"]
    assert "telephone-event/48000" in ng.answer_to_pbx("c", "p", "whatsapp", META_OFFER)["sdp"]
    g711 = META_OFFER.replace("111 126", "0 126").replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000")
    assert ng.events_to_rtpengine(g711) == g711, "beside G.711 the 8 kHz clock is the audio clock"
    assert ng.events_to_rtpengine(PCMU_AND_OPUS) == PCMU_AND_OPUS, "a 48 kHz telephone-event is there already"


def test_an_sdp_rtpengine_wrote_with_both_event_clocks_keeps_the_8khz_one():
    """RtpEngine transcoding to G.711 offers telephone-event at both clocks; the PBX gets the 8 kHz one only."""
    out = ng.events_from_rtpengine(PCMU_AND_OPUS)
    assert "m=audio 4000 RTP/AVP 111 0 96\r\n" in out
    assert "a=rtpmap:126" not in out and "a=fmtp:126" not in out and "a=rtpmap:96 telephone-event/8000" in out


def test_transcoding_asks_rtpengine_for_g711_toward_the_pbx_and_opus_toward_meta():
    assert ng.offer_to_pbx("w", "f", META_OFFER, transcode=("PCMU", "PCMA"))["codec"] == {"transcode": ["PCMU", "PCMA"]}
    assert "codec" not in ng.offer_to_pbx("w", "f", META_OFFER)
    pcmu = "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    assert ng.offer_to_whatsapp("c", "p", pcmu, transcode=True)["codec"] == {
        "mask": ["all"], "transcode": ["opus/48000/2", "telephone-event/8000"]}, "Meta gets Opus only"
    assert "codec" not in ng.offer_to_whatsapp("c", "p", META_OFFER, transcode=True), "Opus offered: no transcoding"
    _, datagram = ng.Client().request("offer", **ng.offer_to_pbx("w", "f", META_OFFER, transcode=("PCMU",)))
    assert b"5:codecd9:transcodel4:PCMUee" in datagram


def test_transcode_takes_only_g711():
    base = {"graph": {"phone_number_id": "1", "token": "t"}, "webhook": {"app_secret": "s", "verify_token": "v"}}
    assert build_bridge_config({**base, "media": {"transcode": ["PCMU", "PCMA"]}}).media.transcode == ["PCMU", "PCMA"]
    for bad in (["G729"], "PCMU"):
        with pytest.raises(ValueError, match="media.transcode"):
            build_bridge_config({**base, "media": {"transcode": bad}})


def test_sdes_toward_the_pbx_offers_only_the_aes_cm_128_suites():
    sdes = ng.offer_to_pbx("w", "f", META_OFFER, pbx_protocol="RTP/SAVP")["SDES"]
    assert "no-NULL_HMAC_SHA1_80" in sdes and "no-AEAD_AES_256_GCM" in sdes
    assert not [s for s in sdes if s.startswith("no-AES_CM_128")]
    assert "SDES" not in ng.offer_to_pbx("w", "f", META_OFFER)


def test_an_sdp_for_whatsapp_without_opus_is_no_common_codec():
    from wacall.bridge.media import NoCommonCodec
    from wacall.bridge.rtpengine import RtpEngineMedia
    pcmu = ("v=0\r\nm=audio 4000 UDP/TLS/RTP/SAVPF 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n")
    with pytest.raises(NoCommonCodec, match=r"offered no codec WhatsApp speaks: PCMU \(set \[media\] transcode"):
        RtpEngineMedia(("127.0.0.1", 9))._opus_for_whatsapp(pcmu, "offered")
    assert RtpEngineMedia(("127.0.0.1", 9))._opus_for_whatsapp(META_OFFER, "answered") == META_OFFER
