"""The webhook sender's HTTP/1.1 client (wacall.webhooks.sender) against raw loopback servers: kept-alive
connections reused, a POST written at once on an idle connection, HTTP/1.0 and close-delimited answers,
a connection the receiver closed while idle, statuses other than 200, garbage, refused connections."""

from __future__ import annotations

import asyncio

import pytest

from wacall.webhooks.sender import ANSWER_KEPT, Sender, SendError

KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """Answers each request with the next of ``answers`` (bytes, or None to close without a word); counts
    connections and keeps every request's bytes."""

    def __init__(self, answers: list[bytes | None], close_after_answer: bool = False) -> None:
        self.answers = answers
        self.close_after_answer = close_after_answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")][0])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0) if self.answers else KEEP
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_kept_alive_connection_is_reused_and_written_at_once():
    async def scenario():
        server = Server([])
        url = await server.start()
        sender = Sender("facebookexternalua")
        body = b'{"object":"whatsapp_business_account"}'
        headers = [("Content-Type", "application/json"), ("X-Hub-Signature-256", "sha256=ab")]
        request = sender.request(url, headers, body)
        assert sender.start(request) is None                # nothing idle yet: post() opens a connection
        assert await sender.post(request) == (200, b"ok")
        started = sender.start(request)                     # now written synchronously, on the kept-alive one
        assert started is not None
        assert await sender.post(request, started) == (200, b"ok")
        assert server.connections == 1 and sender.stats == {"on_idle_connection": 1, "connections_opened": 1}
        head, _, sent = server.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /hook?x=1 HTTP/1.1" and sent == body
        assert {b"Host: 127.0.0.1:" + url.split(":")[2].split("/")[0].encode(), b"User-Agent: facebookexternalua",
                b"Content-Length: %d" % len(body), b"Content-Type: application/json",
                b"X-Hub-Signature-256: sha256=ab"} == set(lines[1:])
        sender.close()
        server.stop()
    run(scenario())


@pytest.mark.parametrize("answer,status,said", [
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body ends with the connection", 200,
     b"the body ends with the connection"),
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 500, b""),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nLocation: /x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 302, b"abcde"),
    (b"HTTP/1.1 503 Busy\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, 503, b"x" * ANSWER_KEPT),
])
def test_status_and_body_of_each_kind_of_answer(answer, status, said):
    async def scenario():
        server = Server([answer], close_after_answer=answer.startswith(b"HTTP/1.0"))
        url = await server.start()
        sender = Sender("ua")
        assert await sender.post(sender.request(url, [], b"{}")) == (status, said)   # the body's first KiB
        assert await sender.post(sender.request(url, [], b"{}")) == (200, b"ok")    # and the next one goes through
        sender.close()
        server.stop()
    run(scenario())


def test_connection_closed_while_idle_is_replaced():
    """The receiver closes a kept-alive connection after answering (its idle timeout): the next POST goes out
    on a new connection, not as a failed attempt."""
    async def scenario():
        server = Server([KEEP, KEEP], close_after_answer=True)
        url = await server.start()
        sender = Sender("ua")
        request = sender.request(url, [], b"{}")
        assert await sender.post(request) == (200, b"ok")
        await asyncio.sleep(0.05)                           # the close reached us: nothing idle
        assert await sender.post(request) == (200, b"ok")
        assert server.connections == 2
        sender.close()
        server.stop()
    run(scenario())


def test_reused_connection_closed_before_answering_is_tried_once_more():
    async def scenario():
        server = Server([KEEP, None, KEEP])                 # the 2nd request: the connection closes unanswered
        url = await server.start()
        sender = Sender("ua")
        request = sender.request(url, [], b"{}")
        assert await sender.post(request) == (200, b"ok")
        assert await sender.post(request) == (200, b"ok")             # on the idle one: closed unanswered; then a new one
        assert server.connections == 2 and len(server.requests) == 3
        server.answers = [None]                             # a new connection closed unanswered: an error
        sender.close()
        with pytest.raises(SendError, match="closed"):
            await sender.post(request)
        server.stop()
    run(scenario())


def test_garbage_refused_and_bad_urls_are_errors():
    async def scenario():
        server = Server([b"SMTP ready\r\n\r\n"])
        url = await server.start()
        sender = Sender("ua")
        with pytest.raises(SendError, match="bad HTTP"):
            await sender.post(sender.request(url, [], b"{}"))
        server.stop()
        await server.server.wait_closed()
        with pytest.raises(SendError, match="cannot connect"):
            await sender.post(sender.request(url, [], b"{}"))
        for bad in ("ftp://127.0.0.1/x", "http:///nohost", "http://127.0.0.1:99999/x"):
            with pytest.raises(SendError):
                sender.request(bad, [], b"{}")
        with pytest.raises(SendError):
            sender.request(url, [("X-Evil", "a\r\nInjected: 1")], b"{}")
    run(scenario())


def test_dispatcher_writes_a_committed_row_before_the_loop_turns(tmp_path):
    """Dispatcher.committed: a row due now goes out on an idle kept-alive connection inside the call (no
    task, no read back from the store); rows with a fault wait for the dispatcher; both attempts are then
    recorded, signed as Meta signs, and the rows leave the in-flight set only once recorded."""
    from wacall.config import WebhookDelivery
    from wacall.domain.clock import VirtualClock
    from wacall.store.sqlite import Store
    from wacall.webhooks.delivery import Dispatcher
    from wacall.webhooks.signature import verify

    def row(url: str, body: bytes, **extra) -> dict:
        return {"app_id": "1", "url": url, "field": "calls", "waba_id": "w", "phone_number_id": "p",
                "call_id": None, "body": body, "created_at": clock.now(), "next_attempt_at": clock.now(),
                "attempts": 0, "status": "pending", **extra}

    clock = VirtualClock()

    async def scenario():
        server = Server([])
        url = await server.start()
        store = Store(str(tmp_path / "w.db"))
        session = None                                      # (only the verification GET uses aiohttp)
        dispatcher = Dispatcher(store, clock, session, WebhookDelivery(), lambda app_id: "s3cret")  # type: ignore
        recorded: list[int] = []
        dispatcher.on_attempt = recorded.append             # (the live stream's hook)
        first = [row(url, b'{"n":1}')]
        dispatcher.committed(first, store.commit([], first))
        for _ in range(200):                                # the first one opens the connection
            if store.journal()[0]["status"] == "delivered" and not dispatcher.stats()["in_flight"]:
                break
            await asyncio.sleep(0.01)
        rows = [row(url, b'{"n":2}'), row(url, b'{"n":3}', fault='[{"kind":"delay","rule":0,"seconds":0}]')]
        dispatcher.committed(rows, store.commit([], rows))
        assert dispatcher.sender.stats["on_idle_connection"] == 1     # written before this coroutine yields
        assert dispatcher.stats()["in_flight"] == 1
        for _ in range(300):
            if [i["status"] for i in store.journal()] == ["delivered"] * 3 and not dispatcher.stats()["in_flight"]:
                break
            await asyncio.sleep(0.01)
        journal = store.journal()
        assert [i["status"] for i in journal] == ["delivered"] * 3, journal
        assert [len(i["attempt_log"]) for i in journal] == [1, 1, 1]
        assert sorted(recorded) == [i["id"] for i in journal]
        bodies = {}
        for raw in server.requests:
            head, _, body = raw.partition(b"\r\n\r\n")
            signature = [line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                         if line.lower().startswith(b"x-hub-signature-256")][0]
            assert verify("s3cret", body, signature)
            bodies[body] = bodies.get(body, 0) + 1
        assert bodies == {b'{"n":1}': 1, b'{"n":2}': 1, b'{"n":3}': 1}
        await dispatcher.stop()
        store.close()
        server.stop()
    run(scenario())


def test_one_slot_per_url_sends_each_row_once(tmp_path):
    """concurrent_per_url = 1: an answered row frees the slot before its attempt is recorded, and the next
    row goes out then; the answered one is not sent again while its record is pending."""
    from wacall.config import WebhookDelivery
    from wacall.domain.clock import VirtualClock
    from wacall.store.sqlite import Store
    from wacall.webhooks.delivery import Dispatcher

    clock = VirtualClock()

    async def scenario():
        server = Server([])
        url = await server.start()
        store = Store(str(tmp_path / "w.db"))
        dispatcher = Dispatcher(store, clock, None, WebhookDelivery(concurrent_per_url=1),  # type: ignore
                                lambda app_id: "s")
        rows = [{"app_id": "1", "url": url, "field": "calls", "waba_id": "w", "phone_number_id": "p",
                 "call_id": None, "body": b'{"n":%d}' % n, "created_at": clock.now(),
                 "next_attempt_at": clock.now(), "attempts": 0, "status": "pending"} for n in range(6)]
        dispatcher.committed(rows, store.commit([], rows))
        for _ in range(500):
            if [i["status"] for i in store.journal()] == ["delivered"] * 6:
                break
            await asyncio.sleep(0.01)
        assert [i["status"] for i in store.journal()] == ["delivered"] * 6
        bodies = sorted(raw.partition(b"\r\n\r\n")[2] for raw in server.requests)
        assert bodies == [b'{"n":%d}' % n for n in range(6)]
        assert [len(i["attempt_log"]) for i in store.journal()] == [1] * 6
        await dispatcher.stop()
        store.close()
        server.stop()
    run(scenario())
