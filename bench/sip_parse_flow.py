"""Micro-benchmark: the SIP parsing and rendering of one business-initiated flow, without sockets, beside
another git ref in the same run (alternately, each in a process of its own, ``time.process_time``).

Per flow, the five messages wacall receives (INVITE, ACK, INVITE with Proxy-Authorization, ACK, BYE; new
tags, branches and Call-ID per flow, as on the wire) are cut by ``StreamFramer``, parsed by
``parse_message``, read as the layers above read them (From, To, top Via, branch, Request-URI, CSeq,
Call-ID, Contact), answered with ``response_to(...).to_bytes()`` and rendered again (``to_bytes()``: the
call's timeline keeps each message). µs per flow; the median of ``--repeat`` runs. ``--python`` also runs
this checkout with the compiled scanner off (``WACALL_SIPSCAN=0``).

    .venv/bin/python bench/sip_parse_flow.py --baseline-ref 2076279 --repeat 5 --python
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 111 126\r\n"
       "a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\n"
       "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n")
RURI = "sip:+447955500001@wa.meta.vc;transport=tls"


def flow(i: int) -> list[bytes]:
    call_id = f"{i}-{uuid.uuid4().hex}@127.0.0.1"
    auth = (f'Proxy-Authorization: Digest username="+442071838750",realm="wa.meta.vc",uri="{RURI}",'
            f'nonce="n{i}",response="0123456789abcdef0123456789abcdef",algorithm=MD5\r\n')

    def message(method: str, branch: int, to_tag: str, seq: int, extra: str = "", body: str = "") -> bytes:
        return (f"{method} {RURI} SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-{i}-{branch};rport\r\nMax-Forwards: 70\r\n"
                f"From: <sip:+442071838750@pbx.business.example>;tag={i}SIPpTag001\r\n"
                f"To: <sip:+447955500001@wa.meta.vc>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\n"
                f"Contact: <sip:+442071838750@127.0.0.1:5070;transport=tls>\r\n{extra}"
                f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()

    return [message("INVITE", 1, "", 1, body=SDP), message("ACK", 1, ";tag=t1", 1),
            message("INVITE", 2, "", 2, auth, SDP), message("ACK", 3, f";tag=t{i}", 2),
            message("BYE", 4, f";tag=t{i}", 3)]


def measure(flows: int) -> float:
    """Run in the child process, with the ``wacall`` under test first on sys.path: µs per flow."""
    from wacall.sip.message import StreamFramer, parse_message, response_to

    data = [flow(i) for i in range(flows)]
    framer = StreamFramer()
    start = time.process_time()
    for messages in data:
        for raw in messages:
            (one,) = framer.feed(raw)
            msg = parse_message(one)
            msg.from_, msg.to, msg.top_via, msg.branch, msg.ruri, msg.cseq, msg.call_id, msg.name_addrs("Contact")
            response_to(msg, 200, to_tag="x").to_bytes()
            msg.to_bytes()
    return (time.process_time() - start) / flows * 1e6


def child(src: str, flows: int, env: dict[str, str]) -> float:
    code = (f"import sys; sys.path.insert(0, {src!r}); sys.path.insert(0, {str(HERE)!r}); "
            f"import sip_parse_flow; print(sip_parse_flow.measure({flows}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", metavar="REF", help="also measure the code at this git ref")
    parser.add_argument("--repeat", type=int, default=3, help="alternate the runs this many times (median)")
    parser.add_argument("--flows", type=int, default=3000)
    parser.add_argument("--python", action="store_true", help="also this checkout with WACALL_SIPSCAN=0")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from wacall_process import baseline_src

    src = str(HERE.parent / "src")
    runs: dict[str, tuple[str, dict[str, str]]] = {}
    if args.baseline_ref:
        runs[f"at {args.baseline_ref}"] = (baseline_src(args.baseline_ref), {})
    if args.python:
        runs["this checkout, Python only"] = (src, {"WACALL_SIPSCAN": "0"})
    runs["this checkout"] = (src, {})
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, (where, env) in runs.items():
            results[name].append(child(where, args.flows, env))
    for name, values in results.items():
        median = sorted(values)[len(values) // 2]
        print(f"{name:28} {median:8.1f} µs per flow   (runs: {', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
