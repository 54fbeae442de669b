"""Micro-benchmark: two parts of a SIP flow's CPU, without sockets, beside another git ref in the same run.

The end-to-end figure (``bench/sip_flows.py``: CPU per flow of the whole server) moves ±10-15 % between runs
on a shared machine, more than most single changes; these parts are measured in a process of their own with
``time.process_time``, each twice (this checkout and ``--baseline-ref``), alternately:

* ``store``: the store's writes of one business-initiated SIP flow as the server makes them (six commits:
  placed with six timeline entries, the relay's deferred state, accepted with four, the ACK, ended with
  four, the relay's last note; a call document of ~2.7 KB, SIP traces of ~700 characters), in µs per flow
  after 0, ``--grow`` and 4x ``--grow`` earlier flows in the same database (the cost grows with the tables:
  random ``call_id`` keys land all over the indexes);
* ``parse``: ``StreamFramer.feed`` + ``parse_message`` of the flow's INVITE with credentials (µs per
  message; every message has new tags, branch and Call-ID, as on the wire, so the parsers' memos miss).

    .venv/bin/python bench/sip_parts.py --baseline-ref 8f26826
    .venv/bin/python bench/sip_parts.py --db file          # a database file (WAL) instead of :memory:
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 111 126\r\n"
       "a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\n"
       "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n")


def invite(i: int) -> bytes:
    return (f"INVITE sip:+447955500001@wa.meta.vc;transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-{i}-1-0;rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:+442071838750@pbx.business.example>;tag={i}SIPpTag001\r\n"
            f"To: <sip:+447955500001@wa.meta.vc>\r\nCall-ID: {i}-{uuid.uuid4().hex}@127.0.0.1\r\nCSeq: 2 INVITE\r\n"
            f"Contact: <sip:+442071838750@127.0.0.1:5070;transport=tls>\r\n"
            f'Proxy-Authorization: Digest username="+442071838750",realm="wa.meta.vc",'
            f'uri="sip:+447955500001@wa.meta.vc;transport=tls",nonce="n{i}",'
            f'response="0123456789abcdef0123456789abcdef",algorithm=MD5\r\n'
            f"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\nUser-Agent: SIPp wacall-bic\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}").encode()


def measure(db: str, grow: int, messages: int) -> dict:
    """Run in the child process, with the ``wacall`` under test first on sys.path."""
    from wacall.domain.model import Call
    from wacall.sip.message import StreamFramer, parse_message
    from wacall.store.sqlite import Store

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "w.db") if db == "file" else ":memory:")
        raw, big = "x" * 700, "k" * 450

        def notes(call: Call, kinds: str) -> list:
            return [(call.id, {"t": 1.0, "kind": k, "raw": raw if k == "sip" else "s"}) for k in kinds.split()]

        def flow(i: int) -> None:
            c = Call(id=f"wacid.{uuid.uuid4().hex}", phone_number_id="p", wa_id="u", direction="BUSINESS_INITIATED",
                     state="RINGING", created_at=float(i))
            c.meta_sdp = "v=0\r\n" + "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n" * 13
            c.business_sdp = "v=0\r\n" + "a=x\r\n" * 60
            c.sip, c.media = {"dialog": big}, {"leg": big}
            store.commit([c], [], notes(c, "api state webhook_suppressed webhook_suppressed sip sip"))
            store.commit([c], [], notes(c, "media"))
            c.state, c.accepted_at = "ACCEPTED", i + 1.0
            store.commit([c], [], notes(c, "user state webhook_suppressed sip"))
            store.commit([c], [], notes(c, "sip"))
            c.state, c.ended_at = "ENDED", i + 2.0
            store.commit([c], [], notes(c, "sip sip state webhook_suppressed"))
            store.commit([], [], notes(c, "media"))

        done = 0
        for before in (0, grow, 4 * grow):
            for i in range(before - done):
                flow(i)
            done = before
            start = time.process_time()
            for i in range(1000):
                flow(i)
            done += 1000
            out[f"store_us_after_{before}"] = (time.process_time() - start) / 1000 * 1e6
        store.close()
    msgs = [invite(i) for i in range(messages)]
    framer = StreamFramer()
    start = time.process_time()
    for m in msgs:
        for item in framer.feed(m):
            parse_message(item)
    out["parse_us"] = (time.process_time() - start) / messages * 1e6
    return out


def child(src: str, db: str, grow: int, messages: int) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {src!r}); sys.path.insert(0, {str(HERE)!r}); "
            f"import sip_parts; print(json.dumps(sip_parts.measure({db!r}, {grow}, {messages})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", metavar="REF", help="also measure the code at this git ref")
    parser.add_argument("--repeat", type=int, default=2, help="alternate the two this many times (median)")
    parser.add_argument("--grow", type=int, default=3000, help="earlier flows in the database for the 2nd column")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--db", choices=["memory", "file"], default="memory")
    args = parser.parse_args()
    from wacall_process import baseline_src

    sources = {"this checkout": str(HERE.parent / "src")}
    if args.baseline_ref:
        sources = {f"at {args.baseline_ref}": baseline_src(args.baseline_ref), **sources}
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for _ in range(args.repeat):
        for name, src in sources.items():
            runs[name].append(child(src, args.db, args.grow, args.messages))
    cols = ["store_us_after_0", f"store_us_after_{args.grow}", f"store_us_after_{4 * args.grow}", "parse_us"]
    print(f"{'':16} " + " ".join(f"{c:>22}" for c in cols) + f"   (median of {args.repeat}, --db {args.db})")
    for name, results in runs.items():
        medians = [sorted(r[c] for r in results)[len(results) // 2] for c in cols]
        print(f"{name:16} " + " ".join(f"{m:22.1f}" for m in medians))


if __name__ == "__main__":
    main()
