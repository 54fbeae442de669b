"""The one table from refusals, call ends and media facts to Meta's codes and SIP answers (domain/ends.py).

The values here are the wire: the SIP texts of calling-wire-spec §7.2 and the terminate webhook codes
Meta documents. The SIP and media end-to-end tests check the same answers on real peers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from wacall.domain.ends import (DAILY_LIMIT, DUPLICATE_CALL, MEDIA_UNAVAILABLE, NO_PERMISSION, PAYMENT,
                                SIP_DIALOG_FAILED, TABLE, MediaFact, failure_code, refusal_for,
                                refusal_for_cause, sip_final_for_ended)
from wacall.domain.errors import GraphError


@pytest.mark.parametrize("code, status, reason", [
    (138001, 403, NO_PERMISSION), (138006, 403, NO_PERMISSION), (131030, 403, NO_PERMISSION),
    (138012, 403, DAILY_LIMIT), (138003, 403, DUPLICATE_CALL), (131044, 403, PAYMENT),
    (138002, 503, "Service Unavailable"), (138004, 503, "Service Unavailable"), (2, 503, "Service Unavailable"),
    (1, 503, "Service Unavailable"),                                  # anything else: Meta's transient answer
])
def test_refusals(code: int, status: int, reason: str) -> None:
    refusal = refusal_for(GraphError(code))
    assert (refusal.status, refusal.reason, refusal.warning) == (status, reason, False)


@pytest.mark.parametrize("code", [138013, 138014, 138005, 138000])
def test_refusals_that_carry_the_graph_details(code: int) -> None:
    refusal = refusal_for(GraphError(code, "the exact words"))
    assert (refusal.status, refusal.reason) == (403, "the exact words")


def test_an_sdp_refusal_is_403_with_a_warning_on_one_line() -> None:
    refusal = refusal_for(GraphError(100, "SDP Validation error: SDP line 3 'x\r\ny': bad"))
    assert (refusal.status, refusal.reason, refusal.warning) == (403, "SDP Validation error: SDP line 3 'x  y': bad",
                                                                  True)
    assert refusal_for(GraphError(100, "Param to must be a valid phone number.")).status == 503


@pytest.mark.parametrize("fact, code", [
    (MediaFact.NO_SDES_KEY, 138020), (MediaFact.ICE_ROLE_CONFLICT, 138020), (MediaFact.DTLS_FAILED, 138020),
    (SIP_DIALOG_FAILED, 138020), (MediaFact.NO_ICE_CHECK, 138023), (MediaFact.NO_MEDIA, 138021),
    (MediaFact.SILENCE, 138021), (MediaFact.NOT_RESTORED, 138021), ("something new", 138020),
    ("rejected", 138020),                                             # an end reason is no failure cause
])
def test_failure_codes(fact: str, code: int) -> None:
    assert failure_code(fact) == code


def _ended(reason: str, code: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(end_reason=reason, errors=[{"code": code}] if code else [])


@pytest.mark.parametrize("call, answer", [
    (_ended("rejected"), (486, "User declined the call")),
    (_ended("not_answered"), (480, "Temporarily Unavailable")),
    (_ended("cancelled"), (487, "Request Terminated")),
    (_ended("media: no media", 138021), (408, "RTP Timeout")),
    (_ended("media: dtls", 138020), (503, "Service Unavailable")),
    (_ended("media: no ice", 138023), (503, "Service Unavailable")),
    (_ended("payment", 131044), (503, "Service Unavailable")),        # a refusal code is no reason to 403 an end
    (_ended("completed"), (503, "Service Unavailable")),
])
def test_final_answer_to_an_invite_whose_call_ended(call, answer) -> None:
    assert sip_final_for_ended(call) == answer


def test_the_table_is_consistent() -> None:
    causes = [row.cause for row in TABLE]
    assert len(causes) == len(set(causes))                            # one row per cause
    assert {row.kind for row in TABLE} == {"refusal", "end", "failure"}
    by_code: dict[int, set] = {}
    for row in TABLE:
        if row.kind == "failure":
            by_code.setdefault(row.code, set()).add((row.sip_status, row.sip_reason))
        assert (row.code is None) == (row.kind == "end")
    assert all(len(answers) == 1 for answers in by_code.values())     # one SIP answer per failure code
    facts = {value for name, value in vars(MediaFact).items() if name.isupper()}
    assert facts <= set(causes)                                       # every media fact has its code


def test_a_refusal_by_cause_reads_its_row() -> None:
    refusal = refusal_for_cause(MEDIA_UNAVAILABLE)
    assert (refusal.status, refusal.reason, refusal.warning) == (503, "Service Unavailable", False)
