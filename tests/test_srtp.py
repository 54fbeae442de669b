"""SRTP profiles, SrtpContext (pylibsrtp) and SDES keying (RFC 4568)."""

from __future__ import annotations

import base64
import struct

import pytest

from wacall.domain.sdp import parse_crypto
from wacall.media.srtp import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AES_CM_128_HMAC_SHA1_32,
    AES_CM_128_HMAC_SHA1_80,
    PROFILES,
    SrtpContext,
    SrtpError,
    generate_key_salt,
    get_profile,
    is_rtcp,
    sdes_crypto_line,
)


def rtp(seq: int, payload: bytes = b"\x01\x02opus-frame", *, ssrc: int = 0x1234ABCD, pt: int = 111) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 960, ssrc) + payload


def rtcp_sr(ssrc: int = 0x1234ABCD) -> bytes:
    # Sender report, no report blocks: header + SSRC + NTP(8) + RTP ts + packet/octet counts.
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


def pair(profile=AES_CM_128_HMAC_SHA1_80) -> tuple[SrtpContext, SrtpContext]:
    a, b = generate_key_salt(profile), generate_key_salt(profile)
    return SrtpContext(profile, a, b), SrtpContext(profile, b, a)


def test_profile_table() -> None:
    assert set(PROFILES) == {"AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM"}
    assert (AES_CM_128_HMAC_SHA1_80.key_length, AES_CM_128_HMAC_SHA1_80.salt_length) == (16, 14)
    assert AES_CM_128_HMAC_SHA1_32.key_salt_length == 30
    assert (AEAD_AES_128_GCM.key_length, AEAD_AES_128_GCM.salt_length) == (16, 12)
    assert (AEAD_AES_256_GCM.key_length, AEAD_AES_256_GCM.salt_length) == (32, 12)
    # lookup by SDES, RFC 5764 and OpenSSL names
    assert get_profile("SRTP_AES128_CM_HMAC_SHA1_80") is AES_CM_128_HMAC_SHA1_80
    assert get_profile(b"SRTP_AEAD_AES_256_GCM") is AEAD_AES_256_GCM
    assert get_profile("aes_cm_128_hmac_sha1_32") is AES_CM_128_HMAC_SHA1_32
    with pytest.raises(ValueError, match="unknown SRTP profile"):
        get_profile("NULL_HMAC_SHA1_80")


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=lambda p: p.name)
def test_round_trip_both_directions(profile) -> None:
    a, b = pair(profile)
    for seq in range(1, 6):
        packet = rtp(seq)
        protected = a.protect(packet)
        assert protected != packet and len(protected) == len(packet) + profile.tag_length
        assert b.unprotect(protected) == packet
        assert a.unprotect(b.protect(rtp(seq, ssrc=0x55))) == rtp(seq, ssrc=0x55)
    assert b.unprotect_rtcp(a.protect_rtcp(rtcp_sr())) == rtcp_sr()
    assert a.unprotect_any(b.protect_rtcp(rtcp_sr(0x55))) == rtcp_sr(0x55)
    assert (a.packets_protected, b.packets_unprotected) == (6, 6)
    assert a.auth_failures == b.auth_failures == a.replays == b.replays == 0


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=lambda p: p.name)
def test_tampered_and_replayed_packets_rejected(profile) -> None:
    a, b = pair(profile)
    protected = a.protect(rtp(1))
    for position in (2, 14, len(protected) - 1):  # header, payload, tag
        tampered = bytearray(protected)
        tampered[position] ^= 0x01
        with pytest.raises(SrtpError) as info:
            b.unprotect(bytes(tampered))
        assert info.value.kind == "auth"
    assert b.auth_failures == 3
    assert b.unprotect(protected) == rtp(1)  # failed packets do not poison the replay window
    with pytest.raises(SrtpError) as info:
        b.unprotect(protected)
    assert info.value.kind == "replay"
    assert b.replays == 1

    protected_rtcp = a.protect_rtcp(rtcp_sr())
    with pytest.raises(SrtpError, match="authentication"):
        b.unprotect_rtcp(protected_rtcp[:-1] + bytes([protected_rtcp[-1] ^ 0x80]))
    b.unprotect_rtcp(protected_rtcp)
    with pytest.raises(SrtpError):
        b.unprotect_rtcp(protected_rtcp)
    assert (b.auth_failures, b.replays) == (4, 2)


def test_wrong_key_fails_and_garbage_is_an_error() -> None:
    a, _ = pair()
    stranger = SrtpContext(AES_CM_128_HMAC_SHA1_80, generate_key_salt(), generate_key_salt())
    with pytest.raises(SrtpError):
        stranger.unprotect(a.protect(rtp(7)))
    assert stranger.auth_failures == 1
    with pytest.raises(SrtpError):
        stranger.unprotect(b"\x80")
    assert stranger.other_errors == 1


def test_retransmitting_the_same_sequence_number_is_allowed_on_send() -> None:
    a, b = pair()
    first = a.protect(rtp(9))
    assert a.protect(rtp(9)) == first  # allow_repeat_tx
    assert b.unprotect(first) == rtp(9)


def test_key_length_is_checked() -> None:
    with pytest.raises(ValueError, match="needs 30"):
        SrtpContext(AES_CM_128_HMAC_SHA1_80, b"\0" * 29, b"\0" * 30)
    with pytest.raises(ValueError, match="needs 44"):
        SrtpContext("AEAD_AES_256_GCM", b"\0" * 44, b"\0" * 30)


def test_is_rtcp() -> None:
    assert is_rtcp(rtcp_sr()) and not is_rtcp(rtp(1)) and not is_rtcp(rtp(1, pt=127 | 0x80))
    assert is_rtcp(struct.pack("!BBH", 0x80, 201, 1) + b"\0" * 4)


# -- SDES (RFC 4568) -------------------------------------------------------------------------


def test_sdes_crypto_line_round_trips_through_parse_crypto() -> None:
    key = generate_key_salt()
    line = sdes_crypto_line(1, "AES_CM_128_HMAC_SHA1_80", key)
    assert line == f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}"
    crypto = parse_crypto(line)
    assert (crypto.tag, crypto.suite, crypto.key) == (1, "AES_CM_128_HMAC_SHA1_80", key)
    crypto32 = parse_crypto(sdes_crypto_line(7, AES_CM_128_HMAC_SHA1_32, key))
    assert (crypto32.tag, crypto32.suite, crypto32.key) == (7, "AES_CM_128_HMAC_SHA1_32", key)
    with pytest.raises(ValueError):
        sdes_crypto_line(1, AES_CM_128_HMAC_SHA1_80, key[:-1])


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
def test_sdes_contexts_from_each_others_crypto_lines(suite: str) -> None:
    # Offerer and answerer each put their own key in a=crypto and key the peer from its line.
    offer_key, answer_key = generate_key_salt(suite), generate_key_salt(suite)
    offer_line = sdes_crypto_line(1, suite, offer_key)
    answer_line = sdes_crypto_line(1, suite, answer_key)
    offerer = SrtpContext.from_sdes(offer_key, parse_crypto(answer_line))
    answerer = SrtpContext.from_sdes(answer_key, parse_crypto(offer_line))
    assert offerer.profile.name == answerer.profile.name == suite
    # the business sends first (spec section 9), then Meta's side answers
    assert answerer.unprotect(offerer.protect(rtp(1))) == rtp(1)
    assert offerer.unprotect(answerer.protect(rtp(100, ssrc=0xBEEF))) == rtp(100, ssrc=0xBEEF)
    assert answerer.unprotect_rtcp(offerer.protect_rtcp(rtcp_sr())) == rtcp_sr()
    # a context keyed with the wrong direction's key cannot read it
    confused = SrtpContext.from_sdes(answer_key, parse_crypto(answer_line))
    with pytest.raises(SrtpError):
        confused.unprotect(offerer.protect(rtp(2)))
