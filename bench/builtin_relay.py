"""Per-packet CPU of the bridge's builtin media relay (``wacall.bridge.builtin._Relay``), without sockets: a
transport whose ``sendto`` does nothing, ``from_whatsapp`` fed pre-protected SRTP packets (Opus, 20 ms) and
``from_pbx`` plain RTP, process time per packet. Opus passthrough and PCMU transcoding.

    .venv/bin/python bench/builtin_relay.py [--packets 5000]

The whole bridged-call load (sockets, wacall, the PBX side) is ``bench/bridge_calls.py``'s; this isolates the
relay's own work, the part the builtin mode adds per packet."""

from __future__ import annotations

import argparse
import json
import os
import struct
import time

import numpy as np

from wacall.bridge.builtin import _Relay
from wacall.media.audio import OpusEncoder
from wacall.media.certificate import DtlsCertificate
from wacall.media.srtp import AES_CM_128_HMAC_SHA1_80, SrtpContext


class _Null:
    def sendto(self, data: bytes, addr: object = None) -> None:
        pass


def measure(codec: str, packets: int) -> dict:
    relay = _Relay("bench", "127.0.0.1", "RTP/AVP", DtlsCertificate.default())
    ours, metas = os.urandom(30), os.urandom(30)
    relay.wa_srtp = SrtpContext(AES_CM_128_HMAC_SHA1_80, ours, metas)
    meta = SrtpContext(AES_CM_128_HMAC_SHA1_80, metas, ours)
    g711 = codec != "opus"
    relay.plan(codec, 0 if g711 else 111, 101, 111, 126)
    relay.wa_transport, relay.wa_remote = _Null(), ("127.0.0.1", 9)
    relay.pbx.transport, relay.pbx_remote = _Null(), ("127.0.0.1", 9)
    tone = (np.sin(2 * np.pi * 440 * np.arange(960) / 48000) * 8000).astype(np.int16)
    opus = OpusEncoder().encode(tone)
    from_meta = [meta.protect(struct.pack("!BBHII", 0x80, 111, i, i * 960, 0x1234) + opus) for i in range(packets)]
    payload, step, pt = (bytes(160), 160, 0) if g711 else (opus, 960, 111)
    from_pbx = [struct.pack("!BBHII", 0x80, pt, i, i * step, 0x99) + payload for i in range(packets)]
    t0 = time.process_time()
    for packet in from_meta:
        relay.from_whatsapp(packet, None)
    t1 = time.process_time()
    for packet in from_pbx:
        relay.from_pbx(packet, None)
    t2 = time.process_time()
    assert relay.packets["to_pbx"] == packets and relay.packets["to_whatsapp"] == packets, relay.packets
    return {"codec": codec, "packets": packets, "whatsapp_to_pbx_us": round(1e6 * (t1 - t0) / packets, 1),
            "pbx_to_whatsapp_us": round(1e6 * (t2 - t1) / packets, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=5000)
    args = parser.parse_args()
    for codec, packets in (("opus", args.packets), ("PCMU", max(100, args.packets // 5))):
        print(json.dumps(measure(codec, packets)))


if __name__ == "__main__":
    main()
