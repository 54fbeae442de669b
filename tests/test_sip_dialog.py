"""The gateway's Dialog (RFC 3261 §12): the order of its fields, which the business INVITE's handler relies on."""

from __future__ import annotations

import dataclasses
import inspect

from wacall.sip import gateway
from wacall.sip.gateway import Dialog


def test_dialog_field_order_and_the_business_invites_value_count() -> None:
    """``SipGateway._business_invite`` makes its Dialog positionally (a frame less per INVITE), its comments naming
    each value's field: a field added to or moved in Dialog must be placed there too. This pins the field order
    the call was written for, and that the call passes one value per field but the last (it does not see two
    values swapped within the call: their comments there say which is which)."""
    assert [f.name for f in dataclasses.fields(Dialog)] == [
        "call_id", "direction", "sip_call_id", "local_tag", "conn", "remote_tag", "local_uri", "remote_uri",
        "remote_target", "route_set", "local_cseq", "invite", "server_txn", "client_txn", "retransmitter",
        "sent_ringing", "final_status", "confirmed", "broken_route", "bye_sent", "remote_cseq", "server",
        "outgoing", "bye_ok", "peer", "answer_headers",
    ]
    source = inspect.getsource(gateway.SipGateway)
    call = source[source.index("dialog = Dialog(\n"):]
    call = call[:call.index("\n            self._register(dialog)")]
    values = "".join(line.split("#")[0] for line in call.splitlines()[1:])
    # the top-level commas of the call: one value per field but the last (answer_headers keeps its default)
    depth, commas = 0, 0
    for ch in values:
        depth += ch in "([{"
        depth -= ch in ")]}"
        commas += ch == "," and depth == 0
    assert commas + 1 == len(dataclasses.fields(Dialog)) - 1, values
