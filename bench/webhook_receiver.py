"""The business's webhook endpoint for bench/graph_load.py, in a process of its own.

A plain asyncio server on 127.0.0.1 (port 0) with httptools parsing: it answers Meta's verification GET
(``hub.challenge`` for the right ``hub.verify_token``) and every POST with 200 at once, and stamps each
POST with the wall clock (``time.time()``, the clock wacall's outbox ``created_at`` is on) the moment
its body is complete, before anything else is done with it. Its own process, so that the load
generator's work never delays a stamp (the kernel wakes it when the bytes arrive).

It connects to ``--feed`` (a TCP port of the generator on 127.0.0.1), sends ``url <its URL>`` first, then
one line per (call id, event or status) carried by a POST: ``<call_id> <kind> <arrival>``; a line ``n
<count>`` per POST. It stops when the feed closes.

    python bench/webhook_receiver.py --feed PORT --verify-token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import parse_qs, urlsplit

import httptools

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n\r\n"


class Endpoint(asyncio.Protocol):
    def __init__(self, feed: asyncio.StreamWriter, verify_token: str) -> None:
        self.feed, self.verify_token = feed, verify_token
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        now = time.time()
        body, url, self.body, self.url = b"".join(self.body), self.url.decode(), [], b""
        if self.parser.get_method() == b"GET":
            query = parse_qs(urlsplit(url).query)
            if query.get("hub.verify_token") == [self.verify_token]:
                challenge = query.get("hub.challenge", [""])[0].encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(challenge), challenge))
            else:
                self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden")
            return
        self.transport.write(OK)
        lines = ["n 1\n"]
        try:
            for entry in json.loads(body).get("entry", []):
                for change in entry.get("changes", []):
                    value = change.get("value", {})
                    for call in value.get("calls", []):
                        lines.append(f"{call.get('id')} {call.get('event')} {now!r}\n")
                    for status in value.get("statuses", []):
                        lines.append(f"{status.get('id')} {status.get('status')} {now!r}\n")
        except (ValueError, AttributeError):
            pass
        self.feed.write("".join(lines).encode())


async def main(feed_port: int, verify_token: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", feed_port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Endpoint(writer, verify_token), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writer.write(f"url http://127.0.0.1:{port}/webhook\n".encode())
    await reader.read()               # until the generator closes the feed
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feed", type=int, required=True)
    parser.add_argument("--verify-token", required=True)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.feed, args.verify_token))
