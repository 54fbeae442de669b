from __future__ import annotations

import pytest

from support.harness import Receiver, Wacall


@pytest.fixture(scope="session")
def wacall_server():
    server = Wacall().start()
    yield server
    server.close()


@pytest.fixture
def wa(wacall_server):
    """The shared emulator, reset to its built-in default before each test."""
    wacall_server.reset()
    return wacall_server


@pytest.fixture
def receiver(wa):
    """A webhook receiver subscribed (app level) to the default app's calls, messages and settings."""
    rx = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
    response = wa.subscribe(rx.url)
    assert response.status_code == 200, response.text
    yield rx
    rx.stop()


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
