"""The bridge's SIP user agent toward the PBX, over UDP (RFC 3261), on wacall's sans-I/O SIP message module.

What the first slice needs, and only that: place an INVITE (retransmitted on Timer A until a response, Timer B
gives up), ACK the final response (a 2xx by a new request along the dialog, a non-2xx hop by hop), send BYE
and answer the PBX's BYE (200), retransmitting the BYE like any non-INVITE request (Timer E/F). One
:class:`Dialog` per bridged call; the bridge hears about the remote BYE through ``on_bye``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from wacall.sip.message import (Headers, Request, Response, SipParseError, new_branch, new_call_id, new_tag,
                                parse_message, response_to)
from wacall.sip.uri import parse_name_addr

log = logging.getLogger("wacall.bridge.sip")

T1, T2 = 0.5, 4.0


class SipFailure(Exception):
    """The INVITE ended without a 2xx: ``status`` (408 when nothing answered) and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    local_uri: str                      # From of our requests
    remote_uri: str                     # To of our requests
    target: str                         # the remote Contact: the Request-URI of requests in the dialog
    route: list[str] = field(default_factory=list)
    remote_tag: str | None = None
    cseq: int = 1
    ended: bool = False


class SipUserAgent(asyncio.DatagramProtocol):
    """A UDP SIP UA bound to ``host:port`` (0: a free port) sending everything to the PBX at ``pbx``."""

    def __init__(self, host: str, port: int, pbx: tuple[str, int], *, t1: float = T1) -> None:
        self.host, self.port, self.pbx, self.t1 = host, port, pbx, t1
        self.transport: asyncio.DatagramTransport | None = None
        self.dialogs: dict[str, Dialog] = {}
        self.on_bye: Callable[[Dialog], None] | None = None
        self._waiting: dict[tuple[str, str], asyncio.Queue[Response]] = {}   # (branch, method) -> responses
        self._cancelled: dict[str, Request] = {}      # branch -> an INVITE we CANCELled (its 487 gets an ACK)
        self._inviting: dict[str, asyncio.Queue] = {}  # Call-ID -> the pending INVITE's responses
        self.on_invite: Callable[["Incoming"], None] | None = None   # a new INVITE from the PBX
        self.incoming: dict[str, Incoming] = {}       # Call-ID -> an INVITE from the PBX not yet ACKed

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self.port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- the wire -------------------------------------------------------------------------------------------
    def _send(self, message: Request | Response, addr: tuple[str, int] | None = None) -> None:
        assert self.transport is not None, "start() first"
        self.transport.sendto(message.to_bytes(), addr or self.pbx)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return                                            # keep-alive
        try:
            message = parse_message(data)
        except SipParseError as exc:
            log.warning("SIP from %s:%s dropped: %s", *addr, exc)
            return
        if isinstance(message, Response):
            queue = self._waiting.get((message.branch or "", message.cseq[1]))
            if queue is not None:
                queue.put_nowait(message)
            elif message.cseq[1] == "INVITE" and message.status >= 300 and message.branch in self._cancelled:
                self._ack_failure(self._cancelled[message.branch], message)
            elif message.cseq[1] == "INVITE" and 200 <= message.status < 300:
                self._ack_2xx(message)                        # a retransmitted 2xx: our ACK was lost
            return
        self._request(message, addr)

    def _request(self, request: Request, addr: tuple[str, int]) -> None:
        reply_to = self._response_address(request, addr)
        dialog = self.dialogs.get(request.call_id)
        incoming = self.incoming.get(request.call_id)
        if request.method == "ACK":
            if incoming is not None and incoming.final is not None:
                incoming.acked()
            return
        if request.method == "INVITE" and request.to.tag is None:
            if incoming is not None:                          # a retransmission: the last answer again
                if incoming.last is not None:
                    self._send(incoming.last, incoming.reply_to)
                return
            if request.call_id in self.dialogs:
                return
            incoming = self.incoming[request.call_id] = Incoming(self, request, reply_to)
            incoming.respond(100)
            if self.on_invite is None:
                incoming.respond(480)
            else:
                self.on_invite(incoming)
            return
        if request.method == "CANCEL" and request.to.tag is None:
            if incoming is None or incoming.final is not None:
                self._send(response_to(request, 481), reply_to)
                return
            self._send(response_to(request, 200), reply_to)
            incoming.respond(487)
            if incoming.on_cancel is not None:
                incoming.on_cancel()
            return
        if dialog is None or (request.to.tag or None) != dialog.local_tag:
            self._send(response_to(request, 481), reply_to)
            return
        if request.method == "BYE":
            self._send(response_to(request, 200), reply_to)
            if not dialog.ended:
                dialog.ended = True
                self.dialogs.pop(dialog.call_id, None)
                if self.on_bye is not None:
                    self.on_bye(dialog)
        elif request.method in ("OPTIONS", "INFO", "UPDATE", "NOTIFY"):
            self._send(response_to(request, 200), reply_to)
        else:                                                 # re-INVITE: not in this slice
            self._send(response_to(request, 488, "Not Acceptable Here"), reply_to)

    @staticmethod
    def _response_address(request: Request, addr: tuple[str, int]) -> tuple[str, int]:
        via = request.top_via
        return (via.received or addr[0], via.rport or addr[1]) if via.wants_rport or via.rport else addr

    def _via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport"

    def _contact(self) -> str:
        return f"<sip:bridge@{self.host}:{self.port}>"

    # -- INVITE ---------------------------------------------------------------------------------------------
    def new_call_id(self) -> str:
        return new_call_id(self.host)

    async def invite(self, ruri: str, from_uri: str, to_uri: str, sdp: str, headers: list[tuple[str, str]],
                     *, call_id: str | None = None, on_provisional: Callable[[Response], None] | None = None,
                     timeout: float | None = None) -> tuple[Dialog, Response]:
        """Place a call; returns the dialog and the 200 OK once ACKed. Raises :class:`SipFailure` (487 after
        :meth:`cancel`). Cancel with :meth:`cancel`, not by cancelling the task: the CANCEL must wait for a
        provisional answer, and a 200 that crosses it must still be ACKed and ended with a BYE."""
        call_id, tag, branch = call_id or new_call_id(self.host), new_tag(), new_branch()
        h = Headers()
        h.add("Via", self._via(branch))
        h.add("Max-Forwards", "70")
        h.add("From", f"<{from_uri}>;tag={tag}")
        h.add("To", f"<{to_uri}>")
        h.add("Call-ID", call_id)
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self._contact())
        h.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")
        for name, value in headers:
            h.add(name, value)
        h.add("Content-Type", "application/sdp")
        invite = Request("INVITE", ruri, h, sdp.encode())
        dialog = Dialog(call_id, tag, from_uri, to_uri, target=ruri)
        queue: asyncio.Queue[Response | None] = asyncio.Queue()
        self._waiting[(branch, "INVITE")] = queue              # type: ignore[assignment]
        self._inviting[call_id] = queue
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (timeout if timeout is not None else 64 * self.t1)
        interval, provisional, cancelling = self.t1, False, False
        try:
            self._send(invite)
            while True:
                wait = min(interval, give_up - loop.time()) if not provisional else give_up - loop.time()
                if wait <= 0:
                    raise SipFailure(487 if cancelling else 408, "Request Terminated" if cancelling
                                     else "Request Timeout")
                try:
                    response = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    if not provisional:
                        self._send(invite)                    # Timer A
                        interval *= 2
                    continue
                if response is None:                          # cancel(): RFC 3261 9.1
                    if not cancelling:
                        cancelling = True
                        if provisional:
                            self._cancel(invite, branch)
                        give_up = min(give_up, loop.time() + 64 * self.t1)
                    continue
                if response.status < 200:
                    if cancelling and not provisional:        # the CANCEL waited for this
                        self._cancel(invite, branch)
                    provisional = True
                    if on_provisional is not None and not cancelling:
                        on_provisional(response)
                    if timeout is None and not cancelling:    # ringing: Timer C's 3 minutes
                        give_up = max(give_up, loop.time() + 180.0)
                    continue
                if response.status >= 300:
                    self._ack_failure(invite, response)
                    raise SipFailure(response.status, response.reason)
                dialog.remote_tag = response.to.tag
                contacts = response.name_addrs("Contact")
                dialog.target = str(contacts[0].uri) if contacts else ruri
                dialog.route = [str(rr) for rr in reversed(response.name_addrs("Record-Route"))]
                self.dialogs[call_id] = dialog
                self._ack_2xx(response)
                if cancelling:                                # the 200 crossed our CANCEL: end it at once
                    await self.bye(dialog)
                    raise SipFailure(487, "Request Terminated")
                return dialog, response
        finally:
            self._waiting.pop((branch, "INVITE"), None)
            self._inviting.pop(call_id, None)

    def cancel(self, call_id: str) -> bool:
        """Give up the INVITE of ``call_id`` (its :meth:`invite` then raises 487); False when none is pending."""
        queue = self._inviting.get(call_id)
        if queue is None:
            return False
        queue.put_nowait(None)
        return True

    def _ack_failure(self, invite: Request, response: Response) -> None:
        """RFC 3261 17.1.1.3: the ACK of a non-2xx reuses the INVITE's branch, To with the response's tag."""
        h = Headers()
        h.add("Via", invite.headers.get("Via") or "")
        h.add("Max-Forwards", "70")
        h.add("From", invite.headers.get("From") or "")
        h.add("To", response.headers.get("To") or "")
        h.add("Call-ID", invite.call_id)
        h.add("CSeq", f"{invite.cseq[0]} ACK")
        self._send(Request("ACK", invite.uri, h))

    def _cancel(self, invite: Request, branch: str) -> None:
        h = Headers()
        for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
            h.add(name, invite.headers.get(name) or "")
        h.add("CSeq", f"{invite.cseq[0]} CANCEL")
        self._cancelled[branch] = invite
        asyncio.get_running_loop().call_later(64 * self.t1, self._cancelled.pop, branch, None)
        self._send(Request("CANCEL", invite.uri, h))

    def _in_dialog(self, dialog: Dialog, method: str, cseq: int, branch: str) -> Request:
        h = Headers()
        h.add("Via", self._via(branch))
        h.add("Max-Forwards", "70")
        h.add("From", f"<{dialog.local_uri}>;tag={dialog.local_tag}")
        h.add("To", f"<{dialog.remote_uri}>" + (f";tag={dialog.remote_tag}" if dialog.remote_tag else ""))
        h.add("Call-ID", dialog.call_id)
        h.add("CSeq", f"{cseq} {method}")
        for route in dialog.route:
            h.add("Route", route)
        return Request(method, dialog.target, h)

    def _ack_2xx(self, response: Response) -> None:
        dialog = self.dialogs.get(response.call_id)
        if dialog is None:
            return
        self._send(self._in_dialog(dialog, "ACK", response.cseq[0], new_branch()), self._next_hop(dialog))

    def _next_hop(self, dialog: Dialog) -> tuple[str, int]:
        """Where requests of the dialog go: the first Route (a loose router: the proxy) or else the PBX."""
        return self.pbx if dialog.route or not dialog.target else _address(dialog.target, self.pbx)

    # -- BYE ------------------------------------------------------------------------------------------------
    async def bye(self, dialog: Dialog, headers: list[tuple[str, str]] = ()) -> int:
        """End the dialog; the BYE's final status (408 when nothing answered)."""
        if dialog.ended:
            return 0
        dialog.ended = True
        self.dialogs.pop(dialog.call_id, None)
        dialog.cseq += 1
        branch = new_branch()
        request = self._in_dialog(dialog, "BYE", dialog.cseq, branch)
        for name, value in headers:
            request.headers.add(name, value)
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._waiting[(branch, "BYE")] = queue
        loop = asyncio.get_running_loop()
        give_up, interval = loop.time() + 64 * self.t1, self.t1
        hop = self._next_hop(dialog)
        try:
            self._send(request, hop)
            while loop.time() < give_up:
                try:
                    response = await asyncio.wait_for(queue.get(), min(interval, give_up - loop.time()))
                except asyncio.TimeoutError:
                    self._send(request, hop)                  # Timer E
                    interval = min(interval * 2, T2)
                    continue
                if response.status >= 200:
                    return response.status
            return 408
        finally:
            self._waiting.pop((branch, "BYE"), None)


class Incoming:
    """An INVITE from the PBX (the UAS side, RFC 3261 13.3 and 17.2.1): 100 Trying at once, then what the bridge
    answers with :meth:`respond`. A final answer is resent (Timer G) until the ACK or 64*T1; a 2xx makes the
    :class:`Dialog` (``dialog``) the bridge then uses like one it placed. ``on_cancel`` runs on the PBX's CANCEL
    (the UA has answered it 200 and the INVITE 487)."""

    def __init__(self, ua: SipUserAgent, request: Request, reply_to: tuple[str, int]) -> None:
        self.ua, self.request, self.reply_to = ua, request, reply_to
        self.local_tag = new_tag()
        self.last: Response | None = None
        self.final: int | None = None
        self.dialog: Dialog | None = None
        self.on_cancel: Callable[[], None] | None = None
        self._resend: asyncio.TimerHandle | None = None

    @property
    def call_id(self) -> str:
        return self.request.call_id

    @property
    def sdp(self) -> str:
        return self.request.body.decode("utf-8", "replace")

    def respond(self, status: int, reason: str | None = None, *, sdp: str | None = None,
                headers: list[tuple[str, str]] = ()) -> Dialog | None:
        """Answer the INVITE (a no-op once a final answer went out); the dialog for a 2xx."""
        if self.final is not None:
            return self.dialog
        extra = list(headers)
        if 200 <= status < 300:
            extra.append(("Contact", self.ua._contact()))
            extra.extend(("Record-Route", rr) for rr in self.request.headers.get_all("Record-Route"))
        response = response_to(self.request, status, reason, to_tag=None if status == 100 else self.local_tag,
                               headers=extra, body=sdp.encode() if sdp else b"",
                               content_type="application/sdp" if sdp else None)
        self.last = response
        self.ua._send(response, self.reply_to)
        if status < 200:
            return None
        self.final = status
        if status < 300:
            req = self.request
            contacts = req.name_addrs("Contact")
            self.dialog = Dialog(req.call_id, self.local_tag, str(req.to.uri), str(req.from_.uri),
                                 target=str(contacts[0].uri) if contacts else str(req.from_.uri),
                                 route=[str(rr) for rr in req.name_addrs("Record-Route")],
                                 remote_tag=req.from_.tag, cseq=0)
            self.ua.dialogs[req.call_id] = self.dialog
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 64 * self.ua.t1

        def resend(interval: float) -> None:                  # Timer G (Timer H gives up)
            if self.last is None or loop.time() >= give_up:
                self.acked()
                return
            self.ua._send(self.last, self.reply_to)
            self._resend = loop.call_later(min(2 * interval, T2), resend, min(2 * interval, T2))
        self._resend = loop.call_later(self.ua.t1, resend, self.ua.t1)
        return self.dialog

    def acked(self) -> None:
        if self._resend is not None:
            self._resend.cancel()
            self._resend = None
        if self.ua.incoming.get(self.call_id) is self:
            # kept a little for a retransmitted INVITE or ACK, then forgotten
            asyncio.get_running_loop().call_later(32 * self.ua.t1, self.ua.incoming.pop, self.call_id, None)


def _address(uri: str, default: tuple[str, int]) -> tuple[str, int]:
    try:
        parsed = parse_name_addr(f"<{uri}>").uri
    except SipParseError:
        return default
    host = getattr(parsed, "host", None)
    port = getattr(parsed, "port", None)
    return (host, port or 5060) if host else default


__all__ = ["Dialog", "Incoming", "SipFailure", "SipUserAgent"]
