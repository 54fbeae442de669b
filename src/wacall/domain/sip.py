"""Calls signalled over SIP (Meta's ``wa.meta.vc`` gateway), decided by the same rules as Graph calls.

The SIP gateway (``wacall.sip.gateway``) translates messages; everything it asks here is a domain
question: which number an INVITE's ``From`` names, which configured server its domain matches, which
password the digest must use, whether the app behind the server may call, and then the very same
rules the Graph path uses: ``place_business_call`` (Graph's ``business_connect`` once its body is read),
``business_accept``, ``business_terminate``. Refusals
come back as :class:`SipRefusal` with Meta's status and reason text (calling-wire-spec §7.2), chosen by
the one table in ``wacall.domain.ends``.
"""

from __future__ import annotations

from .calls import CallRules
from .ends import SIP_DIALOG_FAILED, UNKNOWN_NUMBER, SipRefusal, failure_code, refusal_for
from .errors import GraphError
from .identity import identity, is_bsuid, is_parent_bsuid
from .model import ENDED, PRE_ACCEPTED, RINGING, VOICEMAIL, Call, PhoneNumber
from .phone import ascii_digits
from .sdp import LocalMedia
from . import settings as calling_settings

MESSAGING = "whatsapp_business_messaging"
#: final responses that are the business rejecting a user's call (voicemail's REJECT trigger): Busy Here,
#: Busy Everywhere, Decline (RFC 3261 §21.4.24, §21.6.1, §21.6.2); other failures are not a rejection
SIP_REJECTS = frozenset({486, 600, 603})


def not_acceptable_hint(calling: dict) -> str:
    """What a business server's 488 Not Acceptable Here most likely means for the number's settings.

    Meta's FAQ names the DTLS case: the server "does not support WebRTC ICE"; the fix is SDES. A number
    already on SDES gets no ICE in Meta's offer, so there the offer's codecs or SRTP suite are the cause.
    """
    codecs = calling_settings.additional_codecs(calling)
    if calling_settings.srtp_protocol(calling) != "SDES":
        return ("488 usually means the business's SIP server does not support ICE (the number uses DTLS, so "
                "Meta's offer is WebRTC: ICE-lite, DTLS-SRTP): set srtp_key_exchange_protocol to SDES")
    offered = "Opus" + "".join(f", {c}" for c in codecs)
    hint = (f"the number already uses SDES (RTP/SAVP, a=crypto AES_CM_128_HMAC_SHA1_80, no ICE), so 488 means "
            f"the business's SIP server accepted none of the offered codecs ({offered}, telephone-event) or "
            f"not that SRTP suite")
    missing = [c for c in ("PCMU", "PCMA") if c not in codecs]
    if missing:
        hint += (f"; a server without Opus needs G.711 enabled in settings calling.audio.additional_codecs "
                 f"({', '.join(missing)})")
    return hint


class SipRules(CallRules):
    # -- who is calling (business-initiated INVITE) ---------------------------------------------------
    def sip_number(self, from_user: str) -> PhoneNumber:
        """The business number in the INVITE's From user part, or 400 (calling-wire-spec §7.2)."""
        digits = ascii_digits(from_user.split(";", 1)[0])     # (digits only after a ";" name no number either)
        number = self.number_by_address(digits) if digits else None
        if number is None:
            raise SipRefusal(400, UNKNOWN_NUMBER)
        return number

    def sip_server(self, number: PhoneNumber, from_domain: str) -> dict:
        """The configured server the From domain names: the hostname itself, or a configured sub-domain
        of it (``bar.foo.com`` configured, ``From: …@foo.com`` matches). Otherwise 403 with a Warning."""
        domain = from_domain.lower().rstrip(".")
        if calling_settings.sip_enabled(number.calling):
            # the stored servers read in place (sip_servers would deep-copy them all for every INVITE); the
            # one that matches is handed out as a copy
            for server in (number.calling.get("sip") or {}).get("servers", []):
                host = str(server.get("hostname", "")).lower().rstrip(".")
                if host == domain or host.endswith("." + domain):
                    return dict(server)
        raise SipRefusal(403, f"SIP server {from_domain} from INVITE does not match any SIP server configured "
                              f"for phone number id {number.id}", warning=True)

    def sip_password(self, number: PhoneNumber, server: dict) -> str:
        return number.sip_passwords.get(str(server.get("app_id")), "")

    def sip_check_app(self, number: PhoneNumber, server: dict):
        """The app that configured the server must hold messaging permission on the number."""
        app = self.apps.get(str(server.get("app_id")))
        if app is None or MESSAGING not in app.permissions or number.waba_id not in app.waba_ids:
            raise SipRefusal(403, f"The app {server.get('app_id')} configured for SIP server "
                                  f"{server.get('hostname')} is not authorized for phone number id {number.id}")
        return app

    def sip_business_invite(self, number: PhoneNumber, server: dict, to_user: str, sdp: str, *,
                            call_id: str, leg: LocalMedia) -> Call:
        """A business-initiated call placed by an authenticated INVITE: Graph's ``connect`` rules."""
        app = self.sip_check_app(number, server)
        # the Request-URI user is the user's number, or its BSUID / parent BSUID (Graph's `recipient`)
        user_id = to_user.lstrip("+")        # sip:+US.1349...@wa.meta.vc or sip:US.1349...@wa.meta.vc
        # (a BSUID and a parent BSUID have a dot after their country: a number, the usual user, has none)
        by_id = user_id[2:3] == "." and (is_bsuid(user_id) or is_parent_bsuid(user_id))
        try:         # Graph's connect rules, its body's checks but for the `to` and the SDP left out: none to read
            wa_id = self.bic_recipient(number, None, user_id) if by_id else self.bic_recipient(
                number, ascii_digits(to_user), None)
            media_options = self._media_options(number)
            offer = self._business_sdp(sdp, number, "offer", media_options)
            return self.place_business_call(app, number, wa_id, sdp, offer, media_options, call_id, leg,
                                            by_phone=not by_id)
        except GraphError as error:
            raise refusal_for(error) from None

    def sip_user_headers(self, call: Call) -> list[tuple[str, str]]:
        """Meta's user-identity headers on the INVITE of a user-initiated call (the BSUID page's SIP section;
        its samples spell them ``x-wa-meta-user-id``, ``x-wa_meta-parent-user-id`` (sic: wacall sends the
        hyphen), ``x-wa-meta-user-name`` and ``x-wa-meta-user-country-code``)."""
        number = self.numbers[call.phone_number_id]
        ident = identity(self, number, call.wa_id)
        headers = [("x-wa-meta-user-id", ident.user_id)]
        if ident.parent_user_id is not None:
            headers.append(("x-wa-meta-parent-user-id", ident.parent_user_id))
        if ident.username:
            headers.append(("x-wa-meta-user-name", ident.username))
        headers.append(("x-wa-meta-user-country-code", ident.user_id.split(".", 1)[0]))
        return headers

    # -- the business's answers on a user-initiated call -------------------------------------------------
    def sip_business_ringing(self, call: Call, sdp: str | None) -> str | None:
        """180/183 from the business server; an SDP in it works like Graph's ``pre_accept``.
        Returns the SDP problem, if any (the call goes on without early media)."""
        if not sdp or call.state != RINGING:
            return None
        try:
            self.business_pre_accept(call, self.numbers[call.phone_number_id],
                                     {"session": {"sdp_type": "answer", "sdp": sdp}})
        except GraphError as error:
            return error.details or error.details
        return None

    def sip_business_answers(self, call: Call, sdp: str) -> str | None:
        """200 OK from the business server: Graph's ``accept``. Returns why it cannot be used, if so."""
        number = self.numbers[call.phone_number_id]
        call.pre_accept_sdp = None          # SIP has no rule that the 200's SDP repeats the 183's
        try:
            self.business_accept(call, number, {"session": {"sdp_type": "answer", "sdp": sdp}})
        except GraphError as error:
            return error.details or error.details
        return None

    def sip_business_declines(self, call: Call, status: int, reason: str) -> None:
        if call.state in (RINGING, PRE_ACCEPTED):
            self.note(call, "sip", event="declined", status=status, reason=reason)
            if status in SIP_REJECTS and self._to_voicemail(call, self.numbers[call.phone_number_id], "REJECT"):
                return
            self._end(call, status="COMPLETED", reason="rejected", by="business")

    def sip_business_hangs_up(self, call: Call) -> None:
        if call.state != ENDED:
            self.business_terminate(call, self.numbers[call.phone_number_id], {})

    def sip_dialog_state(self, call: Call, state: dict) -> None:
        """The gateway's dialog for this call (tags, route set, CSeqs, targets), kept with the call record
        so that a restarted gateway can rebuild the dialog and either side's BYE still ends the call."""
        call.sip = state
        self.put(call)

    def sip_call_failed(self, call: Call, reason: str) -> None:
        """The SIP dialog itself failed (no ACK, unreachable server, bad SDP in a 200 OK)."""
        code = failure_code(SIP_DIALOG_FAILED)
        if call.state == VOICEMAIL:          # the business's late answer failed; the voicemail goes on
            self.note(call, "sip", event="dialog_failed", reason=reason)
            return
        if call.state != ENDED:
            self.note(call, "sip", event="dialog_failed", reason=reason)
            self._end(call, status="FAILED", reason=f"sip: {reason}", by="platform",
                      errors=[GraphError(code, reason).as_webhook_error()])
