"""SIP/TLS connections against a real ``wacall serve`` (uvloop, as shipped): idle connections are closed
after the configured timeout, a client that never sends a ClientHello is dropped, connections over the
cap are refused before the TLS handshake and logged once, and a real SIPp call through stunnel still
works afterwards, its connection kept through a quiet stretch twice the idle timeout."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from support.harness import Wacall, wait_until
from support.sip_tools import free_port, Sipp, Stunnel, bic_auth_uri, bic_keys

ALICE = "447700900001"
HOST = "pbx.business.example"
CAP = 12


@pytest.fixture
def guarded():
    """A wacall whose SIP listener closes connections idle for 2 s, gives a handshake 2 s and takes at
    most CAP incoming connections."""
    server = Wacall(extra=["--sip-idle-timeout", "2", "--sip-handshake-timeout", "2",
                           "--sip-max-connections", str(CAP)]).start()
    yield server
    server.close()


def _tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _tls(port: int, ca: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=ca)
    return context.wrap_socket(_tcp(port), server_hostname="wa.meta.vc")


def _closed_by_wacall(sock: socket.socket) -> bool:
    """EOF or a reset: wacall closed this connection (raises socket.timeout if it is still open)."""
    try:
        return sock.recv(1) == b""
    except ssl.SSLZeroReturnError:
        return True
    except (ConnectionError, ssl.SSLEOFError):
        return True


def test_idle_and_surplus_connections_go_and_a_real_call_still_works(guarded, tmp_path):
    wa = guarded
    info = wa.info["sip"]
    port, ca = info["port"], info["ca_file"]
    silent = [_tcp(port) for _ in range(CAP // 2)]                 # never say ClientHello
    idle = [_tls(port, ca) for _ in range(CAP - len(silent))]       # handshake, then say nothing
    refused = 0
    for _ in range(5):
        try:
            extra = _tls(port, ca)
        except (ssl.SSLError, ConnectionError, OSError):
            refused += 1                                            # closed before the handshake
        else:
            extra.settimeout(5)
            assert _closed_by_wacall(extra), "a connection over the cap must not stay"
            refused += 1
    assert refused == 5
    for sock in silent + idle:
        sock.settimeout(10)
        assert _closed_by_wacall(sock), "idle and handshake-less connections are closed"
        sock.close()
    health = wait_until(lambda: (h := wa.ctl("GET", "health").json()["sip"])["incoming_connections"] == 0 and h,
                        what="every slot freed")
    assert health["connections_refused"] == 5
    assert health["handshake_failures"] == len(silent) and health["idle_closed"] == len(idle)

    # a real business call still gets in, and its dialog keeps the connection through 4 s of quiet
    password = wa.enable_sip(HOST, free_port())
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0.2}).status_code == 200
    wa.media_timeouts(False)                                        # SIPp sends no media
    business = wa.info["display_phone_number"]
    with Stunnel.client(("127.0.0.1", port), ca=Path(ca), check_host="wa.meta.vc",
                        workdir=tmp_path / "stunnel") as tunnel:
        result = Sipp("bic_digest.xml", tunnel.address, keys=bic_keys(ALICE, business, HOST),
                      auth=(business, password), auth_uri=bic_auth_uri(ALICE), pause_ms=4000,
                      workdir=tmp_path / "sipp").run(timeout=60)
    result.assert_ok(1)
    [call] = wa.ctl("GET", "calls").json()["data"]
    call = wa.call(call["call_id"])
    assert call["state"] == "ENDED" and call["ended_by"] == "business" and call["duration"] >= 4

    wa.stop()
    log = wa.proc.stderr.read()
    warnings = [line for line in log.splitlines() if "max_connections" in line]
    assert len(warnings) == 1, f"the cap is logged once per episode, not per connection:\n{log}"
    assert "Traceback" not in log, log
