"""Testing a WhatsApp Business Calling integration with wacall's pytest plugin.

    pip install ".[testing]"            # wacall, its pytest plugin, and aiortc for the media peer
    pytest examples/test_my_business.py # also with -n 2 (pytest-xdist), or --wacall-mode=inprocess

The fixtures come with the package (no conftest.py needed): ``wacall`` (a wacall on free ports, reset
before each test), ``wacall_receiver`` (your webhook endpoint: it checks Meta's signature and waits for
webhooks), ``wacall_users`` (the WhatsApp users), ``wacall_clock`` (virtual time) and ``wacall_business``
(a ready-made business media stack on aiortc).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

ALICE = "447700900001"            # one of the virtual users of wacall's default configuration


# -- the code under test: what your business runs against Meta, pointed at wacall ----------------------
class CallingError(Exception):
    def __init__(self, status: int, error: dict) -> None:
        self.status, self.code = status, error.get("code")
        super().__init__(f"HTTP {status}: {error}")


class Calls:
    """A small Graph calling API client (https://developers.facebook.com/docs/whatsapp/cloud-api/calling/)."""

    def __init__(self, base_url: str, token: str, phone_number_id: str) -> None:
        self.url = f"{base_url}/v23.0/{phone_number_id}/calls"
        self.token = token

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(self.url, data=json.dumps({"messaging_product": "whatsapp", **body}).encode(),
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise CallingError(exc.code, json.load(exc).get("error", {})) from None

    def answer(self, call_id: str, answer_sdp: str) -> None:
        """Meta's order for a user-initiated call: pre_accept with the answer SDP, then accept."""
        session = {"sdp_type": "answer", "sdp": answer_sdp}
        for action in ("pre_accept", "accept"):
            self._post({"call_id": call_id, "action": action, "session": session})

    def call(self, to: str, offer_sdp: str) -> str:
        answer = self._post({"to": to, "action": "connect", "session": {"sdp_type": "offer", "sdp": offer_sdp}})
        return answer["calls"][0]["id"]


@pytest.fixture
def calls(wacall) -> Calls:
    """Your client, configured the way production configures it, with wacall's URL and credentials."""
    return Calls(wacall.graph_url, wacall.access_token, wacall.phone_number_id)


# -- the tests -----------------------------------------------------------------------------------------
def test_a_user_call_is_answered_with_real_audio(wacall, wacall_users, wacall_receiver, wacall_business, calls):
    wacall_users.update_user(ALICE, audio="tone:440")          # what Alice's phone plays into the call
    call_id = wacall_users.user_calls(ALICE, wacall.phone_number_id)

    connect = wacall_receiver.wait_for("calls", event="connect")  # the signed webhook Meta would send
    assert connect["calls"][0]["id"] == call_id
    offer = connect["calls"][0]["session"]["sdp"]
    calls.answer(call_id, wacall_business.answer(offer))

    wacall_business.wait_connected()                            # ICE + DTLS-SRTP with wacall's relay
    wacall_business.wait_received(1.0)                          # a second of Alice's audio, decoded
    assert abs(wacall_business.dominant_frequency() - 440) < 5

    wacall_users.request("POST", f"calls/{call_id}/dtmf", {"digits": "12#"})   # Alice presses keys
    assert wacall_business.wait_digits(3) == ["1", "2", "#"]

    wacall_users.hangup(call_id)
    ended = wacall_receiver.wait_for("calls", id=call_id, event="terminate")
    assert ended["calls"][0]["status"] == "COMPLETED"


def test_an_unanswered_call_ends_after_the_ringing_timeout(wacall, wacall_users, wacall_receiver, wacall_clock):
    call_id = wacall_users.user_calls(ALICE, wacall.phone_number_id)
    wacall_receiver.wait_for("calls", id=call_id, event="connect")
    wacall_clock.advance("2m")                                 # no waiting: virtual time
    ended = wacall_receiver.wait_for("calls", id=call_id, event="terminate")
    assert ended["calls"][0]["status"] == "FAILED"


def test_calling_a_user_needs_their_permission(wacall, wacall_users, wacall_receiver, wacall_business, calls):
    with pytest.raises(CallingError) as refused:
        calls.call(ALICE, wacall_business.offer())
    assert refused.value.code == 138006                         # no call permission

    wacall_users.reply_permission(ALICE, wacall.phone_number_id, "accept", via="business_profile")
    call_id = calls.call(ALICE, wacall_business.offer())
    wacall_users.answer(call_id)                                # Alice picks up
    connect = wacall_receiver.wait_for("calls", id=call_id, event="connect")
    wacall_business.accept_answer(connect["calls"][0]["session"]["sdp"])
    wacall_business.wait_connected()
    assert wacall_receiver.wait_for("calls", id=call_id, status="ACCEPTED")
