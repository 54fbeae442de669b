"""A business agent in a real browser: Debian's headless Chromium driven by PyPI Playwright.

The page (``chromium_agent.html``) is served from a tiny HTTP server on 127.0.0.1 (a secure context,
so ``getUserMedia`` works); Chromium's fake audio device plays a WAV as the agent's microphone. The
page owns one ``RTCPeerConnection`` (no ICE servers), answers or creates offers, waits for ICE
gathering to complete and hands back SDP with every candidate but 127.0.0.1/UDP removed, measures
what it hears with a WebAudio analyser and sends RFC 4733 digits with ``RTCDTMFSender``.

Playwright's async API runs on a private event loop in its own thread, so the sync tests (and
pytest-asyncio's loops) never share a loop with it; every call has a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

PAGE = Path(__file__).with_name("chromium_agent.html")
CHROMIUM = "/usr/bin/chromium"


def chromium_available() -> bool:
    if not Path(CHROMIUM).exists():
        return False
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False
    return True


def chromium_args(wav: Path) -> list[str]:
    """The flags from shared/reference/stack-notes.md. No ``--user-data-dir``: Playwright refuses it in
    ``launch()`` and always starts Chromium on a fresh temporary profile of its own, deleted on close."""
    return [
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}", "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns", "--no-sandbox",
        "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        # even with the flags above Chromium looks up accounts.google.com, clients2.google.com and
        # update.googleapis.com when a page opens: resolve nothing but localhost, so no DNS leaves
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    ]


class PageServer:
    """Serves the agent page, and nothing else, on 127.0.0.1."""

    def __init__(self) -> None:
        body = PAGE.read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] in ("/", "/agent.html"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:   # favicon.ico and anything else: nothing to see (and no console error)
                    self.send_response(204 if self.path == "/favicon.ico" else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        # "localhost" is a secure context; Chromium resolves it to loopback without asking DNS
        return f"http://localhost:{self.server.server_address[1]}/agent.html"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ChromiumBrowser:
    """One headless Chromium (Playwright, Debian binary), its private loop thread and the page server."""

    def __init__(self, wav: Path) -> None:
        self.wav = Path(wav)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="playwright-loop", daemon=True)
        self.server: PageServer | None = None
        self._pw = None
        self.browser = None
        self.launch_seconds: float | None = None

    def run(self, coro, timeout: float = 15.0) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise AssertionError(f"Chromium did not finish in {timeout:g} s") from None

    def start(self) -> "ChromiumBrowser":
        from playwright.async_api import async_playwright

        self.thread.start()
        self.server = PageServer()
        started = time.monotonic()

        async def launch():
            self._pw = await async_playwright().start()
            self.browser = await self._pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=chromium_args(self.wav),
                # Playwright's defaults include --mute-audio; the agent's audio graph should be live
                ignore_default_args=["--mute-audio"], timeout=20000)

        try:
            self.run(launch(), timeout=25)
        except BaseException:
            self.close()
            raise
        self.launch_seconds = time.monotonic() - started
        return self

    def new_agent(self) -> "ChromiumAgent":
        async def open_page():
            context = await self.browser.new_context()
            page = await context.new_page()
            page.on("console", lambda m: agent.console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: agent.console.append(f"pageerror: {e}"))
            await page.goto(self.server.url, timeout=10000)
            await page.wait_for_function("window.agent !== undefined", timeout=5000)
            return context, page

        agent = ChromiumAgent(self)
        agent.context, agent.page = self.run(open_page())
        return agent

    def close(self) -> None:
        async def shutdown():
            if self.browser is not None:
                await self.browser.close()
            if self._pw is not None:
                await self._pw.stop()

        try:
            if self.thread.is_alive() and (self.browser is not None or self._pw is not None):
                self.run(shutdown(), timeout=15)
        except Exception:
            pass
        finally:
            if self.thread.is_alive():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(5)
            if not self.loop.is_running():
                self.loop.close()
            if self.server is not None:
                self.server.close()
                self.server = None


class ChromiumAgent:
    """One page (its own browser context) = one agent with one peer connection."""

    def __init__(self, browser: ChromiumBrowser) -> None:
        self.browser = browser
        self.context = None
        self.page = None
        self.console: list[str] = []

    def js(self, expression: str, arg: Any = None, timeout: float = 15.0) -> Any:
        return self.browser.run(self.page.evaluate(expression, arg), timeout=timeout)

    # -- signalling ---------------------------------------------------------------------------------
    def answer(self, offer_sdp: str) -> str:
        return self.js("sdp => agent.answer(sdp)", offer_sdp)

    def offer(self) -> str:
        return self.js("() => agent.offer()")

    def accept_answer(self, answer_sdp: str) -> None:
        self.js("sdp => agent.acceptAnswer(sdp)", answer_sdp)

    def raw_local_sdp(self) -> str | None:
        return self.js("() => agent.rawLocalSdp()")

    # -- state ----------------------------------------------------------------------------------------
    def state(self) -> dict:
        return self.js("() => agent.state()")

    def events(self) -> list[dict]:
        return self.js("() => agent.events")

    def stats(self) -> dict:
        return self.js("() => agent.stats()")

    def wait_connected(self, timeout: float = 10.0) -> float:
        """Seconds until ``connectionState == "connected"``; fails fast on "failed"."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            state = self.state()["connection"]
            if state == "connected":
                return time.monotonic() - started
            if state in ("failed", "closed"):
                break
            time.sleep(0.05)
        raise AssertionError(f"Chromium's peer connection did not connect: {self.state()}, "
                             f"events {self.events()}, console {self.console}")

    # -- media ----------------------------------------------------------------------------------------
    def heard(self) -> tuple[np.ndarray, int]:
        """The last ~0.68 s the page heard, as int16 PCM, and its sample rate."""
        data = self.js("() => agent.heard()")
        if data is None:
            return np.zeros(0, dtype=np.int16), 48000
        samples = np.asarray(data["samples"], dtype=np.float64)
        return (np.clip(samples, -1, 1) * 32767).astype(np.int16), int(data["sampleRate"])

    def set_audio_constraints(self, constraints: Any) -> None:
        """getUserMedia's ``audio`` constraints for the next offer/answer (default ``True``)."""
        self.js("c => agent.setAudioConstraints(c)", constraints)

    def send_dtmf(self, tones: str, duration_ms: int = 100, gap_ms: int = 70) -> str:
        return self.js("([t, d, g]) => agent.insertDTMF(t, d, g)", [tones, duration_ms, gap_ms])

    def tones_played(self) -> list[str]:
        """``tonechange`` events so far (the final empty tone marks the end of the buffer)."""
        return self.js("() => agent.toneEvents")

    def close(self) -> None:
        async def shutdown():
            try:
                await self.page.evaluate("() => agent.close()")
            except Exception:
                pass
            await self.context.close()

        if self.context is not None:
            try:
                self.browser.run(shutdown(), timeout=10)
            except Exception:
                pass
            self.context = None


def candidates(sdp: str) -> list[tuple[str, str, int]]:
    """``(transport, address, port)`` of every ``a=candidate`` line."""
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            fields = line[len("a=candidate:"):].split()
            out.append((fields[2].lower(), fields[4], int(fields[5])))
    return out
