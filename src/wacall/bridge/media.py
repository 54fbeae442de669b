"""The bridge's media seam: what the call logic (:mod:`.app`) asks of whatever carries the audio between Meta's
WebRTC leg and the PBX's RTP leg, in SDP terms only. One implementation per ``[media] mode``:

* ``rtpengine`` (:class:`.rtpengine.RtpEngineMedia`): RtpEngine rewrites the SDPs and relays the packets, driven
  over its ng protocol, as Meta's integration example does.
* ``builtin`` (:class:`.builtin.BuiltinMedia`): the bridge terminates ICE/DTLS-SRTP itself and relays RTP/SDES
  toward the PBX.

A media call is named by ``call`` (the wacid for a user-initiated call; the PBX's SIP Call-ID for a
business-initiated one, whose wacid is not known when the media is set up) and the PBX leg by ``pbx_tag`` (the
PBX's dialog tag). Every method raises :class:`MediaError` when the media cannot be set up; ``delete`` never
raises (a call already gone has nothing to free).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class MediaError(Exception):
    """The media could not be set up (the relay refused or did not answer)."""


class NoCommonCodec(MediaError):
    """The PBX offered or answered no codec the WhatsApp leg can be given (SIP: 488 Not Acceptable Here)."""


class MediaPath(Protocol):
    async def start(self) -> str:
        """Open what the mode needs; a short description for the bridge's ready line."""

    def close(self) -> None: ...

    # user-initiated calls: Meta's offer (connect webhook) → INVITE to the PBX; the PBX's 200 → Graph accept
    async def offer_to_pbx(self, call: str, whatsapp_offer: str) -> str:
        """Meta's WebRTC offer → the SDP offer the INVITE carries to the PBX."""

    async def answer_to_whatsapp(self, call: str, pbx_answer: str, pbx_tag: str) -> str:
        """The PBX's answer (its 200 OK) → the WebRTC answer for Graph ``pre_accept``/``accept``."""

    # business-initiated calls: the PBX's INVITE → Graph connect; Meta's answer (connect webhook) → 200 to the PBX
    async def offer_to_whatsapp(self, call: str, pbx_offer: str, pbx_tag: str) -> str:
        """The PBX's offer → the WebRTC offer for Graph ``connect``."""

    async def answer_to_pbx(self, call: str, whatsapp_answer: str, pbx_tag: str) -> str:
        """Meta's WebRTC answer → the SDP answer of the 200 OK to the PBX."""

    async def delete(self, call: str) -> None:
        """Free the call's media (both legs)."""

    # optional attribute: ``on_failure``, set by the bridge to a callable ``(call, reason)`` that the mode calls once
    # when a call's media failed for good after its set-up returned (builtin: no nominated ICE pair toward
    # WhatsApp, DTLS handshake failure or timeout, ICE consent lost); the bridge then ends the call on both sides
    # (BYE to the PBX, Graph terminate). A mode without the attribute never reports failures.
    # optional (the bridge checks with getattr): media statistics, and a media call kept across a restart
    # async def stats(self, call: str) -> metrics.MediaStats | None: packet counts so far (None: unknown call)
    # def snapshot(self, call: str) -> dict | None: what restore() needs, JSON-able (None: cannot survive)
    # async def restore(self, call: str, saved: dict) -> bool: take the call back after a restart (the media
    #     kept flowing outside this process, as RtpEngine's does); False: the media is gone


@dataclass
class MediaStats:
    """RTP packets of one media call as the media path counted them (what a ``MediaPath.stats`` returns).
    ``from_*``: received from that leg; ``to_*``: sent to it; ``lost_from_*``: missing in what came from that
    leg (sequence-number gaps), None where the path cannot tell."""
    from_whatsapp: int = 0
    to_pbx: int = 0
    from_pbx: int = 0
    to_whatsapp: int = 0
    lost_from_whatsapp: int | None = None
    lost_from_pbx: int | None = None

    @property
    def loss_toward_pbx(self) -> float | None:
        """The share of the user's packets (sent or received) that did not reach the PBX."""
        sent = self.from_whatsapp + (self.lost_from_whatsapp or 0)
        return None if not sent else max(0.0, 1 - self.to_pbx / sent)

    @property
    def loss_toward_whatsapp(self) -> float | None:
        sent = self.from_pbx + (self.lost_from_pbx or 0)
        return None if not sent else max(0.0, 1 - self.to_whatsapp / sent)


__all__ = ["MediaError", "MediaPath", "MediaStats", "NoCommonCodec"]
