"""The one negotiation (wacall.domain.sdp.negotiate) on frozen LocalMedia values: pure, no sockets.

What the relay is told (codec and payload types, DTMF payload type, SDES key or DTLS role, the
business's credentials and address, the codec the user's phone sends) comes from Meta's SDP and the
business's; here both are built and negotiated in memory."""

from __future__ import annotations

import base64

import pytest
from support.sdp_samples import FINGERPRINT, business_answer, business_offer

from wacall.domain.sdp import (LocalMedia, Negotiated, SdpError, build_meta_answer, build_meta_offer, meta_answer,
                               negotiate, parse_crypto, parse_sdp, validate_business_sdp)

LOCAL = LocalMedia(call_id="wacid.N", host="127.0.0.1", port=40000, ice_ufrag="mEtAuFrAg0123456",
                   ice_pwd="mEtApAsSwOrD0123456789abcdefghij", fingerprint="AB:" * 31 + "AB", ssrc=1234,
                   sdes_key_b64=base64.b64encode(bytes(range(30))).decode(), session_id=42,
                   stream_id="stream-1", host6="::1", port6=40000)
BUSINESS_KEY = base64.b64encode(bytes(range(30, 60))).decode()


def sdes_offer(*pts_and_maps: str, crypto: tuple[str, ...] = (f"1 AES_CM_128_HMAC_SHA1_80 inline:{BUSINESS_KEY}",),
               m_line: str = "m=audio 19534 RTP/SAVP 107 0 8 101") -> str:
    maps = pts_and_maps or ("a=rtpmap:0 PCMU/8000", "a=rtpmap:107 opus/48000/2", "a=rtpmap:8 PCMA/8000",
                            "a=rtpmap:101 telephone-event/8000")
    return "\r\n".join(["v=0", "o=root 1 1 IN IP4 10.0.0.1", "s=Gateway", "c=IN IP4 127.0.0.7", "t=0 0", m_line,
                        *(f"a=crypto:{c}" for c in crypto), *maps, "a=sendrecv", ""])


def bic(offer: str, key_exchange: str = "DTLS", codecs: tuple[str, ...] = ()) -> tuple[str, Negotiated]:
    """Meta's answer to a business's offer and what the relay is told: as the domain does it."""
    parsed = validate_business_sdp(offer, key_exchange=key_exchange, additional_codecs=codecs, role="offer")
    answer = build_meta_answer(LOCAL, parsed, key_exchange=key_exchange, additional_codecs=codecs)
    negotiated = negotiate(answer, offer, key_exchange)
    # the domain hands negotiate Meta's answer as its builder returned it (not parsed): the same result
    built = meta_answer(LOCAL, parsed, key_exchange=key_exchange, additional_codecs=codecs)
    assert built.text == answer and negotiate(built, parsed, key_exchange) == negotiated
    return answer, negotiated


def test_local_media_is_frozen_and_persists_as_the_leg_did() -> None:
    with pytest.raises(AttributeError):
        LOCAL.port = 1                                              # type: ignore[misc]
    assert LocalMedia.from_doc(LOCAL.to_doc()) == LOCAL
    assert set(LOCAL.to_doc()) == {"call_id", "host", "port", "ice_ufrag", "ice_pwd", "fingerprint", "ssrc",
                                   "sdes_key_b64", "session_id", "stream_id", "host6", "port6"}


@pytest.mark.parametrize("setup, role", [("actpass", "client"), ("passive", "client"), ("active", "server")])
def test_bic_dtls_role_follows_the_answer_meta_built(setup: str, role: str) -> None:
    answer, n = bic(business_offer(setup))
    meta_setup = parse_sdp(answer).audio.attribute("setup")
    assert (meta_setup, n.dtls_role) == ({"client": "active", "server": "passive"}[role], role)
    assert n.key_exchange == "DTLS" and n.remote_ufrag == "oFfR" and n.remote_pwd == "oFfErErPaSsWoRd012345678"
    assert n.remote_fingerprint == FINGERPRINT and n.remote_crypto is None
    assert n.remote_addr is None                                    # c=0.0.0.0, port 9: ICE finds it


def test_bic_payload_types_are_what_the_answer_carries() -> None:
    answer, n = bic(business_offer(), codecs=("PCMU",))
    assert n.payload_types == {"opus": 111, "pcmu": 0, "telephone-event": 126}
    assert parse_sdp(answer).audio.payload_types == [111, 0, 126]
    assert (n.send_codec, n.telephone_event_pt, n.audio_codecs) == ("opus", 126, {111: "opus", 0: "pcmu"})


def test_uic_dtls_answer_decides_the_role_of_an_actpass_offer() -> None:
    offer = build_meta_offer(LOCAL)
    assert "a=setup:actpass" in offer and "a=candidate:" in offer
    assert negotiate(offer, business_answer("active"), "DTLS").dtls_role == "server"
    assert negotiate(offer, business_answer("passive"), "DTLS").dtls_role == "client"


def test_uic_without_telephone_event_in_the_answer_falls_back_to_126() -> None:
    answer = business_answer().replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 126", "m=audio 9 UDP/TLS/RTP/SAVPF 111") \
                              .replace("a=rtpmap:126 telephone-event/8000\r\n", "")
    n = negotiate(build_meta_offer(LOCAL), answer, "DTLS")
    assert n.payload_types == {"opus": 111} and n.telephone_event_pt == 126


def test_sdes_crypto_is_chosen_once_for_the_answer_and_the_relay() -> None:
    offer = sdes_offer(crypto=("1 AES_CM_256_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(46)).decode(),
                               f"2 AES_CM_128_HMAC_SHA1_32 inline:{BUSINESS_KEY}",
                               f"3 AES_CM_128_HMAC_SHA1_80 inline:{BUSINESS_KEY}"))
    answer, n = bic(offer, "SDES")
    assert f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{LOCAL.sdes_key_b64}\r\n" in answer
    chosen = parse_crypto(n.remote_crypto or "")
    assert (chosen.tag, chosen.suite, chosen.key_b64) == (2, "AES_CM_128_HMAC_SHA1_32", BUSINESS_KEY)
    assert n.dtls_role is None and n.remote_ufrag is None
    assert n.remote_addr == ("127.0.0.7", 19534)                    # SDES: media goes to c=/m= first
    assert n.payload_types == {"opus": 107, "telephone-event": 101}       # G.711 not enabled on the number


def test_send_codec_is_the_business_s_first_choice_of_what_both_have() -> None:
    g711_first = sdes_offer(m_line="m=audio 19534 RTP/SAVP 8 107 101")
    _, n = bic(g711_first, "SDES", codecs=("PCMA",))
    assert n.send_codec == "pcma" and n.payload_types["pcma"] == 8
    _, without = bic(g711_first, "SDES")                            # PCMA not enabled: Opus
    assert without.send_codec == "opus" and "pcma" not in without.payload_types


def test_g711_only_offer_negotiates_g711() -> None:
    offer = sdes_offer("a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000",
                       m_line="m=audio 19534 RTP/SAVP 0 101")
    _, n = bic(offer, "SDES", codecs=("PCMU",))
    assert (n.send_codec, n.payload_types) == ("pcmu", {"pcmu": 0, "telephone-event": 101})


def test_sdes_answer_without_a_usable_key_says_so() -> None:
    offer = build_meta_offer(LOCAL, key_exchange="SDES")
    answer = sdes_offer(crypto=("1 F8_128_HMAC_SHA1_80 inline:" + BUSINESS_KEY,))
    assert negotiate(offer, answer, "SDES").remote_crypto is None   # the relay reports NO_SDES_KEY


def test_negotiated_travels_through_the_workers_pipe_unchanged() -> None:
    import json
    _, n = bic(sdes_offer(), "SDES")
    assert Negotiated.from_doc(json.loads(json.dumps(n.to_doc()))) == n
    _, d = bic(business_offer())
    assert Negotiated.from_doc(json.loads(json.dumps(d.to_doc()))) == d


def test_unparsable_sdp_is_an_sdp_error() -> None:
    with pytest.raises(SdpError):
        negotiate(build_meta_offer(LOCAL), "not sdp", "DTLS")
    with pytest.raises(ValueError):
        negotiate(build_meta_offer(LOCAL), business_answer(), "ZRTP")


def test_an_sdp_already_parsed_by_its_validation_negotiates_the_same() -> None:
    offer = business_offer()
    answer, n = bic(offer)
    assert negotiate(parse_sdp(answer), validate_business_sdp(offer, role="offer"), "DTLS") == n


@pytest.mark.parametrize("key_exchange", ["DTLS", "SDES"])
@pytest.mark.parametrize("m_pts, maps", [
    ("96 0 8 101", ("a=rtpmap:96 opus/48000/2", "a=rtpmap:101 telephone-event/8000")),       # static G.711, no rtpmap
    ("0 97 8", ("a=rtpmap:97 opus/48000/2",)),                                        # no telephone-event: 126
    ("98 8 126", ("a=rtpmap:98 PCMA/8000", "a=rtpmap:126 opus/48000/2")),              # opus on 126: events elsewhere
    ("8 0", ()),                                                                      # G.711 only
])
def test_meta_answer_says_what_its_text_says(key_exchange: str, m_pts: str, maps: tuple[str, ...]) -> None:
    """``MetaSdp``'s payload types and setup are what negotiate would read back from the answer's text."""
    if key_exchange == "SDES":
        offer = sdes_offer(*maps, m_line=f"m=audio 19534 RTP/SAVP {m_pts}")
    else:
        lines = [line for line in business_offer().split("\r\n") if not line.startswith(("a=rtpmap:", "a=fmtp:"))]
        offer = "\r\n".join(f"m=audio 9 UDP/TLS/RTP/SAVPF {m_pts}" if line.startswith("m=audio") else
                             "\r\n".join([*maps, line]) if line == "a=sendrecv" and maps else line for line in lines)
    for codecs in ((), ("PCMU", "PCMA")):
        try:
            parsed = validate_business_sdp(offer, key_exchange=key_exchange, additional_codecs=codecs, role="offer")
        except SdpError:
            continue                                    # refused as Meta would: nothing to negotiate
        built = meta_answer(LOCAL, parsed, key_exchange=key_exchange, additional_codecs=codecs)
        assert negotiate(built, parsed, key_exchange) == negotiate(built.text, parsed, key_exchange)
        assert negotiate(built, parsed, key_exchange) == negotiate(parse_sdp(built.text), offer, key_exchange)
