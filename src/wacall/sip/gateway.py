"""Meta's SIP gateway (``wa.meta.vc``): the user agent that turns SIP into domain operations and back.

Layering (RFC 3261): ``transport`` (TLS, framing) → ``transaction`` (timers, CANCEL, retransmits)
→ this module, the UA core with its dialogs. It never decides a business rule: it asks the domain
(``wacall.domain.sip``) and renders the answer the way Meta's gateway does (calling-wire-spec §7.2,
§8): the 407 challenge, the refusal texts, 180/200 with Meta's Record-Route, Contact, Allow and
``X-FB-External-Domain``, and BYE with ``Reason`` and ``x-wa-meta-call-duration``.

Business-initiated calls (business → wacall): ``INVITE sip:+<user>@<domain>;transport=tls`` is
challenged (407), the retry's digest is checked against the number's SIP password (username = the
business number, ``uri`` = the Request-URI), then the domain places the call. The SIP dialog follows
the call: RINGING → 180, ACCEPTED → 200 (resent until ACKed), user rejects → 486, no answer → 480,
CANCEL → 487, user hangs up → BYE.

User-initiated calls (wacall → business): when a user calls a SIP-enabled number the gateway sends
the INVITE to the configured server (hostname, port, ``request_uri_user_params``, TLS verified
against the hostname), answers a 401/407 challenge, and maps 18x/200/4xx-6xx onto pre_accept,
accept and reject. A 200 OK that drops Meta's two Record-Route entries breaks Meta's rule: the ACK
is never sent (it would not reach the business through Meta's proxies), the business keeps
retransmitting its 200, and after 64×T1 the dialog dies; the timeline says why.

Every SIP message of a call is put on its timeline (``kind: "sip_message"``) for a ladder view.

What the gateway may do with the running emulator is :class:`SipHost`: read the domain, change it
through ``apply`` (the one write path: SIP traces and dialog state too), and own a call's media leg.
It hears about calls the domain changed through the event registry (``SipCallChanged`` ->
:meth:`SipGateway.on_call_changed`), never by calling itself after an operation.

A restart is not the end of a call: once a dialog is established (Meta's 200 sent, or the business's
200 ACKed) its state -- Call-ID, tags, URIs, route set, remote target, both CSeqs, which side is the
UAC, the business's server -- is kept with the call record (``Call.sip``, written through the domain's
``sip_dialog_state`` and committed like any other change). At start :meth:`SipGateway.restore`
rebuilds those dialogs, so the business's BYE gets its 200 and the user's hang-up sends Meta's BYE over
a new connection (:meth:`SipGateway._connect_for`). A call whose INVITE transaction was still open
when the process died cannot be finished and ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..domain import settings as calling_settings
from ..domain.errors import MediaUnavailable
from ..domain.events import ReleaseMedia, SipCallChanged
from ..domain.model import ACCEPTED, BUSINESS_INITIATED, ENDED, RINGING, USER_INITIATED, VOICEMAIL, Call
from ..domain.ends import BAD_DIGEST, MEDIA_UNAVAILABLE, SipRefusal, refusal_for_cause, sip_final_for_ended
from ..domain.platform import Platform
from ..domain.sip import not_acceptable_hint
from . import digest
from .message import Headers, Request, Response, SipParseError, new_branch, response_to
from .transaction import ClientTransaction, Retransmitter, ServerTransaction, TransactionLayer
from .transport import Connection, TlsTransport, TransportError
from .uri import NameAddr, is_token, parse_name_addr, parse_uri, remember

log = logging.getLogger("wacall.sip")

ALLOW = "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS"
PROXY = "onevc-sip-proxy.fbinfra.net:8191"
USER_AGENT = "Facebook SipGateway"
SDP = "application/sdp"
TRACE_LIMIT = 4000          # characters of each SIP message kept on the timeline


def meta_record_routes(domain: str) -> list[str]:
    """Meta's two Record-Route entries, in the order its INVITE carries them (§8.3)."""
    return [f"<sip:{domain};transport=tls;lr>", f"<sip:{PROXY};transport=tls;lr>"]


@dataclass(frozen=True)
class SipHost:
    """What the SIP gateway may do with the running emulator (built by ``wacall.server``)."""

    platform: Platform                                       # read: SIP questions, calls, numbers
    apply: Callable[..., Any]                                # the one write path: run a domain operation, commit
    place_call: Callable[[Callable[[str, Any], Any]], Awaitable[Any]]   # legs.LegOwner.place: a new call with its leg


@dataclass
class Dialog:
    """One call's SIP dialog (RFC 3261 §12) on the gateway."""

    call_id: str                       # wacall's call id (wacid)
    direction: str                     # BUSINESS_INITIATED | USER_INITIATED
    sip_call_id: str
    local_tag: str
    conn: Connection | None = None
    remote_tag: str | None = None
    local_uri: str = ""                # our From (UIC) / To (BIC) value without tag
    remote_uri: str = ""
    remote_target: str = ""            # the business's Contact URI
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    invite: Request | None = None      # the INVITE that created the dialog
    server_txn: ServerTransaction | None = None
    client_txn: ClientTransaction | None = None
    retransmitter: Retransmitter | None = None
    sent_ringing: bool = False
    final_status: int | None = None    # our (BIC) or the business's (UIC) final answer to the INVITE
    confirmed: bool = False            # 2xx exchanged and ACKed
    broken_route: bool = False         # the business's 200 broke Meta's Record-Route rule
    bye_sent: bool = False
    remote_cseq: int | None = None     # the business's last CSeq in the dialog (RFC 3261 §12.2.2)
    server: dict | None = None         # the business's configured server: {"hostname", "port"}
    outgoing: Response | None = None   # a 180/200 prepared with the commit of its state change, sent after it
    bye_ok: Response | None = None     # the 200 to the business's BYE, traced in the commit that ends the call
    peer: tuple[str, int] | None = None  # where the business's connection came from / what we dialled
    answer_headers: tuple[tuple[str, str], ...] | None = None   # Meta's fields of its 180 and 200 (BIC), built once

    # -- persistence (Call.sip) ---------------------------------------------------------------------
    def state(self) -> dict:
        """What a restarted gateway needs to go on with the dialog (RFC 3261 §12: its state)."""
        return {"call_id": self.sip_call_id, "uac": "business" if self.direction == BUSINESS_INITIATED else "meta",
                "local_tag": self.local_tag, "remote_tag": self.remote_tag, "local_uri": self.local_uri,
                "remote_uri": self.remote_uri, "remote_target": self.remote_target,
                "route_set": [*self.route_set], "local_cseq": self.local_cseq, "remote_cseq": self.remote_cseq,
                "final_status": self.final_status, "confirmed": self.confirmed, "server": self.server,
                "peer": [*self.peer] if self.peer else None}

    @classmethod
    def from_state(cls, call: Call, state: dict) -> Dialog:
        peer = state.get("peer")
        return cls(call_id=call.id, direction=call.direction, sip_call_id=state["call_id"],
                   local_tag=state["local_tag"], remote_tag=state.get("remote_tag"),
                   local_uri=state.get("local_uri") or "", remote_uri=state.get("remote_uri") or "",
                   remote_target=state.get("remote_target") or "", route_set=list(state.get("route_set") or []),
                   local_cseq=int(state.get("local_cseq") or 0), remote_cseq=state.get("remote_cseq"),
                   final_status=state.get("final_status"), confirmed=bool(state.get("confirmed")),
                   sent_ringing=True, server=state.get("server"), peer=(str(peer[0]), int(peer[1])) if peer else None)


class SipGateway:
    def __init__(self, host: SipHost, transport: TlsTransport, *, domain: str = "wa.meta.vc",
                 t1: float = 0.5) -> None:
        self.host = host
        self.platform = host.platform
        self.domain = domain
        self.transport = transport
        self.layer = TransactionLayer(transport, t1=t1)
        self.layer.on_request = self.on_request
        self.layer.on_cancel = self.on_cancel
        self.layer.on_stray_response = self.on_stray_response
        transport.in_use = self._carries_dialog      # a connection with a live dialog is never idle-closed
        self.nonces = digest.NonceBook(domain, now=time.monotonic)
        # fields that depend on the domain only: built once, not per response
        self.meta_headers: tuple[tuple[str, str], ...] = (("X-FB-External-Domain", domain),)
        self._domain_is_ip = parse_uri(f"sip:{domain}").is_ip_host    # a Request-URI on an IP host is refused (404)
        # what Meta's 180 and 200 carry after the business's own Record-Route entries: its two (reversed, RFC 3261
        # §12.1.1), Allow, Supported and X-FB-External-Domain (the Contact, which names the user, follows them)
        self._answer_fields: tuple[tuple[str, str], ...] = (
            *[("Record-Route", rr) for rr in reversed(meta_record_routes(domain))],
            ("Allow", ALLOW), ("Supported", "timer"), *self.meta_headers)
        self.dialogs: dict[str, Dialog] = {}           # by wacall call id
        self.by_sip_call_id: dict[str, Dialog] = {}
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"invites": 0, "challenges": 0, "established": 0, "refused": 0}

    # -- bookkeeping -------------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP gateway task failed", exc_info=task.exception())

    def _carries_dialog(self, conn: Connection) -> bool:
        return any(dialog.conn is conn for dialog in self.dialogs.values())

    def _call(self, call_id: str):
        """``platform.call``: a call in memory (every call with a dialog busy) by one dict lookup, else the
        platform's own lookup (which reads an ended call back from the archive)."""
        return self.platform.calls.get(call_id) or self.platform.call(call_id)

    def _register(self, dialog: Dialog) -> None:
        self.dialogs[dialog.call_id] = dialog
        self.by_sip_call_id[dialog.sip_call_id] = dialog

    def _save(self, dialog: Dialog, direction: str | None = None, message: Request | Response | None = None,
              call: Call | None = None) -> None:
        """Keep the dialog's state with its call (what :meth:`restore` rebuilds), committed with the
        SIP trace of the message that changed it: given here, it is traced in the same (deferred) apply.
        ``call``: the dialog's call when the caller has it already (not looked up again)."""
        if call is None:
            call = self._call(dialog.call_id)
            if call is None:
                return
        if call.state == ENDED:
            if message is not None:
                self.host.apply(lambda: self._note_message(call, direction, message), defer=True)
            return
        state = dialog.state()

        def save() -> None:
            if message is not None:
                self._note_message(call, direction, message)
            self.platform.sip_dialog_state(call, state)
        self.host.apply(save, defer=True)

    def restore(self) -> None:
        """After a restart: rebuild the dialogs of the SIP calls still in progress from their records.

        An established dialog (Meta's 200 sent on a business-initiated call, or the business's 200 ACKed on
        a user-initiated one) is registered again without a connection: the business's next request comes
        on a new one, and Meta's next request opens one (:meth:`_connect_for`). A call whose INVITE
        transaction was still open died with it (nothing can answer or cancel that INVITE any more): it
        ends as a failed call, with the reason on its timeline.
        """
        lost: list[Call] = []
        for call in list(self.platform.active_calls.values()):
            if call.signalling != "sip":
                continue
            state = call.sip if isinstance(call.sip, dict) else {}
            try:
                dialog = Dialog.from_state(call, state) if state.get("final_status") == 200 else None
            except (KeyError, TypeError, ValueError, IndexError):     # not a state this gateway wrote
                dialog = None
            if dialog is None:
                lost.append(call)
                continue
            self._register(dialog)
            self._timeline(call.id, "dialog_restored", sip_call_id=dialog.sip_call_id, confirmed=dialog.confirmed)
            if not dialog.confirmed:             # Meta's 200 went out but no ACK came before the restart
                self._spawn(self._await_ack(dialog))
        for call in lost:
            self.host.apply(lambda c=call: self.platform.sip_call_failed(
                c, "the SIP gateway restarted while the INVITE transaction was open; the transaction is gone"))

    async def _await_ack(self, dialog: Dialog) -> None:
        await asyncio.sleep(64 * self.layer.t1)
        if not dialog.confirmed and self.dialogs.get(dialog.call_id) is dialog:
            self._no_ack(dialog)
            self._forget(dialog)

    def _forget(self, dialog: Dialog) -> None:
        self.dialogs.pop(dialog.call_id, None)
        self.by_sip_call_id.pop(dialog.sip_call_id, None)
        if dialog.retransmitter:
            dialog.retransmitter.cancel()

    def trace(self, call_id: str | None, direction: str, message: Request | Response) -> None:
        """Put a SIP message on the call's timeline (``in`` from the business, ``out`` from Meta)."""
        call = self._call(call_id) if call_id else None
        if call is not None:
            self.host.apply(lambda: self._note_message(call, direction, message), defer=True)

    def _note_message(self, call: Call, direction: str, message: Request | Response) -> None:
        raw = message.to_bytes().decode("utf-8", "replace")
        # the start line (a rendered message always has one CRLF): one partition, ~0.6 k instructions less than
        # a find and a slice
        self.platform.note_values(call, "sip_message", {"direction": direction, "line": raw.partition("\r\n")[0],
                                                        "raw": raw[:TRACE_LIMIT]})

    def _send_response(self, txn: ServerTransaction, response: Response, call_id: str | None = None) -> None:
        self.trace(call_id, "out", response)
        txn.respond(response)

    def _refuse(self, txn: ServerTransaction, request: Request, refusal: SipRefusal, call_id: str | None = None,
                to_tag: str | None = None) -> None:
        headers = list(self.meta_headers)
        if refusal.warning:
            headers.append(("Warning", f'399 {self.domain} "{refusal.reason}"'))
        self.stats["refused"] += 1
        self._send_response(txn, response_to(request, refusal.status, refusal.reason, to_tag=to_tag or txn.local_tag,
                                             headers=headers), call_id)

    # -- requests from business servers ---------------------------------------------------------
    def on_request(self, request: Request, txn: ServerTransaction | None) -> Awaitable[None] | None:
        """A request from a business server. Answered here and now, except an authenticated INVITE: the
        call is placed by the coroutine returned (the transaction layer runs it at once, and in a task only
        from its first real wait: with media in this process it never waits)."""
        method = request.method
        if txn is None:                       # an ACK outside any transaction: the ACK to our 2xx
            if method == "ACK":
                self._on_ack(request)
            return None
        if method == "INVITE":
            if request.to.tag:
                dialog = self.by_sip_call_id.get(request.call_id)
                self.trace(dialog.call_id if dialog else None, "in", request)
                self._send_response(txn, response_to(request, 500, "Internal Server Error",
                                                     headers=self.meta_headers),
                                    dialog.call_id if dialog else None)   # re-INVITE: unsupported (FAQ)
                return None
            return self._business_invite(request, txn)
        elif method == "BYE":
            self._on_bye(request, txn)
        elif method == "OPTIONS":
            txn.respond(response_to(request, 200, "OK", to_tag=txn.local_tag, headers=[
                ("Allow", ALLOW), ("Accept", SDP), *self.meta_headers]))
        elif method == "REGISTER":
            txn.respond(response_to(request, 403, "Forbidden", to_tag=txn.local_tag, headers=self.meta_headers))
        elif method == "NOTIFY":
            txn.respond(response_to(request, 481, "Call/Transaction Does Not Exist", to_tag=txn.local_tag))
        else:
            txn.respond(response_to(request, 405, "Method Not Allowed", to_tag=txn.local_tag,
                                    headers=[("Allow", ALLOW), *self.meta_headers]))
        return None

    def _business_invite(self, request: Request, txn: ServerTransaction) -> Awaitable[None] | None:
        """A business-initiated call (calling-wire-spec §8.2): challenged or refused at once, else placed by
        the coroutine returned."""
        self.stats["invites"] += 1
        try:
            ruri = request.ruri
            from_uri = request.from_.uri
        except SipParseError as exc:
            txn.respond(response_to(request, 400, exc.reason, to_tag=txn.local_tag))
            return None
        if ruri.host.lower() != self.domain or self._domain_is_ip:     # (is_ip_host of the host, which is the domain)
            self._refuse(txn, request, SipRefusal(404, "Not found"))
            return None
        authorization = request.headers.get("Proxy-Authorization")
        if authorization is None:
            self.stats["challenges"] += 1
            challenge = self.nonces.issue()
            txn.respond(response_to(request, 407, "Proxy Authentication Required", to_tag=txn.local_tag,
                                    headers=[("Proxy-Authenticate", challenge.header_value()),
                                             *self.meta_headers]))
            return None
        try:
            number = self.platform.sip_number(from_uri.user or "")
            server = self.platform.sip_server(number, from_uri.host)
            self._check_digest(request, authorization, from_uri, number, server)
            content_type = request.content_type       # (as the business sends it, the usual one: no split)
            if not request.body or (content_type != SDP
                                    and (content_type or "").split(";")[0].strip().lower() != SDP):
                raise SipRefusal(403, "SDP Validation error: the INVITE carries no SDP offer")
        except _Stale:                   # right password, old nonce: a fresh challenge (RFC 2617 §3.2.1)
            txn.respond(response_to(request, 407, "Proxy Authentication Required", to_tag=txn.local_tag,
                                    headers=[("Proxy-Authenticate", self.nonces.issue(stale=True).header_value()),
                                             *self.meta_headers]))
            return None
        except SipRefusal as refusal:
            self._refuse(txn, request, refusal)
            return None
        return self._place_business_call(request, txn, number, server, ruri, from_uri)

    async def _place_business_call(self, request: Request, txn: ServerTransaction, number, server: dict,
                                   ruri, from_uri) -> None:
        dialog: Dialog | None = None

        def place(call_id: str, leg) -> Call:
            nonlocal dialog
            # the fields in their order, not by keyword: a class's keyword arguments reach its __init__ packed into
            # a dict and unpacked again (~5 k instructions for these fifteen, once per call)
            dialog = Dialog(
                call_id, BUSINESS_INITIATED, request.call_id, txn.local_tag,   # call_id, direction, sip_call_id,
                txn.conn, request.from_.tag,                                 # local_tag, conn, remote_tag
                _without_tag(request.headers.get("To") or ""),               # local_uri
                _without_tag(request.headers.get("From") or ""),             # remote_uri
                _contact_uri(request) or str(from_uri),                      # remote_target
                request.headers.get_all("Record-Route"), 0, request, txn,    # route_set, local_cseq, invite,
                None, None, False, None, False, False, False,                # server_txn; client_txn .. bye_sent
                request.cseq[0], _server_address(server), None, None,        # remote_cseq, server, outgoing, bye_ok
                txn.conn.peer if txn.conn else None)                         # peer
            self._register(dialog)
            call = self.platform.sip_business_invite(number, server, ruri.user_number or "",
                                                     request.body.decode("utf-8", "replace"), call_id=call_id, leg=leg)
            self._note_message(call, "in", request)       # first on the ladder, before the 180 it causes
            return call
        try:
            await self.host.place_call(place)      # the leg is released if the call is refused; its
        except MediaUnavailable:                   # SipCallChanged has the gateway send the 180
            self._refuse(txn, request, refusal_for_cause(MEDIA_UNAVAILABLE))
            return
        except SipRefusal as refusal:
            if dialog is not None:
                self._forget(dialog)
            self._refuse(txn, request, refusal)
            return

    def _check_digest(self, request: Request, authorization: str, from_uri, number, server: dict) -> None:
        try:
            creds = digest.parse_credentials(authorization)
        except (ValueError, SipParseError):
            raise SipRefusal(403, BAD_DIGEST) from None
        from_user = (from_uri.user_number or "").lstrip("+")
        if (creds.username or "").lstrip("+") != from_user:
            raise SipRefusal(403, BAD_DIGEST)
        if creds.uri is None or not _same_uri(creds.uri, request.uri):
            raise SipRefusal(403, BAD_DIGEST)
        verdict = self.nonces.verify(creds, method="INVITE", password=self.platform.sip_password(number, server))
        if verdict is digest.Verdict.STALE:
            raise _Stale()
        if verdict is not digest.Verdict.OK:
            raise SipRefusal(403, BAD_DIGEST)

    def on_cancel(self, txn: ServerTransaction, cancel: Request) -> None:
        dialog = self.by_sip_call_id.get(cancel.call_id)
        if dialog is None or dialog.server_txn is not txn:
            txn.respond(response_to(txn.request, 487, "Request Terminated", to_tag=txn.local_tag))
            return
        self.trace(dialog.call_id, "in", cancel)
        dialog.final_status = 487
        self._send_response(txn, response_to(txn.request, 487, "Request Terminated", to_tag=dialog.local_tag,
                                             headers=self.meta_headers), dialog.call_id)
        call = self.platform.call(dialog.call_id)
        if call is not None and call.state != ENDED:
            self.host.apply(lambda: self.platform.sip_business_hangs_up(call))
        self._forget(dialog)

    def _on_ack(self, ack: Request) -> None:
        dialog = self.by_sip_call_id.get(ack.call_id)
        if dialog is None:
            return
        if dialog.retransmitter:
            dialog.retransmitter.ack()
        if not dialog.confirmed and dialog.final_status == 200:
            dialog.confirmed = True
            self._save(dialog, "in", ack)
        else:
            self.trace(dialog.call_id, "in", ack)

    def _on_bye(self, request: Request, txn: ServerTransaction) -> None:
        dialog = self.by_sip_call_id.get(request.call_id)
        if dialog is None:
            txn.respond(response_to(request, 481, "Call/Transaction Does Not Exist", to_tag=txn.local_tag))
            return
        call_id = dialog.call_id
        cseq = request.cseq[0]
        if not dialog.broken_route and (dialog.remote_cseq is None or cseq >= dialog.remote_cseq):
            self._business_hangs_up(request, txn, dialog, cseq)
            return
        self.trace(call_id, "in", request)
        if dialog.broken_route:           # Meta's proxies cannot route it: the business's Route set is wrong
            self._send_response(txn, response_to(request, 404, "Not Found", headers=self.meta_headers), call_id)
            return
        # out of order (RFC 3261 §12.2.2)
        self._send_response(txn, response_to(request, 500, "Server Internal Error",
                                             headers=self.meta_headers), call_id)

    def _business_hangs_up(self, bye: Request, txn: ServerTransaction, dialog: Dialog, cseq: int) -> None:
        """The business's BYE in its dialog, in order: the call ends, then the 200. ``cseq``: its CSeq number
        (the caller has read it already)."""
        dialog.remote_cseq = cseq
        if dialog.conn is None or not dialog.conn.is_open:
            dialog.conn = txn.conn        # the business's new flow (after a restart, or a reconnect)
        call = self._call(dialog.call_id)
        ok = response_to(bye, 200, "OK", headers=self.meta_headers)
        if call is not None:        # committed before the 200 says so: a kill -9 after the 200 keeps the end

            def hang_up() -> None:
                self._note_message(call, "in", bye)      # the BYE's trace, in the same commit
                self.platform.sip_business_hangs_up(call)
            dialog.bye_ok = ok       # traced by prepare_released in that commit, after the media's final_stats
            try:
                self.host.apply(hang_up)
            finally:                 # (refused: no 200 to trace later, by the release or here)
                alone, dialog.bye_ok = dialog.bye_ok is not None, None
            if alone:                # the call had ended already (no release): the 200 traced on its own
                self.host.apply(lambda: self._note_message(call, "out", ok), defer=True)
        txn.respond(ok)
        self._forget(dialog)

    def on_stray_response(self, response: Response, conn: Connection) -> None:
        """A 2xx retransmitted after the INVITE transaction ended: ACK it again (RFC 3261 §13.2.2.4)."""
        dialog = self.by_sip_call_id.get(response.call_id)
        if dialog is not None and response.cseq[1] == "INVITE" and 200 <= response.status < 300:
            self.trace(dialog.call_id, "in", response)
            if not dialog.broken_route:
                self._send_ack(dialog, response, conn)

    # -- the domain changed a SIP call: say it in SIP ------------------------------------------------
    # (the three consumers below take the event itself: registered as they are, no lambda frame per event)
    def on_call_changed(self, event: SipCallChanged) -> None:
        call_id = event.call_id
        call = self._call(call_id)
        if call is None:
            return
        dialog = self.dialogs.get(call_id)
        if call.direction == BUSINESS_INITIATED:
            if dialog is not None:
                self._bic_follow(call, dialog)
        elif dialog is None and call.state == RINGING:
            # Meta's captures: "Call-ID: outgoing:wacid.HBgL…" (the call id already starts with "wacid.")
            dialog = Dialog(call_id=call.id, direction=USER_INITIATED, sip_call_id=f"outgoing:{call.id}",
                            local_tag=str(uuid.uuid4()))
            self._register(dialog)
            self._spawn(self._user_invite(call, dialog))
        elif dialog is not None and call.state in (ENDED, VOICEMAIL):    # voicemail: CANCEL a pending INVITE
            self._spawn(self._uic_end(call, dialog))

    def prepare_call_changed(self, event: SipCallChanged) -> None:
        """Before the commit of a change to a business-initiated SIP call: build the 180 or 200 it causes, and
        put it on the call's timeline (with the dialog state the 200 sets) in that same commit. It is sent by
        :meth:`on_call_changed` once the commit is done, as before: never ahead of the state it announces."""
        call_id = event.call_id
        dialog = self.dialogs.get(call_id)
        if (dialog is None or dialog.direction != BUSINESS_INITIATED or dialog.final_status is not None
                or dialog.outgoing is not None or dialog.invite is None or dialog.server_txn is None):
            return
        call = self._call(call_id)
        if call is None:
            return
        # A preparer's changes join the commit under way: they are made here directly, as an apply() inside it
        # would make them (it neither commits nor defers there), without its frame and closure.
        state = call.state
        if state == RINGING and not dialog.sent_ringing:
            dialog.sent_ringing = True
            ringing = dialog.outgoing = self._dialog_response(dialog.invite, dialog, 180, "Ringing")
            self._note_message(call, "out", ringing)              # (trace(), the call known)
        elif state == ACCEPTED:
            dialog.final_status = 200
            ok = dialog.outgoing = self._dialog_response(dialog.invite, dialog, 200, "OK", sdp=call.meta_sdp)
            self._note_message(call, "out", ok)                   # (_save(), the call known and not ended)
            self.platform.sip_dialog_state(call, dialog.state())

    def prepare_released(self, event: ReleaseMedia) -> None:
        """Before the commit that ends a call, once its media leg was released (a ``ReleaseMedia`` preparer
        registered after the media plane's): the 200 to the business's BYE goes on the timeline after the
        leg's final statistics, in that same commit (not a transaction of its own); it is sent once the
        commit is done (:meth:`_business_hangs_up`)."""
        call_id = event.call_id
        dialog = self.dialogs.get(call_id)
        if dialog is None or dialog.bye_ok is None:
            return
        call = self._call(call_id)
        if call is None:
            return
        ok, dialog.bye_ok = dialog.bye_ok, None
        self._note_message(call, "out", ok)       # (in the commit under way, as in prepare_call_changed)

    def _send_prepared(self, dialog: Dialog) -> None:
        response, dialog.outgoing = dialog.outgoing, None
        txn = dialog.server_txn
        if response is None or txn is None:
            return
        if response.status == 200:
            self.stats["established"] += 1
            dialog.retransmitter = self.layer.retransmit_2xx(txn, response, on_give_up=lambda: self._no_ack(dialog))
        else:
            txn.respond(response)

    def _bic_follow(self, call: Call, dialog: Dialog) -> None:
        if dialog.outgoing is not None:
            self._send_prepared(dialog)
        txn, invite = dialog.server_txn, dialog.invite
        if dialog.final_status is None:
            assert txn is not None and invite is not None    # a restored dialog always has its final status
            if call.state == RINGING and not dialog.sent_ringing:
                dialog.sent_ringing = True
                self._send_response(txn, self._dialog_response(invite, dialog, 180, "Ringing"), call.id)
            elif call.state == ACCEPTED:
                dialog.final_status = 200
                ok = self._dialog_response(invite, dialog, 200, "OK", sdp=call.meta_sdp)
                self.trace(call.id, "out", ok)
                self.stats["established"] += 1
                dialog.retransmitter = self.layer.retransmit_2xx(txn, ok, on_give_up=lambda: self._no_ack(dialog))
                self._save(dialog)
            elif call.state == ENDED:
                status, reason = sip_final_for_ended(call)
                dialog.final_status = status
                self._send_response(txn, response_to(invite, status, reason, to_tag=dialog.local_tag,
                                                     headers=self.meta_headers), call.id)
                self._forget(dialog)
        elif call.state == ENDED and call.ended_by != "business" and not dialog.bye_sent:
            self._spawn(self._send_bye(call, dialog))

    def _no_ack(self, dialog: Dialog) -> None:
        call = self.platform.call(dialog.call_id)
        if call is not None:
            self.host.apply(lambda: self.platform.sip_call_failed(
                call, "no ACK for the 200 OK within 64*T1: the dialog is torn down"))

    def _dialog_response(self, invite: Request, dialog: Dialog, status: int, reason: str, *,
                         sdp: str | None = None) -> Response:
        """Meta's 180/200 to a business INVITE (§8.2): Record-Route, Contact, Allow, Supported, X-FB."""
        headers = dialog.answer_headers
        if headers is None:           # the same for the dialog's 180 and 200: built for the first of them
            # the business's own Record-Route entries as received, then Meta's two (RFC 3261 §12.1.1)
            user = invite.ruri.user_number or ""
            headers = dialog.answer_headers = (
                *[("Record-Route", rr) for rr in invite.headers.get_all("Record-Route")], *self._answer_fields,
                ("Contact", f"<sip:{user}@{self.domain};transport=tls;ob;"
                            f"X-FB-Sip-Smc-Tier=collaboration.sip_gateway.sip.prod>;isfocus"))
        body = sdp.encode() if sdp else b""
        return response_to(invite, status, reason, to_tag=dialog.local_tag, headers=headers, body=body,
                           content_type=SDP if sdp else None)

    # -- in-dialog requests from Meta ------------------------------------------------------------------
    def _in_dialog_request(self, dialog: Dialog, method: str, extra: list[tuple[str, str]] = ()) -> Request:
        dialog.local_cseq += 1        # BIC: from 0; UIC: after the INVITE's (RFC 3261 §12.2.1.1)
        remote = dialog.remote_uri + (f";tag={dialog.remote_tag}" if dialog.remote_tag else "")
        h = self._headers(dialog, method, dialog.local_cseq, to=remote,
                          routes=self._routes_toward_business(dialog), extra=extra)
        return Request(method, dialog.remote_target, h)

    def _headers(self, dialog: Dialog, method: str, cseq: int, *, to: str, routes: list[str] = (),
                 extra: list[tuple[str, str]] = (), via_params: str = "") -> Headers:
        """The headers of a request Meta's gateway sends in (or to create) a dialog."""
        h = Headers()
        h.add("Via", f"SIP/2.0/TLS {self.domain};branch={new_branch()}{via_params}")
        h.add("Max-Forwards", "70")
        for route in routes:
            h.add("Route", route)
        h.add("From", f"{dialog.local_uri};tag={dialog.local_tag}")
        h.add("To", to)
        h.add("Call-ID", dialog.sip_call_id)
        h.add("CSeq", f"{cseq} {method}")
        for name, value in extra:
            h.add(name, value)
        h.add("X-FB-External-Domain", self.domain)
        h.add("User-Agent", USER_AGENT)
        return h

    def _routes_toward_business(self, dialog: Dialog) -> list[str]:
        """The dialog's route set as seen past Meta's own proxies (RFC 3261 §12.1: the UAC reverses the
        Record-Route list; Meta's two entries are consumed by its proxies before the business sees it)."""
        routes = list(reversed(dialog.route_set)) if dialog.direction == USER_INITIATED else list(dialog.route_set)
        meta = {re.sub(r"\s+", "", rr) for rr in meta_record_routes(self.domain)}
        return [r for r in routes if re.sub(r"\s+", "", r) not in meta]

    async def _send_bye(self, call: Call, dialog: Dialog) -> None:
        dialog.bye_sent = True
        if dialog.retransmitter:
            dialog.retransmitter.cancel()
        duration = str(int(call.duration or 0))
        if call.end_reason and call.end_reason.startswith("media:"):
            reason = 'SIP;cause=408;text="RTP Timeout"'
        else:
            reason = 'Q.850;cause=16;text="NORMAL_CLEARING"'
        bye = self._in_dialog_request(dialog, "BYE", [
            ("Reason", reason), ("x-wa-meta-wacid", call.id), ("x-wa-meta-call-duration", duration)])
        await self._request(dialog, bye)
        self._forget(dialog)

    async def _request(self, dialog: Dialog, request: Request) -> Response | None:
        conn = dialog.conn
        if conn is None or not conn.is_open:
            try:
                conn = dialog.conn = await self._connect_for(dialog)
            except (TransportError, OSError) as exc:
                self._timeline(dialog.call_id, "sip_transport_error", reason=str(exc))
                return None
        self.trace(dialog.call_id, "out", request)
        txn = self.layer.send_request(request, conn)
        response = await txn.final()
        self.trace(dialog.call_id, "in", response)
        return response

    async def _connect_for(self, dialog: Dialog) -> Connection:
        """A new connection for a request in a dialog whose connection is gone (the business closed it,
        or wacall restarted), tried in this order:

        1. RFC 3261 §12.2.1.1 and §8.1.2: the next hop is the first entry of the route set (the business's
           own Record-Route entries), else the remote target (the business's Contact), if it is TLS
           (Meta speaks nothing else; ``transport=udp``/``tcp`` is skipped) and its certificate verifies
           for that host;
        2. the business's configured SIP server (hostname and port, certificate verified) that the dialog
           was set up with: the server Meta called (user-initiated) or whose domain the INVITE's From
           named (business-initiated).
        """
        hops: list[tuple[str, int]] = []
        routes = self._routes_toward_business(dialog)
        hop = _tls_hop(routes[0] if routes else dialog.remote_target)
        if hop is not None:
            hops.append(hop)
        server = dialog.server
        if server is None and (call := self.platform.call(dialog.call_id)) is not None:
            server = self._server_for(call)
        if server is not None:
            address = _server_address(server)
            hops.append((address["hostname"], address["port"]))
        problems: list[str] = []
        for host, port in dict.fromkeys(hops):
            try:
                return await self.transport.connect(host, port)
            except (TransportError, OSError) as exc:
                problems.append(f"{host}:{port}: {exc}")
        raise TransportError("; ".join(problems) or "no route to the business: no TLS hop and no SIP server")

    def _timeline(self, call_id: str, event: str, **data: Any) -> None:
        call = self._call(call_id)
        if call is not None:
            self.host.apply(lambda: self.platform.note(call, "sip", event=event, **data), defer=True)

    # -- user-initiated calls: Meta's INVITE to the business server ------------------------------------
    def _server_for(self, call: Call) -> dict | None:
        number = self.platform.numbers[call.phone_number_id]
        servers = calling_settings.sip_servers(number.calling)
        return servers[0] if servers else None

    async def _user_invite(self, call: Call, dialog: Dialog) -> None:
        number = self.platform.numbers[call.phone_number_id]
        server = self._server_for(call)
        if server is None:
            self.host.apply(lambda: self.platform.sip_call_failed(call, "no SIP server configured"))
            return
        dialog.server = _server_address(server)
        host, port = dialog.server["hostname"], dialog.server["port"]
        params = server.get("request_uri_user_params") or {}
        business = f"+{number.display_phone_number}"
        user_part = business + "".join(f";{k}={v}" for k, v in params.items())
        ruri = f"sip:{user_part}@{host}" + (f":{port}" if port != 5061 else "") + ";transport=tls"
        dialog.local_uri = f'"{call.wa_id}" <sip:+{call.wa_id}@{self.domain}>'
        dialog.remote_uri = f"<sip:{business}@{host}>"
        dialog.remote_target = ruri
        dialog.local_cseq = secrets.randbelow(5000) + 1
        extra = [("Record-Route", rr) for rr in meta_record_routes(self.domain)]
        extra += [("Contact", f"<sip:+{call.wa_id}@{self.domain};transport=tls;ob>;isfocus"),
                  ("Allow", ALLOW), ("x-wa-meta-wacid", call.id)]
        if call.cta_payload:
            extra.append(("x-wa-meta-cta-payload", call.cta_payload))
        if call.deeplink_payload:
            extra.append(("x-wa-meta-deeplink-payload", call.deeplink_payload))
        extra += self.platform.sip_user_headers(call)     # BSUID, parent BSUID, username (domain.sip)
        try:
            dialog.conn = await self.transport.connect(host, port)
        except (TransportError, OSError) as exc:
            self._timeline(call.id, "sip_transport_error", reason=f"cannot reach {host}:{port}: {exc}")
            self.host.apply(lambda: self.platform.sip_call_failed(call, f"SIP server {host}:{port} unreachable"))
            self._forget(dialog)
            return
        dialog.peer = dialog.conn.peer
        password = self.platform.sip_password(number, server)
        auth: tuple[str, str] | None = None
        for attempt in range(3):
            invite = self._uic_invite(dialog, ruri, extra, call.meta_sdp or "", auth)
            dialog.invite = invite
            self.trace(call.id, "out", invite)
            txn = dialog.client_txn = self.layer.send_request(invite, dialog.conn)
            txn.on_provisional = lambda response: self._uic_provisional(call, dialog, response)
            response = await txn.final()
            self.trace(call.id, "in", response)
            if response.status in (401, 407) and attempt < 2 and call.state != ENDED:
                header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
                try:
                    challenge = digest.parse_challenge(response.headers.get(header) or "")
                except (ValueError, SipParseError):
                    break
                creds = digest.answer(challenge, username=number.display_phone_number, password=password,
                                      method="INVITE", uri=f"sip:{business}@{host}")
                auth = ("Authorization" if response.status == 401 else "Proxy-Authorization", creds.header_value())
                continue
            await self._uic_final(call, dialog, response)
            return
        await self._uic_final(call, dialog, response)

    def _uic_invite(self, dialog: Dialog, ruri: str, extra: list[tuple[str, str]], sdp: str,
                    auth: tuple[str, str] | None) -> Request:
        dialog.local_cseq += 1
        h = self._headers(dialog, "INVITE", dialog.local_cseq, to=dialog.remote_uri, extra=extra, via_params=";alias")
        if auth:
            h.add(*auth)
        h.add("Content-Type", SDP)
        return Request("INVITE", ruri, h, sdp.encode())

    def _uic_provisional(self, call: Call, dialog: Dialog, response: Response) -> None:
        self.trace(call.id, "in", response)
        if response.status == 100 or call.state == ENDED:
            return
        dialog.remote_tag = response.to.tag or dialog.remote_tag
        sdp = response.body.decode("utf-8", "replace") if response.body else None
        problem = self.host.apply(lambda: self.platform.sip_business_ringing(call, sdp))
        if problem:
            self._timeline(call.id, "early_media_refused", reason=problem)

    async def _uic_final(self, call: Call, dialog: Dialog, response: Response) -> None:
        status = response.status
        if 200 <= status < 300:
            dialog.remote_tag = response.to.tag
            dialog.remote_target = _contact_uri(response) or dialog.remote_target
            dialog.route_set = response.headers.get_all("Record-Route")
            if not _keeps_meta_routes(dialog.route_set, self.domain):
                dialog.broken_route = True
                self._timeline(call.id, "record_route_rule_broken", reason=(
                    "the 200 OK does not end with Meta's Record-Route headers (sip:wa.meta.vc;lr, then "
                    "onevc-sip-proxy): Meta's ACK cannot reach the business server; the dialog dies after 64*T1"))
                await asyncio.sleep(64 * self.layer.t1)
                self.host.apply(lambda: self.platform.sip_call_failed(
                    call, "no ACK could be routed to the business (Record-Route rule broken); dialog timed out "
                          "after 64*T1"))
                self._forget(dialog)
                return
            self._send_ack(dialog, response)
            dialog.confirmed = True
            dialog.final_status = 200
            self._save(dialog)
            if call.state == ENDED:                     # the user hung up meanwhile
                await self._send_bye(call, dialog)
                return
            problem = self.host.apply(lambda: self.platform.sip_business_answers(
                call, response.body.decode("utf-8", "replace")))
            if problem:
                self._timeline(call.id, "answer_refused", reason=problem)
                self.host.apply(lambda: self.platform.sip_call_failed(call, f"unusable SDP in 200 OK: {problem}"))
                await self._send_bye(call, dialog)
            else:
                self.stats["established"] += 1
            return
        dialog.final_status = status
        if call.state != ENDED:
            if status == 488:
                self._timeline(call.id, "not_acceptable_here", hint=not_acceptable_hint(
                    self.platform.numbers[call.phone_number_id].calling))
            if status in (408, 503) and response.headers.get("Via") is None:
                self.host.apply(lambda: self.platform.sip_call_failed(
                    call, f"INVITE failed locally: {status} {response.reason}"))
            else:
                self.host.apply(lambda: self.platform.sip_business_declines(call, status, response.reason))
        self._forget(dialog)

    def _send_ack(self, dialog: Dialog, response: Response, conn: Connection | None = None) -> None:
        """ACK a 2xx on the dialog's connection, or on the one the 2xx came over (a new flow)."""
        if (dialog.conn is None or not dialog.conn.is_open) and conn is not None and conn.is_open:
            dialog.conn = conn
        if dialog.conn is None or not dialog.conn.is_open:
            return
        h = self._headers(dialog, "ACK", response.cseq[0], to=response.headers.get("To") or dialog.remote_uri,
                          routes=self._routes_toward_business(dialog))
        ack = Request("ACK", dialog.remote_target, h)
        self.trace(dialog.call_id, "out", ack)
        self.layer.send_ack(ack, dialog.conn)

    async def _uic_end(self, call: Call, dialog: Dialog) -> None:
        """The user (or the platform) ended a user-initiated SIP call: CANCEL before the answer, BYE after."""
        if call.ended_by == "business" or dialog.bye_sent:
            return
        if dialog.confirmed:
            await self._send_bye(call, dialog)
            return
        txn = dialog.client_txn
        if txn is not None and dialog.final_status is None:
            cancel_txn = await self.layer.cancel(txn)
            if cancel_txn is not None:
                self.trace(call.id, "out", cancel_txn.request)
                self.trace(call.id, "in", await cancel_txn.final())

    # -- lifecycle -------------------------------------------------------------------------------------
    def health(self) -> dict:
        """What ``/_wacall/health`` shows of the gateway: connections, dialogs, transactions, counters."""
        transport, stats = self.transport, self.transport.stats
        return {"connections": len(transport.connections), "dialogs": len(self.dialogs),
                "server_transactions": len(self.layer.server_transactions),
                "client_transactions": len(self.layer.client_transactions),
                "parse_errors": stats.parse_errors, "incoming_connections": transport.incoming,
                "connections_refused": stats.refused, "idle_closed": stats.idle_closed,
                "handshake_failures": stats.handshake_failures, **self.stats}

    def hosts(self, add: dict | None = None) -> dict:
        """The business SIP hostnames the gateway resolves (to loopback addresses), after adding ``add``
        (name -> address; OSError for an address that is not loopback)."""
        resolver = self.transport.resolver
        for name, address in (add or {}).items():
            resolver.add(str(name), str(address))
        return resolver.hosts

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.layer.close()
        await self.transport.close()


# -- helpers ---------------------------------------------------------------------------------------------
class _Stale(Exception):
    """The digest was right but its nonce expired."""


_tagless: dict[str, str] = {}         # a From/To text without its final ";tag=…" -> its rendering without tag


def _without_tag(value: str) -> str:
    """A From/To value without its tag: the dialog adds the tags itself. The rendering depends on the text
    before a final ``;tag=<tag>`` only, which a business repeats on each call (its From, the user's To): it is
    made once per such text and remembered. A text seen before is found without parsing it: its head remembered
    and after it a final ``;tag=`` with a token, or no tag anywhere."""
    head, tagged, tag = value.rpartition(";tag=")
    if tagged:
        if is_token(tag):                   # (what a tag parameter's value is)
            known = _tagless.get(head)
            if known is not None:
                return known
    elif "tag" not in value.lower():
        known = _tagless.get(value)
        if known is not None:
            return known
    return _without_tag_parsed(value)


def _without_tag_parsed(value: str) -> str:
    """:func:`_without_tag` from the parsed address (what fills its memo)."""
    try:
        addr = parse_name_addr(value)
    except SipParseError:
        return value
    tag = addr.params.get("tag")
    if tag is None:
        head = value if "tag" not in addr.params else None
    else:
        head = value[:-len(tag) - 5] if value.endswith(f";tag={tag}") else None
    if head is not None:
        known = _tagless.get(head)
        if known is not None:
            return known
    rendered = str(NameAddr(addr.display, addr.uri, {k: v for k, v in addr.params.items() if k != "tag"}))
    return rendered if head is None else remember(_tagless, head, head, rendered)


def _contact_uri(message: Request | Response) -> str | None:
    value = message.headers.get("Contact")
    if not value:
        return None
    try:
        return str(parse_name_addr(value).uri)
    except SipParseError:
        return None


def _server_address(server: dict) -> dict:
    """A configured business SIP server as a dialog keeps it: ``{"hostname", "port"}``, port 5061 unless set."""
    return {"hostname": str(server["hostname"]), "port": int(server.get("port") or 5061)}


def _tls_hop(value: str) -> tuple[str, int] | None:
    """(host, port) to open TLS to for a route entry (``<sip:…;lr>``) or a target URI, or None when it
    cannot be used: unparseable, or naming a transport other than TLS."""
    if not value:
        return None
    try:
        uri = parse_name_addr(value).uri if "<" in value else parse_uri(value)
    except SipParseError:
        return None
    transport = (uri.transport or "").lower()
    if transport not in ("", "tls") and uri.scheme.lower() != "sips":
        return None
    return uri.host.strip("[]"), int(uri.port or 5061)


def _same_uri(digest_uri: str, request_uri: str) -> bool:
    """Meta checks the digest ``uri`` against the Request-URI; compare parsed, so case and order of
    parameters do not matter but user, host and port do."""
    if digest_uri == request_uri:        # the usual case (the client copies the Request-URI): no parse
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_uri)
    except SipParseError:
        return digest_uri == request_uri
    return (a.scheme.lower(), a.user, a.host.lower(), a.port) == (b.scheme.lower(), b.user, b.host.lower(), b.port)


def _keeps_meta_routes(record_routes: list[str], domain: str) -> bool:
    """Meta's rule (§8.3): the 200 OK's Record-Route list must end with Meta's two entries, unchanged."""
    wanted = meta_record_routes(domain)
    normal = [re.sub(r"\s+", "", rr) for rr in record_routes]
    return len(normal) >= 2 and normal[-2:] == [re.sub(r"\s+", "", w) for w in wanted]


__all__ = ["SipGateway", "Dialog", "meta_record_routes"]
