"""Robustness of the wire surface: bad JSON, wrong types, oversized bodies, missing or foreign tokens,
another WABA's objects, unknown ids, paths, methods and versions.

Every refusal on the Graph API must be Meta's error envelope (calling-wire-spec.md §1.2)::

    {"error": {"message": "(#<code>) ...", "type": "...", "code": <int>, "fbtrace_id": "..."}}

with an HTTP status in 400..499, and nothing a client sends may produce a 5xx. The control API
refuses with ``{"error": {"reason", "detail"}}`` and never answers 500 either. Example-based tests pin
the individual cases; hypothesis then throws arbitrary JSON, arbitrary bytes, arbitrary paths and
mutated valid bodies at every endpoint. The module ends by checking the server is still healthy and
logged no traceback.

The server is a ``wacall serve`` subprocess on ``tests/data/two_wabas.toml``: WABA A and WABA B, one
calling-enabled number each, and one app per WABA that can see only its own WABA.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from support.harness import VERSION, Wacall
from support.sdp_samples import business_answer, business_offer

CONFIG = Path(__file__).parent / "data" / "two_wabas.toml"

A = {"waba": "201000000000001", "number": "301000000000001",
     "app": "401000000000001", "token": "EAAwacallALPHA0000token", "secret": "alpha-app-secret-0123456789abcdef"}
B = {"waba": "202000000000002", "number": "302000000000002", "app": "402000000000002",
     "token": "EAAwacallBETA0000token", "secret": "beta-app-secret-fedcba9876543210"}
ALICE, BRUNO, CHITRA, DAVE = "447700900011", "5511987650012", "919876500013", "14155550014"
USERS = [ALICE, BRUNO, CHITRA, DAVE]
UNSUPPORTED = re.compile(r"^\(#100\) Unsupported [a-z]+ request\. "
                         r"Object with ID '[^']*' does not exist")

# Examples per property test: 13 property tests x 100 examples x 1-6 requests keeps the module well
# under 40 s on loopback. WACALL_FUZZ_EXAMPLES=2000 digs deeper (minutes).
FUZZ = settings(max_examples=int(os.environ.get("WACALL_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


# -- the server -------------------------------------------------------------------------------------
class Server(Wacall):
    """The harness process, with stderr drained in the background (an undrained pipe would block the
    server once it logs 64 KiB) and kept so the module can check nothing was logged as a traceback."""

    def start(self) -> "Server":
        super().start()
        self.stderr_lines: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        return self

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def stderr_text(self) -> str:
        return "".join(self.stderr_lines)

    def send(self, method: str, path: str, *, token: str | None = None, body: Any = ...,
             content: bytes | None = None, ctype: str | None = None, params: dict | None = None,
             headers: dict | None = None, version: str = VERSION) -> httpx.Response:
        """A Graph request. ``body`` is JSON-encoded by json.dumps (NaN/Infinity allowed, lone
        surrogates escaped), ``content`` is sent raw."""
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not ...:
            content = json.dumps(body).encode()
            ctype = ctype or "application/json"
        if ctype:
            hdrs["Content-Type"] = ctype
        prefix = f"/{version}" if version else ""
        return self.http.request(method, f"{self.url}{prefix}/{path.lstrip('/')}", content=content,
                                 params=params, headers=hdrs)

    def control(self, method: str, path: str, *, body: Any = ..., content: bytes | None = None,
                ctype: str | None = "application/json") -> httpx.Response:
        hdrs = {"Content-Type": ctype} if ctype else {}
        if body is not ...:
            content = json.dumps(body).encode()
        return self.http.request(method, f"{self.url}/_wacall/{path.lstrip('/')}", content=content, headers=hdrs)

    def reset(self) -> None:
        response = self.ctl("POST", "reset")
        assert response.status_code == 200, response.text

    def incoming_call(self, wa_id: str = ALICE, number: str = A["number"]) -> str:
        response = self.ctl("POST", f"users/{wa_id}/calls", {"to": number, "entry_point": "call_button"})
        assert response.status_code == 201, response.text
        return response.json()["call_id"]

    def open_window(self, wa_id: str = ALICE, number: str = A["number"]) -> None:
        response = self.ctl("POST", f"users/{wa_id}/messages", {"to": number, "text": "hi"})
        assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def srv():
    server = Server(config=str(CONFIG)).start()
    assert server.pnid == A["number"] and server.token == A["token"], server.info
    yield server
    server.close()


def reset(server: Server) -> Server:
    server.reset()
    return server


@pytest.fixture
def fresh(srv):
    """The module's server, back at its configured start (property tests reset per example instead)."""
    return reset(srv)


# -- what every answer must look like ---------------------------------------------------------------
def assert_envelope(response: httpx.Response, code: int | None = None, *, subcode: int | None = None,
                    status: int | tuple[int, ...] | None = None) -> dict:
    """Meta's Graph error envelope with a 4xx status; returns the ``error`` object."""
    where = f"{response.request.method} {response.request.url} -> {response.status_code} {response.text[:400]!r}"
    assert 400 <= response.status_code <= 499, where
    if status is not None:
        assert response.status_code in ((status,) if isinstance(status, int) else status), where
    assert response.headers.get("content-type", "").startswith("application/json"), where
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"not JSON: {where}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, where
    error = body["error"]
    assert isinstance(error, dict), where
    assert isinstance(error.get("message"), str) and error["message"].startswith("(#"), where
    assert isinstance(error.get("type"), str) and error["type"], where
    assert type(error.get("code")) is int, where
    assert error["message"].startswith(f"(#{error['code']})"), where
    assert isinstance(error.get("fbtrace_id"), str) and error["fbtrace_id"], where
    if "error_subcode" in error:
        assert type(error["error_subcode"]) is int, where
    if code is not None:
        assert error["code"] == code, where
    if subcode is not None:
        assert error.get("error_subcode") == subcode, where
    return error


def assert_graph_sane(response: httpx.Response) -> None:
    """What any Graph answer must be: never 5xx; a 4xx is the envelope; a 2xx is a JSON object."""
    where = f"{response.request.method} {response.request.url} -> {response.status_code} {response.text[:400]!r}"
    assert response.status_code < 500, where
    if response.request.method == "HEAD":
        return
    if 400 <= response.status_code <= 499:
        assert_envelope(response)
    else:
        assert 200 <= response.status_code <= 299, where
        assert response.headers.get("content-type", "").startswith("application/json"), where
        assert isinstance(response.json(), dict), where


def assert_control_sane(response: httpx.Response) -> None:
    """The control API: never 500, always JSON; refusals are {"error": {"reason", "detail"}}."""
    where = f"{response.request.method} {response.request.url} -> {response.status_code} {response.text[:400]!r}"
    assert response.status_code != 500, where
    assert response.status_code < 600, where
    assert response.headers.get("content-type", "").startswith("application/json"), where
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"not JSON: {where}") from None
    if response.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), where
        assert isinstance(body["error"].get("reason"), str), where
        assert isinstance(body["error"].get("detail"), str), where
        if response.status_code >= 500:   # only the documented "couldn't place call" (busy number) is 5xx
            assert body["error"]["reason"] == "cannot_place_call", where


# -- valid bodies the mutations start from ----------------------------------------------------------
def connect_body(to: str = ALICE) -> dict:
    return {"messaging_product": "whatsapp", "to": to, "action": "connect", "biz_opaque_callback_data": "ok",
            "session": {"sdp_type": "offer", "sdp": business_offer()}}


def answer_body(call_id: str, action: str = "accept") -> dict:
    return {"messaging_product": "whatsapp", "call_id": call_id, "action": action,
            "biz_opaque_callback_data": "ok", "session": {"sdp_type": "answer", "sdp": business_answer()}}


def text_body(to: str = ALICE) -> dict:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
            "text": {"body": "hello", "preview_url": False}, "biz_opaque_callback_data": "m1"}


def permission_request_body(to: str = ALICE) -> dict:
    return {"messaging_product": "whatsapp", "to": to, "type": "interactive",
            "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"},
                            "body": {"text": "May we call you?"}}}


def voice_call_body(to: str = ALICE) -> dict:
    return {"messaging_product": "whatsapp", "to": to, "type": "interactive",
            "interactive": {"type": "voice_call", "body": {"text": "Call us"},
                            "action": {"name": "voice_call", "parameters": {
                                "display_text": "Call now", "ttl_minutes": 1440, "payload": "p"}}}}


def template_message_body(name: str = "call_me", to: str = ALICE) -> dict:
    return {"messaging_product": "whatsapp", "to": to, "type": "template",
            "template": {"name": name, "language": {"code": "en_US"}, "components": []}}


def settings_body() -> dict:
    return {"calling": {
        "status": "ENABLED", "call_icon_visibility": "DEFAULT", "callback_permission_status": "ENABLED",
        "call_icons": {"restrict_to_user_countries": ["GB", "BR"]},
        "call_hours": {"status": "ENABLED", "timezone_id": "Europe/London",
                       "weekly_operating_hours": [{"day_of_week": "MONDAY", "open_time": "0900",
                                                   "close_time": "1700"},
                                                  {"day_of_week": "TUESDAY", "open_time": "0900",
                                                   "close_time": "1700"}],
                       "holiday_schedule": [{"date": "2099-12-25", "start_time": "0000", "end_time": "2359"}]},
        "sip": {"status": "DISABLED", "servers": [{"hostname": "sip.example.com", "port": 5061,
                                                   "request_uri_user_params": {"tgrp": "wacall"}}]},
        "srtp_key_exchange_protocol": "DTLS",
        "audio": {"additional_codecs": ["PCMA"]},
    }}


def template_body(name: str = "call_me") -> dict:
    return {"name": name, "language": "en_US", "category": "MARKETING", "components": [
        {"type": "BODY", "text": "Call us"},
        {"type": "BUTTONS", "buttons": [{"type": "VOICE_CALL", "text": "Call now", "ttl_minutes": 1440}]}]}


REFUSED_URL = "http://127.0.0.1:9/webhook"   # the discard port: nothing listens, verification fails fast


def subscription_body() -> dict:
    return {"object": "whatsapp_business_account", "callback_url": REFUSED_URL, "verify_token": "v",
            "fields": "calls,messages"}


# -- strategies --------------------------------------------------------------------------------------
SPECIAL_STRINGS = ["", " ", "null", "true", "0", "-1", "1e309", "NaN", "ENABLED", "DISABLED", "connect", "accept",
                   "whatsapp", "offer", "answer", ALICE, A["number"], B["number"], A["waba"], B["waba"],
                   A["app"], B["app"], "\x00", "\ud800", "\udfff", "é", "💬", "a" * 600, "9" * 5000,
                   "../..", "%", "%00", "{}", "[]", "v=0\r\n", REFUSED_URL, "ftp://x", "http://", "2400",
                   "25:61", "MONDAY", "Europe/London", "Not/AZone", "2000-01-01", "2099-02-30"]
texts = st.one_of(st.text(max_size=24), st.text(st.characters(exclude_categories=()), max_size=8),
                  st.sampled_from(SPECIAL_STRINGS))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(), texts)
json_values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                        st.dictionaries(texts, children, max_size=4)),
    max_leaves=12)
KNOWN_KEYS = ["messaging_product", "to", "recipient", "action", "call_id", "session", "sdp", "sdp_type",
              "biz_opaque_callback_data", "type", "text", "body", "interactive", "template", "name", "language",
              "code", "parameters", "calling", "status", "call_icon_visibility", "callback_permission_status",
              "call_icons", "restrict_to_user_countries", "call_hours", "timezone_id", "weekly_operating_hours",
              "holiday_schedule", "day_of_week", "open_time", "close_time", "date", "start_time", "end_time",
              "sip", "servers", "hostname", "port", "request_uri_user_params", "srtp_key_exchange_protocol",
              "audio", "additional_codecs", "voicemail", "triggers", "category", "components", "buttons",
              "ttl_minutes", "display_text", "payload", "object", "callback_url", "verify_token", "fields",
              "access_token", "user_wa_id", "include_sip_credentials", "webhook_configuration",
              "override_callback_uri", "seconds", "wa_id", "entry_point", "response", "permanent", "via",
              "phone_number_id", "connect_error", "concurrent_calls", "incoming", "answer_after"]
keys = st.one_of(st.sampled_from(KNOWN_KEYS), texts)


@st.composite
def mutated(draw, value: Any, depth: int = 0) -> Any:
    """``value`` with some keys dropped, some values swapped for other JSON types, some keys added."""
    roll = draw(st.integers(0, 19))
    if roll == 0:
        return draw(json_values)                          # replace this node outright
    if isinstance(value, dict):
        out: dict = {}
        for key, item in value.items():
            choice = draw(st.integers(0, 9))
            if choice == 0:
                continue                                  # drop the key
            out[key] = draw(mutated(item, depth + 1)) if choice > 2 else draw(json_values)
        for _ in range(draw(st.integers(0, 1 if depth else 2))):
            out[draw(keys)] = draw(json_values)           # insert a key
        return out
    if isinstance(value, list):
        out_list = [draw(mutated(item, depth + 1)) for item in value if draw(st.integers(0, 9))]
        if draw(st.integers(0, 4)) == 0:
            out_list.insert(draw(st.integers(0, len(out_list))), draw(json_values))
        return out_list
    if roll < 4:
        return draw(scalars)                              # a leaf of another (or the same) type
    return value


NUMBER_ENDPOINTS = [("POST", "calls"), ("POST", "messages"), ("GET", "settings"), ("POST", "settings"),
                    ("GET", "call_permissions"), ("GET", ""), ("POST", "")]
WABA_ENDPOINTS = [("GET", ""), ("GET", "message_templates"), ("POST", "message_templates"),
                  ("GET", "subscribed_apps"), ("POST", "subscribed_apps"), ("DELETE", "subscribed_apps"),
                  ("GET", "phone_numbers")]
APP_ENDPOINTS = [("GET", "subscriptions"), ("POST", "subscriptions"), ("DELETE", "subscriptions")]
ALL_ENDPOINTS = ([(m, A["number"], e) for m, e in NUMBER_ENDPOINTS] + [(m, A["waba"], e) for m, e in WABA_ENDPOINTS]
                 + [(m, A["app"], e) for m, e in APP_ENDPOINTS])
BODY_ENDPOINTS = [("POST", A["number"], "calls"), ("POST", A["number"], "messages"),
                  ("POST", A["number"], "settings"), ("POST", A["waba"], "message_templates")]


def path_of(object_id: str, edge: str) -> str:
    return f"{object_id}/{edge}" if edge else object_id


WRONG_TYPES = [None, True, False, 0, 7, -1, 1.5, float("nan"), "", "x", [], ["x"], [1, 2], {}, {"k": "v"}]


def wrong_for(valid: Any) -> list:
    """The values from WRONG_TYPES whose JSON type differs from ``valid``'s (None excluded: it reads as
    "omitted" for optional fields, which the required-field tests cover)."""
    def kind(v: Any) -> str:
        return "bool" if isinstance(v, bool) else "num" if isinstance(v, (int, float)) else type(v).__name__
    return [v for v in WRONG_TYPES if v is not None and kind(v) != kind(valid)]


def ids(values: list) -> list[str]:
    return [json.dumps(v)[:20] for v in values]


# =====================================================================================================
# Example-based: bodies
# =====================================================================================================
@pytest.mark.parametrize("method,object_id,edge", BODY_ENDPOINTS)
@pytest.mark.parametrize("raw", [b'{"messaging_product": "whatsapp",', b"{'single': 'quotes'}", b"nul",
                                 b"\xff\xfe\x00{", b"{}garbage", b'{"a": 1}{"b": 2}', b"[" * 100_000 + b"]" * 100_000,
                                 b'{"to": ' + b"9" * 5000 + b"}", b"\x00"],
                         ids=["truncated", "single-quotes", "nul", "not-utf8", "trailing", "two-docs",
                              "nested-100k-deep", "5000-digit-int", "nul-byte"])
def test_bad_json_body_is_code_100(fresh, method, object_id, edge, raw):
    response = fresh.send(method, path_of(object_id, edge), token=A["token"], content=raw,
                          ctype="application/json")
    error = assert_envelope(response, 100, status=400)
    assert error["type"] == "OAuthException"


@pytest.mark.parametrize("method,object_id,edge", BODY_ENDPOINTS)
@pytest.mark.parametrize("body", [[], [connect_body()], "calls", 42, 1.5, True, None],
                         ids=["empty-array", "array-of-object", "string", "int", "float", "true", "null"])
def test_non_object_json_body_is_code_100(fresh, method, object_id, edge, body):
    assert_envelope(fresh.send(method, path_of(object_id, edge), token=A["token"], body=body), 100, status=400)


@pytest.mark.parametrize("method,object_id,edge", ALL_ENDPOINTS)
@pytest.mark.parametrize("body", [[1, "a"], "text", -3, None, {"\ud800": "\udfff"}, {"access_token": ["x"]}],
                         ids=["array", "string", "int", "null", "surrogates", "token-list"])
def test_odd_bodies_on_every_endpoint_never_5xx(fresh, method, object_id, edge, body):
    assert_graph_sane(fresh.send(method, path_of(object_id, edge), token=A["token"], body=body))


def test_empty_body_where_one_is_required(fresh):
    for method, object_id, edge in BODY_ENDPOINTS:
        assert_envelope(fresh.send(method, path_of(object_id, edge), token=A["token"], content=b"",
                                   ctype="application/json"), 100, status=400)
        assert_envelope(fresh.send(method, path_of(object_id, edge), token=A["token"]), 100, status=400)


def test_nan_and_infinity_literals_are_refused_or_harmless(fresh):
    raw = b'{"messaging_product": "whatsapp", "to": NaN, "action": "connect", "session": Infinity}'
    assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], content=raw,
                               ctype="application/json"), 100)
    raw = b'{"calling": {"status": NaN}}'
    assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"], content=raw,
                               ctype="application/json"), 100)


# -- /calls: wrong types for every field ---------------------------------------------------------------
CONNECT_FIELDS = {"to": ALICE, "action": "connect", "biz_opaque_callback_data": "ok",
                  "messaging_product": "whatsapp"}


@pytest.mark.parametrize("field", ["to", "action", "biz_opaque_callback_data", "messaging_product"])
def test_calls_connect_wrong_types(fresh, field):
    for value in wrong_for(CONNECT_FIELDS[field]):
        if field == "to" and isinstance(value, int) and not isinstance(value, bool):
            continue   # a number as an int is a phone number Graph accepts
        body = {**connect_body(), field: value}
        assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)


@pytest.mark.parametrize("value", wrong_for({}), ids=ids(wrong_for({})))
def test_calls_session_wrong_type(fresh, value):
    body = {**connect_body(), "session": value}
    assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)


@pytest.mark.parametrize("key", ["sdp", "sdp_type"])
def test_calls_session_members_wrong_type_or_missing(fresh, key):
    for value in [None, *wrong_for("s"), "", "bogus"]:
        session = {"sdp_type": "offer", "sdp": business_offer(), key: value}
        if value is None:
            del session[key]
        body = {**connect_body(), "session": session}
        assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)


def test_calls_session_unknown_key_and_legacy_type_key(fresh):
    body = {**connect_body(), "session": {"type": "offer", "sdp": business_offer()}}
    error = assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)
    assert "Unexpected key 'type' on param 'session'" in json.dumps(error)


@pytest.mark.parametrize("action", ["accept", "pre_accept", "reject", "terminate"])
def test_calls_call_id_wrong_types(fresh, action):
    call_id = fresh.incoming_call()
    for value in [None, *wrong_for("s")]:
        body = answer_body(call_id, action)
        if value is None:
            del body["call_id"]
        else:
            body["call_id"] = value
        assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)
    assert fresh.call(call_id)["state"] == "RINGING"       # nothing above touched the call


@pytest.mark.parametrize("field", ["session", "biz_opaque_callback_data", "action", "messaging_product"])
def test_calls_accept_wrong_types_leave_the_call_ringing(fresh, field):
    call_id = fresh.incoming_call()
    valid = answer_body(call_id)[field]
    for value in wrong_for(valid):
        body = {**answer_body(call_id), field: value}
        assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)
    for value in wrong_for("s"):
        body = answer_body(call_id)
        body["session"] = {**body["session"], "sdp": value}
        assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)
    assert fresh.call(call_id)["state"] == "RINGING"


@pytest.mark.parametrize("action", ["accept", "pre_accept", "reject", "terminate"])
@pytest.mark.parametrize("call_id", ["wacid.unknown", "x" * 2000, "\u00e9\U0001f4ac", " ", "null"])
def test_unknown_call_ids(fresh, action, call_id):
    fresh.incoming_call()
    error = assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"],
                                       body=answer_body(call_id, action)), 100, status=400)
    assert "call_id" in json.dumps(error)


@pytest.mark.parametrize("action", ["accept", "pre_accept", "reject", "terminate"])
def test_another_numbers_call_id_is_unknown(fresh, action):
    theirs = fresh.incoming_call(BRUNO, B["number"])
    assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"],
                               body=answer_body(theirs, action)), 100, status=400)
    # B's own app cannot reach it through A's number either
    assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=B["token"],
                               body=answer_body(theirs, action)), 100, subcode=33)
    assert fresh.call(theirs)["state"] == "RINGING"


def test_calls_unknown_action_and_case(fresh):
    for action in ["CONNECT", "ANSWER", "hangup", "", " accept"]:
        body = {**connect_body(), "action": action}
        assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body), 100)


# -- /messages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["messaging_product", "to", "type", "text"])
def test_messages_wrong_types(fresh, field):
    fresh.open_window()
    ok = fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=text_body())
    assert ok.status_code == 200, ok.text
    for value in wrong_for(text_body()[field]):
        if field == "to" and isinstance(value, int) and not isinstance(value, bool):
            continue
        body = {**text_body(), field: value}
        assert_envelope(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=body), 100)


def test_messages_text_body_wrong_types(fresh):
    fresh.open_window()
    for value in [None, *wrong_for("s")]:
        body = text_body()
        body["text"] = {"body": value}
        assert_envelope(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=body), 100)


@pytest.mark.parametrize("path", [("interactive",), ("interactive", "type"), ("interactive", "action"),
                                  ("interactive", "action", "name"), ("interactive", "body"),
                                  ("interactive", "body", "text")])
def test_messages_permission_request_wrong_types(fresh, path):
    fresh.open_window()
    base = permission_request_body()
    node = base
    for key in path[:-1]:
        node = node[key]
    for value in wrong_for(node[path[-1]]):
        body = permission_request_body()
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert_envelope(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=body))


def test_messages_voice_call_and_template_wrong_types(fresh):
    fresh.open_window()
    for value in wrong_for({}):
        body = voice_call_body()
        body["interactive"]["action"]["parameters"] = value
        assert_envelope(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=body))
    for key, valid in [("display_text", "Call now"), ("ttl_minutes", 1440), ("payload", "p")]:
        for value in wrong_for(valid):
            body = voice_call_body()
            body["interactive"]["action"]["parameters"][key] = value
            assert_envelope(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=body))
    for value in wrong_for({}):
        body = template_message_body()
        body["template"]["language"] = value
        assert_envelope(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=body), 100)


# -- /settings ---------------------------------------------------------------------------------------
def test_settings_full_valid_body_is_accepted(fresh):
    response = fresh.send("POST", f"{A['number']}/settings", token=A["token"], body=settings_body())
    assert response.status_code == 200, response.text


SETTINGS_LEAVES = [("status",), ("call_icon_visibility",), ("callback_permission_status",), ("call_icons",),
                   ("call_icons", "restrict_to_user_countries"), ("call_hours",), ("call_hours", "status"),
                   ("call_hours", "timezone_id"), ("call_hours", "weekly_operating_hours"),
                   ("call_hours", "holiday_schedule"), ("sip",), ("sip", "status"), ("sip", "servers"),
                   ("srtp_key_exchange_protocol",), ("audio",), ("audio", "additional_codecs")]


@pytest.mark.parametrize("path", SETTINGS_LEAVES, ids=[".".join(p) for p in SETTINGS_LEAVES])
def test_settings_wrong_types(fresh, path):
    for value in wrong_for(_dig(settings_body()["calling"], path)):
        body = settings_body()
        _put(body["calling"], path, value)
        assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"], body=body), 100)


@pytest.mark.parametrize("key,valid", [("day_of_week", "MONDAY"), ("open_time", "0900"), ("close_time", "1700")])
def test_settings_call_hours_slot_wrong_types(fresh, key, valid):
    for value in wrong_for(valid):
        if isinstance(value, int) and not isinstance(value, bool) and key != "day_of_week" and value >= 0:
            continue   # integer times (400, 1130) are accepted
        body = settings_body()
        body["calling"]["call_hours"]["weekly_operating_hours"][0][key] = value
        assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"], body=body), 100)


@pytest.mark.parametrize("key", ["hostname", "port", "request_uri_user_params"])
def test_settings_sip_server_wrong_types(fresh, key):
    valid = settings_body()["calling"]["sip"]["servers"][0][key]
    for value in wrong_for(valid):
        if key == "port" and isinstance(value, str):
            continue   # digit strings are accepted for port; "x" and "" are covered below
        body = settings_body()
        body["calling"]["sip"]["servers"][0][key] = value
        assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"], body=body), 100)
    if key == "port":
        for value in ["x", "", "0", "65536", "-1", True, 1.5]:
            body = settings_body()
            body["calling"]["sip"]["servers"][0]["port"] = value
            assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"], body=body), 100)


def test_settings_calling_itself_wrong_types(fresh):
    for value in wrong_for({}):
        assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"],
                                   body={"calling": value}), 100)
    assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"], body={}), 100)
    assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"], body={"bogus": 1}), 100)


def _dig(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _put(obj: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


# -- /call_permissions -------------------------------------------------------------------------------
def test_call_permissions_bad_user_wa_id(fresh):
    def get(**kw):   # one request per (virtual) second: the endpoint is rate limited per app and number
        fresh.advance(1.1)
        return fresh.send("GET", f"{A['number']}/call_permissions", token=A["token"], **kw)

    ok = fresh.send("GET", f"{A['number']}/call_permissions", token=A["token"], params={"user_wa_id": ALICE})
    assert ok.status_code == 200 and ok.json()["permission"]["status"] == "no_permission", ok.text
    for params in [None, {"user_wa_id": ""}, {"user_wa_id": "abc"}, {"user_wa_id": "+-()"},
                   {"recipient": "US.123"}]:
        assert_envelope(get(params=params), 100)
    # a JSON body on GET is read like the query string: wrong types there are refused too
    for value in [None, True, False, {}, {"a": 1}, [], [ALICE], 1.5, ""]:
        assert_envelope(get(body={"user_wa_id": value}), 100)


# =====================================================================================================
# Example-based: size, form bodies, query strings
# =====================================================================================================
@pytest.mark.parametrize("method,object_id,edge", BODY_ENDPOINTS + [("POST", A["app"], "subscriptions")])
def test_body_over_one_mebibyte(fresh, method, object_id, edge):
    big = json.dumps({**connect_body(), "biz_opaque_callback_data": "x" * (1024 * 1024 + 10)}).encode()
    response = fresh.send(method, path_of(object_id, edge), token=A["token"], content=big,
                          ctype="application/json")
    assert_envelope(response, 100, status=(400, 413))
    response = fresh.send(method, path_of(object_id, edge), token=A["token"], content=b"\x00" * (2 * 1024 * 1024),
                          ctype="application/octet-stream")
    assert_envelope(response, status=(400, 413))


def test_chunked_body_over_one_mebibyte(fresh):
    def chunks():
        yield b'{"messaging_product": "whatsapp", "pad": "'
        for _ in range(40):
            yield b"x" * 32768
        yield b'"}'
    response = fresh.http.post(f"{fresh.url}/{VERSION}/{A['number']}/calls", content=chunks(),
                               headers={"Authorization": f"Bearer {A['token']}", "Content-Type": "application/json"})
    assert_envelope(response, 100, status=(400, 413))


def test_body_over_one_mebibyte_on_control_api(fresh):
    big = json.dumps({"seconds": 1, "pad": "x" * (1024 * 1024 + 10)}).encode()
    response = fresh.control("POST", "clock/advance", content=big)
    assert response.status_code in (400, 413), response.text
    assert_control_sane(response)


def test_form_encoded_bodies(fresh):
    form = "application/x-www-form-urlencoded"
    # a call needs a JSON object for session: the form's string is refused
    raw = f"messaging_product=whatsapp&to={ALICE}&action=connect&session=offer".encode()
    assert_envelope(fresh.send("POST", f"{A['number']}/calls", token=A["token"], content=raw, ctype=form), 100)
    assert_envelope(fresh.send("POST", f"{A['number']}/settings", token=A["token"],
                               content=b"calling=ENABLED", ctype=form), 100)
    assert_envelope(fresh.send("POST", f"{A['number']}/messages", token=A["token"],
                               content=b"messaging_product=whatsapp&to=1&type=text&text=hi", ctype=form), 100)
    for raw in [b"%ff%fe=%00", b"\xff\xfe=1", b"&&&==&", b"a=" + b"%" * 1000]:
        for method, object_id, edge in BODY_ENDPOINTS:
            assert_envelope(fresh.send(method, path_of(object_id, edge), token=A["token"], content=raw,
                                       ctype=form), 100)
    # the token may come in a form body too, and the form drives app subscriptions
    response = fresh.send("GET", f"{A['number']}/settings", content=f"access_token={A['token']}".encode(),
                          ctype=form)
    assert response.status_code == 200, response.text
    response = fresh.send("POST", f"{A['app']}/subscriptions", ctype=form,
                          content=f"access_token={A['app']}|{A['secret']}&object=nope".encode())
    assert_envelope(response, 100)


def test_query_string_parameters(fresh):
    number = A["number"]
    assert_envelope(fresh.send("POST", f"{number}/calls", token=A["token"],
                               params={"messaging_product": "whatsapp", "to": ALICE, "action": "connect"}), 100)
    assert fresh.send("GET", f"{number}/settings", token=A["token"],
                      params={"include_sip_credentials": "yes\x00"}).status_code == 200
    assert fresh.send("GET", number, token=A["token"], params={"fields": ",,,.,"}).status_code == 200
    assert_envelope(fresh.send("GET", A["waba"], token=A["token"], params={"fields": "bogus"}), 100)
    assert_envelope(fresh.send("GET", A["waba"], token=A["token"],
                               params={"fields": "call_analytics.start(abc).end(1)"}), 100)
    for fields in ["call_analytics.start(1e999).end(nan)", "call_analytics.start(-1).end(1e308)",
                   "call_analytics.start().end()", "call_analytics(((", ")))name,", "id,id,id"]:
        assert_graph_sane(fresh.send("GET", A["waba"], token=A["token"], params={"fields": fields}))
    assert_envelope(fresh.send("POST", f"{A['app']}/subscriptions", token=None,
                               params={"access_token": f"{A['app']}|{A['secret']}", "object": "page",
                                       "callback_url": "not a url", "verify_token": "v"}), 100)
    assert_envelope(fresh.send("POST", f"{A['app']}/subscriptions", token=None,
                               params={"access_token": f"{A['app']}|{A['secret']}",
                                       "object": "whatsapp_business_account", "callback_url": REFUSED_URL,
                                       "verify_token": "v", "fields": "[1, 2"}), 100)
    # a query-string token that is garbage is still 190, and the header wins over it
    assert_envelope(fresh.send("GET", f"{number}/settings", params={"access_token": "garbage"}), 190)
    assert fresh.send("GET", f"{number}/settings", token=A["token"],
                      params={"access_token": "garbage"}).status_code == 200


# =====================================================================================================
# Example-based: auth, objects of another WABA, paths, methods, versions
# =====================================================================================================
@pytest.mark.parametrize("method,object_id,edge", ALL_ENDPOINTS)
def test_missing_token_is_104(fresh, method, object_id, edge):
    error = assert_envelope(fresh.send(method, path_of(object_id, edge)), 104)
    assert "access token" in error["message"]
    for header in ["Bearer", "Basic dXNlcjpwYXNz", "Token x", "BearerEAAwacallALPHA0000token"]:
        assert_envelope(fresh.send(method, path_of(object_id, edge), headers={"Authorization": header}), 104)


@pytest.mark.parametrize("method,object_id,edge", ALL_ENDPOINTS)
def test_garbage_token_is_190(fresh, method, object_id, edge):
    for token in ["garbage", "EAAwacallALPHA0000token-x", A["token"].lower(), f"{A['app']}|wrong",
                  f"{A['app']}|", "|", "x" * 5000, A["secret"]]:
        response = fresh.send(method, path_of(object_id, edge), token=token)
        error = assert_envelope(response, 190, status=(400, 401))
        assert error["type"] == "OAuthException"


def _foreign_targets():
    """(method, object id, edge) of app B's world that app A's token must not reach."""
    out = [(m, B["number"], e) for m, e in NUMBER_ENDPOINTS]
    out += [(m, B["waba"], e) for m, e in WABA_ENDPOINTS]
    out += [(m, B["app"], e) for m, e in APP_ENDPOINTS]
    return out


@pytest.mark.parametrize("method,object_id,edge", _foreign_targets())
@pytest.mark.parametrize("token", ["user", "app"])
def test_app_a_token_on_waba_b_objects_is_unsupported_request(fresh, method, object_id, edge, token):
    credential = A["token"] if token == "user" else f"{A['app']}|{A['secret']}"
    bodies = {"calls": connect_body(BRUNO), "messages": text_body(BRUNO), "settings": settings_body(),
              "message_templates": template_body(), "subscriptions": subscription_body()}
    body = bodies.get(edge, ...) if method == "POST" else ...
    response = fresh.send(method, path_of(object_id, edge), token=credential, body=body)
    error = assert_envelope(response, 100, subcode=33, status=400)
    assert UNSUPPORTED.match(error["message"]), error["message"]
    assert f"'{object_id}'" in error["message"] and method.lower() in error["message"]
    if method == "GET":   # B's own credential does reach them: the refusal is about the token
        own = fresh.send("GET", path_of(object_id, edge),
                         token=B["token"] if token == "user" else f"{B['app']}|{B['secret']}",
                         params={"user_wa_id": BRUNO} if edge == "call_permissions" else None)
        if token == "app" and object_id != B["app"]:   # an app token never reaches WhatsApp Business objects
            assert_envelope(own, 200, status=403)
        else:
            assert own.status_code == 200, own.text


def test_foreign_calls_and_settings_have_no_effect(fresh):
    before = fresh.send("GET", f"{B['number']}/settings", token=B["token"]).json()
    fresh.send("POST", f"{B['number']}/settings", token=A["token"],
               body={"calling": {"status": "DISABLED"}})
    assert fresh.send("GET", f"{B['number']}/settings", token=B["token"]).json() == before
    call_id = fresh.incoming_call(BRUNO, B["number"])
    for action in ["accept", "reject", "terminate"]:
        assert_envelope(fresh.send("POST", f"{B['number']}/calls", token=A["token"],
                                   body=answer_body(call_id, action)), 100, subcode=33)
    assert fresh.call(call_id)["state"] == "RINGING"


@pytest.mark.parametrize("object_id", ["999999999999999", "0", "me", "abc", "-1", "1" * 300, "%E2%82%AC",
                                       "calling", "_wacall", "v23.0"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_unknown_object_id(fresh, object_id, method):
    for edge in ["", "calls", "settings"]:
        error = assert_envelope(fresh.send(method, path_of(object_id, edge), token=A["token"]), 100,
                                subcode=33, status=400)
        assert UNSUPPORTED.match(error["message"]), error["message"]


@pytest.mark.parametrize("object_id", [A["number"], A["waba"], A["app"]])
@pytest.mark.parametrize("edge", ["call", "Calls", "calls ", "setting", "bogus", "%20", "subscriptions/x",
                                  "calls/extra/more"])
def test_unknown_edge(fresh, object_id, edge):
    error = assert_envelope(fresh.send("GET", f"{object_id}/{edge}", token=A["token"]), 100, status=400)
    assert "nonexisting field" in error["message"] or "Unknown path components" in error["message"] \
        or "Unsupported" in error["message"], error


def test_app_node_and_number_as_edge(fresh):
    assert_envelope(fresh.send("GET", A["app"], token=A["token"]), 100)
    assert_envelope(fresh.send("GET", f"{A['waba']}/{A['number']}", token=A["token"]), 100)


WRONG_METHODS = [("PUT", A["number"], "calls"), ("GET", A["number"], "calls"), ("DELETE", A["number"], "calls"),
                 ("PATCH", A["number"], "settings"), ("DELETE", A["number"], "settings"),
                 ("POST", A["number"], "call_permissions"), ("GET", A["number"], "messages"),
                 ("DELETE", A["number"], ""), ("POST", A["waba"], ""), ("DELETE", A["waba"], ""),
                 ("POST", A["waba"], "phone_numbers"), ("PUT", A["waba"], "message_templates"),
                 ("PATCH", A["app"], "subscriptions"), ("OPTIONS", A["number"], "calls"),
                 ("PROPFIND", A["number"], "calls")]


@pytest.mark.parametrize("method,object_id,edge", WRONG_METHODS)
def test_wrong_http_method(fresh, method, object_id, edge):
    error = assert_envelope(fresh.send(method, path_of(object_id, edge), token=A["token"]), 100, subcode=33)
    assert UNSUPPORTED.match(error["message"]) and method.lower() in error["message"], error["message"]


def test_head_request_never_5xx(fresh):
    for method, object_id, edge in ALL_ENDPOINTS:
        assert fresh.send("HEAD", path_of(object_id, edge), token=A["token"]).status_code < 500


@pytest.mark.parametrize("version", ["v20.0", "v17.0", "v16.0", "v1.0", "v0.0", "v2.12"])
def test_old_graph_version(fresh, version):
    """Retired versions (older than [graph] oldest_version, v21.0 by default) are refused with code 2635."""
    for method, object_id, edge in [("POST", A["number"], "calls"), ("GET", A["number"], "settings"),
                                    ("GET", "999", "")]:
        error = assert_envelope(fresh.send(method, path_of(object_id, edge), token=A["token"],
                                           version=version), 2635, status=400)
        assert version in json.dumps(error) or "version" in json.dumps(error).lower()


@pytest.mark.parametrize("version", ["v23", "v23.", "v.0", "vX.Y", "v23.0.1", "v-1.0", "v23.0a", "v1e3.0", "v²³.0",
                                     "V23.0", "23.0", "version23", "x"])
def test_malformed_graph_version(fresh, version):
    error = assert_envelope(fresh.send("GET", f"{A['number']}/settings", token=A["token"], version=version),
                            100, status=(400, 404))
    assert error["message"].startswith("(#100)")


def test_newer_versions_are_accepted(fresh):
    for version in ["v21.0", "v22.0", "v23.0", "v24.0", "v25.0", "v26.0", "v99.9", "%76%32%33.0",
                    "v" + "9" * 400 + ".0"]:
        response = fresh.send("GET", f"{A['number']}/settings", token=A["token"], version=version)
        assert response.status_code == 200, (version, response.text)


@pytest.mark.parametrize("path", ["", "/", "//", "favicon.ico", "_wacall", "calling/settings", "calling/settings/x",
                                  "graph.facebook.com", "../../etc/passwd"])
def test_non_graph_paths(fresh, path):
    response = fresh.http.request("GET", f"{fresh.url}/{path}", headers={"Authorization": f"Bearer {A['token']}"})
    if path.startswith("_wacall"):
        assert_control_sane(response)
    else:
        assert_graph_sane(response)
        assert response.status_code != 200 or path.startswith("calling/settings")


def test_provider_settings_route_checks_the_token_and_the_waba(fresh):
    ok = fresh.http.get(f"{fresh.url}/calling/settings/{A['number']}", headers={"D360-API-KEY": A["token"]})
    assert ok.status_code == 200, ok.text
    assert_envelope(fresh.http.get(f"{fresh.url}/calling/settings/{B['number']}",
                                   headers={"D360-API-KEY": A["token"]}), 100, subcode=33)
    assert_envelope(fresh.http.get(f"{fresh.url}/calling/settings/{A['number']}"), 104)
    assert_envelope(fresh.http.post(f"{fresh.url}/calling/settings/{A['number']}",
                                    headers={"D360-API-KEY": A["token"]}, content=b"[1]"), 100)


# =====================================================================================================
# Property-based: Graph API
# =====================================================================================================
tokens = st.sampled_from([A["token"], B["token"], f"{A['app']}|{A['secret']}", f"{B['app']}|{B['secret']}",
                          None, "", "garbage", f"{A['app']}|{B['secret']}"])
methods = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
segments = st.one_of(st.sampled_from([A["number"], B["number"], A["waba"], B["waba"], A["app"], B["app"], "calls",
                                      "settings", "messages", "call_permissions", "message_templates",
                                      "subscribed_apps", "subscriptions", "phone_numbers", "me", "", "..", "."]),
                     st.text(max_size=12))
versions = st.one_of(st.just(VERSION), st.sampled_from(["v16.0", "v17.0", "v26.0", "v23", "vv", "v0.0"]),
                     st.from_regex(r"\Av[0-9]{1,3}\.[0-9]{1,2}\Z"), st.text(max_size=6).map(lambda s: "v" + s))
ctypes = st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain",
                          "multipart/form-data; boundary=x", "application/json; charset=latin-1", None])


@FUZZ
@given(endpoint=st.sampled_from(ALL_ENDPOINTS), body=json_values, token=tokens)
def test_fuzz_arbitrary_json_bodies(srv, endpoint, body, token):
    fresh = reset(srv)
    method, object_id, edge = endpoint
    assert_graph_sane(fresh.send(method, path_of(object_id, edge), token=token or None, body=body))


@FUZZ
@given(endpoint=st.sampled_from(ALL_ENDPOINTS), raw=st.binary(max_size=300), ctype=ctypes)
def test_fuzz_arbitrary_bytes_bodies(srv, endpoint, raw, ctype):
    fresh = reset(srv)
    method, object_id, edge = endpoint
    assert_graph_sane(fresh.send(method, path_of(object_id, edge), token=A["token"], content=raw, ctype=ctype))


@FUZZ
@given(method=methods, version=versions, parts=st.lists(segments, min_size=0, max_size=4), token=tokens,
       params=st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), st.text(max_size=12), max_size=3))
def test_fuzz_paths_methods_versions_tokens(srv, method, version, parts, token, params):
    path = "/".join(quote(p, safe="") for p in parts)
    try:
        response = srv.send(method, path, token=token or None, params=params, version=quote(version, safe=""))
    except httpx.InvalidURL:
        assume(False)
    assert_graph_sane(response)


@FUZZ
@given(endpoint=st.sampled_from(ALL_ENDPOINTS),
       params=st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), texts, max_size=4))
def test_fuzz_query_string_parameters(srv, endpoint, params):
    fresh = reset(srv)
    method, object_id, edge = endpoint
    try:
        response = fresh.send(method, path_of(object_id, edge), token=A["token"], params=params)
    except (httpx.InvalidURL, UnicodeEncodeError):
        assume(False)
    assert_graph_sane(response)


@FUZZ
@given(endpoint=st.sampled_from(BODY_ENDPOINTS + [("POST", A["app"], "subscriptions")]),
       form=st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), texts, max_size=5))
def test_fuzz_form_bodies(srv, endpoint, form):
    fresh = reset(srv)
    method, object_id, edge = endpoint
    raw = "&".join(f"{quote(k, safe='', errors='surrogatepass')}={quote(v, safe='', errors='surrogatepass')}"
                   for k, v in form.items()).encode()
    response = fresh.send(method, path_of(object_id, edge), token=f"{A['app']}|{A['secret']}", content=raw,
                          ctype="application/x-www-form-urlencoded")
    assert_graph_sane(response)


@FUZZ
@given(body=mutated(connect_body()), token=st.sampled_from([A["token"], B["token"]]))
def test_fuzz_mutated_connect(srv, body, token):
    fresh = reset(srv)
    assert_graph_sane(fresh.send("POST", f"{A['number']}/calls", token=token, body=body))


@FUZZ
@given(data=st.data(), action=st.sampled_from(["accept", "pre_accept", "reject", "terminate"]))
def test_fuzz_mutated_call_actions_on_a_live_call(srv, data, action):
    fresh = reset(srv)
    call_id = fresh.incoming_call()
    body = data.draw(mutated(answer_body(call_id, action)))
    assert_graph_sane(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=body))
    # and the call is still a well-formed record the control API can show
    view = fresh.ctl("GET", f"calls/{call_id}")
    assert view.status_code == 200 and view.json()["state"] in ("RINGING", "PRE_ACCEPTED", "ACCEPTED", "ENDED")


@FUZZ
@given(body=st.one_of(mutated(text_body()), mutated(permission_request_body()), mutated(voice_call_body()),
                      mutated(template_message_body())))
def test_fuzz_mutated_messages(srv, body):
    fresh = reset(srv)
    fresh.open_window()
    assert_graph_sane(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=body))


@FUZZ
@given(body=mutated(settings_body()))
def test_fuzz_mutated_settings(srv, body):
    fresh = reset(srv)
    assert_graph_sane(fresh.send("POST", f"{A['number']}/settings", token=A["token"], body=body))
    # whatever was stored must still be readable, and calls still work against it
    assert_graph_sane(fresh.send("GET", f"{A['number']}/settings", token=A["token"],
                                 params={"include_sip_credentials": "true"}))
    assert_graph_sane(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=connect_body()))
    response = fresh.ctl("POST", f"users/{ALICE}/calls", {"to": A["number"]})
    assert_control_sane(response)


@FUZZ
@given(template=mutated(template_body()), message=mutated(template_message_body()))
def test_fuzz_mutated_template_then_send_it(srv, template, message):
    """A template is created from a mutated body, then a (mutated) template message names it: a template
    the first request stored must never break the second."""
    fresh = reset(srv)
    fresh.open_window()
    assert_graph_sane(fresh.send("POST", f"{A['waba']}/message_templates", token=A["token"], body=template))
    assert_graph_sane(fresh.send("GET", f"{A['waba']}/message_templates", token=A["token"]))
    name = template.get("name") if isinstance(template, dict) and isinstance(template.get("name"), str) else "x"
    language = template.get("language") if isinstance(template, dict) else None
    exact = template_message_body(name)
    if isinstance(language, str):
        exact["template"]["language"]["code"] = language
    assert_graph_sane(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=exact))
    assert_graph_sane(fresh.send("POST", f"{A['number']}/messages", token=A["token"], body=message))


@FUZZ
@given(body=st.one_of(mutated(subscription_body()),
                      mutated({"override_callback_uri": REFUSED_URL, "verify_token": "v"}),
                      mutated({"webhook_configuration": {"override_callback_uri": REFUSED_URL, "verify_token": "v"}})),
       endpoint=st.sampled_from([("POST", A["app"], "subscriptions"), ("DELETE", A["app"], "subscriptions"),
                                 ("POST", A["waba"], "subscribed_apps"), ("DELETE", A["waba"], "subscribed_apps"),
                                 ("POST", A["number"], "")]))
def test_fuzz_mutated_subscriptions_and_overrides(srv, body, endpoint):
    fresh = reset(srv)
    method, object_id, edge = endpoint
    token = f"{A['app']}|{A['secret']}" if edge == "subscriptions" else A["token"]
    assert_graph_sane(fresh.send(method, path_of(object_id, edge), token=token, body=body))
    for follow in [("GET", A["app"], "subscriptions"), ("GET", A["waba"], "subscribed_apps"), ("GET", A["number"], "")]:
        assert_graph_sane(fresh.send(follow[0], path_of(follow[1], follow[2]), token=token))


@FUZZ
@given(user_wa_id=json_values, extra=st.dictionaries(keys, json_values, max_size=2))
def test_fuzz_call_permissions(srv, user_wa_id, extra):
    fresh = reset(srv)
    response = fresh.send("GET", f"{A['number']}/call_permissions", token=A["token"],
                          body={**extra, "user_wa_id": user_wa_id})
    assert_graph_sane(response)


# =====================================================================================================
# Property-based: control API
# =====================================================================================================
CALL_ID = "{call}"
CONTROL_ROUTES = [
    ("GET", "health"), ("GET", "info"), ("GET", "clock"), ("POST", "clock/advance"), ("GET", "users"),
    ("POST", "users"), ("GET", "users/{user}"), ("PATCH", "users/{user}"), ("POST", "users/{user}/messages"),
    ("POST", "users/{user}/calls"), ("POST", "users/{user}/permission_replies"), ("GET", "calls"),
    ("GET", "calls/{call}"), ("POST", "calls/{call}/{action}"), ("GET", "webhooks"), ("GET", "limits"),
    ("PATCH", "limits"), ("GET", "numbers/{number}"), ("PATCH", "numbers/{number}"),
    ("POST", "numbers/{number}/restrictions"), ("GET", "faults"), ("POST", "faults")]
CONTROL_BODIES = {
    "clock/advance": {"seconds": 5},
    "users": {"wa_id": "447700900099", "name": "Zed", "platform": "android", "incoming": "answer",
              "answer_after": 1},
    "users/{user}": {"name": "Al", "incoming": "reject", "answer_after": 2, "client_version": "2.24.1.0"},
    "users/{user}/messages": {"to": A["number"], "text": "hello"},
    "users/{user}/calls": {"to": A["number"], "entry_point": "call_button", "payload": "p"},
    "users/{user}/permission_replies": {"phone_number_id": A["number"], "response": "accept", "permanent": False},
    "limits": {"concurrent_calls": 5, "bic_connected_per_24h": 2},
    "numbers/{number}": {"payment_method": True, "messaging_limit": 1000, "allowed_recipients": [ALICE]},
    "numbers/{number}/restrictions": {"type": "RESTRICTED_BUSINESS_INITIATED_CALLING", "seconds": 60,
                                      "reason": "r"},
    "faults": {"connect_error": 1},
}
control_params = {"user": st.sampled_from(USERS + ["0", "nobody", "%20", "1" * 40]),
                  "number": st.sampled_from([A["number"], B["number"], "0", "x"]),
                  "action": st.sampled_from(["answer", "reject", "hangup", "bogus", ""]),
                  "call": st.sampled_from([CALL_ID, "wacid.unknown", "x"])}


@st.composite
def control_requests(draw):
    method, template = draw(st.sampled_from(CONTROL_ROUTES))
    path = template
    for name, strategy in control_params.items():
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", quote(draw(strategy), safe="{}"))
    kind = draw(st.integers(0, 3))
    if template in CONTROL_BODIES and kind < 2:
        body = draw(mutated(CONTROL_BODIES[template]))
    elif kind == 2:
        body = draw(json_values)
    else:
        body = draw(st.binary(max_size=64))
    return method, path, body


@FUZZ
@given(request=control_requests(), also_wrong_method=st.booleans())
def test_fuzz_control_api(srv, request, also_wrong_method):
    fresh = reset(srv)
    method, path, body = request
    if CALL_ID in path:
        path = path.replace(CALL_ID, fresh.incoming_call(CHITRA))
    if isinstance(body, bytes):
        response = fresh.control(method, path, content=body)
    else:
        response = fresh.control(method, path, body=body)
    assert_control_sane(response)
    fresh.control("POST", "faults", body={"connect_error": 0})   # an injected 138004 is a deliberate 500
    if also_wrong_method:
        other = {"GET": "DELETE", "POST": "PUT", "PATCH": "DELETE"}[method]
        assert_control_sane(fresh.control(other, path))
    # whatever the control API accepted, the Graph API and the timers keep working
    assert_graph_sane(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=connect_body()))
    assert_graph_sane(fresh.send("GET", f"{A['number']}/call_permissions", token=A["token"],
                                 params={"user_wa_id": ALICE}))
    assert fresh.ctl("GET", "health").status_code == 200


@pytest.mark.parametrize("path", ["nope", "users/x/y/z", "calls/x/answer/more", "", "health/"])
def test_control_unknown_routes_are_json(fresh, path):
    assert_control_sane(fresh.control("GET", path))
    assert_control_sane(fresh.control("DELETE", "health"))


@pytest.mark.parametrize("seconds", [1e308, 1e300, float("inf"), float("nan"), -1, "5", None, [], True, 2**80])
def test_control_clock_advance_extremes(fresh, seconds):
    response = fresh.control("POST", "clock/advance", body={"seconds": seconds})
    assert_control_sane(response)
    assert fresh.ctl("GET", "health").status_code == 200
    assert_graph_sane(fresh.send("POST", f"{A['number']}/settings", token=A["token"],
                                 body={"calling": {"status": "ENABLED"}}))
    assert_graph_sane(fresh.send("GET", f"{A['number']}/call_permissions", token=A["token"],
                                 params={"user_wa_id": ALICE}))
    assert_control_sane(fresh.control("POST", f"users/{ALICE}/calls", body={"to": A["number"]}))


@pytest.mark.parametrize("body", [{"seconds": "inf"}, {"seconds": 1e308}, {"seconds": "nan"}, {"seconds": []},
                                  {"type": ["x"]}, {"reason": {"a": 1}}])
def test_control_restrictions_extremes(fresh, body):
    assert_control_sane(fresh.control("POST", f"numbers/{A['number']}/restrictions", body=body))
    assert_graph_sane(fresh.send("GET", f"{A['number']}/settings", token=A["token"]))
    assert_graph_sane(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=connect_body()))


def test_control_user_fields_cannot_break_the_graph_api(fresh):
    for fields in [{"client_version": "9" * 5000}, {"client_version": ""}, {"client_version": "..."},
                   {"country": "ZZZ"}, {"name": "\x00" * 10}]:
        assert_control_sane(fresh.control("PATCH", f"users/{ALICE}", body=fields))
        assert_graph_sane(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=connect_body()))
        assert_control_sane(fresh.control("POST", f"users/{ALICE}/calls", body={"to": A["number"]}))


@pytest.mark.parametrize("body", [{"concurrent_calls": "x"}, {"concurrent_calls": None}, {"min_client_version": 3},
                                  {"bic_connected_per_24h": [1]}, {"profile": {}}])
def test_control_limits_wrong_types(fresh, body):
    assert_control_sane(fresh.control("PATCH", "limits", body=body))
    assert_graph_sane(fresh.send("POST", f"{A['number']}/calls", token=A["token"], body=connect_body()))
    assert_control_sane(fresh.control("POST", f"users/{ALICE}/calls", body={"to": A["number"]}))
    assert fresh.ctl("GET", "health").status_code == 200


# =====================================================================================================
# Afterwards: still alive, still healthy, nothing logged as a crash
# =====================================================================================================
def test_zz_server_survived_everything(srv):
    assert srv.proc.poll() is None, srv.stderr_text()[-4000:]
    health = srv.ctl("GET", "health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    srv.reset()
    ok = srv.send("GET", f"{A['number']}/settings", token=A["token"])
    assert ok.status_code == 200 and ok.json()["calling"]["status"] == "ENABLED", ok.text
    assert srv.send("GET", f"{B['number']}/settings", token=B["token"]).status_code == 200
    logged = srv.stderr_text()
    assert "Traceback" not in logged and "unexpected error" not in logged and "tick failed" not in logged, \
        logged[-6000:]
