"""wacall's pytest plugin (registered by the ``pytest11`` entry point ``wacall.testing.plugin``).

Fixtures:

* ``wacall_server`` (session): one wacall for the whole run (per pytest-xdist worker), every listener on
  a free port. ``--wacall-mode=subprocess|inprocess`` (or the ``wacall_mode`` ini option, or the
  ``WACALL_MODE`` environment variable) chooses how it runs; ``--wacall-config`` / ``wacall_config``
  gives it a wacall.toml.
* ``wacall``: that server, reset (``/_wacall/reset``) before the test: a :class:`~wacall.testing.running.Running`
  with ``graph_url``, ``access_token``, ``phone_number_id``, ``app_secret``..., ``control`` and ``advance()``.
* ``wacall_receiver``: a :class:`~wacall.testing.receiver.WebhookReceiver` subscribed to the default app's
  webhooks; it checks signatures and ``wait_for("calls", event="connect")`` returns a webhook's value.
* ``wacall_users``: the control API (:class:`~wacall.testing.running.Control`): virtual users call,
  answer, reject, hang up, write and grant permissions.
* ``wacall_clock``: the virtual clock: ``wacall_clock.advance("7d")``, ``wacall_clock.now()``.
* ``wacall_business``: a business media peer on aiortc (:class:`~wacall.testing.peer.BusinessPeer`).

Everything that talks to wacall works from plain tests and from ``async def`` tests (await it there).

Importing this module must stay cheap: pytest imports it in every run of every project where wacall is
installed, so the server, aiohttp and aiortc are imported only when a fixture is used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator

import pytest

if TYPE_CHECKING:
    from .peer import BusinessPeer
    from .receiver import WebhookReceiver
    from .running import Control, Running


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wacall", "wacall (WhatsApp Business Calling emulator)")
    group.addoption("--wacall-mode", choices=("subprocess", "inprocess"), default=None,
                    help="how the wacall_server fixture runs wacall: 'wacall serve' in a child process "
                         "(default) or on a background thread of the test process")
    group.addoption("--wacall-config", default=None, help="a wacall.toml for the wacall_server fixture")
    parser.addini("wacall_mode", "subprocess or inprocess (see --wacall-mode)", default="")
    parser.addini("wacall_config", "a wacall.toml for the wacall_server fixture", default="")


def _setting(config: pytest.Config, name: str) -> str | None:
    return (config.getoption(f"--wacall-{name}") or config.getini(f"wacall_{name}")
            or os.environ.get(f"WACALL_{name.upper()}") or None)


@pytest.fixture(scope="session")
def wacall_server(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator["Running"]:
    """One wacall for the session (per xdist worker), on free ports; tests get it reset through ``wacall``."""
    from .running import running

    config = _setting(pytestconfig, "config")
    if config and not os.path.isabs(config):
        config = str(pytestconfig.rootpath / config)
    server = running(_setting(pytestconfig, "mode"), config=config, env=False,
                     pki_dir=str(tmp_path_factory.mktemp("wacall-pki")))
    server.start()
    yield server
    server.close()


@pytest.fixture
def wacall(wacall_server: "Running") -> "Running":
    """The session's wacall, reset to its configured start before this test (calls, users, permissions,
    webhook subscriptions, clock, limits, faults)."""
    wacall_server.reset()
    return wacall_server


@pytest.fixture
def wacall_receiver(wacall: "Running") -> Iterator["WebhookReceiver"]:
    """A webhook endpoint on a free port, subscribed (app level) to the default app's ``calls``,
    ``messages`` and ``account_settings_update``; it verifies ``X-Hub-Signature-256``."""
    from .receiver import WebhookReceiver

    with WebhookReceiver.subscribed_to(wacall) as receiver:
        yield receiver


@pytest.fixture
def wacall_users(wacall: "Running") -> "Control":
    """The control API that plays the WhatsApp users: ``wacall_users.user_calls(wa_id, to)``,
    ``.answer(call_id)``, ``.reject(call_id)``, ``.hangup(call_id)``, ``.send_message(...)``,
    ``.reply_permission(...)``, ``.create_user(...)``, ``.call(call_id)``..."""
    return wacall.control


class Clock:
    """The emulator's virtual clock (Unix seconds): timers fire as if the time had passed."""

    def __init__(self, server: "Running") -> None:
        self.server = server

    def now(self) -> Any:
        from .running import client_portal

        client = self.server.control.client

        async def now() -> float:
            return (await client.clock())["now"]
        return client_portal().call(now())

    def advance(self, duration: float | str) -> Any:
        """``advance(90)``, ``advance("15m")``, ``advance("7d")``; returns the clock (``{"now": ...}``)."""
        from .running import seconds

        return self.server.control.advance(seconds(duration))


@pytest.fixture
def wacall_clock(wacall: "Running") -> Clock:
    """The virtual clock: ``wacall_clock.advance("7d")`` (ringing timeouts, permission expiry, limits)."""
    return Clock(wacall)


@pytest.fixture
def wacall_business(wacall: "Running") -> Iterator["BusinessPeer"]:
    """A business media stack on aiortc playing a 1000 Hz tone: ``answer(offer_sdp)`` /
    ``offer()`` + ``accept_answer(sdp)``, then ``wait_connected()``, ``wait_received(1.0)``,
    ``dominant_frequency()``, ``send_dtmf("12#")``, ``wait_digits(3)``. Needs aiortc
    (``pip install wacall[testing]``)."""
    from .peer import BusinessPeer

    peer = BusinessPeer(tone_hz=1000.0)
    try:
        yield peer
    finally:
        peer.close()
