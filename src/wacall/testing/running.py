"""A wacall for tests and scripts: ``with wacall.running() as w:`` (in the spirit of moto's ``mock_aws``).

The server is real: ``wacall serve`` in a child process (``mode="subprocess"``, the default) or
:class:`wacall.server.Wacall` on an event loop in a background thread of this process
(``mode="inprocess"``). Every listener takes a free port (Graph and control API, SIP/TLS gateway, media
relay), so any number of them run side by side (pytest-xdist workers included). Your code talks to it
over HTTP exactly as it would talk to Meta: base URL ``w.graph_url``, token ``w.access_token``.

Everything that does I/O here works from plain code (it returns the result) and from a coroutine (it
returns an awaitable: ``await w.control.users()``): the requests run on an event loop in a background
thread either way, so a blocking caller never stalls them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, TypeVar

T = TypeVar("T")
MODES = ("subprocess", "inprocess")
GRAPH_VERSION = "v23.0"
START_TIMEOUT = 60.0


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
               describe: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` every 20 ms until it returns something truthy (returned), or fail after ``timeout``
    seconds saying ``what`` was awaited (and ``describe()`` of what was seen instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f"; {describe()}" if describe else ""))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds(duration: float | str) -> float:
    """``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"`` or ``"1d12h"`` as seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    text = duration.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", "", text).strip():
        raise ValueError(f"not a duration: {duration!r} (say 90, '90s', '15m', '2h', '7d' or '1w')")
    return sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)


def in_a_coroutine() -> bool:
    """True when called from code running on an event loop (an ``async def`` test), where a blocking wait
    is handed back as an awaitable instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def blocking_or_awaitable(function: Callable[..., T], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` from plain code; from a coroutine, an awaitable running it in a thread."""
    if in_a_coroutine():
        return asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)


# -- an event loop on a thread, for callers that are not async ----------------------------------------
class Portal:
    """An event loop running on a daemon thread. :meth:`call` runs a coroutine there and hands back its
    result to plain code, or an awaitable to a coroutine."""

    def __init__(self, name: str, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
        self.loop = (loop_factory or asyncio.new_event_loop)()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout: float | None = None) -> Any:
        """Run ``coro`` on the portal's loop and wait for its result (from plain code only)."""
        return self.submit(coro).result(timeout)

    def call(self, coro) -> Any:
        future = self.submit(coro)
        return asyncio.wrap_future(future) if in_a_coroutine() else future.result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


_clients: Portal | None = None
_clients_lock = threading.Lock()


def client_portal() -> Portal:
    """The one background loop of this process for control clients and business media peers."""
    global _clients
    with _clients_lock:
        if _clients is None or _clients.loop.is_closed():
            _clients = Portal("wacall-clients")
        return _clients


class Control:
    """:class:`wacall.control.client.ControlClient` (the control API: virtual users, calls, the clock,
    limits, faults) usable from plain code and from coroutines: each of its request methods returns the
    result when called from plain code and an awaitable when called from a coroutine.

    ``control.users()``, ``control.user_calls(wa_id, to)``, ``control.answer(call_id)``,
    ``control.advance(3600)``, ``control.request("POST", f"calls/{call_id}/dtmf", {"digits": "12#"})``...
    """

    def __init__(self, base_url: str, token: str | None = None) -> None:
        from ..control.client import ControlClient

        self._portal = client_portal()
        self.client = ControlClient(base_url, token=token)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def method(*args, **kwargs):
            return self._portal.call(attribute(*args, **kwargs))
        return method

    def close(self) -> None:
        if not self._portal.loop.is_closed():
            self._portal.run(self.client.close(), timeout=10)


def _info(key: str, doc: str) -> property:
    return property(lambda self: self.info[key], doc=doc)


# -- the server -----------------------------------------------------------------------------------
class Running:
    """A started wacall: what a client needs (``graph_url``, ``access_token``, ``phone_number_id``,
    ``app_secret``...), the control API (:attr:`control`), and the clock (:meth:`advance`).

    Use it as a context manager (``with Running(...) as w``), an async one (``async with``) or a decorator
    (sync or async functions); inside, the environment has ``WACALL_URL``, ``WACALL_GRAPH_URL``,
    ``WACALL_ACCESS_TOKEN``, ``WACALL_PHONE_NUMBER_ID``, ``WACALL_WABA_ID``, ``WACALL_APP_ID``,
    ``WACALL_APP_SECRET`` and ``WACALL_VERIFY_TOKEN`` (restored afterwards), for code that reads its
    settings from there."""

    mode = "?"

    def __init__(self, *, config: str | None = None, db: str = ":memory:", sip: bool = True,
                 media_workers: int | None = None, sip_hosts: dict[str, str] | None = None, pki_dir: str | None = None,
                 control_token: str | None = None, env: bool = True) -> None:
        self.config, self.db, self.sip_enabled, self.media_workers = config, db, sip, media_workers
        self.sip_hosts = dict(sip_hosts or {})
        self._own_pki = pki_dir is None
        self.pki_dir = pki_dir
        self.control_token = control_token
        self.set_env = env
        self.info: dict[str, Any] = {}
        self._control: Control | None = None
        self._saved_env: dict[str, str | None] | None = None

    # -- lifecycle (the modes implement _launch and _shutdown) ----------------------------------------
    def start(self) -> "Running":
        if self.pki_dir is None:
            self.pki_dir = tempfile.mkdtemp(prefix="wacall-pki-")
        self.info = self._launch()
        return self

    def stop(self) -> None:
        """Stop the server (a later :meth:`start` brings it back, on the same ports where it can)."""
        self._shutdown()

    def close(self) -> None:
        """Stop the server and close the clients; remove the temporary CA directory made for it."""
        try:
            self.stop()
        finally:
            if self._control is not None:
                self._control.close()
                self._control = None
            if self._own_pki and self.pki_dir:
                shutil.rmtree(self.pki_dir, ignore_errors=True)
                self.pki_dir = None

    def _launch(self) -> dict[str, Any]:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Running":
        self.start()
        if self.set_env:
            self.export_env()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore_env()
        self.close()

    async def __aenter__(self) -> "Running":
        await asyncio.to_thread(self.start)
        if self.set_env:
            self.export_env()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.restore_env()
        await asyncio.to_thread(self.close)

    def __call__(self, function: Callable) -> Callable:
        """As a decorator: the function runs with this wacall started (and stopped after)."""
        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def run_async(*args, **kwargs):
                async with self:
                    return await function(*args, **kwargs)
            return run_async

        @functools.wraps(function)
        def run(*args, **kwargs):
            with self:
                return function(*args, **kwargs)
        return run

    def environment(self) -> dict[str, str]:
        names = {"WACALL_URL": self.graph_url, "WACALL_GRAPH_URL": self.graph_url,
                 "WACALL_ACCESS_TOKEN": self.access_token, "WACALL_PHONE_NUMBER_ID": self.phone_number_id,
                 "WACALL_WABA_ID": self.waba_id, "WACALL_APP_ID": self.app_id,
                 "WACALL_APP_SECRET": self.app_secret, "WACALL_VERIFY_TOKEN": self.verify_token}
        return {name: str(value) for name, value in names.items() if value is not None}

    def export_env(self) -> None:
        """Put :meth:`environment` into ``os.environ`` (until :meth:`restore_env`)."""
        values = self.environment()
        self._saved_env = {name: os.environ.get(name) for name in values}
        os.environ.update(values)

    def restore_env(self) -> None:
        for name, value in (self._saved_env or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = None

    # -- what a client needs (from the server's info: GET /_wacall/info) ----------------------------
    graph_url = _info("graph_url", "The base URL your code uses instead of ``https://graph.facebook.com``.")
    control_url = _info("control_url", "The control API's base URL (``.../_wacall``).")
    access_token = _info("access_token", "The default app's access token (``Authorization: Bearer``).")
    phone_number_id = _info("phone_number_id", "The default business phone number's id.")
    display_phone_number = _info("display_phone_number", "The number users call (``+1 555...``).")
    waba_id = _info("waba_id", "The WhatsApp Business Account's id.")
    app_id = _info("app_id", "The default app's id.")
    app_secret = _info("app_secret", "The app secret webhooks are signed with (``X-Hub-Signature-256``).")
    verify_token = _info("verify_token", "The verify token of Meta's subscription handshake.")

    @property
    def sip(self) -> dict[str, Any] | None:
        """The SIP gateway: ``host``, ``port``, ``domain`` and ``ca_file`` (the CA to trust), or None."""
        return self.info.get("sip")

    @property
    def users(self) -> list[str]:
        """The configured virtual users' ``wa_id``s."""
        return [user["wa_id"] for user in self.info.get("users", [])]

    # -- the control API ------------------------------------------------------------------------------
    @property
    def control(self) -> Control:
        """The control API (virtual users, calls, clock, limits, faults): see :class:`Control`."""
        if self._control is None:
            self._control = Control(self.graph_url, token=self.control_token)
        return self._control

    def control_client(self):
        """A fresh :class:`wacall.control.client.ControlClient` for your own event loop
        (``async with w.control_client() as control:``)."""
        from ..control.client import ControlClient

        return ControlClient(self.graph_url, token=self.control_token)

    def reset(self) -> None:
        """Back to the configured start: calls, users, permissions, webhooks, clock, limits and faults."""
        client_portal().run(self.control.client.reset(), timeout=30)

    def advance(self, duration: float | str) -> Any:
        """Move the virtual clock forward (``90``, ``"15m"``, ``"7d"``): timers fire as if that time had
        passed (ringing timeouts, permission expiry, daily limits)."""
        return self.control.advance(seconds(duration))

    def graph_api(self, method: str, path: str, body: dict | None = None, *, token: str | None = None,
              **query: Any) -> dict:
        """One Graph API request with the default access token (stdlib HTTP): the JSON answer, or
        :class:`GraphError` for a refusal; awaitable from a coroutine. For tests of wacall itself and quick
        scripts: your integration uses its own HTTP client against :attr:`graph_url`."""
        return blocking_or_awaitable(self._graph_api, method, path, body, token=token, **query)

    def _graph_api(self, method: str, path: str, body: dict | None, *, token: str | None, **query: Any) -> dict:
        url = f"{self.graph_url}/{GRAPH_VERSION}/{path.lstrip('/')}"
        if query:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method.upper(), headers={
            "Authorization": f"Bearer {token or self.access_token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise GraphError(exc.code, json.loads(exc.read() or b"{}")) from None

    def subscribe_webhooks(self, callback_url: str,
                           fields: str = "calls,messages,account_settings_update") -> dict:
        """Subscribe the default app's webhooks to ``callback_url`` (Meta's app subscription, verified
        with a GET carrying ``hub.challenge`` first, as Meta does)."""
        return self._graph_api("POST", f"{self.app_id}/subscriptions", None,
                               token=f"{self.app_id}|{self.app_secret}", object="whatsapp_business_account",
                               callback_url=callback_url, verify_token=self.verify_token, fields=fields)

    def __repr__(self) -> str:
        where = self.info.get("graph_url", "not started")
        return f"<wacall {self.mode} {where}>"


class GraphError(Exception):
    """A Graph API refusal: ``status`` and Meta's ``error`` object (``code``, ``message``...)."""

    def __init__(self, status: int, body: dict) -> None:
        self.status, self.body = status, body
        self.error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status}: {self.error or body}")


class Subprocess(Running):
    """``wacall serve --json`` in a child process (``python -m wacall``); :meth:`kill` ends it as a crash
    would, :meth:`start` after :meth:`stop` brings it back on the same Graph and SIP ports. Its log
    (stderr) goes to a temporary file, read with :meth:`log` (a pipe nobody reads would stall the server
    once it filled); a subclass with ``stderr_pipe = True`` reads ``proc.stderr`` itself instead."""

    mode = "subprocess"
    stderr_pipe = False

    def __init__(self, *, extra_args: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.requested_port = 0
        self.requested_sip_port = 0 if self.sip_enabled else -1
        self._log = None if self.stderr_pipe else tempfile.TemporaryFile("w+", prefix="wacall-log-")

    def args(self) -> list[str]:
        args = [sys.executable, "-m", "wacall", "serve", "--json", "--port", str(self.requested_port),
                "--db", self.db, "--sip-port", str(self.requested_sip_port), "--pki-dir", str(self.pki_dir),
                *(["--media-workers", str(self.media_workers)] if self.media_workers is not None else []),
                *(f"--sip-host={name}={address}" for name, address in self.sip_hosts.items()), *self.extra_args]
        if self.config:
            args += ["--config", str(self.config)]
        if self.control_token:
            args += ["--control-token", self.control_token]
        return args

    def popen_options(self) -> dict[str, Any]:
        return {}

    def log(self) -> str:
        """What the server wrote to stderr so far (every start of this object)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read()
        self._log.seek(0, os.SEEK_END)
        return text

    def _launch(self) -> dict[str, Any]:
        stderr = subprocess.PIPE if self._log is None else self._log
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.PIPE, stderr=stderr, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, **self.popen_options())
        ready = select.select([self.proc.stdout], [], [], START_TIMEOUT)[0]   # never wait forever
        line = self.proc.stdout.readline() if ready else ""
        try:
            info = json.loads(line) if line else None
        except ValueError:
            info = None
        if not isinstance(info, dict) or "graph_url" not in info:
            if self.proc.poll() is None:                      # hung, or printed something else: stop it
                self.proc.kill()
            self.proc.wait(10)
            log = self.proc.stderr.read() if self._log is None else self.log()
            raise RuntimeError(f"wacall did not start ({' '.join(self.args())}): "
                               f"{log or line or f'nothing within {START_TIMEOUT:g} s'}")
        self.requested_port = int(info["graph_url"].rsplit(":", 1)[1])   # a restart takes the same ports
        if info.get("sip"):
            self.requested_sip_port = int(info["sip"]["port"])
        return info

    def _shutdown(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """Stop without a clean shutdown, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        super().close()
        if self._log is not None:
            self._log.close()


class InProcess(Running):
    """:class:`wacall.server.Wacall` on its own event loop in a background thread of this process: starts
    faster, and a debugger or coverage sees the server's code; ``w.server`` is the object itself."""

    mode = "inprocess"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.server = None
        self._portal: Portal | None = None

    def _launch(self) -> dict[str, Any]:
        from ..config import load_config
        from ..loop import loop_factory
        from ..server import Wacall

        config = load_config(self.config)
        config.sip.port = 0 if self.sip_enabled else -1
        config.sip.pki_dir = str(self.pki_dir)
        config.sip.hosts.update(self.sip_hosts)
        if self.media_workers is not None:
            config.media_workers = self.media_workers
        if self.control_token:
            config.server.control_token = self.control_token

        async def start():
            server = Wacall(config, db=self.db, port=0)
            try:
                return await server.start()
            except BaseException:
                await server.stop()
                raise

        self._portal = Portal("wacall-server", loop_factory())
        try:
            self.server = self._portal.run(start(), timeout=START_TIMEOUT)
        except BaseException:
            self._portal.close()
            self._portal = None
            raise
        return self.server.info()

    def _shutdown(self) -> None:
        if self._portal is None:
            return
        with contextlib.suppress(Exception):
            if self.server is not None:
                self._portal.run(self.server.stop(), timeout=30)
        self._portal.close()
        self._portal, self.server = None, None


def running(mode: str | None = None, **options: Any) -> Running:
    """A wacall to use as ``with wacall.running() as w:``, ``async with``, or as a decorator.

    ``mode``: ``"subprocess"`` (default; or the ``WACALL_MODE`` environment variable) runs ``wacall serve``
    in a child process, ``"inprocess"`` runs the server on a background thread of this process.
    ``options``: ``config`` (a wacall.toml holding what differs from the defaults), ``db`` (default
    ``":memory:"``), ``sip`` (False: no SIP gateway), ``media_workers``, ``sip_hosts`` (business SIP
    hostnames to loopback addresses), ``control_token``, ``pki_dir``, ``env`` (False: leave the
    environment alone); for a subprocess also ``extra_args`` for ``wacall serve``.
    """
    mode = mode or os.environ.get("WACALL_MODE") or "subprocess"
    if mode not in MODES:
        raise ValueError(f"wacall mode must be one of {', '.join(MODES)}, not {mode!r}")
    return (InProcess if mode == "inprocess" else Subprocess)(**options)

