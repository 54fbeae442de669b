"""A valid answer SDP for the curl quickstart, with a real media stack behind it.

    python examples/answer_sdp.py wacid.ABC... > session.json &

Reads the call's SDP offer (Meta's, as in the ``connect`` webhook's ``calls[0].session.sdp``; here taken
from wacall's ``GET /_wacall/calls/{call_id}`` so you need not copy it; ``--offer-file`` reads a file
instead), answers it with aiortc, prints the ``session`` object for ``pre_accept`` and ``accept``
(``{"sdp_type": "answer", "sdp": "..."}``) on one line, and then stays up, speaking first and echoing the
caller's audio back (examples/echo_business.py's :class:`EchoTrack`), until Ctrl-C or the call's media
ends. The offer's media stays valid only while this runs: a call whose business sends no media is hung up
by the user's phone 20 s after ``accept``, as on WhatsApp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from echo_business import echo_peer, loopback_only  # noqa: E402


async def answer(offer: str) -> None:
    done = asyncio.Event()

    async def ended() -> None:
        done.set()

    pc, answer_sdp = await echo_peer(offer, on_end=ended)
    print(json.dumps({"sdp_type": "answer", "sdp": answer_sdp}), flush=True)
    try:
        await done.wait()
    finally:
        await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("call_id", nargs="?", help="the call id (calls[0].id of the connect webhook)")
    parser.add_argument("--graph", default="http://127.0.0.1:8080", help="wacall's URL (to read the offer)")
    parser.add_argument("--offer-file", help="read the SDP offer from this file instead")
    parser.add_argument("--loopback", action=argparse.BooleanOptionalAction, default=True,
                        help="ICE on 127.0.0.1 only (for wacall on this machine)")
    args = parser.parse_args()
    if args.offer_file:
        offer = Path(args.offer_file).read_text()
    elif args.call_id:
        with urllib.request.urlopen(f"{args.graph.rstrip('/')}/_wacall/calls/{args.call_id}", timeout=10) as r:
            offer = json.load(r)["meta_sdp"]
    else:
        parser.error("give a call id or --offer-file")
    if args.loopback:
        loopback_only()
    logging.basicConfig(level=logging.INFO, format="%(message)s")    # "media connected" on stderr
    logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        asyncio.run(answer(offer))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
