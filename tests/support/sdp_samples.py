"""SDPs a business would send, in the shapes Chromium and aiortc produce (CRLF line ends)."""

FINGERPRINT = ("sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:"
               "A1:2C:19:08")


def business_answer(setup: str = "active", ufrag: str = "bUsi", fingerprint: str = FINGERPRINT) -> str:
    """A Chromium-style answer to Meta's offer for a user-initiated call."""
    return "\r\n".join([
        "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE audio",
        "a=msid-semantic: WMS", "m=audio 9 UDP/TLS/RTP/SAVPF 111 126", "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0", f"a=ice-ufrag:{ufrag}", "a=ice-pwd:bUsInEsS0pAsSwOrD0123456",
        "a=ice-options:trickle", f"a=fingerprint:{fingerprint}", f"a=setup:{setup}", "a=mid:audio",
        "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:126 telephone-event/8000", "a=ssrc:1234567 cname:business", ""])


def business_offer(setup: str = "actpass") -> str:
    """A Chromium-style offer for a business-initiated call."""
    return "\r\n".join([
        "v=0", "o=- 8172635481726354 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
        "a=msid-semantic: WMS", "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 110 126", "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0", "a=ice-ufrag:oFfR", "a=ice-pwd:oFfErErPaSsWoRd012345678",
        "a=ice-options:trickle", f"a=fingerprint:{FINGERPRINT}", f"a=setup:{setup}", "a=mid:0",
        "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000", "a=rtpmap:110 telephone-event/48000", "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:7654321 cname:business", ""])
