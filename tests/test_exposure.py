"""Nobody else gets in, and what comes in is what Meta would take.

Who may reach wacall's HTTP port: a foreign ``Host`` (DNS rebinding) and a foreign ``Origin``
(cross-site pages) are refused, state-changing control requests take JSON only, a control token
guards the control API when configured (and is required off loopback), no control response but
``/_wacall/info`` carries a SIP password or an app secret, and requests aiohttp's parser refuses (a
10 KB request line or header) get Meta's envelope or the control shape without a traceback. Graph
authentication: the app token is refused on WhatsApp Business objects, ``appsecret_proof`` is checked
when sent and can be required per app. And part 6's input rules: non-ASCII digits are not a phone
number, user and number fields are typed, and a call's duration, pulses and timestamps agree.

Real ``wacall serve`` subprocesses, real HTTP (httpx) and raw sockets, all on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import socket
import subprocess
import sys

import pytest
from aiohttp import web

from support.harness import ROOT, VERSION, Receiver, Wacall
from support.sdp_samples import business_offer
from support.sip_tools import free_port
from wacall.control.client import ControlClient, ControlRefused
from wacall.control.routes import control_routes
from wacall.cli import listens_on_loopback
from wacall.domain.model import Call
from wacall.domain.pricing import pulses_for
from wacall.guard import Exposure

ALICE = "447700900001"
BRUNO = "5511987650002"
CONTROL_TOKEN = "ctl-token-0123456789"
SUPERSCRIPT = "²³⁴"
ARABIC_INDIC = "٤٤٧٧٠٠٩٠٠٠٠١"        # 447700900001 in Arabic-Indic digits
# the business SIP server: nothing listens on its port (never 5061: a wacall on this machine may hold it)
SIP_SERVER = {"hostname": "pbx.business.example", "port": free_port()}


# -- helpers ---------------------------------------------------------------------------------------
def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` whole on a fresh connection; return (status, headers, body) of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def port_of(wa: Wacall) -> int:
    return int(wa.url.rsplit(":", 1)[1])


def graph_envelope(status: int, headers: dict, body: bytes, code: int) -> dict:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] == code and error["fbtrace_id"] and error["message"], error
    return error


def control_refusal(response_or_parts, reason: str, status: int) -> dict:
    if isinstance(response_or_parts, tuple):
        got_status, headers, body = response_or_parts
        ctype, data = headers.get("content-type", ""), json.loads(body)
    else:
        got_status, ctype = response_or_parts.status_code, response_or_parts.headers.get("content-type", "")
        data = response_or_parts.json()
    assert got_status == status and ctype.startswith("application/json"), (got_status, data)
    assert set(data) == {"error"} and data["error"]["reason"] == reason, data
    return data["error"]


def graph_error(response, code: int, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, response.text
    return error


def proof(secret: str, token: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def no_traceback(wa: Wacall) -> str:
    """Stop ``wa`` and return its stderr, which must hold no traceback."""
    wa.stop()
    err = wa.proc.stderr.read()
    assert "Traceback" not in err, err
    return err


def grant(wa: Wacall, wa_id: str) -> None:
    wa.grant_permission(wa_id)


def connect(wa: Wacall, to) -> object:
    return wa.calls_action({"to": to, "action": "connect", "session": {"sdp_type": "offer", "sdp": business_offer()}})


@pytest.fixture
def own():
    """A wacall of this test's own, so its stderr can be read."""
    servers: list[Wacall] = []

    def start(**kwargs) -> Wacall:
        servers.append(Wacall(**kwargs).start())
        return servers[-1]
    yield start
    for server in servers:
        server.close()


# =====================================================================================================
# Host (DNS rebinding), Origin (cross-site), JSON-only control requests
# =====================================================================================================
def test_foreign_host_is_refused_on_both_apis(wa):
    port = port_of(wa)
    for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io", "wacall.localhost.example",
                 "[::2]:80", "10.0.0.1", "::1"):
        parts = raw_http(port, f"GET /_wacall/info HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        control_refusal(parts, "forbidden_host", 403)
        assert b"secret" not in parts[2] and wa.info["access_token"].encode() not in parts[2]
        status, headers, body = raw_http(port, (
            f"GET /{VERSION}/{wa.pnid}/settings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {wa.token}\r\n"
            "Connection: close\r\n\r\n").encode())
        assert status == 403
        graph_envelope(status, headers, body, 200)
    # loopback names with any port, and a request without Host (HTTP/1.0, no browser), are answered
    # (graph.facebook.com: an SDK rerouted at the transport keeps Meta's Host; no rebinding page can send it)
    for host in (f"127.0.0.1:{port}", "127.1.2.3", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}",
                 "graph.facebook.com"):
        status, _, body = raw_http(port, f"GET /_wacall/info HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                                   .encode())
        assert status == 200 and json.loads(body)["app_secret"] == wa.info["app_secret"], (host, body)
    assert raw_http(port, b"GET /_wacall/health HTTP/1.0\r\n\r\n")[0] == 200


def test_foreign_origin_is_refused(wa):
    own_origin = wa.url
    for origin in ("http://evil.example", "null", f"https://{wa.url.split('://')[1]}", "http://localhost:1",
                   f"{own_origin}.evil.example"):
        response = wa.http.get(f"{wa.url}/_wacall/clock", headers={"Origin": origin})
        control_refusal(response, "cross_site", 403)
        response = wa.graph("GET", f"{wa.pnid}/settings", headers={"Origin": origin})
        graph_error(response, 200, 403)
    # wacall's own origin (the console, later, at /_wacall/console) is answered
    assert wa.http.get(f"{wa.url}/_wacall/clock", headers={"Origin": own_origin}).status_code == 200
    assert wa.graph("GET", f"{wa.pnid}/settings", headers={"Origin": own_origin}).status_code == 200


def test_cross_site_simple_posts_cannot_reset_or_move_the_clock(wa):
    before = wa.ctl("GET", "clock").json()["offset"]
    assert wa.ctl("POST", "users", {"wa_id": "447700900077", "name": "Zoe"}).status_code == 201
    body = b'{"seconds": 86400}'
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x"):
        # what a page elsewhere can send without asking: refused for its Origin...
        response = wa.http.post(f"{wa.url}/_wacall/clock/advance", content=body,
                                headers={"Content-Type": ctype, "Origin": "http://evil.example"})
        control_refusal(response, "cross_site", 403)
        # ...for Sec-Fetch-Site when a browser sends no Origin...
        response = wa.http.post(f"{wa.url}/_wacall/reset", content=b"",
                                headers={"Content-Type": ctype, "Sec-Fetch-Site": "cross-site"})
        control_refusal(response, "cross_site", 403)
        # ...and for its content type even without either
        control_refusal(wa.http.post(f"{wa.url}/_wacall/clock/advance", content=body, headers={"Content-Type": ctype}),
                        "unsupported_media_type", 415)
        control_refusal(wa.http.post(f"{wa.url}/_wacall/reset", content=b"", headers={"Content-Type": ctype}),
                        "unsupported_media_type", 415)
    control_refusal(wa.http.post(f"{wa.url}/_wacall/clock/advance", content=body), "unsupported_media_type", 415)
    control_refusal(wa.http.patch(f"{wa.url}/_wacall/users/{ALICE}", content=b'{"name": "X"}',
                                  headers={"Content-Type": "text/plain"}), "unsupported_media_type", 415)
    assert wa.ctl("GET", "clock").json()["offset"] == before
    assert wa.ctl("GET", "users/447700900077").status_code == 200            # not reset
    # server-to-server clients: JSON bodies, and body-less POSTs with no type (or octet-stream)
    assert wa.http.post(f"{wa.url}/_wacall/clock/advance", content=b'{"seconds": 1}',
                        headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200
    assert wa.http.post(f"{wa.url}/_wacall/reset").status_code == 200
    assert wa.http.post(f"{wa.url}/_wacall/reset", headers={"Content-Type": "application/octet-stream"}).status_code == 200
    assert wa.ctl("GET", "users/447700900077").status_code == 404           # that reset did happen
    # the Graph API keeps taking form bodies (Meta does), e.g. curl -d on /subscriptions
    response = wa.http.post(f"{wa.url}/{VERSION}/{wa.pnid}/settings", content=b"calling=x",
                            headers={"Content-Type": "application/x-www-form-urlencoded",
                                     "Authorization": f"Bearer {wa.token}"})
    graph_error(response, 100, 400)


def test_configured_host_names_and_control_token_from_the_config_file(own, tmp_path):
    from wacall.config import DEFAULT_TOML
    config = tmp_path / "wacall.toml"
    config.write_text(DEFAULT_TOML.replace('verify_token = "wacall-verify-token"\n',
                                           'verify_token = "wacall-verify-token"\nrequire_appsecret_proof = true\n')
                      + f'\n[server]\nallowed_hosts = ["wacall.test"]\ncontrol_token = "{CONTROL_TOKEN}"\n')
    wa = own(config=str(config), control_token=None)
    port = port_of(wa)
    auth = f"Authorization: Bearer {CONTROL_TOKEN}\r\n"
    request = "GET /_wacall/clock HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    assert raw_http(port, request.format(host=f"wacall.test:{port}", auth=auth).encode())[0] == 200
    control_refusal(raw_http(port, request.format(host="other.test", auth=auth).encode()), "forbidden_host", 403)
    parts = raw_http(port, request.format(host="wacall.test", auth="").encode())
    control_refusal(parts, "unauthorized", 401)
    assert parts[1]["www-authenticate"].startswith("Bearer")
    # the app requires appsecret_proof (config), so the business token needs it; the app token does not
    graph_error(wa.graph("GET", f"{wa.pnid}/settings"), 100, 400)
    assert wa.graph("GET", f"{wa.pnid}/settings",
                    params={"appsecret_proof": proof(wa.info["app_secret"], wa.token)}).status_code == 200
    assert wa.graph("GET", f"{wa.app_id}/subscriptions", token=wa.app_token).status_code == 200
    no_traceback(wa)


# =====================================================================================================
# The control token and --host
# =====================================================================================================
def test_control_token_guards_the_control_api_only(own):
    wa = own(control_token=CONTROL_TOKEN)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": CONTROL_TOKEN},
                    {"Authorization": f"Basic {CONTROL_TOKEN}"}):
        response = wa.http.get(f"{wa.url}/_wacall/info", headers=headers)
        control_refusal(response, "unauthorized", 401)
        assert wa.info["app_secret"] not in response.text
        control_refusal(wa.http.post(f"{wa.url}/_wacall/reset", headers=headers), "unauthorized", 401)
    assert wa.ctl("GET", "info").json()["app_secret"] == wa.info["app_secret"]   # the harness sends the token
    wa.reset()
    assert wa.graph("GET", f"{wa.pnid}/settings").status_code == 200              # Graph needs no control token

    async def drive() -> None:
        async with ControlClient(wa.url, token=CONTROL_TOKEN) as control:
            assert (await control.health())["status"] == "ok"
            await control.create_user("447700900055", name="Token User")
            call_id = await control.user_calls("447700900055", wa.pnid, entry_point="call_button")
            assert (await control.call(call_id))["state"] == "RINGING"
        async with ControlClient(wa.url) as anonymous:
            with pytest.raises(ControlRefused) as refused:
                await anonymous.health()
            assert refused.value.status == 401 and refused.value.reason == "unauthorized"
    asyncio.run(drive())
    no_traceback(wa)


def test_non_loopback_host_needs_a_control_token_and_warns():
    env = {k: v for k, v in os.environ.items() if k != "WACALL_CONTROL_TOKEN"}
    # refused before anything is bound: nothing here listens beyond loopback
    done = subprocess.run([sys.executable, "-m", "wacall", "serve", "--json", "--host", "0.0.0.0", "--port", "0",
                           "--db", ":memory:", "--sip-port", "-1"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "", done
    assert "warning" in done.stderr and "control token" in done.stderr and "Traceback" not in done.stderr
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", "10.0.0.1"):
        assert not listens_on_loopback(host), host
    for host in ("127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "localhost", "::ffff:127.0.0.1"):
        assert listens_on_loopback(host), host
    # the listen address itself is an allowed Host
    exposure = Exposure.build("192.168.1.10", ["wacall.test"], CONTROL_TOKEN)
    assert exposure.host_allowed("192.168.1.10:8080") and exposure.host_allowed("WACALL.TEST")
    assert not exposure.host_allowed("192.168.1.11") and not exposure.host_allowed("")
    assert Exposure.build("127.0.0.1", ["*"], None).host_allowed("anything.example:1")


def test_allowed_host_and_control_token_flags(own):
    wa = own(extra=["--allowed-host", "wacall.internal"], control_token=CONTROL_TOKEN)
    port = port_of(wa)
    status, _, body = raw_http(port, (f"GET /_wacall/clock HTTP/1.1\r\nHost: wacall.internal:{port}\r\n"
                                      f"Authorization: Bearer {CONTROL_TOKEN}\r\nConnection: close\r\n\r\n").encode())
    assert status == 200 and "now" in json.loads(body)
    no_traceback(wa)


# =====================================================================================================
# Secrets in control responses
# =====================================================================================================
def control_get_routes() -> set[str]:
    app = web.Application()
    control_routes(app)
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET" and "{tail" not in
            r.resource.canonical}


def test_no_control_response_carries_a_sip_password_or_app_secret_except_info(wa):
    receiver = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
    try:
        assert wa.subscribe(receiver.url).status_code == 200
        call_id = wa.user_calls(ALICE, entry_point="call_button").json()["call_id"]
        assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
        enable = {"calling": {"status": "ENABLED", "sip": {"status": "ENABLED", "servers": [SIP_SERVER]}}}
        assert wa.graph("POST", f"{wa.pnid}/settings", json=enable).status_code == 200
        password = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()[
            "calling"]["sip"]["servers"][0]["sip_user_password"]
        sip_call = wa.user_calls(BRUNO, entry_point="call_button")   # a call on the SIP number, too
        assert sip_call.status_code == 201, sip_call.text
        receiver.wait(lambda r: r.values("account_settings_update"), what="settings webhook")
    finally:
        receiver.stop()
    secrets = {"sip password": password, "app secret": wa.info["app_secret"]}
    paths = {"/_wacall/health": "health", "/_wacall/info": "info", "/_wacall/clock": "clock",
             "/_wacall/users": "users", "/_wacall/users/{wa_id}": f"users/{ALICE}", "/_wacall/calls": "calls",
             "/_wacall/calls/{call_id}": f"calls/{call_id}", "/_wacall/webhooks": "webhooks",
             "/_wacall/calls/{call_id}/recording.wav": f"calls/{call_id}/recording.wav",
             "/_wacall/calls/{call_id}/media/{media_id}": f"calls/{call_id}/media/1",
             "/_wacall/limits": "limits", "/_wacall/numbers/{phone_number_id}": f"numbers/{wa.pnid}",
             "/_wacall/apps/{app_id}": f"apps/{wa.app_id}", "/_wacall/sip/hosts": "sip/hosts",
             "/_wacall/faults": "faults", "/_wacall/webhooks/faults": "webhooks/faults",
             "/_wacall/numbers": "numbers", "/_wacall/permissions": "permissions",
             "/_wacall/wabas/{waba_id}": f"wabas/{wa.waba_id}"}
    assert set(paths) == control_get_routes(), "a new GET route: add it here"
    bodies = {template: wa.ctl("GET", path).content for template, path in paths.items()}
    bodies["calls/{sip call}"] = wa.ctl("GET", f"calls/{sip_call.json()['call_id']}").content
    bodies["PATCH numbers"] = wa.ctl("PATCH", f"numbers/{wa.pnid}", {"payment_method": True}).content
    bodies["PATCH apps"] = wa.ctl("PATCH", f"apps/{wa.app_id}", {"require_appsecret_proof": False}).content
    for template, body in bodies.items():
        for what, secret in secrets.items():
            if template == "/_wacall/info" and what == "app secret":
                continue
            assert secret.encode() not in body, f"{template} carries the {what}"
    assert wa.info["app_secret"].encode() in bodies["/_wacall/info"]             # how users learn it
    # asked the way Graph asks, the number shows its SIP passwords
    number = wa.ctl("GET", f"numbers/{wa.pnid}?include_sip_credentials=true").json()
    assert number["sip_passwords"] == {wa.app_id: password}
    assert "sip_passwords" not in wa.ctl("GET", f"numbers/{wa.pnid}").json()


def test_info_without_credentials_for_remote_callers(wa):
    from wacall.config import load_config
    from wacall.server import Wacall as Server
    view = Server(load_config()).info(credentials=False)
    assert view["app_secret"] is None and view["access_token"] is None and view["verify_token"] is None
    assert view["app_id"] == wa.app_id and view["phone_number_id"] == wa.pnid


# =====================================================================================================
# Requests HTTP itself refuses
# =====================================================================================================
def test_oversized_request_line_and_header_get_meta_shapes_and_no_traceback(own):
    wa = own()
    port = port_of(wa)
    big = "a" * 10240
    status, headers, body = raw_http(port, f"GET /{VERSION}/{wa.pnid}/{big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 400
    error = graph_envelope(status, headers, body, 100)
    assert error["type"] == "OAuthException" and "longer than" in error["error_data"]["details"]
    status, headers, body = raw_http(port, (f"GET /{VERSION}/{wa.pnid}/settings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            f"Authorization: Bearer {wa.token}\r\nX-Big: {big}\r\n\r\n").encode())
    assert status == 400
    graph_envelope(status, headers, body, 100)
    control_refusal(raw_http(port, f"GET /_wacall/{big} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()),
                    "too_large", 400)
    control_refusal(raw_http(port, f"POST /_wacall/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n"
                             .encode()), "too_large", 400)
    # a header name over the limit, too many headers, and bytes that are not HTTP at all
    status, headers, body = raw_http(port, f"GET /{VERSION}/x HTTP/1.1\r\n{big}: 1\r\n\r\n".encode())
    graph_envelope(status, headers, body, 100)
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(300))
    status, headers, body = raw_http(port, f"GET /{VERSION}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n".encode())
    assert status == 400
    graph_envelope(status, headers, body, 100)
    status, headers, body = raw_http(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
    assert status == 400
    graph_envelope(status, headers, body, 100)
    # and the server goes on answering
    assert wa.ctl("GET", "health").status_code == 200
    assert wa.graph("GET", f"{wa.pnid}/settings").status_code == 200
    no_traceback(wa)


# =====================================================================================================
# App tokens and appsecret_proof
# =====================================================================================================
def test_appsecret_proof_is_checked_when_sent(wa):
    good = proof(wa.info["app_secret"], wa.token)
    assert wa.graph("GET", f"{wa.pnid}/settings", params={"appsecret_proof": good}).status_code == 200
    for bad in (proof("another-secret", wa.token), proof(wa.info["app_secret"], wa.app_token), "", "zz", good[:-1]):
        error = graph_error(wa.graph("GET", f"{wa.pnid}/settings", params={"appsecret_proof": bad}), 100, 400)
        assert error["message"] == "Invalid appsecret_proof provided in the API argument", error
        assert error["type"] == "GraphMethodException"
    # in a JSON body, and with the app token on the app's subscriptions (proof of the app token)
    bad_body = {"messaging_product": "whatsapp", "to": ALICE, "type": "text", "text": {"body": "hi"},
                "appsecret_proof": "0" * 64}
    graph_error(wa.graph("POST", f"{wa.pnid}/messages", json=bad_body), 100, 400)
    assert wa.graph("GET", f"{wa.app_id}/subscriptions", token=None, params={
        "access_token": wa.app_token, "appsecret_proof": proof(wa.info["app_secret"], wa.app_token)}).status_code == 200
    graph_error(wa.graph("GET", f"{wa.app_id}/subscriptions", token=wa.app_token,
                         params={"appsecret_proof": good}), 100, 400)


def test_require_app_secret_proof_per_app_through_the_control_api(wa):
    url = f"apps/{wa.app_id}"
    assert wa.ctl("GET", url).json()["require_appsecret_proof"] is False
    control_refusal(wa.ctl("PATCH", url, {"require_appsecret_proof": "yes"}), "bad_field", 400)
    assert wa.ctl("PATCH", url, {"require_appsecret_proof": True}).json()["require_appsecret_proof"] is True
    for method, path, kwargs in [("GET", f"{wa.pnid}/settings", {}), ("GET", wa.waba_id, {}),
                                 ("POST", f"{wa.pnid}/calls", {"json": {"messaging_product": "whatsapp", "to": ALICE,
                                                                        "action": "connect"}})]:
        error = graph_error(wa.graph(method, path, **kwargs), 100, 400)
        assert error["message"] == "API calls from the server require an appsecret_proof argument", error
        assert error["type"] == "GraphMethodException"
    good = proof(wa.info["app_secret"], wa.token)
    assert wa.graph("GET", f"{wa.pnid}/settings", params={"appsecret_proof": good}).status_code == 200
    response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"srtp_key_exchange_protocol": "DTLS"},
                                                             "appsecret_proof": good})
    assert response.status_code == 200, response.text
    assert wa.graph("POST", f"{wa.pnid}/messages", data={"appsecret_proof": good, "messaging_product": "whatsapp",
                                                          "to": ALICE, "type": "text"}).json()["error"]["code"] == 100
    # the app token carries the secret itself: Meta's setting does not ask it for a proof
    assert wa.graph("GET", f"{wa.app_id}/subscriptions", token=wa.app_token).status_code == 200
    assert wa.ctl("PATCH", url, {"require_appsecret_proof": False}).status_code == 200
    assert wa.graph("GET", f"{wa.pnid}/settings").status_code == 200
    wa.ctl("PATCH", url, {"require_appsecret_proof": True})
    wa.reset()                                                                  # reset re-seeds the config
    assert wa.graph("GET", f"{wa.pnid}/settings").status_code == 200


# =====================================================================================================
# Phone numbers Meta would refuse, typed fields
# =====================================================================================================
def test_non_ascii_digits_are_not_phone_numbers_on_the_graph_api(wa):
    grant(wa, ALICE)
    for to in (SUPERSCRIPT, ARABIC_INDIC, "447700900001²", "４４７７００９０００01", "447700900001x", True, 1.5, [ALICE]):
        graph_error(connect(wa, to), 100, 400)
        graph_error(wa.graph("POST", f"{wa.pnid}/messages", json={
            "messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}), 100, 400)
        if isinstance(to, str):
            wa.advance(1.1)                    # call_permissions: 5 requests per second
            graph_error(wa.graph("GET", f"{wa.pnid}/call_permissions", params={"user_wa_id": to}), 100, 400)
    # Meta's accepted forms all reach Alice
    for form in ("+44 7700 900001", "+44 (7700) 900-001", int(ALICE)):
        wa.advance(1.1)
        view = wa.graph("GET", f"{wa.pnid}/call_permissions", json={"user_wa_id": form})
        assert view.status_code == 200 and view.json()["permission"]["status"] == "temporary", view.text
    response = connect(wa, "+44 7700 900001")
    assert response.status_code == 200, response.text
    assert wa.call(response.json()["calls"][0]["id"])["wa_id"] == ALICE


def test_user_and_number_fields_are_typed_on_the_control_api(wa):
    for wa_id in (SUPERSCRIPT, ARABIC_INDIC, "", "+-()", True, 4.5, ["447700900066"]):
        control_refusal(wa.ctl("POST", "users", {"wa_id": wa_id, "name": "X"}), "bad_field", 400)
    created = wa.ctl("POST", "users", {"wa_id": "+44 7700 900066", "name": "Formatted"})
    assert created.status_code == 201 and created.json()["wa_id"] == "447700900066", created.text
    assert wa.ctl("POST", "users", {"wa_id": 447700900067, "name": "Int"}).json()["wa_id"] == "447700900067"
    for field, value in [("on_whatsapp", "no"), ("on_whatsapp", 0), ("tos_accepted", "false"), ("tos_accepted", None),
                         ("answer_after", -1), ("incoming", ["answer"]), ("name", 5)]:
        control_refusal(wa.ctl("POST", "users", {"wa_id": "447700900068", "name": "T", field: value}), "bad_field", 400)
        control_refusal(wa.ctl("PATCH", f"users/{ALICE}", {field: value}), "bad_field", 400)
    assert wa.ctl("GET", f"users/{ALICE}").json()["on_whatsapp"] is True
    # on_whatsapp false does what it says: the user cannot be called
    grant(wa, ALICE)
    assert wa.ctl("PATCH", f"users/{ALICE}", {"on_whatsapp": False}).json()["on_whatsapp"] is False
    graph_error(connect(wa, ALICE), 138001, 400)
    # the business a user calls or writes to: an id or a phone number, never other digits
    for to in (ARABIC_INDIC, SUPERSCRIPT, True, {"id": wa.pnid}):
        control_refusal(wa.ctl("POST", f"users/{BRUNO}/calls", {"to": to}), "bad_field", 400)
        control_refusal(wa.ctl("POST", f"users/{BRUNO}/messages", {"to": to, "text": "x"}), "bad_field", 400)
    assert wa.ctl("POST", f"users/{BRUNO}/calls", {"to": "+44 7700 900123", "entry_point": "call_button"}
                  ).status_code == 201
    # number fields
    for body in ({"messaging_limit": True}, {"messaging_limit": "1000"}, {"payment_method": "false"},
                 {"is_test_number": 1}, {"allowed_recipients": [SUPERSCRIPT]}, {"allowed_recipients": "x"},
                 {"country": None}, {"bogus": 1}):
        control_refusal(wa.ctl("PATCH", f"numbers/{wa.pnid}", body), "bad_field", 400)
    patched = wa.ctl("PATCH", f"numbers/{wa.pnid}", {"allowed_recipients": ["+44 7700 900001", 5511987650002]})
    assert patched.json()["allowed_recipients"] == [ALICE, BRUNO], patched.text


@pytest.mark.parametrize("users_toml,expected", [
    ('[[users]]\nwa_id = "447700900001"\nname = "A"\non_whatsapp = "no"\n', "users[0]: on_whatsapp must be true"),
    (f'[[users]]\nwa_id = "{ARABIC_INDIC}"\nname = "A"\n', "users[0]: wa_id must be a phone number"),
    ('[[users]]\nwa_id = "447700900001"\nname = "A"\nanswer_after = "soon"\n', "users[0]: answer_after"),
    ('[[users]]\nname = "A"\n', "users[0]: wa_id and name are required"),
    ("users = 5\n", "users must be an array of tables"),
])
def test_config_file_type_errors_are_clear_messages(tmp_path, users_toml, expected):
    from wacall.config import DEFAULT_TOML
    config = tmp_path / "bad.toml"
    without_users = DEFAULT_TOML.split("[[users]]")[0]
    config.write_text(users_toml + without_users if users_toml.startswith("users =") else without_users + users_toml)
    done = subprocess.run([sys.executable, "-m", "wacall", "serve", "--json", "--port", "0", "--db", ":memory:",
                           "--sip-port", "-1", "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == "", done
    assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    bad_number = DEFAULT_TOML.replace("messaging_limit = 100000", 'messaging_limit = "lots"')
    config.write_text(bad_number)
    done = subprocess.run([sys.executable, "-m", "wacall", "serve", "--port", "0", "--db", ":memory:",
                           "--sip-port", "-1", "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "numbers[0]: messaging_limit must be an integer" in done.stderr, done.stderr


# =====================================================================================================
# Duration, pulses and timestamps agree
# =====================================================================================================
@pytest.mark.parametrize("accepted,ended,duration,pulses", [
    (1000.95, 1007.04, 6, 1),      # 6.09 s: six seconds, one pulse (was: duration 6, two pulses)
    (1000.10, 1006.19, 6, 1),
    (1000.00, 1006.49, 6, 1),
    (1000.00, 1006.50, 7, 2),      # half a second rounds up
    (1000.99, 1001.00, 0, 0),
    (1000.40, 1056.40, 56, 10),    # Meta's example: a 56-second call is 10 pulses
    (1000.00, 1120.00, 120, 20),
])
def test_duration_start_end_and_pulses_have_one_definition(accepted, ended, duration, pulses):
    call = Call(id="wacid.x", phone_number_id="1", wa_id="2", direction="BUSINESS_INITIATED",
                accepted_at=accepted, ended_at=ended)
    assert call.duration == duration
    assert call.end_time - call.start_time == call.duration and call.start_time == int(accepted)
    assert pulses_for(call.duration) == pulses == math.ceil(duration / 6)
    assert Call(id="c", phone_number_id="1", wa_id="2", direction="USER_INITIATED", ended_at=ended).duration is None


def test_a_six_second_call_is_billed_as_its_duration_says(wa):
    receiver = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
    try:
        assert wa.subscribe(receiver.url).status_code == 200
        grant(wa, ALICE)
        response = connect(wa, ALICE)
        assert response.status_code == 200, response.text
        call_id = response.json()["calls"][0]["id"]
        wa.advance(3)                                   # Alice answers after 2 s
        wa.wait_state(call_id, "ACCEPTED")
        wa.advance(6.09)
        assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
        call = wa.call(call_id)
        terminate = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "terminate"])[0]
    finally:
        receiver.stop()
    elapsed = call["ended_at"] - call["accepted_at"]
    assert call["duration"] == math.floor(elapsed + 0.5) == terminate["duration"]
    assert int(terminate["end_time"]) - int(terminate["start_time"]) == terminate["duration"]
    assert terminate["start_time"] == str(int(call["accepted_at"])) and terminate["timestamp"] == terminate["end_time"]
    assert call["pulses"] == math.ceil(call["duration"] / 6) and call["pulses"] == pulses_for(call["duration"])
    analytics = wa.graph("GET", wa.waba_id, params={"fields": "call_analytics"}).json()["call_analytics"]
    bic = next(p for p in analytics["data"][0]["data_points"] if p["direction"] == "BUSINESS_INITIATED")
    assert bic["total_duration"] == call["duration"] and bic["pulses"] == call["pulses"]
