"""The live gateway under hostile input: every RFC 4475 torture message, and a few abuses of our own,
sent over TLS to a running wacall. Invalid requests get 400 (or the RFC's other status); nothing
crashes, nothing hangs, and no transaction is left behind once its timers have run."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from support.harness import Wacall
from test_sip_torture import EXPECT

DATA = Path(__file__).parent / "data" / "sip_torture"
#: Content-Length promises more body than follows: on a stream the rest is still awaited (the
#: connection is closed by the half-message timeout), so there is nothing to answer yet.
INCOMPLETE_ON_A_STREAM = {"clerr", "multi01"}
#: no To, From or Call-ID: no response can be built (RFC 3261 §8.2.6.2), so none is sent.
UNANSWERABLE = {"insuf"}


@pytest.fixture(scope="module")
def gateway():
    """A wacall with T1 = 20 ms: every transaction timer (64*T1) has run out after 1.3 s."""
    server = Wacall(extra=["--sip-t1", "0.02"]).start()
    yield server
    server.close()


def _tls(gw) -> ssl.SSLSocket:
    info = gw.info["sip"]
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    raw = socket.create_connection(("127.0.0.1", info["port"]), timeout=3)
    return ctx.wrap_socket(raw, server_hostname="wa.meta.vc")


def _exchange(gw, payload: bytes, wait: float = 1.5) -> tuple[bytes, bool]:
    """Send ``payload`` on a fresh TLS connection; return what came back and whether the server closed."""
    with _tls(gw) as conn:
        conn.sendall(payload)
        conn.settimeout(0.2)
        received, closed, deadline = b"", False, time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except (socket.timeout, TimeoutError):
                if received.count(b"\r\n\r\n") and not received.startswith(b"SIP/2.0 100 "):
                    break
                continue
            except (ConnectionError, ssl.SSLError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return received, closed


def _statuses(data: bytes) -> list[int]:
    return [int(line.split()[1]) for line in data.decode("latin-1").split("\r\n")
            if line.startswith("SIP/2.0 ") and line.split()[1].isdigit()]


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_rfc4475_message_gets_an_answer_and_no_crash(gateway, name):
    section, expected = EXPECT[name]
    payload = (DATA / f"{name}.dat").read_bytes()
    is_request = not payload.startswith(b"SIP/2.0")
    is_ack = payload.startswith(b"ACK ")
    received, closed = _exchange(gateway, payload)
    finals = [s for s in _statuses(received) if s >= 200]
    if not is_request or is_ack or name in INCOMPLETE_ON_A_STREAM | UNANSWERABLE:
        assert finals == [], f"{name} (§{section}): nothing to answer"
    elif isinstance(expected, int):
        assert finals[:1] == [expected] or (not finals and closed), (
            f"{name} (§{section}): expected {expected}, got {received[:200]!r}")
    else:
        assert finals, f"{name} (§{section}): a valid request deserves a final response, got {received[:200]!r}"
        assert 200 <= finals[0] < 700
    assert gateway.ctl("GET", "health").json()["status"] == "ok"


def test_abuse_garbage_oversize_and_non_tls_leave_the_gateway_serving(gateway):
    received, _ = _exchange(gateway, b"\x00\xff garbage that is not SIP at all\r\n\r\n")
    assert _statuses(received) in ([], [400])
    huge = (b"OPTIONS sip:wa.meta.vc SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKbig\r\n"
            + b"X-Filler: " + b"a" * 80_000 + b"\r\n\r\n")
    received, closed = _exchange(gateway, huge)
    assert closed or _statuses(received)[:1] in ([400], [413], [513])
    # not TLS at all on the TLS port: the handshake fails, the listener stays up
    with socket.create_connection(("127.0.0.1", gateway.info["sip"]["port"]), timeout=3) as plain:
        plain.sendall(b"OPTIONS sip:wa.meta.vc SIP/2.0\r\n\r\n")
        plain.settimeout(3)
        try:
            plain.recv(100)
        except (ConnectionError, socket.timeout, TimeoutError):
            pass
    # still serving, and every transaction ended once its timers ran out (64*T1 = 1.28 s here)
    ok = (b"OPTIONS sip:wa.meta.vc;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKok1\r\n"
          b"Max-Forwards: 70\r\nFrom: <sip:a@b.example>;tag=1\r\nTo: <sip:wa.meta.vc>\r\nCall-ID: alive\r\n"
          b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    received, _ = _exchange(gateway, ok)
    assert _statuses(received) == [200]
    health = gateway.wait_for(
        lambda: (h := gateway.ctl("GET", "health").json()["sip"])["server_transactions"] == 0
        and h["client_transactions"] == 0 and h, timeout=10, what="no transaction left behind")
    assert health["dialogs"] == 0


def test_a_taken_sip_port_is_a_clear_error_not_a_traceback(gateway):
    import subprocess
    import sys
    port = str(gateway.info["sip"]["port"])
    done = subprocess.run([sys.executable, "-m", "wacall", "serve", "--port", "0", "--db", ":memory:", "--json",
                           "--sip-port", port, "--pki-dir", str(Path(gateway.info["sip"]["ca_file"]).parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "cannot listen" in done.stderr and "Traceback" not in done.stderr, done.stderr
