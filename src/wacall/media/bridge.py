"""A browser in a virtual user's place (the console's phone): a second media leg, bridged to the call's.

The browser is one more WebRTC peer of Meta's relay: wacall allocates it a leg of its own (a
:class:`~wacall.media.relay.RelayEndpoint` on the same shared ports, with its own ICE credentials,
DTLS-SRTP keys and SSRC), offers it the SDP it offers a business (ICE-lite, DTLS-SRTP, Opus,
RFC 4733), and the browser answers. The two legs are then crossed at the users' phones
(``wacall.users.phone``): what the call's phone hears goes to the browser leg's microphone, and what
the browser leg hears (the browser's microphone) becomes the call's microphone. Both sides speak Opus,
so the payloads pass through untouched; each leg has its own SRTP context, sequence numbers,
timestamps and RTCP, exactly as Meta's relay stands between the user's phone and the business.

Bridged legs stay on the Python path (the compiled path carries neither): a call leg the compiled path
already carried is handed back to Python when the browser joins. Both legs live in the same media
engine (the same worker process, with ``media.workers``): the browser's leg is allocated beside the
call's. The browser's leg is not restored after a restart (the browser would have to connect again).

What the browser leg reports goes to the call's timeline under ``browser_*`` names; it never ends the
call nor persists anything: the call's own leg and the domain decide that.
"""

from __future__ import annotations

from typing import Any

from .relay import RelayEndpoint, Reporter
from ..users.phone import BrowserMicrophone

SUFFIX = "+browser"
#: the browser leg's own facts worth a line on the call's timeline, and the names they get there
NOTES = {"ice_connected": "browser_ice_connected", "ice_switched": "browser_ice_switched",
         "dtls_connected": "browser_dtls_connected", "dtls_failed": "browser_dtls_failed",
         "first_media_from_business": "browser_media_started", "junk_datagrams": "browser_junk_datagrams",
         "srtp_auth_failure": "browser_srtp_auth_failure", "wrong_payload_type": "browser_wrong_payload_type"}


def browser_leg_id(call_id: str) -> str:
    """The media engine's key for the browser leg of ``call_id``."""
    return call_id + SUFFIX


class BrowserReporter:
    """The browser leg's reporter: a few of its facts on the call's timeline, nothing else."""

    def __init__(self, reporter: Reporter, call_id: str) -> None:
        self.reporter, self.call_id = reporter, call_id

    def note(self, call_id: str, kind: str, **data: Any) -> None:
        name = NOTES.get(kind)
        if name is not None:
            self.reporter.note(self.call_id, name, **data)

    def ended(self, call_id: str, fact: str, reason: str) -> None:
        pass                          # the browser leg never ends the call (its phone never connects)

    def persist(self, call_id: str, state: dict) -> None:
        pass                          # not restored after a restart

    def now(self) -> float:
        return self.reporter.now()

    def timeouts(self) -> tuple[float, float]:
        return 0.0, 0.0


def join(call: RelayEndpoint, browser: RelayEndpoint) -> None:
    """Cross the two legs' phones: each one's earpiece feeds the other's microphone. The call's leg
    leaves the compiled path; if its user was already talking, the browser talks from the next tick."""
    if call.fast is not None:
        call.fast.release()
    call.partner, browser.partner = browser, call
    to_call, to_browser = BrowserMicrophone(), BrowserMicrophone()
    call.phone.let_browser_in(to_call, to_browser.put)
    browser.phone.let_browser_in(to_browser, to_call.put)


def part(browser: RelayEndpoint) -> None:
    """The browser leaves (before its leg closes): the user hears on and says nothing from now on."""
    call = browser.partner
    browser.partner = None
    browser.phone.let_browser_out()
    if call is not None:
        call.partner = None
        call.phone.let_browser_out()


__all__ = ["BrowserReporter", "browser_leg_id", "join", "part", "SUFFIX"]
