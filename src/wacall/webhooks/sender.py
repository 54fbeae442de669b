"""The webhook POST on the wire: HTTP/1.1 over a pool of kept-alive connections (responses parsed by
httptools, llhttp's binding: the parser aiohttp and uvicorn use, ~1 µs per response).

Why not aiohttp's client here (it serves every other outgoing request): a webhook's latency is what a
business measures, and an aiohttp request only leaves when its task's first step runs, at the back of
the event loop's queue, behind every Graph request already waiting. Here a POST to a URL with an idle
kept-alive connection is written synchronously (:meth:`Sender.start`), in the same loop turn as the
commit that produced the event; only the answer is awaited. Without an idle connection the POST waits
for a new one (:meth:`Sender.post`).

One request per connection at a time (no pipelining). Of a response's body the first ``ANSWER_KEPT`` bytes
are kept (the journal shows what the receiver said); the rest is read and dropped. A reused
connection that the receiver closed before answering anything is tried once more on a new connection (the
receiver may have closed it as idle while the request was on its way); anything else is the attempt's
error, and the dispatcher's retry schedule takes over.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from urllib.parse import quote, urlsplit

import httptools

Key = tuple[str, str, int]          # (scheme, host, port)
MAX_IDLE_PER_KEY = 64
ANSWER_KEPT = 1024                  # bytes of a response's body kept for the journal


class SendError(Exception):
    """The attempt failed before a whole response arrived (connection refused or closed, bad HTTP)."""


@functools.lru_cache(maxsize=256)
def _target(url: str) -> tuple[Key, bytes, bytes]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise SendError(f"unsupported callback URL {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise SendError(f"bad port in callback URL {url!r}") from None
    host = parts.hostname
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if not netloc.isascii():                       # an internationalised name: its IDNA form, as aiohttp sends it
        netloc = host.encode("idna").decode("ascii") + (f":{parts.port}" if parts.port else "")
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe="/?=&;:@!$'()*+,~%-._")
    return (scheme, host, port), netloc.encode("ascii"), path.encode("ascii")


class _Connection(asyncio.Protocol):
    def __init__(self, pool: "Sender", key: Key) -> None:
        self.pool, self.key = pool, key
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future | None = None     # (status, body) of the request in flight
        self.status: int | None = None                # its status line's code, once the headers are in
        self.body = b""                               # the first ANSWER_KEPT bytes of its body
        self.reused = False                           # served a request before this one
        self.got_bytes = False                        # any byte of the current response arrived
        self.closed = False

    # -- asyncio.Protocol --
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(SendError(f"bad HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        self._closed_by_peer()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_by_peer(exc)

    def _closed_by_peer(self, exc: Exception | None = None) -> None:
        if self.answer is not None and self.status is not None:
            self._answered(keep=False)                # a body delimited by the end of the connection
        self._fail(SendError("the receiver closed the connection" + (f" ({exc})" if exc else "")))

    # -- httptools callbacks --
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if len(self.body) < ANSWER_KEPT:
            self.body += body[:ANSWER_KEPT - len(self.body)]

    def on_message_complete(self) -> None:
        if self.status is not None and self.status >= 200:      # not a 1xx interim answer
            self._answered(keep=self.parser.should_keep_alive())

    # -- requests --
    def send(self, data: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.status, self.body, self.got_bytes = None, b"", False
        self.transport.write(data)
        return self.answer

    def _answered(self, keep: bool) -> None:
        answer, self.answer = self.answer, None
        if answer is None:                            # an answer nobody asked for: not a connection to reuse
            self.close()
            return
        if not answer.done():
            answer.set_result((self.status, self.body))
        if keep and not self.closed:
            self.reused = True
            self.pool._release(self)
        else:
            self.close()

    def _fail(self, exc: Exception) -> None:
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.transport is not None:
            self.transport.close()


class Sender:
    """Kept-alive connections per (scheme, host, port); see the module's docstring."""

    def __init__(self, user_agent: str) -> None:
        self._agent = user_agent.encode("ascii")
        self._idle: dict[Key, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        # POSTs written on a kept-alive connection; connections opened
        self.stats = {"on_idle_connection": 0, "connections_opened": 0}

    def request(self, url: str, headers: list[tuple[str, str]], body: bytes) -> tuple[Key, bytes]:
        """The bytes of one POST: request line, Host, User-Agent, Content-Length, ``headers``, the body."""
        key, host, path = _target(url)
        lines = [b"POST ", path, b" HTTP/1.1\r\nHost: ", host, b"\r\nUser-Agent: ", self._agent,
                 b"\r\nContent-Length: ", str(len(body)).encode()]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise SendError(f"bad header {name!r}")
            lines += [b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1")]
        lines += [b"\r\n\r\n", body]
        return key, b"".join(lines)

    def start(self, request: tuple[Key, bytes]) -> tuple[_Connection, asyncio.Future] | None:
        """Write the request now on an idle kept-alive connection: (the connection, a future of the answer),
        or None when there is none."""
        idle = self._idle.get(request[0])
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            self.stats["on_idle_connection"] += 1
            return conn, conn.send(request[1])
        return None

    async def post(self, request: tuple[Key, bytes],
                   started: tuple[_Connection, asyncio.Future] | None = None) -> tuple[int, bytes]:
        """The receiver's answer to this request, (status, the body's first ``ANSWER_KEPT`` bytes) (already
        written by :meth:`start` when ``started``).
        SendError when no whole response came; the caller bounds the time (a cancelled request's
        connection is closed: it cannot be reused half-answered)."""
        conn = None
        try:
            for _ in range(2):
                if started is None:
                    started = self.start(request)
                if started is None:
                    conn = await self._open(request[0])
                    answer = conn.send(request[1])
                else:
                    conn, answer = started
                started = None
                try:
                    return await answer
                except SendError:
                    if conn.reused and not conn.got_bytes:     # closed as idle while the request was on its way
                        continue
                    raise
            raise SendError("the receiver closed the connection")
        except asyncio.CancelledError:
            if conn is not None:
                conn.close()
            raise

    async def _open(self, key: Key) -> _Connection:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self, key), host, port, ssl=context)
        except OSError as exc:
            raise SendError(f"cannot connect to {host}:{port}: {exc}") from None
        self._all.add(conn)
        self.stats["connections_opened"] += 1
        return conn

    def _release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_KEY:
            conn.close()
        else:
            idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
