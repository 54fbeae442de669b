from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from support.harness import Receiver, Wacall

# wacall's own pytest plugin (its entry point registers it under this name too: loaded once either way)
pytest_plugins = ["wacall.testing.plugin"]

TESTS = Path(__file__).parent

# The fast tier (``pytest -m fast``): domain tests on the virtual clock and protocol tests (one RFC or one
# module each) that open no socket and start no process. Every other test is ``e2e``: it talks to a
# running wacall or a real peer (aiortc, Chromium, SIPp, baresip, pywa, openssl) over loopback.
FAST = {"domain", "test_audio.py", "test_dtmf.py", "test_outbox_store.py", "test_rtp.py", "test_sdp.py",
        "test_settings.py", "test_sip_digest.py", "test_sip_message.py", "test_sip_torture.py", "test_sip_scan.py",
        "test_srtp.py", "test_stun.py", "test_negotiation.py", "test_ends.py", "test_legs.py",
        "test_layering.py", "test_console_live.py", "test_config.py", "test_logs.py",
        "test_business_callbook.py", "test_voicemail_audio.py", "test_codec.py", "test_bridge_ng.py",
        "test_bridge_sip_ua.py", "test_sip_dialog.py"}


def _fast_path(path: Path) -> bool:
    """In the fast tier: a file (or directory) of ``tests/`` named in ``FAST``; nothing outside ``tests/``
    (``examples/test_my_business.py`` run in the same session starts a wacall)."""
    return path.is_relative_to(TESTS) and path.relative_to(TESTS).parts[0] in FAST


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m fast`` does not even import the other test modules (aiortc, Playwright...: seconds saved)."""
    if (config.getoption("markexpr") == "fast" and collection_path.suffix == ".py"
            and collection_path.name.startswith("test_") and collection_path.is_relative_to(TESTS)
            and not _fast_path(collection_path)):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("fast") or item.get_closest_marker("e2e"):
            continue                             # marked by hand (e.g. the one test of a file that runs a tool)
        item.add_marker(pytest.mark.fast if _fast_path(Path(item.path)) else pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _fast_tests_stay_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``fast`` test that binds, connects or sends on a socket, or starts a process, fails: the marker
    cannot drift from the truth."""
    if request.node.get_closest_marker("fast") is None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} is marked fast but opened a socket or started a process; "
                             "move it out of conftest.FAST")

    for name in ("bind", "connect", "connect_ex", "listen", "sendto", "sendmsg"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def wacall_server():
    """The plugin's session server, as the harness's :class:`Wacall` (its HTTP shortcuts, the business SIP
    hostnames, media timeouts off at each reset); the plugin's ``wacall`` fixture resets it per test."""
    server = Wacall().start()
    yield server
    server.close()


@pytest.fixture
def wa(wacall):
    """The shared emulator, reset to its built-in default before each test."""
    return wacall


@pytest.fixture
def receiver(wa):
    """A webhook receiver subscribed (app level) to the default app's calls, messages and settings (of
    ``wa``, which some modules override: not the plugin's ``wacall_receiver``, which resets ``wacall``)."""
    with Receiver.subscribed_to(wa) as rx:
        yield rx


@pytest.fixture(scope="session")
def wacall_workers_server():
    """A second emulator whose media runs in two worker processes (``--media-workers 2``)."""
    server = Wacall(extra=["--media-workers", "2"]).start()
    yield server
    server.close()


@pytest.fixture(params=["in-process", "2-workers"])
def media_server(request):
    """Media tests run against both media planes: in the server process and in worker processes."""
    server = request.getfixturevalue("wacall_server" if request.param == "in-process" else "wacall_workers_server")
    server.reset()
    return server
